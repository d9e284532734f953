//! The master's duties: circulate the heartbeat that carries the
//! view (the implicit token), announce the view to configured peers outside
//! it so separated rings meet, admit members, and assign ids (at most once:
//! only a master assigns, from a hash of its own identity and a counter).

use super::view::View;
use super::Timers;
use crate::wire::{order, MemberEntry};
use std::net::SocketAddrV4;

pub(super) struct MasterDuties {
    next_hb: u64,
    hb_seq: u64,
    next_announce: u64,
    ids_assigned: u64,
}

/// The outcome of a Hello or Join reaching a master.
pub(super) enum Admission {
    /// Already in with the same incarnation, caps and id: remind it of the view.
    AlreadyIn,
    /// From an older incarnation than the one in the view.
    Stale,
    /// Added or updated; the view's version was bumped.
    Admitted,
}

impl MasterDuties {
    pub fn new(now: u64) -> MasterDuties {
        MasterDuties { next_hb: now, hb_seq: 0, next_announce: now, ids_assigned: 0 }
    }

    /// This member just became (or stays) master of a view: heartbeat now,
    /// announce after `announce_in` ms.
    pub fn lead(&mut self, now: u64, announce_in: u64) {
        self.next_hb = now;
        self.next_announce = now + announce_in;
    }

    /// The membership changed: send the next heartbeat at once.
    pub fn heartbeat_now(&mut self, now: u64) {
        self.next_hb = now;
    }

    pub fn deadline(&self, has_neighbours: bool) -> u64 {
        if has_neighbours {
            self.next_announce.min(self.next_hb)
        } else {
            self.next_announce
        }
    }

    /// The sequence number of the heartbeat due now, if one is.
    pub fn heartbeat_due(&mut self, now: u64, t: Timers) -> Option<u64> {
        if now < self.next_hb {
            return None;
        }
        self.next_hb = now + t.heartbeat_ms;
        self.hb_seq += 1;
        Some(self.hb_seq)
    }

    pub fn announce_due(&mut self, now: u64, t: Timers) -> bool {
        if now < self.next_announce {
            return false;
        }
        self.next_announce = now + t.broadcast_timeout_ms;
        true
    }

    /// An id no other master can produce: a hash of this master's identity and a counter.
    pub fn fresh_id(&mut self, me: &SocketAddrV4, incarnation: u64) -> u64 {
        self.ids_assigned += 1;
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&order(me).to_be_bytes());
        b.extend_from_slice(&incarnation.to_be_bytes());
        b.extend_from_slice(&self.ids_assigned.to_be_bytes());
        let h = blake3::hash(&b);
        let mut x = [0u8; 8];
        x.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_be_bytes(x) | 1
    }

    /// Adds or refreshes `entry` in `view` (admission), assigning an id if it has
    /// none, and versions the change above `floor`.
    pub fn admit(
        &mut self,
        view: &mut View,
        floor: &mut u64,
        mut entry: MemberEntry,
        me: &SocketAddrV4,
        incarnation: u64,
    ) -> Admission {
        let i = view.position(&entry.addr);
        if let Some(i) = i {
            let cur = view.members[i];
            if cur.incarnation == entry.incarnation && cur.caps == entry.caps && (entry.id == 0 || cur.id == entry.id) {
                return Admission::AlreadyIn;
            }
            if entry.incarnation < cur.incarnation {
                return Admission::Stale;
            }
            if entry.id == 0 && cur.incarnation == entry.incarnation {
                entry.id = cur.id;
            }
        }
        if entry.id == 0 {
            entry.id = self.fresh_id(me, incarnation);
        }
        match i {
            Some(i) => view.members[i] = entry,
            None => {
                let at = view.members.partition_point(|m| order(&m.addr) < order(&entry.addr));
                view.members.insert(at, entry);
            }
        }
        view.version = view.version.max(*floor) + 1;
        *floor = view.version;
        Admission::Admitted
    }
}
