//! The queues between the control thread and each worker: commands one way,
//! events the other. Each is a bounded single-producer/single-consumer ring
//! buffer (rtrb), preallocated and lock-free; neither side ever waits.
//!
//! A worker whose event queue is full counts `ctl_overflow` and, once the
//! queue drains, republishes its local sessions (a bulk resync of what the
//! lost events carried). The control thread never loses a command: what
//! does not fit waits in its own backlog, which is bounded; past the bound
//! the control thread drops and asks its siblings for a resync.

use crate::locks::LockRecord;
use crate::packet::Mac;
use crate::session::{FlowKey, InstallMode, State};
use std::collections::VecDeque;

/// Commands (and events) each queue holds.
pub const QUEUE_LEN: usize = 1 << 16;
/// Commands the control thread keeps for a worker whose queue is full.
pub const MAX_BACKLOG: usize = 1 << 20;

/// A session as it travels between workers, the control thread and siblings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub key: FlowKey,
    /// Global server id.
    pub server: u16,
    pub state: State,
    /// The port the client's packets arrive on.
    pub client_port: u8,
    /// The client-side previous hop (NAT replies go to it).
    pub client_mac: Mac,
    /// When the connection began (`session::born_at`).
    pub born: u16,
}

/// Worker → control thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A local session was created or changed state, or is refreshed
    /// because it carries traffic. `at_ms`: the worker clock then.
    Session {
        rec: SessionRecord,
        at_ms: u32,
    },
    /// A local session (the connection born then) left the table.
    Removed {
        key: FlowKey,
        born: u16,
    },
    /// A client lock this worker made.
    Lock(LockRecord),
    /// One entry of dump `id`: local or replica, everything the table holds.
    Dumped {
        id: u32,
        rec: SessionRecord,
    },
    DumpedLock {
        id: u32,
        rec: LockRecord,
    },
    /// Dump `id` is complete.
    DumpDone {
        id: u32,
    },
    /// One session of sample `id` (`ringlb sessions`); `replica`: a
    /// sibling's session held here.
    Sampled {
        id: u32,
        rec: SessionRecord,
        replica: bool,
    },
    /// Sample `id` is complete.
    SampleDone {
        id: u32,
    },
}

/// Control thread → worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A sibling's session (a replica here).
    Install { rec: SessionRecord, mode: InstallMode },
    /// A sibling's session (the connection born then) ended: remove our
    /// replica of it (not if we use it, nor a newer connection of the tuple).
    Remove { key: FlowKey, born: u16 },
    /// A client lock from another worker or a sibling.
    Lock(LockRecord),
    /// Emit every session (and, if `locks`, every lock) as `Dumped` events.
    Dump { id: u32, locks: bool },
    /// Siblings hold the sessions of every event up to `upto`: forward the
    /// first packets held for them.
    Release { upto: u64 },
    /// This appliance took `vip` (`cluster.vips: owned`): announce it by
    /// gratuitous ARP (worker 0 only).
    Announce { vip: u32 },
    /// `vip` went to another appliance: stop announcing it.
    Withdraw { vip: u32 },
    /// Emit up to `limit` sessions (of service `vip:vport` when given) as
    /// `Sampled` events, then `SampleDone` (`ringlb sessions`).
    Sample { id: u32, service: Option<(u32, u16)>, limit: u32 },
    /// A reload: take the routing waiting in the switch queue (it went in
    /// before this command, so commands after it already see it), and give
    /// the old one back.
    Switch,
}

/// A routing and the scheduler state a worker needs for it, handed over
/// at a reload (and the old pair handed back, so that the control thread,
/// not the worker, frees it).
pub struct RoutingSwitch {
    pub routing: std::sync::Arc<crate::dataplane::Routing>,
    pub schedulers: crate::dataplane::Schedulers,
}

/// Switches in flight per worker: the control thread starts a reload only
/// when the last one came back, so one each way is enough.
const SWITCH_QUEUE_LEN: usize = 2;

/// The worker's sending end: counts what it pushed (deferred first packets
/// are tagged with that count, and released when siblings have it).
pub struct EventTx {
    q: rtrb::Producer<Event>,
    pushed: u64,
}

impl EventTx {
    /// False when the queue is full (the event is lost: the caller counts it).
    #[inline]
    pub fn push(&mut self, e: Event) -> bool {
        if self.q.push(e).is_ok() {
            self.pushed += 1;
            true
        } else {
            false
        }
    }
    /// Events pushed so far.
    #[inline]
    pub fn pushed(&self) -> u64 {
        self.pushed
    }
    /// Free slots.
    pub fn room(&self) -> usize {
        self.q.slots()
    }
}

/// The worker's receiving end.
pub struct CommandRx {
    q: rtrb::Consumer<Command>,
    switch_in: rtrb::Consumer<Box<RoutingSwitch>>,
    switch_out: rtrb::Producer<Box<RoutingSwitch>>,
}

impl CommandRx {
    #[inline]
    pub fn pop(&mut self) -> Option<Command> {
        self.q.pop().ok()
    }

    /// The routing a `Command::Switch` announces.
    pub fn take_switch(&mut self) -> Option<Box<RoutingSwitch>> {
        self.switch_in.pop().ok()
    }

    /// Hands the replaced routing back. Its queue has room: the control
    /// thread sends one switch at a time and takes the old one back first.
    pub fn give_back(&mut self, old: Box<RoutingSwitch>) {
        if let Err(rtrb::PushError::Full(old)) = self.switch_out.push(old) {
            // Unreachable by that protocol; freeing here is still correct.
            drop(old);
        }
    }
}

/// The control thread's ends for one worker.
pub struct WorkerPort {
    commands: rtrb::Producer<Command>,
    events: rtrb::Consumer<Event>,
    backlog: VecDeque<Command>,
    taken: u64,
    /// Commands dropped because the backlog was full.
    pub dropped: u64,
    switch_out: rtrb::Producer<Box<RoutingSwitch>>,
    switch_back: rtrb::Consumer<Box<RoutingSwitch>>,
}

impl WorkerPort {
    /// Queues a command; false if it was dropped (backlog full).
    pub fn send(&mut self, c: Command) -> bool {
        if self.backlog.is_empty() {
            match self.commands.push(c) {
                Ok(()) => return true,
                Err(rtrb::PushError::Full(c)) => self.backlog.push_back(c),
            }
        } else if self.backlog.len() < MAX_BACKLOG {
            self.backlog.push_back(c);
        } else {
            self.dropped += 1;
            return false;
        }
        true
    }

    /// Moves backlogged commands into the queue as room allows.
    pub fn flush(&mut self) {
        while let Some(c) = self.backlog.pop_front() {
            if let Err(rtrb::PushError::Full(c)) = self.commands.push(c) {
                self.backlog.push_front(c);
                return;
            }
        }
    }

    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Hands the worker a new routing: the routing, then `Command::Switch`
    /// behind every command already queued. Err gives it back when the
    /// worker has not returned the last one yet.
    pub fn switch(&mut self, next: Box<RoutingSwitch>) -> Result<(), Box<RoutingSwitch>> {
        match self.switch_out.push(next) {
            Ok(()) => {
                // Never dropped, even past the backlog's bound: a lost
                // Switch would leave the routing unclaimed for good.
                if self.backlog.is_empty() && self.commands.push(Command::Switch).is_ok() {
                    return Ok(());
                }
                self.backlog.push_back(Command::Switch);
                Ok(())
            }
            Err(rtrb::PushError::Full(next)) => Err(next),
        }
    }

    /// A routing the worker replaced (it switched), if one came back.
    pub fn switched_back(&mut self) -> Option<Box<RoutingSwitch>> {
        self.switch_back.pop().ok()
    }

    pub fn next_event(&mut self) -> Option<Event> {
        let e = self.events.pop().ok()?;
        self.taken += 1;
        Some(e)
    }

    /// Events taken so far (the same count the worker tags with).
    pub fn taken(&self) -> u64 {
        self.taken
    }
}

/// A worker's pair of queues: the control thread's ends and the worker's.
pub fn worker_channel(len: usize) -> (WorkerPort, CommandRx, EventTx) {
    let (ctx, crx) = rtrb::RingBuffer::new(len);
    let (etx, erx) = rtrb::RingBuffer::new(len);
    let (switch_out, switch_in) = rtrb::RingBuffer::new(SWITCH_QUEUE_LEN);
    let (back_tx, switch_back) = rtrb::RingBuffer::new(SWITCH_QUEUE_LEN);
    (
        WorkerPort {
            commands: ctx,
            events: erx,
            backlog: VecDeque::new(),
            taken: 0,
            dropped: 0,
            switch_out,
            switch_back,
        },
        CommandRx { q: crx, switch_in, switch_out: back_tx },
        EventTx { q: etx, pushed: 0 },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queues_never_block_nor_lose_commands_and_count_events() {
        let (mut port, mut rx, mut tx) = worker_channel(4);
        for i in 0..10 {
            assert!(port.send(Command::Release { upto: i }));
        }
        assert_eq!(port.backlog(), 6);
        let mut got = Vec::new();
        while got.len() < 10 {
            while let Some(Command::Release { upto }) = rx.pop() {
                got.push(upto);
            }
            port.flush();
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>(), "in order, none lost");
        for _ in 0..4 {
            assert!(tx.push(Event::DumpDone { id: 1 }));
        }
        assert!(!tx.push(Event::DumpDone { id: 2 }), "full: refused, not blocked");
        assert_eq!(tx.pushed(), 4);
        while port.next_event().is_some() {}
        assert_eq!(port.taken(), tx.pushed(), "both ends count alike");
    }
}
