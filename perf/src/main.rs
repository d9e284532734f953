//! `ringlb-bench`: ringlb against dpdk-testpmd on identical vdevs, in one run.
//!
//! For each session count N: generate the pcaps (N SYNs; data packets
//! sampled from those flows; the servers' NAT replies), measure testpmd
//! (io, macswap) on the data pcap, then ringlb in DSR, NAT forward and NAT
//! reply with the sessions pre-populated by a warm-up pass. Then the rate of
//! new connections, two workers where the machine has the cores, sibling
//! sync (updates/s and lag to a sibling, DSR with sync on/off, and the two
//! transports compared), and (optionally) the namespace lab against HAProxy
//! and nftables. Writes
//! `<out>/<timestamp>.json` and `.md`, and prints the table.

#![forbid(unsafe_code)]

mod configs;
mod measure;
mod procs;
mod report;
mod sync;

use measure::{RinglbMode, RinglbResult, Testpmd};
use report::{Report, Row};
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: ringlb-bench [--smoke] [--sessions N,N,..] [--data-packets P] [--seconds S] [--rounds R]
                    [--new-conns M] [--two-workers-at N|0] [--sync-at N|0] [--lab SECONDS|0] [--out DIR]
                    [--ringlb PATH] [--testpmd PATH]
  --smoke           tiny sizes, ~1 s windows, no lab: proves the harness works
  --sessions        session counts to measure (default 1000,100000,1000000,10000000)
  --data-packets    distinct data packets replayed per run (default 1048576)
  --seconds         measurement window per run (default 3)
  --rounds          repetitions of each single-worker measurement, interleaved; medians (default 3)
  --new-conns       SYNs of unique flows for the new-connection rate (default 4000000)
  --two-workers-at  session count for the two-worker runs (default 1000000; 0 = skip)
  --sync-at         session count for the sibling-sync runs (default 1000000; 0 = skip)
  --lab             run perf/lab_compare.sh for this many seconds per variant (default 5; 0 = skip)
  --out             results directory (default perf/results)";

pub struct Options {
    pub sessions: Vec<u32>,
    pub data_packets: u32,
    pub seconds: f64,
    pub rounds: u32,
    pub new_conns: u32,
    pub two_workers_at: u32,
    pub sync_at: u32,
    pub lab_seconds: u32,
    pub out: PathBuf,
    pub ringlb: PathBuf,
    pub testpmd: String,
    pub smoke: bool,
}

fn parse_args() -> Result<Options, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let mut o = Options {
        sessions: vec![1_000, 100_000, 1_000_000, 10_000_000],
        data_packets: 1 << 20,
        seconds: 3.0,
        rounds: 3,
        new_conns: 4_000_000,
        two_workers_at: 1_000_000,
        sync_at: 1_000_000,
        lab_seconds: 5,
        out: root.join("perf/results"),
        ringlb: root.join("target/release/ringlb"),
        testpmd: "dpdk-testpmd".into(),
        smoke: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, flag: &str| -> Result<u64, String> {
        let v = v.ok_or(format!("{flag} needs a value"))?;
        v.replace('_', "").parse().map_err(|_| format!("{flag}: '{v}' is not a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => {
                o.smoke = true;
                o.sessions = vec![1_000];
                o.data_packets = 4096;
                o.seconds = 1.0;
                o.rounds = 1;
                o.new_conns = 1_000_000;
                o.two_workers_at = 0;
                o.sync_at = 10_000;
                o.lab_seconds = 0;
            }
            "--sessions" => {
                let v = it.next().ok_or("--sessions needs a value")?;
                o.sessions = v
                    .split(',')
                    .map(|s| s.replace('_', "").parse().map_err(|_| format!("--sessions: '{s}' is not a number")))
                    .collect::<Result<_, _>>()?;
            }
            "--data-packets" => o.data_packets = num(it.next(), &a)? as u32,
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                o.seconds = v.parse().map_err(|_| format!("--seconds: '{v}' is not a number"))?;
            }
            "--new-conns" => o.new_conns = num(it.next(), &a)? as u32,
            "--rounds" => o.rounds = (num(it.next(), &a)? as u32).max(1),
            "--two-workers-at" => o.two_workers_at = num(it.next(), &a)? as u32,
            "--sync-at" => o.sync_at = num(it.next(), &a)? as u32,
            "--lab" => o.lab_seconds = num(it.next(), &a)? as u32,
            "--out" => o.out = it.next().ok_or("--out needs a value")?.into(),
            "--ringlb" => o.ringlb = it.next().ok_or("--ringlb needs a value")?.into(),
            "--testpmd" => o.testpmd = it.next().ok_or("--testpmd needs a value")?,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument '{a}'\n{USAGE}")),
        }
    }
    if o.sessions.is_empty() || o.sessions.contains(&0) || o.data_packets < 64 || o.seconds <= 0.0 {
        return Err(format!("sessions must be > 0, data packets ≥ 64, seconds > 0\n{USAGE}"));
    }
    Ok(o)
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(&opts) {
        Ok(path) => println!("results: {}", path.display()),
        Err(e) => {
            eprintln!("ringlb-bench: {e}");
            std::process::exit(1);
        }
    }
}

/// The median of a few measurements (one definition for the whole bench: `measure::median`).
/// Spliced L7 connections in the steady-state run (a table that fits in cache).
const L7_SPLICED_FLOWS: u32 = 10_000;

fn median(v: &[f64]) -> f64 {
    measure::median(&mut v.to_vec())
}

/// A scratch directory for pcaps and configs, removed when dropped.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reserves 2 MiB hugepages for the run and gives back what it added.
struct Hugepages {
    before: Option<u64>,
}

impl Hugepages {
    const SYSCTL: &str = "/proc/sys/vm/nr_hugepages";

    fn reserve(bytes: u64) -> Result<Hugepages, String> {
        let read = |k: &str| -> u64 {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with(k))?.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        let want = bytes.div_ceil(2 << 20);
        let (total, free) = (read("HugePages_Total:"), read("HugePages_Free:"));
        if free >= want {
            return Ok(Hugepages { before: None });
        }
        let target = total + want - free;
        std::fs::write(Self::SYSCTL, target.to_string()).map_err(|e| {
            format!("need {want} free 2 MiB hugepages, {free} free; raising {} failed: {e}", Self::SYSCTL)
        })?;
        let now = read("HugePages_Free:");
        if now < want {
            let _ = std::fs::write(Self::SYSCTL, total.to_string());
            return Err(format!(
                "need {want} free 2 MiB hugepages, the kernel gave {now} (memory fragmented or short)"
            ));
        }
        println!("hugepages: {total} -> {target} for this run");
        Ok(Hugepages { before: Some(total) })
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        if let Some(n) = self.before {
            let _ = std::fs::write(Self::SYSCTL, n.to_string());
        }
    }
}

fn run(o: &Options) -> Result<PathBuf, String> {
    if !o.ringlb.exists() {
        return Err(format!("{} not found: build it first (cargo build --release)", o.ringlb.display()));
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("ringlb-bench-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| format!("{}: {e}", scratch.0.display()))?;
    let dir = &scratch.0;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rep = Report::new(o, cores);
    let pool = o.data_packets + 65_536;
    // An mbuf with DPDK's default data room takes ~2.4 KiB of hugepage memory.
    let _hugepages = Hugepages::reserve(u64::from(pool) * 2432 * 5 / 4 + (256 << 20))?;
    let one = Testpmd { bin: &o.testpmd, lcores: "0@0,1@1".into(), cores: 1, mbufs: pool };

    println!("== instructions per packet (callgrind on ringlb-fastpath)");
    let fastpath = o.ringlb.with_file_name("ringlb-fastpath");
    for sessions in [1_000, 100_000] {
        match measure::instructions(&fastpath, sessions, 100_000) {
            Ok(i) => {
                println!(
                    "   {sessions} sessions: {:.0} per packet in Worker::process_burst, {:.0} with the harness's frame copy",
                    i.worker, i.with_harness
                );
                rep.instructions.push(i);
            }
            Err(e) => println!("   {sessions} sessions: not measured: {e}"),
        }
    }

    for &n in &o.sessions {
        println!("== {n} sessions ({} round(s), medians)", o.rounds);
        let files = configs::generate(dir, n, o.data_packets, 1).map_err(|e| format!("generating pcaps: {e}"))?;
        let data = format!("net_pcap0,rx_pcap={},infinite_rx=1", files.data[0].display());
        let reply = format!("net_pcap0,rx_pcap={},infinite_rx=1", files.reply[0].display());
        let scenarios =
            [("dsr", "dsr", &files.data), ("nat-forward", "nat", &files.data), ("nat-reply", "nat", &files.reply)];
        // Rounds interleave the reference and ringlb, so a slow stretch of the
        // shared host falls on both; each figure is the median of its rounds.
        let (mut io, mut macswap, mut io_reply) = (Vec::new(), Vec::new(), Vec::new());
        let mut runs: Vec<Vec<RinglbResult>> = vec![Vec::new(); scenarios.len()];
        for _ in 0..o.rounds {
            io.push(measure::testpmd(&one, &data, 1, "io", o.seconds)?);
            macswap.push(measure::testpmd(&one, &data, 1, "macswap", o.seconds)?);
            io_reply.push(measure::testpmd(&one, &reply, 1, "io", o.seconds)?);
            for ((scenario, mode, input), results) in scenarios.iter().zip(&mut runs) {
                let cfg = configs::ringlb_yaml(dir, scenario, mode, n, input, &files.warm, &[1], pool)?;
                let steady = RinglbMode::Steady { sessions: u64::from(n), seconds: o.seconds };
                results.push(measure::ringlb(&o.ringlb, &cfg, steady)?);
            }
        }
        let (io, macswap, io_reply) = (median(&io), median(&macswap), median(&io_reply));
        println!(
            "   testpmd io {:.2} Mpps, macswap {:.2}, io on replies {:.2}",
            io / 1e6,
            macswap / 1e6,
            io_reply / 1e6
        );
        rep.reference(n, 1, "io", io);
        rep.reference(n, 1, "macswap", macswap);
        rep.reference(n, 1, "io (replies)", io_reply);
        for ((scenario, _, _), mut results) in scenarios.iter().zip(runs) {
            let reference = if *scenario == "nat-reply" { io_reply } else { io };
            results.sort_by(|a, b| a.pps.total_cmp(&b.pps));
            let row = Row::new(n, 1, scenario, &results[results.len() / 2], reference);
            println!(
                "   ringlb {scenario}: {:.2} Mpps = {:.2} of testpmd io, {:.1} ns/packet",
                row.mpps, row.ratio, row.ns_per_packet
            );
            rep.rows.push(row);
        }
        files.remove();
    }

    if o.two_workers_at > 0 && cores >= 2 {
        let n = o.two_workers_at;
        println!("== two workers, {n} sessions");
        let files = configs::generate(dir, n, o.data_packets, 2).map_err(|e| format!("generating pcaps: {e}"))?;
        let data = files.data.iter().map(|f| format!(",rx_pcap={}", f.display())).collect::<String>();
        let two = Testpmd { bin: &o.testpmd, lcores: "0@0,1@0,2@1".into(), cores: 2, mbufs: pool };
        let io = measure::testpmd(&two, &format!("net_pcap0,infinite_rx=1{data}"), 2, "io", o.seconds)?;
        println!("   testpmd io, 2 cores: {:.2} Mpps", io / 1e6);
        rep.reference(n, 2, "io", io);
        let cfg = configs::ringlb_yaml(dir, "dsr2", "dsr", n, &files.data, &files.warm, &[0, 1], pool)?;
        let r = measure::ringlb(&o.ringlb, &cfg, RinglbMode::Steady { sessions: u64::from(n), seconds: o.seconds })?;
        let row = Row::new(n, 2, "dsr", &r, io);
        println!("   ringlb dsr, 2 workers: {:.2} Mpps = {:.2} of testpmd io", row.mpps, row.ratio);
        rep.rows.push(row);
        files.remove();
    }

    println!("== new connections: {} SYNs of unique flows", o.new_conns);
    let warm = configs::syn_file(dir, o.new_conns).map_err(|e| format!("generating pcaps: {e}"))?;
    let cfg = configs::creation_yaml(dir, o.new_conns, &warm, pool)?;
    let r = measure::ringlb(
        &o.ringlb,
        &cfg,
        RinglbMode::Creation { sessions: u64::from(o.new_conns), counter: "created" },
    )?;
    println!("   ringlb: {:.0} new sessions/s on one worker", r.new_per_s);
    rep.new_connections(o.new_conns, &r);
    println!("== SYN cookies: the same {} SYNs to a syn_proxy service (a flood's load)", o.new_conns);
    let cfg = configs::cookie_yaml(dir, o.new_conns, &warm, pool)?;
    let r = measure::ringlb(
        &o.ringlb,
        &cfg,
        RinglbMode::Creation { sessions: u64::from(o.new_conns), counter: "cookies" },
    )?;
    println!("   ringlb: {:.0} SYN cookies/s on one worker", r.new_per_s);
    rep.syn_cookies(o.new_conns, &r);
    let _ = std::fs::remove_file(&warm);

    let l7_conns = o.new_conns.min(if o.smoke { 100_000 } else { 500_000 });
    println!("== L7 new connections: {l7_conns} (SYN, cookie ACK with a GET, the server's SYN-ACK and answer)");
    let (l7, _) = configs::l7_files(dir, l7_conns, None).map_err(|e| format!("generating pcaps: {e}"))?;
    let cfg = configs::l7_yaml(dir, l7_conns, &l7, None, pool)?;
    let r =
        measure::ringlb(&o.ringlb, &cfg, RinglbMode::Creation { sessions: u64::from(l7_conns), counter: "joined" })?;
    println!("   ringlb: {:.0} L7 connections/s on one worker", r.new_per_s);
    rep.l7_connections(l7_conns, &r);
    let _ = std::fs::remove_file(&l7);

    let flows = L7_SPLICED_FLOWS;
    println!("== L7 spliced flows: {flows} connections, then their client segments ({} round(s), medians)", o.rounds);
    let (mut io, mut runs) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        // Made afresh each round: the cookies are of the current time slice.
        let (l7, data) =
            configs::l7_files(dir, flows, Some(o.data_packets)).map_err(|e| format!("generating pcaps: {e}"))?;
        let data = data.ok_or("no L7 data pcap")?;
        io.push(measure::testpmd(
            &one,
            &format!("net_pcap0,rx_pcap={},infinite_rx=1", data.display()),
            1,
            "io",
            o.seconds,
        )?);
        let cfg = configs::l7_yaml(dir, flows, &l7, Some(&data), pool)?;
        let steady = RinglbMode::SteadyBy { sessions: u64::from(flows), seconds: o.seconds, counter: "joined" };
        runs.push(measure::ringlb(&o.ringlb, &cfg, steady)?);
        let _ = (std::fs::remove_file(&l7), std::fs::remove_file(&data));
    }
    let io = median(&io);
    runs.sort_by(|a, b| a.pps.total_cmp(&b.pps));
    let row = Row::new(flows, 1, "l7-spliced", &runs[runs.len() / 2], io);
    println!(
        "   testpmd io {:.2} Mpps; ringlb l7-spliced: {:.2} Mpps = {:.2} of testpmd io, {:.1} ns/packet",
        io / 1e6,
        row.mpps,
        row.ratio,
        row.ns_per_packet
    );
    rep.reference(flows, 1, "io (l7 segments)", io);
    rep.rows.push(row);

    if o.sync_at > 0 {
        let n = o.sync_at;
        println!("== sibling sync, {n} sessions: DSR with sync off and on ({} round(s), medians)", o.rounds);
        let files = configs::generate(dir, n, o.data_packets, 1).map_err(|e| format!("generating pcaps: {e}"))?;
        // Loopback addresses of this run only: 127.<from the pid>.9.{1,2}.
        let net = 1 + (std::process::id() % 200) as u8;
        let addrs = (format!("127.{net}.9.1:7400"), format!("127.{net}.9.2:7400"));
        let (a, b) = configs::sibling_yamls(dir, n, &files.data, &files.warm, pool, (&addrs.0, &addrs.1))?;
        let off_cfg = configs::ringlb_yaml(dir, "sync-off", "dsr", n, &files.data, &files.warm, &[1], pool)?;
        let steady = || RinglbMode::Steady { sessions: u64::from(n), seconds: o.seconds };
        let (mut off, mut on, mut transfers) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            off.push(measure::ringlb(&o.ringlb, &off_cfg, steady())?.pps);
            let (r, t) = sync::sibling_run(&o.ringlb, &a, &b, dir, n, o.seconds)?;
            println!(
                "   sync: {} updates/s to the sibling, lag p50 {} ms p99 {} ms, {} of {n} installed, {} events overflowed",
                t.updates_per_s.map_or("-".into(), |v| format!("{v:.0}")),
                t.lag_p50_ms.map_or("-".into(), |v| format!("{v:.1}")),
                t.lag_p99_ms.map_or("-".into(), |v| format!("{v:.1}")),
                t.installed,
                t.overflowed
            );
            on.push(r.pps);
            transfers.push(t);
        }
        transfers.sort_by(|x, y| x.updates_per_s.unwrap_or(0.0).total_cmp(&y.updates_per_s.unwrap_or(0.0)));
        let transfer = transfers[transfers.len() / 2].clone();
        let (off, on) = (median(&off), median(&on));
        println!(
            "   DSR at {n} sessions: {:.2} Mpps with sync off, {:.2} with sync on ({:.2})",
            off / 1e6,
            on / 1e6,
            on / off
        );
        let records = if o.smoke { 100_000 } else { 2_000_000 };
        let cmp = sync::compare_transports(records);
        println!(
            "   transports, in-process: sync channel {:.0} records/s ({:.1} datagrams/batch), ring reliable layer {:.0} ({:.1})",
            cmp.sync_records_per_s, cmp.sync_datagrams_per_batch, cmp.reliable_records_per_s, cmp.reliable_datagrams_per_batch
        );
        rep.sync(transfer, off, on, cmp);
        files.remove();
    }

    if o.lab_seconds > 0 {
        println!("== lab: wrk through ringlb, HAProxy and nftables ({} s each)", o.lab_seconds);
        let out = dir.join("lab.json");
        let status = std::process::Command::new("bash")
            .arg(root.join("perf/lab_compare.sh"))
            .arg(&out)
            .arg(o.lab_seconds.to_string())
            .status()
            .map_err(|e| format!("perf/lab_compare.sh: {e}"))?;
        let lab = std::fs::read_to_string(&out).map_err(|e| format!("lab results {}: {e}", out.display()))?;
        rep.lab(&lab, status.success())?;
    }

    rep.finish();
    println!("\n{}", rep.markdown());
    let json = rep.write(&o.out)?;
    let plot = root.join("perf/plot.py");
    // Debian's interpreter: python3-matplotlib is installed for it, whatever
    // other python3 is first in PATH.
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let ok = std::process::Command::new(python).arg(&plot).arg(&json).status().is_ok_and(|s| s.success());
    if !ok {
        return Err(format!("{} {} failed (is python3-matplotlib installed?)", plot.display(), json.display()));
    }
    Ok(json)
}
