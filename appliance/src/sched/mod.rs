//! Server selection for new flows. Each worker owns its scheduler state
//! (round-robin position); Maglev's lookup table is shared read-only.

pub mod maglev;
pub mod wrr;

use std::sync::Arc;

/// A service's scheduler, one instance per worker.
pub enum Scheduler {
    RoundRobin(wrr::SmoothWrr),
    Maglev(Arc<maglev::Maglev>),
}

impl Scheduler {
    /// Picks an index into the service's server list for a flow with `flow_hash`.
    #[inline]
    pub fn pick(&mut self, flow_hash: u64) -> usize {
        match self {
            Scheduler::RoundRobin(w) => w.pick(),
            Scheduler::Maglev(m) => m.lookup(flow_hash),
        }
    }
}
