//! `ringlb run`: EAL and port setup in one place, worker launch, then the
//! control plane (`control::driver`) on the main lcore, and an orderly
//! shutdown that leaves no hugepage files behind.

use crate::config::Config;
use crate::control::channel::{worker_channel, QUEUE_LEN};
use crate::control::driver::{self, Driver, Sockets};
use crate::control::Control;
use crate::dataplane::Shared;
use crate::dpdk::{handoff_queue, Eal, HandoffRx, HandoffTx, Mempool, Port, RxQueue, TxQueue};
use crate::session::{Entry, SessionTable};
use crate::stats::{DropReason, Snapshot, WorkerStats};
use crate::worker::{self, Clock, WorkerSetup};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

pub use crate::control::driver::Options as RunOptions;

use crate::config::{HANDOFF_QUEUE_LEN, MBUF_HEADROOM, PORT_QUEUE_DESC as RX_DESC};

/// One port's queue handles; each is taken by exactly one worker.
type PortQueues = (Vec<Option<RxQueue>>, Vec<Option<TxQueue>>);

/// How long the workers keep serving the kernel interfaces after BIRD
/// was told to withdraw the VIPs (its UPDATE goes out through them).
const WITHDRAW_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// The EAL command line for a configuration.
pub fn eal_args(cfg: &Config) -> Vec<String> {
    let e = &cfg.eal;
    let mut lcores = format!("0@{}", e.control_core);
    for (i, c) in e.worker_cores.iter().enumerate() {
        lcores.push_str(&format!(",{}@{}", i + 1, c));
    }
    let mut a = vec!["ringlb".to_string(), "--lcores".into(), lcores];
    // --in-memory: hugepages without files left behind, no shared config, so
    // several ringlb processes can run on one host. --no-huge implies legacy
    // memory, which EAL refuses to combine with --in-memory: there --no-shconf
    // gives the same independence.
    if e.hugepages {
        a.push("--in-memory".into());
    } else {
        a.push("--no-huge".into());
        a.push("--no-shconf".into());
    }
    if let Some(m) = e.memory_mb {
        a.push("-m".into());
        a.push(m.to_string());
    }
    let mut any_pci = false;
    for p in &cfg.ports {
        if p.is_vdev() {
            a.push("--vdev".into());
        } else {
            any_pci = true;
            a.push("-a".into());
        }
        a.push(p.device.clone());
    }
    // Each kernel interface: a tap with the port's MAC (`ports[].kernel`).
    for (i, p) in cfg.ports.iter().enumerate() {
        if let (Some(k), Some(mac)) = (&p.kernel, p.mac) {
            a.push("--vdev".into());
            a.push(format!("{},iface={},mac={}", tap_vdev(i), k.tap, fmt_mac(&mac)));
        }
    }
    if !any_pci {
        a.push("--no-pci".into());
    }
    a.push("--log-level".into());
    a.push("*:warning".into());
    a.extend(e.extra_args.iter().cloned());
    a
}

/// The DPDK name of port `i`'s kernel interface.
fn tap_vdev(i: usize) -> String {
    format!("net_tap{i}")
}

/// Gives port `i`'s kernel interface the port's address and brings it up.
fn configure_tap(cfg: &Config, i: usize) -> Result<(), String> {
    let (p, Some(k)) = (&cfg.ports[i], &cfg.ports[i].kernel) else { return Ok(()) };
    if !k.configure {
        return Ok(());
    }
    let address = format!("{}/{}", std::net::Ipv4Addr::from(p.ip), p.prefix_len);
    for args in
        [vec!["addr", "replace", address.as_str(), "dev", k.tap.as_str()], vec!["link", "set", k.tap.as_str(), "up"]]
    {
        let out = std::process::Command::new("ip").args(&args).output().map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    log::info!("port {i}: kernel interface {} up with {address}", k.tap);
    Ok(())
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn run(cfg: &Config, opts: &RunOptions) -> Result<(), String> {
    let quit = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&quit)).map_err(|e| format!("installing signal handler: {e}"))?;
    }
    // SIGHUP: reload the configuration file (`ringlb reload` does the same).
    let sighup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&sighup))
        .map_err(|e| format!("installing signal handler: {e}"))?;

    // The operator's listeners first: a socket another appliance holds
    // is an error before anything else starts.
    let (ops_server, ops_inbox) = crate::ops::server::start(opts.control_socket.as_deref(), opts.metrics)?;
    if let Some(p) = &opts.control_socket {
        log::info!("control socket {}", p.display());
    }
    if let Some(a) = opts.metrics {
        log::info!("metrics at http://{a}/metrics");
    }
    let args = eal_args(cfg);
    log::info!("config version {} (BLAKE3 of the effective configuration; `ringlb check` prints it)", cfg.version());
    let eal = Eal::init(&args).map_err(|e| format!("{e}\nEAL arguments were: {}", args[1..].join(" ")))?;
    let result = run_with_eal(&eal, cfg, opts, (&quit, &sighup), ops_inbox);
    eal.cleanup();
    drop(ops_server);
    result
}

fn run_with_eal(
    eal: &Eal,
    cfg: &Config,
    opts: &RunOptions,
    (quit, sighup): (&Arc<AtomicBool>, &Arc<AtomicBool>),
    ops_inbox: std::sync::mpsc::Receiver<crate::ops::server::Call>,
) -> Result<(), String> {
    let workers = cfg.eal.worker_cores.len();
    // Not fatal: without telemetry the appliance still runs (and says so).
    if let Err(e) = crate::ops::telemetry::register() {
        log::warn!("no DPDK telemetry commands: {e}");
    }
    // The cluster's addresses are kernel UDP sockets: bind them before anything starts.
    let cluster_sockets = match &cfg.cluster {
        None => None,
        Some(c) => {
            let (s, rcvbuf) = Sockets::bind(c.address).map_err(|e| {
                format!("cluster.address {} (and {} for sync): {e}", c.address, crate::control::sync_address(c.address))
            })?;
            log::info!(
                "cluster sockets: ring {}, sync {} (receive buffer {} KiB)",
                c.address,
                crate::control::sync_address(c.address),
                rcvbuf / 1024
            );
            Some(s)
        }
    };
    let mut ports = Vec::new();
    for (i, pc) in cfg.ports.iter().enumerate() {
        let port = Port::by_name(pc.dpdk_name()).map_err(|e| format!("ports[{i}]: {e}"))?;
        ports.push(port);
    }
    // Kernel interfaces: port index and its tap.
    let mut taps = Vec::new();
    for (i, pc) in cfg.ports.iter().enumerate() {
        if pc.kernel.is_some() {
            let tap = Port::by_name(&tap_vdev(i)).map_err(|e| format!("ports[{i}].kernel: {e}"))?;
            taps.push((i, tap));
        }
    }
    let socket = ports[0].socket();
    let queues: Vec<(u16, u16)> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let info = p.info().map_err(|e| format!("ports[{i}]: {e}"))?;
            if usize::from(info.max_tx_queues) < workers {
                return Err(format!(
                    "ports[{i}] ({}): driver {} offers {} tx queues, ringlb needs one per worker ({workers})",
                    cfg.ports[i].device, info.driver, info.max_tx_queues
                ));
            }
            let rxq = info.max_rx_queues.clamp(1, workers as u16);
            Ok((rxq, workers as u16))
        })
        .collect::<Result<_, String>>()?;
    let mbufs: u32 = queues.iter().map(|&(r, t)| u32::from(r + t) * u32::from(RX_DESC)).sum::<u32>()
        + (taps.len() * 2 * workers) as u32 * u32::from(RX_DESC)
        + (workers * (workers - 1)) as u32 * HANDOFF_QUEUE_LEN
        + MBUF_HEADROOM as u32;
    let mbufs = mbufs.max(cfg.eal.mbufs.unwrap_or(0));
    let pool = Arc::new(Mempool::new("ringlb_mbufs", mbufs, 256, socket).map_err(|e| e.to_string())?);
    let mut macs = Vec::new();
    // Per port: its rx and tx queue handles, handed out to workers below.
    let mut port_queues: Vec<PortQueues> = Vec::new();
    let mut configured = Vec::new();
    for (i, (port, &(rxq, txq))) in ports.into_iter().zip(&queues).enumerate() {
        let (port, rx, tx) = port.configure(rxq, txq, RX_DESC, &pool).map_err(|e| format!("ports[{i}]: {e}"))?;
        port_queues.push((rx.into_iter().map(Some).collect(), tx.into_iter().map(Some).collect()));
        let mac = match cfg.ports[i].mac {
            Some(m) => m,
            None => port.mac().map_err(|e| e.to_string())?,
        };
        log::info!(
            "port {i}: {} (dpdk port {}) mac {} ip {}/{} rx queues {rxq} tx queues {txq}",
            cfg.ports[i].device,
            port.id(),
            fmt_mac(&mac),
            std::net::Ipv4Addr::from(cfg.ports[i].ip),
            cfg.ports[i].prefix_len
        );
        macs.push(mac);
        configured.push(port);
    }
    let ports = configured;
    // Per port: its kernel interface's queues (one rx and one tx per worker).
    let mut tap_queues: Vec<Option<PortQueues>> = (0..ports.len()).map(|_| None).collect();
    let mut tap_ports = Vec::new();
    for (i, tap) in taps {
        let w = workers as u16;
        let (tap, rx, tx) =
            tap.configure_with(w, w, RX_DESC, &pool, false).map_err(|e| format!("ports[{i}].kernel: {e}"))?;
        tap_queues[i] = Some((rx.into_iter().map(Some).collect(), tx.into_iter().map(Some).collect()));
        tap_ports.push((i, tap));
    }

    let shared = Arc::new(Shared::new(cfg, &macs));
    let stats: Arc<Vec<WorkerStats>> =
        Arc::new((0..workers).map(|_| WorkerStats::new(shared.server_capacity)).collect());
    let mut port_index = vec![0xffu8; ports.iter().map(|p| usize::from(p.id())).max().unwrap_or(0) + 1];
    for (i, p) in ports.iter().enumerate() {
        port_index[usize::from(p.id())] = i as u8;
    }
    // senders[from][to] and receivers[to][from] are the two ends of one hand-off queue.
    let mut senders: Vec<Vec<Option<HandoffTx>>> = (0..workers).map(|_| (0..workers).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<HandoffRx>> = (0..workers).map(|_| Vec::new()).collect();
    for (from, row) in senders.iter_mut().enumerate() {
        for to in (0..workers).filter(|&to| to != from) {
            let (tx, rx) =
                handoff_queue(&format!("ho_{from}_{to}"), HANDOFF_QUEUE_LEN, socket).map_err(|e| e.to_string())?;
            row[to] = Some(tx);
            receivers[to].push(rx);
        }
    }
    // Every worker's tables, before any worker or port starts: memory the
    // machine does not have is an error here, not an abort later.
    let mut tables = Vec::new();
    for id in 0..workers {
        match crate::dataplane::Tables::allocate(&shared, id) {
            Ok(t) => tables.push(t),
            Err(e) => {
                eal.stop_ports(&ports);
                return Err(format!("worker {id}: {e} (sessions.capacity {})", cfg.session_capacity));
            }
        }
    }
    let mut tables = tables.into_iter();
    let clock = Clock::new(eal.tsc_hz());
    let worker_quit = Arc::new(AtomicBool::new(false));
    let mut control_ports = Vec::new();
    for (id, (outbound, inbound)) in senders.into_iter().zip(receivers).enumerate() {
        let (port, commands, events) = worker_channel(QUEUE_LEN);
        control_ports.push(port);
        // Worker `id` polls rx queue `id` of each port that has one, and owns tx queue `id` of every port.
        let rx = port_queues.iter_mut().filter_map(|(rx, _)| rx.get_mut(id)?.take()).collect();
        let tx = port_queues.iter_mut().filter_map(|(_, tx)| tx.get_mut(id)?.take()).collect();
        let kernel_tx = tap_queues.iter_mut().map(|q| q.as_mut().and_then(|(_, tx)| tx.get_mut(id)?.take())).collect();
        let kernel_rx = tap_queues
            .iter_mut()
            .enumerate()
            .filter_map(|(p, q)| Some((q.as_mut()?.0.get_mut(id)?.take()?, p as u8)))
            .collect();
        let setup = WorkerSetup {
            id,
            shared: Arc::clone(&shared),
            stats: Arc::clone(&stats),
            port_index: port_index.clone(),
            rx,
            tx,
            inbound,
            outbound,
            pool: Arc::clone(&pool),
            quit: Arc::clone(&worker_quit),
            clock,
            tsc_hz: eal.tsc_hz(),
            kernel_tx,
            kernel_rx,
            commands,
            events,
            idle: cfg.eal.idle,
            tables: tables.next().expect("one table set per worker"),
        };
        if let Err(e) = eal.launch(id as u32 + 1, move || worker::run(setup)) {
            // Stop the workers already running before EAL is torn down.
            worker_quit.store(true, Relaxed);
            eal.stop_ports(&ports);
            return Err(e.to_string());
        }
    }
    let slots = SessionTable::slots_for(shared.session_capacity_per_worker);
    let table_bytes = slots * std::mem::size_of::<Entry>();
    log::info!(
        "ringlb running: {workers} worker(s), {} service(s), {} server(s), session capacity {} ({} per worker; \
         table {slots} slots x {} B = {table_bytes} bytes per worker), tsc {} Hz",
        cfg.services.len(),
        cfg.servers.len(),
        cfg.session_capacity,
        shared.session_capacity_per_worker,
        std::mem::size_of::<Entry>(),
        eal.tsc_hz(),
    );

    let labels: Vec<String> = (0..cfg.servers.len()).map(|i| cfg.server_label(i)).collect();
    let mut driver = Driver::new(cluster_sockets, &stats, labels.clone());
    driver.reload_on(Arc::clone(sighup));
    driver.serve_ops(ops_inbox, crate::ops::answer::Answerer::new(cfg));
    // The incarnation grows from one start to the next: the wall clock.
    let incarnation = driver::wall_us() / 1000;
    let mut control = Control::new(cfg, Arc::clone(&shared), control_ports, driver.now(), incarnation);
    if let Some(path) = &opts.config_path {
        control.reload_from(path.clone());
    }
    control.runtime =
        crate::control::status::Runtime { workers, tsc_hz: eal.tsc_hz(), table_bytes_per_worker: table_bytes as u64 };
    // The ports start once the control plane is ready for traffic (at once
    // when standalone); workers poll them only from then on.
    let mut start_ports = || {
        for (i, p) in ports.iter().enumerate() {
            p.start().map_err(|e| format!("ports[{i}]: {e}"))?;
        }
        for (i, tap) in &tap_ports {
            tap.start().map_err(|e| format!("ports[{i}].kernel: {e}"))?;
            configure_tap(cfg, *i)?;
        }
        shared.set_ports_up();
        Ok(())
    };
    let run = driver.run(&mut control, quit, opts, &mut start_ports);
    // Routers stop sending to us before the workers stop: BIRD's
    // withdrawal leaves through the kernel interface the workers serve.
    if control.withdraw_announcements() {
        std::thread::sleep(WITHDRAW_DRAIN);
    }

    worker_quit.store(true, Relaxed);
    eal.wait_all();
    driver.report(&control, opts, false);
    let fin = Snapshot::take(&stats.iter().collect::<Vec<_>>());
    println!("{}", summary(driver.now().ms as f64 / 1000.0, &fin, &labels));
    eal.stop_ports(&ports);
    let taps: Vec<_> = tap_ports.into_iter().map(|(_, t)| t).collect();
    eal.stop_ports(&taps);
    run
}

/// One line per interval: totals, rates, active sessions, new sessions per server.
pub fn stats_line(t: f64, now: &Snapshot, last: &Snapshot, dt: f64, labels: &[String]) -> String {
    let rate = |a: u64, b: u64| ((a.saturating_sub(b)) as f64 / dt.max(1e-3)).round() as u64;
    let per_server: Vec<String> = labels
        .iter()
        .zip(now.per_server.iter().zip(&last.per_server))
        .map(|(l, (n, o))| format!("{l}=+{}", n - o))
        .collect();
    format!(
        "stats t={t:.3}s rx={} tx={} drops={} rx_pps={} tx_pps={} active={} created={} new_per_s={} cookies={} joined={} | new sessions: {}",
        now.rx,
        now.tx,
        now.drops_total(),
        rate(now.rx, last.rx),
        rate(now.tx, last.tx),
        now.active,
        now.created,
        rate(now.created, last.created),
        now.syn_cookies_sent,
        now.proxy_joined,
        per_server.join(" ")
    )
}

pub fn summary(t: f64, s: &Snapshot, labels: &[String]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "summary after {t:.1}s:");
    let _ = writeln!(
        o,
        "  rx={} tx={} handoff={} arp_replies={} echo_replies={}",
        s.rx, s.tx, s.handoff, s.arp_replies, s.echo_replies
    );
    let _ = writeln!(
        o,
        "  sessions created={} expired={} active={} evicted={} icmp_errors={} fragments={}",
        s.created, s.expired, s.active, s.evicted, s.icmp_errors, s.fragments
    );
    if s.syn_cookies_sent > 0 {
        let _ = writeln!(
            o,
            "  syn_proxy cookies_sent={} opened={} joined={} failed={} active={} emit_full={} l7_redirects={} l7_resumes={} l7_resume_refused={} l7_resume_offset={}",
            s.syn_cookies_sent,
            s.proxy_opened,
            s.proxy_joined,
            s.proxy_failed,
            s.proxy_active,
            s.proxy_emit_full,
            s.l7_redirects,
            s.l7_resumes,
            s.l7_resume_refused,
            s.l7_resume_offset
        );
    }
    if s.sync_installed + s.sync_updated + s.locks_created + s.deferred > 0 {
        let _ = writeln!(
            o,
            "  sync installed={} updated={} removed={} adopted={} refused={} ctl_overflow={} locks={} lock_hits={} held={} hold_timeouts={}",
            s.sync_installed,
            s.sync_updated,
            s.sync_removed,
            s.sync_adopted,
            s.sync_refused,
            s.ctl_overflow,
            s.locks_created,
            s.lock_hits,
            s.deferred,
            s.defer_timeouts
        );
    }
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter(|d| s.drops[**d as usize] > 0)
        .map(|d| format!("{}={}", d.name(), s.drops[*d as usize]))
        .collect();
    let _ = writeln!(o, "  drops={} {}", s.drops_total(), drops.join(" "));
    for (i, (l, n)) in labels.iter().zip(&s.per_server).enumerate() {
        // `l7`: requests taken from the server because it failed; races it won.
        let mut extra = String::new();
        for (name, v) in [("redirected", &s.per_server_redirects), ("race_won", &s.per_server_race_won)] {
            if let Some(v) = v.get(i).filter(|v| **v > 0) {
                let _ = write!(extra, " {name}={v}");
            }
        }
        let _ = writeln!(o, "  server {l} sessions={n}{extra}");
    }
    o.push_str("ringlb stopped cleanly");
    o
}
