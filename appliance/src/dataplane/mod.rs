//! The per-packet logic of a worker: classify, find or create the session,
//! rewrite, and say where the frame goes. Works on `&mut [u8]` and knows
//! nothing of DPDK, so it runs the same under unit tests, fuzzing and lcores.
//!
//! Fast-path rules: no locks, no allocation, no syscalls, no logging, no
//! panics. All tables are built before the workers start.
//!
//! `shared` holds what all workers read; `replication` is the worker's
//! side of the control channel (events out, commands in, dumps).

mod announce;
mod lean;
mod probe;
mod proxy;
mod replication;
mod routing;
mod sample;
mod shared;

pub use routing::{Routing, Schedulers};
use shared::AddressKind;
pub use shared::{Neighbor, PortRt, Shared, MIN_SERVER_CAPACITY};

use crate::config::Mode;
use crate::control::channel::{EventTx, RoutingSwitch, SessionRecord};
use crate::l7::request::RequestPool;
use crate::locks::{LockRecord, LockTable, Offer};
use crate::packet::{
    self, tcp_flags, ArpInfo, FragmentInfo, IcmpErrorInfo, L4Info, L4Proto, Mac, Parsed, BROADCAST_MAC,
};
use crate::sched::{wrr::SmoothWrr, Scheduler};
use crate::session::{born_at, mix, Entry, FlowKey, SessionTable, State, Visit};
use crate::stats::{DropReason, WorkerStats};
use replication::{Dump, Outbox};
use std::sync::Arc;

/// Where a frame goes after `process`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame out of this port.
    Tx(u8),
    /// Another worker owns the flow: pass the untouched frame to it.
    Handoff(usize),
    /// The first packet of a new session, rewritten for `port`: hold it
    /// until the siblings have the session (the control thread releases
    /// every packet whose `tag` ≤ the events they acknowledged).
    Defer {
        port: u8,
        tag: u64,
    },
    /// A packet of an established flow that found no session while its
    /// VIP's sessions are being rebuilt from the servers: keep the frame
    /// untouched and process it again shortly (`worker::Awaiting`).
    Await,
    /// For the kernel, through the port's tap (`ports[].kernel`): a frame
    /// to the port's own address the fast path does not answer (BGP, ssh),
    /// or an ARP reply it did not ask for.
    Kernel(u8),
    /// Handled here, nothing to send (e.g. an ARP reply we learned from).
    Consumed,
    Drop(DropReason),
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
    /// TCP or UDP to the port's own address (not a service): a probe's answer?
    ToPort {
        info: L4Info,
    },
    /// An ICMP error to a VIP about a packet of service `svc`'s flow (its
    /// session key's hash): for the flow's server. Rare, so the frame is
    /// parsed again then rather than every `Step` carrying the error's fields.
    IcmpError {
        svc: u16,
        hash: u64,
    },
}

/// One worker's private state.
pub struct Worker<'a> {
    pub id: usize,
    shared: &'a Shared,
    /// The routing this worker uses now (`switch_routing` replaces it).
    routing: Arc<Routing>,
    table: SessionTable,
    schedulers: Vec<Scheduler>,
    /// Client locks (only when a service has persistence).
    locks: Option<LockTable>,
    pub stats: &'a WorkerStats,
    /// Events to the control thread.
    outbox: Outbox,
    /// A dump in progress (resync for a sibling, or republishing).
    dump: Option<Dump>,
    /// A sample of the table for the operator (`ringlb sessions`).
    sample: Option<sample::Sample>,
    /// Gratuitous ARP for VIPs just taken over (worker 0 only).
    announcer: announce::Announcer,
    /// Per port: the client-side hop of the last new session. A NAT
    /// session rebuilt from a server's list replies through it until the
    /// client's own packet shows its hop (behind a router, all clients share it).
    client_hops: Vec<Option<Mac>>,
    /// Health probes of servers without an agent (worker 0 only).
    prober: probe::Prober,
    /// `syn_proxy` and `l7` connections (only when a service has them).
    proxied: Option<proxy::ProxyTable>,
    /// `l7`: request buffers (only with an `l7` service).
    requests: Option<RequestPool>,
    /// `l7`: per service, per group, the group's weighted round robin
    /// (empty for other services).
    l7_schedulers: Vec<Vec<SmoothWrr>>,
    /// Frames of the appliance's own waiting to be sent (`drain_frames`).
    emits: proxy::Emits,
    /// Frames this worker may still pass to the kernel interfaces
    /// (`KERNEL_FRAMES_PER_MS` more each millisecond, up to `KERNEL_BURST`).
    kernel_budget: u32,
    kernel_refilled_ms: u32,
}

/// A health probe to send (`Worker::due_probes`): a TCP SYN.
pub struct ProbeFrame {
    pub port: u8,
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
}

/// What a sibling needs to know of a session.
#[inline]
fn record(key: &FlowKey, e: &Entry) -> SessionRecord {
    SessionRecord {
        key: *key,
        server: e.server,
        state: e.state,
        client_port: e.client_port(),
        client_mac: e.client_hop_mac,
        born: e.born,
    }
}

/// Whether siblings hear of a state change: of a close, yes. Of a completed
/// handshake, no: a half-open replica lives as long as an established one,
/// a sibling that carries the flow promotes it on its first non-SYN packet,
/// and refreshes carry the state anyway. That is one update per connection
/// fewer, and no burst of them when a flood of new flows starts sending.
#[inline]
fn announce_change(before: State, after: State) -> bool {
    after != before && after.closing()
}

/// A client's packet moves its TCP session on (`nat`: the appliance sees
/// the server's side too). A FIN or RST only closes the session when the
/// server's side has closed as well; alone it makes the session
/// `ClientClosed`, which keeps the established timeout (a forged RST
/// cannot shorten a live connection) and is undone by the client's data.
/// DSR sees one side only: its evidence of a real client is data after the
/// handshake's ACK.
#[inline]
fn after_client_packet(state: State, nat: bool, info: &L4Info) -> State {
    use State::*;
    if info.flags & tcp_flags::SYN != 0 {
        return state; // a retransmitted SYN: nothing new
    }
    if info.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
        return match state {
            ServerClosed | Closing => Closing,
            SynSeen | Udp => state,
            _ => ClientClosed,
        };
    }
    match state {
        SynSeen if !nat => Confirming,
        Confirming if nat || info.payload_len > 0 => Established,
        ClientClosed if info.payload_len > 0 => Established,
        _ => state,
    }
}

/// A NAT server's packet moves its TCP session on: its SYN-ACK half-opens
/// it (the client's ACK completes it); a FIN or RST, as for the client.
#[inline]
fn after_server_packet(state: State, info: &L4Info) -> State {
    use State::*;
    if info.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
        return match state {
            ClientClosed | Closing => Closing,
            SynSeen | Udp => state,
            _ => ServerClosed,
        };
    }
    match state {
        SynSeen if info.flags & tcp_flags::SYN != 0 => Confirming,
        ServerClosed if info.payload_len > 0 => Established,
        _ => state,
    }
}

/// A session left the table: count it, and tell the siblings if it was ours.
#[inline]
fn expired(outbox: &mut Outbox, stats: &WorkerStats, key: &FlowKey, e: &Entry) {
    stats.session_expired(e.server);
    if !e.is_replica() {
        outbox.session_gone(key, e.born, stats);
    }
}

/// How a new session relates to an entry of its tuple already in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reuse {
    /// None there: insert.
    No,
    /// Replace it, placing the new connection afresh (its server is down).
    Repick,
    /// Replace it with a session in this state, keeping its server (it closed).
    Keep(u16, State),
}

/// The session key of the flow an ICMP error quotes: a packet the service
/// sent from its VIP to the client.
#[inline]
fn icmp_key(info: &IcmpErrorInfo) -> FlowKey {
    let q = &info.quoted;
    FlowKey { client_ip: q.dst_ip, vip: q.src_ip, client_port: q.dst_port, vport: q.src_port, proto: q.proto }
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
/// A SYN this soon after a one-sided close keeps the session's server.
const KEEP_AFTER_CLOSE_MS: u32 = 1000;
/// Frames a worker passes to the kernel interfaces per millisecond, and at
/// most in a burst: BGP, ssh and ARP need far less; a flood to the port's
/// address is cut here, counted as `KernelLimit`.
const KERNEL_FRAMES_PER_MS: u32 = 20;
const KERNEL_BURST: u32 = 2_000;
/// An ARP reply is learned only this long after our request.
const ARP_REPLY_WINDOW_MS: u32 = 1000;

/// A MAC no neighbour can have: broadcast, multicast, all zero.
#[inline]
fn bad_neighbor_mac(mac: &Mac) -> bool {
    mac[0] & 1 != 0 || *mac == [0; 6]
}

/// A worker's tables, allocated up front (`Tables::allocate`) so that a
/// machine without the memory for them fails with a message before any
/// port starts, rather than aborting in a worker.
pub struct Tables {
    sessions: SessionTable,
    locks: Option<LockTable>,
    proxied: Option<proxy::ProxyTable>,
    requests: Option<RequestPool>,
}

impl Tables {
    pub fn allocate(shared: &Shared, id: usize) -> Result<Tables, String> {
        let seed = shared.hash_seed;
        Ok(Tables {
            sessions: SessionTable::try_new(
                shared.session_capacity_per_worker,
                shared.routing().timeouts,
                seed,
                SWEEP_BUDGET,
            )?,
            locks: shared.lock_capacity.map(|c| LockTable::try_new(c, seed ^ id as u64)).transpose()?,
            proxied: shared.proxied_capacity.map(proxy::ProxyTable::try_new).transpose()?,
            requests: shared.request_buffers.map(RequestPool::try_new).transpose()?,
        })
    }
}

impl<'a> Worker<'a> {
    /// A worker with freshly allocated tables (tests, fuzzing, benchmarks;
    /// `ringlb run` allocates them first, see [`Tables`]).
    pub fn new(id: usize, shared: &'a Shared, stats: &'a WorkerStats) -> Self {
        let tables = Tables::allocate(shared, id).expect("memory for the worker's tables");
        Self::with_tables(id, shared, stats, tables)
    }

    pub fn with_tables(id: usize, shared: &'a Shared, stats: &'a WorkerStats, tables: Tables) -> Self {
        let routing = shared.routing();
        let schedulers = routing.schedulers();
        let prober = probe::Prober::new(shared, &routing);
        Worker {
            id,
            shared,
            routing,
            table: tables.sessions,
            schedulers: schedulers.services,
            locks: tables.locks,
            stats,
            outbox: Outbox::new(shared.sync_events),
            dump: None,
            sample: None,
            announcer: announce::Announcer::new(shared.garp, shared.vip_count()),
            client_hops: vec![None; shared.ports.len()],
            prober,
            proxied: tables.proxied,
            requests: tables.requests,
            l7_schedulers: schedulers.l7,
            emits: proxy::Emits::new(),
            kernel_budget: KERNEL_BURST,
            kernel_refilled_ms: 0,
        }
    }

    /// Takes a new routing (a reload), between two bursts: its tables, the
    /// scheduler state built for it, its timeouts and probes. Sessions keep
    /// their servers (ids are stable); a removed server's sessions meet
    /// `on_server_down` at their next packet. Returns the old routing for
    /// the control thread to free: the worker allocates and frees nothing.
    pub fn switch_routing(&mut self, mut next: Box<RoutingSwitch>) -> Box<RoutingSwitch> {
        std::mem::swap(&mut self.routing, &mut next.routing);
        std::mem::swap(&mut self.schedulers, &mut next.schedulers.services);
        std::mem::swap(&mut self.l7_schedulers, &mut next.schedulers.l7);
        self.table.set_timeouts(self.routing.timeouts);
        if self.id == 0 {
            self.prober.update(&self.routing, self.shared);
        }
        next
    }

    /// The version of the configuration this worker routes by.
    pub fn routing_version(&self) -> &str {
        &self.routing.version
    }

    /// Every session in this worker's table (local and replicas), with its key.
    pub fn sessions(&self) -> impl Iterator<Item = (FlowKey, &Entry)> {
        (0..self.table.slots()).filter_map(|i| self.table.entry_at(i))
    }

    /// The live client lock for `client_ip` on `service`, if any.
    pub fn lock_of(&mut self, client_ip: u32, service: u16, now_ms: u32) -> Option<LockRecord> {
        self.locks.as_mut()?.get(client_ip, service, now_ms)
    }

    /// Connects the worker to the control thread: from now on it reports
    /// sessions (with sibling sync) and client locks through `events`.
    pub fn connect(&mut self, events: EventTx) {
        self.outbox.connect(events);
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
            return Step::Done(Verdict::Drop(DropReason::NotForUs));
        };
        // Most frames: unicast to us, TCP or UDP over plain IPv4.
        if let Some(common) = packet::parse_common(frame, &port.mac) {
            return self.l4(frame, common.info(), handed_off, port.ip);
        }
        let Some(dst) = packet::dst_mac(frame) else {
            return Step::Done(Verdict::Drop(DropReason::Malformed));
        };
        let broadcast = dst == BROADCAST_MAC;
        if dst != port.mac && !broadcast {
            return Step::Done(Verdict::Drop(DropReason::NotForUs));
        }
        let parsed = match packet::parse(frame) {
            Ok(p) => p,
            Err(d) => return Step::Done(Verdict::Drop(d)),
        };
        match parsed {
            Parsed::Arp(arp) => Step::Done(self.arp(frame, &arp, in_port, port.mac)),
            _ if broadcast => Step::Done(Verdict::Drop(DropReason::NotForUs)),
            Parsed::Echo { dst_ip } => match self.shared.address_kind(dst_ip, in_port) {
                AddressKind::Ours => {
                    packet::echo_reply_in_place(frame, port.mac);
                    self.stats.echo_replies_sent.inc();
                    Step::Done(Verdict::Tx(in_port))
                }
                AddressKind::OtherAppliances => Step::Done(Verdict::Drop(DropReason::VipNotOwned)),
                AddressKind::Foreign => Step::Done(Verdict::Drop(DropReason::NoService)),
            },
            Parsed::L4(info) => self.l4(frame, info, handed_off, port.ip),
            // An error about the kernel's own traffic (its BGP session): the kernel's.
            Parsed::IcmpError(info) if info.dst_ip == port.ip && port.kernel => {
                Step::Done(self.for_kernel(in_port, DropReason::NoService))
            }
            Parsed::IcmpError(info) => self.icmp_error(info, handed_off),
            Parsed::Fragment(info) => Step::Done(self.fragment(frame, &info)),
        }
    }

    /// An ICMP error about a packet a service sent (from its VIP: a DSR
    /// server's or a NAT reply), addressed to that VIP: e.g. a router's
    /// "fragmentation needed" on the way to the client. It belongs to the
    /// session of the quoted flow (and its worker).
    #[inline(never)]
    fn icmp_error(&mut self, info: IcmpErrorInfo, handed_off: bool) -> Step {
        let q = &info.quoted;
        let svc = match self.routing.vips.get(q.src_ip, q.src_port, q.proto as u8) {
            Some(v) if info.dst_ip == q.src_ip => v.svc,
            _ => return Step::Done(Verdict::Drop(DropReason::NoService)),
        };
        let key = icmp_key(&info);
        let owner = self.shared.owner(key.client_ip, key.client_port);
        if owner != self.id && !handed_off {
            return Step::Done(Verdict::Handoff(owner));
        }
        let hash = self.table.hash(&key);
        self.table.prefetch(hash);
        Step::IcmpError { svc, hash }
    }

    /// An ICMP error's session: it goes to the session's server, unchanged
    /// but for the MACs (DSR: the server holds the VIP), or translated to
    /// the server's address and port (NAT). The session's idle clock is
    /// not touched: an error is not the flow's traffic.
    #[inline(never)]
    fn icmp_forward(&mut self, frame: &mut [u8], info: &IcmpErrorInfo, svc: u16, hash: u64, now_ms: u32) -> Verdict {
        let key = icmp_key(info);
        let (stats, outbox) = (self.stats, &mut self.outbox);
        let Some(e) = self.table.lookup(&key, hash, now_ms, |e| expired(outbox, stats, &key, e)) else {
            return Verdict::Drop(DropReason::NoSession);
        };
        let shared = self.shared;
        let routing = &*self.routing;
        let srv = &routing.servers[usize::from(e.server)];
        let nb = &routing.neighbors[usize::from(srv.neighbor)];
        let Some(server_mac) = nb.mac() else {
            return Verdict::Drop(DropReason::NoNeighbor);
        };
        let egress_mac = shared.ports[usize::from(nb.port)].mac;
        match routing.services[usize::from(svc)].mode {
            Mode::Dsr => packet::rewrite_dsr(frame, server_mac, egress_mac),
            Mode::Nat if info.ttl <= 1 => return Verdict::Drop(DropReason::TtlExceeded),
            Mode::Nat => packet::rewrite_icmp_error_nat(frame, info, srv.ip, srv.port, server_mac, egress_mac),
            // Spliced connections keep no session: not reached.
            Mode::L7 => return Verdict::Drop(DropReason::NoSession),
        }
        stats.icmp_errors_forwarded.inc();
        Verdict::Tx(nb.port)
    }

    /// A fragment to a VIP: forwarded by the address hash when the VIP's
    /// service for its protocol takes fragments, a counted drop otherwise.
    #[inline(never)]
    fn fragment(&mut self, frame: &mut [u8], info: &FragmentInfo) -> Verdict {
        match self.routing.fragment_vips.get(info.dst_ip, 0, info.proto) {
            Some(svc) => self.by_address(frame, svc, info.src_ip, info.dst_ip),
            None => Verdict::Drop(DropReason::Fragment),
        }
    }

    /// `fragments: true` services keep no sessions: every datagram,
    /// fragment or not, goes to the server the service's Maglev table picks
    /// for a hash of (source, destination, protocol), unkeyed so every
    /// worker and appliance agrees and all of one datagram's fragments meet.
    #[inline(never)]
    fn by_address(&mut self, frame: &mut [u8], svc: u16, src_ip: u32, dst_ip: u32) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        if !shared.owns_vip_of(service) {
            return Verdict::Drop(DropReason::VipNotOwned);
        }
        let Some(maglev) = &service.maglev else {
            return Verdict::Drop(DropReason::NoServer); // `ringlb check` requires maglev
        };
        let h = mix((u64::from(src_ip) << 32) | u64::from(dst_ip), u64::from(service.proto));
        // No session: a drained server keeps its fragments' flows.
        let weight = |i: usize| shared.carrying_weight(service.servers[i]);
        let Some(i) = crate::sched::maglev_pick(maglev, h, weight) else {
            return Verdict::Drop(DropReason::NoServer);
        };
        let verdict = self.rewrite_forward(frame, None, Mode::Dsr, service.servers[i], None);
        if matches!(verdict, Verdict::Tx(_)) {
            self.stats.fragments_forwarded.inc();
        }
        verdict
    }

    /// A server's answer to a health probe (`probe`): a SYN-ACK is noted
    /// as the probe's success and answered with a RST; a RST (port closed)
    /// is taken in silence (the probe fails at its timeout). None: not a probe's.
    #[inline(never)]
    fn probe_answer(&self, frame: &mut [u8], info: &L4Info, in_port: u8, our_mac: Mac) -> Option<Verdict> {
        if info.proto != L4Proto::Tcp || info.dst_port < crate::config::PROBE_PORT_BASE {
            return None;
        }
        let id = usize::from(info.dst_port - crate::config::PROBE_PORT_BASE);
        let srv = self.routing.servers.get(id)?;
        if srv.probe.is_none() || srv.ip != info.src_ip || srv.port != info.src_port {
            return None;
        }
        if info.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) != tcp_flags::SYN | tcp_flags::ACK {
            return Some(Verdict::Consumed);
        }
        let ack = frame
            .get(usize::from(info.l4_off) + 8..usize::from(info.l4_off) + 12)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        self.shared.probe_answer[id].store(ack.wrapping_sub(1), std::sync::atomic::Ordering::Relaxed);
        packet::reset_in_place(frame, info, our_mac);
        Some(Verdict::Tx(in_port))
    }

    /// Calls `send` for each health probe due now (worker 0; see `probe`).
    /// A probe whose server's MAC is not known yet is not sent: it fails.
    pub fn due_probes(&mut self, now_ms: u32, mut send: impl FnMut(&ProbeFrame) -> bool) {
        if self.id != 0 || self.prober.is_idle() {
            return;
        }
        let shared = self.shared;
        let routing = &*self.routing;
        self.prober.due(now_ms, shared, |syn| {
            let srv = &routing.servers[usize::from(syn.server)];
            let nb = &routing.neighbors[usize::from(srv.neighbor)];
            let Some(dst_mac) = nb.mac() else { return false };
            let port = &shared.ports[usize::from(nb.port)];
            send(&ProbeFrame {
                port: nb.port,
                src_mac: port.mac,
                dst_mac,
                src_ip: port.ip,
                dst_ip: srv.ip,
                src_port: syn.src_port,
                dst_port: srv.port,
                seq: syn.seq,
            })
        });
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
                self.nat_reply(frame, &info, svc, &self.reply_key(&info, svc), hash, in_port, now_ms)
            }
            Step::IcmpError { svc, hash } => match packet::parse(frame) {
                Ok(Parsed::IcmpError(info)) => self.icmp_forward(frame, &info, svc, hash, now_ms),
                _ => Verdict::Drop(DropReason::Malformed), // classified as one a moment ago
            },
            Step::ToPort { info } => {
                let mac = self.shared.ports.get(usize::from(in_port)).map_or([0; 6], |p| p.mac);
                self.probe_answer(frame, &info, in_port, mac)
                    .unwrap_or_else(|| self.for_kernel(in_port, DropReason::NoService))
            }
        }
    }

    /// A frame for the port's own address the fast path does not answer:
    /// to the kernel if the port has a kernel interface, else dropped.
    fn for_kernel(&mut self, in_port: u8, otherwise: DropReason) -> Verdict {
        match self.shared.ports.get(usize::from(in_port)) {
            Some(p) if p.kernel && self.kernel_budget > 0 => {
                self.kernel_budget -= 1;
                Verdict::Kernel(in_port)
            }
            Some(p) if p.kernel => Verdict::Drop(DropReason::KernelLimit),
            _ => Verdict::Drop(otherwise),
        }
    }

    fn arp(&mut self, frame: &mut [u8], arp: &ArpInfo, in_port: u8, our_mac: Mac) -> Verdict {
        if bad_neighbor_mac(&arp.sender_mac) || arp.sender_mac == our_mac || packet::src_mac(frame) != arp.sender_mac {
            return Verdict::Drop(DropReason::ArpBadMac);
        }
        let kind = self.shared.address_kind(arp.target_ip, in_port);
        if !arp.is_request {
            // Learned only as the answer to our own request, to our port's
            // address: an unsolicited reply (ARP poisoning) changes nothing.
            let port_ip = self.shared.ports.get(usize::from(in_port)).map_or(0, |p| p.ip);
            let mut learned = false;
            if arp.target_ip == port_ip {
                for n in &self.routing.neighbors {
                    if n.ip == arp.sender_ip && n.port == in_port {
                        learned |= n.learn_reply(arp.sender_mac);
                    }
                }
            }
            return match learned {
                true => Verdict::Consumed,
                // The kernel asks for its own peers (a BGP router): their
                // replies are its business; it ignores what it did not ask.
                false if arp.target_ip == port_ip => self.for_kernel(in_port, DropReason::ArpUnsolicited),
                false => Verdict::Drop(DropReason::ArpUnsolicited),
            };
        }
        if arp.is_request && kind == AddressKind::OtherAppliances {
            // A standby stays silent for the VIPs it does not own.
            Verdict::Drop(DropReason::VipNotOwned)
        } else if arp.is_request && kind == AddressKind::Ours {
            packet::arp_reply_in_place(frame, arp, our_mac);
            self.stats.arp_replies_sent.inc();
            Verdict::Tx(in_port)
        } else {
            Verdict::Drop(DropReason::ArpIgnored)
        }
    }

    #[inline]
    fn l4(&mut self, frame: &mut [u8], info: L4Info, handed_off: bool, port_ip: u32) -> Step {
        let proto = info.proto as u8;
        if let Some(svc) = self.routing.vips.get(info.dst_ip, info.dst_port, proto).map(|v| v.svc) {
            if self.routing.services[usize::from(svc)].fragments {
                return Step::Done(self.by_address(frame, svc, info.src_ip, info.dst_ip));
            }
            let owner = self.shared.owner(info.src_ip, info.src_port);
            if owner != self.id && !handed_off {
                return Step::Done(Verdict::Handoff(owner));
            }
            let key = forward_key(&info);
            let hash = self.table.hash(&key);
            self.table.prefetch(hash);
            return Step::Forward { info, svc, hash };
        }
        if info.dst_ip == port_ip {
            // To the port's own address: perhaps a server's answer to a probe.
            return Step::ToPort { info };
        }
        if let Some(svc) = self.routing.nat_backends.get(info.src_ip, info.src_port, proto) {
            let owner = self.shared.owner(info.dst_ip, info.dst_port);
            if owner != self.id && !handed_off {
                return Step::Done(Verdict::Handoff(owner));
            }
            let key = self.reply_key(&info, svc);
            let hash = self.table.hash(&key);
            self.table.prefetch(hash);
            return Step::Reply { info, svc, hash };
        }
        Step::Done(Verdict::Drop(DropReason::NoService))
    }

    /// The session key of a NAT reply: the flow as its client sent it.
    #[inline]
    fn reply_key(&self, info: &L4Info, svc: u16) -> FlowKey {
        let service = &self.routing.services[usize::from(svc)];
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
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        if service.mode == Mode::Nat && info.ttl <= 1 {
            // Checked before any session is created for it.
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        if service.proxied {
            return self.proxy_client(frame, info, svc, key, hash, in_port, now_ms);
        }
        let is_tcp = info.proto == L4Proto::Tcp;
        let syn = is_tcp && info.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        let nat = service.mode == Mode::Nat;
        let stats = self.stats;
        let outbox = &mut self.outbox;

        // An existing session: follow it (and tell the siblings of a state change).
        let mut reuse = Reuse::No;
        match self.table.lookup(key, hash, now_ms, |e| expired(outbox, stats, key, e)) {
            // A SYN on the tuple of a session whose server is down (in DSR
            // the server's reset never passes here, so its session still
            // looks established): a new connection, scheduled afresh.
            // Not a handshake under way on a server that still carries its
            // flows (drained, or removed by a reload): that SYN is the
            // client's retransmission, and the server's SYN-ACK may be on
            // its way.
            Some(e)
                if syn
                    && shared.server_weight(e.server) == 0
                    && !(matches!(e.state, State::SynSeen | State::Confirming)
                        && shared.carrying_weight(e.server) != 0) =>
            {
                reuse = Reuse::Repick
            }
            // A new connection reusing the client port of one that closed
            // on both sides: scheduled afresh.
            Some(e) if syn && e.state == State::Closing => reuse = Reuse::Repick,
            // A SYN right after a one-sided FIN or RST: a new connection of
            // the tuple (siblings order a tuple's connections by birth), on
            // the same server, so a forged RST + SYN pair cannot move a live
            // connection; it starts `Confirming`, which keeps the
            // established timeout, so the pair cannot shorten its life
            // either. Later, the port is being reused: scheduled afresh (a
            // client that reuses ports quickly would otherwise stay on one
            // server whatever the weights say).
            Some(e) if syn && e.state.closing() => {
                reuse = if now_ms.wrapping_sub(e.last_seen_ms) <= KEEP_AFTER_CLOSE_MS {
                    Reuse::Keep(e.server, State::Confirming)
                } else {
                    Reuse::Repick
                };
            }
            Some(e) => {
                if e.touch(now_ms) {
                    // A sibling's session, now carried here: the flow changed
                    // appliance. Rebuilt from a server's list, it learns the
                    // client-side hop from this packet.
                    stats.sync_adopted.inc();
                    e.learn_client_hop(in_port, packet::src_mac(frame));
                }
                let before = e.state;
                if is_tcp {
                    e.state = after_client_packet(before, nat, info);
                }
                let server = e.server;
                // Siblings hear of a close; a completed handshake they need
                // not (see `announce_change`).
                if announce_change(before, e.state) {
                    outbox.session(record(key, e), now_ms, stats);
                }
                if service.reset_on_down && shared.carrying_weight(server) == 0 {
                    return self.reset_client(frame, info, key, hash, in_port);
                }
                return self.rewrite_forward(frame, Some(info), service.mode, server, None);
            }
            None if syn || !is_tcp => {}
            None => return self.midflow(frame, info, svc, key, hash, in_port, now_ms),
        }

        self.open_session(frame, info, svc, key, hash, in_port, now_ms, reuse)
    }

    /// A packet of an established TCP flow without a session here: the flow
    /// began on an appliance that failed (or before this one started). Where
    /// this appliance owns the VIP: while the VIP's sessions are being
    /// rebuilt from the servers' lists, the packet waits for them; after
    /// that, a Maglev service (without persistence) forwards it by the pick,
    /// which is the same on every appliance, and keeps a session for the
    /// flow (half-open until a second packet confirms it, so a lone forged
    /// ACK costs no more than a SYN). Anything else is `no_session`.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn midflow(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        in_port: u8,
        now_ms: u32,
    ) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        // Not from a SYN (a lone SYN-ACK to a VIP is nobody's handshake) nor
        // from a reset: those never make state.
        if !shared.owns_vip_of(service) || info.flags & (tcp_flags::SYN | tcp_flags::RST) != 0 {
            return Verdict::Drop(DropReason::NoSession);
        }
        if shared.rebuilding_vip_of(service) {
            return Verdict::Await;
        }
        if service.maglev.is_none() || service.persistence_ms.is_some() {
            return Verdict::Drop(DropReason::NoSession);
        }
        self.stats.midflow_picked.inc();
        self.open_session(frame, info, svc, key, hash, in_port, now_ms, Reuse::No)
    }

    /// `on_server_down: reset`: the session's server is down. The session
    /// ends, and the client's packet is answered with a RST (a TCP packet
    /// with an ACK; anything else is dropped as `no_server`).
    #[inline(never)]
    fn reset_client(&mut self, frame: &mut [u8], info: &L4Info, key: &FlowKey, hash: u64, in_port: u8) -> Verdict {
        let stats = self.stats;
        if let Some(e) = self.table.remove_if(key, hash, |_| true) {
            stats.session_ended(e.server);
            stats.down_resets.inc();
            if !e.is_replica() {
                self.outbox.session_gone(key, e.born, stats);
            }
        }
        let acked = info.proto == L4Proto::Tcp && info.flags & (tcp_flags::ACK | tcp_flags::RST) == tcp_flags::ACK;
        let Some(port) = self.shared.ports.get(usize::from(in_port)).filter(|_| acked) else {
            return Verdict::Drop(DropReason::NoServer);
        };
        packet::reset_in_place(frame, info, port.mac);
        Verdict::Tx(in_port)
    }

    /// A new session for a SYN (any first UDP packet), or a new connection
    /// of a tuple whose session is closing (`reuse`). Out of line: the
    /// established path above stays small, and only new flows pay the call.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn open_session(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        in_port: u8,
        now_ms: u32,
        reuse: Reuse,
    ) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        let stats = self.stats;
        let mode = service.mode;
        let is_tcp = info.proto == L4Proto::Tcp;
        // A new session (a new connection of the tuple, if it reuses one),
        // only where this appliance owns the VIP: a standby still follows
        // the sessions it has (`forward`), so flows it carried before the VIP
        // moved, or that reach it through a stale ARP cache, keep working.
        if !shared.owns_vip_of(service) {
            return Verdict::Drop(DropReason::VipNotOwned);
        }
        let picked = match reuse {
            Reuse::Keep(server, _) => Some(server),
            Reuse::No | Reuse::Repick => self.pick_server(svc, key, now_ms),
        };
        let Some(server) = picked else {
            return Verdict::Drop(DropReason::NoServer);
        };
        let state = match reuse {
            Reuse::Keep(_, state) => state,
            _ if is_tcp => State::SynSeen,
            _ => State::Udp,
        };
        let born = born_at(shared.start_wall_ms + u64::from(now_ms));
        let client_mac = packet::src_mac(frame);
        if let Some(hop) = self.client_hops.get_mut(usize::from(in_port)) {
            *hop = Some(client_mac);
        }
        let entry = Entry::new(now_ms, server, born, state, in_port, client_mac);
        let reused = reuse != Reuse::No;
        if reused {
            let outbox = &mut self.outbox;
            let renewed = match self.table.lookup(key, hash, now_ms, |e| expired(outbox, stats, key, e)) {
                Some(e) => {
                    stats.session_moved(e.server, server);
                    e.renew(entry);
                    true
                }
                None => false,
            };
            if !renewed {
                // Not expected (the caller found it live at this same
                // time); should it have gone, the new one goes in afresh.
                if self.table.insert(key, hash, entry).is_err() {
                    return Verdict::Drop(DropReason::TableFull);
                }
                stats.session_started(server);
            }
        } else if self.table.insert(key, hash, entry).is_err() {
            // Full: make room from an expired, half-open or closing entry
            // (never an established one), or refuse the new flow.
            if !self.evict_for(hash, now_ms) || self.table.insert(key, hash, entry).is_err() {
                return Verdict::Drop(DropReason::TableFull);
            }
        }
        if !reused {
            stats.session_started(server);
        }
        stats.sessions_created.inc();
        stats.server_new_session(server);
        // Siblings learn of it; with defer on, its first packet waits for them.
        let tag = self.outbox.session(record(key, &entry), now_ms, stats).filter(|_| shared.defer_active());
        self.rewrite_forward(frame, Some(info), mode, server, tag)
    }

    /// A full table: removes one expired or evictable entry to make room
    /// (`SessionTable::evict_for`) and accounts for it. False: none found.
    #[inline(never)]
    fn evict_for(&mut self, hash: u64, now_ms: u32) -> bool {
        let Some((key, e, was_expired)) = self.table.evict_for(hash, now_ms) else {
            return false;
        };
        if was_expired {
            expired(&mut self.outbox, self.stats, &key, &e);
        } else {
            self.stats.sessions_evicted.inc();
            self.stats.session_ended(e.server);
            if !e.is_replica() {
                self.outbox.session_gone(&key, e.born, self.stats);
            }
        }
        true
    }

    /// Rewrites a client packet for `server` and says where it goes (held
    /// for the siblings when `defer` carries its tag).
    #[inline]
    fn rewrite_forward(
        &self,
        frame: &mut [u8],
        info: Option<&L4Info>,
        mode: Mode,
        server: u16,
        defer: Option<u64>,
    ) -> Verdict {
        let srv = &self.routing.servers[usize::from(server)];
        let nb = &self.routing.neighbors[usize::from(srv.neighbor)];
        let Some(server_mac) = nb.mac() else {
            return Verdict::Drop(DropReason::NoNeighbor);
        };
        let egress_mac = self.shared.ports[usize::from(nb.port)].mac;
        match (mode, info) {
            (Mode::Nat, Some(info)) => {
                packet::rewrite_nat_forward(frame, info, srv.ip, srv.port, server_mac, egress_mac);
            }
            _ => packet::rewrite_dsr(frame, server_mac, egress_mac),
        }
        match defer {
            Some(tag) => Verdict::Defer { port: nb.port, tag },
            None => Verdict::Tx(nb.port),
        }
    }

    /// The server for a new session of service `svc`. With persistence the
    /// client's live lock decides; without one, the client is placed by its
    /// address and the lock period on the service's Maglev table (the same
    /// on every appliance, so appliances that see a client's first
    /// connections at once agree), and a lock is made and reported.
    fn pick_server(&mut self, svc: u16, key: &FlowKey, now_ms: u32) -> Option<u16> {
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        // Weights now: a server down has 0 (`control::health`). A server
        // whose MAC is not known yet (a reload just added it) gets no new
        // flow while another can take it: its first packets would be
        // dropped (`no_neighbor`) until worker 0's ARP is answered.
        let ready = |id: u16| routing.next_hop(id).is_some_and(|n| n.mac().is_some());
        let weight = |i: usize| {
            let id = service.servers[i];
            match shared.server_weight(id) {
                w if w != 0 && !ready(id) => 0,
                w => w,
            }
        };
        let (Some(life), Some(locks), Some(maglev)) = (service.persistence_ms, &mut self.locks, &service.maglev) else {
            let scheduler = &mut self.schedulers[usize::from(svc)];
            let any = |i: usize| shared.server_weight(service.servers[i]);
            let i = scheduler.pick(key.hash(0), weight).or_else(|| scheduler.pick(key.hash(0), any))?;
            return Some(service.servers[i]);
        };
        if let Some(lock) = locks.get(key.client_ip, svc, now_ms).filter(|l| shared.server_weight(l.server) != 0) {
            self.stats.lock_hits.inc();
            return Some(lock.server);
        }
        let period = (shared.start_wall_ms + u64::from(now_ms)) / u64::from(life);
        let placed = mix(u64::from(key.client_ip) ^ (u64::from(svc) << 32), period);
        let server = service.servers[crate::sched::maglev_pick(maglev, placed, weight)?];
        let lock = LockRecord {
            client_ip: key.client_ip,
            service: svc,
            server,
            remaining_ms: life,
            rank: shared.rank_base | self.id as u64,
        };
        if locks.offer(lock, now_ms) == Offer::Full {
            self.stats.lock_table_full.inc();
        } else {
            self.stats.locks_created.inc();
            self.outbox.lock(lock, self.stats);
        }
        Some(server)
    }

    /// Server → client in NAT mode: the source becomes the VIP again.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn nat_reply(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        in_port: u8,
        now_ms: u32,
    ) -> Verdict {
        let service = &self.routing.services[usize::from(svc)];
        if service.proxied {
            return self.proxy_server(frame, info, svc, key, hash, in_port, now_ms);
        }
        let stats = self.stats;
        let outbox = &mut self.outbox;
        let Some(e) = self.table.lookup(key, hash, now_ms, |e| expired(outbox, stats, key, e)) else {
            return Verdict::Drop(DropReason::NoSession);
        };
        let from = (info.src_ip, info.src_port);
        if let Err(reason) = self.routing.reply_source_check(e.server, from, in_port, packet::src_mac(frame)) {
            return Verdict::Drop(reason);
        }
        if info.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        if e.touch(now_ms) {
            stats.sync_adopted.inc();
        }
        let before = e.state;
        if info.proto == L4Proto::Tcp {
            e.state = after_server_packet(before, info);
        }
        let out_port = e.client_port();
        let mut client_mac = e.client_hop_mac;
        if client_mac == [0; 6] {
            // Rebuilt from a server's list, the client not heard yet.
            match self.client_hops.get(usize::from(out_port)).copied().flatten() {
                Some(hop) => client_mac = hop,
                None => return Verdict::Drop(DropReason::NoNeighbor),
            }
        }
        if announce_change(before, e.state) {
            outbox.session(record(key, e), now_ms, stats);
        }
        let out_mac = self.shared.ports[usize::from(out_port)].mac;
        packet::rewrite_nat_reply(frame, info, service.vip, service.port, client_mac, out_mac);
        Verdict::Tx(out_port)
    }

    /// Periodic work between bursts: expire idle sessions and locks a slice
    /// at a time, refresh busy sessions to the siblings, and carry on a dump.
    pub fn sweep(&mut self, now_ms: u32) {
        let elapsed = now_ms.wrapping_sub(self.kernel_refilled_ms).min(KERNEL_BURST);
        self.kernel_budget = (self.kernel_budget + elapsed * KERNEL_FRAMES_PER_MS).min(KERNEL_BURST);
        self.kernel_refilled_ms = now_ms;
        let stats = self.stats;
        let outbox = &mut self.outbox;
        self.table.sweep(now_ms, SWEEP_BUDGET, |visit, key, e| match visit {
            Visit::Expired => {
                expired(outbox, stats, key, e);
                false
            }
            Visit::RefreshDue => outbox.session(record(key, e), now_ms, stats).is_some(),
        });
        if let Some(locks) = &mut self.locks {
            locks.sweep(now_ms, SWEEP_BUDGET);
        }
        self.proxy_sweep(now_ms);
        self.dump_step(now_ms);
        self.sample_step();
    }

    /// Calls `send(port index, port, vip)` for each gratuitous ARP due now,
    /// on every port (worker 0; see `announce`). A VIP counts as announced
    /// when it went out of at least one port.
    pub fn due_announcements(&mut self, now_ms: u32, mut send: impl FnMut(u8, &PortRt, u32) -> bool) {
        if self.id != 0 || self.announcer.is_idle() {
            return;
        }
        let ports = &self.shared.ports;
        self.announcer.due(now_ms, |vip| {
            let mut any = false;
            for (i, port) in ports.iter().enumerate() {
                any |= send(i as u8, port, vip);
            }
            any
        });
    }

    /// Calls `send(neighbor)` for each next hop whose MAC should be
    /// (re)requested now. Only worker 0 does this.
    pub fn due_solicits(&mut self, now_ms: u32, mut send: impl FnMut(&Neighbor, &PortRt) -> bool) {
        if self.id != 0 {
            return;
        }
        let routing = &*self.routing;
        for (i, n) in routing.neighbors.iter().enumerate() {
            // Static, or only a removed server's (a reload): not asked for.
            if n.is_static || !routing.neighbor_in_use(i) {
                continue;
            }
            let since = n.solicited_at().map(|t| now_ms.wrapping_sub(t));
            if n.is_asked() && since.is_none_or(|d| d >= ARP_REPLY_WINDOW_MS) {
                n.set_asked(false);
            }
            let interval = if n.mac().is_some() { self.shared.arp_refresh_ms } else { UNRESOLVED_RETRY_MS };
            if since.is_none_or(|d| d >= interval) && send(n, &self.shared.ports[usize::from(n.port)]) {
                n.set_solicited_at(now_ms);
                n.set_asked(true);
            }
        }
    }
}
