//! The reliable message layer: a token packet states how many data-carriage
//! packets make up one message; the receiver reassembles, asks for what is
//! missing (NACK), and acknowledges the whole.
//! Sans-IO like the rest: it is given time and messages, it returns messages.

use crate::wire::Msg;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// Payload bytes per carriage packet (fits one datagram with headers and MAC).
pub const CHUNK: usize = 1024;
pub const MAX_MESSAGE: usize = 16 << 20;
/// Indices per NACK (fits one datagram).
const NACK_BATCH: usize = 256;
/// Unacknowledged messages and stalled reassemblies are abandoned after this.
const GIVE_UP_MS: u64 = 60_000;
const MAX_RECEIVES_PER_SENDER: usize = 16;

pub type Out = Vec<(SocketAddrV4, Msg)>;

struct Sending {
    to: SocketAddrV4,
    msg_id: u64,
    chunks: Vec<Vec<u8>>,
    /// When each carriage was last (re)sent: NACKs that cross a resend do not double it.
    last_sent: Vec<u64>,
    total_len: u32,
    started: u64,
    /// When to resend the token if nothing is heard.
    resend_at: u64,
}

struct Receiving {
    count: u32,
    total_len: u32,
    chunks: Vec<Option<Vec<u8>>>,
    have: u32,
    last_progress: u64,
    nack_at: u64,
}

#[derive(Default)]
pub struct Reliable {
    next_id: u64,
    rto_ms: u64,
    sending: BTreeMap<(SocketAddrV4, u64), Sending>,
    receiving: BTreeMap<(SocketAddrV4, u64), Receiving>,
    /// Completed receptions, kept to re-acknowledge duplicates and deliver once.
    done: BTreeMap<(SocketAddrV4, u64), u64>,
    pub stats: RelStats,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct RelStats {
    pub carriages_sent: u64,
    pub carriages_resent: u64,
    pub nacks_sent: u64,
    pub delivered: u64,
    pub abandoned: u64,
    pub rejected: u64,
}

impl Reliable {
    pub fn new(rto_ms: u64, first_id: u64) -> Self {
        Reliable { rto_ms: rto_ms.max(1), next_id: first_id, ..Default::default() }
    }

    /// Starts sending `payload` to `to`; returns the message id and the packets to send now.
    pub fn send(&mut self, to: SocketAddrV4, payload: &[u8], now: u64, out: &mut Out) -> Result<u64, &'static str> {
        if payload.len() > MAX_MESSAGE {
            return Err("reliable message larger than 16 MiB");
        }
        self.next_id += 1;
        let msg_id = self.next_id;
        let chunks: Vec<Vec<u8>> =
            if payload.is_empty() { vec![Vec::new()] } else { payload.chunks(CHUNK).map(<[u8]>::to_vec).collect() };
        let s = Sending {
            to,
            msg_id,
            total_len: payload.len() as u32,
            last_sent: vec![now; chunks.len()],
            chunks,
            started: now,
            resend_at: now + 2 * self.rto_ms,
        };
        out.push((to, Msg::RelToken { msg_id, count: s.chunks.len() as u32, total_len: s.total_len }));
        for (i, c) in s.chunks.iter().enumerate() {
            out.push((to, Msg::RelCarriage { msg_id, index: i as u32, data: c.clone() }));
        }
        self.stats.carriages_sent += s.chunks.len() as u64;
        self.sending.insert((to, msg_id), s);
        Ok(msg_id)
    }

    /// Handles a reliable-layer message from `from`. Returns a completed payload, at most once per message.
    pub fn on_msg(&mut self, from: SocketAddrV4, msg: &Msg, now: u64, out: &mut Out) -> Option<Vec<u8>> {
        match msg {
            Msg::RelToken { msg_id, count, total_len } => {
                let key = (from, *msg_id);
                if self.done.contains_key(&key) {
                    out.push((from, Msg::RelAck { msg_id: *msg_id }));
                    return None;
                }
                let expected = (*total_len as usize).div_ceil(CHUNK).max(1);
                if *total_len as usize > MAX_MESSAGE || *count as usize != expected {
                    self.stats.rejected += 1;
                    return None;
                }
                if !self.receiving.contains_key(&key) {
                    if self.receiving.keys().filter(|(f, _)| *f == from).count() >= MAX_RECEIVES_PER_SENDER {
                        self.stats.rejected += 1;
                        return None;
                    }
                    self.receiving.insert(
                        key,
                        Receiving {
                            count: *count,
                            total_len: *total_len,
                            chunks: vec![None; *count as usize],
                            have: 0,
                            last_progress: now,
                            nack_at: now + self.rto_ms,
                        },
                    );
                } else if let Some(r) = self.receiving.get_mut(&key) {
                    // A resent token: the sender heard nothing; ask now.
                    r.nack_at = now;
                }
                self.try_complete(key, now, out)
            }
            Msg::RelCarriage { msg_id, index, data } => {
                let key = (from, *msg_id);
                let r = self.receiving.get_mut(&key)?;
                let i = *index as usize;
                let last = r.count as usize - 1;
                let want_len = if i == last { r.total_len as usize - last * CHUNK } else { CHUNK };
                if i >= r.chunks.len() || data.len() != want_len {
                    self.stats.rejected += 1;
                    return None;
                }
                if r.chunks[i].is_none() {
                    r.chunks[i] = Some(data.clone());
                    r.have += 1;
                    r.last_progress = now;
                    r.nack_at = now + self.rto_ms;
                }
                self.try_complete(key, now, out)
            }
            Msg::RelNack { msg_id, missing } => {
                if let Some(s) = self.sending.get_mut(&(from, *msg_id)) {
                    for &i in missing {
                        let i = i as usize;
                        if i < s.chunks.len() && now >= s.last_sent[i] + self.rto_ms {
                            s.last_sent[i] = now;
                            out.push((
                                from,
                                Msg::RelCarriage { msg_id: *msg_id, index: i as u32, data: s.chunks[i].clone() },
                            ));
                            self.stats.carriages_resent += 1;
                        }
                    }
                    s.resend_at = now + 2 * self.rto_ms;
                }
                None
            }
            Msg::RelAck { msg_id } => {
                self.sending.remove(&(from, *msg_id));
                None
            }
            _ => None,
        }
    }

    fn try_complete(&mut self, key: (SocketAddrV4, u64), now: u64, out: &mut Out) -> Option<Vec<u8>> {
        let r = self.receiving.get(&key)?;
        if r.have < r.count {
            return None;
        }
        let r = self.receiving.remove(&key)?;
        let mut payload = Vec::with_capacity(r.total_len as usize);
        for c in r.chunks.into_iter().flatten() {
            payload.extend_from_slice(&c);
        }
        self.done.insert(key, now);
        out.push((key.0, Msg::RelAck { msg_id: key.1 }));
        self.stats.delivered += 1;
        Some(payload)
    }

    /// Retransmission and NACK timers.
    pub fn on_timeout(&mut self, now: u64, out: &mut Out) {
        let rto = self.rto_ms;
        for ((from, msg_id), r) in self.receiving.iter_mut() {
            if now >= r.nack_at {
                let missing: Vec<u32> =
                    (0..r.count).filter(|&i| r.chunks[i as usize].is_none()).take(NACK_BATCH).collect();
                out.push((*from, Msg::RelNack { msg_id: *msg_id, missing }));
                self.stats.nacks_sent += 1;
                r.nack_at = now + rto;
            }
        }
        for s in self.sending.values_mut() {
            if now >= s.resend_at {
                out.push((
                    s.to,
                    Msg::RelToken { msg_id: s.msg_id, count: s.chunks.len() as u32, total_len: s.total_len },
                ));
                s.resend_at = now + 2 * rto;
            }
        }
        let before = self.sending.len() + self.receiving.len();
        self.sending.retain(|_, s| now.saturating_sub(s.started) < GIVE_UP_MS);
        self.receiving.retain(|_, r| now.saturating_sub(r.last_progress) < GIVE_UP_MS);
        self.stats.abandoned += (before - self.sending.len() - self.receiving.len()) as u64;
        self.done.retain(|_, t| now.saturating_sub(*t) < GIVE_UP_MS);
    }

    pub fn next_deadline(&self) -> Option<u64> {
        let r = self.receiving.values().map(|r| r.nack_at);
        let s = self.sending.values().map(|s| s.resend_at);
        r.chain(s).min()
    }
}
