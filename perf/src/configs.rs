//! The inputs of one benchmark step: pcap files and the ringlb
//! configuration that reads them. Every run uses the same addressing:
//! clients → VIP 198.18.100.1:80 on the data port (and the warm-up port),
//! three servers 198.18.1.11–13 behind the sink port.

use ringlb::config;
use ringlb::dataplane::Shared;
use ringlb::l7::cookie::{CookieFlow, CookieJar};
use ringlb::l7::segment;
use ringlb::packet::L4Proto;
use ringlb::session::FlowKey;
use ringlb_perf::pcapgen::{self, Kind, Writer, PORT_MAC, ROUTER_MAC};
use ringlb_testkit::{tcp_seq, with_tcp_options, ACK, PSH, SYN};
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
            let id = usize::from(shared.routing().maglev_pick(0, &key).expect("the bench service uses Maglev"));
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

/// The L7 benchmark's cookie key (`syn_cookies.key_file`), so that the
/// pcap can answer the appliance's cookies.
const L7_KEY: &str = "5d2e8a1c7f3b9e4d6a0c2f8b1e7d3a9c5f0b4e8d2a6c1f7b3e9d5a0c4f8b2e6d";
/// Linux's SYN options, without timestamps: MSS 1460, NOP, window scale 7, SACK-permitted, NOP NOP.
const L7_SYN_OPTIONS: [u8; 12] = [2, 4, 5, 180, 1, 3, 3, 7, 4, 2, 1, 1];
/// The server's SYN-ACK options: MSS 1460, NOP, window scale 7, SACK-permitted, NOP NOP.
const L7_SYNACK_OPTIONS: [u8; 12] = [2, 4, 5, 180, 1, 3, 3, 7, 4, 2, 1, 1];
const L7_GET: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: bench\r\nUser-Agent: ringlb-bench\r\nAccept: */*\r\n\r\n";
const L7_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const L7_CLIENT_ISN: u32 = 1000;
const L7_SERVER_ISN: u32 = 0x7000_0000;

/// The L7 inputs for `flows` connections to one `mode: l7` service with
/// one server (so the pcap knows where each replayed SYN goes). The first
/// file holds, per flow, what one connection takes: the client's SYN, its
/// ACK of the cookie SYN-ACK carrying a one-segment GET, the server's
/// SYN-ACK to the replayed SYN, and its answer (which ACKs the request).
/// With `packets`, the second holds that many client data segments of
/// those flows once spliced (the steady state). The cookies are made for
/// the current 65-second slice, which the appliance accepts for 65 to 131
/// s: the run must start at once.
pub fn l7_files(dir: &Path, flows: u32, packets: Option<u32>) -> std::io::Result<(PathBuf, Option<PathBuf>)> {
    let jar = CookieJar::from_secret(L7_KEY);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let wall_ms = now.as_millis() as u64;
    let vip = (pcapgen::VIP, pcapgen::VPORT);
    let server = ([198, 18, 1, 11], 8080);
    let path = dir.join(format!("l7-{flows}.pcap"));
    let mut w = Writer::create(&path)?;
    let mut cookies = Vec::with_capacity(flows as usize);
    for i in 0..flows {
        let (ip, port) = pcapgen::client(i);
        let to_vip = |seq, ack, flags, payload: &[u8]| {
            tcp_seq(ROUTER_MAC, PORT_MAC, ip, vip.0, (port, vip.1), seq, ack, 502, flags, payload)
        };
        let from_server = |seq, ack, flags, payload: &[u8]| {
            tcp_seq(server_mac(0), PORT_MAC, server.0, ip, (server.1, port), seq, Some(ack), 502, flags, payload)
        };
        let syn = with_tcp_options(&to_vip(L7_CLIENT_ISN, None, SYN, b""), &L7_SYN_OPTIONS);
        let (isn, offered) = segment::read_syn(&syn).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let opts = segment::agreed(&offered.opts, Some(7));
        let flow = CookieFlow {
            client_ip: u32::from_be_bytes(ip),
            client_port: port,
            vip: u32::from_be_bytes(vip.0),
            vport: vip.1,
        };
        let cookie = jar.make(&flow, isn, &opts, wall_ms);
        cookies.push(cookie);
        w.raw(syn)?;
        w.raw(to_vip(isn + 1, Some(cookie.wrapping_add(1)), ACK | PSH, L7_GET))?;
        w.raw(with_tcp_options(&from_server(L7_SERVER_ISN, isn + 1, SYN | ACK, b""), &L7_SYNACK_OPTIONS))?;
        w.raw(from_server(L7_SERVER_ISN + 1, isn + 1 + L7_GET.len() as u32, ACK | PSH, L7_ANSWER))?;
    }
    w.finish()?;
    let Some(packets) = packets else { return Ok((path, None)) };
    let data = dir.join(format!("l7-data-{flows}.pcap"));
    let mut w = Writer::create(&data)?;
    for i in pcapgen::data_flows(flows, packets) {
        let (ip, port) = pcapgen::client(i);
        let seq = L7_CLIENT_ISN + 1 + L7_GET.len() as u32;
        let ack = cookies[i as usize].wrapping_add(1 + L7_ANSWER.len() as u32);
        w.raw(tcp_seq(ROUTER_MAC, PORT_MAC, ip, vip.0, (port, vip.1), seq, Some(ack), 502, ACK | PSH, b"ringlb"))?;
    }
    w.finish()?;
    Ok((path, Some(data)))
}

/// A `mode: l7` configuration reading `l7` (the connections, once) on a
/// port of the servers' subnet, and `data` (spliced client segments,
/// forever) on the client side if given. The key file is written beside it.
pub fn l7_yaml(dir: &Path, flows: u32, l7: &Path, data: Option<&Path>, mbufs: u32) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("cookie.key");
    std::fs::write(&key, L7_KEY).map_err(|e| format!("{}: {e}", key.display()))?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    let data_port = data.map_or(String::new(), |d| {
        format!(
            "  - {{ device: \"{}\", ip: 198.18.0.1/24, mac: \"02:00:00:00:00:01\" }}\n",
            vdev("net_pcap0", &[d.to_path_buf()], true)
        )
    });
    let m = server_mac(0);
    let text = format!(
        "# generated by ringlb-bench
eal: {{ control_core: 0, worker_cores: [1], hugepages: true, mbufs: {mbufs} }}
ports:
{data_port}  - {{ device: \"{}\", ip: 198.18.1.2/24, mac: \"02:00:00:00:00:01\" }}
  - {{ device: \"{}\", ip: 198.18.1.1/24 }}
services:
  - {{ name: bench, vip: 198.18.100.1, port: 80, mode: l7, group: web }}
server_groups:
  web:
    - {{ ip: 198.18.1.11, port: 8080, mac: \"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\" }}
sessions: {{ capacity: 1024, proxied: {flows} }}
syn_cookies: {{ key_file: \"{}\" }}
timeouts: {{ syn: 60m, established: 60m }}
",
        vdev("net_pcap1", &[l7.to_path_buf()], false),
        crate::measure::SINK,
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        key.display()
    );
    write_config(dir, &format!("l7-{flows}.yaml"), &text)
}
