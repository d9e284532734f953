//! Tier 2: the operator's interfaces of the real `ringlb` binary on a
//! `net_pcap` port: `ringlb status`, `servers`, `drain`, `undrain` and
//! `metrics` over the control socket, the Prometheus endpoint over HTTP
//! (checked by `promtool check metrics`), and `--help` of every command.

use ringlb_testkit::*;

mod common;
use common::{tmpdir, write_pcap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FLOWS: u32 = 3_000;

const CONFIG: &str = r#"
eal: { control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256, idle: adaptive, extra_args: ["--file-prefix", "PREFIX"] }
ports:
  - { device: "DEVICE", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }
services:
  - { name: web, vip: 198.18.100.1, port: 80, mode: dsr, scheduler: wrr, group: web }
server_groups:
  web:
    - { ip: 198.18.0.11, port: 80, weight: 1, mac: "02:00:00:00:01:01" }
    - { ip: 198.18.0.12, port: 80, weight: 2, mac: "02:00:00:00:01:02" }
    - { ip: 198.18.0.13, port: 80, weight: 3, mac: "02:00:00:00:01:03" }
sessions: { capacity: 10000 }
"#;

fn ringlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlb")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).expect("--json prints JSON")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn every_command_has_help_that_exits_0() {
    // Every subcommand `ringlb --help` lists (a new one is covered too).
    let top = ringlb(&["--help"]);
    let text = stdout(&top);
    let listed: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    for c in ["run", "check", "status", "servers", "sessions", "drain", "undrain", "reload", "metrics", "completions"] {
        assert!(listed.iter().any(|l| l == c), "{c} not in --help: {text}");
    }
    let mut commands: Vec<Vec<&str>> = vec![vec![]];
    commands.extend(listed.iter().map(|c| vec![c.as_str()]));
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = ringlb(&args);
        assert!(o.status.success(), "ringlb {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: ringlb"), "{args:?}");
    }
    let o = ringlb(&["completions", "bash"]);
    assert!(stdout(&o).contains("complete -F"), "a bash completion script");
    let o = ringlb(&["frobnicate"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unrecognized subcommand"));
}

#[test]
fn the_control_socket_and_metrics_show_what_the_appliance_does() {
    let dir = tmpdir("ops");
    let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            let client = (0x6440_0000u32 + i).to_be_bytes();
            tcp(ROUTER_MAC, PORT_MAC, client, ip("198.18.100.1"), 10_000 + (i % 50_000) as u16, 80, SYN, b"")
        })
        .collect();
    write_pcap(&input, &frames);
    let frame_bytes: usize = frames.iter().map(Vec::len).sum();
    let device = format!("net_pcap0,rx_pcap={},tx_pcap={}", input.display(), output.display());
    let cfg = dir.join("ops.yaml");
    // Its own EAL runtime directory, where its telemetry socket is.
    let prefix = format!("ringlbops{}", std::process::id());
    std::fs::write(&cfg, CONFIG.replace("DEVICE", &device).replace("PREFIX", &prefix)).unwrap();
    let socket = dir.join("ops.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "-c", cfg.to_str().unwrap(), "--stats-interval", "0.2", "--metrics", &metrics])
        .arg("--control-socket")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ringlb");
    let lines = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let result = std::panic::catch_unwind(|| check_running(&socket, &metrics, &prefix, frame_bytes));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    let log: Vec<String> = rx.try_iter().collect();
    if let Err(e) = result {
        eprintln!("ringlb's output:\n{}", log.join("\n"));
        std::panic::resume_unwind(e);
    }
    assert!(status.success(), "{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("ops: drained web/198.18.0.12:80")), "the drain is logged");
    assert!(!socket.exists(), "the socket file goes with the appliance");
    let last_stats = log.iter().rev().find(|l| l.contains(" INFO  stats t=")).expect("a stats line");
    assert!(
        last_stats.contains(&format!(" rx={FLOWS} tx={FLOWS} ")),
        "telemetry matched this stats line: {last_stats}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // EAL leaves its (empty) runtime directory behind.
    let _ = std::fs::remove_dir(Path::new("/var/run/dpdk").join(&prefix));
}

/// Asks the appliance's EAL telemetry socket through DPDK's own client.
fn telemetry(prefix: &str, cmd: &str) -> serde_json::Value {
    let mut client = Command::new("dpdk-telemetry.py")
        .args(["-f", prefix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dpdk-telemetry.py (Debian's dpdk package)");
    client.stdin.take().unwrap().write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Its first JSON line is the greeting; the answer is keyed by the command.
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim_start_matches("--> ")).ok())
        .find_map(|v| v.get(cmd).cloned())
        .unwrap_or_else(|| panic!("no answer to {cmd}: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

fn check_running(socket: &Path, metrics: &str, prefix: &str, frame_bytes: usize) {
    let sock = socket.to_str().unwrap();
    // Until the whole pcap has passed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let o = ringlb(&["status", "--json", "--socket", sock]);
        if o.status.success() {
            let v = json(&o);
            if v["rx"].as_u64() >= Some(u64::from(FLOWS)) {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "no status with rx >= {FLOWS}: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["sessions"]["created"], FLOWS, "{status}");
    let version = status["config_version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 12, "{status}");
    assert_eq!(status["per_server"]["web/198.18.0.13:80"], 1500, "weights 1:2:3");

    let human = stdout(&ringlb(&["status", "--socket", sock]));
    assert!(human.contains(&format!("version {version}")), "{human}");
    assert!(human.contains(&format!("rx {FLOWS} tx {FLOWS}")) && human.contains("standalone"), "{human}");

    let servers = json(&ringlb(&["servers", "--json", "--socket", sock]));
    let new: Vec<u64> = servers.as_array().unwrap().iter().map(|r| r["new_sessions"].as_u64().unwrap()).collect();
    assert_eq!(new, [500, 1000, 1500]);
    let active: Vec<u64> = servers.as_array().unwrap().iter().map(|r| r["active_sessions"].as_u64().unwrap()).collect();
    assert_eq!(active, [500, 1000, 1500], "every session is still in the table");
    let table = stdout(&ringlb(&["servers", "--socket", sock]));
    assert!(table.starts_with("SERVER") && table.contains("web/198.18.0.12:80  2       2    up"), "{table}");

    // Sessions, sampled from the worker's table.
    let some = json(&ringlb(&["sessions", "--limit", "10", "--json", "--socket", sock]));
    let some = some.as_array().unwrap();
    assert_eq!(some.len(), 10);
    for s in some {
        assert!(s["client"].as_str().unwrap().starts_with("100.64."), "{s}");
        assert_eq!(
            (s["service"].as_str(), s["proto"].as_str(), s["replica"].as_bool()),
            (Some("web"), Some("tcp"), Some(false))
        );
        assert!(s["server"].as_str().unwrap().starts_with("web/198.18.0.1"), "{s}");
    }
    let all = json(&ringlb(&["sessions", "--service", "web", "--limit", "5000", "--json", "--socket", sock]));
    assert_eq!(all.as_array().unwrap().len(), FLOWS as usize);
    let table = stdout(&ringlb(&["sessions", "--limit", "3", "--socket", sock]));
    assert!(table.starts_with("CLIENT") && table.ends_with("3 session(s)\n"), "{table}");
    let o = ringlb(&["sessions", "--service", "nope", "--socket", sock]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no service 'nope' (services: web)"));

    // Drain by address: no new flows; undrain: back.
    let drained = json(&ringlb(&["drain", "198.18.0.12", "--json", "--socket", sock]));
    assert_eq!(
        (drained[0]["drained"].as_bool(), drained[0]["weight_now"].as_u64()),
        (Some(true), Some(0)),
        "{drained}"
    );
    let table = stdout(&ringlb(&["servers", "--socket", sock]));
    assert!(table.contains("web/198.18.0.12:80  2       0    drained"), "{table}");
    let o = ringlb(&["drain", "10.9.9.9", "--socket", sock]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no server matches '10.9.9.9'"));

    // The same figures for Prometheus, on the socket and over HTTP.
    let text = stdout(&ringlb(&["metrics", "--socket", sock]));
    for series in [
        format!("ringlb_rx_packets_total {FLOWS}"),
        format!("ringlb_rx_bytes_total {frame_bytes}"),
        // Rewritten in place: the same frame lengths go out.
        format!("ringlb_tx_bytes_total {frame_bytes}"),
        "ringlb_server_sessions_active{server=\"web/198.18.0.13:80\",service=\"web\"} 1500".into(),
        "ringlb_server_new_sessions_total{server=\"web/198.18.0.11:80\",service=\"web\"} 500".into(),
        "ringlb_server_drained{server=\"web/198.18.0.12:80\",service=\"web\"} 1".into(),
        "ringlb_drops_total{reason=\"malformed\"} 0".into(),
    ] {
        assert!(text.lines().any(|l| l == series), "no {series:?} in\n{text}");
    }
    let http = http_get(metrics, "/metrics");
    assert!(http.starts_with("HTTP/1.1 200 OK") && http.contains("\r\n\r\n# HELP"), "{http}");
    let body = http.split_once("\r\n\r\n").unwrap().1;
    assert!(body.lines().any(|l| l == format!("ringlb_rx_packets_total {FLOWS}")));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; deploy/setup.sh installs it)");
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(http_get(metrics, "/").starts_with("HTTP/1.1 404"));

    // DPDK telemetry: the stats line's figures (published with it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let v = telemetry(prefix, "/ringlb/stats");
        if v["rx"] == FLOWS || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (stats["rx"].as_u64(), stats["created"].as_u64(), stats["rx_bytes"].as_u64()),
        (Some(u64::from(FLOWS)), Some(u64::from(FLOWS)), Some(frame_bytes as u64)),
        "{stats}"
    );
    let servers = telemetry(prefix, "/ringlb/servers");
    assert_eq!(servers["web/198_18_0_13_80"], 1500, "{servers}");
    assert_eq!(telemetry(prefix, "/ringlb/drops")["malformed"], 0);

    let undrained = json(&ringlb(&["undrain", "web/198.18.0.12:80", "--json", "--socket", sock]));
    assert_eq!(undrained[0]["weight_now"], 2, "{undrained}");
}
