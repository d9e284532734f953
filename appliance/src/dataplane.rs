//! The per-packet logic of a worker: classify, find or create the session,
//! rewrite, and say where the frame goes. Works on `&mut [u8]` and knows
//! nothing of DPDK, so it runs the same under unit tests, fuzzing and lcores.
//!
//! Fast-path rules: no locks, no allocation, no syscalls, no logging, no
//! panics. All tables are built before the workers start.

use crate::config::{Config, Mode, SchedulerKind};
use crate::packet::{self, tcp_flags, ArpInfo, L4Info, L4Proto, Mac, Parsed, BROADCAST_MAC};
use crate::sched::{maglev, wrr::SmoothWrr, Scheduler};
use crate::session::{mix, Entry, FlowKey, SessionTable, State};
use crate::stats::{Drop, WorkerStats};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Where a frame goes after `process`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame out of this port.
    Tx(u8),
    /// Another worker owns the flow: pass the untouched frame to it.
    Handoff(usize),
    /// Handled here, nothing to send (e.g. an ARP reply we learned from).
    Consumed,
    Drop(Drop),
}

/// What the first pass over a frame found (see [`Worker::classify`]): a
/// final verdict, or a flow whose session is still to be looked up.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Done(Verdict),
    /// Client → service packet of service `svc`, with its session key and hash.
    Forward {
        info: L4Info,
        svc: u16,
        hash: u64,
    },
    /// NAT server → client reply of service `svc`, with its session key and hash.
    Reply {
        info: L4Info,
        svc: u16,
        hash: u64,
    },
}

/// A next hop's MAC, written by whichever worker hears its ARP and read by
/// all: 0 = unresolved, else bit 48 set plus the 48-bit address.
pub struct Neighbor {
    pub ip: u32,
    pub port: u8,
    mac: AtomicU64,
    pub is_static: bool,
}

impl Neighbor {
    #[inline]
    pub fn mac(&self) -> Option<Mac> {
        let v = self.mac.load(Relaxed);
        if v == 0 {
            return None;
        }
        let b = v.to_be_bytes();
        Some([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    #[inline]
    pub fn learn(&self, mac: Mac) {
        if !self.is_static {
            self.mac.store(Self::encode(mac), Relaxed);
        }
    }

    /// The atomic's representation: bit 48 marks "resolved".
    fn encode(mac: Mac) -> u64 {
        let mut b = [0u8; 8];
        b[1] = 1;
        b[2..].copy_from_slice(&mac);
        u64::from_be_bytes(b)
    }
}

pub struct PortRt {
    pub ip: u32,
    pub mac: Mac,
}

struct ServiceRt {
    vip: u32,
    port: u16,
    mode: Mode,
    scheduler: SchedulerKind,
    weights: Vec<u32>,
    servers: Vec<u16>,
    maglev: Option<Arc<maglev::Maglev>>,
}

struct ServerRt {
    ip: u32,
    port: u16,
    neighbor: u16,
}

/// (address, port, protocol) → service, for the handful of endpoints an
/// appliance serves. Keys are packed into one u64 and kept sorted: a short
/// linear scan (binary search when there are many) costs less per packet
/// than hashing the tuple.
#[derive(Default)]
struct EndpointMap {
    keys: Vec<u64>,
    services: Vec<u16>,
}

impl EndpointMap {
    const SCAN_LIMIT: usize = 16;

    fn pack(ip: u32, port: u16, proto: u8) -> u64 {
        (u64::from(ip) << 24) | (u64::from(port) << 8) | u64::from(proto)
    }

    /// Adds or replaces an endpoint's service.
    fn insert(&mut self, ip: u32, port: u16, proto: u8, service: u16) {
        let k = Self::pack(ip, port, proto);
        match self.keys.binary_search(&k) {
            Ok(i) => self.services[i] = service,
            Err(i) => {
                self.keys.insert(i, k);
                self.services.insert(i, service);
            }
        }
    }

    #[inline]
    fn get(&self, ip: u32, port: u16, proto: u8) -> Option<u16> {
        let k = Self::pack(ip, port, proto);
        let i = if self.keys.len() <= Self::SCAN_LIMIT {
            self.keys.iter().position(|&x| x == k)
        } else {
            self.keys.binary_search(&k).ok()
        };
        i.map(|i| self.services[i])
    }
}

/// Everything the workers share, read-only once built (neighbour MACs are
/// atomics).
pub struct Shared {
    pub ports: Vec<PortRt>,
    services: Vec<ServiceRt>,
    servers: Vec<ServerRt>,
    pub neighbors: Vec<Neighbor>,
    /// (VIP, port, proto) → service.
    vips: EndpointMap,
    /// (server IP, port, proto) → NAT service, to recognise replies.
    nat_backends: EndpointMap,
    vip_set: FxHashMap<u32, ()>,
    pub workers: usize,
    pub timeouts: crate::session::Timeouts,
    pub session_capacity_per_worker: usize,
    pub arp_refresh_ms: u32,
    /// Random per process: keys the owner and session-table hashes.
    hash_seed: u64,
}

impl Shared {
    /// Builds the shared tables. `port_macs` are the MACs actually in use on
    /// each port (configured, or the device's own).
    pub fn new(cfg: &Config, port_macs: &[Mac]) -> Shared {
        let ports = cfg.ports.iter().zip(port_macs).map(|(p, &mac)| PortRt { ip: p.ip, mac }).collect();
        let services: Vec<ServiceRt> = cfg
            .services
            .iter()
            .map(|s| {
                let names: Vec<String> = s
                    .servers
                    .iter()
                    .map(|&id| {
                        let sv = &cfg.servers[usize::from(id)];
                        format!("{}:{}", std::net::Ipv4Addr::from(sv.ip), sv.port)
                    })
                    .collect();
                let weights: Vec<u32> = s.servers.iter().map(|&id| cfg.servers[usize::from(id)].weight).collect();
                let maglev = (s.scheduler == SchedulerKind::Maglev).then(|| {
                    let bs: Vec<maglev::Backend> =
                        names.iter().zip(&weights).map(|(name, &weight)| maglev::Backend { name, weight }).collect();
                    Arc::new(maglev::Maglev::new(&bs, s.maglev_table_size))
                });
                ServiceRt {
                    vip: s.vip,
                    port: s.port,
                    mode: s.mode,
                    scheduler: s.scheduler,
                    weights,
                    servers: s.servers.clone(),
                    maglev,
                }
            })
            .collect();
        let mut vips = EndpointMap::default();
        let mut vip_set = FxHashMap::default();
        let mut nat_backends = EndpointMap::default();
        for (i, s) in cfg.services.iter().enumerate() {
            vips.insert(s.vip, s.port, s.proto as u8, i as u16);
            vip_set.insert(s.vip, ());
            if s.mode == Mode::Nat {
                for &id in &s.servers {
                    let sv = &cfg.servers[usize::from(id)];
                    nat_backends.insert(sv.ip, sv.port, s.proto as u8, i as u16);
                }
            }
        }
        let neighbors = cfg
            .neighbors
            .iter()
            .map(|n| Neighbor {
                ip: n.ip,
                port: n.port,
                mac: AtomicU64::new(n.static_mac.map_or(0, Neighbor::encode)),
                is_static: n.static_mac.is_some(),
            })
            .collect();
        let workers = cfg.eal.worker_cores.len();
        Shared {
            ports,
            services,
            servers: cfg.servers.iter().map(|s| ServerRt { ip: s.ip, port: s.port, neighbor: s.neighbor }).collect(),
            neighbors,
            vips,
            nat_backends,
            vip_set,
            workers,
            timeouts: cfg.timeouts,
            session_capacity_per_worker: cfg.session_capacity.div_ceil(workers),
            arp_refresh_ms: cfg.arp_refresh_ms,
            hash_seed: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new().build_hasher().finish()
            },
        }
    }

    /// The worker that owns a client endpoint. Multiply-shift instead of `%`.
    #[inline]
    pub fn owner(&self, client_ip: u32, client_port: u16) -> usize {
        if self.workers == 1 {
            return 0;
        }
        let h = mix(u64::from(client_ip) ^ self.hash_seed, u64::from(client_port)) >> 32;
        ((h * self.workers as u64) >> 32) as usize
    }

    /// The server a Maglev service gives a new flow (the same on every
    /// appliance); None for round-robin services. Lets tools predict placement.
    pub fn maglev_pick(&self, service: usize, key: &FlowKey) -> Option<u16> {
        let s = self.services.get(service)?;
        let m = s.maglev.as_ref()?;
        Some(s.servers[m.lookup(key.hash(0))])
    }

    fn is_local(&self, ip: u32, port: u8) -> bool {
        self.ports.get(usize::from(port)).is_some_and(|p| p.ip == ip) || self.vip_set.contains_key(&ip)
    }
}

/// One worker's private state.
pub struct Worker<'a> {
    pub id: usize,
    shared: &'a Shared,
    table: SessionTable,
    schedulers: Vec<Scheduler>,
    pub stats: &'a WorkerStats,
    /// Per neighbour: when we last asked for its MAC (worker 0 only).
    last_solicit_ms: Vec<Option<u32>>,
    last_reclaim_ms: Option<u32>,
}

/// The session key of a client → service packet.
#[inline]
fn forward_key(info: &L4Info) -> FlowKey {
    FlowKey {
        client_ip: info.src_ip,
        vip: info.dst_ip,
        client_port: info.src_port,
        vport: info.dst_port,
        proto: info.proto,
    }
}

/// How many session slots the sweep visits per housekeeping call.
const SWEEP_BUDGET: usize = 256;
/// Unresolved neighbours are asked again this often.
const UNRESOLVED_RETRY_MS: u32 = 1000;

impl<'a> Worker<'a> {
    pub fn new(id: usize, shared: &'a Shared, stats: &'a WorkerStats) -> Self {
        let schedulers = shared
            .services
            .iter()
            .map(|s| match (&s.maglev, s.scheduler) {
                (Some(m), _) => Scheduler::Maglev(Arc::clone(m)),
                (None, _) => Scheduler::RoundRobin(SmoothWrr::new(&s.weights)),
            })
            .collect();
        Worker {
            id,
            shared,
            table: SessionTable::new(shared.session_capacity_per_worker, shared.timeouts, shared.hash_seed),
            schedulers,
            stats,
            last_solicit_ms: vec![None; shared.neighbors.len()],
            last_reclaim_ms: None,
        }
    }

    /// Decides what happens to one received frame, rewriting it in place.
    /// `handed_off` is true when another worker already routed it here.
    #[inline]
    pub fn process(&mut self, frame: &mut [u8], in_port: u8, now_ms: u32, handed_off: bool) -> Verdict {
        let step = self.classify(frame, in_port, handed_off);
        self.finish(frame, step, in_port, now_ms)
    }

    /// First pass: parse, answer ARP and ping, find the service and the
    /// owning worker, and start loading the flow's session slot into cache.
    /// A burst is classified whole before any frame is finished, so the
    /// session-table cache misses of the burst overlap instead of queueing.
    #[inline]
    pub fn classify(&mut self, frame: &mut [u8], in_port: u8, handed_off: bool) -> Step {
        let Some(port) = self.shared.ports.get(usize::from(in_port)) else {
            return Step::Done(Verdict::Drop(Drop::NotForUs));
        };
        let Some(dst) = packet::dst_mac(frame) else {
            return Step::Done(Verdict::Drop(Drop::Malformed));
        };
        let broadcast = dst == BROADCAST_MAC;
        if dst != port.mac && !broadcast {
            return Step::Done(Verdict::Drop(Drop::NotForUs));
        }
        let parsed = match packet::parse(frame) {
            Ok(p) => p,
            Err(d) => return Step::Done(Verdict::Drop(d)),
        };
        match parsed {
            Parsed::Arp(arp) => Step::Done(self.arp(frame, &arp, in_port, port.mac)),
            _ if broadcast => Step::Done(Verdict::Drop(Drop::NotForUs)),
            Parsed::Echo { dst_ip } => {
                if self.shared.is_local(dst_ip, in_port) {
                    packet::echo_reply_in_place(frame, port.mac);
                    self.stats.echo_replies_sent.inc();
                    Step::Done(Verdict::Tx(in_port))
                } else {
                    Step::Done(Verdict::Drop(Drop::NoService))
                }
            }
            Parsed::L4(info) => self.l4(info, handed_off),
        }
    }

    /// Second pass: look the session up (or create it), rewrite, and say
    /// where the frame goes.
    #[inline]
    pub fn finish(&mut self, frame: &mut [u8], step: Step, in_port: u8, now_ms: u32) -> Verdict {
        match step {
            Step::Done(v) => v,
            Step::Forward { info, svc, hash } => {
                self.forward(frame, &info, svc, &forward_key(&info), hash, in_port, now_ms)
            }
            Step::Reply { info, svc, hash } => {
                self.nat_reply(frame, &info, svc, &self.reply_key(&info, svc), hash, now_ms)
            }
        }
    }

    /// A burst in two passes: classify every frame (each classification
    /// prefetches the flow's session slot), then finish each, so the burst's
    /// session-table cache misses are in flight together instead of one after
    /// another. `frames[i]` arrived on `ports[i]`; its verdict goes to
    /// `verdicts[i]`. At most N frames are processed.
    #[inline]
    pub fn process_burst<const N: usize>(
        &mut self,
        frames: &mut [&mut [u8]],
        ports: &[u8],
        now_ms: u32,
        handed_off: bool,
        verdicts: &mut [Verdict; N],
    ) {
        let mut steps = [Step::Done(Verdict::Consumed); N];
        for ((frame, &port), step) in frames.iter_mut().zip(ports).zip(&mut steps) {
            *step = self.classify(frame, port, handed_off);
        }
        for (((frame, &port), step), verdict) in frames.iter_mut().zip(ports).zip(steps).zip(verdicts) {
            *verdict = self.finish(frame, step, port, now_ms);
        }
    }

    fn arp(&mut self, frame: &mut [u8], arp: &ArpInfo, in_port: u8, our_mac: Mac) -> Verdict {
        // Learn from any ARP a known next hop sends, request or reply.
        for n in &self.shared.neighbors {
            if n.ip == arp.sender_ip && n.port == in_port {
                n.learn(arp.sender_mac);
            }
        }
        if arp.is_request && self.shared.is_local(arp.target_ip, in_port) {
            packet::arp_reply_in_place(frame, arp, our_mac);
            self.stats.arp_replies_sent.inc();
            Verdict::Tx(in_port)
        } else if arp.is_request {
            Verdict::Drop(Drop::ArpIgnored)
        } else {
            Verdict::Consumed
        }
    }

    #[inline]
    fn l4(&mut self, info: L4Info, handed_off: bool) -> Step {
        let proto = info.proto as u8;
        if let Some(svc) = self.shared.vips.get(info.dst_ip, info.dst_port, proto) {
            let owner = self.shared.owner(info.src_ip, info.src_port);
            if owner != self.id && !handed_off {
                return Step::Done(Verdict::Handoff(owner));
            }
            let key = forward_key(&info);
            let hash = self.table.hash(&key);
            self.table.prefetch(hash);
            return Step::Forward { info, svc, hash };
        }
        if let Some(svc) = self.shared.nat_backends.get(info.src_ip, info.src_port, proto) {
            let owner = self.shared.owner(info.dst_ip, info.dst_port);
            if owner != self.id && !handed_off {
                return Step::Done(Verdict::Handoff(owner));
            }
            let key = self.reply_key(&info, svc);
            let hash = self.table.hash(&key);
            self.table.prefetch(hash);
            return Step::Reply { info, svc, hash };
        }
        Step::Done(Verdict::Drop(Drop::NoService))
    }

    /// The session key of a NAT reply: the flow as its client sent it.
    #[inline]
    fn reply_key(&self, info: &L4Info, svc: u16) -> FlowKey {
        let service = &self.shared.services[usize::from(svc)];
        FlowKey {
            client_ip: info.dst_ip,
            vip: service.vip,
            client_port: info.dst_port,
            vport: service.port,
            proto: info.proto,
        }
    }

    /// Client → service: follow the session, or create one on a SYN (any first UDP packet).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        in_port: u8,
        now_ms: u32,
    ) -> Verdict {
        let service = &self.shared.services[usize::from(svc)];
        if service.mode == Mode::Nat && info.ttl <= 1 {
            // Checked before any session is created for it.
            return Verdict::Drop(Drop::TtlExceeded);
        }
        let is_tcp = info.proto == L4Proto::Tcp;
        let syn = is_tcp && info.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        let closing = is_tcp && info.flags & (tcp_flags::FIN | tcp_flags::RST) != 0;
        let stats = self.stats;

        let server = match self.table.lookup(key, hash, now_ms, |_| stats.session_expired()) {
            Some(e) if syn && e.state == State::Closing => {
                // A new connection reusing the client port of one that closed: schedule it afresh.
                let idx = self.schedulers[usize::from(svc)].pick(key.hash(0));
                e.server = service.servers[idx];
                e.state = State::SynSeen;
                e.last_seen_ms = now_ms;
                stats.sessions_created.inc();
                stats.server_new_sessions[usize::from(e.server)].inc();
                e.server
            }
            Some(e) => {
                e.last_seen_ms = now_ms;
                if closing {
                    e.state = State::Closing;
                } else if e.state == State::SynSeen && !syn {
                    e.state = State::Established;
                }
                e.server
            }
            None if syn || !is_tcp => {
                let idx = self.schedulers[usize::from(svc)].pick(key.hash(0));
                let server = service.servers[idx];
                let state = if is_tcp { State::SynSeen } else { State::Udp };
                let entry = Entry::new(now_ms, server, svc, state, in_port, packet::src_mac(frame));
                if self.table.insert(key, hash, entry).is_err() {
                    // Full: reclaim idle entries (at most once per millisecond, so
                    // a SYN flood against a full table stays cheap), then refuse.
                    if self.last_reclaim_ms != Some(now_ms) {
                        self.last_reclaim_ms = Some(now_ms);
                        self.table.sweep(now_ms, SWEEP_BUDGET * 4, |_| stats.session_expired());
                    }
                    if self.table.insert(key, hash, entry).is_err() {
                        return Verdict::Drop(Drop::TableFull);
                    }
                }
                stats.sessions_created.inc();
                stats.sessions_active.inc();
                stats.server_new_sessions[usize::from(server)].inc();
                server
            }
            None => return Verdict::Drop(Drop::NoSession),
        };

        let srv = &self.shared.servers[usize::from(server)];
        let nb = &self.shared.neighbors[usize::from(srv.neighbor)];
        let Some(server_mac) = nb.mac() else {
            return Verdict::Drop(Drop::NoNeighbor);
        };
        let egress_mac = self.shared.ports[usize::from(nb.port)].mac;
        match service.mode {
            Mode::Dsr => packet::rewrite_dsr(frame, server_mac, egress_mac),
            Mode::Nat => {
                packet::rewrite_nat_forward(frame, info, srv.ip, srv.port, server_mac, egress_mac);
            }
        }
        Verdict::Tx(nb.port)
    }

    /// Server → client in NAT mode: the source becomes the VIP again.
    #[inline]
    fn nat_reply(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        now_ms: u32,
    ) -> Verdict {
        let service = &self.shared.services[usize::from(svc)];
        let stats = self.stats;
        let Some(e) = self.table.lookup(key, hash, now_ms, |_| stats.session_expired()) else {
            return Verdict::Drop(Drop::NoSession);
        };
        let srv = &self.shared.servers[usize::from(e.server)];
        if srv.ip != info.src_ip || srv.port != info.src_port {
            // A reply from a server this client's session is not bound to.
            return Verdict::Drop(Drop::NoSession);
        }
        if info.ttl <= 1 {
            return Verdict::Drop(Drop::TtlExceeded);
        }
        e.last_seen_ms = now_ms;
        if info.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            e.state = State::Closing;
        } else if e.state == State::SynSeen && info.proto == L4Proto::Tcp {
            // The server answered; the session stays bound even if the client's ACK is slow.
            e.state = State::Established;
        }
        let out_port = e.client_port_id;
        let out_mac = self.shared.ports[usize::from(out_port)].mac;
        packet::rewrite_nat_reply(frame, info, service.vip, service.port, e.client_hop_mac, out_mac);
        Verdict::Tx(out_port)
    }

    /// Periodic work between bursts: expire idle sessions a slice at a time.
    pub fn sweep(&mut self, now_ms: u32) {
        let stats = self.stats;
        self.table.sweep(now_ms, SWEEP_BUDGET, |_| stats.session_expired());
    }

    /// Calls `send(neighbor)` for each next hop whose MAC should be
    /// (re)requested now. Only worker 0 does this.
    pub fn due_solicits(&mut self, now_ms: u32, mut send: impl FnMut(&Neighbor, &PortRt) -> bool) {
        if self.id != 0 {
            return;
        }
        for (i, n) in self.shared.neighbors.iter().enumerate() {
            if n.is_static {
                continue;
            }
            let interval = if n.mac().is_some() { self.shared.arp_refresh_ms } else { UNRESOLVED_RETRY_MS };
            let due = self.last_solicit_ms[i].is_none_or(|t| now_ms.wrapping_sub(t) >= interval);
            if due && send(n, &self.shared.ports[usize::from(n.port)]) {
                self.last_solicit_ms[i] = Some(now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointMap;

    #[test]
    fn endpoint_map_finds_replaces_and_misses_with_scan_and_search() {
        for n in [3u32, 100] {
            let mut m = EndpointMap::default();
            for i in 0..n {
                m.insert(0xc612_6400 + i, 80, 6, i as u16);
            }
            m.insert(0xc612_6400, 80, 6, 999); // replaces
            assert_eq!(m.get(0xc612_6400, 80, 6), Some(999));
            for i in 1..n {
                assert_eq!(m.get(0xc612_6400 + i, 80, 6), Some(i as u16));
                assert_eq!(m.get(0xc612_6400 + i, 81, 6), None, "other port");
                assert_eq!(m.get(0xc612_6400 + i, 80, 17), None, "other protocol");
            }
            assert_eq!(m.get(0xc612_6400 + n, 80, 6), None);
        }
    }
}
