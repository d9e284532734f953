//! `Worker::process_burst` takes the lean lane (one pass for a table that
//! fits in cache, two with prefetching for a larger one; a short way for
//! established DSR flows). Whatever the lane, every frame must get the
//! verdict and the bytes `Worker::process` gives it alone: two workers on
//! the same configuration see the same random mixed traffic, one frame at
//! a time and in bursts of random size, and are compared frame by frame.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use ringlb::config;
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::stats::WorkerStats;
use ringlb_testkit::*;

const DSR_VIP: &str = "198.18.100.1";
const NAT_VIP: &str = "198.18.100.2";
const RESET_VIP: &str = "198.18.100.3";
const NAT_SERVERS: [([u8; 6], &str); 2] = [([2, 0, 0, 0, 2, 1], "198.18.0.21"), ([2, 0, 0, 0, 2, 2], "198.18.0.22")];

fn yaml(capacity: usize) -> String {
    format!(
        r#"
eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }}
ports:
  - {{ device: "net_null0", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }}
  - {{ device: "net_null1", ip: 198.19.0.1/24, mac: "02:00:00:00:00:02" }}
services:
  - {{ name: web, vip: {DSR_VIP}, port: 80, mode: dsr, scheduler: maglev, group: dsr }}
  - {{ name: rst, vip: {RESET_VIP}, port: 80, mode: dsr, scheduler: wrr, group: dsr, on_server_down: reset }}
  - {{ name: api, vip: {NAT_VIP}, port: 80, mode: nat, scheduler: wrr, group: nat }}
  - {{ name: dns, vip: {NAT_VIP}, port: 53, protocol: udp, mode: dsr, group: udp }}
server_groups:
  dsr:
    - {{ ip: 198.18.0.11, port: 80, weight: 1, mac: "02:00:00:00:01:01" }}
    - {{ ip: 198.18.0.12, port: 80, weight: 2, mac: "02:00:00:00:01:02" }}
  nat:
    - {{ ip: 198.18.0.21, port: 8080, mac: "02:00:00:00:02:01" }}
    - {{ ip: 198.18.0.22, port: 8080, mac: "02:00:00:00:02:02" }}
  udp:
    - {{ ip: 198.18.0.31, port: 53, mac: "02:00:00:00:03:01" }}
sessions: {{ capacity: {capacity} }}
timeouts: {{ syn: 2s, established: 4s, closing: 1s, udp: 3s }}
"#
    )
}

/// One random frame: mostly packets of a few dozen flows (so sessions are
/// made, used, closed and reused), some NAT replies, some of everything else.
fn frame(rng: &mut SmallRng) -> Vec<u8> {
    let c = rng.random_range(0..40u32);
    let client = (0xcb00_7100u32 + c).to_be_bytes();
    let cport = 40_000 + (c as u16 % 7);
    let flags = [SYN, SYN, ACK, ACK, ACK | PSH, ACK | PSH, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | FIN, 0]
        [rng.random_range(0..12)];
    let data: &[u8] = if flags & PSH != 0 { b"GET / HTTP/1.1\r\n\r\n" } else { b"" };
    match rng.random_range(0..20) {
        0..=6 => tcp(ROUTER_MAC, PORT_MAC, client, ip(DSR_VIP), cport, 80, flags, data),
        7 => tcp(ROUTER_MAC, PORT_MAC, client, ip(RESET_VIP), cport, 80, flags, data),
        8..=10 => tcp(ROUTER_MAC, PORT_MAC, client, ip(NAT_VIP), cport, 80, flags, data),
        11..=13 => {
            // A reply from either NAT server (the other one's is forged).
            let (mac, server) = NAT_SERVERS[rng.random_range(0..2)];
            let flags = if flags == SYN { SYN | ACK } else { flags };
            tcp(mac, PORT_MAC, ip(server), client, 8080, cport, flags, data)
        }
        14..=15 => udp(ROUTER_MAC, PORT_MAC, client, ip(NAT_VIP), cport, 53, b"query"),
        16 => arp_request(ROUTER_MAC, client, ip("198.18.0.1")),
        17 => icmp_echo(ROUTER_MAC, PORT_MAC, client, ip(DSR_VIP)),
        18 => {
            // A valid frame with one bit flipped somewhere in its headers.
            let mut f = tcp(ROUTER_MAC, PORT_MAC, client, ip(DSR_VIP), cport, 80, flags, data);
            let at = rng.random_range(0..54);
            f[at] ^= 1 << rng.random_range(0..8);
            f
        }
        _ => {
            let mut f = tcp(ROUTER_MAC, PORT_MAC, client, ip(DSR_VIP), cport, 80, flags, data);
            f.truncate(rng.random_range(0..f.len()));
            f
        }
    }
}

fn compare(capacity: usize, seed: u64) {
    let cfg = config::parse(&yaml(capacity), "burst.yaml").unwrap();
    let shared = Shared::new(&cfg, &[PORT_MAC, PORT2_MAC]);
    let (stats_one, stats_burst) = (WorkerStats::new(cfg.servers.len()), WorkerStats::new(cfg.servers.len()));
    let mut one = Worker::new(0, &shared, &stats_one);
    let mut burst = Worker::new(0, &shared, &stats_burst);
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut now, mut frames_seen, mut sent) = (0u32, 0, 0);
    for b in 0..3000 {
        // Now and then a pause long enough for sessions to expire.
        now += if rng.random_range(0..40) == 0 { rng.random_range(1000..5000) } else { rng.random_range(0..40) };
        let n = rng.random_range(1..=32);
        let input: Vec<Vec<u8>> = (0..n).map(|_| frame(&mut rng)).collect();
        let mut alone = input.clone();
        let expected: Vec<Verdict> = alone.iter_mut().map(|f| one.process(f, 0, now, false)).collect();
        let mut together = input.clone();
        let mut slices: Vec<&mut [u8]> = together.iter_mut().map(|f| f.as_mut_slice()).collect();
        let mut verdicts = [Verdict::Consumed; 32];
        burst.process_burst(&mut slices, &[0u8; 32][..n], now, false, &mut verdicts);
        for i in 0..n {
            assert_eq!(verdicts[i], expected[i], "burst {b}, frame {i}: {:02x?}", input[i]);
            assert_eq!(together[i], alone[i], "burst {b}, frame {i}: bytes differ; in {:02x?}", input[i]);
            sent += usize::from(matches!(expected[i], Verdict::Tx(_)));
        }
        frames_seen += n;
    }
    assert_eq!(one.sessions().count(), burst.sessions().count(), "the same sessions remain");
    // The traffic is mixed enough to mean something: much of it forwarded.
    assert!(sent > frames_seen / 4, "{sent} of {frames_seen} forwarded");
}

#[test]
fn a_table_that_fits_in_cache_takes_one_pass_and_agrees() {
    for seed in 0..4 {
        compare(1000, seed);
    }
}

#[test]
fn a_large_table_takes_two_passes_and_agrees() {
    compare(200_000, 7);
}
