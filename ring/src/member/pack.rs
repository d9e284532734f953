//! Packing messages into datagrams: the queue of ring messages for the
//! downstream neighbour (sent at least once per heartbeat interval, as a
//! keepalive if nothing else), and direct messages packed per destination
//! into as few datagrams as fit, each sealed with the MAC.

use super::{Counters, Transmit};
use crate::wire::{self, Key, Msg, Packet};
use std::collections::VecDeque;
use std::net::SocketAddrV4;

pub(super) struct Packer {
    me: SocketAddrV4,
    incarnation: u64,
    key: Key,
    tx_seq: u64,
    out: VecDeque<Transmit>,
    /// Ring messages waiting for the next packet to the downstream neighbour.
    pending_down: Vec<Msg>,
    last_sent_downstream: u64,
}

impl Packer {
    pub fn new(me: SocketAddrV4, incarnation: u64, key: Key, now: u64) -> Packer {
        Packer {
            me,
            incarnation,
            key,
            tx_seq: 0,
            out: VecDeque::new(),
            pending_down: Vec::new(),
            last_sent_downstream: now,
        }
    }

    /// Queues a ring message for the downstream neighbour (the token first).
    pub fn queue_down(&mut self, m: Msg, token: bool) {
        if token {
            self.pending_down.insert(0, m);
        } else {
            self.pending_down.push(m);
        }
    }

    pub fn clear_down(&mut self) {
        self.pending_down.clear();
    }

    /// When the keepalive to the downstream neighbour is due.
    pub fn keepalive_due(&self, heartbeat_ms: u64) -> u64 {
        self.last_sent_downstream + heartbeat_ms
    }

    /// Pretends the last downstream packet went out at `at` (a new ring's
    /// first keepalive is then due at once).
    pub fn set_last_sent_downstream(&mut self, at: u64) {
        self.last_sent_downstream = at;
    }

    /// Sends the queued ring messages to `down` (or an empty keepalive when
    /// `force`). `down` is None when there is no ring to send round.
    pub fn flush_down(&mut self, now: u64, down: Option<SocketAddrV4>, force: bool, counters: &mut Counters) {
        let Some(down) = down else {
            self.pending_down.clear();
            return;
        };
        if self.pending_down.is_empty() && !force {
            return;
        }
        let msgs: Vec<(SocketAddrV4, Msg)> = self.pending_down.drain(..).map(|m| (down, m)).collect();
        if msgs.is_empty() {
            self.emit(down, Vec::new(), counters);
        } else {
            self.send(msgs, counters);
        }
        self.last_sent_downstream = now;
    }

    /// Packs messages per destination into as few datagrams as fit.
    pub fn send(&mut self, msgs: Vec<(SocketAddrV4, Msg)>, counters: &mut Counters) {
        let mut by_dest: Vec<(SocketAddrV4, Vec<Msg>, usize)> = Vec::new();
        let budget = wire::MAX_DATAGRAM - wire::HEADER_LEN - 2 - wire::MAC_LEN;
        for (to, m) in msgs {
            let len = wire::msg_len(&m);
            match by_dest.iter_mut().rev().find(|(d, _, used)| *d == to && used + len <= budget) {
                Some((_, v, used)) => {
                    v.push(m);
                    *used += len;
                }
                None => by_dest.push((to, vec![m], len)),
            }
        }
        for (to, msgs, _) in by_dest {
            self.emit(to, msgs, counters);
        }
    }

    fn emit(&mut self, to: SocketAddrV4, msgs: Vec<Msg>, counters: &mut Counters) {
        self.tx_seq += 1;
        let p = Packet { sender: self.me, incarnation: self.incarnation, seq: self.tx_seq, msgs };
        counters.tx_packets += 1;
        self.out.push_back(Transmit { to, bytes: wire::encode(&p, &to, &self.key) });
    }

    pub fn poll(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
}
