//! One direction of one sibling pair: the sender's side (batches records,
//! keeps every batch until acknowledged, resends on NACK or timeout) and
//! the receiver's side (delivers batches in order, holds early ones, tells
//! the sender what it has and what it misses).

use super::wire::{DATA_ROOM, MAX_NACKS, MAX_RECORD};
use std::collections::{BTreeMap, VecDeque};

/// Unacknowledged batches a sender keeps per sibling (~22 MB at most).
/// Past this the stream is reset and the sibling must pull a resync.
pub const MAX_UNACKED: usize = 16_384;
/// Early batches a receiver holds while waiting for a gap to be filled.
pub const MAX_HELD: u64 = 4_096;
/// Batches resent per timeout (the rest follow on the next ones).
const RESEND_BURST: usize = 64;
/// Longest retransmission back-off for a silent sibling.
const MAX_BACKOFF_MS: u64 = 1_000;

pub(super) struct Batch {
    pub seq: u64,
    pub count: u16,
    pub stamp_us: u64,
    pub framed: Vec<u8>,
    last_sent: u64,
}

/// The sending side of a stream to one sibling incarnation.
pub(super) struct TxStream {
    pub to_incarnation: u64,
    pub epoch: u32,
    next_seq: u64,
    building: Vec<u8>,
    building_count: u16,
    /// Origin time of the oldest stamped record in the batch being built.
    building_stamp: u64,
    unacked: VecDeque<Batch>,
    /// Every batch below this is acknowledged.
    pub acked: u64,
    rto_ms: u64,
    backoff_ms: u64,
    /// When the oldest unacknowledged batch is next resent.
    resend_at: u64,
}

/// What `push` did.
pub(super) enum Pushed {
    Queued,
    /// The stream overran its window and was reset: records were lost.
    Overrun,
}

impl TxStream {
    pub fn new(to_incarnation: u64, epoch: u32, rto_ms: u64) -> TxStream {
        TxStream {
            to_incarnation,
            epoch,
            next_seq: 0,
            building: Vec::with_capacity(DATA_ROOM),
            building_count: 0,
            building_stamp: 0,
            unacked: VecDeque::new(),
            acked: 0,
            rto_ms,
            backoff_ms: rto_ms,
            resend_at: u64::MAX,
        }
    }

    /// Appends a record (≤ 255 bytes) to the batch being built; a full batch
    /// is sealed first. Sealed batches wait for `take_new` to be sent.
    pub fn push(&mut self, record: &[u8], stamp_us: u64, new_epoch: impl FnOnce() -> u32) -> Pushed {
        debug_assert!(record.len() <= MAX_RECORD);
        let mut pushed = Pushed::Queued;
        if self.building.len() + 1 + record.len() > DATA_ROOM || self.building_count == u16::MAX {
            if self.unacked.len() >= MAX_UNACKED {
                // The sibling is not keeping up (or is gone but still in the
                // view): drop everything and start a new stream; the receiver
                // sees a new epoch and pulls a resync.
                self.reset(new_epoch());
                pushed = Pushed::Overrun;
            } else {
                self.seal();
            }
        }
        self.building.push(record.len() as u8);
        self.building.extend_from_slice(record);
        self.building_count += 1;
        if stamp_us != 0 && (self.building_stamp == 0 || stamp_us < self.building_stamp) {
            self.building_stamp = stamp_us;
        }
        pushed
    }

    fn reset(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.next_seq = 0;
        self.acked = 0;
        self.unacked.clear();
        self.building.clear();
        self.building_count = 0;
        self.building_stamp = 0;
        self.resend_at = u64::MAX;
        self.backoff_ms = self.rto_ms;
    }

    /// Seals an empty batch: a new stream's first, so its receiver learns of
    /// it (and of a restart within our run) at once, records or not.
    pub fn announce(&mut self) {
        self.seal();
        self.unacked.push_back(Batch { seq: self.next_seq, count: 0, stamp_us: 0, framed: Vec::new(), last_sent: 0 });
        self.next_seq += 1;
    }

    /// Seals the batch being built (if any); it waits in `take_unsent`.
    pub fn seal(&mut self) {
        if self.building_count == 0 {
            return;
        }
        let framed = std::mem::replace(&mut self.building, Vec::with_capacity(DATA_ROOM));
        // last_sent 0: sealed, not sent yet.
        let stamp_us = std::mem::take(&mut self.building_stamp);
        self.unacked.push_back(Batch {
            seq: self.next_seq,
            count: self.building_count,
            stamp_us,
            framed,
            last_sent: 0,
        });
        self.next_seq += 1;
        self.building_count = 0;
    }

    /// Sealed batches not sent yet, in order; they count as sent at `now`.
    pub fn take_unsent(&mut self, now: u64) -> impl Iterator<Item = &Batch> {
        let start = self.unacked.iter().position(|b| b.last_sent == 0).unwrap_or(self.unacked.len());
        if start < self.unacked.len() && self.resend_at == u64::MAX {
            self.resend_at = now + self.backoff_ms;
        }
        for b in self.unacked.iter_mut().skip(start) {
            b.last_sent = now.max(1);
        }
        self.unacked.iter().skip(start)
    }

    /// Batches sealed so far all have seq below this.
    pub fn sealed_end(&self) -> u64 {
        self.next_seq
    }

    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// An ACK: forget what is acknowledged; return the NACKed batches due
    /// for a resend (not resent within a quarter RTO).
    pub fn on_ack(&mut self, now: u64, next: u64, nacks: &[u64]) -> Vec<&Batch> {
        if next > self.acked && next <= self.next_seq {
            self.acked = next;
            while self.unacked.front().is_some_and(|b| b.seq < next) {
                self.unacked.pop_front();
            }
            self.backoff_ms = self.rto_ms;
            self.resend_at = if self.unacked.is_empty() { u64::MAX } else { now + self.rto_ms };
        }
        let base = self.unacked.front().map_or(0, |b| b.seq);
        let mut due = Vec::new();
        for &s in nacks {
            let Some(i) = s.checked_sub(base).map(|i| i as usize) else { continue };
            if let Some(b) = self.unacked.get_mut(i) {
                if b.seq == s && b.last_sent != 0 && now >= b.last_sent + self.rto_ms / 4 {
                    b.last_sent = now;
                    due.push(i);
                }
            }
        }
        due.into_iter().filter_map(|i| self.unacked.get(i)).collect()
    }

    pub fn deadline(&self) -> Option<u64> {
        (self.resend_at != u64::MAX).then_some(self.resend_at)
    }

    /// No ACK for a while: resend the oldest batches, backing off.
    pub fn on_timeout(&mut self, now: u64) -> Vec<&Batch> {
        if now < self.resend_at {
            return Vec::new();
        }
        if self.unacked.is_empty() {
            self.resend_at = u64::MAX;
            return Vec::new();
        }
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
        self.resend_at = now + self.backoff_ms;
        let n = self.unacked.len().min(RESEND_BURST);
        for b in self.unacked.iter_mut().take(n) {
            b.last_sent = now.max(1);
        }
        self.unacked.iter().take(n).collect()
    }
}

/// The receiving side of one stream (sender incarnation, epoch).
pub(super) struct RxStream {
    pub incarnation: u64,
    pub epoch: u32,
    /// The next batch to deliver.
    pub next: u64,
    held: BTreeMap<u64, (u64, Vec<u8>)>,
    /// An ACK is owed at this time.
    pub ack_at: Option<u64>,
    rto_ms: u64,
}

/// What a DATA batch did to the stream.
pub(super) enum Received {
    /// Already delivered: a duplicate or a retransmission.
    Duplicate,
    /// Too far ahead to hold; the sender will resend it.
    TooEarly,
    /// Held until the gap before it is filled.
    Held,
    /// Delivered, with the held batches it unblocked (all in order), each
    /// with its origin time.
    Delivered(Vec<(u64, Vec<u8>)>),
}

impl RxStream {
    pub fn new(incarnation: u64, epoch: u32, rto_ms: u64) -> RxStream {
        RxStream { incarnation, epoch, next: 0, held: BTreeMap::new(), ack_at: None, rto_ms }
    }

    pub fn on_data(&mut self, now: u64, seq: u64, stamp_us: u64, framed: &[u8]) -> Received {
        // Every DATA earns an ACK soon: it is how the sender learns what to drop or resend.
        self.ack_at = Some(self.ack_at.map_or(now, |t| t.min(now)));
        if seq < self.next || self.held.contains_key(&seq) {
            return Received::Duplicate;
        }
        if seq >= self.next + MAX_HELD {
            return Received::TooEarly;
        }
        if seq > self.next {
            self.held.insert(seq, (stamp_us, framed.to_vec()));
            return Received::Held;
        }
        let mut out = vec![(stamp_us, framed.to_vec())];
        self.next += 1;
        while let Some(b) = self.held.remove(&self.next) {
            out.push(b);
            self.next += 1;
        }
        Received::Delivered(out)
    }

    /// The ACK to send now: (next, missing batches below the highest held).
    /// While a gap remains, another ACK follows after an RTO.
    pub fn take_ack(&mut self, now: u64) -> Option<(u64, Vec<u64>)> {
        if self.ack_at.is_none_or(|t| now < t) {
            return None;
        }
        let top = self.held.keys().next_back().copied().unwrap_or(self.next);
        let nacks: Vec<u64> = (self.next..top).filter(|s| !self.held.contains_key(s)).take(MAX_NACKS).collect();
        self.ack_at = (!nacks.is_empty()).then_some(now + self.rto_ms);
        Some((self.next, nacks))
    }
}
