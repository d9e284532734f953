//! The worker lcore's main loop: rx burst → process → tx burst, plus the
//! hand-off queues between workers, the control thread's commands, first
//! packets held for the siblings, a little periodic housekeeping, and (if
//! configured) an idle back-off. One obvious loop, in the spirit of DPDK's
//! l3fwd.

use crate::config::IdleMode;
use crate::control::channel::{Command, CommandRx, EventTx};
use crate::dataplane::{Shared, Verdict, Worker};
use crate::dpdk::{self, Burst, HandoffRx, HandoffTx, Mbuf, Mempool, RxQueue, TxQueue};
use crate::packet;
use crate::stats::{DropReason, WorkerStats};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub const BURST: usize = 32;
/// How long a worker waits on a full hand-off queue before giving up (µs).
const HANDOFF_PATIENCE_US: u64 = 200;
/// Commands applied per loop iteration (packets are not starved by a flood),
/// in bursts whose session slots are prefetched together.
const COMMANDS_PER_LOOP: usize = 256;
const COMMAND_BURST: usize = 32;
/// First packets a worker holds for the siblings at most; more go out at once.
const MAX_HELD: usize = 4096;
/// Packets of established flows a worker holds while their VIP's sessions
/// are rebuilt from the servers, at most; more are dropped as `no_session`
/// (TCP sends them again).
const MAX_AWAITING: usize = 4096;
/// How long such a packet waits at most. The control thread ends a rebuild
/// within `control::rebuild::ANSWER_WAIT_MS` (1 s); this bounds the wait
/// should its word be late.
const AWAIT_MS: u32 = 1500;
/// Adaptive idle: empty polls before the first sleep, and the sleep range
/// (doubling while idle, back to polling on the first packet). DPDK's
/// l3fwd-power backs off the same way before it sleeps on interrupts.
const IDLE_POLLS: u32 = 256;
/// How often a worker reads the ports' kernel interfaces (each read is a
/// syscall; what comes that way is control traffic).
const KERNEL_POLL_US: u64 = 250;
const IDLE_SLEEP_MIN_US: u64 = 16;
const IDLE_SLEEP_MAX_US: u64 = 512;

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
    /// Per port: this worker's queue to the port's kernel interface (None:
    /// the port has none).
    pub kernel_tx: Vec<Option<TxQueue>>,
    /// This worker's queues from the kernel interfaces, with their port.
    pub kernel_rx: Vec<(RxQueue, u8)>,
    /// The control thread's queues.
    pub commands: CommandRx,
    pub events: EventTx,
    pub idle: IdleMode,
    /// Session and lock tables, allocated before the ports start.
    pub tables: crate::dataplane::Tables,
}

/// First packets of new sessions, held until the siblings have the session
/// (or the hold time runs out), in the order their events were sent.
struct Held {
    packets: VecDeque<(u64, u32, u8, Mbuf)>,
    hold_ms: u32,
}

impl Held {
    fn new(hold_ms: u32) -> Held {
        Held { packets: VecDeque::with_capacity(MAX_HELD), hold_ms }
    }

    /// Holds `m` (its tag, when it arrived, its port); false if full.
    fn hold(&mut self, tag: u64, now_ms: u32, port: u8, m: Mbuf) -> Result<(), Mbuf> {
        if self.packets.len() >= MAX_HELD {
            return Err(m);
        }
        self.packets.push_back((tag, now_ms, port, m));
        Ok(())
    }

    /// Sends the packets the siblings have confirmed (tag ≤ `upto`), and
    /// those held past the hold time (counted).
    fn release(&mut self, upto: u64, now_ms: u32, out: &mut Output) {
        while let Some(&(tag, since, _, _)) = self.packets.front() {
            let late = now_ms.wrapping_sub(since) >= self.hold_ms;
            if tag > upto && !late {
                break;
            }
            if tag > upto {
                out.stats.defer_timeouts.inc();
            }
            if let Some((_, _, port, m)) = self.packets.pop_front() {
                out.send(Verdict::Tx(port), m, true);
            }
        }
    }
}

/// Packets of established flows that met no session while their VIP's
/// sessions were being rebuilt (`Verdict::Await`): untouched, in arrival
/// order, each processed again every millisecond until its session is
/// there, the rebuild is over, or `AWAIT_MS` has passed.
struct Awaiting {
    packets: VecDeque<(u32, Mbuf)>,
}

impl Awaiting {
    fn new() -> Awaiting {
        Awaiting { packets: VecDeque::with_capacity(MAX_AWAITING) }
    }

    fn hold(&mut self, now_ms: u32, m: Mbuf, stats: &WorkerStats) -> Result<(), Mbuf> {
        if self.packets.len() >= MAX_AWAITING {
            return Err(m);
        }
        stats.awaited.inc();
        self.packets.push_back((now_ms, m));
        Ok(())
    }

    /// Processes every waiting packet again: it goes where its verdict now
    /// says, waits on, or is dropped once it has waited `AWAIT_MS`.
    fn retry(&mut self, dp: &mut Worker, port_index: &[u8], now_ms: u32, out: &mut Output, held: &mut Held) {
        for _ in 0..self.packets.len() {
            let Some((since, mut m)) = self.packets.pop_front() else { break };
            let port = port_index.get(usize::from(m.port())).copied().unwrap_or(0xff);
            match dp.process(m.data_mut(), port, now_ms, true) {
                Verdict::Await if now_ms.wrapping_sub(since) < AWAIT_MS => self.packets.push_back((since, m)),
                Verdict::Await => {
                    out.stats.await_timeouts.inc();
                    out.send(Verdict::Drop(DropReason::NoSession), m, true);
                }
                v => send_or_hold(v, m, now_ms, out, held, self, true),
            }
        }
    }
}

/// Sends a processed frame where its verdict says, or holds it (first
/// packets for the siblings; established flows for their rebuilt session).
fn send_or_hold(
    v: Verdict,
    m: Mbuf,
    now: u32,
    out: &mut Output,
    held: &mut Held,
    awaiting: &mut Awaiting,
    peers_waiting: bool,
) {
    match v {
        Verdict::Defer { port, tag } => {
            out.stats.deferred.inc();
            if let Err(m) = held.hold(tag, now, port, m) {
                out.stats.defer_full.inc();
                out.send(Verdict::Tx(port), m, peers_waiting);
            }
        }
        Verdict::Await => {
            if let Err(m) = awaiting.hold(now, m, out.stats) {
                out.send(Verdict::Drop(DropReason::NoSession), m, peers_waiting);
            }
        }
        v => out.send(v, m, peers_waiting),
    }
}

/// The sending side of a worker: tx queues, hand-off senders and their bursts.
struct Output<'a> {
    stats: &'a WorkerStats,
    tx: Vec<TxQueue>,
    tx_burst: Vec<Burst<BURST>>,
    /// Per port: its kernel interface's queue, and the burst for it.
    kernel: Vec<Option<(TxQueue, Burst<BURST>)>>,
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
                    self.stats.drop(DropReason::TxFull);
                }
            }
            Verdict::Handoff(w) => {
                if self.handoff[w].is_full() {
                    self.flush_handoff(w, peers_waiting);
                }
                // Still full: the owner is overloaded; drop this frame, keep the queued ones.
                if self.handoff[w].push(m).is_err() {
                    self.stats.drop(DropReason::HandoffFull);
                }
            }
            Verdict::Kernel(p) => match self.kernel.get_mut(usize::from(p)) {
                Some(Some((q, burst))) => {
                    if burst.is_full() {
                        Self::flush_kernel(q, burst, self.stats);
                    }
                    if burst.push(m).is_err() {
                        self.stats.drop(DropReason::TxFull);
                    }
                }
                _ => self.stats.drop(DropReason::NoService),
            },
            Verdict::Consumed => {}
            Verdict::Drop(d) => self.stats.drop(d),
            // Frames that wait are taken out before they get here.
            Verdict::Await => self.stats.drop(DropReason::NoSession),
            // Deferred frames are taken out before they get here.
            Verdict::Defer { port, .. } => self.send(Verdict::Tx(port), m, peers_waiting),
        }
    }

    fn flush_tx(&mut self, p: usize) {
        let bytes = self.tx_burst[p].bytes();
        let sent = self.tx[p].tx(&mut self.tx_burst[p]);
        self.stats.tx.add(sent as u64);
        self.stats.tx_bytes.add(bytes - self.tx_burst[p].bytes());
        for _ in self.tx_burst[p].drain() {
            self.stats.drop(DropReason::TxFull);
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

    /// Writes a burst to a kernel interface (what does not fit: dropped, counted).
    fn flush_kernel(q: &mut TxQueue, burst: &mut Burst<BURST>, stats: &WorkerStats) {
        let sent = q.tx(burst);
        stats.kernel_in.add(sent as u64);
        for _ in burst.drain() {
            stats.drop(DropReason::TxFull);
        }
    }

    fn flush_all(&mut self, peers_waiting: bool) {
        for p in 0..self.tx_burst.len() {
            if !self.tx_burst[p].is_empty() {
                self.flush_tx(p);
            }
        }
        for (q, burst) in self.kernel.iter_mut().flatten() {
            if !burst.is_empty() {
                Self::flush_kernel(q, burst, self.stats);
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
#[allow(clippy::too_many_arguments)]
fn process_burst(
    dp: &mut Worker,
    burst: &mut Burst<BURST>,
    port_index: &[u8],
    now: u32,
    handed_off: bool,
    out: &mut Output,
    held: &mut Held,
    awaiting: &mut Awaiting,
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
        match v {
            _ if m.segments() != 1 => out.send(Verdict::Drop(DropReason::MultiSegment), m, peers_waiting),
            v => send_or_hold(v, m, now, out, held, awaiting, peers_waiting),
        }
    }
}

/// Sends the frames the data plane wrote of its own (`Worker::drain_frames`:
/// a proxied connection's replayed SYN, ACKs, window updates, RSTs) with
/// the burst's frames.
fn send_own_frames(dp: &mut Worker, pool: &Mempool, out: &mut Output, peers_waiting: bool) {
    dp.drain_frames(|port, bytes| {
        let Some(mut m) = pool.alloc() else { return false };
        let Some(buf) = u16::try_from(bytes.len()).ok().and_then(|n| m.append(n)) else { return false };
        buf.copy_from_slice(bytes);
        out.send(Verdict::Tx(port), m, peers_waiting);
        true
    });
}

/// Applies up to `COMMANDS_PER_LOOP` commands, a prefetched burst at a
/// time (sibling installs land in a table far larger than the cache).
/// Releases of held packets only raise `released`. Returns how many.
fn apply_commands(dp: &mut Worker, commands: &mut CommandRx, now: u32, released: &mut u64) -> usize {
    let mut done = 0;
    while done < COMMANDS_PER_LOOP {
        let mut burst = [Command::Release { upto: 0 }; COMMAND_BURST];
        let mut n = 0;
        while n < COMMAND_BURST {
            let Some(c) = commands.pop() else { break };
            dp.prefetch_for(&c);
            burst[n] = c;
            n += 1;
        }
        for c in &burst[..n] {
            match *c {
                Command::Release { upto } => *released = (*released).max(upto),
                Command::Switch => {
                    if let Some(next) = commands.take_switch() {
                        let old = dp.switch_routing(next);
                        commands.give_back(old);
                    }
                }
                c => dp.apply(c, now),
            }
        }
        done += n;
        if n < COMMAND_BURST {
            break;
        }
    }
    done
}

/// Runs until `quit` is set. Returns 0 (the lcore function's status).
pub fn run(setup: WorkerSetup) -> i32 {
    let WorkerSetup {
        id,
        shared,
        stats,
        port_index,
        mut rx,
        tx,
        mut inbound,
        outbound,
        pool,
        quit,
        clock,
        tsc_hz,
        kernel_tx,
        mut kernel_rx,
        mut commands,
        events,
        idle,
        tables,
    } = setup;
    let stats = &stats[id];
    let mut dp = Worker::with_tables(id, &shared, stats, tables);
    dp.connect(events);
    let mut held = Held::new(shared.defer_ms.unwrap_or(0));
    let mut awaiting = Awaiting::new();
    let mut released = 0u64;
    let mut empty_polls = 0u32;
    let mut idle_sleep_us = IDLE_SLEEP_MIN_US;
    let mut out = Output {
        stats,
        tx_burst: (0..tx.len()).map(|_| Burst::default()).collect(),
        tx,
        handoff: (0..outbound.len()).map(|_| Burst::default()).collect(),
        outbound,
        kernel: kernel_tx.into_iter().map(|q| q.map(|q| (q, Burst::default()))).collect(),
        handoff_patience_tsc: tsc_hz * HANDOFF_PATIENCE_US / 1_000_000,
    };
    let mut burst: Burst<BURST> = Burst::default();
    let mut last_tick_ms = u32::MAX;
    // The kernel interfaces are read every KERNEL_POLL_US.
    let kernel_poll_tsc = tsc_hz * KERNEL_POLL_US / 1_000_000;
    let mut next_kernel_poll = 0u64;
    while !quit.load(Relaxed) {
        let now = clock.now_ms();
        if !shared.ports_up() {
            // A cluster member waits for its siblings' sessions before it
            // takes traffic; meanwhile it serves the control thread.
            while apply_commands(&mut dp, &mut commands, now, &mut released) > 0 {}
            dp.sweep(now);
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let peers_waiting = inbound.iter().any(|r| r.count() > 0);
        let mut got = 0;
        for q in &mut rx {
            let n = q.rx(&mut burst);
            if n == 0 {
                continue;
            }
            got += n;
            stats.rx.add(n as u64);
            stats.rx_bytes.add(burst.bytes());
            process_burst(
                &mut dp,
                &mut burst,
                &port_index,
                now,
                false,
                &mut out,
                &mut held,
                &mut awaiting,
                peers_waiting,
            );
        }
        for queue in &mut inbound {
            if queue.dequeue(&mut burst) == 0 {
                continue;
            }
            got += burst.len();
            process_burst(
                &mut dp,
                &mut burst,
                &port_index,
                now,
                true,
                &mut out,
                &mut held,
                &mut awaiting,
                peers_waiting,
            );
        }
        if !kernel_rx.is_empty() && dpdk::rdtsc() >= next_kernel_poll {
            next_kernel_poll = dpdk::rdtsc() + kernel_poll_tsc;
            for (q, port) in &mut kernel_rx {
                let n = q.rx(&mut burst);
                got += n;
                stats.kernel_out.add(n as u64);
                // The kernel's frames leave by their port as they are (the
                // tap has the port's MAC and address).
                for m in burst.drain() {
                    out.send(Verdict::Tx(*port), m, peers_waiting);
                }
            }
        }
        got += apply_commands(&mut dp, &mut commands, now, &mut released);
        if !held.packets.is_empty() {
            held.release(released, now, &mut out);
        }
        send_own_frames(&mut dp, &pool, &mut out, peers_waiting);
        out.flush_all(peers_waiting);

        // Once per millisecond: expire a slice of sessions; worker 0 also
        // asks for servers' MACs that are unknown or due for refresh.
        if now != last_tick_ms {
            last_tick_ms = now;
            if !awaiting.packets.is_empty() {
                awaiting.retry(&mut dp, &port_index, now, &mut out, &mut held);
            }
            dp.sweep(now);
            // What the sweep's timers sent (replayed SYNs, RSTs).
            send_own_frames(&mut dp, &pool, &mut out, peers_waiting);
            out.flush_all(peers_waiting);
            let tx = &mut out.tx;
            dp.due_solicits(now, |n, port| {
                let Some(mut m) = pool.alloc() else { return false };
                let Some(buf) = m.append(packet::MIN_FRAME as u16) else { return false };
                packet::build_arp_request(buf, port.mac, port.ip, n.ip);
                let mut b: Burst<1> = Burst::default();
                let _ = b.push(m);
                tx[usize::from(n.port)].tx(&mut b) == 1
            });
            dp.due_probes(now, |p| {
                let Some(mut m) = pool.alloc() else { return false };
                let Some(buf) = m.append(packet::MIN_FRAME as u16) else { return false };
                packet::build_tcp_syn(buf, p.src_mac, p.dst_mac, p.src_ip, p.dst_ip, p.src_port, p.dst_port, p.seq);
                let mut b: Burst<1> = Burst::default();
                let _ = b.push(m);
                tx[usize::from(p.port)].tx(&mut b) == 1
            });
            dp.due_announcements(now, |i, port, vip| {
                let Some(mut m) = pool.alloc() else { return false };
                let Some(buf) = m.append(packet::MIN_FRAME as u16) else { return false };
                packet::build_gratuitous_arp(buf, port.mac, vip);
                let mut b: Burst<1> = Burst::default();
                let _ = b.push(m);
                tx[usize::from(i)].tx(&mut b) == 1
            });
        }
        if got > 0 {
            empty_polls = 0;
            idle_sleep_us = IDLE_SLEEP_MIN_US;
        } else if idle == IdleMode::Adaptive
            && held.packets.is_empty()
            && awaiting.packets.is_empty()
            && empty_polls >= IDLE_POLLS
        {
            // Idle: sleep a little longer each time (the NIC's queue holds
            // what arrives meanwhile); the first packet brings back polling.
            std::thread::sleep(Duration::from_micros(idle_sleep_us));
            idle_sleep_us = (idle_sleep_us * 2).min(IDLE_SLEEP_MAX_US);
        } else {
            empty_polls += 1;
            dpdk::pause();
        }
    }
    // Held first packets go out before the ports close; packets still
    // waiting for a session are dropped (counted).
    held.release(u64::MAX, clock.now_ms(), &mut out);
    for (_, m) in awaiting.packets.drain(..) {
        out.send(Verdict::Drop(DropReason::NoSession), m, true);
    }
    out.flush_all(true);
    // Frames still waiting for a hand-off queue at shutdown are freed, and counted.
    for h in &mut out.handoff {
        for _ in h.drain() {
            stats.drop(DropReason::HandoffFull);
        }
    }
    for (q, _) in &mut kernel_rx {
        // The kernel's frames after the last burst: freed (bounded: the
        // kernel may still be sending).
        for _ in 0..64 {
            if q.rx(&mut burst) == 0 {
                break;
            }
            for _ in burst.drain() {}
        }
    }
    // Drain what others handed us, so the queues hold no mbufs when freed.
    for queue in &mut inbound {
        while queue.dequeue(&mut burst) > 0 {
            for _ in burst.drain() {
                stats.drop(DropReason::HandoffFull); // handed to us, never processed
            }
        }
    }
    0
}
