//! The worker lcore's main loop: rx burst → process → tx burst, plus the
//! hand-off queues between workers and a little periodic housekeeping.
//! One obvious loop, in the spirit of DPDK's l3fwd.

use crate::dataplane::{Shared, Verdict, Worker};
use crate::dpdk::{self, Burst, HandoffRx, HandoffTx, Mempool, RxQueue, TxQueue};
use crate::packet;
use crate::stats::{Drop, WorkerStats};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

pub const BURST: usize = 32;
/// How long a worker waits on a full hand-off queue before giving up (µs).
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

/// What one worker owns; built on the main lcore and moved to the worker.
/// The port-queue and hand-off handles are exclusive: no other thread can use them.
pub struct WorkerSetup {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<Vec<WorkerStats>>,
    /// DPDK port id → configured port index (0xff: not ours).
    pub port_index: Vec<u8>,
    /// The receive queues this worker polls (the port comes with each mbuf).
    pub rx: Vec<RxQueue>,
    /// This worker's transmit queue on each port, by port index.
    pub tx: Vec<TxQueue>,
    /// Queues other workers hand frames to us through.
    pub inbound: Vec<HandoffRx>,
    /// Queue to each worker (None for ourselves).
    pub outbound: Vec<Option<HandoffTx>>,
    pub pool: Arc<Mempool>,
    pub quit: Arc<AtomicBool>,
    pub clock: Clock,
    pub tsc_hz: u64,
}

/// The sending side of a worker: tx queues, hand-off senders and their bursts.
struct Output<'a> {
    stats: &'a WorkerStats,
    tx: Vec<TxQueue>,
    tx_burst: Vec<Burst<BURST>>,
    outbound: Vec<Option<HandoffTx>>,
    handoff: Vec<Burst<BURST>>,
    handoff_patience_tsc: u64,
}

impl Output<'_> {
    #[inline]
    fn send(&mut self, verdict: Verdict, m: dpdk::Mbuf, peers_waiting: bool) {
        match verdict {
            Verdict::Tx(p) => {
                let p = usize::from(p);
                if self.tx_burst[p].is_full() {
                    self.flush_tx(p);
                }
                if self.tx_burst[p].push(m).is_err() {
                    self.stats.drop(Drop::TxFull);
                }
            }
            Verdict::Handoff(w) => {
                if self.handoff[w].is_full() {
                    self.flush_handoff(w, peers_waiting);
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
        let sent = self.tx[p].tx(&mut self.tx_burst[p]);
        self.stats.tx.add(sent as u64);
        for _ in self.tx_burst[p].drain() {
            self.stats.drop(Drop::TxFull);
        }
    }

    /// Moves frames for worker `w` into its hand-off queue. Whatever does not fit stays
    /// in the burst for the next attempt. If no other worker is waiting on us
    /// (our inbound queues are empty), wait a bounded moment for the owner to
    /// catch up; never when someone is, or two workers with full queues towards
    /// each other would both spin.
    fn flush_handoff(&mut self, w: usize, peers_waiting: bool) {
        let Some(queue) = &mut self.outbound[w] else { return };
        let n = queue.enqueue(&mut self.handoff[w]);
        self.stats.handoff_out.add(n as u64);
        if self.handoff[w].is_empty() || peers_waiting {
            return;
        }
        let give_up_at = dpdk::rdtsc() + self.handoff_patience_tsc;
        while !self.handoff[w].is_empty() && dpdk::rdtsc() < give_up_at {
            dpdk::pause();
            let n = queue.enqueue(&mut self.handoff[w]);
            self.stats.handoff_out.add(n as u64);
        }
    }

    fn flush_all(&mut self, peers_waiting: bool) {
        for p in 0..self.tx_burst.len() {
            if !self.tx_burst[p].is_empty() {
                self.flush_tx(p);
            }
        }
        for w in 0..self.handoff.len() {
            if !self.handoff[w].is_empty() {
                self.flush_handoff(w, peers_waiting);
            }
        }
    }
}

/// Hands a burst to the data plane's two-pass `process_burst` and sends
/// each frame where its verdict says. Multi-segment frames are not
/// processed (an empty frame stands in for them) and are counted drops.
#[inline]
fn process_burst(
    dp: &mut Worker,
    burst: &mut Burst<BURST>,
    port_index: &[u8],
    now: u32,
    handed_off: bool,
    out: &mut Output,
    peers_waiting: bool,
) {
    let n = burst.len();
    let mut frames: [&mut [u8]; BURST] = Default::default();
    let mut ports = [0u8; BURST];
    let mbufs = burst.as_mut_slice();
    for m in mbufs.iter() {
        m.prefetch();
    }
    for ((m, frame), port) in mbufs.iter_mut().zip(&mut frames).zip(&mut ports) {
        *port = port_index.get(usize::from(m.port())).copied().unwrap_or(0xff);
        if m.segments() == 1 {
            *frame = m.data_mut();
        }
    }
    let mut verdicts = [Verdict::Consumed; BURST];
    dp.process_burst(&mut frames[..n], &ports[..n], now, handed_off, &mut verdicts);
    for (m, v) in burst.drain().zip(verdicts) {
        let v = if m.segments() == 1 { v } else { Verdict::Drop(Drop::MultiSegment) };
        out.send(v, m, peers_waiting);
    }
}

/// Runs until `quit` is set. Returns 0 (the lcore function's status).
pub fn run(setup: WorkerSetup) -> i32 {
    let WorkerSetup { id, shared, stats, port_index, mut rx, tx, mut inbound, outbound, pool, quit, clock, tsc_hz } =
        setup;
    let stats = &stats[id];
    let mut dp = Worker::new(id, &shared, stats);
    let mut out = Output {
        stats,
        tx_burst: (0..tx.len()).map(|_| Burst::default()).collect(),
        tx,
        handoff: (0..outbound.len()).map(|_| Burst::default()).collect(),
        outbound,
        handoff_patience_tsc: tsc_hz * HANDOFF_PATIENCE_US / 1_000_000,
    };
    let mut burst: Burst<BURST> = Burst::default();
    let mut last_tick_ms = u32::MAX;
    while !quit.load(Relaxed) {
        let now = clock.now_ms();
        let peers_waiting = inbound.iter().any(|r| r.count() > 0);
        let mut got = 0;
        for q in &mut rx {
            let n = q.rx(&mut burst);
            if n == 0 {
                continue;
            }
            got += n;
            stats.rx.add(n as u64);
            process_burst(&mut dp, &mut burst, &port_index, now, false, &mut out, peers_waiting);
        }
        for queue in &mut inbound {
            if queue.dequeue(&mut burst) == 0 {
                continue;
            }
            got += burst.len();
            process_burst(&mut dp, &mut burst, &port_index, now, true, &mut out, peers_waiting);
        }
        out.flush_all(peers_waiting);

        // Once per millisecond: expire a slice of sessions; worker 0 also
        // asks for servers' MACs that are unknown or due for refresh.
        if now != last_tick_ms {
            last_tick_ms = now;
            dp.sweep(now);
            let tx = &mut out.tx;
            dp.due_solicits(now, |n, port| {
                let Some(mut m) = pool.alloc() else { return false };
                let Some(buf) = m.append(packet::MIN_FRAME as u16) else { return false };
                packet::build_arp_request(buf, port.mac, port.ip, n.ip);
                let mut b: Burst<1> = Burst::default();
                let _ = b.push(m);
                tx[usize::from(n.port)].tx(&mut b) == 1
            });
        }
        if got == 0 {
            dpdk::pause();
        }
    }
    out.flush_all(true);
    // Frames still waiting for a hand-off queue at shutdown are freed, and counted.
    for h in &mut out.handoff {
        for _ in h.drain() {
            stats.drop(Drop::HandoffFull);
        }
    }
    // Drain what others handed us, so the queues hold no mbufs when freed.
    for queue in &mut inbound {
        while queue.dequeue(&mut burst) > 0 {
            for _ in burst.drain() {
                stats.drop(Drop::HandoffFull); // handed to us, never processed
            }
        }
    }
    0
}
