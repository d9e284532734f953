//! The inputs of one benchmark step: pcap files and the ringlb
//! configuration that reads them. Every run uses the same addressing:
//! clients → VIP 198.18.100.1:80 on the data port (and the warm-up port),
//! three servers 198.18.1.11–13 behind the sink port.

use ringlb::config;
use ringlb::dataplane::Shared;
use ringlb::packet::L4Proto;
use ringlb::session::FlowKey;
use ringlb_perf::pcapgen::{self, Kind, Writer, PORT_MAC};
use std::path::{Path, PathBuf};

/// Server i's MAC (static in the config: the sink cannot answer ARP).
fn server_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, 0x0b + i as u8]
}

pub struct Files {
    /// One SYN per flow, read once (no `infinite_rx`): opens the sessions.
    pub warm: Vec<PathBuf>,
    /// Data packets of those flows, replayed forever.
    pub data: Vec<PathBuf>,
    /// The NAT servers' replies to the same flows (single-queue runs only).
    pub reply: Vec<PathBuf>,
}

impl Files {
    pub fn remove(&self) {
        for f in self.warm.iter().chain(&self.data).chain(&self.reply) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Writes the pcaps for `flows` sessions and `packets` data packets, split
/// round-robin over `queues` files per port (one per receive queue).
pub fn generate(dir: &Path, flows: u32, packets: u32, queues: usize) -> std::io::Result<Files> {
    let name = |kind: &str, q: usize| dir.join(format!("{kind}-{flows}-{q}of{queues}.pcap"));
    let mut warm: Vec<Writer> = (0..queues).map(|q| Writer::create(&name("warm", q))).collect::<Result<_, _>>()?;
    for i in 0..flows {
        warm[i as usize % queues].client_frame(i, Kind::Syn)?;
    }
    let sample = pcapgen::data_flows(flows, packets);
    let mut data: Vec<Writer> = (0..queues).map(|q| Writer::create(&name("data", q))).collect::<Result<_, _>>()?;
    for (k, &i) in sample.iter().enumerate() {
        data[k % queues].client_frame(i, Kind::Data)?;
    }
    let mut files = Files {
        warm: (0..queues).map(|q| name("warm", q)).collect(),
        data: (0..queues).map(|q| name("data", q)).collect(),
        reply: Vec::new(),
    };
    warm.into_iter().chain(data).try_for_each(Writer::finish)?;
    if queues == 1 {
        // Replies come from the server Maglev gave each flow, computed by
        // ringlb's own tables from the NAT configuration.
        let cfg = config::parse(&yaml("nat", "W", "D", "[1]", flows, 1024), "bench-nat.yaml")
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let macs = vec![PORT_MAC; cfg.ports.len()];
        let shared = Shared::new(&cfg, &macs);
        let path = name("reply", 0);
        let mut w = Writer::create(&path)?;
        for &i in &sample {
            let (ip, port) = pcapgen::client(i);
            let key = FlowKey {
                client_ip: u32::from_be_bytes(ip),
                vip: u32::from_be_bytes(pcapgen::VIP),
                client_port: port,
                vport: pcapgen::VPORT,
                proto: L4Proto::Tcp,
            };
            let id = usize::from(shared.maglev_pick(0, &key).expect("the bench service uses Maglev"));
            let sv = &cfg.servers[id];
            w.reply_frame(i, (sv.ip.to_be_bytes(), sv.port), server_mac(id))?;
        }
        w.finish()?;
        files.reply.push(path);
    }
    Ok(files)
}

/// One pcap of `flows` SYNs of unique flows (the new-connection input).
pub fn syn_file(dir: &Path, flows: u32) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("syn-{flows}.pcap"));
    let mut w = Writer::create(&path)?;
    for i in 0..flows {
        w.client_frame(i, Kind::Syn)?;
    }
    w.finish()?;
    Ok(path)
}

/// The configuration text. `warm`/`data` are the two client-side vdevs.
fn yaml(mode: &str, warm: &str, data: &str, workers: &str, sessions: u32, mbufs: u32) -> String {
    let eal = format!("{{ control_core: 0, worker_cores: {workers}, hugepages: true, mbufs: {mbufs} }}");
    yaml_with(&eal, mode, warm, data, crate::measure::SINK, workers, sessions)
}

fn yaml_with(eal: &str, mode: &str, warm: &str, data: &str, sink: &str, workers: &str, sessions: u32) -> String {
    let vport = if mode == "nat" { 8080 } else { 80 };
    let servers: String = (0..3)
        .map(|i| {
            let m = server_mac(i);
            format!(
                "    - {{ ip: 198.18.1.{}, port: {vport}, mac: \"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\" }}\n",
                11 + i,
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5]
            )
        })
        .collect();
    // One worker: exactly the sessions asked for (the table sizing users get).
    // More: 1/16 headroom, as the owner hash never splits flows exactly evenly.
    let capacity = if workers == "[1]" { u64::from(sessions) } else { u64::from(sessions) + u64::from(sessions) / 16 };
    let data_port = if data.is_empty() {
        String::new()
    } else {
        format!("  - {{ device: \"{data}\", ip: 198.18.0.1/24, mac: \"02:00:00:00:00:01\" }}\n")
    };
    format!(
        "# generated by ringlb-bench
eal: {eal}
ports:
{data_port}  - {{ device: \"{warm}\", ip: 198.18.2.1/24, mac: \"02:00:00:00:00:01\" }}
  - {{ device: \"{sink}\", ip: 198.18.1.1/24 }}
services:
  - {{ name: bench, vip: 198.18.100.1, port: 80, mode: {mode}, scheduler: maglev, group: web }}
server_groups:
  web:
{servers}sessions: {{ capacity: {capacity} }}
timeouts: {{ syn: 60m, established: 60m }}
"
    )
}

fn vdev(name: &str, files: &[PathBuf], infinite: bool) -> String {
    let mut s = name.to_string();
    for f in files {
        s.push_str(&format!(",rx_pcap={}", f.display()));
    }
    if infinite {
        s.push_str(",infinite_rx=1");
    }
    s
}

/// A ringlb configuration for one steady-state run.
#[allow(clippy::too_many_arguments)]
pub fn ringlb_yaml(
    dir: &Path,
    tag: &str,
    mode: &str,
    sessions: u32,
    data: &[PathBuf],
    warm: &[PathBuf],
    workers: &[u32],
    mbufs: u32,
) -> Result<PathBuf, String> {
    let text = yaml(
        mode,
        &vdev("net_pcap1", warm, false),
        &vdev("net_pcap0", data, true),
        &format!("{workers:?}"),
        sessions,
        mbufs,
    );
    // Server replies are accepted only on the port of the server's subnet
    // (from its MAC): the reply run replays them into the data port, so
    // there the data port is on the servers' subnet (listed first, it is
    // the one their replies are expected on).
    let text = if tag == "nat-reply" { text.replacen("ip: 198.18.0.1/24", "ip: 198.18.1.2/24", 1) } else { text };
    write_config(dir, &format!("{tag}-{sessions}.yaml"), &text)
}

/// A ringlb configuration that only reads SYNs once (new connections).
pub fn creation_yaml(dir: &Path, sessions: u32, syn: &Path, mbufs: u32) -> Result<PathBuf, String> {
    let text = yaml("dsr", &vdev("net_pcap1", &[syn.to_path_buf()], false), "", "[1]", sessions, mbufs);
    write_config(dir, &format!("create-{sessions}.yaml"), &text)
}

/// The same SYNs to a `syn_proxy` NAT service: each is answered with a
/// SYN cookie in its own buffer, and nothing is kept.
pub fn cookie_yaml(dir: &Path, syns: u32, syn: &Path, mbufs: u32) -> Result<PathBuf, String> {
    let text = yaml("nat, syn_proxy: true", &vdev("net_pcap1", &[syn.to_path_buf()], false), "", "[1]", syns, mbufs);
    write_config(dir, &format!("cookies-{syns}.yaml"), &text)
}

fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    // Validate with ringlb's own parser first: a bad generated config is our bug.
    config::parse(text, name).map_err(|e| format!("generated config is invalid: {e}"))?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The sibling-sync pair: appliance A is the steady-state DSR configuration
/// plus a cluster section; B, its sibling, has the same services on ports
/// that receive nothing (net_null), no hugepages, one idle-friendly worker
/// on the control core. Returns (A's config, B's config).
#[allow(clippy::too_many_arguments)]
pub fn sibling_yamls(
    dir: &Path,
    sessions: u32,
    data: &[PathBuf],
    warm: &[PathBuf],
    mbufs: u32,
    addrs: (&str, &str),
) -> Result<(PathBuf, PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("cluster.key");
    std::fs::write(&key, "9f2c4b7e1a0d3c6f8e5b2a9d4c7f0e3b6a1d8c5f2e9b4a7d0c3f6e1b8a5d2c9f\n")
        .map_err(|e| format!("{}: {e}", key.display()))?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    let cluster = |me: &str| {
        format!(
            "cluster: {{ address: \"{me}\", members: [\"{}\", \"{}\"], key_file: \"{}\", timers: fast }}\n",
            addrs.0,
            addrs.1,
            key.display()
        )
    };
    let a = yaml("dsr", &vdev("net_pcap1", warm, false), &vdev("net_pcap0", data, true), "[1]", sessions, mbufs)
        + &cluster(addrs.0);
    // The sibling stands in for another machine: it lives on core 0 with
    // A's control thread, so what the sync-on run costs A's worker (core 1)
    // is A's own share of sync, not a second process on its core.
    let b_eal = "{ control_core: 0, worker_cores: [0], hugepages: false, memory_mb: 256, idle: adaptive }";
    let b = yaml_with(b_eal, "dsr", "net_null1,no-rx=1", "net_null0,no-rx=1", "net_null2,no-rx=1", "[1]", sessions)
        + &cluster(addrs.1);
    Ok((
        write_config(dir, &format!("sync-a-{sessions}.yaml"), &a)?,
        write_config(dir, &format!("sync-b-{sessions}.yaml"), &b)?,
    ))
}
