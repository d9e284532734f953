//! Tier 2, the cluster with real processes: two `ringlb` binaries on DPDK
//! vdevs (no hugepages) form a ring on loopback UDP. Sessions one makes from
//! a pcap reach the other over the sync channel; after `kill -9`, the
//! restarted appliance pulls them back from its sibling. Read through each
//! process's status file (JSON), not its prose.

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use ringlb_testkit::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLOWS: u32 = 3_000;

const CONFIG: &str = r#"
eal: { control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 128, idle: adaptive }
ports:
  - { device: "DEVICE", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }
services:
  - { name: web, vip: 198.18.100.1, port: 80, mode: dsr, scheduler: wrr, group: web }
server_groups:
  web:
    - { ip: 198.18.0.11, port: 80, weight: 1, mac: "02:00:00:00:01:01" }
    - { ip: 198.18.0.12, port: 80, weight: 2, mac: "02:00:00:00:01:02" }
sessions: { capacity: 20000 }
cluster:
  address: ADDRESS
  members: [MEMBERS]
  key_file: KEYFILE
  timers: fast
EXTRA"#;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the process on drop (a failing test leaves nothing running).
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut w = PcapWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(Duration::from_micros(i as u64), f.len() as u32, f)).unwrap();
    }
}

fn start(dir: &Path, name: &str, device: &str, address: &str, members: &str) -> Proc {
    start_with(dir, name, device, address, members, "")
}

fn start_with(dir: &Path, name: &str, device: &str, address: &str, members: &str, extra: &str) -> Proc {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("cluster.key");
    if !key.exists() {
        std::fs::write(&key, "9f2c4b7e1a0d3c6f8e5b2a9d4c7f0e3b6a1d8c5f2e9b4a7d0c3f6e1b8a5d2c9f\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cfg = dir.join(format!("{name}.yaml"));
    let text = CONFIG
        .replace("DEVICE", device)
        .replace("ADDRESS", address)
        .replace("MEMBERS", members)
        .replace("KEYFILE", key.to_str().unwrap())
        .replace("EXTRA", extra);
    std::fs::write(&cfg, text).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "-c", cfg.to_str().unwrap(), "--stats-interval", "0.2", "--status-file"])
        .arg(dir.join(format!("{name}.json")))
        .arg("--control-socket")
        .arg(dir.join(format!("{name}.sock")))
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ringlb");
    Proc(child)
}

fn status(dir: &Path, name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// Polls `name`'s status until `ok` holds (or panics with the log).
fn wait_for(dir: &Path, name: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(s) = status(dir, name).filter(|s| ok(s)) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    panic!("{name}: {what} did not happen in 30 s; status {:?}\nlog:\n{log}", status(dir, name));
}

fn u(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

#[test]
fn sessions_reach_the_sibling_and_come_back_after_kill_9() {
    let dir = Dir(std::env::temp_dir().join(format!("ringlb-vdev-cluster-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    // Addresses unique to this run: 127.0.x.y, with x from the pid.
    let net = 1 + (std::process::id() % 200) as u8;
    let (a, b) = (format!("127.{net}.0.1:7400"), format!("127.{net}.0.2:7400"));
    let members = format!("{a}, {b}");
    let mut frames = Vec::new();
    for i in 0..FLOWS {
        let c = (0x6440_0000u32 + i / 1000).to_be_bytes();
        let p = 10_000 + (i % 1000) as u16;
        frames.push(tcp(ROUTER_MAC, PORT_MAC, c, ip("198.18.100.1"), p, 80, SYN, b""));
        frames.push(tcp(ROUTER_MAC, PORT_MAC, c, ip("198.18.100.1"), p, 80, ACK, b""));
    }
    let pcap = dir.0.join("flows.pcap");
    write_pcap(&pcap, &frames);
    let null = "net_null0,no-rx=1";

    let _b = start(&dir.0, "b", null, &b, &members);
    let device = format!("net_pcap0,rx_pcap={},tx_pcap={}", pcap.display(), dir.0.join("out.pcap").display());
    let mut pa = start(&dir.0, "a", &device, &a, &members);
    let sa = wait_for(&dir.0, "a", "all flows created", |s| u(s, &["sessions", "created"]) == u64::from(FLOWS));
    assert_eq!(u(&sa, &["drops_total"]), 0, "{sa}");
    let sb = wait_for(&dir.0, "b", "every session of a installed", |s| {
        u(s, &["replication", "installed"]) == u64::from(FLOWS)
    });
    let c = &sb["cluster"];
    assert_eq!(c["siblings"][0], serde_json::json!(a), "{c}");
    assert_eq!(c["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(u(&sb, &["sessions", "created"]), 0, "b made none itself");
    println!("b: installed {} sessions of a; ring {c}", FLOWS);

    // kill -9 a; its successor starts empty (no traffic) and pulls them back from b.
    let _ = pa.0.kill();
    let _ = pa.0.wait();
    std::fs::remove_file(dir.0.join("a.json")).unwrap();
    let _a2 = start(&dir.0, "a", null, &a, &members);
    // The pull is complete when its last record arrives; the workers install
    // what it carried right after.
    let sa = wait_for(&dir.0, "a", "a resync from b, installed", |s| {
        s["cluster"]["sync"]["last_resync"]["sessions"].as_u64() == Some(u64::from(FLOWS))
            && u(s, &["replication", "installed"]) == u64::from(FLOWS)
    });
    let pull = &sa["cluster"]["sync"]["last_resync"];
    println!("a restarted: pulled {} sessions from {} in {} ms", pull["sessions"], pull["from"], pull["ms"]);
    let t = &sa["cluster"]["sync"]["transport"];
    for k in ["rx_bad_mac", "rx_malformed", "rx_replayed", "rx_spoofed", "rx_unknown_sender"] {
        assert_eq!(t[k].as_u64(), Some(0), "{k}: {t}");
    }
}

/// Gratuitous ARP frames for `vip` from `mac` in a pcap file, with their times.
fn garps_in(path: &Path, vip: [u8; 4], mac: [u8; 6]) -> Vec<Duration> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let mut r = PcapReader::new(file).unwrap();
    let mut out = Vec::new();
    while let Some(Ok(p)) = r.next_packet() {
        let f = &p.data;
        let is_garp = f.len() >= 42
            && f[0..6] == [0xff; 6]
            && f[12..14] == [0x08, 0x06]
            && f[20..22] == [0, 1]
            && f[22..28] == mac
            && f[28..32] == vip
            && f[38..42] == vip;
        if is_garp {
            out.push(p.timestamp);
        }
    }
    out
}

/// Failover issue, item 1 with real processes: with `vips: owned` only the
/// dispatcher answers for the VIP; after `kill -9` of it, the other takes the
/// VIP and sends the configured gratuitous ARP out of its DPDK port.
#[test]
fn the_standby_takes_the_vip_with_gratuitous_arp_after_kill_9() {
    let dir = Dir(std::env::temp_dir().join(format!("ringlb-vdev-vip-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let net = 1 + (std::process::id() % 200) as u8;
    let (a, b) = (format!("127.{net}.1.1:7400"), format!("127.{net}.1.2:7400"));
    let members = format!("{a}, {b}");
    let extra = "  vips: owned\n  garp: { count: 3, interval: 100ms }\n";
    let empty = dir.0.join("empty.pcap");
    write_pcap(&empty, &[]);
    let device = |name: &str| {
        format!("net_pcap0,rx_pcap={},tx_pcap={}", empty.display(), dir.0.join(format!("{name}-out.pcap")).display())
    };
    // The standby joins an active appliance, as it would be deployed.
    let mut pa = start_with(&dir.0, "a", &device("a"), &a, &members, extra);
    let owner = |s: &serde_json::Value| s["cluster"]["vips"]["owners"][0]["owner"].as_str().map(str::to_owned);
    wait_for(&dir.0, "a", "a alone owns the VIP", |s| owner(s) == Some(a.clone()));
    let mut pb = start_with(&dir.0, "b", &device("b"), &b, &members, extra);
    wait_for(&dir.0, "a", "a owns the VIP", |s| {
        owner(s) == Some(a.clone()) && s["cluster"]["vips"]["owners"][0]["here"] == true
    });
    wait_for(&dir.0, "b", "b sees a as the owner", |s| owner(s) == Some(a.clone()));
    // Past b's grace (vips::CLAIM_GRACE_MS): it never claimed the owned VIP.
    std::thread::sleep(Duration::from_millis(1_500));
    let sb = status(&dir.0, "b").unwrap();
    assert_eq!(u(&sb, &["cluster", "vips", "takeovers"]), 0, "the joining standby claimed the VIP: {}", sb["cluster"]);

    let killed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let _ = pa.0.kill();
    let _ = pa.0.wait();
    let sb = wait_for(&dir.0, "b", "b owns the VIP", |s| owner(s) == Some(b.clone()));
    let log = || std::fs::read_to_string(dir.0.join("b.log")).unwrap_or_default();
    let notes = || log().lines().filter(|l| !l.starts_with("stats")).collect::<Vec<_>>().join("\n");
    assert_eq!(u(&sb, &["cluster", "vips", "takeovers"]), 1, "{}\n{}", sb["cluster"]["vips"], notes());
    // Let the announcements go out, then stop b cleanly (the pcap is flushed).
    std::thread::sleep(Duration::from_millis(600));
    let _ = Command::new("kill").args(["-TERM", &pb.0.id().to_string()]).status();
    let _ = pb.0.wait();
    let garps = garps_in(&dir.0.join("b-out.pcap"), ip("198.18.100.1"), PORT_MAC);
    assert_eq!(garps.len(), 3, "b sent the configured three gratuitous ARPs");
    let first = garps[0].saturating_sub(killed);
    println!("kill -9 of the owner → first gratuitous ARP from the standby's DPDK port: {} ms", first.as_millis());
    assert!(first < Duration::from_millis(1_500), "{first:?}");
    assert!(garps[1] - garps[0] >= Duration::from_millis(90), "spaced by the interval: {garps:?}");
}

/// `ringlb reload` on `name`'s control socket: (exit ok, what it printed).
fn reload(dir: &Path, name: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .arg("reload")
        .arg("--socket")
        .arg(dir.join(format!("{name}.sock")))
        .output()
        .expect("run ringlb reload");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_string())
}

/// (generation, cluster version) of `name`'s configuration.
fn config_of(s: &serde_json::Value) -> (u64, String) {
    (u(s, &["config", "generation"]), s["config"]["cluster_version"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_reload_on_one_member_reaches_all_three_and_a_member_killed_during_the_next_converges_on_return() {
    let dir = Dir(std::env::temp_dir().join(format!("ringlb-vdev-cluster-cfg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let net = 1 + (std::process::id() % 200) as u8;
    let addrs: Vec<String> = (1..=3).map(|i| format!("127.{net}.1.{i}:7400")).collect();
    let members = addrs.join(", ");
    let null = "net_null0,no-rx=1";
    let names = ["a", "b", "c"];
    let mut procs: Vec<Proc> = names.iter().zip(&addrs).map(|(n, a)| start(&dir.0, n, null, a, &members)).collect();
    for n in names {
        wait_for(&dir.0, n, "a ring of three", |s| s["cluster"]["members"].as_array().map(Vec::len) == Some(3));
    }
    let first = config_of(&status(&dir.0, "a").unwrap());
    assert_eq!(first.0, 0);

    // a's file: s2 reweighted, s3 added; `ringlb reload` on a only.
    let file = dir.0.join("a.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let two = r#"{ ip: 198.18.0.12, port: 80, weight: 2, mac: "02:00:00:00:01:02" }"#;
    let changed = text.replace(
        two,
        r#"{ ip: 198.18.0.12, port: 80, weight: 5, mac: "02:00:00:00:01:02" }
    - { ip: 198.18.0.13, port: 80, weight: 1, mac: "02:00:00:00:01:03" }"#,
    );
    assert_ne!(changed, text);
    std::fs::write(&file, &changed).unwrap();
    let (ok, said) = reload(&dir.0, "a");
    println!("$ ringlb reload (on a) → {said}");
    assert!(ok && said.contains("agreed by every appliance"), "{said}");
    // The status file follows within its interval.
    let agreed = config_of(&wait_for(&dir.0, "a", "generation 1", |s| u(s, &["config", "generation"]) == 1));
    assert_ne!(agreed.1, first.1);
    for n in names {
        let s = wait_for(&dir.0, n, "generation 1", |s| config_of(s) == agreed);
        println!("{n}: config version {} cluster version {} generation {}", s["config_version"], agreed.1, agreed.0);
    }

    // kill -9 c, and at once another change on a: the ring purges c, a and
    // b agree without it.
    let _ = procs[2].0.kill();
    let _ = procs[2].0.wait();
    std::fs::write(
        &file,
        changed.replace("weight: 1, mac: \"02:00:00:00:01:03\"", "weight: 4, mac: \"02:00:00:00:01:03\""),
    )
    .unwrap();
    let (ok, said) = reload(&dir.0, "a");
    println!("c killed; $ ringlb reload (on a) → {said}");
    assert!(ok, "{said}");
    let second = config_of(&wait_for(&dir.0, "a", "generation 2", |s| u(s, &["config", "generation"]) == 2));
    wait_for(&dir.0, "b", "generation 2", |s| config_of(s) == second);

    // c returns from its own, old file: it pulls generation 2.
    std::fs::remove_file(dir.0.join("c.json")).unwrap();
    procs[2] = start(&dir.0, "c", null, &addrs[2], &members);
    let s = wait_for(&dir.0, "c", "generation 2 after its return", |s| config_of(s) == second);
    println!("c restarted from its old file: cluster version {} generation {}", second.1, second.0);
    let log = std::fs::read_to_string(dir.0.join("c.log")).unwrap();
    assert!(log.contains("pulled from"), "{log}");
    let listed: Vec<String> = s["config"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!("{}={}@{}", m["member"].as_str().unwrap(), m["cluster_version"].as_str().unwrap(), m["generation"])
        })
        .collect();
    println!("c's status lists: {}", listed.join(" "));
    let a = wait_for(&dir.0, "a", "every member at generation 2", |s| {
        s["config"]["members"].as_array().is_some_and(|m| {
            m.len() == 3 && m.iter().all(|m| m["generation"] == 2 && m["cluster_version"] == second.1.as_str())
        })
    });
    println!("a's status: {}", a["config"]);
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["status", "--socket"])
        .arg(dir.0.join("a.sock"))
        .output()
        .expect("run ringlb status");
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("config")).collect();
    println!("$ ringlb status (on a)\n{}", lines.join("\n"));
    assert_eq!(lines.len(), 2, "{table}");
    assert_eq!(lines[1].matches(&format!("{}@2", second.1)).count(), 3, "{table}");
}
