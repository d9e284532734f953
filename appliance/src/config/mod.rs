//! The YAML configuration: schema (serde), parsing (serde-saphyr) and
//! validation into a resolved [`Config`] the data plane can index directly.
//! Every error names the file, line and column (or the key) and says why.

mod cluster;
mod l7;
pub mod reload;

pub use cluster::{ClusterConfig, Garp, Secret, VipMode, DEFAULT_DEFER_MS, DEFAULT_GARP};
pub use l7::{L7Config, L7Group, Redirect};

use crate::packet::{L4Proto, Mac};
use crate::sched::maglev;
use crate::session::Timeouts;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

// ---------- schema: what the user writes ----------

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    eal: RawEal,
    ports: Vec<RawPort>,
    services: Vec<RawService>,
    server_groups: BTreeMap<String, Vec<RawServer>>,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    arp: RawArp,
    #[serde(default)]
    cluster: Option<cluster::RawCluster>,
    #[serde(default)]
    syn_cookies: Option<RawSynCookies>,
    #[serde(default)]
    bird: Option<RawBird>,
}

/// The SYN cookies' key, shared by the appliances that must check each
/// other's cookies (without it: the cluster key, or a random one).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSynCookies {
    key_file: Spanned<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawEal {
    control_core: u32,
    worker_cores: Spanned<Vec<u32>>,
    #[serde(default = "yes")]
    hugepages: bool,
    /// Memory for DPDK in MiB (`-m`); required sizing when hugepages are off.
    #[serde(default)]
    memory_mb: Option<u32>,
    /// Packet buffers in the pool; default: enough for every port queue and hand-off queue.
    /// Raise it for vdevs that preload packets (net_pcap `infinite_rx=1`).
    #[serde(default)]
    mbufs: Option<Spanned<u32>>,
    #[serde(default)]
    extra_args: Vec<String>,
    /// poll: workers spin on empty queues (lowest latency); adaptive: they
    /// sleep briefly after a run of empty polls and spin again on traffic.
    #[serde(default)]
    idle: IdleMode,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdleMode {
    #[default]
    Poll,
    Adaptive,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawPort {
    /// PCI address (0000:03:00.0) or vdev string (net_af_packet0,iface=eth1).
    device: Spanned<String>,
    /// The appliance's own address on this port, with prefix: 198.18.0.1/24.
    ip: Spanned<String>,
    #[serde(default)]
    mac: Option<Spanned<String>>,
    /// A kernel interface for what the fast path does not answer (BGP, ssh).
    #[serde(default)]
    kernel: Option<Spanned<RawKernel>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    /// The tap interface's name (net_tap PMD).
    tap: String,
    /// Give it the port's address and bring it up (default true).
    #[serde(default)]
    configure: Option<bool>,
}

/// Announcing the VIPs by BGP through BIRD.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawBird {
    /// The file ringlb writes: a BIRD `protocol static` with the VIPs to announce.
    vips_file: Spanned<String>,
    /// BIRD's control socket (`birdc -s`), told to `configure` after each change.
    #[serde(default)]
    socket: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// L4/2: rewrite MACs only; servers answer the client directly.
    Dsr,
    /// L4/3: rewrite the destination address; replies come back through us.
    Nat,
    /// L7 (HTTP/1.x): the appliance completes the client's handshake (SYN
    /// cookie), reads the request head, picks a server group by content
    /// rules, opens the server's side, and splices the two.
    L7,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Smooth weighted round robin.
    Wrr,
    /// Maglev consistent hashing of the client endpoint.
    Maglev,
    /// Smooth weighted round robin with each weight scaled by the load its
    /// server's agent reports (weight / (1 + load)): load-aware
    /// dispatch. Servers without an agent keep their weight.
    #[serde(rename = "least_load")]
    LeastLoad,
}

impl SchedulerKind {
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Maglev => "maglev",
            SchedulerKind::LeastLoad => "least_load",
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<Ipv4Addr>,
    port: u16,
    #[serde(default = "tcp")]
    protocol: Protocol,
    mode: Mode,
    #[serde(default = "wrr")]
    scheduler: SchedulerKind,
    #[serde(default)]
    maglev_table_size: Option<Spanned<usize>>,
    group: Spanned<String>,
    /// Client persistence: a client's new connections go to the server its
    /// first one went to, until the lock times out.
    #[serde(default)]
    persistence: Option<RawPersistence>,
    /// The appliance's own health probe of the servers without an agent:
    /// a TCP SYN from the data port (SYN-ACK = a success, then RST).
    #[serde(default)]
    probe: Option<RawProbe>,
    /// What happens to the sessions of a server that goes down: keep
    /// (they go on; the default) or reset (the client's next packet is
    /// answered with a RST and the session ends).
    #[serde(default)]
    on_server_down: OnServerDown,
    /// IPv4 fragments to the VIP (UDP, dsr, maglev only): every datagram,
    /// fragmented or not, goes to the server a hash of (source,
    /// destination, protocol) picks, so all fragments of one datagram meet
    /// at one server. Off: fragments are counted drops.
    #[serde(default)]
    fragments: Option<Spanned<bool>>,
    /// SYN-flood protection (`nat` over TCP only): the appliance answers
    /// each SYN itself with a SYN cookie and keeps no state until the
    /// client's ACK returns a valid one; only then is the server's side
    /// opened, and the two halves are joined by sequence-number translation.
    #[serde(default)]
    syn_proxy: Option<Spanned<bool>>,
    /// `mode: l7`: content rules (`config::l7`).
    #[serde(default)]
    l7: Option<Spanned<l7::RawL7>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnServerDown {
    #[default]
    Keep,
    Reset,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    /// Between probes (HAProxy's `inter`).
    #[serde(default)]
    interval: Option<Spanned<String>>,
    /// How long a probe waits for the SYN-ACK.
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    /// Successes in a row that bring a server up, failures that take it down.
    #[serde(default)]
    rise: Option<Spanned<u32>>,
    #[serde(default)]
    fall: Option<Spanned<u32>>,
}

/// A service's probe of its agent-less servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
}

/// HAProxy's defaults: every 2 s, up after 2 successes, down after 3 failures.
pub const DEFAULT_PROBE: Probe = Probe { interval_ms: 2000, timeout_ms: 1000, rise: 2, fall: 3 };
/// Probes use source ports from here on, one per server id below `MAX_PROBED`.
pub const PROBE_PORT_BASE: u16 = 0xc000;
pub const MAX_PROBED: usize = 0x4000;
/// Descriptors per DPDK queue (`app`: every rx and tx queue of every port).
pub const PORT_QUEUE_DESC: u16 = 1024;
/// Frames one worker → worker hand-off ring holds.
pub const HANDOFF_QUEUE_LEN: u32 = 8192;
/// Packet buffers beyond queues and rings (mempool caches, control frames).
pub const MBUF_HEADROOM: u64 = 8192;
/// Hugepage memory one mbuf takes with DPDK's default data room.
pub const MBUF_BYTES: u64 = 2432;
/// A Maglev table build may take this many steps (slots × servers).
pub const MAGLEV_BUILD_LIMIT: u64 = 1_000_000_000;
/// `arp.refresh` may not be shorter (each refresh broadcasts a request per server).
pub const MIN_ARP_REFRESH_MS: u32 = 1000;

/// `s` as a YAML double-quoted scalar: backslash, quote and every control
/// character escaped (YAML's escapes, not Rust's `{:?}` ones).
fn yaml_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => o.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || c == '\u{feff}' || c == '\u{2028}' || c == '\u{2029}' || c == '\u{85}' => {
                o.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// MemAvailable from /proc/meminfo, if the kernel reports it.
fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawPersistence {
    timeout: Spanned<String>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}
fn wrr() -> SchedulerKind {
    SchedulerKind::Wrr
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawServer {
    ip: Spanned<Ipv4Addr>,
    port: u16,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    mac: Option<Spanned<String>>,
    /// The ring address of the `ringlb-agent` on this server (a member of
    /// `cluster.members`): a new VIP owner asks it for the server's
    /// connections to rebuild their sessions.
    #[serde(default)]
    agent: Option<Spanned<String>>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    capacity: Spanned<usize>,
    /// Client locks each worker can hold (services with persistence).
    #[serde(default = "default_locks")]
    locks: Spanned<usize>,
    /// Connections the `syn_proxy` and `l7` services can hold at once (all workers).
    #[serde(default = "default_proxied")]
    proxied: Spanned<usize>,
    /// `l7`: requests being gathered at once (16 KiB each; all workers).
    #[serde(default = "default_request_buffers")]
    request_buffers: Spanned<usize>,
}

fn default_request_buffers() -> Spanned<usize> {
    unspanned(2048)
}

fn default_proxied() -> Spanned<usize> {
    unspanned(1 << 16)
}

fn default_locks() -> Spanned<usize> {
    unspanned(1 << 16)
}

impl Default for RawSessions {
    fn default() -> Self {
        RawSessions {
            capacity: unspanned(1 << 20),
            locks: default_locks(),
            proxied: default_proxied(),
            request_buffers: default_request_buffers(),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct RawTimeouts {
    syn: Spanned<String>,
    established: Spanned<String>,
    closing: Spanned<String>,
    udp: Spanned<String>,
}

fn unspanned<T>(v: T) -> Spanned<T> {
    let loc = serde_saphyr::Location::UNKNOWN;
    Spanned::new(v, loc, loc)
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            syn: unspanned("5s".into()),
            established: unspanned("300s".into()),
            closing: unspanned("10s".into()),
            udp: unspanned("30s".into()),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
struct RawArp {
    /// How often a resolved server's MAC is re-requested.
    refresh: Spanned<String>,
}

impl Default for RawArp {
    fn default() -> Self {
        RawArp { refresh: unspanned("30s".into()) }
    }
}

// ---------- resolved configuration ----------

#[derive(Debug, Clone)]
pub struct EalConfig {
    pub control_core: u32,
    pub worker_cores: Vec<u32>,
    pub hugepages: bool,
    pub memory_mb: Option<u32>,
    /// Requested pool size; the run raises it to what the queues need.
    pub mbufs: Option<u32>,
    pub extra_args: Vec<String>,
    pub idle: IdleMode,
}

#[derive(Debug, Clone)]
pub struct PortConfig {
    pub device: String,
    pub ip: u32,
    pub prefix_len: u8,
    pub mac: Option<Mac>,
    /// The port's kernel interface (a net_tap), if any.
    pub kernel: Option<KernelTap>,
}

impl PortConfig {
    /// The name DPDK registers the port under: the vdev name or the PCI address.
    pub fn dpdk_name(&self) -> &str {
        self.device.split(',').next().unwrap_or(&self.device)
    }
    pub fn is_vdev(&self) -> bool {
        self.device.starts_with("net_") || self.device.contains(',')
    }
    pub fn contains(&self, ip: u32) -> bool {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - self.prefix_len) };
        ip & mask == self.ip & mask
    }
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: u32,
    pub port: u16,
    pub proto: L4Proto,
    pub mode: Mode,
    pub scheduler: SchedulerKind,
    pub maglev_table_size: usize,
    pub group: String,
    /// Global server ids, in group order.
    pub servers: Vec<u16>,
    /// Client-lock lifetime, if the service has persistence.
    pub persistence_ms: Option<u32>,
    /// The probe of its servers that have no agent.
    pub probe: Option<Probe>,
    pub on_server_down: OnServerDown,
    /// Fragments accepted, dispatch by address hash (see `RawService::fragments`).
    pub fragments: bool,
    /// SYN cookies in front of the servers (see `RawService::syn_proxy`).
    pub syn_proxy: bool,
    /// `mode: l7`: its groups (the default first) and rules.
    pub l7: Option<L7Config>,
}

/// A port's kernel interface: a tap with the port's MAC (and, with
/// `configure`, its address), through which the frames to the port's own
/// address that the fast path does not answer (BGP, ssh, ARP replies it
/// did not ask for) reach the kernel, and the kernel's frames leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTap {
    pub tap: String,
    pub configure: bool,
}

/// Where ringlb tells BIRD which VIPs to announce (`control::bird`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdConfig {
    pub vips_file: String,
    pub socket: Option<String>,
}

/// One member of a service's server group. A machine serving two services
/// appears twice (its weight and counters are per service).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub ip: u32,
    pub port: u16,
    pub weight: u32,
    pub service: u16,
    pub neighbor: u16,
    /// The ring address of the server's `ringlb-agent`, if it runs one.
    pub agent: Option<std::net::SocketAddrV4>,
    /// A reload removed it: it keeps its id (sessions and counters name
    /// it) but is in no service's list (`config::reload`).
    pub removed: bool,
}

/// A next hop the appliance sends to directly: one per distinct server IP.
#[derive(Debug, Clone)]
pub struct NeighborConfig {
    pub ip: u32,
    pub port: u8,
    pub static_mac: Option<Mac>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub eal: EalConfig,
    pub ports: Vec<PortConfig>,
    pub services: Vec<ServiceConfig>,
    pub servers: Vec<ServerConfig>,
    pub neighbors: Vec<NeighborConfig>,
    pub session_capacity: usize,
    /// Client locks per worker (allocated only when a service has persistence).
    pub lock_capacity: usize,
    /// Proxied connections per appliance (allocated only when a service has `syn_proxy` or is `l7`).
    pub proxied_capacity: usize,
    /// `l7` request buffers per appliance (16 KiB each).
    pub request_buffers: usize,
    pub timeouts: Timeouts,
    pub arp_refresh_ms: u32,
    pub cluster: Option<ClusterConfig>,
    /// `syn_cookies.key_file` and the secret it holds.
    pub syn_cookie_key_file: Option<String>,
    pub syn_cookie_secret: Option<Secret>,
    pub bird: Option<BirdConfig>,
}

// ---------- errors ----------

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn at<T>(&self, s: &Spanned<T>, msg: impl Into<String>) -> ConfigError {
        self.at_loc(s.referenced, msg)
    }
    fn at_loc(&self, loc: serde_saphyr::Location, msg: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_owned(), line: loc.line(), column: loc.column(), message: msg.into() }
    }
    fn key(&self, msg: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_owned(), line: 0, column: 0, message: msg.into() }
    }
}

// ---------- parsing and validation ----------

pub fn load(path: &str) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates `text`; `file` is only used in messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { file };
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        // The rendered error may carry a source snippet; keep its first line.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("invalid YAML");
        // Drop the library's own "error: line L column C: " prefix; we print file:L:C.
        let first = match first.strip_prefix("error: line ").and_then(|r| r.split_once(": ")) {
            Some((_, rest)) => rest.to_owned(),
            None => first.to_owned(),
        };
        ConfigError { file: file.to_owned(), line, column, message: first }
    })?;
    validate(raw, &cx)
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// "250ms", "5s", "2m", "1h" → milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u32> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    // Session timestamps are u32 milliseconds compared with wrapping arithmetic:
    // a timeout must stay well under half the range.
    if ms == 0 || ms > u64::from(u32::MAX / 4) {
        return None;
    }
    Some(ms as u32)
}

fn duration(cx: &Ctx, s: &Spanned<String>, key: &str) -> Result<u32, ConfigError> {
    parse_duration_ms(&s.value).ok_or_else(|| {
        cx.at(s, format!("{key}: '{}' is not a duration (use e.g. 500ms, 5s, 2m; > 0 and < 12 days)", s.value))
    })
}

fn validate(raw: RawConfig, cx: &Ctx) -> Result<Config, ConfigError> {
    // EAL
    let workers = &raw.eal.worker_cores;
    if workers.value.is_empty() {
        return Err(cx.at(workers, "eal.worker_cores: at least one worker core is needed"));
    }
    if workers.value.len() > 64 {
        return Err(cx.at(workers, "eal.worker_cores: at most 64 workers are supported"));
    }
    if let Some(m) = &raw.eal.mbufs {
        if !(1024..=1 << 28).contains(&m.value) {
            return Err(cx.at(m, format!("eal.mbufs: {} is outside 1024..=268435456", m.value)));
        }
    }
    if !raw.eal.hugepages && raw.eal.memory_mb.is_none() {
        return Err(cx.key("eal.memory_mb: required when eal.hugepages is false (DPDK needs a size for --no-huge)"));
    }

    // Ports
    if raw.ports.is_empty() {
        return Err(cx.key("ports: at least one port is needed"));
    }
    if raw.ports.len() > 32 {
        return Err(cx.key("ports: at most 32 ports are supported"));
    }
    let mut ports = Vec::new();
    let mut devices = HashSet::new();
    for (i, p) in raw.ports.iter().enumerate() {
        if p.device.value.trim().is_empty() {
            return Err(cx.at(&p.device, format!("ports[{i}].device: empty")));
        }
        let (ip, prefix) =
            p.ip.value
                .split_once('/')
                .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok().filter(|l| *l <= 32)?)))
                .ok_or_else(|| {
                    cx.at(
                        &p.ip,
                        format!("ports[{i}].ip: '{}' is not an IPv4 address with prefix (198.18.0.1/24)", p.ip.value),
                    )
                })?;
        let mac = match &p.mac {
            None => None,
            Some(m) => Some(parse_mac(&m.value).ok_or_else(|| {
                cx.at(m, format!("ports[{i}].mac: '{}' is not a MAC address (02:00:00:00:00:01)", m.value))
            })?),
        };
        let kernel = match &p.kernel {
            None => None,
            Some(k) => {
                let name = &k.value.tap;
                let ok = !name.is_empty()
                    && name.len() <= 15
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !ok {
                    return Err(cx.at(
                        k,
                        format!("ports[{i}].kernel.tap: '{name}' is not an interface name (1-15 of a-z A-Z 0-9 _ -)"),
                    ));
                }
                if mac.is_none() {
                    return Err(
                        cx.at(k, format!("ports[{i}].kernel: needs ports[{i}].mac (the tap takes the port's MAC)"))
                    );
                }
                Some(KernelTap { tap: name.clone(), configure: k.value.configure.unwrap_or(true) })
            }
        };
        if let Some(k) = &kernel {
            if ports.iter().any(|o: &PortConfig| o.kernel.as_ref().is_some_and(|ok| ok.tap == k.tap)) {
                return Err(cx.key(format!("ports[{i}].kernel.tap: '{}' is used by two ports", k.tap)));
            }
        }
        let port = PortConfig { device: p.device.value.clone(), ip: u32::from(ip), prefix_len: prefix, mac, kernel };
        if !devices.insert(port.dpdk_name().to_owned()) {
            return Err(cx.at(&p.device, format!("ports[{i}].device: '{}' is used by two ports", port.dpdk_name())));
        }
        ports.push(port);
    }

    // The packet buffers the appliance will ask for (`app`: every queue's
    // descriptors, every hand-off ring, headroom) must fit in `memory_mb`.
    if let Some(mb) = raw.eal.memory_mb {
        let w = raw.eal.worker_cores.value.len() as u64;
        // Each port's queues, and each kernel interface's (one rx and one tx per worker).
        let taps = raw.ports.iter().filter(|p| p.kernel.is_some()).count() as u64;
        let queues = (raw.ports.len() as u64 + taps) * 2 * w * u64::from(PORT_QUEUE_DESC);
        let handoff = w * w.saturating_sub(1) * u64::from(HANDOFF_QUEUE_LEN);
        let mbufs = (queues + handoff + MBUF_HEADROOM).max(raw.eal.mbufs.as_ref().map_or(0, |m| u64::from(m.value)));
        let need_mb = (mbufs * MBUF_BYTES).div_ceil(1 << 20);
        if need_mb > u64::from(mb) {
            return Err(cx.key(format!(
                "eal.memory_mb: {mb} MiB cannot hold the {mbufs} packet buffers ({need_mb} MiB) that {w} workers \
                 on {} ports need ({queues} for queues, {handoff} for hand-off rings between workers); \
                 raise memory_mb or use fewer workers",
                raw.ports.len()
            )));
        }
    }

    // Services and their servers
    if raw.services.is_empty() {
        return Err(cx.key("services: at least one service is needed"));
    }
    let mut services = Vec::new();
    let mut servers: Vec<ServerConfig> = Vec::new();
    let mut neighbors: Vec<NeighborConfig> = Vec::new();
    let mut neighbor_of_ip: HashMap<u32, u16> = HashMap::new();
    // A server machine runs one agent, whatever services it serves.
    let mut agent_of_ip: HashMap<u32, std::net::SocketAddrV4> = HashMap::new();
    let mut agents: Vec<(std::net::SocketAddrV4, &Spanned<String>)> = Vec::new();
    let mut names = HashSet::new();
    let mut endpoints = HashSet::new();
    let mut nat_backends: HashMap<(u32, u16, L4Proto), String> = HashMap::new();
    for (si, s) in raw.services.iter().enumerate() {
        let name = &s.name.value;
        if name.is_empty() || !names.insert(name.clone()) {
            return Err(cx.at(&s.name, format!("services[{si}].name: '{name}' is empty or used twice")));
        }
        let proto = match s.protocol {
            Protocol::Tcp => L4Proto::Tcp,
            Protocol::Udp => L4Proto::Udp,
        };
        let vip = u32::from(s.vip.value);
        if s.port == 0 {
            return Err(cx.at(&s.name, format!("services[{si}] '{name}': port 0 is not a service port")));
        }
        if !endpoints.insert((vip, s.port, proto)) {
            return Err(cx.at(
                &s.vip,
                format!(
                    "services[{si}] '{name}': {}:{} {:?} is already another service's address",
                    s.vip.value, s.port, s.protocol
                ),
            ));
        }
        if ports.iter().any(|p| p.ip == vip) {
            return Err(cx.at(&s.vip, format!("services[{si}] '{name}': VIP {} is also a port address", s.vip.value)));
        }
        // The groups whose servers the service sends to: its group, and
        // for `l7` the groups its rules name.
        let empty_l7 = l7::RawL7::default();
        let raw_l7 = match (&s.l7, s.mode) {
            (Some(l), Mode::L7) => &l.value,
            (None, Mode::L7) => &empty_l7,
            (Some(l), _) => {
                return Err(cx.at(l, format!("services[{si}] '{name}'.l7: content rules need mode: l7")));
            }
            (None, _) => &empty_l7,
        };
        let mut group_names = vec![&s.group];
        group_names.extend(raw_l7.group_names(&s.group.value));
        let mut groups = Vec::new();
        for g in &group_names {
            let members = raw.server_groups.get(&g.value).ok_or_else(|| {
                let known: Vec<&str> = raw.server_groups.keys().map(String::as_str).collect();
                cx.at(
                    *g,
                    format!(
                        "services[{si}] '{name}': unknown server group '{}' (known: {})",
                        g.value,
                        known.join(", ")
                    ),
                )
            })?;
            if members.is_empty() {
                return Err(cx.at(*g, format!("server_groups.{}: empty group", g.value)));
            }
            if members.iter().all(|m| m.weight == 0) {
                return Err(cx.at(*g, format!("server_groups.{}: every weight is 0", g.value)));
            }
            groups.push((*g, members));
        }
        let group = groups[0].1;
        if s.mode == Mode::L7 {
            let why = if proto != L4Proto::Tcp {
                Some("protocol: tcp (HTTP)")
            } else if s.scheduler != SchedulerKind::Wrr {
                Some("scheduler: wrr (each group is scheduled by weighted round robin)")
            } else if s.persistence.is_some() {
                Some("no persistence (rules place each connection)")
            } else if s.syn_proxy.as_ref().is_some_and(|f| f.value) {
                Some("no syn_proxy (an l7 service always answers SYNs with cookies)")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(cx.at(&s.name, format!("services[{si}] '{name}': mode: l7 needs {why}")));
            }
        }
        let maglev_table_size = match &s.maglev_table_size {
            None => maglev::DEFAULT_TABLE_SIZE,
            Some(sz) => {
                if !maglev::is_prime(sz.value) || sz.value <= group.len() || sz.value > 16_777_259 {
                    return Err(cx.at(sz, format!("services[{si}].maglev_table_size: {} must be a prime larger than the group's size (and ≤ 16777259)", sz.value)));
                }
                sz.value
            }
        };
        // Building the table takes up to one turn check per server per slot.
        let build_steps = maglev_table_size as u64 * group.len() as u64;
        if s.scheduler == SchedulerKind::Maglev && build_steps > MAGLEV_BUILD_LIMIT {
            let msg = format!(
                "services[{si}].maglev_table_size: {maglev_table_size} slots × {} servers = {build_steps} build \
                     steps, over the {MAGLEV_BUILD_LIMIT} limit (the build visits every server for every slot); \
                     use a smaller table or a smaller group",
                group.len()
            );
            return Err(match &s.maglev_table_size {
                Some(sz) => cx.at(sz, msg),
                None => cx.at(&s.group, msg),
            });
        }
        let probe = match &s.probe {
            None => None,
            Some(p) => {
                let key = format!("services[{si}].probe");
                let d = DEFAULT_PROBE;
                let interval_ms =
                    p.interval.as_ref().map_or(Ok(d.interval_ms), |v| duration(cx, v, &format!("{key}.interval")))?;
                let timeout_ms = p
                    .timeout
                    .as_ref()
                    .map_or(Ok(d.timeout_ms.min(interval_ms)), |v| duration(cx, v, &format!("{key}.timeout")))?;
                if !(100..=60_000).contains(&interval_ms) {
                    return Err(
                        cx.at(p.interval.as_ref().unwrap_or(&s.name), format!("{key}.interval: between 100ms and 60s"))
                    );
                }
                if timeout_ms > interval_ms {
                    return Err(cx.at(
                        p.timeout.as_ref().unwrap_or(&s.name),
                        format!("{key}.timeout: longer than the interval ({interval_ms} ms)"),
                    ));
                }
                let count = |v: &Option<Spanned<u32>>, default: u32, name: &str| match v {
                    None => Ok(default),
                    Some(c) if (1..=100).contains(&c.value) => Ok(c.value),
                    Some(c) => Err(cx.at(c, format!("{key}.{name}: {} is not between 1 and 100", c.value))),
                };
                Some(Probe {
                    interval_ms,
                    timeout_ms,
                    rise: count(&p.rise, d.rise, "rise")?,
                    fall: count(&p.fall, d.fall, "fall")?,
                })
            }
        };
        let fragments = match &s.fragments {
            Some(f) if f.value => {
                if proto != L4Proto::Udp || s.mode != Mode::Dsr || s.scheduler != SchedulerKind::Maglev {
                    return Err(cx.at(
                        f,
                        format!(
                            "services[{si}] '{name}'.fragments: needs protocol: udp, mode: dsr and scheduler: maglev \
                             (later fragments carry no ports, so every datagram is placed by its addresses alone)"
                        ),
                    ));
                }
                if let Some(other) = services.iter().find(|o: &&ServiceConfig| o.fragments && o.vip == vip) {
                    return Err(cx.at(
                        f,
                        format!(
                            "services[{si}] '{name}'.fragments: service '{}' on the same VIP takes its fragments already",
                            other.name
                        ),
                    ));
                }
                true
            }
            _ => false,
        };
        let syn_proxy = match &s.syn_proxy {
            Some(f) if f.value => {
                if s.mode != Mode::Nat || proto != L4Proto::Tcp {
                    return Err(cx.at(
                        f,
                        format!(
                            "services[{si}] '{name}'.syn_proxy: needs mode: nat and protocol: tcp (a dsr server's \
                             replies bypass the appliance, so their sequence numbers cannot be shifted to match \
                             the cookie)"
                        ),
                    ));
                }
                true
            }
            _ => false,
        };
        let persistence_ms = match &s.persistence {
            None => None,
            Some(p) => {
                if s.scheduler != SchedulerKind::Maglev {
                    // Several appliances may see a client's first connections at
                    // once; only a placement computed from the client itself lets
                    // them agree without a round trip (ring/SYNC.md: client locks).
                    return Err(cx.at(
                        &p.timeout,
                        format!(
                            "services[{si}] '{name}': persistence places a client's first connection by consistent \
                         hashing of its address; set scheduler: maglev"
                        ),
                    ));
                }
                Some(duration(cx, &p.timeout, &format!("services[{si}].persistence.timeout"))?)
            }
        };
        let mut ids = Vec::new();
        let mut l7_groups = Vec::new();
        for (gname, members) in &groups {
            let mut positions = Vec::new();
            for (mi, m) in members.iter().enumerate() {
                let where_ = format!("server_groups.{}[{mi}]", gname.value);
                let ip = u32::from(m.ip.value);
                if m.weight > 1_000_000 {
                    return Err(cx.at(&m.ip, format!("{where_}.weight: {} is above the 1000000 limit", m.weight)));
                }
                if s.mode == Mode::Dsr && m.port != s.port {
                    return Err(cx.at(&m.ip, format!(
                    "{where_}: service '{name}' is dsr, which cannot change ports: server port {} must equal the service port {}",
                    m.port, s.port
                )));
                }
                if m.port == 0 {
                    return Err(cx.at(&m.ip, format!("{where_}.port: 0 is not a server port")));
                }
                if let Some(p) = ports.iter().position(|p| p.ip == ip) {
                    return Err(
                        cx.at(&m.ip, format!("{where_}: {} is the address of ports[{p}], not a server", m.ip.value))
                    );
                }
                if let Some(other) = raw.services.iter().find(|o| u32::from(o.vip.value) == ip) {
                    return Err(cx.at(
                        &m.ip,
                        format!("{where_}: {} is the VIP of service '{}', not a server", m.ip.value, other.name.value),
                    ));
                }
                let port = ports.iter().position(|p| p.contains(ip)).ok_or_else(|| {
                    cx.at(
                        &m.ip,
                        format!(
                            "{where_}: server {} is on none of the ports' subnets (ringlb sends to servers directly)",
                            m.ip.value
                        ),
                    )
                })?;
                let static_mac = match &m.mac {
                    None => None,
                    Some(x) => Some(
                        parse_mac(&x.value)
                            .ok_or_else(|| cx.at(x, format!("{where_}.mac: '{}' is not a MAC address", x.value)))?,
                    ),
                };
                let neighbor = match neighbor_of_ip.get(&ip) {
                    Some(&n) => {
                        if static_mac.is_some() && neighbors[usize::from(n)].static_mac != static_mac {
                            return Err(cx.at(
                                &m.ip,
                                format!("{where_}.mac: server {} has two different static MACs", m.ip.value),
                            ));
                        }
                        n
                    }
                    None => {
                        let n = neighbors.len() as u16;
                        neighbors.push(NeighborConfig { ip, port: port as u8, static_mac });
                        neighbor_of_ip.insert(ip, n);
                        n
                    }
                };
                // NAT and L7 replies come back through the appliance.
                if s.mode != Mode::Dsr {
                    if let Some(other) = nat_backends.insert((ip, m.port, proto), name.clone()) {
                        if &other != name {
                            return Err(cx.at(&m.ip, format!(
                            "{where_}: {}:{} is a NAT backend of both '{other}' and '{name}'; replies could not be told apart",
                            m.ip.value, m.port
                        )));
                        }
                    }
                }
                if servers.len() >= usize::from(u16::MAX) {
                    return Err(cx.key("server_groups: too many servers (limit 65534 across services)"));
                }
                let agent = match &m.agent {
                    None => None,
                    Some(a) => {
                        let addr =
                            a.value.parse::<std::net::SocketAddrV4>().ok().filter(|x| x.port() != 0).ok_or_else(
                                || {
                                    cx.at(
                                        a,
                                        format!(
                                    "{where_}.agent: '{}' is not an IPv4 address with a port (10.255.0.11:7400)",
                                    a.value
                                ),
                                    )
                                },
                            )?;
                        match agent_of_ip.get(&ip) {
                            Some(&other) if other != addr => {
                                return Err(cx.at(
                                    a,
                                    format!(
                                    "{where_}.agent: server {} already has agent {other}; one machine runs one agent",
                                    m.ip.value
                                ),
                                ))
                            }
                            _ => {}
                        }
                        agent_of_ip.insert(ip, addr);
                        agents.push((addr, a));
                        Some(addr)
                    }
                };
                positions.push(ids.len() as u16);
                ids.push(servers.len() as u16);
                servers.push(ServerConfig {
                    ip,
                    port: m.port,
                    weight: m.weight,
                    service: si as u16,
                    neighbor,
                    agent,
                    removed: false,
                });
            }
            l7_groups.push(L7Group { name: gname.value.clone(), members: positions });
        }
        let l7 = match s.mode {
            Mode::L7 => {
                let names: Vec<String> = l7_groups.iter().map(|g| g.name.clone()).collect();
                let key = format!("services[{si}] '{name}'.l7");
                let rules = raw_l7.rules(cx, &key, &names)?;
                let redirect = raw_l7.redirect(cx, &key)?;
                Some(L7Config { groups: l7_groups, rules, redirect })
            }
            _ => None,
        };
        services.push(ServiceConfig {
            name: name.clone(),
            vip,
            port: s.port,
            proto,
            mode: s.mode,
            scheduler: s.scheduler,
            maglev_table_size,
            group: s.group.value.clone(),
            servers: ids,
            persistence_ms,
            probe,
            on_server_down: s.on_server_down,
            fragments,
            syn_proxy,
            l7,
        });
    }
    if services.len() >= usize::from(u16::MAX) {
        return Err(cx.key("services: too many"));
    }
    if services.iter().any(|s| s.probe.is_some()) && servers.len() > MAX_PROBED {
        return Err(cx.key(format!("services: probes need at most {MAX_PROBED} servers in all (one probe port each)")));
    }

    let cap = &raw.sessions.capacity;
    if cap.value == 0 || cap.value > 1 << 30 {
        return Err(cx.at(cap, format!("sessions.capacity: {} must be between 1 and 2^30", cap.value)));
    }
    // Every table is allocated before the ports start; one that cannot be
    // is refused here, not met as an allocation failure at start.
    let n_workers = raw.eal.worker_cores.value.len().max(1);
    let table_bytes = n_workers as u64
        * crate::session::SessionTable::slots_for(cap.value.div_ceil(n_workers)) as u64
        * std::mem::size_of::<crate::session::Entry>() as u64;
    if let Some(avail) = available_memory_bytes() {
        if table_bytes > avail {
            return Err(cx.at(
                cap,
                format!(
                    "sessions.capacity: {} sessions need {} MiB of session tables; this machine has {} MiB available",
                    cap.value,
                    table_bytes >> 20,
                    avail >> 20
                ),
            ));
        }
    }
    let locks = &raw.sessions.locks;
    if locks.value == 0 || locks.value > 1 << 26 {
        return Err(cx.at(locks, format!("sessions.locks: {} must be between 1 and 2^26", locks.value)));
    }
    let proxied = &raw.sessions.proxied;
    if proxied.value == 0 || proxied.value > 1 << 24 {
        return Err(cx.at(proxied, format!("sessions.proxied: {} must be between 1 and 2^24", proxied.value)));
    }
    let buffers = &raw.sessions.request_buffers;
    if buffers.value == 0 || buffers.value > 1 << 20 {
        return Err(cx.at(buffers, format!("sessions.request_buffers: {} must be between 1 and 2^20", buffers.value)));
    }
    let t = &raw.timeouts;
    let timeouts = Timeouts {
        syn_ms: duration(cx, &t.syn, "timeouts.syn")?,
        established_ms: duration(cx, &t.established, "timeouts.established")?,
        closing_ms: duration(cx, &t.closing, "timeouts.closing")?,
        udp_ms: duration(cx, &t.udp, "timeouts.udp")?,
    };
    let arp_refresh_ms = duration(cx, &raw.arp.refresh, "arp.refresh")?;
    if arp_refresh_ms < MIN_ARP_REFRESH_MS {
        return Err(cx.at(
            &raw.arp.refresh,
            format!(
                "arp.refresh: {arp_refresh_ms} ms is below the {MIN_ARP_REFRESH_MS} ms minimum (each refresh \
                 broadcasts a request per server, and a reply is learned only within 1 s of it)"
            ),
        ));
    }
    let cluster = raw.cluster.as_ref().map(|c| cluster::validate(c, cx)).transpose()?;
    let syn_cookie_secret = match &raw.syn_cookies {
        None => None,
        Some(c) => Some(Secret(
            ringlb_ring::keyfile::read(&c.key_file.value)
                .map_err(|e| cx.at(&c.key_file, format!("syn_cookies.key_file: {e}")))?,
        )),
    };
    let bird = match &raw.bird {
        None => None,
        Some(b) => {
            if !b.vips_file.value.starts_with('/') {
                return Err(cx.at(&b.vips_file, "bird.vips_file: give an absolute path (BIRD includes it)"));
            }
            Some(BirdConfig {
                vips_file: b.vips_file.value.clone(),
                socket: b.socket.as_ref().map(|s| s.value.clone()),
            })
        }
    };
    for (addr, span) in &agents {
        match &cluster {
            None => return Err(cx.at(span, "agent: a server's agent is reached over the ring: configure cluster")),
            Some(c) if *addr == c.address => {
                return Err(cx.at(span, format!("agent: {addr} is this appliance's own ring address")))
            }
            Some(c) if !c.members.contains(addr) => {
                return Err(cx.at(span, format!("agent: {addr} is not one of cluster.members")))
            }
            Some(_) => {}
        }
    }

    Ok(Config {
        eal: EalConfig {
            control_core: raw.eal.control_core,
            worker_cores: workers.value.clone(),
            hugepages: raw.eal.hugepages,
            memory_mb: raw.eal.memory_mb,
            mbufs: raw.eal.mbufs.as_ref().map(|m| m.value),
            extra_args: raw.eal.extra_args,
            idle: raw.eal.idle,
        },
        ports,
        services,
        servers,
        neighbors,
        session_capacity: cap.value,
        lock_capacity: locks.value,
        proxied_capacity: proxied.value,
        request_buffers: buffers.value,
        timeouts,
        arp_refresh_ms,
        cluster,
        syn_cookie_key_file: raw.syn_cookies.as_ref().map(|c| c.key_file.value.clone()),
        syn_cookie_secret,
        bird,
    })
}

fn ip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v)
}

fn mac_str(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Config {
    /// The effective configuration as YAML that parses back to the same
    /// configuration (`ringlb check` prints it).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let e = &self.eal;
        let _ = writeln!(
            o,
            "eal:\n  control_core: {}\n  worker_cores: {:?}\n  hugepages: {}",
            e.control_core, e.worker_cores, e.hugepages
        );
        if let Some(m) = e.memory_mb {
            let _ = writeln!(o, "  memory_mb: {m}");
        }
        if let Some(m) = e.mbufs {
            let _ = writeln!(o, "  mbufs: {m}");
        }
        let args: Vec<String> = e.extra_args.iter().map(|a| yaml_str(a)).collect();
        let _ = writeln!(o, "  extra_args: [{}]", args.join(", "));
        let _ = writeln!(o, "  idle: {}", format!("{:?}", e.idle).to_lowercase());
        let _ = writeln!(o, "ports:");
        for p in &self.ports {
            let _ = writeln!(o, "  - device: {}\n    ip: {}/{}", yaml_str(&p.device), ip(p.ip), p.prefix_len);
            match p.mac {
                Some(m) => writeln!(o, "    mac: \"{}\"", mac_str(&m)),
                None => writeln!(o, "    # mac: the device's own"),
            }
            .ok();
            if let Some(k) = &p.kernel {
                let _ = writeln!(o, "    kernel: {{ tap: {}, configure: {} }}", yaml_str(&k.tap), k.configure);
            }
        }
        o.push_str(&self.render_services_and_groups());
        let t = &self.timeouts;
        let _ = writeln!(
            o,
            "sessions:\n  capacity: {}\n  locks: {}\n  proxied: {}\n  request_buffers: {}",
            self.session_capacity, self.lock_capacity, self.proxied_capacity, self.request_buffers
        );
        let _ = writeln!(
            o,
            "timeouts:\n  syn: {}ms\n  established: {}ms\n  closing: {}ms\n  udp: {}ms\narp:\n  refresh: {}ms",
            t.syn_ms, t.established_ms, t.closing_ms, t.udp_ms, self.arp_refresh_ms
        );
        if let Some(k) = &self.syn_cookie_key_file {
            let _ = writeln!(o, "syn_cookies:\n  key_file: {}", yaml_str(k));
        }
        if let Some(b) = &self.bird {
            let _ = writeln!(o, "bird:\n  vips_file: {}", yaml_str(&b.vips_file));
            if let Some(s) = &b.socket {
                let _ = writeln!(o, "  socket: {}", yaml_str(s));
            }
        }
        if let Some(c) = &self.cluster {
            let members: Vec<String> = c.members.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                o,
                "cluster:\n  address: {}\n  members: [{}]\n  key_file: {}\n  timers: {}\n  sync: {}\n  defer: {}\n  \
                 vips: {}\n  preempt: {}\n  garp: {{ count: {}, interval: {}ms }}",
                c.address,
                members.join(", "),
                yaml_str(&c.key_file),
                c.timers_name,
                c.sync,
                c.defer_ms.map_or("off".into(), |ms| format!("{ms}ms")),
                c.vips.name(),
                c.preempt,
                c.garp.count,
                c.garp.interval_ms
            );
        }
        o
    }

    /// The `services` and `server_groups` sections of `render`.
    fn render_services_and_groups(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(o, "services:");
        for s in &self.services {
            let _ = writeln!(
                o,
                "  - name: {}\n    vip: {}\n    port: {}\n    protocol: {}\n    mode: {}\n    scheduler: {}",
                yaml_str(&s.name),
                ip(s.vip),
                s.port,
                format!("{:?}", s.proto).to_lowercase(),
                format!("{:?}", s.mode).to_lowercase(),
                s.scheduler.name()
            );
            if s.scheduler == SchedulerKind::Maglev {
                let _ = writeln!(o, "    maglev_table_size: {}", s.maglev_table_size);
            }
            if let Some(p) = s.persistence_ms {
                let _ = writeln!(o, "    persistence:\n      timeout: {p}ms");
            }
            let _ = writeln!(o, "    on_server_down: {}", format!("{:?}", s.on_server_down).to_lowercase());
            if let Some(p) = s.probe {
                let _ = writeln!(
                    o,
                    "    probe: {{ interval: {}ms, timeout: {}ms, rise: {}, fall: {} }}",
                    p.interval_ms, p.timeout_ms, p.rise, p.fall
                );
            }
            if s.fragments {
                let _ = writeln!(o, "    fragments: true");
            }
            if s.syn_proxy {
                let _ = writeln!(o, "    syn_proxy: true");
            }
            if let Some(l) = &s.l7 {
                o.push_str(&l7::render(l, yaml_str));
            }
            let _ = writeln!(o, "    group: {}", yaml_str(&s.group));
        }
        // Each group once, as its first service resolved it; what the
        // resolution found (ARP or static MAC, the port) as comments, so the
        // output is itself a valid configuration.
        let _ = writeln!(o, "server_groups:");
        let mut groups_done: Vec<&str> = Vec::new();
        for s in &self.services {
            // (group, its server ids): an `l7` service sends to several.
            let groups: Vec<(&str, Vec<u16>)> = match &s.l7 {
                Some(l) => l
                    .groups
                    .iter()
                    .map(|g| (g.name.as_str(), g.members.iter().map(|&p| s.servers[usize::from(p)]).collect()))
                    .collect(),
                None => vec![(s.group.as_str(), s.servers.clone())],
            };
            for (group, ids) in groups {
                if groups_done.contains(&group) {
                    continue;
                }
                groups_done.push(group);
                let _ = writeln!(o, "  {}:", yaml_str(group));
                for id in ids {
                    let sv = &self.servers[usize::from(id)];
                    let n = &self.neighbors[usize::from(sv.neighbor)];
                    let mac = n.static_mac.map_or(String::new(), |m| format!(", mac: \"{}\"", mac_str(&m)));
                    let agent = sv.agent.map_or(String::new(), |a| format!(", agent: \"{a}\""));
                    let how = if n.static_mac.is_some() { "static MAC" } else { "MAC by ARP" };
                    let _ = writeln!(
                        o,
                        "    - {{ ip: {}, port: {}, weight: {}{mac}{agent} }}  # {how}, via ports[{}]",
                        ip(sv.ip),
                        sv.port,
                        sv.weight,
                        n.port
                    );
                }
            }
        }
        o
    }

    /// The part of the configuration every member of a cluster shares
    /// (`SHARED_SECTIONS`), rendered: what `cluster_version` hashes.
    pub fn render_shared(&self) -> String {
        let t = &self.timeouts;
        // Without the comments: how a member resolves a server (ARP or a
        // static MAC, through which of its ports) is its own business.
        let routing: String = self
            .render_services_and_groups()
            .lines()
            .map(|l| l.split_once("  # ").map_or(l, |(kept, _)| kept))
            .map(|l| format!("{l}\n"))
            .collect();
        format!(
            "{}timeouts:\n  syn: {}ms\n  established: {}ms\n  closing: {}ms\n  udp: {}ms\n",
            routing, t.syn_ms, t.established_ms, t.closing_ms, t.udp_ms
        )
    }

    /// The version of the cluster-wide part (`render_shared`): the same on
    /// every member that runs the same services, servers and timeouts,
    /// whatever its own address, ports and cores.
    pub fn cluster_version(&self) -> String {
        blake3::hash(self.render_shared().as_bytes()).to_hex()[..12].to_string()
    }

    /// The configuration's version: the first 12 hex digits of the BLAKE3
    /// hash of the effective configuration (`render`), so that comments,
    /// key order and spelled-out defaults do not change it.
    pub fn version(&self) -> String {
        blake3::hash(self.render().as_bytes()).to_hex()[..12].to_string()
    }

    /// "service/ip:port" labels for per-server counters.
    pub fn server_label(&self, id: usize) -> String {
        let s = &self.servers[id];
        format!("{}/{}:{}", self.services[usize::from(s.service)].name, ip(s.ip), s.port)
    }
}
