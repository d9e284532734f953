//! Per-lcore counters. Each worker is the single writer of its own block
//! (plain load + store, no locked read-modify-write); the control thread
//! reads all blocks with relaxed loads and sums them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a packet was not forwarded. Every drop is counted under one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Truncated or inconsistent headers.
    Malformed,
    UnsupportedEthertype,
    UnsupportedProtocol,
    Fragment,
    /// Destination MAC is neither ours nor broadcast.
    NotForUs,
    /// IPv4 to an address/port that is neither a service nor a NAT backend.
    NoService,
    /// A non-SYN TCP packet (or an unknown NAT reply) without a session.
    NoSession,
    /// A new flow found its worker's session table full.
    TableFull,
    /// The chosen server's MAC is not resolved yet.
    NoNeighbor,
    /// TTL would reach zero in NAT mode.
    TtlExceeded,
    /// Multi-segment mbuf (frame larger than one buffer).
    MultiSegment,
    /// The TX queue or a hand-off queue was full.
    TxFull,
    HandoffFull,
    /// ARP not asking for one of our addresses.
    ArpIgnored,
    /// ARP, ping or a new flow for a VIP another appliance owns (`cluster.vips: owned`).
    VipNotOwned,
    /// A new flow of a service whose servers are all down.
    NoServer,
    /// IPv4 version not 4, or header length under 20 bytes.
    IpHeader,
    /// IPv4 total length disagrees with the header length or the frame
    /// (longer than the frame, or a frame longer than the datagram beyond
    /// Ethernet's minimum-size padding); UDP length ≠ the IP payload.
    IpLength,
    IpChecksum,
    /// TCP flags no stack sends: SYN with FIN or RST, FIN with RST, FIN
    /// or data without ACK, no flags at all.
    TcpFlags,
    /// A NAT server's reply that did not come from the bound server's
    /// neighbour MAC on its port.
    SpoofedReply,
    /// An ARP reply we did not ask for (or not to our address).
    ArpUnsolicited,
    /// ARP naming a broadcast, multicast, zero or our own MAC as a sender.
    ArpBadMac,
    /// An ICMP error whose quoted packet is truncated or inconsistent, or
    /// whose checksum is wrong.
    IcmpMalformed,
    /// A `syn_proxy` ACK whose cookie is older than the cookies' lifetime.
    CookieStale,
    /// A `syn_proxy` ACK without a connection whose cookie does not check
    /// (forged, altered, or a SYN-ACK that never came from us).
    CookieForged,
    /// A valid cookie found its worker's proxied-connection table full.
    ProxyFull,
    /// A segment a proxied connection does not accept as it stands: a
    /// server's SYN-ACK for another handshake, a blind RST, a SYN mid-connection.
    ProxyRefused,
    /// An `l7` request head that is not HTTP/1.x, or not complete within
    /// 16 KiB: the client is reset.
    L7Request,
    /// No `l7` request buffer free: the bytes are not ACKed (the client
    /// sends them again).
    L7NoBuffer,
    /// For a port's kernel interface, over the worker's budget for it (a
    /// flood to the port's address must not cost the fast path a tap write
    /// per frame).
    KernelLimit,
}

impl DropReason {
    pub const ALL: [DropReason; 31] = [
        DropReason::Malformed,
        DropReason::UnsupportedEthertype,
        DropReason::UnsupportedProtocol,
        DropReason::Fragment,
        DropReason::NotForUs,
        DropReason::NoService,
        DropReason::NoSession,
        DropReason::TableFull,
        DropReason::NoNeighbor,
        DropReason::TtlExceeded,
        DropReason::MultiSegment,
        DropReason::TxFull,
        DropReason::HandoffFull,
        DropReason::ArpIgnored,
        DropReason::VipNotOwned,
        DropReason::NoServer,
        DropReason::IpHeader,
        DropReason::IpLength,
        DropReason::IpChecksum,
        DropReason::TcpFlags,
        DropReason::SpoofedReply,
        DropReason::ArpUnsolicited,
        DropReason::ArpBadMac,
        DropReason::IcmpMalformed,
        DropReason::CookieStale,
        DropReason::CookieForged,
        DropReason::ProxyFull,
        DropReason::ProxyRefused,
        DropReason::L7Request,
        DropReason::L7NoBuffer,
        DropReason::KernelLimit,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedEthertype => "ethertype",
            DropReason::UnsupportedProtocol => "ip_proto",
            DropReason::Fragment => "fragment",
            DropReason::NotForUs => "not_for_us",
            DropReason::NoService => "no_service",
            DropReason::NoSession => "no_session",
            DropReason::TableFull => "table_full",
            DropReason::NoNeighbor => "no_neighbor",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::MultiSegment => "multi_segment",
            DropReason::TxFull => "tx_full",
            DropReason::HandoffFull => "handoff_full",
            DropReason::ArpIgnored => "arp_ignored",
            DropReason::VipNotOwned => "vip_not_owned",
            DropReason::NoServer => "no_server",
            DropReason::IpHeader => "ip_header",
            DropReason::IpLength => "ip_length",
            DropReason::IpChecksum => "ip_checksum",
            DropReason::TcpFlags => "tcp_flags",
            DropReason::SpoofedReply => "spoofed_reply",
            DropReason::ArpUnsolicited => "arp_unsolicited",
            DropReason::ArpBadMac => "arp_bad_mac",
            DropReason::IcmpMalformed => "icmp_malformed",
            DropReason::CookieStale => "cookie_stale",
            DropReason::CookieForged => "cookie_forged",
            DropReason::ProxyFull => "proxy_full",
            DropReason::ProxyRefused => "proxy_refused",
            DropReason::L7Request => "l7_request",
            DropReason::L7NoBuffer => "l7_no_buffer",
            DropReason::KernelLimit => "kernel_limit",
        }
    }
}

/// A single-writer counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(1), Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
    /// For a value that is replaced, not added to (the latest of something).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
}

/// One worker's counters, padded so two workers never share a cache line.
#[repr(align(64))]
#[derive(Debug)]
pub struct WorkerStats {
    pub rx: Counter,
    pub tx: Counter,
    /// The frames' bytes (Ethernet header on, no FCS), received and sent.
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
    /// Frames through the ports' kernel interfaces: to the kernel, and from it.
    pub kernel_in: Counter,
    pub kernel_out: Counter,
    pub handoff_out: Counter,
    pub arp_replies_sent: Counter,
    pub echo_replies_sent: Counter,
    pub sessions_created: Counter,
    pub sessions_expired: Counter,
    pub sessions_active: Counter,
    /// Half-open or closing sessions removed to make room for a new flow
    /// in a full table (established ones are never evicted).
    pub sessions_evicted: Counter,
    /// ICMP errors about a session's flow passed to its server.
    pub icmp_errors_forwarded: Counter,
    /// Fragments (and datagrams) of `fragments: true` services sent to a
    /// server by the address hash.
    pub fragments_forwarded: Counter,
    /// Sibling sync: replicas installed, updated, kept (a resync met a live
    /// update), removed; replicas that carried a local packet (the flow
    /// changed appliance); sibling entries refused (table full).
    pub sync_installed: Counter,
    pub sync_updated: Counter,
    pub sync_kept: Counter,
    /// News of an older connection of a tuple than the one held: ignored.
    pub sync_stale: Counter,
    pub sync_removed: Counter,
    pub sync_adopted: Counter,
    pub sync_refused: Counter,
    /// Events lost to a full worker → control queue (then republished).
    pub ctl_overflow: Counter,
    pub locks_created: Counter,
    pub lock_hits: Counter,
    pub lock_table_full: Counter,
    /// First packets held until siblings had their session; released on
    /// their acknowledgement, on the time limit, or at once when the hold
    /// queue was full.
    pub deferred: Counter,
    pub defer_timeouts: Counter,
    pub defer_full: Counter,
    /// Established flows' packets that found no session while their VIP's
    /// sessions were being rebuilt from the servers: held, then processed
    /// again; those still without a session after `AWAIT_MS` (dropped as
    /// `no_session`).
    pub awaited: Counter,
    pub await_timeouts: Counter,
    /// Mid-flow packets of a Maglev service without a session, forwarded
    /// by the pick (the same on every appliance) with a session made for them.
    pub midflow_picked: Counter,
    /// Sessions ended with a RST to the client because their server went
    /// down (`on_server_down: reset`).
    pub down_resets: Counter,
    /// `syn_proxy`: SYNs answered with a cookie; connections opened by a
    /// valid one (the server's side then opened); joined (the server
    /// answered); failed (the server refused or never answered: the
    /// client got a RST); open now; frames of the appliance's own that
    /// found no room in the queue (their timer sends them again).
    pub syn_cookies_sent: Counter,
    pub proxy_opened: Counter,
    pub proxy_joined: Counter,
    pub proxy_failed: Counter,
    pub proxy_active: Counter,
    pub proxy_emit_full: Counter,
    /// `l7`: requests sent to another server of their group after their
    /// server failed before answering (transparent error redirect).
    pub l7_redirects: Counter,
    /// `l7` mid-download failover: downloads carried on by another server
    /// after theirs failed; resumes refused (the replacement's answer was
    /// not exactly the rest of the same version: the client was reset);
    /// the body byte the latest resume started at.
    pub l7_resumes: Counter,
    pub l7_resume_refused: Counter,
    pub l7_resume_offset: Counter,
    pub drops: [Counter; DropReason::COUNT],
    /// New sessions per server, indexed by global server id.
    pub server_new_sessions: Box<[Counter]>,
    /// Sessions in this worker's table per server (local and siblings'
    /// replicas; `syn_proxy`/`l7` connections are `proxy_active`). Kept by
    /// `session_started`, `session_ended` and `session_moved`.
    pub server_sessions_active: Box<[Counter]>,
    /// `l7`: per server, attempts on it that failed (it refused, was
    /// silent, closed, or answered with a `redirect_on` status), whether
    /// the request then went to another server or another racer won.
    pub server_redirects: Box<[Counter]>,
    /// `l7`, `connect: race`: per server, races it won (its SYN-ACK came first).
    pub server_race_won: Box<[Counter]>,
}

impl WorkerStats {
    pub fn new(servers: usize) -> Self {
        WorkerStats {
            rx: Counter::default(),
            tx: Counter::default(),
            rx_bytes: Counter::default(),
            tx_bytes: Counter::default(),
            kernel_in: Counter::default(),
            kernel_out: Counter::default(),
            handoff_out: Counter::default(),
            arp_replies_sent: Counter::default(),
            echo_replies_sent: Counter::default(),
            sessions_created: Counter::default(),
            sessions_expired: Counter::default(),
            sessions_active: Counter::default(),
            sessions_evicted: Counter::default(),
            icmp_errors_forwarded: Counter::default(),
            fragments_forwarded: Counter::default(),
            sync_installed: Counter::default(),
            sync_updated: Counter::default(),
            sync_kept: Counter::default(),
            sync_stale: Counter::default(),
            sync_removed: Counter::default(),
            sync_adopted: Counter::default(),
            sync_refused: Counter::default(),
            ctl_overflow: Counter::default(),
            locks_created: Counter::default(),
            lock_hits: Counter::default(),
            lock_table_full: Counter::default(),
            deferred: Counter::default(),
            defer_timeouts: Counter::default(),
            defer_full: Counter::default(),
            awaited: Counter::default(),
            await_timeouts: Counter::default(),
            midflow_picked: Counter::default(),
            down_resets: Counter::default(),
            syn_cookies_sent: Counter::default(),
            proxy_opened: Counter::default(),
            proxy_joined: Counter::default(),
            proxy_failed: Counter::default(),
            proxy_active: Counter::default(),
            proxy_emit_full: Counter::default(),
            l7_redirects: Counter::default(),
            l7_resumes: Counter::default(),
            l7_resume_refused: Counter::default(),
            l7_resume_offset: Counter::default(),
            drops: Default::default(),
            server_new_sessions: (0..servers).map(|_| Counter::default()).collect(),
            server_sessions_active: (0..servers).map(|_| Counter::default()).collect(),
            server_redirects: (0..servers).map(|_| Counter::default()).collect(),
            server_race_won: (0..servers).map(|_| Counter::default()).collect(),
        }
    }

    /// `server` got a new flow.
    #[inline]
    pub fn server_new_session(&self, server: u16) {
        if let Some(c) = self.server_new_sessions.get(usize::from(server)) {
            c.inc();
        }
    }

    /// A request or download of `server` moved to another server.
    #[inline]
    pub fn server_redirected(&self, server: u16) {
        if let Some(c) = self.server_redirects.get(usize::from(server)) {
            c.inc();
        }
    }

    /// `server` answered a raced connection first.
    #[inline]
    pub fn server_won_race(&self, server: u16) {
        if let Some(c) = self.server_race_won.get(usize::from(server)) {
            c.inc();
        }
    }

    /// A session for `server` entered the table.
    #[inline]
    pub fn session_started(&self, server: u16) {
        self.sessions_active.inc();
        if let Some(c) = self.server_sessions_active.get(usize::from(server)) {
            c.inc();
        }
    }

    /// A session for `server` left the table.
    #[inline]
    pub fn session_ended(&self, server: u16) {
        self.sessions_active.dec();
        if let Some(c) = self.server_sessions_active.get(usize::from(server)) {
            c.dec();
        }
    }

    /// A session's entry now names another server (replaced in place).
    #[inline]
    pub fn session_moved(&self, from: u16, to: u16) {
        if from == to {
            return;
        }
        // The total does not change (a snapshot must never see it dip).
        if let Some(c) = self.server_sessions_active.get(usize::from(from)) {
            c.dec();
        }
        if let Some(c) = self.server_sessions_active.get(usize::from(to)) {
            c.inc();
        }
    }

    /// A session left the table (idle expiry).
    #[inline]
    pub fn session_expired(&self, server: u16) {
        self.sessions_expired.inc();
        self.session_ended(server);
    }

    #[inline]
    pub fn drop(&self, why: DropReason) {
        self.drops[why as usize].inc();
    }

    pub fn drops_total(&self) -> u64 {
        self.drops.iter().map(Counter::get).sum()
    }
}

/// A point-in-time sum over all workers, for printing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub rx: u64,
    pub tx: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub kernel_in: u64,
    pub kernel_out: u64,
    pub handoff: u64,
    pub arp_replies: u64,
    pub echo_replies: u64,
    pub created: u64,
    pub expired: u64,
    pub active: u64,
    pub evicted: u64,
    pub icmp_errors: u64,
    pub fragments: u64,
    pub sync_installed: u64,
    pub sync_updated: u64,
    pub sync_kept: u64,
    pub sync_stale: u64,
    pub sync_removed: u64,
    pub sync_adopted: u64,
    pub sync_refused: u64,
    pub ctl_overflow: u64,
    pub locks_created: u64,
    pub lock_hits: u64,
    pub lock_table_full: u64,
    pub deferred: u64,
    pub defer_timeouts: u64,
    pub defer_full: u64,
    pub awaited: u64,
    pub await_timeouts: u64,
    pub midflow_picked: u64,
    pub down_resets: u64,
    pub syn_cookies_sent: u64,
    pub proxy_opened: u64,
    pub proxy_joined: u64,
    pub proxy_failed: u64,
    pub proxy_active: u64,
    pub proxy_emit_full: u64,
    pub l7_redirects: u64,
    pub l7_resumes: u64,
    pub l7_resume_refused: u64,
    /// The largest over the workers of each one's latest resume offset.
    pub l7_resume_offset: u64,
    pub drops: [u64; DropReason::COUNT],
    pub per_server: Vec<u64>,
    pub per_server_active: Vec<u64>,
    pub per_server_redirects: Vec<u64>,
    pub per_server_race_won: Vec<u64>,
}

impl Snapshot {
    pub fn take(workers: &[&WorkerStats]) -> Snapshot {
        let servers = workers.first().map_or(0, |w| w.server_new_sessions.len());
        let mut s = Snapshot {
            per_server: vec![0; servers],
            per_server_active: vec![0; servers],
            per_server_redirects: vec![0; servers],
            per_server_race_won: vec![0; servers],
            ..Default::default()
        };
        for w in workers {
            s.rx += w.rx.get();
            s.tx += w.tx.get();
            s.rx_bytes += w.rx_bytes.get();
            s.tx_bytes += w.tx_bytes.get();
            s.kernel_in += w.kernel_in.get();
            s.kernel_out += w.kernel_out.get();
            s.handoff += w.handoff_out.get();
            s.arp_replies += w.arp_replies_sent.get();
            s.echo_replies += w.echo_replies_sent.get();
            s.created += w.sessions_created.get();
            s.expired += w.sessions_expired.get();
            s.active += w.sessions_active.get();
            s.evicted += w.sessions_evicted.get();
            s.icmp_errors += w.icmp_errors_forwarded.get();
            s.fragments += w.fragments_forwarded.get();
            s.sync_installed += w.sync_installed.get();
            s.sync_updated += w.sync_updated.get();
            s.sync_kept += w.sync_kept.get();
            s.sync_stale += w.sync_stale.get();
            s.sync_removed += w.sync_removed.get();
            s.sync_adopted += w.sync_adopted.get();
            s.sync_refused += w.sync_refused.get();
            s.ctl_overflow += w.ctl_overflow.get();
            s.locks_created += w.locks_created.get();
            s.lock_hits += w.lock_hits.get();
            s.lock_table_full += w.lock_table_full.get();
            s.deferred += w.deferred.get();
            s.defer_timeouts += w.defer_timeouts.get();
            s.defer_full += w.defer_full.get();
            s.awaited += w.awaited.get();
            s.await_timeouts += w.await_timeouts.get();
            s.midflow_picked += w.midflow_picked.get();
            s.down_resets += w.down_resets.get();
            s.syn_cookies_sent += w.syn_cookies_sent.get();
            s.proxy_opened += w.proxy_opened.get();
            s.proxy_joined += w.proxy_joined.get();
            s.proxy_failed += w.proxy_failed.get();
            s.proxy_active += w.proxy_active.get();
            s.proxy_emit_full += w.proxy_emit_full.get();
            s.l7_redirects += w.l7_redirects.get();
            s.l7_resumes += w.l7_resumes.get();
            s.l7_resume_refused += w.l7_resume_refused.get();
            s.l7_resume_offset = s.l7_resume_offset.max(w.l7_resume_offset.get());
            for (d, c) in s.per_server_redirects.iter_mut().zip(w.server_redirects.iter()) {
                *d += c.get();
            }
            for (d, c) in s.per_server_race_won.iter_mut().zip(w.server_race_won.iter()) {
                *d += c.get();
            }
            for (d, c) in s.drops.iter_mut().zip(w.drops.iter()) {
                *d += c.get();
            }
            for (d, c) in s.per_server.iter_mut().zip(w.server_new_sessions.iter()) {
                *d += c.get();
            }
            for (d, c) in s.per_server_active.iter_mut().zip(w.server_sessions_active.iter()) {
                *d = d.wrapping_add(c.get());
            }
        }
        s
    }

    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}
