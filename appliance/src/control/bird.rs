//! Announcing the VIPs by BGP through BIRD (`bird:` in the configuration).
//!
//! The appliance does not speak BGP itself: BIRD does, over the port's
//! kernel interface (`ports[].kernel`), and announces the routes of the
//! `protocol static` ringlb writes to `bird.vips_file` (the shipped
//! `deploy/bird/bird.conf` includes it and exports only it). A VIP is in
//! the file while this appliance can serve it: its ports are started, it
//! answers for the VIP (`cluster.vips`), and at least one of the VIP's
//! services has a server that takes new flows (up and not drained). After
//! each change ringlb asks BIRD to read its configuration again (`birdc
//! configure`), and at a clean stop it empties the file first, so routers
//! withdraw the routes before the workers stop. After a crash BGP's hold
//! time withdraws them: the kernel interface goes with the process.

use super::Notes;
use crate::config::BirdConfig;
use crate::dataplane::Shared;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the set of VIPs to announce is computed again.
pub const CHECK_EVERY_MS: u64 = 250;
/// A failed `birdc configure` is tried again this much later.
const RETRY_MS: u64 = 5_000;
/// A `birdc` still running after this long is killed (BIRD hung).
const BIRDC_LIMIT: Duration = Duration::from_secs(10);
/// The most a clean stop waits for BIRD to take the withdrawal.
const WITHDRAW_WAIT: Duration = Duration::from_secs(3);

pub struct Bird {
    cfg: BirdConfig,
    /// The VIPs in the file now (None: not written yet).
    announced: Option<Vec<u32>>,
    /// `birdc configure` under way (and when it began), and whether the
    /// file changed since.
    child: Option<(Child, Instant)>,
    again: bool,
    /// After a failed `birdc`, when to try again.
    retry_at_ms: Option<u64>,
    pub last_check_ms: u64,
    pub configures: u64,
    pub failures: u64,
}

/// The file's text for `vips`.
pub fn render(vips: &[u32]) -> String {
    let mut o = String::from(
        "# Written by ringlb (bird.vips_file): the VIPs this appliance announces now.\n\
         protocol static ringlb_vips {\n  ipv4;\n",
    );
    for &v in vips {
        o.push_str(&format!("  route {}/32 blackhole;\n", Ipv4Addr::from(v)));
    }
    o.push_str("}\n");
    o
}

impl Bird {
    pub fn new(cfg: BirdConfig) -> Bird {
        Bird {
            cfg,
            announced: None,
            child: None,
            again: false,
            retry_at_ms: None,
            last_check_ms: 0,
            configures: 0,
            failures: 0,
        }
    }

    /// The VIPs this appliance can serve now.
    pub fn wanted(shared: &Shared) -> Vec<u32> {
        if !shared.ports_up() {
            return Vec::new();
        }
        let routing = shared.routing();
        shared
            .vip_addresses()
            .into_iter()
            .filter(|&vip| shared.owns_vip(vip) && routing.serves(vip, |id| shared.server_weight(id) > 0))
            .collect()
    }

    /// Writes the file and tells BIRD when the VIPs to announce changed.
    pub fn poll(&mut self, now_ms: u64, shared: &Shared, notes: &mut Notes) {
        self.last_check_ms = now_ms;
        if self.reap(notes) {
            self.retry_at_ms = Some(now_ms + RETRY_MS);
        }
        if self.retry_at_ms.is_some_and(|t| now_ms >= t) {
            self.retry_at_ms = None;
            self.again = true;
        }
        let wanted = Self::wanted(shared);
        if self.announced.as_ref() != Some(&wanted) {
            let before = self.announced.clone().unwrap_or_default();
            match self.write(&wanted) {
                Ok(()) => {
                    let list = |v: &[u32]| v.iter().map(|&a| Ipv4Addr::from(a).to_string()).collect::<Vec<_>>();
                    let added: Vec<u32> = wanted.iter().copied().filter(|v| !before.contains(v)).collect();
                    let gone: Vec<u32> = before.iter().copied().filter(|v| !wanted.contains(v)).collect();
                    if !added.is_empty() {
                        notes.push_back(format!("bird: announcing {}", list(&added).join(", ")));
                    }
                    if !gone.is_empty() {
                        notes.warn(format!("bird: withdrawing {}", list(&gone).join(", ")));
                    }
                    self.announced = Some(wanted);
                    self.again = true;
                }
                Err(e) => {
                    self.failures += 1;
                    notes.warn(format!("bird: cannot write {}: {e}", self.cfg.vips_file));
                }
            }
        }
        if self.again && self.child.is_none() && self.announced.is_some() {
            self.again = false;
            self.configure(notes);
        }
    }

    /// A clean stop: no VIP, and BIRD told (waiting for it, bounded).
    /// True if something was withdrawn (BIRD's UPDATE still has to leave
    /// through the kernel interface, which the workers serve).
    pub fn withdraw_all(&mut self, notes: &mut Notes) -> bool {
        if self.announced.as_ref().is_some_and(Vec::is_empty) && !self.again {
            return false;
        }
        // A `birdc` under way: given the same time, then killed.
        let deadline = Instant::now() + WITHDRAW_WAIT;
        while self.child.is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            let _ = self.reap(notes);
        }
        self.kill_child();
        if self.write(&[]).is_ok() {
            self.announced = Some(Vec::new());
            notes.warn("bird: withdrawing every VIP (stopping)".to_string());
            self.configure(notes);
            let deadline = Instant::now() + WITHDRAW_WAIT;
            while Instant::now() < deadline && self.child.is_some() {
                std::thread::sleep(Duration::from_millis(10));
                let _ = self.reap(notes);
            }
            self.kill_child();
            return true;
        }
        false
    }

    fn write(&self, vips: &[u32]) -> std::io::Result<()> {
        let path = std::path::Path::new(&self.cfg.vips_file);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, render(vips))?;
        std::fs::rename(&tmp, path)
    }

    /// Starts `birdc configure` (not waited for: the control loop goes on).
    fn configure(&mut self, notes: &mut Notes) {
        let mut cmd = Command::new("birdc");
        if let Some(s) = &self.cfg.socket {
            cmd.args(["-s", s]);
        }
        cmd.arg("configure").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        match cmd.spawn() {
            Ok(c) => {
                self.configures += 1;
                self.child = Some((c, Instant::now()));
            }
            Err(e) => {
                self.failures += 1;
                notes.warn(format!("bird: cannot run birdc: {e}"));
            }
        }
    }

    /// Collects a finished `birdc`; true (and noted) if it failed or hung
    /// (killed after `BIRDC_LIMIT`).
    fn reap(&mut self, notes: &mut Notes) -> bool {
        let Some((c, started)) = &mut self.child else { return false };
        match c.try_wait() {
            Ok(None) if started.elapsed() < BIRDC_LIMIT => false,
            Ok(None) => {
                self.kill_child();
                self.failures += 1;
                notes.warn(format!("bird: birdc configure did not finish in {BIRDC_LIMIT:?}: killed"));
                true
            }
            Ok(Some(status)) => {
                let Some((c, _)) = self.child.take() else { return false };
                let out = c.wait_with_output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
                let said = out.unwrap_or_default();
                // birdc exits 0 even when BIRD refuses; its answer says so.
                let failed = !status.success() || !said.contains("Reconfigur");
                if failed {
                    self.failures += 1;
                    notes.warn(format!("bird: birdc configure: {status}: {said}"));
                }
                failed
            }
            Err(e) => {
                self.child = None;
                self.failures += 1;
                notes.warn(format!("bird: birdc: {e}"));
                true
            }
        }
    }

    fn kill_child(&mut self) {
        if let Some((mut c, _)) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_file_is_a_static_protocol_with_one_blackhole_route_per_vip() {
        assert_eq!(super::render(&[]), "# Written by ringlb (bird.vips_file): the VIPs this appliance announces now.\nprotocol static ringlb_vips {\n  ipv4;\n}\n");
        let two = super::render(&[0xc612_6401, 0xc612_6402]);
        assert!(two.contains("  route 198.18.100.1/32 blackhole;\n  route 198.18.100.2/32 blackhole;\n}"), "{two}");
    }
}
