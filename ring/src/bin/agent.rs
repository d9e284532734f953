//! `ringlb-agent`: the ring member that runs on each back-end server.
//!
//!   ringlb-agent run    -c agent.yaml   join the ring and serve until killed
//!   ringlb-agent status -c agent.yaml   the ring as the running agent sees it
//!   ringlb-agent connections --port P   this host's established TCP connections to port P
//!
//! While running it broadcasts load reports (load average, active
//! connections), answers connection-list queries from other members over the
//! reliable layer, and leaves the ring while its acceptability check (an HTTP
//! GET to a local URL) fails, re-joining once it passes.

#![forbid(unsafe_code)]

use ringlb_ring::conns;
use ringlb_ring::driver::Driver;
use ringlb_ring::member::{Config, Event, Member, Timers};
use ringlb_ring::wire::{MemberEntry, CAP_APPLIANCE};
use ringlb_ring::{Dest, Key};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentConfig {
    /// This member's ring address.
    listen: SocketAddrV4,
    /// Every possible member (the broadcast set).
    peers: Vec<SocketAddrV4>,
    #[serde(default)]
    dispatch_capable: bool,
    /// The cluster key file (the appliances' `cluster.key_file`): mode
    /// 0600, 32 random bytes in hex.
    key_file: String,
    /// Read from `key_file` at load.
    #[serde(skip)]
    secret: String,
    /// seed (2,000/2,500 ms) or fast (300/400 ms).
    #[serde(default = "seed_profile")]
    profile: String,
    #[serde(default)]
    health: Option<Health>,
    /// Local ports whose connections are reported to a new dispatcher.
    #[serde(default)]
    connection_ports: Vec<u16>,
    #[serde(default = "second")]
    load_report_ms: u64,
    /// Where the reported load comes from: a file whose first number is the
    /// load (an application's own gauge); default /proc/loadavg's 1-minute
    /// average, which network namespaces on one host share.
    #[serde(default)]
    load_file: Option<String>,
    status_file: String,
    /// Where the last incarnation is kept, so a clock stepped back never
    /// makes a new run look older (default: the status file's path + ".incarnation").
    #[serde(default)]
    incarnation_file: String,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Health {
    /// http://host:port/path (plain HTTP, checked with GET).
    url: String,
    #[serde(default = "second")]
    interval_ms: u64,
    #[serde(default = "half_second")]
    timeout_ms: u64,
}

fn seed_profile() -> String {
    "seed".into()
}
fn second() -> u64 {
    1000
}
fn half_second() -> u64 {
    500
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn load_config(path: &str) -> Result<AgentConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
    let mut cfg: AgentConfig = serde_saphyr::from_str(&text).map_err(|e| {
        let loc = e.location().map_or(String::new(), |l| format!("{}:{}:", l.line(), l.column()));
        format!("{path}:{loc} {}", e.to_string().lines().next().unwrap_or("invalid"))
    })?;
    if !cfg.peers.contains(&cfg.listen) {
        return Err(format!("{path}: peers must include listen ({})", cfg.listen));
    }
    // A relative key file: systemd's credentials directory (the shipped
    // unit loads the key there), else next to this configuration.
    if std::path::Path::new(&cfg.key_file).is_relative() {
        let base = std::env::var("CREDENTIALS_DIRECTORY").ok().map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::Path::new(path).parent().map(std::path::Path::to_path_buf).unwrap_or_default()
        });
        cfg.key_file = base.join(&cfg.key_file).display().to_string();
    }
    if cfg.incarnation_file.is_empty() {
        cfg.incarnation_file = format!("{}.incarnation", cfg.status_file);
    }
    cfg.secret = ringlb_ring::keyfile::read(&cfg.key_file).map_err(|e| format!("{path}: key_file: {e}"))?;
    timers(&cfg.profile).ok_or_else(|| format!("{path}: profile: '{}' is not seed or fast", cfg.profile))?;
    Ok(cfg)
}

fn timers(profile: &str) -> Option<Timers> {
    match profile {
        "seed" => Some(Timers::SEED),
        "fast" => Some(Timers::FAST),
        _ => None,
    }
}

/// GET `url`; true on a 2xx answer within the timeout (the acceptability check).
fn healthy(h: &Health) -> bool {
    let Some(rest) = h.url.strip_prefix("http://") else { return false };
    let (hostport, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    use std::net::ToSocketAddrs;
    let Some(addr) = hostport.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return false };
    let t = Duration::from_millis(h.timeout_ms);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, t) else { return false };
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: ringlb-agent\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while buf.len() < 8192 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = resp.parse(&buf) {
            return resp.code.is_some_and(|c| (200..300).contains(&c));
        }
    }
    false
}

/// The load to report: the first number of `file` (default /proc/loadavg).
fn load(file: Option<&str>) -> String {
    std::fs::read_to_string(file.unwrap_or("/proc/loadavg"))
        .ok()
        .and_then(|s| s.split_whitespace().next().filter(|v| v.parse::<f64>().is_ok()).map(str::to_owned))
        .unwrap_or_else(|| "0".into())
}

struct Status {
    log: Vec<String>,
    loads: BTreeMap<SocketAddrV4, String>,
    answers: Vec<String>,
    /// "conns?" from a sender that is not an appliance of the current view.
    refused_outside_view: u64,
    answered: u64,
    reader: conns::ReaderCounters,
}

impl Status {
    fn event(&mut self, what: String) {
        self.log.push(format!("{} {what}", epoch_ms()));
        if self.log.len() > 50 {
            self.log.remove(0);
        }
    }

    fn write(&self, path: &str, cfg: &AgentConfig, m: Option<&Member>) {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(o, "member {}", cfg.listen);
        let _ = writeln!(o, "updated_ms {}", epoch_ms());
        match m {
            None => {
                let _ = writeln!(o, "state unhealthy (out of the ring until the acceptability check passes)");
            }
            Some(m) => {
                let sv = m.state_vars();
                let members: Vec<String> = m.members().iter().map(ToString::to_string).collect();
                let _ = writeln!(o, "state {}", if m.is_forming() { "forming" } else { "ring" });
                let _ = writeln!(o, "id {}", m.id());
                let _ = writeln!(o, "master {}", sv.smallest);
                let _ = writeln!(o, "version {}", m.view_version());
                let _ = writeln!(o, "dispatcher {}", m.dispatcher().map_or("none".into(), |d| d.to_string()));
                let _ = writeln!(o, "members {}", members.join(","));
                let _ = writeln!(
                    o,
                    "upstream {}\ndownstream {}\ngreatest {}\ncreated_ms {}",
                    sv.upstream, sv.downstream, sv.greatest, sv.created_ms
                );
                let c = m.counters;
                let _ = writeln!(
                    o,
                    "counters rx={} bad_mac={} malformed={} replayed={} spoofed={} unknown_sender={} tx={} purges={}",
                    c.rx_packets,
                    c.rx_bad_mac,
                    c.rx_malformed,
                    c.rx_replayed,
                    c.rx_spoofed,
                    c.rx_unknown_sender,
                    c.tx_packets,
                    c.purges_sent
                );
            }
        }
        let r = self.reader;
        let _ = writeln!(
            o,
            "conns_questions asked={} answered={} refused_outside_view={} rate_limited={} busy={} cached={}",
            r.asked, self.answered, self.refused_outside_view, r.rate_limited, r.busy, r.cached
        );
        for (a, l) in &self.loads {
            let _ = writeln!(o, "load {a} {l}");
        }
        for a in &self.answers {
            let _ = writeln!(o, "answer {a}");
        }
        for l in &self.log {
            let _ = writeln!(o, "event {l}");
        }
        let tmp = format!("{path}.tmp");
        if std::fs::write(&tmp, o).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// A new run in the ring: its incarnation is persisted (`incarnation_file`).
fn new_member(cfg: &AgentConfig, driver: &Driver) -> Result<Member, String> {
    let incarnation = ringlb_ring::incarnation::next(std::path::Path::new(&cfg.incarnation_file), epoch_ms())?;
    Ok(Member::new(
        Config {
            me: cfg.listen,
            peers: cfg.peers.clone(),
            dispatch_capable: cfg.dispatch_capable,
            appliance: false,
            timers: timers(&cfg.profile).unwrap_or(Timers::SEED),
            key: Key::from_secret(&cfg.secret),
            incarnation,
        },
        driver.now(),
    ))
}

fn run(cfg: AgentConfig) -> Result<(), String> {
    let driver = Driver::bind(cfg.listen).map_err(|e| format!("bind {}: {e}", cfg.listen))?;
    let healthy_flag = Arc::new(AtomicBool::new(true));
    if let Some(h) = cfg.health.clone() {
        let flag = Arc::clone(&healthy_flag);
        flag.store(healthy(&h), Relaxed);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(h.interval_ms));
            flag.store(healthy(&h), Relaxed);
        });
    }
    // Reading /proc/net/tcp can take long on a busy server: never on the ring thread.
    let conn_count = Arc::new(AtomicUsize::new(0));
    {
        let (count, ports, every) = (Arc::clone(&conn_count), cfg.connection_ports.clone(), cfg.load_report_ms);
        std::thread::spawn(move || loop {
            count.store(conns::established(&ports).len(), Relaxed);
            std::thread::sleep(Duration::from_millis(every.max(100)));
        });
    }
    // One thread reads the connection lists, whoever asks and however often.
    let mut reader = conns::Reader::spawn(CONNS_PER_SECOND, Duration::from_millis(CONNS_CACHE_MS), conns::answer_text)
        .map_err(|e| format!("cannot start the connection reader: {e}"))?;
    let mut status = Status {
        log: Vec::new(),
        loads: BTreeMap::new(),
        answers: Vec::new(),
        refused_outside_view: 0,
        answered: 0,
        reader: conns::ReaderCounters::default(),
    };
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut member = if healthy_flag.load(Relaxed) { Some(new_member(&cfg, &driver)?) } else { None };
    status.event(if member.is_some() { "start: joining".into() } else { "start: unhealthy, not joining".into() });
    let mut last_load = Instant::now();
    loop {
        let ok = healthy_flag.load(Relaxed);
        match (&mut member, ok) {
            (Some(_), false) => {
                // Leave: stop answering; the ring detects the silence and re-forms without us.
                member = None;
                status.event("acceptability check failed: left the ring".into());
            }
            (None, true) => {
                member = Some(new_member(&cfg, &driver)?);
                status.event("acceptability check passed: re-joining".into());
            }
            _ => {}
        }
        match &mut member {
            Some(m) => {
                let mut pending = Vec::new();
                driver.run_for(m, Duration::from_millis(20), |_, e| {
                    pending.push(e);
                    true
                });
                for e in pending {
                    handle_event(&cfg, &mut status, &mut reader, m.member_entries(), e);
                }
                // Connection lists read by the reader go out on the reliable layer.
                while let Some((to, list)) = reader.answer() {
                    if m.send_reliable(driver.now(), to, &list).is_ok() {
                        status.answered += 1;
                    }
                }
                status.reader = reader.counters;
                if last_load.elapsed() >= Duration::from_millis(cfg.load_report_ms) {
                    last_load = Instant::now();
                    let report = format!("load {} conns {}", load(cfg.load_file.as_deref()), conn_count.load(Relaxed));
                    status.loads.insert(cfg.listen, report.clone());
                    let _ = m.send_app(driver.now(), Dest::Broadcast, report.into_bytes());
                }
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
        if last_status.elapsed() >= Duration::from_millis(100) {
            last_status = Instant::now();
            status.write(&cfg.status_file, &cfg, member.as_ref());
        }
    }
}

/// Status lines kept per kind: the file stays small whatever peers send.
const MAX_STATUS_LINES: usize = 64;
/// Connection-list questions answered per second at most (a new dispatcher
/// asks once per takeover), and how long a list read is reused.
const CONNS_PER_SECOND: u32 = 20;
const CONNS_CACHE_MS: u64 = 100;

fn handle_event(cfg: &AgentConfig, status: &mut Status, reader: &mut conns::Reader, view: &[MemberEntry], e: Event) {
    match e {
        Event::ViewChanged { master, version, members } => {
            let list: Vec<String> = members.iter().map(ToString::to_string).collect();
            status.event(format!("view master={master} version={version} members={}", list.join(",")));
        }
        Event::Dispatcher(d) => status.event(format!("dispatcher {}", d.map_or("none".into(), |d| d.to_string()))),
        Event::IdAccepted(id) => status.event(format!("id {id}")),
        Event::Purge { reason } => status.event(format!("purge: {reason}")),
        Event::App { origin, payload } => {
            let text = String::from_utf8_lossy(&payload).into_owned();
            if let Some(ports) = text.strip_prefix("conns? ") {
                // A (new) dispatcher rebuilding its connection map asks for
                // ours: only an appliance of the current view is answered.
                if !view.iter().any(|m| m.addr == origin && m.caps & CAP_APPLIANCE != 0) {
                    status.refused_outside_view += 1;
                    return;
                }
                let ports: Vec<u16> = ports.split(',').take(64).filter_map(|p| p.trim().parse().ok()).collect();
                let ports = if ports.is_empty() { cfg.connection_ports.clone() } else { ports };
                reader.ask(origin, ports);
            } else if text.starts_with("load ")
                && (status.loads.contains_key(&origin) || status.loads.len() < MAX_STATUS_LINES)
            {
                status.loads.insert(origin, text);
            }
        }
        Event::Reliable { from, payload } => {
            let n = payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
            status.answers.push(format!("{from} {n} connections"));
            if status.answers.len() > MAX_STATUS_LINES {
                status.answers.remove(0);
            }
        }
    }
}

const USAGE: &str = "usage:
  ringlb-agent run    -c agent.yaml
  ringlb-agent status -c agent.yaml
  ringlb-agent connections --port PORT[,PORT...]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let result = match args.first().map(String::as_str) {
        Some("run") => flag("-c").ok_or("-c FILE is required".to_string()).and_then(|f| load_config(&f)).and_then(run),
        Some("status") => {
            flag("-c").ok_or("-c FILE is required".to_string()).and_then(|f| load_config(&f)).and_then(|cfg| {
                let text = std::fs::read_to_string(&cfg.status_file)
                    .map_err(|e| format!("{}: {e} (is the agent running?)", cfg.status_file))?;
                let updated: u64 =
                    text.lines().find_map(|l| l.strip_prefix("updated_ms ")).and_then(|v| v.parse().ok()).unwrap_or(0);
                print!("{text}");
                if epoch_ms().saturating_sub(updated) > 5000 {
                    return Err("status is older than 5 s: the agent is not running".into());
                }
                Ok(())
            })
        }
        Some("connections") => {
            let ports: Vec<u16> =
                flag("--port").unwrap_or_default().split(',').filter_map(|p| p.parse().ok()).collect();
            for c in conns::established(&ports) {
                println!("{} {}", c.local, c.remote);
            }
            Ok(())
        }
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
