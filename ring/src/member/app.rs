//! Application messages riding the ring: delivered at most once per
//! (origin, incarnation, seq), removed when addressed only to the receiver,
//! when their hop budget runs out, or when they come back to their origin.

use super::Counters;
use crate::wire::{Dest, Msg};
use std::collections::HashMap;
use std::net::SocketAddrV4;

/// Identifies one App message: (origin, origin incarnation, seq).
pub(super) type AppId = (SocketAddrV4, u64, u64);

#[derive(Default)]
pub(super) struct AppForwarding {
    seq: u64,
    /// (origin, incarnation, seq) → when seen: delivery at most once.
    seen: HashMap<AppId, u64>,
}

/// What a received App message turns into.
#[derive(Default)]
pub(super) struct AppOutcome {
    /// Deliver to the application: (origin, payload).
    pub deliver: Option<(SocketAddrV4, Vec<u8>)>,
    /// Pass on downstream.
    pub forward: Option<Msg>,
}

impl AppForwarding {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Decides an App message's fate at member `me`. `in_ring` is false
    /// while forming (nothing is forwarded then).
    #[allow(clippy::too_many_arguments)]
    pub fn receive(
        &mut self,
        me: &SocketAddrV4,
        in_ring: bool,
        now: u64,
        id: AppId,
        dest: Dest,
        hops_left: u8,
        payload: Vec<u8>,
        counters: &mut Counters,
    ) -> AppOutcome {
        let (origin, incarnation, seq) = id;
        let mut out = AppOutcome::default();
        if origin == *me {
            // It went all the way round: remove it.
            counters.app_own_returned += 1;
            return out;
        }
        if self.seen.insert(id, now).is_some() {
            counters.app_duplicates += 1;
            return out;
        }
        let for_me = match dest {
            Dest::Broadcast => true,
            Dest::To(a) => a == *me,
        };
        if for_me {
            counters.app_delivered += 1;
            if dest != Dest::Broadcast {
                // Addressed only to us: remove it.
                out.deliver = Some((origin, payload));
                return out;
            }
            out.deliver = Some((origin, payload.clone()));
        }
        if hops_left <= 1 || !in_ring {
            counters.app_expired += 1;
            return out;
        }
        out.forward = Some(Msg::App { origin, incarnation, seq, dest, hops_left: hops_left - 1, payload });
        out
    }

    /// Forgets delivery records older than `horizon` once there are many.
    pub fn prune(&mut self, now: u64, horizon: u64) {
        if self.seen.len() > 4096 {
            self.seen.retain(|_, seen| now.saturating_sub(*seen) < horizon);
        }
    }
}
