//! One ring member as a sans-IO state machine: it is given the time and the
//! datagrams; it hands back datagrams to send, the next time it wants to be
//! woken, and events. No sockets, no clocks inside (the quinn-proto pattern),
//! so a simulator can drive many members deterministically.
//!
//! The protocol (PROTOCOL.md has the full text):
//! - Members are ordered by address. Each sends to its nearest downstream
//!   neighbour and hears from its nearest upstream one, wrapping.
//! - The smallest member of a view is its master: it circulates the
//!   heartbeat packet (the implicit token) carrying the view, and it alone
//!   admits members and assigns ids.
//! - Every member sends to its downstream at least once per heartbeat
//!   interval (forwarded heartbeat or keepalive). Silence from upstream for
//!   the communication timeout starts an out-of-band probe; if the probe
//!   fails too, the member broadcasts a purge: every member leaves and
//!   re-enters (forming) for the broadcast timeout.
//! - Views merge towards the smallest master: a member that sees a view with
//!   a smaller master joins it; masters announce their view to configured
//!   peers outside it, so partitions heal into one ring.
//! - The dispatcher is a function of the view: the smallest dispatch-capable
//!   member; a lone member runs standalone.

//!
//! The member is a facade over sub-machines, one file each: `view` (phase,
//! view, adoption rule), `detect` (upstream and master silence, probes),
//! `master` (heartbeat, announce, admission, ids), `app` (App messages),
//! `pack` (the downstream queue and datagram packing). The facade routes
//! messages and timers between them; timers run once per `handle_timeout`.

mod app;
mod detect;
mod master;
mod pack;
mod view;

use crate::reliable::{self, Reliable};
use crate::replay::ReplayGuard;
use crate::wire::{self, order, DecodeError, Dest, Key, MemberEntry, Msg, ViewMsg, CAP_APPLIANCE, CAP_DISPATCH};
use app::AppForwarding;
use detect::{Detector, ProbeStep};
use master::{Admission, MasterDuties};
use pack::Packer;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddrV4;
use view::{Membership, Phase, Verdict, View};

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
    /// The ring's original values (the `seed` profile): communication 2,000 ms, broadcast 2,500 ms.
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
    /// Every address that may be a member: the ring's "broadcast address".
    pub peers: Vec<SocketAddrV4>,
    pub dispatch_capable: bool,
    /// A ringlb appliance: it shares session state with the other
    /// appliances in the view (its siblings). Agents are not.
    pub appliance: bool,
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
#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
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

/// A member's state variables, all derived from the view.
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

pub struct Member {
    cfg: Config,
    peer_set: HashSet<SocketAddrV4>,
    caps: u8,
    ring: Membership,
    detect: Detector,
    master: MasterDuties,
    app: AppForwarding,
    reliable: Reliable,
    pack: Packer,
    replay: ReplayGuard,
    /// Joins (asking a master for admission or its view) are rate-limited.
    next_join: u64,
    /// Newest heartbeat seen per master: (incarnation, seq).
    hb_seen: HashMap<SocketAddrV4, (u64, u64)>,
    events: VecDeque<Event>,
    pub counters: Counters,
}

impl Member {
    pub fn new(cfg: Config, now: u64) -> Member {
        let mut caps = 0;
        if cfg.dispatch_capable {
            caps |= CAP_DISPATCH;
        }
        if cfg.appliance {
            caps |= CAP_APPLIANCE;
        }
        let me = MemberEntry { addr: cfg.me, caps, id: 0, incarnation: cfg.incarnation };
        let rto = cfg.timers.heartbeat_ms.max(20);
        let mut m = Member {
            peer_set: cfg.peers.iter().copied().collect(),
            caps,
            ring: Membership {
                phase: Phase::Member,
                view: View { version: 0, created_ms: now, members: vec![me] },
                my_id: 0,
                version_floor: 0,
                last_dispatcher: None,
            },
            detect: Detector::new(now),
            master: MasterDuties::new(now),
            app: AppForwarding::default(),
            reliable: Reliable::new(rto, cfg.incarnation << 20),
            pack: Packer::new(cfg.me, cfg.incarnation, cfg.key.clone(), now),
            replay: ReplayGuard::default(),
            next_join: now,
            hb_seen: HashMap::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            cfg,
        };
        m.start_forming(now);
        m
    }

    // ---------- the sans-IO interface ----------

    pub fn handle_datagram(&mut self, now: u64, from: SocketAddrV4, bytes: &[u8]) {
        let pkt = match wire::decode(bytes, &self.cfg.me, &self.cfg.key) {
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
        if self.ring.in_ring() && from == self.upstream() {
            self.detect.heard_upstream(now);
        }
        for msg in pkt.msgs {
            self.on_msg(now, &pkt.sender, pkt.incarnation, msg);
        }
        self.flush_downstream(now, false);
    }

    /// Runs every timer that is due, once.
    pub fn handle_timeout(&mut self, now: u64) {
        let t = self.cfg.timers;
        match &mut self.ring.phase {
            Phase::Forming { until, next_hello, .. } => {
                if now >= *until {
                    self.end_forming(now);
                } else if now >= *next_hello {
                    *next_hello = now + t.heartbeat_ms;
                    self.hello_all();
                }
            }
            Phase::Member => self.member_timers(now),
        }
        let mut out = Vec::new();
        self.reliable.on_timeout(now, &mut out);
        self.pack.send(out, &mut self.counters);
        self.app.prune(now, 8 * t.broadcast_timeout_ms);
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> u64 {
        let t = self.cfg.timers;
        let mut next = match &self.ring.phase {
            Phase::Forming { until, next_hello, .. } => (*until).min(*next_hello),
            Phase::Member => {
                let mut n = u64::MAX;
                let neighbours = self.ring.has_neighbours();
                let master = self.is_master();
                if neighbours {
                    n = n.min(self.pack.keepalive_due(t.heartbeat_ms));
                    n = n.min(self.detect.deadline(t, !master));
                }
                if master {
                    n = n.min(self.master.deadline(neighbours));
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
        self.pack.poll()
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
        let seq = self.app.next_seq();
        let hops = self.ring.view.members.len().min(255) as u8;
        if hops > 1 && self.ring.in_ring() {
            let msg = Msg::App {
                origin: self.cfg.me,
                incarnation: self.cfg.incarnation,
                seq,
                dest,
                hops_left: hops,
                payload,
            };
            self.pack.queue_down(msg, false);
            self.flush_downstream(now, false);
        }
        Ok(seq)
    }

    /// Sends `payload` to `to` over the reliable message layer.
    pub fn send_reliable(&mut self, now: u64, to: SocketAddrV4, payload: &[u8]) -> Result<u64, &'static str> {
        let mut out = Vec::new();
        let id = self.reliable.send(to, payload, now, &mut out)?;
        self.pack.send(out, &mut self.counters);
        Ok(id)
    }

    // ---------- what the member knows ----------

    pub fn is_forming(&self) -> bool {
        self.ring.is_forming()
    }
    pub fn is_master(&self) -> bool {
        self.ring.is_master(&self.cfg.me)
    }
    pub fn members(&self) -> Vec<SocketAddrV4> {
        self.ring.view.members.iter().map(|m| m.addr).collect()
    }
    pub fn member_entries(&self) -> &[MemberEntry] {
        &self.ring.view.members
    }
    pub fn view_version(&self) -> u64 {
        self.ring.view.version
    }
    pub fn master(&self) -> SocketAddrV4 {
        self.ring.view.master()
    }
    pub fn dispatcher(&self) -> Option<SocketAddrV4> {
        self.ring.dispatcher()
    }
    pub fn id(&self) -> u64 {
        self.ring.my_id
    }
    pub fn reliable_stats(&self) -> reliable::RelStats {
        self.reliable.stats
    }
    pub fn state_vars(&self) -> StateVars {
        let v = &self.ring.view;
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
        self.ring.view.downstream(&self.cfg.me)
    }
    fn upstream(&self) -> SocketAddrV4 {
        self.ring.view.upstream(&self.cfg.me)
    }

    // ---------- messages ----------

    fn on_msg(&mut self, now: u64, from: &SocketAddrV4, incarnation: u64, msg: Msg) {
        match msg {
            Msg::Hello { caps, id } => {
                let entry = MemberEntry { addr: *from, caps, id, incarnation };
                if let Phase::Forming { heard, .. } = &mut self.ring.phase {
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
            Msg::Heartbeat { seq, view } => self.on_heartbeat(now, seq, view),
            Msg::Announce { view } => self.consider_view(now, &view),
            Msg::Purge { master, version } => {
                let v = &self.ring.view;
                if self.ring.in_ring() && master == v.master() && version == v.version {
                    self.events.push_back(Event::Purge { reason: "purge received" });
                    self.start_forming(now);
                }
            }
            Msg::Probe { nonce } => {
                // A forming member names itself as master: it is in no ring.
                let forming = self.is_forming();
                let ack = Msg::ProbeAck {
                    nonce,
                    master: if forming { self.cfg.me } else { self.ring.view.master() },
                    version: if forming { 0 } else { self.ring.view.version },
                    downstream: self.downstream(),
                };
                self.pack.send(vec![(*from, ack)], &mut self.counters);
            }
            Msg::ProbeAck { nonce, master, version, downstream } => {
                if *from != self.upstream() || !self.detect.answer(nonce) {
                    return;
                }
                if master != self.ring.view.master() || (master == *from && version == 0) {
                    // In another ring, or forming (e.g. our master restarted).
                    self.purge(now, "upstream is alive but in another ring");
                    return;
                }
                // Alive and in our ring: its packets were lost, the link is fine.
                self.detect.heard_upstream(now);
                if (version != self.ring.view.version || downstream != self.cfg.me) && now >= self.next_join {
                    // One of us holds an older view of the same ring: ask the master for its view.
                    self.send_join(now, master);
                }
            }
            Msg::App { origin, incarnation, seq, dest, hops_left, payload } => {
                let out = self.app.receive(
                    &self.cfg.me,
                    self.ring.in_ring(),
                    now,
                    (origin, incarnation, seq),
                    dest,
                    hops_left,
                    payload,
                    &mut self.counters,
                );
                if let Some((origin, payload)) = out.deliver {
                    self.events.push_back(Event::App { origin, payload });
                }
                if let Some(m) = out.forward {
                    self.pack.queue_down(m, false);
                }
            }
            m @ (Msg::RelToken { .. } | Msg::RelCarriage { .. } | Msg::RelNack { .. } | Msg::RelAck { .. }) => {
                let mut out = Vec::new();
                if let Some(payload) = self.reliable.on_msg(*from, &m, now, &mut out) {
                    self.events.push_back(Event::Reliable { from: *from, payload });
                }
                self.pack.send(out, &mut self.counters);
            }
        }
    }

    /// The token: consider its view, note our master alive, pass it on.
    fn on_heartbeat(&mut self, now: u64, seq: u64, view: ViewMsg) {
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
        let ours = self.ring.in_ring() && self.ring.view.members[0] == master && self.ring.view.version == view.version;
        if ours {
            self.detect.master_alive(now);
        }
        // Pass the token on if we are in its ring and not its master.
        if ours && master.addr != self.cfg.me {
            self.pack.queue_down(Msg::Heartbeat { seq, view }, true);
            self.flush_downstream(now, true);
        }
    }

    /// A view seen in a heartbeat or announce: adopt it, join its ring, or ignore it.
    fn consider_view(&mut self, now: u64, v: &ViewMsg) {
        let silent = self.detect.master_silent(now, self.cfg.timers);
        match self.ring.judge(&self.cfg.me, self.cfg.incarnation, v, silent) {
            Verdict::Adopt => self.adopt(now, View::from_msg(v)),
            Verdict::AskToJoin(master) if now >= self.next_join => self.send_join(now, master),
            Verdict::AskToJoin(_) | Verdict::Ignore => {}
        }
    }

    /// Asks `master` to admit us (or to correct our id); rate-limited by the caller.
    fn send_join(&mut self, now: u64, master: SocketAddrV4) {
        self.next_join = now + self.cfg.timers.heartbeat_ms;
        let join = Msg::Join { caps: self.caps, id: self.ring.my_id };
        self.pack.send(vec![(master, join)], &mut self.counters);
    }

    fn adopt(&mut self, now: u64, v: View) {
        let old_up = self.upstream();
        let was_forming = self.is_forming();
        let r = &mut self.ring;
        let changed = was_forming || v.master() != r.view.master() || v.version != r.view.version;
        r.phase = Phase::Member;
        r.view = v;
        let my_pos = r.view.position(&self.cfg.me);
        if let Some(me) = my_pos.map(|i| r.view.members[i]) {
            if r.my_id == 0 && me.id != 0 {
                r.my_id = me.id;
                self.events.push_back(Event::IdAccepted(me.id));
            } else if r.my_id != 0 && me.id != r.my_id && my_pos == Some(0) {
                // We are this view's master and it carries a stale id for us: fix
                // it (the re-versioning below publishes the change).
                r.view.members[0].id = r.my_id;
                r.version_floor = r.version_floor.max(r.view.version);
            } else if r.my_id != 0 && me.id != r.my_id && now >= self.next_join {
                // The master does not know our id yet: tell it.
                let master = r.view.master();
                self.send_join(now, master);
            }
        }
        if was_forming || self.upstream() != old_up {
            self.detect.relink(now);
        }
        self.detect.master_alive(now);
        if self.is_master() {
            // The view may come from another master's version series (it
            // admitted us): re-issue it above anything we issued before.
            let r = &mut self.ring;
            if r.view.version <= r.version_floor {
                r.view.version = r.version_floor + 1;
            }
            r.version_floor = r.view.version;
            self.master.lead(now, self.cfg.timers.broadcast_timeout_ms);
        }
        if changed {
            self.emit_view();
        }
    }

    fn emit_view(&mut self) {
        self.events.push_back(Event::ViewChanged {
            master: self.ring.view.master(),
            version: self.ring.view.version,
            members: self.members(),
        });
        let d = self.dispatcher();
        if d != self.ring.last_dispatcher {
            self.ring.last_dispatcher = d;
            self.events.push_back(Event::Dispatcher(d));
        }
    }

    /// Master only: add or refresh a member.
    fn admit(&mut self, now: u64, entry: MemberEntry) {
        let r = &mut self.ring;
        match self.master.admit(&mut r.view, &mut r.version_floor, entry, &self.cfg.me, self.cfg.incarnation) {
            Admission::Stale => {}
            Admission::AlreadyIn => {
                let announce = Msg::Announce { view: self.ring.view.to_msg() };
                self.pack.send(vec![(entry.addr, announce)], &mut self.counters);
            }
            Admission::Admitted => {
                self.emit_view();
                let view = self.ring.view.to_msg();
                self.pack.send(vec![(entry.addr, Msg::Announce { view: view.clone() })], &mut self.counters);
                let master = self.ring.view.master();
                if master != self.cfg.me {
                    // A smaller member joined: it is the master now; hand it the view.
                    self.pack.send(vec![(master, Msg::Announce { view })], &mut self.counters);
                } else {
                    self.master.heartbeat_now(now);
                }
            }
        }
    }

    // ---------- timers ----------

    fn member_timers(&mut self, now: u64) {
        let t = self.cfg.timers;
        if self.is_master() {
            self.master_timers(now);
        }
        if !self.ring.has_neighbours() {
            return;
        }
        if !self.is_master() && self.ring.my_id != 0 && now >= self.next_join {
            // Until the master's view carries the id we accepted, keep telling it.
            let me = self.ring.view.position(&self.cfg.me).map(|i| self.ring.view.members[i].id);
            if me.is_some_and(|id| id != self.ring.my_id) {
                let master = self.ring.view.master();
                self.send_join(now, master);
            }
        }
        if !self.is_master() && self.detect.master_gone(now, t) {
            // Links are alive but the token no longer comes round: our master
            // is gone or our view is stale. Leave and re-enter.
            self.purge(now, "no heartbeat from the master");
            return;
        }
        if now >= self.pack.keepalive_due(t.heartbeat_ms) {
            self.flush_downstream(now, true);
        }
        match self.detect.probe_step(now, t) {
            ProbeStep::Idle => {}
            ProbeStep::Send(nonce) => {
                self.counters.probes_sent += 1;
                let up = self.upstream();
                self.pack.send(vec![(up, Msg::Probe { nonce })], &mut self.counters);
            }
            ProbeStep::GiveUp => self.purge(now, "upstream silent past the communication timeout"),
        }
    }

    /// The heartbeat (the token) and announcements to peers outside the view.
    fn master_timers(&mut self, now: u64) {
        let t = self.cfg.timers;
        if self.ring.has_neighbours() {
            if let Some(seq) = self.master.heartbeat_due(now, t) {
                let hb = Msg::Heartbeat { seq, view: self.ring.view.to_msg() };
                self.hb_seen.insert(self.cfg.me, (self.cfg.incarnation, seq));
                self.pack.queue_down(hb, true);
                self.flush_downstream(now, true);
            }
        }
        if self.master.announce_due(now, t) {
            let view = self.ring.view.to_msg();
            let msgs = self
                .cfg
                .peers
                .iter()
                .filter(|p| self.ring.view.position(p).is_none() && **p != self.cfg.me)
                .map(|p| (*p, Msg::Announce { view: view.clone() }))
                .collect();
            self.pack.send(msgs, &mut self.counters);
        }
    }

    // ---------- purge and forming ----------

    /// Out-of-band broadcast: every member of our ring leaves and re-enters.
    fn purge(&mut self, now: u64, reason: &'static str) {
        self.counters.purges_sent += 1;
        self.events.push_back(Event::Purge { reason });
        let msg = Msg::Purge { master: self.ring.view.master(), version: self.ring.view.version };
        let to: Vec<(SocketAddrV4, Msg)> =
            self.ring.view.members.iter().filter(|m| m.addr != self.cfg.me).map(|m| (m.addr, msg.clone())).collect();
        self.pack.send(to, &mut self.counters);
        self.start_forming(now);
    }

    /// Leaves the ring and starts collecting Hellos; says Hello at once.
    /// Runs no timers itself: the caller's tick (or the next) does.
    fn start_forming(&mut self, now: u64) {
        self.ring.phase = Phase::Forming {
            until: now + self.cfg.timers.broadcast_timeout_ms,
            next_hello: now + self.cfg.timers.heartbeat_ms,
            heard: BTreeMap::new(),
        };
        self.detect.cancel_probe();
        self.pack.clear_down();
        if self.ring.last_dispatcher.is_some() {
            self.ring.last_dispatcher = None;
            self.events.push_back(Event::Dispatcher(None));
        }
        self.hello_all();
    }

    fn hello_all(&mut self) {
        let hello = Msg::Hello { caps: self.caps, id: self.ring.my_id };
        let msgs = self.cfg.peers.iter().filter(|p| **p != self.cfg.me).map(|p| (*p, hello.clone())).collect();
        self.pack.send(msgs, &mut self.counters);
    }

    fn end_forming(&mut self, now: u64) {
        let Phase::Forming { heard, .. } = std::mem::replace(&mut self.ring.phase, Phase::Member) else { return };
        let my_id = self.ring.my_id;
        let me = MemberEntry { addr: self.cfg.me, caps: self.caps, id: my_id, incarnation: self.cfg.incarnation };
        let mut members: Vec<MemberEntry> = heard.into_values().filter(|m| m.addr != self.cfg.me).collect();
        members.push(me);
        members.sort_by_key(|m| order(&m.addr));
        // Only the master's view is real; others hold a tentative one (version
        // 0) until the master's heartbeat, always newer, replaces it. Masters'
        // versions grow across formations: a time-based base.
        let master = members[0].addr == self.cfg.me;
        let version = if master { (now << 16).max(self.ring.version_floor + 1) } else { 0 };
        if master {
            self.ring.version_floor = version;
        }
        self.ring.view = View { version, created_ms: now, members };
        if master {
            let (me_addr, inc) = (self.cfg.me, self.cfg.incarnation);
            for m in self.ring.view.members.iter_mut().filter(|m| m.id == 0) {
                m.id = self.master.fresh_id(&me_addr, inc);
            }
            if let Some(me) = self.ring.view.members.iter().find(|m| m.addr == self.cfg.me) {
                if self.ring.my_id == 0 {
                    self.ring.my_id = me.id;
                    self.events.push_back(Event::IdAccepted(me.id));
                }
            }
            self.master.lead(now, 0);
        }
        self.detect.relink(now);
        self.detect.master_alive(now);
        self.pack.set_last_sent_downstream(now.saturating_sub(self.cfg.timers.heartbeat_ms));
        self.emit_view();
        self.member_timers(now);
    }

    // ---------- sending ----------

    /// Sends queued ring messages to the downstream neighbour (or an empty
    /// keepalive when `force`).
    fn flush_downstream(&mut self, now: u64, force: bool) {
        let down = (self.ring.in_ring() && self.ring.has_neighbours()).then(|| self.downstream());
        self.pack.flush_down(now, down, force, &mut self.counters);
    }
}
