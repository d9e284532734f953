//! One ring member as a sans-IO state machine: it is given the time and the
//! datagrams; it hands back datagrams to send, the next time it wants to be
//! woken, and events. No sockets, no clocks inside (the quinn-proto pattern),
//! so a simulator can drive many members deterministically.
//!
//! The protocol (PROTOCOL.md has the full text):
//! - Members are ordered by address. Each sends to its nearest downstream
//!   neighbour and hears from its nearest upstream one, wrapping (B1).
//! - The smallest member of a view is its master: it circulates the
//!   heartbeat packet (the implicit token) carrying the view, and it alone
//!   admits members and assigns ids (B3, B6).
//! - Every member sends to its downstream at least once per heartbeat
//!   interval (forwarded heartbeat or keepalive). Silence from upstream for
//!   the communication timeout starts an out-of-band probe; if the probe
//!   fails too, the member broadcasts a purge: every member leaves and
//!   re-enters (forming) for the broadcast timeout (B4, B7).
//! - Views merge towards the smallest master: a member that sees a view with
//!   a smaller master joins it; masters announce their view to configured
//!   peers outside it, so partitions heal into one ring.
//! - The dispatcher is a function of the view: the smallest dispatch-capable
//!   member; a lone member runs standalone (B5).

use crate::reliable::{self, Reliable};
use crate::replay::ReplayGuard;
use crate::wire::{self, order, DecodeError, Dest, Key, MemberEntry, Msg, Packet, ViewMsg, CAP_DISPATCH};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddrV4;

/// Largest payload of a ring (App) message.
pub const MAX_APP_PAYLOAD: usize = 8 * 1024;

/// Protocol timers, milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub heartbeat_ms: u64,
    pub comm_timeout_ms: u64,
    pub broadcast_timeout_ms: u64,
}

impl Timers {
    /// The seed's values: communication 2,000 ms, broadcast 2,500 ms.
    pub const SEED: Timers = Timers { heartbeat_ms: 250, comm_timeout_ms: 2000, broadcast_timeout_ms: 2500 };
    /// Sub-second failover.
    pub const FAST: Timers = Timers { heartbeat_ms: 50, comm_timeout_ms: 300, broadcast_timeout_ms: 400 };

    /// How long an out-of-band probe of a silent upstream lasts.
    pub fn probe_ms(&self) -> u64 {
        2 * self.heartbeat_ms
    }

    /// Time from a failure to its detection and purge: silence, then probe.
    pub fn detection_bound_ms(&self) -> u64 {
        self.comm_timeout_ms + self.probe_ms() + self.heartbeat_ms
    }

    /// Upper bound from the last fault to one consistent ring of `members`,
    /// for a network with at most `max_delay_ms` one-way delay. Worst case:
    /// a stale view is detected and purged (detection + forming), the result
    /// needs one announce period to meet another ring, the joined members'
    /// old ring is detected and purged once more, and the final view needs
    /// heartbeat traversals of the ring (one hop per member) to reach all.
    pub fn convergence_bound_ms(&self, max_delay_ms: u64, members: usize) -> u64 {
        let round = self.detection_bound_ms() + self.broadcast_timeout_ms + 2 * max_delay_ms;
        let traversal = members as u64 * (max_delay_ms + 1);
        2 * round + self.broadcast_timeout_ms + 4 * self.heartbeat_ms + 2 * traversal
    }
}

#[derive(Clone)]
pub struct Config {
    pub me: SocketAddrV4,
    /// Every address that may be a member: the "broadcast address" (B8).
    pub peers: Vec<SocketAddrV4>,
    pub dispatch_capable: bool,
    pub timers: Timers,
    pub key: Key,
    /// Distinguishes restarts; must grow from one start to the next.
    pub incarnation: u64,
}

pub struct Transmit {
    pub to: SocketAddrV4,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The ring this member belongs to changed (members in address order).
    ViewChanged {
        master: SocketAddrV4,
        version: u64,
        members: Vec<SocketAddrV4>,
    },
    /// The elected dispatcher; None while forming or when running standalone.
    Dispatcher(Option<SocketAddrV4>),
    /// This member accepted its id (once per incarnation).
    IdAccepted(u64),
    /// A purge started (by us or by a member's broadcast).
    Purge {
        reason: &'static str,
    },
    App {
        origin: SocketAddrV4,
        payload: Vec<u8>,
    },
    Reliable {
        from: SocketAddrV4,
        payload: Vec<u8>,
    },
}

/// What was received and refused, and protocol activity.
#[derive(Default, Debug, Clone, Copy)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bad_mac: u64,
    pub rx_malformed: u64,
    pub rx_replayed: u64,
    pub rx_spoofed: u64,
    pub rx_unknown_sender: u64,
    pub tx_packets: u64,
    pub purges_sent: u64,
    pub probes_sent: u64,
    pub app_delivered: u64,
    pub app_own_returned: u64,
    pub app_expired: u64,
    pub app_duplicates: u64,
}

/// The per-member state variables of B8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVars {
    pub own: SocketAddrV4,
    pub smallest: SocketAddrV4,
    pub greatest: SocketAddrV4,
    pub downstream: SocketAddrV4,
    pub upstream: SocketAddrV4,
    pub broadcast: Vec<SocketAddrV4>,
    pub created_ms: u64,
}

#[derive(Clone, Debug)]
struct View {
    version: u64,
    created_ms: u64,
    members: Vec<MemberEntry>,
}

impl View {
    fn master(&self) -> SocketAddrV4 {
        self.members[0].addr
    }
    fn position(&self, a: &SocketAddrV4) -> Option<usize> {
        self.members.binary_search_by_key(&order(a), |m| order(&m.addr)).ok()
    }
    fn downstream(&self, me: &SocketAddrV4) -> SocketAddrV4 {
        let i = self.position(me).unwrap_or(0);
        self.members[(i + 1) % self.members.len()].addr
    }
    fn upstream(&self, me: &SocketAddrV4) -> SocketAddrV4 {
        let i = self.position(me).unwrap_or(0);
        self.members[(i + self.members.len() - 1) % self.members.len()].addr
    }
    fn dispatcher(&self) -> Option<SocketAddrV4> {
        if self.members.len() < 2 {
            return None; // a lone survivor serves standalone
        }
        self.members.iter().find(|m| m.caps & CAP_DISPATCH != 0).map(|m| m.addr)
    }
    fn to_msg(&self) -> ViewMsg {
        ViewMsg { version: self.version, created_ms: self.created_ms, members: self.members.clone() }
    }
    fn from_msg(v: &ViewMsg) -> View {
        View { version: v.version, created_ms: v.created_ms, members: v.members.clone() }
    }
}

enum Phase {
    /// Leaving and re-entering: collect Hellos until `until`.
    Forming {
        until: u64,
        next_hello: u64,
        heard: BTreeMap<u64, MemberEntry>,
    },
    Member,
}

struct Probe {
    nonce: u64,
    until: u64,
    next_send: u64,
}

pub struct Member {
    cfg: Config,
    peer_set: std::collections::HashSet<SocketAddrV4>,
    caps: u8,
    phase: Phase,
    view: View,
    my_id: u64,
    ids_assigned: u64,
    /// The highest view version this member issued as master: its versions
    /// only grow, so "same master, higher version" always means newer.
    version_floor: u64,
    // timing
    last_from_upstream: u64,
    /// Last heartbeat of our own master seen (or when we joined its view).
    last_master_hb: u64,
    last_sent_downstream: u64,
    probe: Option<Probe>,
    probe_nonce: u64,
    next_hb: u64,
    hb_seq: u64,
    next_announce: u64,
    next_join: u64,
    /// Newest heartbeat seen per master: (incarnation, seq).
    hb_seen: HashMap<SocketAddrV4, (u64, u64)>,
    // application messages
    app_seq: u64,
    /// (origin, incarnation, seq) → when seen: delivery at most once.
    app_seen: HashMap<(SocketAddrV4, u64, u64), u64>,
    pending_down: Vec<Msg>,
    reliable: Reliable,
    // wire
    tx_seq: u64,
    replay: ReplayGuard,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    last_dispatcher: Option<SocketAddrV4>,
    pub counters: Counters,
}

impl Member {
    pub fn new(cfg: Config, now: u64) -> Member {
        let caps = if cfg.dispatch_capable { CAP_DISPATCH } else { 0 };
        let me = MemberEntry { addr: cfg.me, caps, id: 0, incarnation: cfg.incarnation };
        let rto = cfg.timers.heartbeat_ms.max(20);
        let mut m = Member {
            peer_set: cfg.peers.iter().copied().collect(),
            caps,
            phase: Phase::Member,
            view: View { version: 0, created_ms: now, members: vec![me] },
            my_id: 0,
            ids_assigned: 0,
            version_floor: 0,
            last_from_upstream: now,
            last_master_hb: now,
            last_sent_downstream: now,
            probe: None,
            probe_nonce: 0,
            next_hb: now,
            hb_seq: 0,
            next_announce: now,
            next_join: now,
            hb_seen: HashMap::new(),
            app_seq: 0,
            app_seen: HashMap::new(),
            pending_down: Vec::new(),
            reliable: Reliable::new(rto, cfg.incarnation << 20),
            tx_seq: 0,
            replay: ReplayGuard::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            last_dispatcher: None,
            counters: Counters::default(),
            cfg,
        };
        m.start_forming(now);
        m
    }

    // ---------- the sans-IO interface ----------

    pub fn handle_datagram(&mut self, now: u64, from: SocketAddrV4, bytes: &[u8]) {
        let pkt = match wire::decode(bytes, &self.cfg.key) {
            Ok(p) => p,
            Err(DecodeError::BadMac) => {
                self.counters.rx_bad_mac += 1;
                return;
            }
            Err(_) => {
                self.counters.rx_malformed += 1;
                return;
            }
        };
        if pkt.sender != from || pkt.sender == self.cfg.me {
            self.counters.rx_spoofed += 1;
            return;
        }
        // Only configured peers are members: this also bounds every per-sender table.
        if !self.peer_set.contains(&pkt.sender) {
            self.counters.rx_unknown_sender += 1;
            return;
        }
        if !self.replay.accept(pkt.sender, pkt.incarnation, pkt.seq) {
            self.counters.rx_replayed += 1;
            return;
        }
        self.counters.rx_packets += 1;
        if matches!(self.phase, Phase::Member) && from == self.upstream() {
            self.last_from_upstream = now;
        }
        for msg in pkt.msgs {
            self.on_msg(now, &pkt.sender, pkt.incarnation, msg);
        }
        self.flush_downstream(now, false);
    }

    pub fn handle_timeout(&mut self, now: u64) {
        let t = self.cfg.timers;
        match &mut self.phase {
            Phase::Forming { until, next_hello, .. } => {
                if now >= *until {
                    self.end_forming(now);
                } else if now >= *next_hello {
                    *next_hello = now + t.heartbeat_ms;
                    self.hello_all(now);
                }
            }
            Phase::Member => self.member_timers(now),
        }
        let mut out = Vec::new();
        self.reliable.on_timeout(now, &mut out);
        self.send_direct(now, out);
        if self.app_seen.len() > 4096 {
            let horizon = 8 * t.broadcast_timeout_ms;
            self.app_seen.retain(|_, seen| now.saturating_sub(*seen) < horizon);
        }
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> u64 {
        let t = self.cfg.timers;
        let mut next = match &self.phase {
            Phase::Forming { until, next_hello, .. } => (*until).min(*next_hello),
            Phase::Member => {
                let mut n = u64::MAX;
                if self.view.members.len() > 1 {
                    n = n.min(self.last_sent_downstream + t.heartbeat_ms);
                    n = n.min(match &self.probe {
                        Some(p) => p.until.min(p.next_send),
                        None => self.last_from_upstream + t.comm_timeout_ms,
                    });
                }
                if self.is_master() {
                    n = n.min(self.next_announce);
                    if self.view.members.len() > 1 {
                        n = n.min(self.next_hb);
                    }
                } else if self.view.members.len() > 1 {
                    n = n.min(self.last_master_hb + self.master_silence_ms());
                }
                n
            }
        };
        if let Some(r) = self.reliable.next_deadline() {
            next = next.min(r);
        }
        next
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Sends an application message around the ring; returns its sequence
    /// number. Larger payloads belong on the reliable layer.
    pub fn send_app(&mut self, now: u64, dest: Dest, payload: Vec<u8>) -> Result<u64, &'static str> {
        if payload.len() > MAX_APP_PAYLOAD {
            return Err("app message larger than 8 KiB: use send_reliable");
        }
        self.app_seq += 1;
        let hops = self.view.members.len().min(255) as u8;
        if hops > 1 && matches!(self.phase, Phase::Member) {
            let incarnation = self.cfg.incarnation;
            self.pending_down.push(Msg::App {
                origin: self.cfg.me,
                incarnation,
                seq: self.app_seq,
                dest,
                hops_left: hops,
                payload,
            });
            self.flush_downstream(now, false);
        }
        Ok(self.app_seq)
    }

    /// Sends `payload` to `to` over the reliable message layer.
    pub fn send_reliable(&mut self, now: u64, to: SocketAddrV4, payload: &[u8]) -> Result<u64, &'static str> {
        let mut out = Vec::new();
        let id = self.reliable.send(to, payload, now, &mut out)?;
        self.send_direct(now, out);
        Ok(id)
    }

    // ---------- what the member knows ----------

    pub fn is_forming(&self) -> bool {
        matches!(self.phase, Phase::Forming { .. })
    }
    pub fn is_master(&self) -> bool {
        matches!(self.phase, Phase::Member) && self.view.master() == self.cfg.me
    }
    pub fn members(&self) -> Vec<SocketAddrV4> {
        self.view.members.iter().map(|m| m.addr).collect()
    }
    pub fn member_entries(&self) -> &[MemberEntry] {
        &self.view.members
    }
    pub fn view_version(&self) -> u64 {
        self.view.version
    }
    pub fn master(&self) -> SocketAddrV4 {
        self.view.master()
    }
    pub fn dispatcher(&self) -> Option<SocketAddrV4> {
        if self.is_forming() {
            None
        } else {
            self.view.dispatcher()
        }
    }
    pub fn id(&self) -> u64 {
        self.my_id
    }
    pub fn reliable_stats(&self) -> reliable::RelStats {
        self.reliable.stats
    }
    pub fn state_vars(&self) -> StateVars {
        let v = &self.view;
        StateVars {
            own: self.cfg.me,
            smallest: v.master(),
            greatest: v.members[v.members.len() - 1].addr,
            downstream: self.downstream(),
            upstream: self.upstream(),
            broadcast: self.cfg.peers.clone(),
            created_ms: v.created_ms,
        }
    }

    fn downstream(&self) -> SocketAddrV4 {
        self.view.downstream(&self.cfg.me)
    }
    fn upstream(&self) -> SocketAddrV4 {
        self.view.upstream(&self.cfg.me)
    }

    // ---------- messages ----------

    fn on_msg(&mut self, now: u64, from: &SocketAddrV4, incarnation: u64, msg: Msg) {
        match msg {
            Msg::Hello { caps, id } => {
                let entry = MemberEntry { addr: *from, caps, id, incarnation };
                if let Phase::Forming { heard, .. } = &mut self.phase {
                    heard.insert(order(from), entry);
                } else if self.is_master() {
                    self.admit(now, entry);
                }
            }
            Msg::Join { caps, id } => {
                if self.is_master() {
                    self.admit(now, MemberEntry { addr: *from, caps, id, incarnation });
                }
            }
            Msg::Heartbeat { seq, view } => {
                let master = view.members[0];
                let fresh = match self.hb_seen.get(&master.addr) {
                    Some(&(inc, s)) => master.incarnation > inc || (master.incarnation == inc && seq > s),
                    None => true,
                };
                if !fresh {
                    return;
                }
                self.hb_seen.insert(master.addr, (master.incarnation, seq));
                self.consider_view(now, &view);
                // Only the token of the view we hold proves our master alive.
                if matches!(self.phase, Phase::Member)
                    && self.view.members[0] == master
                    && self.view.version == view.version
                {
                    self.last_master_hb = now;
                }
                // Pass the token on if we are in its ring and not its master.
                if matches!(self.phase, Phase::Member)
                    && self.view.members[0] == master
                    && self.view.version == view.version
                    && master.addr != self.cfg.me
                {
                    self.pending_down.insert(0, Msg::Heartbeat { seq, view });
                    self.flush_downstream(now, true);
                }
            }
            Msg::Announce { view } => self.consider_view(now, &view),
            Msg::Purge { master, version } => {
                if matches!(self.phase, Phase::Member) && master == self.view.master() && version == self.view.version {
                    self.events.push_back(Event::Purge { reason: "purge received" });
                    self.start_forming(now);
                }
            }
            Msg::Probe { nonce } => {
                // A forming member names itself as master: it is in no ring.
                let forming = self.is_forming();
                let ack = Msg::ProbeAck {
                    nonce,
                    master: if forming { self.cfg.me } else { self.view.master() },
                    version: if forming { 0 } else { self.view.version },
                    downstream: self.downstream(),
                };
                self.send_direct(now, vec![(*from, ack)]);
            }
            Msg::ProbeAck { nonce, master, version, downstream } => {
                let Some(p) = &self.probe else { return };
                if p.nonce != nonce || *from != self.upstream() {
                    return;
                }
                self.probe = None;
                if master != self.view.master() || (master == *from && version == 0) {
                    // In another ring, or forming (e.g. our master restarted).
                    self.purge(now, "upstream is alive but in another ring");
                    return;
                }
                // Alive and in our ring: its packets were lost, the link is fine.
                self.last_from_upstream = now;
                if (version != self.view.version || downstream != self.cfg.me) && now >= self.next_join {
                    // One of us holds an older view of the same ring: ask the master for its view.
                    self.next_join = now + self.cfg.timers.heartbeat_ms;
                    let join = Msg::Join { caps: self.caps, id: self.my_id };
                    self.send_direct(now, vec![(master, join)]);
                }
            }
            Msg::App { origin, incarnation, seq, dest, hops_left, payload } => {
                self.on_app(now, (origin, incarnation, seq), dest, hops_left, payload)
            }
            m @ (Msg::RelToken { .. } | Msg::RelCarriage { .. } | Msg::RelNack { .. } | Msg::RelAck { .. }) => {
                let mut out = Vec::new();
                if let Some(payload) = self.reliable.on_msg(*from, &m, now, &mut out) {
                    self.events.push_back(Event::Reliable { from: *from, payload });
                }
                self.send_direct(now, out);
            }
        }
    }

    fn on_app(&mut self, now: u64, id: (SocketAddrV4, u64, u64), dest: Dest, hops_left: u8, payload: Vec<u8>) {
        let (origin, incarnation, seq) = id;
        if origin == self.cfg.me {
            // It went all the way round: remove it (B2).
            self.counters.app_own_returned += 1;
            return;
        }
        if self.app_seen.insert(id, now).is_some() {
            self.counters.app_duplicates += 1;
            return;
        }
        let for_me = match dest {
            Dest::Broadcast => true,
            Dest::To(a) => a == self.cfg.me,
        };
        if for_me {
            self.counters.app_delivered += 1;
            self.events.push_back(Event::App { origin, payload: payload.clone() });
            if dest != Dest::Broadcast {
                return; // addressed only to us: remove it
            }
        }
        if hops_left <= 1 || !matches!(self.phase, Phase::Member) {
            self.counters.app_expired += 1;
            return;
        }
        self.pending_down.push(Msg::App { origin, incarnation, seq, dest, hops_left: hops_left - 1, payload });
    }

    /// A view seen in a heartbeat or announce: adopt it, join its ring, or ignore it.
    fn consider_view(&mut self, now: u64, v: &ViewMsg) {
        let their_master = v.members[0].addr;
        let in_view = v.members.iter().any(|m| m.addr == self.cfg.me && m.incarnation == self.cfg.incarnation);
        let my_master = match &self.phase {
            Phase::Forming { heard, .. } => {
                heard.values().map(|m| m.addr).chain([self.cfg.me]).min_by_key(order).unwrap_or(self.cfg.me)
            }
            Phase::Member => self.view.master(),
        };
        let smaller = order(&their_master) < order(&my_master);
        // Same master address: a restarted master (higher incarnation) starts a
        // new version series, so compare (incarnation, version).
        let mine = (self.view.members[0].incarnation, self.view.version);
        let same_master_newer = their_master == my_master && (v.members[0].incarnation, v.version) > mine;
        // Our master has gone quiet: a view from another master that holds us
        // wins even if its master is greater (else a stale view can block a ring).
        let orphaned = their_master != my_master
            && now.saturating_sub(self.last_master_hb) >= self.cfg.timers.comm_timeout_ms
            && !self.is_master();
        if in_view {
            let newer = match self.phase {
                Phase::Forming { .. } => true,
                Phase::Member => smaller || orphaned || same_master_newer,
            };
            if newer {
                self.adopt(now, View::from_msg(v));
            }
        } else if smaller || their_master == my_master {
            // Their ring should hold us: ask its master (rate-limited).
            if now >= self.next_join {
                self.next_join = now + self.cfg.timers.heartbeat_ms;
                let join = Msg::Join { caps: self.caps, id: self.my_id };
                self.send_direct(now, vec![(their_master, join)]);
            }
        }
    }

    fn adopt(&mut self, now: u64, v: View) {
        let old_up = self.upstream();
        let was_forming = self.is_forming();
        let changed = was_forming || v.master() != self.view.master() || v.version != self.view.version;
        self.phase = Phase::Member;
        self.view = v;
        let my_pos = self.view.position(&self.cfg.me);
        if let Some(me) = my_pos.map(|i| self.view.members[i]) {
            if self.my_id == 0 && me.id != 0 {
                self.my_id = me.id;
                self.events.push_back(Event::IdAccepted(me.id));
            } else if self.my_id != 0 && me.id != self.my_id && my_pos == Some(0) {
                // We are this view's master and it carries a stale id for us: fix
                // it (the re-versioning below publishes the change).
                self.view.members[0].id = self.my_id;
                self.version_floor = self.version_floor.max(self.view.version);
            } else if self.my_id != 0 && me.id != self.my_id && now >= self.next_join {
                // The master does not know our id yet: tell it.
                self.next_join = now + self.cfg.timers.heartbeat_ms;
                let join = Msg::Join { caps: self.caps, id: self.my_id };
                let master = self.view.master();
                self.send_direct(now, vec![(master, join)]);
            }
        }
        if was_forming || self.upstream() != old_up {
            self.last_from_upstream = now;
            self.probe = None;
        }
        self.last_master_hb = now;
        if self.is_master() {
            // The view may come from another master's version series (it
            // admitted us): re-issue it above anything we issued before.
            if self.view.version <= self.version_floor {
                self.view.version = self.version_floor + 1;
            }
            self.version_floor = self.view.version;
            self.next_hb = now;
            self.next_announce = now + self.cfg.timers.broadcast_timeout_ms;
        }
        if changed {
            self.emit_view();
        }
    }

    fn emit_view(&mut self) {
        self.events.push_back(Event::ViewChanged {
            master: self.view.master(),
            version: self.view.version,
            members: self.members(),
        });
        let d = self.dispatcher();
        if d != self.last_dispatcher {
            self.last_dispatcher = d;
            self.events.push_back(Event::Dispatcher(d));
        }
    }

    /// Master only: add or refresh a member (B6), assigning an id if it has none.
    fn admit(&mut self, now: u64, mut entry: MemberEntry) {
        let i = self.view.position(&entry.addr);
        if let Some(i) = i {
            let cur = self.view.members[i];
            if cur.incarnation == entry.incarnation && cur.caps == entry.caps && (entry.id == 0 || cur.id == entry.id) {
                // Already in, nothing new: remind it of the view.
                self.send_direct(now, vec![(entry.addr, Msg::Announce { view: self.view.to_msg() })]);
                return;
            }
            if entry.incarnation < cur.incarnation {
                return;
            }
            if entry.id == 0 && cur.incarnation == entry.incarnation {
                entry.id = cur.id;
            }
        }
        if entry.id == 0 {
            entry.id = self.fresh_id();
        }
        match i {
            Some(i) => self.view.members[i] = entry,
            None => {
                let at = self.view.members.partition_point(|m| order(&m.addr) < order(&entry.addr));
                self.view.members.insert(at, entry);
            }
        }
        self.view.version = self.view.version.max(self.version_floor) + 1;
        self.version_floor = self.view.version;
        self.emit_view();
        self.send_direct(now, vec![(entry.addr, Msg::Announce { view: self.view.to_msg() })]);
        if self.view.master() != self.cfg.me {
            // A smaller member joined: it is the master now; hand it the view.
            let master = self.view.master();
            self.send_direct(now, vec![(master, Msg::Announce { view: self.view.to_msg() })]);
        } else {
            self.next_hb = now;
        }
    }

    /// An id no other master can produce: a hash of this master's identity and a counter.
    fn fresh_id(&mut self) -> u64 {
        self.ids_assigned += 1;
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&order(&self.cfg.me).to_be_bytes());
        b.extend_from_slice(&self.cfg.incarnation.to_be_bytes());
        b.extend_from_slice(&self.ids_assigned.to_be_bytes());
        let h = blake3::hash(&b);
        let mut x = [0u8; 8];
        x.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_be_bytes(x) | 1
    }

    // ---------- timers ----------

    fn member_timers(&mut self, now: u64) {
        let t = self.cfg.timers;
        if self.is_master() {
            if self.view.members.len() > 1 && now >= self.next_hb {
                self.next_hb = now + t.heartbeat_ms;
                self.hb_seq += 1;
                let hb = Msg::Heartbeat { seq: self.hb_seq, view: self.view.to_msg() };
                self.hb_seen.insert(self.cfg.me, (self.cfg.incarnation, self.hb_seq));
                self.pending_down.insert(0, hb);
                self.flush_downstream(now, true);
            }
            if now >= self.next_announce {
                self.next_announce = now + t.broadcast_timeout_ms;
                let outsiders: Vec<SocketAddrV4> = self
                    .cfg
                    .peers
                    .iter()
                    .filter(|p| self.view.position(p).is_none() && **p != self.cfg.me)
                    .copied()
                    .collect();
                let view = self.view.to_msg();
                let msgs = outsiders.into_iter().map(|p| (p, Msg::Announce { view: view.clone() })).collect();
                self.send_direct(now, msgs);
            }
        }
        if self.view.members.len() < 2 {
            return;
        }
        if !self.is_master() && self.my_id != 0 && now >= self.next_join {
            // Until the master's view carries the id we accepted, keep telling it.
            let listed = self.view.position(&self.cfg.me).map(|i| self.view.members[i].id);
            if listed.is_some_and(|id| id != self.my_id) {
                self.next_join = now + t.heartbeat_ms;
                let join = Msg::Join { caps: self.caps, id: self.my_id };
                let master = self.view.master();
                self.send_direct(now, vec![(master, join)]);
            }
        }
        if !self.is_master() && now >= self.last_master_hb + self.master_silence_ms() {
            // Links are alive but the token no longer comes round: our master
            // is gone or our view is stale. Leave and re-enter.
            self.purge(now, "no heartbeat from the master");
            return;
        }
        if now >= self.last_sent_downstream + t.heartbeat_ms {
            self.flush_downstream(now, true); // keepalive
        }
        match &mut self.probe {
            None if now >= self.last_from_upstream + t.comm_timeout_ms => {
                // Silence from upstream: ask it directly before tearing the ring down.
                self.probe_nonce += 1;
                self.probe = Some(Probe { nonce: self.probe_nonce, until: now + t.probe_ms(), next_send: now });
                self.member_timers_probe(now);
            }
            Some(p) if now >= p.until => {
                self.probe = None;
                self.purge(now, "upstream silent past the communication timeout");
            }
            Some(_) => self.member_timers_probe(now),
            None => {}
        }
    }

    /// How long a member waits for its master's heartbeat before purging:
    /// long, because under loss a heartbeat may die on any hop of the ring.
    fn master_silence_ms(&self) -> u64 {
        let t = self.cfg.timers;
        2 * (t.comm_timeout_ms + t.probe_ms())
    }

    fn member_timers_probe(&mut self, now: u64) {
        let hb = self.cfg.timers.heartbeat_ms;
        let up = self.upstream();
        if let Some(p) = &mut self.probe {
            if now >= p.next_send {
                p.next_send = now + hb / 2 + 1;
                let nonce = p.nonce;
                self.counters.probes_sent += 1;
                self.send_direct(now, vec![(up, Msg::Probe { nonce })]);
            }
        }
    }

    // ---------- purge and forming ----------

    /// Out-of-band broadcast: every member of our ring leaves and re-enters (B4, B7).
    fn purge(&mut self, now: u64, reason: &'static str) {
        self.counters.purges_sent += 1;
        self.events.push_back(Event::Purge { reason });
        let msg = Msg::Purge { master: self.view.master(), version: self.view.version };
        let to: Vec<(SocketAddrV4, Msg)> =
            self.view.members.iter().filter(|m| m.addr != self.cfg.me).map(|m| (m.addr, msg.clone())).collect();
        self.send_direct(now, to);
        self.start_forming(now);
    }

    fn start_forming(&mut self, now: u64) {
        self.phase = Phase::Forming {
            until: now + self.cfg.timers.broadcast_timeout_ms,
            next_hello: now,
            heard: BTreeMap::new(),
        };
        self.probe = None;
        self.pending_down.clear();
        if self.last_dispatcher.is_some() {
            self.last_dispatcher = None;
            self.events.push_back(Event::Dispatcher(None));
        }
        self.handle_timeout(now);
    }

    fn hello_all(&mut self, now: u64) {
        let hello = Msg::Hello { caps: self.caps, id: self.my_id };
        let msgs = self.cfg.peers.iter().filter(|p| **p != self.cfg.me).map(|p| (*p, hello.clone())).collect();
        self.send_direct(now, msgs);
    }

    fn end_forming(&mut self, now: u64) {
        let Phase::Forming { heard, .. } = std::mem::replace(&mut self.phase, Phase::Member) else { return };
        let me = MemberEntry { addr: self.cfg.me, caps: self.caps, id: self.my_id, incarnation: self.cfg.incarnation };
        let mut members: Vec<MemberEntry> = heard.into_values().filter(|m| m.addr != self.cfg.me).collect();
        members.push(me);
        members.sort_by_key(|m| order(&m.addr));
        // Only the master's view is real; others hold a tentative one (version
        // 0) until the master's heartbeat, always newer, replaces it. Masters'
        // versions grow across formations: a time-based base.
        let master = members[0].addr == self.cfg.me;
        let version = if master { (now << 16).max(self.version_floor + 1) } else { 0 };
        if master {
            self.version_floor = version;
        }
        self.view = View { version, created_ms: now, members };
        if master {
            let ids: Vec<usize> = (0..self.view.members.len()).filter(|&i| self.view.members[i].id == 0).collect();
            for i in ids {
                self.view.members[i].id = self.fresh_id();
            }
            if let Some(me) = self.view.members.iter().find(|m| m.addr == self.cfg.me) {
                if self.my_id == 0 {
                    self.my_id = me.id;
                    self.events.push_back(Event::IdAccepted(me.id));
                }
            }
            self.next_hb = now;
            self.next_announce = now;
        }
        self.last_from_upstream = now;
        self.last_master_hb = now;
        self.last_sent_downstream = now.saturating_sub(self.cfg.timers.heartbeat_ms);
        self.emit_view();
        self.member_timers(now);
    }

    // ---------- sending ----------

    /// Sends queued ring messages to the downstream neighbour (or an empty
    /// keepalive when `force`).
    fn flush_downstream(&mut self, now: u64, force: bool) {
        if !matches!(self.phase, Phase::Member) || self.view.members.len() < 2 {
            self.pending_down.clear();
            return;
        }
        if self.pending_down.is_empty() && !force {
            return;
        }
        let down = self.downstream();
        let msgs: Vec<(SocketAddrV4, Msg)> = self.pending_down.drain(..).map(|m| (down, m)).collect();
        if msgs.is_empty() {
            self.emit_packet(down, Vec::new());
        } else {
            self.send_direct(now, msgs);
        }
        self.last_sent_downstream = now;
    }

    /// Packs messages per destination into as few datagrams as fit.
    fn send_direct(&mut self, _now: u64, msgs: Vec<(SocketAddrV4, Msg)>) {
        let mut by_dest: Vec<(SocketAddrV4, Vec<Msg>, usize)> = Vec::new();
        for (to, m) in msgs {
            let len = wire::msg_len(&m);
            let budget = wire::MAX_DATAGRAM - wire::HEADER_LEN - 2 - wire::MAC_LEN;
            match by_dest.iter_mut().rev().find(|(d, _, used)| *d == to && used + len <= budget) {
                Some((_, v, used)) => {
                    v.push(m);
                    *used += len;
                }
                None => by_dest.push((to, vec![m], len)),
            }
        }
        for (to, msgs, _) in by_dest {
            self.emit_packet(to, msgs);
        }
    }

    fn emit_packet(&mut self, to: SocketAddrV4, msgs: Vec<Msg>) {
        self.tx_seq += 1;
        let p = Packet { sender: self.cfg.me, incarnation: self.cfg.incarnation, seq: self.tx_seq, msgs };
        self.counters.tx_packets += 1;
        self.out.push_back(Transmit { to, bytes: wire::encode(&p, &self.cfg.key) });
    }
}
