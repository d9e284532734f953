//! The worker lcore's main loop: rx burst → process → tx burst, plus the
//! hand-off rings between workers and a little periodic housekeeping.
//! One obvious loop, in the spirit of DPDK's l3fwd.

use crate::dataplane::{Shared, Verdict, Worker};
use crate::dpdk::{self, Burst, Mempool, Port, SpscRing};
use crate::packet;
use crate::stats::{Drop, WorkerStats};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

pub const BURST: usize = 32;
/// How long a worker waits on a full hand-off ring before dropping (µs).
const HANDOFF_PATIENCE_US: u64 = 200;

/// Converts TSC ticks to milliseconds since start without dividing per packet.
#[derive(Clone, Copy)]
pub struct Clock {
    start: u64,
    ms_per_tick_q32: u128,
}

impl Clock {
    pub fn new(tsc_hz: u64) -> Clock {
        Clock { start: dpdk::rdtsc(), ms_per_tick_q32: (1000u128 << 32) / u128::from(tsc_hz.max(1)) }
    }
    #[inline]
    pub fn now_ms(&self) -> u32 {
        let ticks = u128::from(dpdk::rdtsc().wrapping_sub(self.start));
        ((ticks * self.ms_per_tick_q32) >> 32) as u32
    }
}

/// What one worker needs; built on the main lcore and moved to the worker.
pub struct WorkerSetup {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<Vec<WorkerStats>>,
    /// Configured port index → DPDK port.
    pub ports: Vec<Port>,
    /// DPDK port id → configured port index (0xff: not ours).
    pub port_index: Vec<u8>,
    /// (port index, rx queue) this worker polls.
    pub rx_queues: Vec<(u8, u16)>,
    /// Rings other workers hand frames to us through.
    pub inbound: Vec<Arc<SpscRing>>,
    /// Ring to each worker (None for ourselves).
    pub outbound: Vec<Option<Arc<SpscRing>>>,
    pub pool: Arc<Mempool>,
    pub quit: Arc<AtomicBool>,
    pub clock: Clock,
    pub tsc_hz: u64,
}

struct Loop<'a> {
    dp: Worker<'a>,
    stats: &'a WorkerStats,
    ports: &'a [Port],
    port_index: &'a [u8],
    tx: Vec<Burst<BURST>>,
    handoff: Vec<Burst<BURST>>,
    outbound: &'a [Option<Arc<SpscRing>>],
    inbound: &'a [Arc<SpscRing>],
    queue: u16,
    handoff_patience_tsc: u64,
}

impl Loop<'_> {
    #[inline]
    fn handle(&mut self, mut m: dpdk::Mbuf, now_ms: u32, handed_off: bool) {
        if m.segments() != 1 {
            self.stats.drop(Drop::MultiSegment);
            return;
        }
        let port = self.port_index.get(usize::from(m.port())).copied().unwrap_or(0xff);
        match self.dp.process(m.data_mut(), port, now_ms, handed_off) {
            Verdict::Tx(p) => {
                let p = usize::from(p);
                if self.tx[p].is_full() {
                    self.flush_tx(p);
                }
                if self.tx[p].push(m).is_err() {
                    self.stats.drop(Drop::TxFull);
                }
            }
            Verdict::Handoff(w) => {
                if self.handoff[w].is_full() {
                    self.flush_handoff(w);
                }
                // Still full: the owner is overloaded; drop this frame, keep the queued ones.
                if self.handoff[w].push(m).is_err() {
                    self.stats.drop(Drop::HandoffFull);
                }
            }
            Verdict::Consumed => {}
            Verdict::Drop(d) => self.stats.drop(d),
        }
    }

    fn flush_tx(&mut self, p: usize) {
        let sent = self.ports[p].tx(self.queue, &mut self.tx[p]);
        self.stats.tx.add(sent as u64);
        for _ in self.tx[p].drain() {
            self.stats.drop(Drop::TxFull);
        }
    }

    /// Moves frames for worker `w` into its ring. Whatever does not fit stays
    /// in the burst for the next attempt. If no other worker is waiting on us
    /// (our inbound rings are empty), wait a bounded moment for the owner to
    /// catch up; never when someone is, or two workers with full rings towards
    /// each other would both spin.
    fn flush_handoff(&mut self, w: usize) {
        let Some(ring) = &self.outbound[w] else { return };
        let n = ring.enqueue(&mut self.handoff[w]);
        self.stats.handoff_out.add(n as u64);
        if self.handoff[w].is_empty() || self.inbound.iter().any(|r| r.count() > 0) {
            return;
        }
        let give_up_at = dpdk::rdtsc() + self.handoff_patience_tsc;
        while !self.handoff[w].is_empty() && dpdk::rdtsc() < give_up_at {
            dpdk::pause();
            let n = ring.enqueue(&mut self.handoff[w]);
            self.stats.handoff_out.add(n as u64);
        }
    }

    fn flush_all(&mut self) {
        for p in 0..self.tx.len() {
            if !self.tx[p].is_empty() {
                self.flush_tx(p);
            }
        }
        for w in 0..self.handoff.len() {
            if !self.handoff[w].is_empty() {
                self.flush_handoff(w);
            }
        }
    }
}

/// Runs until `quit` is set. Returns 0 (the lcore function's status).
pub fn run(setup: WorkerSetup) -> i32 {
    let stats = &setup.stats[setup.id];
    let mut lp = Loop {
        dp: Worker::new(setup.id, &setup.shared, stats),
        stats,
        ports: &setup.ports,
        port_index: &setup.port_index,
        tx: (0..setup.ports.len()).map(|_| Burst::default()).collect(),
        handoff: (0..setup.outbound.len()).map(|_| Burst::default()).collect(),
        outbound: &setup.outbound,
        inbound: &setup.inbound,
        queue: setup.id as u16,
        handoff_patience_tsc: setup.tsc_hz * HANDOFF_PATIENCE_US / 1_000_000,
    };
    let mut rx: Burst<BURST> = Burst::default();
    let mut last_tick_ms = u32::MAX;
    while !setup.quit.load(Relaxed) {
        let now = setup.clock.now_ms();
        let mut got = 0;
        for &(p, q) in &setup.rx_queues {
            let n = setup.ports[usize::from(p)].rx(q, &mut rx);
            if n == 0 {
                continue;
            }
            got += n;
            stats.rx.add(n as u64);
            for m in rx.drain() {
                m.prefetch();
                lp.handle(m, now, false);
            }
        }
        for ring in &setup.inbound {
            if ring.dequeue(&mut rx) == 0 {
                continue;
            }
            got += rx.len();
            for m in rx.drain() {
                lp.handle(m, now, true);
            }
        }
        lp.flush_all();

        // Once per millisecond: expire a slice of sessions; worker 0 also
        // asks for servers' MACs that are unknown or due for refresh.
        if now != last_tick_ms {
            last_tick_ms = now;
            lp.dp.sweep(now);
            let pool = &setup.pool;
            let ports = &setup.ports;
            let queue = lp.queue;
            lp.dp.due_solicits(now, |n, port| {
                let Some(mut m) = pool.alloc() else {
                    return false;
                };
                let Some(buf) = m.append(packet::MIN_FRAME as u16) else {
                    return false;
                };
                packet::build_arp_request(buf, port.mac, port.ip, n.ip);
                let mut b: Burst<1> = Burst::default();
                let _ = b.push(m);
                ports[usize::from(n.port)].tx(queue, &mut b) == 1
            });
        }
        if got == 0 {
            dpdk::pause();
        }
    }
    lp.flush_all();
    // Frames still waiting for a hand-off ring at shutdown are freed, and counted.
    for w in 0..lp.handoff.len() {
        for _ in lp.handoff[w].drain() {
            lp.stats.drop(Drop::HandoffFull);
        }
    }
    0
}
