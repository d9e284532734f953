//! `ringlb-fastpath`: the per-packet path alone — `Worker::process_burst`
//! over bursts of 32 in-memory frames, no DPDK, no I/O — so its
//! cost can be profiled exactly (`valgrind --tool=callgrind` counts the
//! same instructions every run) and compared across table sizes.
//!
//!   ringlb-fastpath [SESSIONS] [PACKETS]     (defaults 1000 and 1048576)

#![forbid(unsafe_code)]

use ringlb::config;
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::stats::WorkerStats;
use std::time::Instant;

use ringlb_perf::pcapgen;

const BURST: usize = 32;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.replace('_', "").parse::<u32>());
    let sessions = args.next().and_then(Result::ok).unwrap_or(1000);
    let packets = args.next().and_then(Result::ok).unwrap_or(1 << 20);
    let yaml = format!(
        "eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 64 }}
ports:
  - {{ device: net_null0, ip: 198.18.0.1/24, mac: \"02:00:00:00:00:01\" }}
  - {{ device: net_null1, ip: 198.18.1.1/24 }}
services:
  - {{ name: bench, vip: 198.18.100.1, port: 80, mode: dsr, scheduler: maglev, group: web }}
server_groups:
  web:
    - {{ ip: 198.18.1.11, port: 80, mac: \"02:00:00:00:01:0b\" }}
    - {{ ip: 198.18.1.12, port: 80, mac: \"02:00:00:00:01:0c\" }}
    - {{ ip: 198.18.1.13, port: 80, mac: \"02:00:00:00:01:0d\" }}
sessions: {{ capacity: {} }}
timeouts: {{ syn: 60m, established: 60m }}
",
        sessions
    );
    let cfg = config::parse(&yaml, "fastpath.yaml").expect("built-in config");
    let shared = Shared::new(&cfg, &[pcapgen::PORT_MAC; 2]);
    let stats = WorkerStats::new(cfg.servers.len());
    let mut w = Worker::new(0, &shared, &stats);

    let dir = std::env::temp_dir().join(format!("ringlb-fastpath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let frames = |kind, flows: &[u32]| -> Vec<Vec<u8>> {
        let path = dir.join("f.pcap");
        let mut wr = pcapgen::Writer::create(&path).expect("pcap");
        for &i in flows {
            wr.client_frame(i, kind).expect("frame");
        }
        wr.finish().expect("pcap");
        let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(&path).expect("pcap")).expect("pcap");
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            out.push(p.expect("pcap").data.into_owned());
        }
        out
    };
    let every_flow: Vec<u32> = (0..sessions).collect();
    let syns = frames(pcapgen::Kind::Syn, &every_flow);
    let first_data = frames(pcapgen::Kind::Data, &every_flow);
    let data = frames(pcapgen::Kind::Data, &pcapgen::data_flows(sessions, packets));
    let _ = std::fs::remove_dir_all(&dir);

    // Every flow established before anything is counted: its SYN, then two
    // data segments (a DSR session is confirmed by the client's data after
    // its handshake ACK; see `dataplane::after_client_packet`).
    assert_eq!(warm_up(&syns, &mut w), u64::from(sessions), "every SYN opens a session");
    for _ in 0..2 {
        assert_eq!(warm_up(&first_data, &mut w), u64::from(sessions), "every flow's data forwarded");
    }
    let t = Instant::now();
    let sent = run_bursts(&data, &mut w, 2);
    let ns = t.elapsed().as_nanos() as f64 / data.len() as f64;
    assert_eq!(sent, data.len() as u64, "every data packet forwarded");
    println!("{sessions} sessions, {} packets: {ns:.1} ns/packet (Worker::process_burst, one core)", data.len());
    let table = ringlb::session::SessionTable::slots_for(cfg.session_capacity) * 32;
    println!(
        "  memory reference: random 32-byte reads from {} MiB, 32 prefetched at a time: {:.1} ns/read; one at a time: {:.1} ns/read",
        table >> 20,
        random_reads(table, packets, true),
        random_reads(table, packets / 8, false)
    );
}

/// What this machine's memory allows: `n` reads at random slots of a
/// `bytes`-sized table (built like the session table's), either in batches
/// of 32 whose lines are prefetched first, or each waiting for the last.
fn random_reads(bytes: usize, n: u32, batched: bool) -> f64 {
    let slots = bytes / 32;
    let mut v: Vec<[u64; 4]> = Vec::with_capacity(slots);
    ringlb::cpu::advise_hugepages(v.spare_capacity_mut());
    v.resize(slots, [1, 0, 0, 0]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize % slots
    };
    let mut sum = 0u64;
    let t = Instant::now();
    if batched {
        let mut idx = [0usize; BURST];
        for _ in 0..n as usize / BURST {
            for i in &mut idx {
                *i = next();
                ringlb::cpu::prefetch(&v[*i]);
            }
            sum += idx.iter().map(|&i| v[i][0]).sum::<u64>();
        }
    } else {
        let mut j = 0;
        for _ in 0..n {
            // The next address depends on this read: nothing overlaps.
            j = (next() + v[j][0] as usize) % slots;
            sum += j as u64;
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    std::hint::black_box(sum);
    ns
}

/// Bursts through the worker, not counted by callgrind (not `worker_burst`).
#[inline(never)]
fn warm_up(input: &[Vec<u8>], w: &mut Worker) -> u64 {
    let mut sent = 0;
    for chunk in input.chunks(BURST) {
        let mut copies: Vec<Vec<u8>> = chunk.to_vec();
        let mut frames: Vec<&mut [u8]> = copies.iter_mut().map(|f| f.as_mut_slice()).collect();
        let mut verdicts = [Verdict::Consumed; BURST];
        w.process_burst(&mut frames, &[0u8; BURST][..chunk.len()], 1, false, &mut verdicts);
        sent += verdicts[..chunk.len()].iter().filter(|v| matches!(v, Verdict::Tx(_))).count() as u64;
    }
    sent
}

/// The measured loop (named, not inlined, so callgrind can count it alone:
/// `--toggle-collect='*run_bursts*'`): the PMD's copy into fresh buffers,
/// then the worker's own `process_burst` (counted alone with
/// `--toggle-collect='*worker_burst*'`). Returns how many frames were sent.
#[inline(never)]
fn run_bursts(input: &[Vec<u8>], w: &mut Worker, now: u32) -> u64 {
    let mut buf = [[0u8; 64]; BURST];
    let ports = [0u8; BURST];
    let mut sent = 0;
    for chunk in input.chunks(BURST) {
        let mut frames: [&mut [u8]; BURST] = Default::default();
        for ((b, f), frame) in buf.iter_mut().zip(chunk).zip(&mut frames) {
            b[..f.len()].copy_from_slice(f);
            *frame = &mut b[..f.len()];
        }
        let mut verdicts = [Verdict::Consumed; BURST];
        worker_burst(w, &mut frames[..chunk.len()], &ports[..chunk.len()], now, &mut verdicts);
        sent += verdicts[..chunk.len()].iter().filter(|v| matches!(v, Verdict::Tx(_))).count() as u64;
    }
    sent
}

/// One burst through the worker, and nothing else: what callgrind counts
/// as the appliance's own instructions per packet.
#[inline(never)]
fn worker_burst(w: &mut Worker, frames: &mut [&mut [u8]], ports: &[u8], now: u32, verdicts: &mut [Verdict; BURST]) {
    w.process_burst(frames, ports, now, false, verdicts);
}
