//! The worker's side of the control channel: events out (sessions it made
//! or changed, sessions that ended, locks, dumps) and commands in (siblings'
//! sessions and locks to install, dumps to make). Nothing here blocks or
//! allocates. A full event queue loses the event, counts it, and schedules a
//! republish of every local session and lock (a bulk resync) once it drains.

use super::sample::Sample;
use super::{record, Worker};
use crate::control::channel::{Command, Event, EventTx, SessionRecord, QUEUE_LEN};
use crate::locks::{LockRecord, Offer};
use crate::session::{Entry, FlowKey, InstallMode, Installed, TableFull};
use crate::stats::WorkerStats;

/// Slots a dump visits per housekeeping call (~4 M slots a second).
const DUMP_SLOTS: usize = 4096;

pub(super) struct Outbox {
    tx: Option<EventTx>,
    /// Report sessions: sibling sync is on. Locks are always reported (the
    /// other workers need them).
    sessions: bool,
    /// Events were lost: republish local sessions when the queue has room.
    republish_due: bool,
}

impl Outbox {
    pub fn new(sessions: bool) -> Outbox {
        Outbox { tx: None, sessions, republish_due: false }
    }

    pub fn connect(&mut self, tx: EventTx) {
        self.tx = Some(tx);
    }

    /// Pushes an event; its tag (the count of events pushed) if it went out.
    #[inline]
    pub(super) fn push(&mut self, e: Event, stats: &WorkerStats) -> Option<u64> {
        let tx = self.tx.as_mut()?;
        if tx.push(e) {
            Some(tx.pushed())
        } else {
            stats.ctl_overflow.inc();
            self.republish_due = true;
            None
        }
    }

    /// A local session was created, changed state, or is due for a refresh.
    #[inline]
    pub fn session(&mut self, rec: SessionRecord, now_ms: u32, stats: &WorkerStats) -> Option<u64> {
        if !self.sessions {
            return None;
        }
        self.push(Event::Session { rec, at_ms: now_ms }, stats)
    }

    /// A local session (the connection born at `born`) left the table.
    #[inline]
    pub fn session_gone(&mut self, key: &FlowKey, born: u16, stats: &WorkerStats) {
        if self.sessions {
            self.push(Event::Removed { key: *key, born }, stats);
        }
    }

    pub fn lock(&mut self, rec: LockRecord, stats: &WorkerStats) {
        self.push(Event::Lock(rec), stats);
    }

    pub(super) fn room(&self) -> usize {
        self.tx.as_ref().map_or(0, EventTx::room)
    }
}

/// What a dump is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Everything the tables hold, for a sibling's resync.
    Sibling { id: u32, locks: bool },
    /// Our own sessions and locks as live updates, after lost events.
    Republish,
}

/// A dump in progress: a cursor over the session table, then the lock table.
pub(super) struct Dump {
    purpose: Purpose,
    cursor: usize,
    in_locks: bool,
    /// A sibling's dump that arrived during a republish: it runs next.
    queued: Option<Purpose>,
}

impl Worker<'_> {
    /// Starts loading the session slot a command will touch (the caller
    /// prefetches a burst of commands, then applies them).
    #[inline]
    pub fn prefetch_for(&self, cmd: &Command) {
        let key = match cmd {
            Command::Install { rec, .. } => &rec.key,
            Command::Remove { key, .. } => key,
            _ => return,
        };
        self.table.prefetch(self.table.hash(key));
    }

    /// Applies one command from the control thread.
    pub fn apply(&mut self, cmd: Command, now_ms: u32) {
        let stats = self.stats;
        match cmd {
            Command::Install { rec, mode } => self.install(rec, mode, now_ms),
            Command::Remove { key, born } => {
                let hash = self.table.hash(&key);
                // Only the replica of that connection: not one carried here (a
                // sibling's end of it is not ours), nor a newer one of the tuple.
                if let Some(e) = self.table.remove_if(&key, hash, |e| e.is_replica() && e.born == born) {
                    stats.sync_removed.inc();
                    stats.session_ended(e.server);
                }
            }
            Command::Lock(rec) => {
                if let Some(locks) = &mut self.locks {
                    if locks.offer(rec, now_ms) == Offer::Full {
                        stats.lock_table_full.inc();
                    }
                }
            }
            Command::Dump { id, locks } => {
                let purpose = Purpose::Sibling { id, locks };
                match &mut self.dump {
                    Some(d) => d.queued = Some(purpose),
                    None => self.dump = Some(Dump { purpose, cursor: 0, in_locks: false, queued: None }),
                }
            }
            // The lcore loop holds deferred packets; nothing to do here.
            // The worker loop handles these (they need its queues).
            Command::Release { .. } | Command::Switch => {}
            Command::Announce { vip } => self.announcer.start(vip, now_ms),
            Command::Withdraw { vip } => self.announcer.stop(vip),
            Command::Sample { id, service, limit } => self.sample = Some(Sample::new(id, service, limit)),
        }
    }

    fn install(&mut self, rec: SessionRecord, mode: InstallMode, now_ms: u32) {
        let stats = self.stats;
        if self.routing.server_addr(rec.server).is_none() || usize::from(rec.client_port) >= self.shared.ports.len() {
            stats.sync_refused.inc();
            return;
        }
        let entry = Entry::replica(now_ms, rec.server, rec.born, rec.state, rec.client_port, rec.client_mac);
        let hash = self.table.hash(&rec.key);
        match self.table.install(&rec.key, hash, entry, mode) {
            Ok(Installed::New) => {
                stats.sync_installed.inc();
                stats.session_started(rec.server);
            }
            Ok(Installed::Updated { was }) => {
                stats.sync_updated.inc();
                stats.session_moved(was, rec.server);
            }
            Ok(Installed::Kept) => stats.sync_kept.inc(),
            Ok(Installed::Stale) => stats.sync_stale.inc(),
            Err(TableFull) => stats.sync_refused.inc(),
        }
    }

    /// Carries a dump on by a slice, while the event queue has room; starts
    /// a republish when events were lost and the queue has drained.
    pub(super) fn dump_step(&mut self, now_ms: u32) {
        if self.dump.is_none() && self.outbox.republish_due && self.outbox.room() > QUEUE_LEN * 3 / 4 {
            self.outbox.republish_due = false;
            self.dump = Some(Dump { purpose: Purpose::Republish, cursor: 0, in_locks: false, queued: None });
        }
        let Some(mut d) = self.dump.take() else { return };
        let stats = self.stats;
        let rank = self.shared.rank_base | self.id as u64;
        let mut visited = 0;
        // Leave room for live events: they matter more than a dump's pace.
        while visited < DUMP_SLOTS && self.outbox.room() > QUEUE_LEN / 4 {
            if !d.in_locks {
                if d.cursor >= self.table.slots() {
                    d.in_locks = true;
                    d.cursor = 0;
                    continue;
                }
                if let Some((key, e)) = self.table.entry_at(d.cursor) {
                    let rec = record(&key, e);
                    let sent = match d.purpose {
                        Purpose::Sibling { id, .. } => self.outbox.push(Event::Dumped { id, rec }, stats).is_some(),
                        Purpose::Republish if e.is_replica() => true,
                        Purpose::Republish => self.outbox.session(rec, now_ms, stats).is_some(),
                    };
                    if !sent {
                        break; // the queue filled up: retry this slot later
                    }
                }
            } else {
                let slots = self.locks.as_ref().map_or(0, |l| l.slots());
                let want_locks = matches!(d.purpose, Purpose::Sibling { locks: true, .. } | Purpose::Republish);
                if !want_locks || d.cursor >= slots {
                    if let Purpose::Sibling { id, .. } = d.purpose {
                        if self.outbox.push(Event::DumpDone { id }, stats).is_none() {
                            break;
                        }
                    }
                    self.dump = d.queued.map(|purpose| Dump { purpose, cursor: 0, in_locks: false, queued: None });
                    return;
                }
                if let Some(lock) = self.locks.as_ref().and_then(|l| l.entry_at(d.cursor, now_ms)) {
                    let sent = match d.purpose {
                        Purpose::Sibling { id, .. } => {
                            self.outbox.push(Event::DumpedLock { id, rec: lock }, stats).is_some()
                        }
                        Purpose::Republish if lock.rank != rank => true,
                        Purpose::Republish => self.outbox.push(Event::Lock(lock), stats).is_some(),
                    };
                    if !sent {
                        break;
                    }
                }
            }
            d.cursor += 1;
            visited += 1;
        }
        self.dump = Some(d);
    }
}
