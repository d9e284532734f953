//! Sibling sync (SYNC.md): reliable, ordered, batched streams of
//! opaque records between ringlb appliances, one stream per direction of
//! each sibling pair, authenticated with the cluster key. A sans-IO state
//! machine like the ring's member: it is given the time, datagrams and
//! records; it hands back datagrams and events.
//!
//! The model is conntrackd's FTFW: every batch carries a sequence number;
//! receivers deliver in order, acknowledge cumulatively and name gaps
//! (NACK); senders keep each batch until acknowledged and resend on NACK or
//! timeout. A sender that cannot keep a sibling's backlog resets the stream
//! (a new epoch); the sibling sees the new epoch and pulls a resync. What
//! the records mean, and the resync itself, is the appliance's business:
//! it rides these streams as records.

mod stream;
pub mod wire;

use crate::member::Transmit;
use crate::replay::ReplayGuard;
use crate::wire::{DecodeError, Key};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddrV4;
use stream::{Pushed, Received, RxStream, TxStream};
pub use stream::{MAX_HELD, MAX_UNACKED};
use wire::{Body, Header, MAX_RECORD};

/// The sync key's derivation context: the same secret as the ring, another key.
pub const KEY_CONTEXT: &str = "ringlb sync v1 packet MAC";

#[derive(Clone)]
pub struct SyncConfig {
    pub me: SocketAddrV4,
    /// Distinguishes restarts; must grow from one start to the next.
    pub incarnation: u64,
    /// Derived with [`KEY_CONTEXT`].
    pub key: Key,
    /// Every address that may be a sibling (the ring's configured peers).
    pub peers: Vec<SocketAddrV4>,
    /// Retransmission timeout (doubles while a sibling stays silent).
    pub rto_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// One batch of a sibling's stream, in stream order: records framed as
    /// a length byte and that many bytes (iterate with [`wire::records`]).
    /// `stamp_us`: when its oldest record was made (sender's wall clock; 0 =
    /// not stamped).
    Records { from: SocketAddrV4, stamp_us: u64, framed: Vec<u8> },
    /// A sibling's stream to us restarted within its incarnation: it dropped
    /// records meant for us (overrun, or it forgot us for a while). Pull a
    /// resync from it.
    StreamReset { from: SocketAddrV4 },
    /// Every sibling that had a stream at [`Sync::mark`] time has
    /// acknowledged every record pushed before the mark (or left).
    MarkAcked(u64),
}

/// Counted refusals and activity.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SyncCounters {
    pub tx_datagrams: u64,
    pub tx_records: u64,
    pub tx_batches: u64,
    pub retransmits: u64,
    pub acks_sent: u64,
    pub rx_datagrams: u64,
    pub rx_batches: u64,
    pub rx_duplicates: u64,
    pub rx_held: u64,
    pub rx_too_early: u64,
    pub rx_bad_mac: u64,
    pub rx_malformed: u64,
    pub rx_replayed: u64,
    pub rx_spoofed: u64,
    pub rx_unknown_sender: u64,
    /// Meant for another incarnation of us, or of an old stream of theirs.
    pub rx_stale: u64,
    pub overruns: u64,
    pub stream_resets: u64,
}

struct Peer {
    /// The sibling's newest incarnation known.
    incarnation: u64,
    tx: Option<TxStream>,
    rx: Option<RxStream>,
}

struct Mark {
    id: u64,
    /// (sibling, stream epoch, every batch below this acknowledged).
    waits: Vec<(SocketAddrV4, u32, u64)>,
}

/// Seals and queues datagrams: the packet sequence numbers and the key.
struct Out {
    me: SocketAddrV4,
    incarnation: u64,
    key: Key,
    seq: u64,
    queue: VecDeque<Transmit>,
}

impl Out {
    fn header(&mut self, to_incarnation: u64) -> Header {
        self.seq += 1;
        Header { sender: self.me, incarnation: self.incarnation, seq: self.seq, to_incarnation }
    }
    fn data(&mut self, to: SocketAddrV4, to_inc: u64, epoch: u32, b: &stream::Batch) {
        let h = self.header(to_inc);
        let batch = wire::DataBatch { epoch, seq: b.seq, stamp_us: b.stamp_us, count: b.count, framed: &b.framed };
        let bytes = wire::encode_data(&h, &batch, &self.key);
        self.queue.push_back(Transmit { to, bytes });
    }
    fn ack(&mut self, to: SocketAddrV4, to_inc: u64, epoch: u32, next: u64, nacks: &[u64]) {
        let h = self.header(to_inc);
        let bytes = wire::encode_ack(&h, epoch, next, nacks, &self.key);
        self.queue.push_back(Transmit { to, bytes });
    }
}

pub struct Sync {
    rto_ms: u64,
    peer_set: HashSet<SocketAddrV4>,
    peers: BTreeMap<SocketAddrV4, Peer>,
    replay: ReplayGuard,
    out: Out,
    events: VecDeque<SyncEvent>,
    marks: VecDeque<Mark>,
    next_mark: u64,
    next_epoch: u32,
    pub counters: SyncCounters,
}

impl Sync {
    pub fn new(cfg: SyncConfig) -> Sync {
        Sync {
            rto_ms: cfg.rto_ms.max(1),
            peer_set: cfg.peers.iter().copied().filter(|p| *p != cfg.me).collect(),
            peers: BTreeMap::new(),
            replay: ReplayGuard::default(),
            out: Out { me: cfg.me, incarnation: cfg.incarnation, key: cfg.key, seq: 0, queue: VecDeque::new() },
            events: VecDeque::new(),
            marks: VecDeque::new(),
            next_mark: 0,
            next_epoch: 0,
            counters: SyncCounters::default(),
        }
    }

    /// The siblings as the ring's view has them: a stream stays open to each
    /// that remains (nothing in flight is lost), one opens to each newcomer
    /// (or newer incarnation), and streams to everyone else close.
    pub fn set_siblings(&mut self, siblings: &[(SocketAddrV4, u64)]) {
        for (addr, p) in self.peers.iter_mut() {
            if !siblings.iter().any(|(a, _)| a == addr) {
                p.tx = None;
            }
        }
        let listed: Vec<_> = siblings.iter().filter(|(a, _)| self.peer_set.contains(a)).copied().collect();
        for (addr, inc) in listed {
            self.open_stream(addr, inc);
        }
        self.settle_marks();
    }

    /// Opens a stream to `addr` (a configured peer) if none is open to this
    /// or a newer incarnation: e.g. when a sibling that is not yet in our
    /// view asks us for a resync.
    pub fn open_stream(&mut self, addr: SocketAddrV4, incarnation: u64) {
        if !self.peer_set.contains(&addr) {
            return;
        }
        let rto = self.rto_ms;
        let p = self.peers.entry(addr).or_insert(Peer { incarnation, tx: None, rx: None });
        p.incarnation = p.incarnation.max(incarnation);
        if p.tx.as_ref().is_none_or(|t| t.to_incarnation < p.incarnation) {
            self.next_epoch += 1;
            let mut tx = TxStream::new(p.incarnation, self.next_epoch, rto);
            tx.announce();
            p.tx = Some(tx);
        }
    }

    /// The siblings a broadcast reaches now.
    pub fn siblings(&self) -> Vec<SocketAddrV4> {
        self.peers.iter().filter(|(_, p)| p.tx.is_some()).map(|(a, _)| *a).collect()
    }

    /// Appends a record to every open stream; `stamp_us` is when what it
    /// says happened (wall clock µs; 0 if not measured). Records longer than
    /// 255 bytes are refused.
    pub fn broadcast(&mut self, record: &[u8], stamp_us: u64) -> Result<(), &'static str> {
        if record.len() > MAX_RECORD {
            return Err("sync record longer than 255 bytes");
        }
        let next_epoch = &mut self.next_epoch;
        for p in self.peers.values_mut() {
            if let Some(tx) = p.tx.as_mut() {
                Self::push(tx, record, stamp_us, next_epoch, &mut self.counters);
            }
        }
        Ok(())
    }

    /// Appends a record to one sibling's stream (false: no stream is open to it).
    pub fn send_to(&mut self, to: SocketAddrV4, record: &[u8], stamp_us: u64) -> Result<bool, &'static str> {
        if record.len() > MAX_RECORD {
            return Err("sync record longer than 255 bytes");
        }
        let Some(tx) = self.peers.get_mut(&to).and_then(|p| p.tx.as_mut()) else { return Ok(false) };
        Self::push(tx, record, stamp_us, &mut self.next_epoch, &mut self.counters);
        Ok(true)
    }

    /// The incarnation of `addr` this member knows (from its packets or the view).
    pub fn incarnation_of(&self, addr: &SocketAddrV4) -> Option<u64> {
        self.peers.get(addr).map(|p| p.incarnation)
    }

    fn push(tx: &mut TxStream, record: &[u8], stamp_us: u64, next_epoch: &mut u32, counters: &mut SyncCounters) {
        if let Pushed::Overrun = tx.push(record, stamp_us, || {
            *next_epoch += 1;
            *next_epoch
        }) {
            counters.overruns += 1;
        }
        counters.tx_records += 1;
    }

    /// Sends every record pushed so far (the batches being built are sealed).
    pub fn flush(&mut self, now: u64) {
        for (addr, p) in self.peers.iter_mut() {
            let Some(tx) = p.tx.as_mut() else { continue };
            tx.seal();
            let (inc, epoch) = (tx.to_incarnation, tx.epoch);
            for b in tx.take_unsent(now) {
                self.out.data(*addr, inc, epoch, b);
                self.counters.tx_batches += 1;
                self.counters.tx_datagrams += 1;
            }
        }
    }

    /// Flushes, then marks the end of every open stream: [`SyncEvent::MarkAcked`]
    /// follows once all of it is acknowledged.
    pub fn mark(&mut self, now: u64) -> u64 {
        self.flush(now);
        self.next_mark += 1;
        let waits = self
            .peers
            .iter()
            .filter_map(|(a, p)| p.tx.as_ref().map(|t| (*a, t.epoch, t.sealed_end())))
            .filter(|(a, e, end)| !self.stream_covers(a, *e, *end))
            .collect::<Vec<_>>();
        self.marks.push_back(Mark { id: self.next_mark, waits });
        self.settle_marks();
        self.next_mark
    }

    /// Stream (a, epoch) acknowledged below `end`, or gone (nothing to wait for).
    fn stream_covers(&self, a: &SocketAddrV4, epoch: u32, end: u64) -> bool {
        match self.peers.get(a).and_then(|p| p.tx.as_ref()) {
            Some(t) if t.epoch == epoch => t.acked >= end,
            _ => true,
        }
    }

    fn settle_marks(&mut self) {
        while let Some(m) = self.marks.front() {
            if !m.waits.iter().all(|(a, e, end)| self.stream_covers(a, *e, *end)) {
                break;
            }
            self.events.push_back(SyncEvent::MarkAcked(m.id));
            self.marks.pop_front();
        }
    }

    /// Batches not yet acknowledged by `to` (0 if no stream is open).
    pub fn backlog(&self, to: &SocketAddrV4) -> usize {
        self.peers.get(to).and_then(|p| p.tx.as_ref()).map_or(0, TxStream::unacked)
    }

    pub fn handle_datagram(&mut self, now: u64, from: SocketAddrV4, bytes: &[u8]) {
        let (h, body) = match wire::decode(bytes, &self.out.key) {
            Ok(x) => x,
            Err(DecodeError::BadMac) => {
                self.counters.rx_bad_mac += 1;
                return;
            }
            Err(_) => {
                self.counters.rx_malformed += 1;
                return;
            }
        };
        if h.sender != from || h.sender == self.out.me {
            self.counters.rx_spoofed += 1;
            return;
        }
        if !self.peer_set.contains(&h.sender) {
            self.counters.rx_unknown_sender += 1;
            return;
        }
        if !self.replay.accept(h.sender, h.incarnation, h.seq) {
            self.counters.rx_replayed += 1;
            return;
        }
        if h.to_incarnation != self.out.incarnation {
            // For an earlier run of ours (or one we never were).
            self.counters.rx_stale += 1;
            return;
        }
        self.counters.rx_datagrams += 1;
        let rto = self.rto_ms;
        let p = self.peers.entry(h.sender).or_insert(Peer { incarnation: h.incarnation, tx: None, rx: None });
        if h.incarnation > p.incarnation {
            // The sibling restarted: whatever we were sending is for its predecessor.
            p.incarnation = h.incarnation;
            if p.tx.is_some() {
                self.next_epoch += 1;
                let mut tx = TxStream::new(h.incarnation, self.next_epoch, rto);
                tx.announce();
                p.tx = Some(tx);
            }
        } else if h.incarnation < p.incarnation {
            self.counters.rx_stale += 1;
            return;
        }
        match body {
            Body::Data { epoch, seq, stamp_us, count: _, records } => {
                let rx = match &mut p.rx {
                    Some(rx) if rx.incarnation == h.incarnation && rx.epoch == epoch => rx,
                    Some(rx) if rx.incarnation == h.incarnation && epoch < rx.epoch => {
                        self.counters.rx_stale += 1;
                        return;
                    }
                    old => {
                        if old.as_ref().is_some_and(|rx| rx.incarnation == h.incarnation) {
                            // Same run of the sibling, a new stream: it dropped records for us.
                            self.counters.stream_resets += 1;
                            self.events.push_back(SyncEvent::StreamReset { from: h.sender });
                        }
                        old.insert(RxStream::new(h.incarnation, epoch, rto))
                    }
                };
                match rx.on_data(now, seq, stamp_us, records) {
                    Received::Duplicate => self.counters.rx_duplicates += 1,
                    Received::TooEarly => self.counters.rx_too_early += 1,
                    Received::Held => self.counters.rx_held += 1,
                    Received::Delivered(batches) => {
                        self.counters.rx_batches += batches.len() as u64;
                        for (stamp_us, framed) in batches.into_iter().filter(|(_, f)| !f.is_empty()) {
                            self.events.push_back(SyncEvent::Records { from: h.sender, stamp_us, framed });
                        }
                    }
                }
            }
            Body::Ack { epoch, next, nacks } => {
                let Some(tx) = p.tx.as_mut().filter(|t| t.epoch == epoch && t.to_incarnation == h.incarnation) else {
                    self.counters.rx_stale += 1;
                    return;
                };
                let (inc, ep) = (tx.to_incarnation, tx.epoch);
                for b in tx.on_ack(now, next, &nacks) {
                    self.out.data(h.sender, inc, ep, b);
                    self.counters.retransmits += 1;
                    self.counters.tx_datagrams += 1;
                }
                self.settle_marks();
            }
        }
    }

    /// ACKs owed and retransmissions due.
    pub fn handle_timeout(&mut self, now: u64) {
        for (addr, p) in self.peers.iter_mut() {
            if let Some(rx) = &mut p.rx {
                if let Some((next, nacks)) = rx.take_ack(now) {
                    self.out.ack(*addr, rx.incarnation, rx.epoch, next, &nacks);
                    self.counters.acks_sent += 1;
                    self.counters.tx_datagrams += 1;
                }
            }
            if let Some(tx) = &mut p.tx {
                let (inc, epoch) = (tx.to_incarnation, tx.epoch);
                for b in tx.on_timeout(now) {
                    self.out.data(*addr, inc, epoch, b);
                    self.counters.retransmits += 1;
                    self.counters.tx_datagrams += 1;
                }
            }
        }
    }

    /// When `handle_timeout` should next be called (u64::MAX: nothing due).
    pub fn poll_timeout(&self) -> u64 {
        self.peers
            .values()
            .flat_map(|p| [p.rx.as_ref().and_then(|r| r.ack_at), p.tx.as_ref().and_then(TxStream::deadline)])
            .flatten()
            .min()
            .unwrap_or(u64::MAX)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.queue.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }
}
