//! Sibling sync on the control thread (`ring/SYNC.md`): turns worker
//! events into records for the siblings and siblings' records into worker
//! commands; pulls a resync from every sibling that joins our view (and from
//! one whose stream to us broke); serves the resyncs siblings ask of us by
//! dumping the workers' tables; and releases first packets the workers hold
//! once every sibling has acknowledged their sessions.

use super::channel::{Command, Event, WorkerPort};
use super::lag::Lag;
use super::records::{self, Record, Refused};
use super::ring_address;
use super::Now;
use crate::dataplane::Shared;
use crate::session::InstallMode;
use ringlb_ring::member::Transmit;
use ringlb_ring::sync::{wire, Sync, SyncConfig, SyncCounters, SyncEvent, MAX_UNACKED};
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddrV4;

/// What the control thread is busy with, handed to each call.
pub(super) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub workers: &'a mut [WorkerPort],
    pub notes: &'a mut super::Notes,
    pub now: Now,
}

/// Our resync from the siblings: who has not finished, what came.
#[derive(Default)]
struct Pull {
    started_ms: u64,
    waiting: BTreeSet<SocketAddrV4>,
    from: Vec<SocketAddrV4>,
    sessions: u64,
    locks: u64,
}

/// The last resync this appliance pulled.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PullReport {
    pub from: Vec<String>,
    pub sessions: u64,
    pub locks: u64,
    pub ms: u64,
}

/// A resync we are serving: the workers are dumping their tables for `to`.
struct Serving {
    id: u32,
    to: SocketAddrV4,
    workers_done: usize,
    sessions: u32,
    locks: u32,
    started_ms: u64,
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
pub struct SiblingCounters {
    pub records_out: u64,
    pub records_in: u64,
    pub refused_malformed: u64,
    pub refused_unknown: u64,
    /// Commands dropped because a worker's backlog was full (then resynced).
    pub commands_dropped: u64,
    pub resyncs_served: u64,
    pub resyncs_pulled: u64,
}

pub(super) struct Siblings {
    sync: Sync,
    current: Vec<(SocketAddrV4, u64)>,
    pull: Pull,
    last_pull: Option<PullReport>,
    serving: Option<Serving>,
    serve_queue: VecDeque<SocketAddrV4>,
    next_dump: u32,
    /// Defer marks: (mark, events taken from each worker when it was made).
    marks: VecDeque<(u64, Vec<u64>)>,
    marked: Vec<u64>,
    released: Vec<u64>,
    /// A backlog overflowed: pull a resync once the workers caught up.
    resync_after_backlog: bool,
    /// A master's view has been seen (siblings known, even if none).
    viewed: bool,
    lag: Lag,
    pub counters: SiblingCounters,
}

impl Siblings {
    pub fn new(cfg: SyncConfig, workers: usize) -> Siblings {
        Siblings {
            sync: Sync::new(cfg),
            current: Vec::new(),
            pull: Pull::default(),
            last_pull: None,
            serving: None,
            serve_queue: VecDeque::new(),
            next_dump: 0,
            marks: VecDeque::new(),
            marked: vec![0; workers],
            released: vec![0; workers],
            resync_after_backlog: false,
            viewed: false,
            lag: Lag::default(),
            counters: SiblingCounters::default(),
        }
    }

    /// The siblings of the ring's view (appliances other than us). Streams
    /// follow the view; a sibling new to it is asked for a resync.
    pub fn set_view(&mut self, sibs: Vec<(SocketAddrV4, u64)>, cx: &mut Ctx) {
        self.viewed = true;
        if sibs == self.current {
            return;
        }
        let joined: Vec<SocketAddrV4> = sibs.iter().filter(|s| !self.current.contains(s)).map(|s| s.0).collect();
        let gone: Vec<SocketAddrV4> =
            self.current.iter().filter(|(a, _)| !sibs.iter().any(|(b, _)| b == a)).map(|s| s.0).collect();
        for g in gone {
            let g_ring = ring_address(g);
            cx.notes.warn(format!("sync: sibling {g_ring} left the view: forgotten (its sessions stay here)"));
            if self.pull.waiting.remove(&g) {
                self.finish_pull_if_done(cx);
            }
        }
        self.sync.set_siblings(&sibs);
        self.current = sibs;
        cx.shared.set_defer_active(!self.current.is_empty());
        if self.current.is_empty() {
            // Nobody to wait for: let every held first packet go.
            self.release_all(cx);
        }
        for a in joined {
            cx.notes.push_back(format!("sync: sibling {} joined the view", ring_address(a)));
            self.request_resync(a, cx);
        }
        self.settle(cx);
    }

    pub fn siblings(&self) -> Vec<SocketAddrV4> {
        self.current.iter().map(|s| s.0).collect()
    }

    fn request_resync(&mut self, from: SocketAddrV4, cx: &mut Ctx) {
        let Some(rec) = records::encode(cx.shared, &Record::ResyncRequest) else { return };
        if !matches!(self.sync.send_to(from, rec.as_bytes(), 0), Ok(true)) {
            return;
        }
        if self.pull.waiting.is_empty() {
            self.pull = Pull { started_ms: cx.now.ms, ..Pull::default() };
        }
        if self.pull.waiting.insert(from) {
            self.pull.from.push(from);
        }
    }

    fn finish_pull_if_done(&mut self, cx: &mut Ctx) {
        if !self.pull.waiting.is_empty() || self.pull.from.is_empty() {
            return;
        }
        let p = std::mem::take(&mut self.pull);
        let report = PullReport {
            from: p.from.iter().map(|a| ring_address(*a).to_string()).collect(),
            sessions: p.sessions,
            locks: p.locks,
            ms: cx.now.ms - p.started_ms,
        };
        cx.notes.push_back(format!(
            "sync: resync complete: pulled {} entries ({} sessions, {} locks) from {} sibling(s) in {} ms",
            report.sessions + report.locks,
            report.sessions,
            report.locks,
            report.from.len(),
            report.ms
        ));
        self.counters.resyncs_pulled += 1;
        self.last_pull = Some(report);
    }

    /// True once no resync we asked for is outstanding.
    pub fn in_sync(&self) -> bool {
        self.pull.waiting.is_empty()
    }

    /// The siblings are known and every resync asked of them arrived.
    pub fn ready(&self) -> bool {
        self.viewed && self.in_sync()
    }

    pub fn last_pull(&self) -> Option<&PullReport> {
        self.last_pull.as_ref()
    }

    fn out(&mut self, to: Option<SocketAddrV4>, r: &Record, stamp_us: u64, cx: &Ctx) {
        let Some(rec) = records::encode(cx.shared, r) else { return };
        let sent = match to {
            None => self.sync.broadcast(rec.as_bytes(), stamp_us).is_ok(),
            Some(to) => matches!(self.sync.send_to(to, rec.as_bytes(), stamp_us), Ok(true)),
        };
        if sent {
            self.counters.records_out += 1;
        }
    }

    /// A worker event for the siblings.
    pub fn on_event(&mut self, ev: Event, cx: &mut Ctx) {
        match ev {
            Event::Session { rec, at_ms } => {
                let stamp = (cx.shared.start_wall_ms() + u64::from(at_ms)) * 1000;
                self.out(None, &Record::Session { rec, mode: InstallMode::Upsert }, stamp, cx);
            }
            Event::Removed { key, born } => self.out(None, &Record::Removed { key, born }, 0, cx),
            Event::Lock(rec) => self.out(None, &Record::Lock(rec), 0, cx),
            Event::Dumped { id, rec } => {
                if let Some(s) = self.serving.as_mut().filter(|s| s.id == id) {
                    s.sessions += 1;
                    let to = s.to;
                    self.out(Some(to), &Record::Session { rec, mode: InstallMode::IfAbsent }, 0, cx);
                }
            }
            Event::DumpedLock { id, rec } => {
                if let Some(s) = self.serving.as_mut().filter(|s| s.id == id) {
                    s.locks += 1;
                    let to = s.to;
                    self.out(Some(to), &Record::Lock(rec), 0, cx);
                }
            }
            Event::DumpDone { id } => {
                let Some(s) = self.serving.as_mut().filter(|s| s.id == id) else { return };
                s.workers_done += 1;
                if s.workers_done == cx.workers.len() {
                    let s = self.serving.take().expect("checked above");
                    self.out(Some(s.to), &Record::ResyncDone { sessions: s.sessions, locks: s.locks }, 0, cx);
                    self.counters.resyncs_served += 1;
                    cx.notes.push_back(format!(
                        "sync: served a resync to {}: {} sessions, {} locks in {} ms",
                        ring_address(s.to),
                        s.sessions,
                        s.locks,
                        cx.now.ms - s.started_ms
                    ));
                    self.start_dump(cx);
                }
            }
            // The operator's samples are the control thread's own.
            Event::Sampled { .. } | Event::SampleDone { .. } => {}
        }
    }

    /// After the workers' events are taken: send what they produced, and
    /// mark it so held first packets can follow once siblings have it.
    pub fn after_events(&mut self, cx: &mut Ctx) {
        self.sync.flush(cx.now.ms);
        let taken: Vec<u64> = cx.workers.iter().map(WorkerPort::taken).collect();
        if cx.shared.defer_active() && taken != self.marked {
            let m = self.sync.mark(cx.now.ms);
            self.marks.push_back((m, taken.clone()));
            self.marked = taken;
        }
        if self.resync_after_backlog && cx.workers.iter().all(|w| w.backlog() == 0) {
            self.resync_after_backlog = false;
            cx.notes.warn("sync: worker queues caught up after an overflow: pulling a resync".into());
            for (a, _) in self.current.clone() {
                self.request_resync(a, cx);
            }
        }
        self.settle(cx);
    }

    fn release_all(&mut self, cx: &mut Ctx) {
        self.marks.clear();
        for (w, port) in cx.workers.iter_mut().enumerate() {
            self.released[w] = port.taken();
            self.marked[w] = port.taken();
            port.send(Command::Release { upto: port.taken() });
        }
    }

    /// Sends a worker command; a full backlog means lost sibling state.
    fn command(&mut self, w: usize, c: Command, cx: &mut Ctx) {
        if !cx.workers[w].send(c) {
            self.counters.commands_dropped += 1;
            self.resync_after_backlog = true;
        }
    }

    fn on_record(&mut self, from: SocketAddrV4, bytes: &[u8], cx: &mut Ctx) {
        self.counters.records_in += 1;
        let r = match records::decode(cx.shared, bytes) {
            Ok(r) => r,
            Err(Refused::Malformed) => {
                self.counters.refused_malformed += 1;
                return;
            }
            Err(Refused::Unknown) => {
                self.counters.refused_unknown += 1;
                return;
            }
        };
        match r {
            Record::Session { rec, mode } => {
                if mode == InstallMode::IfAbsent && self.pull.waiting.contains(&from) {
                    self.pull.sessions += 1;
                }
                let w = cx.shared.owner(rec.key.client_ip, rec.key.client_port);
                self.command(w, Command::Install { rec, mode }, cx);
            }
            Record::Removed { key, born } => {
                let w = cx.shared.owner(key.client_ip, key.client_port);
                self.command(w, Command::Remove { key, born }, cx);
            }
            Record::Lock(rec) => {
                if self.pull.waiting.contains(&from) {
                    self.pull.locks += 1;
                }
                for w in 0..cx.workers.len() {
                    self.command(w, Command::Lock(rec), cx);
                }
            }
            Record::ResyncRequest => {
                if !self.serve_queue.contains(&from) && self.serving.as_ref().is_none_or(|s| s.to != from) {
                    self.serve_queue.push_back(from);
                }
                self.start_dump(cx);
            }
            Record::ResyncDone { .. } => {
                if self.pull.waiting.remove(&from) {
                    self.finish_pull_if_done(cx);
                }
            }
        }
    }

    /// Starts the next queued dump, if none is running.
    fn start_dump(&mut self, cx: &mut Ctx) {
        if self.serving.is_some() {
            return;
        }
        while let Some(to) = self.serve_queue.pop_front() {
            let Some(inc) = self.sync.incarnation_of(&to) else { continue };
            // It may not be in our view yet: stream to it from now on, so
            // nothing made after the dump passes a slot is missed.
            self.sync.open_stream(to, inc);
            self.next_dump += 1;
            let id = self.next_dump;
            for w in 0..cx.workers.len() {
                self.command(w, Command::Dump { id, locks: w == 0 }, cx);
            }
            self.serving = Some(Serving { id, to, workers_done: 0, sessions: 0, locks: 0, started_ms: cx.now.ms });
            return;
        }
    }

    /// Sync events: records in, broken streams, acknowledged marks.
    fn settle(&mut self, cx: &mut Ctx) {
        while let Some(e) = self.sync.poll_event() {
            match e {
                SyncEvent::Records { from, stamp_us, framed } => {
                    let mut n = 0;
                    for rec in wire::records(&framed) {
                        self.on_record(from, rec, cx);
                        n += 1;
                    }
                    if stamp_us != 0 {
                        self.lag.record(cx.now.wall_us.saturating_sub(stamp_us), n);
                    }
                }
                SyncEvent::StreamReset { from } => {
                    let who = ring_address(from);
                    cx.notes.warn(format!("sync: {who}'s stream to us restarted: pulling a resync from it"));
                    self.request_resync(from, cx);
                }
                SyncEvent::MarkAcked(m) => {
                    let mut upto = None;
                    while self.marks.front().is_some_and(|(id, _)| *id <= m) {
                        upto = self.marks.pop_front().map(|(_, t)| t);
                    }
                    if let Some(taken) = upto {
                        for (w, t) in taken.into_iter().enumerate() {
                            if t > self.released[w] {
                                self.released[w] = t;
                                self.command(w, Command::Release { upto: t }, cx);
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn handle_datagram(&mut self, from: SocketAddrV4, bytes: &[u8], cx: &mut Ctx) {
        self.sync.handle_datagram(cx.now.ms, from, bytes);
        self.settle(cx);
    }

    pub fn handle_timeout(&mut self, cx: &mut Ctx) {
        self.sync.handle_timeout(cx.now.ms);
        self.settle(cx);
    }

    pub fn poll_timeout(&self) -> u64 {
        self.sync.poll_timeout()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.sync.poll_transmit()
    }

    pub fn transport(&self) -> SyncCounters {
        self.sync.counters
    }

    /// (records measured, p50, p99) of creation → arrival lag, in microseconds.
    pub fn lag(&self) -> (u64, Option<u64>, Option<u64>) {
        (self.lag.count(), self.lag.quantile(0.5), self.lag.quantile(0.99))
    }

    /// Unacknowledged batches to each sibling (by ring address).
    pub fn backlogs(&self) -> Vec<(SocketAddrV4, usize)> {
        self.current.iter().map(|(a, _)| (ring_address(*a), self.sync.backlog(a))).collect()
    }

    /// Some sibling is far behind: its unacknowledged backlog is past a
    /// quarter of what a stream may hold.
    pub fn congested(&self) -> bool {
        self.current.iter().any(|(a, _)| self.sync.backlog(a) > MAX_UNACKED / 4)
    }
}
