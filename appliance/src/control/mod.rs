//! The control plane: what runs on the main lcore beside the workers. It is
//! a sans-IO state machine (like the ring's member): it is given the time,
//! datagrams and the workers' events; it hands back datagrams, commands for
//! the workers, and notes for the log. `driver` binds it to a UDP socket
//! and the clock.
//!
//! - `channel`: the command and event queues to and from each worker.
//! - the ring (`ringlb-ring`): this appliance is a dispatch-capable member;
//!   the ring's view says who the sibling appliances are.
//! - `siblings` (with `records`): sessions and client locks shared with the
//!   siblings over the sync transport, resyncs, and first-packet release.
//! - `vips` (with `cluster.vips: owned`): which VIPs this appliance
//!   answers for, from the ring's view; gratuitous ARP on taking one.
//! - `health`: servers whose agent left the ring get no new flows;
//!   `least_load` weights follow the agents' load reports.
//! - `rebuild`: a VIP taken has its sessions rebuilt from the servers'
//!   agents' connection lists.
//! - `status`: what the control thread knows, for the stats line and the
//!   status file.

pub mod agreement;
pub mod bird;
pub mod channel;
pub mod driver;
pub mod health;
mod lag;
pub mod rebuild;
pub mod records;
mod siblings;
pub mod status;
pub mod vips;

use crate::config::{Config, OnServerDown, VipMode};
use crate::dataplane::{Routing, Shared};
use channel::{Command, Event, RoutingSwitch, SessionRecord, WorkerPort};
use ringlb_ring::member::{Config as RingConfig, Event as RingEvent, Member, Transmit};
use ringlb_ring::sync::{SyncConfig, KEY_CONTEXT};
use ringlb_ring::wire::{Dest, CAP_APPLIANCE};
use ringlb_ring::Key;
use siblings::{Ctx, Siblings};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::sync::Arc;

pub use siblings::{PullReport, SiblingCounters};

/// Events taken from one worker per poll (the rest wait for the next).
const EVENTS_PER_POLL: usize = 8_192;
/// VIP ownership is looked at again at least this often (readiness can
/// change without a ring event: a resync completes).
const VIP_CHECK_MS: u64 = 50;
/// Servers' probe verdicts are looked at this often.
const HEALTH_CHECK_MS: u64 = 50;
/// Sync retransmission timeout: a LAN round trip is far below it.
const SYNC_RTO_MS: u64 = 20;

/// The time, as the control plane sees it: a monotonic millisecond clock
/// for protocol timers, and the wall clock for lag across appliances.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub ms: u64,
    pub wall_us: u64,
}

/// Sibling sync runs on the port after the ring's, on its own socket: sync
/// floods then never delay the ring's heartbeats (nor fill its buffer).
pub fn sync_address(ring: SocketAddrV4) -> SocketAddrV4 {
    SocketAddrV4::new(*ring.ip(), ring.port().wrapping_add(1))
}

/// The ring address of a sync address.
pub fn ring_address(sync: SocketAddrV4) -> SocketAddrV4 {
    SocketAddrV4::new(*sync.ip(), sync.port().wrapping_sub(1))
}

/// Which socket a datagram goes out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Ring,
    Sync,
}

/// This appliance as a ring member.
struct Ring {
    me: SocketAddrV4,
    member: Member,
    dispatcher: Option<SocketAddrV4>,
    purges: u64,
    /// App and reliable messages from other members (agents' load reports).
    app_messages: u64,
    incarnation: u64,
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
pub struct ControlCounters {
    /// Datagrams that are neither ring nor sync packets.
    pub unknown_datagrams: u64,
    /// Worker events taken.
    pub events: u64,
}

pub struct Control {
    shared: Arc<Shared>,
    workers: Vec<WorkerPort>,
    ring: Option<Ring>,
    siblings: Option<Siblings>,
    /// With `cluster.vips: owned`: who answers for each VIP.
    vips: Option<vips::VipOwners>,
    /// With `vips: owned` and servers' agents: sessions rebuilt on a takeover.
    rebuild: Option<rebuild::Rebuild>,
    /// With servers' agents: their health and load, as weights for new flows.
    health: Option<health::Health>,
    last_vip_check_ms: u64,
    last_health_ms: u64,
    notes: Notes,
    pub counters: ControlCounters,
    /// The operator's sample of the sessions under way (`ringlb sessions`).
    sample: Option<SampleQuery>,
    /// The running configuration's version (`Config::version`).
    pub config_version: String,
    /// Workers that have not yet handed back the routing a reload replaced.
    switching: usize,
    /// The running configuration and the cluster's agreement on it.
    agreement: agreement::Agreement,
    /// A configuration agreed while the workers still took the last one:
    /// applied as soon as they have.
    deferred: Option<Config>,
    /// Counts configuration changes applied (the driver refreshes its labels).
    config_epoch: u64,
    /// With `bird:`: the VIPs BIRD announces by BGP.
    bird: Option<bird::Bird>,
    /// This run's layout (set by `app` once the workers run).
    pub runtime: status::Runtime,
}

/// A sample of the workers' sessions being gathered.
struct SampleQuery {
    id: u32,
    limit: usize,
    sessions: Vec<(SessionRecord, bool)>,
    workers_done: usize,
}

impl Control {
    /// `incarnation` must grow from one start of this appliance to the next
    /// (the driver uses the wall clock in milliseconds).
    pub fn new(cfg: &Config, shared: Arc<Shared>, workers: Vec<WorkerPort>, now: Now, incarnation: u64) -> Control {
        let mut notes = Notes::default();
        let (ring, siblings) = match &cfg.cluster {
            None => (None, None),
            Some(c) => {
                let ring_cfg = RingConfig {
                    me: c.address,
                    peers: c.members.clone(),
                    dispatch_capable: true,
                    appliance: true,
                    timers: c.timers,
                    key: Key::from_secret(&c.secret.0),
                    incarnation,
                };
                notes.push_back(format!(
                    "ring: member {} of {} configured, timers {}, sync {}",
                    c.address,
                    c.members.len(),
                    c.timers_name,
                    if c.sync { "on" } else { "off" }
                ));
                let ring = Ring {
                    me: c.address,
                    member: Member::new(ring_cfg, now.ms),
                    dispatcher: None,
                    purges: 0,
                    app_messages: 0,
                    incarnation,
                };
                let siblings = c.sync.then(|| {
                    let sync = SyncConfig {
                        me: sync_address(c.address),
                        incarnation,
                        key: Key::derive(KEY_CONTEXT, &c.secret.0),
                        peers: c.members.iter().copied().map(sync_address).collect(),
                        rto_ms: SYNC_RTO_MS,
                    };
                    Siblings::new(sync, workers.len())
                });
                (Some(ring), siblings)
            }
        };
        let vips = cfg
            .cluster
            .as_ref()
            .filter(|c| c.vips == VipMode::Owned)
            .map(|c| vips::VipOwners::new(c.address, c.preempt, &shared));
        let rebuild = vips.as_ref().and_then(|_| rebuild::Rebuild::new(cfg));
        let shared_capacity = shared.server_capacity;
        let mut c = Control {
            shared,
            workers,
            ring,
            siblings,
            vips,
            rebuild,
            health: health::Health::new(cfg),
            last_vip_check_ms: 0,
            last_health_ms: 0,
            notes,
            counters: ControlCounters::default(),
            sample: None,
            config_version: cfg.version(),
            switching: 0,
            agreement: agreement::Agreement::new(
                cfg.cluster.as_ref().map(|c| c.address),
                None,
                cfg.clone(),
                shared_capacity,
            ),
            deferred: None,
            config_epoch: 0,
            bird: cfg.bird.clone().map(bird::Bird::new),
            runtime: status::Runtime::default(),
        };
        if let Some(h) = &mut c.health {
            c.notes.extend(h.apply(&c.shared));
        }
        c.ring_events(now);
        c.update_vips(now);
        c
    }

    fn ctx<'a>(shared: &'a Shared, workers: &'a mut [WorkerPort], notes: &'a mut Notes, now: Now) -> Ctx<'a> {
        Ctx { shared, workers, notes, now }
    }

    /// A datagram on the cluster socket: ring ("RL") or sync ("RS").
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddrV4, bytes: &[u8]) {
        match bytes.get(..2) {
            Some(b"RL") => {
                if let Some(r) = &mut self.ring {
                    r.member.handle_datagram(now.ms, from, bytes);
                    self.ring_events(now);
                }
            }
            Some(b"RS") => {
                if let Some(s) = &mut self.siblings {
                    let mut cx = Self::ctx(&self.shared, &mut self.workers, &mut self.notes, now);
                    s.handle_datagram(from, bytes, &mut cx);
                }
            }
            _ => {
                self.counters.unknown_datagrams += 1;
                return;
            }
        }
        // A view, a readiness message or a completed resync can change who
        // owns which VIP.
        self.update_vips(now);
    }

    /// Runs the ring's and the sync's timers that are due.
    pub fn handle_timeout(&mut self, now: Now) {
        if let Some(r) = &mut self.ring {
            if r.member.poll_timeout() <= now.ms {
                r.member.handle_timeout(now.ms);
            }
        }
        self.ring_events(now);
        let mut effects = Vec::new();
        self.agreement.poll(now.ms, &mut effects);
        self.run_effects(effects, now);
        if let Some(s) = &mut self.siblings {
            if s.poll_timeout() <= now.ms {
                let mut cx = Self::ctx(&self.shared, &mut self.workers, &mut self.notes, now);
                s.handle_timeout(&mut cx);
            }
        }
        // Ownership follows the ring, readiness and time (the claim grace).
        self.update_vips(now);
        if let Some(b) = self.bird.as_mut().filter(|b| now.ms >= b.last_check_ms + bird::CHECK_EVERY_MS) {
            b.poll(now.ms, &self.shared, &mut self.notes);
        }
        // Probes' verdicts (worker 0's) reach the notes and the status.
        if let Some(h) = self.health.as_mut().filter(|_| now.ms >= self.last_health_ms + HEALTH_CHECK_MS) {
            self.last_health_ms = now.ms;
            self.notes.extend(h.apply(&self.shared));
        }
    }

    /// When `handle_timeout` should next run (u64::MAX: nothing is due).
    pub fn poll_timeout(&self) -> u64 {
        let ring = self.ring.as_ref().map_or(u64::MAX, |r| r.member.poll_timeout());
        let sync = self.siblings.as_ref().map_or(u64::MAX, Siblings::poll_timeout);
        // VIP ownership follows readiness: look again at least this often.
        let vips = self.vips.as_ref().map_or(u64::MAX, |_| self.last_vip_check_ms.saturating_add(VIP_CHECK_MS));
        let health = self.health.as_ref().map_or(u64::MAX, |_| self.last_health_ms.saturating_add(HEALTH_CHECK_MS));
        let bird = self.bird.as_ref().map_or(u64::MAX, |b| b.last_check_ms.saturating_add(bird::CHECK_EVERY_MS));
        ring.min(sync).min(vips).min(health).min(self.agreement.poll_timeout()).min(bird)
    }

    /// The next datagram to send, and the socket it goes out of.
    pub fn poll_transmit(&mut self) -> Option<(Channel, Transmit)> {
        if let Some(t) = self.ring.as_mut().and_then(|r| r.member.poll_transmit()) {
            return Some((Channel::Ring, t));
        }
        self.siblings.as_mut().and_then(Siblings::poll_transmit).map(|t| (Channel::Sync, t))
    }

    /// A line for the log (view changes, resyncs, ...).
    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.0.pop_front()
    }

    /// Takes the workers' events: locks go to the other workers, and
    /// sessions and locks to the siblings. Returns how many were taken.
    pub fn poll_workers(&mut self, now: Now) -> usize {
        let mut taken = 0;
        // A sibling far behind: leave the events in the workers' queues (a
        // full queue is counted and republished later) rather than overrun
        // its stream (which would cost it a full resync).
        let congested = self.siblings.as_ref().is_some_and(Siblings::congested);
        for w in 0..self.workers.len() {
            self.workers[w].flush();
            // A reload's old routing, freed here rather than on the worker.
            while self.workers[w].switched_back().is_some() {
                self.switching = self.switching.saturating_sub(1);
            }
            if self.switching == 0 && self.deferred.is_some() {
                self.apply_deferred();
            }
            for _ in 0..if congested { 0 } else { EVENTS_PER_POLL } {
                let Some(ev) = self.workers[w].next_event() else { break };
                taken += 1;
                if self.take_sampled(ev) {
                    continue;
                }
                if let Event::Lock(rec) = ev {
                    for (i, p) in self.workers.iter_mut().enumerate() {
                        if i != w {
                            p.send(Command::Lock(rec));
                        }
                    }
                }
                if let Some(s) = &mut self.siblings {
                    let mut cx = Self::ctx(&self.shared, &mut self.workers, &mut self.notes, now);
                    s.on_event(ev, &mut cx);
                }
            }
        }
        self.counters.events += taken as u64;
        if let Some(s) = &mut self.siblings {
            let mut cx = Self::ctx(&self.shared, &mut self.workers, &mut self.notes, now);
            s.after_events(&mut cx);
        }
        taken
    }

    /// Handles the ring member's events: a new view redraws the siblings.
    fn ring_events(&mut self, now: Now) {
        let Some(r) = &mut self.ring else { return };
        let mut view_changed = false;
        let mut effects = Vec::new();
        while let Some(e) = r.member.poll_event() {
            match e {
                RingEvent::ViewChanged { master, version, members } => {
                    view_changed = true;
                    let list: Vec<String> = members.iter().map(ToString::to_string).collect();
                    self.notes.push_back(format!(
                        "ring: view {version} of master {master}: {} member(s) {}",
                        members.len(),
                        list.join(",")
                    ));
                }
                RingEvent::Dispatcher(d) => {
                    r.dispatcher = d;
                    let who = match d {
                        Some(d) if d == r.me => "this appliance".to_string(),
                        Some(d) => d.to_string(),
                        None => "none".into(),
                    };
                    self.notes.push_back(format!("ring: dispatcher {who}"));
                }
                RingEvent::IdAccepted(id) => self.notes.push_back(format!("ring: id {id:#x}")),
                RingEvent::Purge { reason } => {
                    r.purges += 1;
                    self.notes.warn(format!("ring: purge ({reason})"));
                }
                RingEvent::App { origin, payload } if agreement::Agreement::is_ours(&payload) => {
                    r.app_messages += 1;
                    if Self::is_appliance(&r.member, origin) {
                        self.agreement.on_message(origin, &payload, now.ms, &mut effects);
                    }
                }
                RingEvent::Reliable { from, payload } if agreement::Agreement::is_ours(&payload) => {
                    r.app_messages += 1;
                    if Self::is_appliance(&r.member, from) {
                        self.agreement.on_message(from, &payload, now.ms, &mut effects);
                    }
                }
                RingEvent::App { origin, payload } => {
                    r.app_messages += 1;
                    if let Some(v) = &mut self.vips {
                        v.on_app(origin, &payload);
                    }
                    if let Some(h) = &mut self.health {
                        h.on_app(origin, &payload);
                        for n in h.apply(&self.shared) {
                            self.notes.push_back(n);
                        }
                    }
                }
                RingEvent::Reliable { from, payload } => {
                    r.app_messages += 1;
                    if let Some(rb) = &mut self.rebuild {
                        if rb.on_answer(from, &payload, now, &self.shared, &mut self.workers) {
                            self.notes.extend(rb.last_note());
                        }
                    }
                }
            }
        }
        if view_changed {
            if let Some(v) = &mut self.vips {
                v.view_changed();
            }
        }
        // A non-master's tentative view (version 0, from the Hellos it heard)
        // may lack a member for a moment: siblings follow the master's views.
        if view_changed && r.member.view_version() != 0 && !r.member.is_forming() {
            if let Some(h) = &mut self.health {
                let members: Vec<SocketAddrV4> = r.member.member_entries().iter().map(|m| m.addr).collect();
                h.on_view(&members);
                for n in h.apply(&self.shared) {
                    self.notes.push_back(n);
                }
            }
            let sibs: Vec<(SocketAddrV4, u64)> = r
                .member
                .member_entries()
                .iter()
                .filter(|m| m.caps & CAP_APPLIANCE != 0 && m.addr != r.me)
                .map(|m| (sync_address(m.addr), m.incarnation))
                .collect();
            if let Some(s) = &mut self.siblings {
                let mut cx = Self::ctx(&self.shared, &mut self.workers, &mut self.notes, now);
                s.set_view(sibs.clone(), &mut cx);
            }
            let others: Vec<SocketAddrV4> = r
                .member
                .member_entries()
                .iter()
                .filter(|m| m.caps & CAP_APPLIANCE != 0 && m.addr != r.me)
                .map(|m| m.addr)
                .collect();
            self.agreement.on_view(&others, now.ms, &mut effects);
        }
        self.run_effects(effects, now);
    }

    /// Whether `addr` is an appliance of the ring's view (configuration
    /// messages are heard from appliances only, not servers' agents).
    fn is_appliance(member: &Member, addr: SocketAddrV4) -> bool {
        member.member_entries().iter().any(|m| m.addr == addr && m.caps & CAP_APPLIANCE != 0)
    }

    /// Does what the configuration agreement asks.
    fn run_effects(&mut self, effects: Vec<agreement::Effect>, now: Now) {
        use agreement::Effect;
        for e in effects {
            match e {
                Effect::Broadcast(payload) => {
                    if let Some(r) = &mut self.ring {
                        let _ = r.member.send_app(now.ms, Dest::Broadcast, payload);
                    }
                }
                Effect::To(to, payload) => {
                    if let Some(r) = &mut self.ring {
                        if let Err(e) = r.member.send_reliable(now.ms, to, &payload) {
                            self.notes.warn(format!("config: cannot send to {to}: {e}"));
                        }
                    }
                }
                Effect::Apply(cfg, line) => {
                    self.notes.push_back(line);
                    self.deferred = Some(*cfg);
                    self.apply_deferred();
                }
                Effect::Note(n) => self.notes.push_back(n),
                Effect::Warn(n) => self.notes.warn(n),
            }
        }
    }

    /// Applies an agreed configuration once the workers took the last one.
    fn apply_deferred(&mut self) {
        if self.switching > 0 {
            return;
        }
        if let Some(cfg) = self.deferred.take() {
            // Cannot fail: no switch is under way.
            let _ = self.reload(&cfg);
            self.config_epoch += 1;
        }
    }

    /// Reads the configuration file again and applies it (`ringlb reload`,
    /// SIGHUP): here at once when standalone, else proposed to every
    /// appliance of the ring (`agreement`). Err: refused, nothing changed.
    pub fn reload_file(&mut self, now: Now) -> Result<agreement::Started, String> {
        let mut effects = Vec::new();
        let started = self.agreement.reload(now.ms, &mut effects);
        self.run_effects(effects, now);
        if let Ok(agreement::Started::Applied(cfg, line)) = &started {
            self.notes.push_back(line.clone());
            self.deferred = Some((**cfg).clone());
            self.apply_deferred();
        }
        started
    }

    /// The operator's reload `id`, once the cluster decided it.
    pub fn reload_outcome(&mut self, id: u64) -> Option<Result<String, String>> {
        self.agreement.outcome(id)
    }

    /// The file `ringlb reload` and SIGHUP read.
    pub fn reload_from(&mut self, path: std::path::PathBuf) {
        let running = self.agreement.running().clone();
        let me = self.ring.as_ref().map(|r| r.me);
        self.agreement = agreement::Agreement::new(me, Some(path), running, self.shared.server_capacity);
    }

    /// The configuration running now.
    pub fn running_config(&self) -> &Config {
        self.agreement.running()
    }

    /// Grows by one with each configuration change applied.
    pub fn config_epoch(&self) -> u64 {
        self.config_epoch
    }

    /// This member's and the others' configuration generations and versions.
    pub fn agreement_status(&self) -> agreement::AgreementStatus {
        self.agreement.status()
    }

    /// With `cluster.vips: owned`: says this appliance is ready when due,
    /// and recomputes which VIPs it answers for.
    fn update_vips(&mut self, now: Now) {
        if self.vips.is_none() {
            return;
        }
        self.last_vip_check_ms = now.ms;
        let ready_for_traffic = self.ready_for_traffic();
        let (Some(r), Some(v)) = (&mut self.ring, &mut self.vips) else { return };
        let me_ready = v.may_own(now.ms, ready_for_traffic);
        let formed = !r.member.is_forming() && r.member.view_version() != 0;
        // The ring carries broadcasts only in a formed ring of two or more;
        // until then the message stays due. (Repeated every READY_EVERY_MS.)
        if v.ready_message_due(now.ms, me_ready) && formed && r.member.member_entries().len() > 1 {
            let _ = r.member.send_app(now.ms, Dest::Broadcast, v.ready_message(r.incarnation));
            v.said_ready(now.ms);
        }
        let view = formed.then(|| r.member.member_entries());
        for note in v.update(now.ms, view, r.dispatcher, me_ready, &self.shared, &mut self.workers) {
            self.notes.push_back(note);
        }
        let (taken, let_go) = v.take_changes();
        let Some(rb) = &mut self.rebuild else { return };
        for vip in let_go {
            rb.released(vip, &self.shared);
        }
        if let Some(n) = rb.poll(now, &self.shared) {
            self.notes.push_back(n);
            self.notes.extend(rb.last_note());
        }
        if !taken.is_empty() {
            // Ask the agents in the ring for their servers' connections.
            let live: Vec<SocketAddrV4> = r.member.member_entries().iter().map(|m| m.addr).collect();
            for (agent, question) in rb.start(&taken, &live, now, &self.shared) {
                if let Err(e) = r.member.send_app(now.ms, Dest::To(agent), question) {
                    self.notes.warn(format!("rebuild: cannot ask {agent}: {e}"));
                }
            }
        }
    }

    /// Each server's health and weight now (None without agents).
    pub fn health_status(&self) -> Option<Vec<health::ServerHealth>> {
        self.health.as_ref().map(health::Health::status)
    }

    /// Asks every worker for up to `limit` of its sessions (of the
    /// service at `vip:port` if given); `sampled` gives them once all
    /// answered. A sample asked before the last one ended replaces it.
    pub fn start_sample(&mut self, service: Option<(u32, u16)>, limit: usize) -> u32 {
        let id = self.sample.as_ref().map_or(1, |s| s.id.wrapping_add(1));
        let per_worker = u32::try_from(limit).unwrap_or(u32::MAX);
        for w in &mut self.workers {
            w.send(Command::Sample { id, service, limit: per_worker });
        }
        self.sample = Some(SampleQuery { id, limit, sessions: Vec::new(), workers_done: 0 });
        id
    }

    /// Sample `id`'s sessions (with whether each is a sibling's replica),
    /// once every worker has sent its part.
    pub fn sampled(&mut self, id: u32) -> Option<Vec<(SessionRecord, bool)>> {
        let done = self.sample.as_ref().is_some_and(|s| s.id == id && s.workers_done == self.workers.len());
        done.then(|| self.sample.take().map(|s| s.sessions).unwrap_or_default())
    }

    /// Takes a sample's events; false for every other event.
    fn take_sampled(&mut self, ev: Event) -> bool {
        let (id, rec) = match ev {
            Event::Sampled { id, rec, replica } => (id, Some((rec, replica))),
            Event::SampleDone { id } => (id, None),
            _ => return false,
        };
        if let Some(s) = self.sample.as_mut().filter(|s| s.id == id) {
            match rec {
                Some(r) if s.sessions.len() < s.limit => s.sessions.push(r),
                Some(_) => {}
                None => s.workers_done += 1,
            }
        }
        true
    }

    /// Applies a reloaded configuration (`config::reload::prepare` made it):
    /// the weights of new and changed servers first, then the new routing,
    /// which each worker takes between two bursts (`Command::Switch`).
    /// Err while the workers are still taking up the last reload.
    pub fn reload(&mut self, cfg: &Config) -> Result<(), String> {
        if self.switching > 0 {
            return Err(format!("{} worker(s) have not taken up the last reload yet; try again", self.switching));
        }
        let shared = Arc::clone(&self.shared);
        let before = shared.routing();
        match health::Health::reload(self.health.take(), cfg) {
            Some(mut h) => {
                self.notes.extend(h.apply(&shared));
                self.health = Some(h);
            }
            None => {
                for (id, s) in cfg.servers.iter().enumerate().filter(|(_, s)| !s.removed) {
                    shared.set_server_weight(id as u16, s.weight);
                }
            }
        }
        // A removed server takes no new flow. Under `on_server_down: keep`
        // it is drained: its sessions, handshakes under way included, go on
        // with it. Under `reset` it is down: they end at their next packet.
        // Back in a later reload, it is undrained.
        for (id, s) in cfg.servers.iter().enumerate() {
            let id = id as u16;
            let reset =
                cfg.services.get(usize::from(s.service)).is_some_and(|v| v.on_server_down == OnServerDown::Reset);
            match (s.removed, reset) {
                (true, true) => shared.set_server_weight(id, 0),
                (true, false) => shared.set_drained(id, true),
                (false, _) if before.removed(id) => shared.set_drained(id, false),
                (false, _) => {}
            }
        }
        let routing = Arc::new(Routing::build(cfg, &shared.port_macs(), shared.vip_slots(), Some(&shared.routing())));
        shared.set_routing(Arc::clone(&routing));
        for w in &mut self.workers {
            let next = Box::new(RoutingSwitch { routing: Arc::clone(&routing), schedulers: routing.schedulers() });
            // Room is certain: every worker handed the last one back.
            if w.switch(next).is_ok() {
                self.switching += 1;
            }
        }
        self.config_version = cfg.version();
        Ok(())
    }

    /// A clean stop: BIRD withdraws every VIP (before the workers stop).
    /// True if routes were withdrawn: BIRD's UPDATE still has to leave
    /// through the kernel interface, so the caller keeps the workers a
    /// moment longer.
    pub fn withdraw_announcements(&mut self) -> bool {
        let withdrawn = self.bird.as_mut().is_some_and(|b| b.withdraw_all(&mut self.notes));
        while let Some(n) = self.poll_note() {
            log::log!(n.level, "{}", n.text);
        }
        withdrawn
    }

    /// Workers still to take up the last reload.
    pub fn switching(&self) -> usize {
        self.switching
    }

    /// The state the workers read (the operator's drain flags are set here).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Whether a service answers SYNs with cookies (the status shows their counters).
    pub fn has_syn_proxy(&self) -> bool {
        self.shared.has_syn_proxy()
    }

    /// Sessions rebuilt from the servers' lists (None without agents).
    pub fn rebuild_status(&self) -> Option<rebuild::RebuildStatus> {
        self.rebuild.as_ref().map(rebuild::Rebuild::status)
    }

    /// The siblings sync currently reaches (by their ring addresses).
    pub fn siblings(&self) -> Vec<SocketAddrV4> {
        self.siblings.as_ref().map_or_else(Vec::new, |s| s.siblings().into_iter().map(ring_address).collect())
    }

    /// True when no resync this appliance asked for is outstanding.
    pub fn in_sync(&self) -> bool {
        self.siblings.as_ref().is_none_or(Siblings::in_sync)
    }

    /// Ready to take traffic: standalone; or in a ring whose master issued
    /// our view, holding every sibling's sessions (a joining or restarted
    /// appliance must not meet its siblings' flows with an empty table).
    pub fn ready_for_traffic(&self) -> bool {
        let Some(r) = &self.ring else { return true };
        if r.member.is_forming() || r.member.view_version() == 0 {
            return false;
        }
        self.siblings.as_ref().is_none_or(Siblings::ready)
    }

    /// Commands waiting in the control thread for full worker queues.
    pub fn backlog(&self) -> usize {
        self.workers.iter().map(WorkerPort::backlog).sum()
    }

    pub fn cluster_status(&self) -> Option<status::ClusterStatus> {
        status::cluster(self.ring.as_ref()?, self.siblings.as_ref(), self.vips.as_ref())
    }
}

/// One event for the log, at its level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub level: log::Level,
    pub text: String,
}

impl Note {
    /// Something an operator should look at (a server down, a purge, a resync).
    pub fn warn(text: String) -> Note {
        Note { level: log::Level::Warn, text }
    }
}

impl From<String> for Note {
    fn from(text: String) -> Note {
        Note { level: log::Level::Info, text }
    }
}

/// The notes waiting for the log, oldest first.
#[derive(Debug, Default)]
pub struct Notes(VecDeque<Note>);

impl Notes {
    /// An event (a `String` is one at level info).
    pub fn push_back(&mut self, note: impl Into<Note>) {
        self.0.push_back(note.into());
    }

    /// An event an operator should look at.
    pub fn warn(&mut self, text: String) {
        self.0.push_back(Note::warn(text));
    }

    pub fn extend<N: Into<Note>>(&mut self, notes: impl IntoIterator<Item = N>) {
        self.0.extend(notes.into_iter().map(Into::into));
    }
}
