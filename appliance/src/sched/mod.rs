//! Server selection for new flows. Each worker owns its scheduler state
//! (round-robin position); Maglev's lookup table is shared read-only.

pub mod maglev;
pub mod wrr;

use std::sync::Arc;

/// Further Maglev lookups tried for a flow whose server is down.
const MAGLEV_RETRIES: u64 = 8;

/// A service's scheduler, one instance per worker.
pub enum Scheduler {
    RoundRobin(wrr::SmoothWrr),
    Maglev(Arc<maglev::Maglev>),
}

impl Scheduler {
    /// Picks an index into the service's server list for a flow with
    /// `flow_hash`, among servers whose `weight(i)` now is not 0 (None: all
    /// are down). Maglev keeps its pick while that server is up; a flow
    /// whose server is down is placed by the next picks of the flow's own
    /// sequence of hashes, the same on every appliance, then by the first up.
    #[inline]
    pub fn pick(&mut self, flow_hash: u64, weight: impl Fn(usize) -> u32) -> Option<usize> {
        match self {
            Scheduler::RoundRobin(w) => w.pick(weight),
            Scheduler::Maglev(m) => maglev_pick(m, flow_hash, weight),
        }
    }
}

/// Maglev's pick for `flow_hash` among servers whose weight now is not 0.
#[inline]
pub fn maglev_pick(m: &maglev::Maglev, flow_hash: u64, weight: impl Fn(usize) -> u32) -> Option<usize> {
    let first = m.lookup(flow_hash);
    if weight(first) != 0 {
        return Some(first);
    }
    (1..=MAGLEV_RETRIES)
        .map(|k| m.lookup(crate::session::mix(flow_hash, k)))
        .find(|&i| weight(i) != 0)
        .or_else(|| (0..m.servers()).find(|&i| weight(i) != 0))
}
