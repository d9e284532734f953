//! One measurement = one process on fresh vdevs: dpdk-testpmd forwarding a
//! pcap to net_null (the reference), or ringlb doing its job on the same
//! input. Rates come from the processes' own counters: testpmd's per-port
//! "Tx-pps" (it times its own intervals), ringlb's cumulative `tx` and
//! `sessions.created` at timestamps `t_s`, asked of its control socket
//! (`ringlb status --json`'s structure, not its printed lines).

use crate::procs::{memory_bytes, Proc};
use ringlb::ops::{client, protocol::Request};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The sink every run transmits to. `no-rx=1`: otherwise net_null also
/// generates packets and testpmd would forward in both directions.
pub const SINK: &str = "net_null0,no-rx=1";
/// How long a process may take to load its pcaps and start forwarding.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Testpmd<'a> {
    pub bin: &'a str,
    /// EAL lcore map: the main lcore on the control core, then one lcore per forwarding core.
    pub lcores: String,
    pub cores: u32,
    pub mbufs: u32,
}

/// testpmd forwarding `rx_vdev` → the sink in `mode` (io, macswap) for
/// `seconds`: returns the sink's transmit rate in packets/s.
pub fn testpmd(t: &Testpmd, rx_vdev: &str, queues: u32, mode: &str, seconds: f64) -> Result<f64, String> {
    let what = format!("testpmd {mode}");
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", t.bin, "--lcores", &t.lcores, "--in-memory", "--no-pci", "--log-level", "*:warning"])
        .args(["--vdev", rx_vdev, "--vdev", SINK, "--"])
        .arg(format!("--forward-mode={mode}"))
        .args(["--stats-period=1", "--no-flush-rx"])
        .arg(format!("--nb-cores={}", t.cores))
        .arg(format!("--rxq={queues}"))
        .arg(format!("--txq={queues}"))
        .arg(format!("--total-num-mbufs={}", t.mbufs));
    let mut p = Proc::spawn(&what, &mut cmd)?;
    let want = seconds.ceil().max(1.0) as usize;
    let deadline = Instant::now() + START_TIMEOUT + Duration::from_secs_f64(seconds * 2.0 + 5.0);
    let (mut port, mut started, mut samples) = (None, false, Vec::new());
    while samples.len() < want {
        let Some(line) = p.next_line(deadline) else {
            p.stop(Duration::from_secs(5));
            return Err(format!("{what}: no rate after {} samples; it printed:\n{}", samples.len(), p.tail(25)));
        };
        if let Some(rest) = line.split("NIC statistics for port").nth(1) {
            port = rest.split_whitespace().next().and_then(|n| n.parse::<u32>().ok());
        } else if port == Some(1) && line.trim_start().starts_with("Tx-pps:") {
            let pps = after(&line, "Tx-pps:").unwrap_or(0) as f64;
            // The first non-zero interval is partial (forwarding began inside it).
            if started {
                samples.push(pps);
            } else if pps > 0.0 {
                started = true;
            }
        }
    }
    p.stop(Duration::from_secs(10));
    Ok(median(&mut samples))
}

/// What a ringlb run measured.
#[derive(Default, Clone, Debug)]
pub struct RinglbResult {
    /// Transmitted packets per second in the measurement window.
    pub pps: f64,
    /// Sessions in the table when the window began.
    pub sessions: u64,
    /// Sessions created per second (creation runs).
    pub new_per_s: f64,
    /// Frames dropped inside the measurement window.
    pub drops: u64,
    /// Resident memory (normal + hugetlb pages) once every session exists.
    pub memory: u64,
    /// Session table bytes per worker, as ringlb sized it.
    pub table_bytes: u64,
    pub tsc_hz: u64,
    /// The status ringlb wrote as it stopped (its status file).
    pub final_status: serde_json::Value,
}

pub enum RinglbMode {
    /// Wait until `sessions` exist, then measure the transmit rate for `seconds`.
    Steady { sessions: u64, seconds: f64 },
    /// As `Steady`, with the status's `counter` counting the flows
    /// (`joined`: proxied connections spliced).
    SteadyBy { sessions: u64, seconds: f64, counter: &'static str },
    /// Measure how fast `sessions` new sessions are created.
    /// Until the status's `counter` (`created`: sessions; `cookies`:
    /// SYN cookies sent) reaches `sessions`; its rate is the result.
    Creation { sessions: u64, counter: &'static str },
}

pub fn ringlb(bin: &Path, config: &Path, mode: RinglbMode) -> Result<RinglbResult, String> {
    ringlb_gated(bin, config, mode, &|| true)
}

/// As `ringlb`, but a steady window also waits for `gate` (e.g. a sibling
/// done installing what the warm-up made).
pub fn ringlb_gated(
    bin: &Path,
    config: &Path,
    mode: RinglbMode,
    gate: &dyn Fn() -> bool,
) -> Result<RinglbResult, String> {
    // The status's counter of the flows.
    let (mode, counter) = match mode {
        RinglbMode::SteadyBy { sessions, seconds, counter } => (RinglbMode::Steady { sessions, seconds }, counter),
        RinglbMode::Creation { counter, .. } => (mode, counter),
        RinglbMode::Steady { .. } => (mode, "created"),
    };
    let pointer = match counter {
        "created" => "/sessions/created",
        "joined" => "/syn_proxy/joined",
        "cookies" => "/syn_proxy/cookies_sent",
        other => return Err(format!("ringlb: no status counter {other:?}")),
    };
    let interval = Duration::from_millis(match mode {
        RinglbMode::Steady { .. } | RinglbMode::SteadyBy { .. } => 500,
        RinglbMode::Creation { .. } => 50,
    });
    let (socket, status_file) = (config.with_extension("sock"), config.with_extension("status.json"));
    let _ = std::fs::remove_file(&status_file);
    let mut cmd = Command::new(bin);
    cmd.args(["run", "-c"]).arg(config).args(["--stats-interval", "0"]);
    cmd.arg("--control-socket").arg(&socket).arg("--status-file").arg(&status_file);
    let mut p = Proc::spawn("ringlb", &mut cmd)?;
    let mut r = RinglbResult::default();
    let start_deadline = Instant::now() + START_TIMEOUT;
    let mut warm: Option<(f64, f64, f64)> = None; // (t, tx, drops) at the window's start
    let mut created_at: Vec<(f64, f64)> = Vec::new();
    let mut last_created = -1.0;
    let mut still = 0; // intervals in a row without a new session
                       // Per-interval transmit rates inside the window, and the previous sample.
    let mut rates = Vec::new();
    let mut prev = (0.0, 0.0);
    let fail = |p: &mut Proc, why: &str| -> String {
        p.stop(Duration::from_secs(10));
        format!("ringlb: {why}; it printed:\n{}", p.tail(25))
    };
    let mut next_sample = Instant::now();
    loop {
        // Its output is kept for error messages; the figures come from the socket.
        while p.next_line(Instant::now()).is_some() {}
        std::thread::sleep(next_sample.saturating_duration_since(Instant::now()));
        next_sample += interval;
        let status = match client::ask(&socket, &Request::Status) {
            Ok(s) => s,
            Err(_) if p.running() && Instant::now() < start_deadline => continue, // not up yet
            Err(e) => return Err(fail(&mut p, &format!("no status ({e})"))),
        };
        let num = |ptr: &str| status.pointer(ptr).and_then(serde_json::Value::as_f64);
        let (Some(t), Some(tx), Some(created), Some(drops)) =
            (num("/t_s"), num("/tx"), num(pointer), num("/drops_total"))
        else {
            return Err(fail(&mut p, &format!("a status without {pointer}: {status}")));
        };
        r.table_bytes = status["runtime"]["table_bytes_per_worker"].as_u64().unwrap_or(0);
        r.tsc_hz = status["runtime"]["tsc_hz"].as_u64().unwrap_or(0);
        if !p.running() || Instant::now() > start_deadline + Duration::from_secs(600) {
            return Err(fail(&mut p, "stopped before the measurement ended"));
        }
        let this = (t, tx);
        match mode {
            RinglbMode::Steady { sessions, seconds } => match warm {
                // Warm when every SYN opened its session, or when creation has
                // stopped for two intervals short of that (SYNs lost to a full
                // hand-off queue on a busy host: counted drops; the sessions
                // present and the drops in the window are reported).
                None if (created >= sessions as f64 || (created > 0.0 && still >= 2)) && gate() => {
                    r.memory = memory_bytes(p.pid()).unwrap_or(0);
                    r.sessions = created as u64;
                    warm = Some((t, tx, drops));
                }
                None => {
                    still = if created == last_created { still + 1 } else { 0 };
                    last_created = created;
                }
                Some((t0, _, d0)) => {
                    let (tp, txp) = prev;
                    if t > tp {
                        rates.push((tx - txp) / (t - tp));
                    }
                    if t - t0 >= seconds {
                        r.pps = median(&mut rates);
                        r.drops = (drops - d0) as u64;
                        break;
                    }
                }
            },
            RinglbMode::SteadyBy { .. } => {} // made a `Steady` above
            RinglbMode::Creation { sessions, .. } => {
                created_at.push((t, created));
                if created >= sessions as f64 {
                    r.memory = memory_bytes(p.pid()).unwrap_or(0);
                    break;
                }
            }
        }
        prev = this;
    }
    if let RinglbMode::Creation { sessions, .. } = mode {
        // Between samples taken while creation was under way (both strictly
        // inside it), so no partial interval dilutes or inflates the rate;
        // with fewer than two such samples, over the whole span instead,
        // partial intervals included (an underestimate, never an overstatement).
        let inside: Vec<(f64, f64)> =
            created_at.iter().copied().filter(|&(_, c)| c > 0.0 && c < sessions as f64).collect();
        let ((t0, c0), (t1, c1)) = if inside.len() >= 2 {
            (inside[0], inside[inside.len() - 1])
        } else {
            let begin = created_at.iter().rposition(|&(_, c)| c == 0.0).unwrap_or(0);
            (created_at[begin], *created_at.last().expect("at least one sample"))
        };
        r.new_per_s = if t1 > t0 { (c1 - c0) / (t1 - t0) } else { 0.0 };
        let c1 = created_at.last().map_or(0.0, |s| s.1);
        if c1 < sessions as f64 {
            return Err(fail(&mut p, "created fewer sessions than expected"));
        }
    }
    let clean = p.stop(Duration::from_secs(30));
    let last = std::fs::read(&status_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    match (clean, last) {
        (true, Some(last)) => r.final_status = last,
        _ => return Err(format!("ringlb did not stop cleanly; it printed:\n{}", p.tail(25))),
    }
    Ok(r)
}

/// Instructions per packet of `ringlb-fastpath SESSIONS PACKETS` under
/// callgrind: its `worker_burst` (the worker alone) and its `run_bursts`
/// (with the harness's frame copy), each divided by the data packets. The
/// warm-up that establishes every session is not counted.
pub fn instructions(fastpath: &Path, sessions: u32, packets: u32) -> Result<crate::report::Instructions, String> {
    let count = |function: &str| -> Result<f64, String> {
        let out_file = std::env::temp_dir().join(format!("ringlb-callgrind-{}-{function}", std::process::id()));
        let out = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(format!("--toggle-collect=*{function}*"))
            .arg(fastpath)
            .args([sessions.to_string(), packets.to_string()])
            .output()
            .map_err(|e| format!("valgrind: {e} (apt-get install valgrind)"))?;
        let _ = std::fs::remove_file(&out_file);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("valgrind {}: {}", fastpath.display(), err.lines().last().unwrap_or("")));
        }
        let collected =
            err.lines().find_map(|l| after(l, "Collected : ")).ok_or("no 'Collected' line from callgrind")?;
        Ok(collected as f64 / f64::from(packets))
    };
    Ok(crate::report::Instructions {
        sessions,
        packets,
        worker: count("worker_burst")?,
        with_harness: count("run_bursts")?,
    })
}

/// The median (the mean of the two middle values of an even count). Used
/// for per-interval rates, where a moment when the shared host takes the
/// core away moves the mean of a short window, not its median, and for the
/// rounds of a run.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The number that follows `marker` (and any spaces) in `line`.
fn after(line: &str, marker: &str) -> Option<u64> {
    let rest = line[line.find(marker)? + marker.len()..].trim_start();
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}
