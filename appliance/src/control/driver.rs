//! The control thread's runtime around [`Control`]: the cluster's two UDP
//! sockets (ring, and sync on the next port), the clocks, the stats line and
//! the status file, and the loop that feeds them to the control plane until
//! the appliance stops. The ring's socket is read first in every round, and
//! every round is bounded, so no amount of sync traffic delays a heartbeat.
//!
//! The loop never sleeps while there is work; when idle it waits on the
//! sockets, briefly at first (workers' events do not wake it, so it looks
//! again every 100 µs for 50 ms after the last worker event or sync
//! datagram), then longer. Ring heartbeats alone keep it in the long waits.
//!
//! It also starts the ports, once the control plane is ready for traffic:
//! a cluster member first joins the ring and pulls its siblings' sessions
//! (behind an LACP trunk, a started port is what brings the link up).

use super::agreement::Started;
use super::status::Status;
use super::{Channel, Control, Now};
use crate::ops::answer::{Answer, Answerer};
use crate::ops::protocol::{Request, Response};
use crate::ops::server::Call;
use crate::stats::{Snapshot, WorkerStats};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Options {
    pub stats_interval: Duration,
    /// Stop by itself after this long; None = until `quit`.
    pub duration: Option<Duration>,
    /// Rewritten (atomically) every stats interval and at exit.
    pub status_file: Option<PathBuf>,
    /// The control socket (`ops::server`), if any.
    pub control_socket: Option<PathBuf>,
    /// The Prometheus endpoint's address, if any.
    pub metrics: Option<std::net::SocketAddr>,
    /// The configuration file, which `ringlb reload` and SIGHUP re-read.
    pub config_path: Option<PathBuf>,
}

/// Longest a cluster member waits for the ring and its siblings' sessions
/// before it starts its ports anyway.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Datagrams taken per round from each socket before anything else runs.
const RING_DATAGRAMS_PER_ROUND: usize = 256;
const SYNC_DATAGRAMS_PER_ROUND: usize = 512;
/// Socket buffers of the sync channel: bursts of ~1.4 kB datagrams must not
/// overflow them while the control thread is busy.
const SYNC_SOCKET_BUFFER: usize = 16 << 20;
/// The workers have this long to sample their sessions for `ringlb
/// sessions` (the control socket's client waits 5 s).
const SAMPLE_DEADLINE: Duration = Duration::from_secs(3);
/// A reload the cluster has not decided by then is answered as undecided
/// (the control socket's client waits 30 s; the round's own limit is 10 s).
const RELOAD_DEADLINE: Duration = Duration::from_secs(15);
/// Idle waits: short while work came recently, longer after a quiet second.
const WAIT_BUSY: Duration = Duration::from_micros(100);
const WAIT_RECENT: Duration = Duration::from_millis(1);
const WAIT_IDLE: Duration = Duration::from_millis(10);

pub fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The cluster's sockets: the ring's, and sibling sync's.
pub struct Sockets {
    pub ring: UdpSocket,
    pub sync: UdpSocket,
}

impl Sockets {
    /// Binds both (sync on the ring's port + 1) and sizes the sync buffers:
    /// a privileged process may exceed the system's limit (SO_RCVBUFFORCE),
    /// others get what the limit allows. Returns the receive buffer size.
    pub fn bind(ring: std::net::SocketAddrV4) -> std::io::Result<(Sockets, usize)> {
        let s = Sockets { ring: UdpSocket::bind(ring)?, sync: UdpSocket::bind(super::sync_address(ring))? };
        for sock in [&s.ring, &s.sync] {
            sock.set_nonblocking(true)?;
        }
        let fd = s.sync.as_fd();
        if setsockopt(&fd, sockopt::RcvBufForce, &SYNC_SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &SYNC_SOCKET_BUFFER);
        }
        if setsockopt(&fd, sockopt::SndBufForce, &SYNC_SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &SYNC_SOCKET_BUFFER);
        }
        let rcv = getsockopt(&fd, sockopt::RcvBuf).unwrap_or(0);
        Ok((s, rcv))
    }
}

/// The control thread's clock and what it prints.
pub struct Driver<'a> {
    started: Instant,
    sockets: Option<Sockets>,
    stats: Vec<&'a WorkerStats>,
    /// Per server id: "service/ip:port".
    labels: Vec<String>,
    /// Set by SIGHUP: reload the configuration file.
    sighup: Option<Arc<AtomicBool>>,
    /// Reloads the cluster is deciding: the operator's call (None: SIGHUP),
    /// the round, and when to give up waiting.
    reloading: Vec<(Option<Call>, u64, Instant)>,
    /// The configuration change the labels and the answerer follow.
    config_epoch: u64,
    last: Snapshot,
    last_print: Instant,
    buf: Vec<u8>,
    /// The operator's requests (`ops`), and what answers them.
    ops: Option<(Receiver<Call>, Answerer)>,
    /// A `ringlb sessions` request waiting for the workers' sample (its id)
    /// until the deadline.
    sampling: Option<(Call, u32, Instant)>,
}

impl<'a> Driver<'a> {
    /// `sockets`: the cluster's (None when standalone).
    pub fn new(sockets: Option<Sockets>, stats: &'a [WorkerStats], labels: Vec<String>) -> Self {
        let stats: Vec<&WorkerStats> = stats.iter().collect();
        Driver {
            started: Instant::now(),
            last: Snapshot::take(&stats),
            sockets,
            stats,
            labels,
            sighup: None,
            reloading: Vec::new(),
            config_epoch: 0,
            last_print: Instant::now(),
            buf: vec![0; 65_536],
            ops: None,
            sampling: None,
        }
    }

    /// Answers the operator's requests from `inbox` from now on.
    pub fn serve_ops(&mut self, inbox: Receiver<Call>, answerer: Answerer) {
        self.ops = Some((inbox, answerer));
    }

    /// Reloads the configuration file on SIGHUP (`sighup` set) too.
    pub fn reload_on(&mut self, sighup: Arc<AtomicBool>) {
        self.sighup = Some(sighup);
    }

    /// Starts a reload (`ringlb reload` with its call, or SIGHUP): answered
    /// now when it is applied or refused here, else once the cluster decided.
    fn start_reload(&mut self, control: &mut Control, call: Option<Call>) {
        let done = match control.reload_file(self.now()) {
            Ok(Started::Applied(_, line)) => Ok(line),
            Ok(Started::Proposed(id)) => {
                log::info!("reload: proposed to the cluster (round {id})");
                self.reloading.push((call, id, Instant::now() + RELOAD_DEADLINE));
                return;
            }
            Err(e) => Err(e),
        };
        Self::answer_reload(call, done);
    }

    fn answer_reload(call: Option<Call>, done: Result<String, String>) {
        let response = match done {
            Ok(line) => Response::ok(line.into()),
            Err(e) => {
                log::error!("reload refused, the running configuration stays: {e}");
                Response::error(e)
            }
        };
        if let Some(call) = call {
            call.answer(response);
        }
    }

    /// Answers reloads the cluster decided; follows a configuration change
    /// (the operator's or the cluster's) in the labels and the answers.
    fn follow_reloads(&mut self, control: &mut Control) {
        if self.sighup.as_ref().is_some_and(|f| f.swap(false, Relaxed)) {
            self.start_reload(control, None);
        }
        let mut i = 0;
        while i < self.reloading.len() {
            let id = self.reloading[i].1;
            let done = match control.reload_outcome(id) {
                Some(done) => done,
                None if Instant::now() >= self.reloading[i].2 => Err(format!("round {id} undecided in time")),
                None => {
                    i += 1;
                    continue;
                }
            };
            let (call, ..) = self.reloading.swap_remove(i);
            Self::answer_reload(call, done);
        }
        if control.config_epoch() != self.config_epoch {
            self.config_epoch = control.config_epoch();
            let cfg = control.running_config();
            self.labels = (0..cfg.servers.len()).map(|i| cfg.server_label(i)).collect();
            if let Some((_, answerer)) = &mut self.ops {
                *answerer = Answerer::new(cfg);
            }
        }
    }

    /// Answers the requests waiting (a few per round: they are rare).
    fn answer_ops(&mut self, control: &mut Control) {
        self.follow_reloads(control);
        let Some((inbox, answerer)) = &self.ops else { return };
        if let Some((call, id, deadline)) = self.sampling.take() {
            match control.sampled(id) {
                Some(sessions) => call.answer(answerer.sessions(&sessions)),
                None if Instant::now() >= deadline => {
                    call.answer(Response::error("the workers did not finish the sample in time"));
                }
                None => self.sampling = Some((call, id, deadline)),
            }
        }
        let calls: Vec<Call> = (0..4).map_while(|_| inbox.try_recv().ok()).collect();
        for call in calls {
            if call.request == Request::Reload {
                self.start_reload(control, Some(call));
                continue;
            }
            let Some((_, answerer)) = &self.ops else { return };
            let snap = Snapshot::take(&self.stats);
            match answerer.answer(&call.request, self.started.elapsed().as_secs_f64(), &snap, control) {
                Answer::Now(response, note) => {
                    call.answer(response);
                    if let Some(n) = note {
                        log::info!("{n}");
                    }
                }
                Answer::Sample(id) => {
                    // One sample at a time: a newer one replaces the older.
                    if let Some((older, _, _)) = self.sampling.take() {
                        older.answer(Response::error("replaced by a newer sessions request"));
                    }
                    self.sampling = Some((call, id, Instant::now() + SAMPLE_DEADLINE));
                }
            }
        }
    }

    pub fn now(&self) -> Now {
        Now { ms: self.started.elapsed().as_millis() as u64, wall_us: wall_us() }
    }

    /// Runs the control plane until `quit` is set or `opts.duration` passes;
    /// calls `start_ports` once it is ready for traffic.
    pub fn run(
        &mut self,
        control: &mut Control,
        quit: &AtomicBool,
        opts: &Options,
        start_ports: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        let mut last_busy = Instant::now();
        let mut ports_up = false;
        while !quit.load(Relaxed) && opts.duration.is_none_or(|d| self.started.elapsed() < d) {
            if !ports_up && (control.ready_for_traffic() || self.started.elapsed() >= READY_LIMIT) {
                if !control.ready_for_traffic() {
                    log::warn!("not in sync with the siblings after {READY_LIMIT:?}: starting the ports anyway");
                }
                start_ports()?;
                ports_up = true;
                log::info!("ports started after {} ms", self.started.elapsed().as_millis());
            }
            let now = self.now();
            let mut busy = self.receive(control, now);
            busy |= control.poll_workers(now) > 0;
            if control.poll_timeout() <= now.ms {
                control.handle_timeout(now);
            }
            self.transmit(control);
            self.answer_ops(control);
            let mut noted = false;
            while let Some(n) = control.poll_note() {
                log::log!(n.level, "{}", n.text);
                noted = true;
            }
            if noted {
                // Something changed (a VIP, a server's health): the status
                // file says so now, not at the next stats interval.
                self.report(control, opts, false);
            }
            if !opts.stats_interval.is_zero() && self.last_print.elapsed() >= opts.stats_interval {
                self.report(control, opts, true);
            }
            if busy {
                last_busy = Instant::now();
                continue;
            }
            let quiet = last_busy.elapsed();
            let mut wait = if quiet < Duration::from_millis(50) {
                WAIT_BUSY
            } else if quiet < Duration::from_secs(1) {
                WAIT_RECENT
            } else {
                WAIT_IDLE
            };
            let timer = control.poll_timeout().saturating_sub(self.now().ms);
            wait = wait.min(Duration::from_millis(timer));
            self.wait(wait);
        }
        Ok(())
    }

    /// Hands the datagrams waiting on the sockets to the control plane:
    /// the ring's first, then a bounded share of sync's. True if sync
    /// datagrams came (busy: more work is likely to follow).
    fn receive(&mut self, control: &mut Control, now: Now) -> bool {
        let Some(s) = &self.sockets else { return false };
        let mut got = false;
        for (sock, max, is_sync) in
            [(&s.ring, RING_DATAGRAMS_PER_ROUND, false), (&s.sync, SYNC_DATAGRAMS_PER_ROUND, true)]
        {
            for _ in 0..max {
                match sock.recv_from(&mut self.buf) {
                    Ok((n, SocketAddr::V4(from))) => {
                        control.handle_datagram(now, from, &self.buf[..n]);
                        got |= is_sync;
                    }
                    Ok(_) => {} // IPv6 senders are not members
                    // WouldBlock, or an ICMP error from a dead peer: silence is the protocol's business.
                    Err(_) => break,
                }
            }
        }
        got
    }

    fn transmit(&mut self, control: &mut Control) {
        while let Some((channel, t)) = control.poll_transmit() {
            if let Some(s) = &self.sockets {
                let sock = if channel == Channel::Ring { &s.ring } else { &s.sync };
                // A failed send is like a lost datagram.
                let _ = sock.send_to(&t.bytes, t.to);
            }
        }
    }

    /// Waits until a datagram arrives on either socket or `d` passes.
    fn wait(&mut self, d: Duration) {
        let Some(s) = &self.sockets else {
            std::thread::sleep(d);
            return;
        };
        let mut fds = [PollFd::new(s.ring.as_fd(), PollFlags::POLLIN), PollFd::new(s.sync.as_fd(), PollFlags::POLLIN)];
        // An error (a signal) only ends the wait early.
        let _ = ppoll(&mut fds, Some(TimeSpec::from_duration(d)), None);
    }

    /// Prints the stats line (if `line`) and rewrites the status file.
    pub fn report(&mut self, control: &Control, opts: &Options, line: bool) {
        let dt = self.last_print.elapsed().as_secs_f64();
        self.last_print = Instant::now();
        let t = self.started.elapsed().as_secs_f64();
        let snap = Snapshot::take(&self.stats);
        let status = Status::new(t, &snap, &self.labels, control);
        crate::ops::telemetry::publish(&snap, &self.labels);
        if line {
            log::info!("{}{}", crate::app::stats_line(t, &snap, &self.last, dt, &self.labels), status.cluster_line());
        }
        if let Some(path) = &opts.status_file {
            write_atomically(path, &status);
        }
        self.last = snap;
    }
}

fn write_atomically(path: &PathBuf, status: &Status) {
    let Ok(text) = serde_json::to_string_pretty(status) else { return };
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
