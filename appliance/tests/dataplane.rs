//! The per-packet path (`Worker::process`) driven with real frames, without
//! DPDK. Every rewritten frame is re-parsed and its checksums recomputed by
//! etherparse (ringlb-testkit), independently of ringlb's incremental updates.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use ringlb::config::{self, Config};
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::stats::{DropReason, WorkerStats};
use ringlb_testkit::*;

const DSR_MACS: [[u8; 6]; 3] = [[2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 3]];
const NAT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 2, 1], [2, 0, 0, 0, 2, 2]];

fn yaml(workers: &str, capacity: usize) -> String {
    format!(
        r#"
eal: {{ control_core: 0, worker_cores: {workers}, hugepages: false, memory_mb: 256 }}
ports:
  - {{ device: "net_null0", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }}
services:
  - {{ name: web, vip: 198.18.100.1, port: 80, mode: dsr, scheduler: wrr, group: dsr }}
  - {{ name: api, vip: 198.18.100.2, port: 80, mode: nat, scheduler: maglev, maglev_table_size: 251, group: nat }}
  - {{ name: dns, vip: 198.18.100.2, port: 53, protocol: udp, mode: nat, group: udp }}
server_groups:
  dsr:
    - {{ ip: 198.18.0.11, port: 80, weight: 1, mac: "02:00:00:00:01:01" }}
    - {{ ip: 198.18.0.12, port: 80, weight: 2, mac: "02:00:00:00:01:02" }}
    - {{ ip: 198.18.0.13, port: 80, weight: 3, mac: "02:00:00:00:01:03" }}
  nat:
    - {{ ip: 198.18.0.21, port: 8080, mac: "02:00:00:00:02:01" }}
    - {{ ip: 198.18.0.22, port: 8080, mac: "02:00:00:00:02:02" }}
  udp:
    - {{ ip: 198.18.0.31, port: 5353 }}
sessions: {{ capacity: {capacity} }}
timeouts: {{ syn: 2s, established: 60s, closing: 5s, udp: 10s }}
"#
    )
}

fn setup(workers: &str, capacity: usize) -> (Config, Shared, Vec<WorkerStats>) {
    let cfg = config::parse(&yaml(workers, capacity), "test.yaml").unwrap();
    let shared = Shared::new(&cfg, &[PORT_MAC]);
    let stats = (0..cfg.eal.worker_cores.len()).map(|_| WorkerStats::new(cfg.servers.len())).collect();
    (cfg, shared, stats)
}

/// Sessions per server in a worker's table, checked against its total.
fn active_by_server(stats: &WorkerStats) -> Vec<u64> {
    let v: Vec<u64> = stats.server_sessions_active.iter().map(|c| c.get()).collect();
    assert_eq!(v.iter().sum::<u64>(), stats.sessions_active.get(), "per server {v:?}");
    v
}

fn client(i: u32) -> [u8; 4] {
    (0xcb00_7100u32 + i).to_be_bytes() // 203.0.113.x
}

#[test]
fn dsr_rewrites_only_macs_and_keeps_a_flow_on_one_server() {
    let (_, shared, stats) = setup("[1]", 1000);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let mut counts = [0; 3];
    for c in 0..60u32 {
        let mut chosen = None;
        for (n, flags) in [SYN, ACK, ACK | PSH, FIN | ACK].into_iter().enumerate() {
            let mut f = tcp(
                ROUTER_MAC,
                PORT_MAC,
                client(c),
                ip("198.18.100.1"),
                40000 + c as u16,
                80,
                flags,
                b"GET / HTTP/1.1\r\n\r\n",
            );
            let before = check(&f).unwrap();
            assert_eq!(w.process(&mut f, 0, n as u32, false), Verdict::Tx(0));
            let after = check(&f).expect("valid checksums after DSR rewrite");
            assert_eq!(after.src_mac, PORT_MAC);
            let server = DSR_MACS.iter().position(|m| *m == after.dst_mac).expect("a DSR server's MAC");
            assert_eq!(*chosen.get_or_insert(server), server, "flow {c} changed server");
            // Nothing above layer 2 changes.
            assert_eq!(
                (after.src, after.dst, after.sport, after.dport, after.ttl),
                (before.src, before.dst, before.sport, before.dport, before.ttl)
            );
            assert_eq!(
                f[14..],
                tcp(
                    ROUTER_MAC,
                    PORT_MAC,
                    client(c),
                    ip("198.18.100.1"),
                    40000 + c as u16,
                    80,
                    flags,
                    b"GET / HTTP/1.1\r\n\r\n"
                )[14..]
            );
        }
        counts[chosen.unwrap()] += 1;
    }
    assert_eq!(counts, [10, 20, 30], "smooth WRR with weights 1:2:3");
    assert_eq!(stats[0].sessions_created.get(), 60);
}

#[test]
fn non_syn_without_session_is_dropped() {
    let (_, shared, stats) = setup("[1]", 100);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let mut f = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 5555, 80, ACK, b"x");
    assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Drop(DropReason::NoSession));
    let mut synack = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 5555, 80, SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 0, false), Verdict::Drop(DropReason::NoSession));
}

#[test]
fn nat_rewrites_both_directions_with_valid_checksums() {
    let (_, shared, stats) = setup("[1]", 1000);
    let mut w = Worker::new(0, &shared, &stats[0]);
    for c in 0..40u32 {
        let cport = 30000 + c as u16;
        let mut syn = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.2"), cport, 80, SYN, b"");
        assert_eq!(w.process(&mut syn, 0, 0, false), Verdict::Tx(0));
        let fwd = check(&syn).expect("valid checksums after NAT forward");
        let server = NAT_MACS.iter().position(|m| *m == fwd.dst_mac).expect("a NAT server");
        assert_eq!(fwd.dst, ip(["198.18.0.21", "198.18.0.22"][server]));
        assert_eq!((fwd.src, fwd.sport, fwd.dport, fwd.ttl), (client(c), cport, 8080, 63));

        // The other server's answer for this client is not this session's: dropped.
        let other = ["198.18.0.21", "198.18.0.22"][1 - server];
        let mut wrong = tcp(NAT_MACS[1 - server], PORT_MAC, ip(other), client(c), 8080, cport, SYN | ACK, b"");
        assert_eq!(w.process(&mut wrong, 0, 1, false), Verdict::Drop(DropReason::NoSession));

        let mut reply =
            tcp(NAT_MACS[server], PORT_MAC, fwd.dst, client(c), 8080, cport, SYN | ACK, b"hello from server");
        assert_eq!(w.process(&mut reply, 0, 1, false), Verdict::Tx(0));
        let back = check(&reply).expect("valid checksums after NAT reply");
        assert_eq!((back.src, back.sport, back.dst, back.dport), (ip("198.18.100.2"), 80, client(c), cport));
        assert_eq!(
            (back.dst_mac, back.src_mac),
            (ROUTER_MAC, PORT_MAC),
            "reply goes back to the client's previous hop"
        );
        assert_eq!(back.payload, b"hello from server");
    }
}

#[test]
fn nat_udp_both_directions_and_zero_checksum_is_kept() {
    let (_, shared, stats) = setup("[1]", 1000);
    let mut w = Worker::new(0, &shared, &stats[0]);
    // The UDP server has no static MAC: nothing is sent until ARP resolves it.
    let mut q = udp(ROUTER_MAC, PORT_MAC, client(9), ip("198.18.100.2"), 4444, 53, b"query");
    assert_eq!(w.process(&mut q, 0, 0, false), Verdict::Drop(DropReason::NoNeighbor));
    let srv_mac = [2, 0, 0, 0, 3, 1];
    // Worker 0 asks; only then is a reply learned.
    w.due_solicits(0, |_, _| true);
    let mut arp_reply = arp_request(srv_mac, ip("198.18.0.31"), ip("198.18.0.1"));
    arp_reply[21] = 2; // opcode: reply
    arp_reply[0..6].copy_from_slice(&PORT_MAC);
    assert_eq!(w.process(&mut arp_reply, 0, 0, false), Verdict::Consumed);

    let mut q = udp(ROUTER_MAC, PORT_MAC, client(9), ip("198.18.100.2"), 4444, 53, b"query");
    assert_eq!(w.process(&mut q, 0, 1, false), Verdict::Tx(0));
    let s = check(&q).unwrap();
    assert_eq!((s.dst, s.dport, s.dst_mac), (ip("198.18.0.31"), 5353, srv_mac));
    let mut r = udp(srv_mac, PORT_MAC, ip("198.18.0.31"), client(9), 5353, 4444, b"answer");
    assert_eq!(w.process(&mut r, 0, 2, false), Verdict::Tx(0));
    let s = check(&r).unwrap();
    assert_eq!((s.src, s.sport), (ip("198.18.100.2"), 53));

    // A sender that omitted the UDP checksum (0) must still send 0.
    let mut z = udp(ROUTER_MAC, PORT_MAC, client(9), ip("198.18.100.2"), 4444, 53, b"again");
    z[14 + 20 + 6] = 0;
    z[14 + 20 + 7] = 0;
    assert_eq!(w.process(&mut z, 0, 3, false), Verdict::Tx(0));
    assert_eq!(&z[40..42], &[0, 0]);
    check(&z).unwrap();
}

#[test]
fn answers_arp_and_ping_for_vips_and_own_address() {
    let (_, shared, stats) = setup("[1]", 10);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let asker = [2, 0, 0, 0, 9, 9];
    for target in ["198.18.100.1", "198.18.100.2", "198.18.0.1"] {
        let mut f = arp_request(asker, ip("198.18.0.50"), ip(target));
        assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Tx(0));
        assert_eq!(&f[0..6], &asker);
        assert_eq!(&f[20..22], &[0, 2], "ARP reply opcode");
        assert_eq!(&f[22..28], &PORT_MAC, "sender hardware address is ours");
        assert_eq!(&f[28..32], &ip(target));
        assert_eq!(&f[32..38], &asker);

        let mut p = icmp_echo(asker, PORT_MAC, ip("198.18.0.50"), ip(target));
        assert_eq!(w.process(&mut p, 0, 0, false), Verdict::Tx(0));
        let s = check(&p).expect("valid checksums on echo reply");
        assert_eq!((s.src, s.dst, s.flags, s.dst_mac), (ip(target), ip("198.18.0.50"), 0, asker));
    }
    let mut other = arp_request(asker, ip("198.18.0.50"), ip("198.18.0.77"));
    assert_eq!(w.process(&mut other, 0, 0, false), Verdict::Drop(DropReason::ArpIgnored));
    let mut ping_other = icmp_echo(asker, PORT_MAC, ip("198.18.0.50"), ip("198.18.0.77"));
    assert_eq!(w.process(&mut ping_other, 0, 0, false), Verdict::Drop(DropReason::NoService));
}

#[test]
fn frames_not_for_us_are_counted_drops() {
    let (_, shared, stats) = setup("[1]", 10);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let mut f = tcp(ROUTER_MAC, [2, 9, 9, 9, 9, 9], client(1), ip("198.18.100.1"), 1, 80, SYN, b"");
    assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Drop(DropReason::NotForUs));
    let mut f = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.9"), 1, 80, SYN, b"");
    assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Drop(DropReason::NoService));
    let mut f = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 1, 80, SYN, b"");
    f[14 + 6] = 0x20; // more fragments
    f[14 + 10..14 + 12].fill(0);
    let c = inet_checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Drop(DropReason::Fragment));
    let mut f = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 1, 80, SYN, b"");
    f.truncate(14 + 20 + 10);
    assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Drop(DropReason::IpLength));
    let mut f = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 1, 80, SYN, b"");
    f.truncate(14 + 12);
    assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Drop(DropReason::Malformed));
}

#[test]
fn flows_are_handed_to_their_owner_and_both_nat_directions_agree() {
    let (_, shared, stats) = setup("[1, 1]", 1000);
    let mut w0 = Worker::new(0, &shared, &stats[0]);
    let mut w1 = Worker::new(1, &shared, &stats[1]);
    let mut owners = [0; 2];
    for c in 0..200u32 {
        let cport = 20000 + c as u16;
        let owner = shared.owner(u32::from_be_bytes(client(c)), cport);
        owners[owner] += 1;
        let mut syn = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.2"), cport, 80, SYN, b"");
        // Whoever receives it, only the owner processes it.
        let receiver = (c % 2) as usize;
        let w = if receiver == 0 { &mut w0 } else { &mut w1 };
        let v = w.process(&mut syn, 0, 0, false);
        if receiver != owner {
            assert_eq!(v, Verdict::Handoff(owner));
            let o = if owner == 0 { &mut w0 } else { &mut w1 };
            assert_eq!(o.process(&mut syn, 0, 0, true), Verdict::Tx(0));
        } else {
            assert_eq!(v, Verdict::Tx(0));
        }
        let fwd = check(&syn).unwrap();
        // The reply is hashed on its destination (the client): same owner.
        let mut reply = tcp(fwd.dst_mac, PORT_MAC, fwd.dst, client(c), 8080, cport, SYN | ACK, b"");
        let other = 1 - owner;
        let wo = if other == 0 { &mut w0 } else { &mut w1 };
        assert_eq!(wo.process(&mut reply, 0, 1, false), Verdict::Handoff(owner));
    }
    assert!(owners[0] > 60 && owners[1] > 60, "ownership spread {owners:?}");
}

/// A close both sides confirmed (NAT sees both) moves to the closing
/// timer; established sessions stay; an unanswered SYN expires after the
/// SYN timeout. (A one-sided FIN or RST: tests/strict_input.rs.)
#[test]
fn a_confirmed_close_moves_to_the_close_timer_and_idle_sessions_expire() {
    let (cfg, shared, stats) = setup("[1]", 100);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let to_vip = |w: &mut Worker, c: u32, flags: u8, t: u32| {
        let mut f = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.2"), 1000 + c as u16, 80, flags, b"");
        let v = w.process(&mut f, 0, t, false);
        (v, check(&f).map(|s| (s.dst_mac, s.dst)).ok())
    };
    let from_server = |w: &mut Worker, to: ([u8; 6], [u8; 4]), c: u32, flags: u8, t: u32| {
        let mut f = tcp(to.0, PORT_MAC, to.1, client(c), 8080, 1000 + c as u16, flags, b"");
        w.process(&mut f, 0, t, false)
    };
    let mut servers = Vec::new();
    for c in [1, 2] {
        let (v, server) = to_vip(&mut w, c, SYN, 0);
        assert_eq!(v, Verdict::Tx(0));
        let server = server.unwrap();
        assert_eq!(from_server(&mut w, server, c, SYN | ACK, 5), Verdict::Tx(0));
        assert_eq!(to_vip(&mut w, c, ACK, 10).0, Verdict::Tx(0));
        servers.push(server);
    }
    assert_eq!(to_vip(&mut w, 1, FIN | ACK, 20).0, Verdict::Tx(0));
    assert_eq!(from_server(&mut w, servers[0], 1, FIN | ACK, 20), Verdict::Tx(0));
    // Just past the closing timeout: flow 1 expires, established flow 2 stays.
    let t = 20 + cfg.timeouts.closing_ms + 1;
    for _ in 0..64 {
        w.sweep(t);
    }
    assert_eq!(stats[0].sessions_expired.get(), 1);
    assert_eq!(stats[0].sessions_active.get(), 1);
    assert_eq!(active_by_server(&stats[0]).iter().sum::<u64>(), 1);
    // Flow 1's late ACK finds no session (this Maglev service picks it up
    // mid-flow, which counts); flow 2's finds its own.
    assert_eq!(to_vip(&mut w, 1, ACK, t).0, Verdict::Tx(0));
    assert_eq!(stats[0].midflow_picked.get(), 1);
    assert_eq!(to_vip(&mut w, 2, ACK, t).0, Verdict::Tx(0));
    assert_eq!(stats[0].midflow_picked.get(), 1);
    // A SYN that is never answered expires after the SYN timeout (DSR
    // under wrr: a flow without a session is not picked up mid-flow).
    let web = |w: &mut Worker, flags: u8, t: u32| {
        let mut f = tcp(ROUTER_MAC, PORT_MAC, client(3), ip("198.18.100.1"), 1003, 80, flags, b"");
        w.process(&mut f, 0, t, false)
    };
    assert_eq!(web(&mut w, SYN, t), Verdict::Tx(0));
    assert_eq!(web(&mut w, ACK, t + cfg.timeouts.syn_ms + 1), Verdict::Drop(DropReason::NoSession));
}

/// A table full of established sessions refuses new flows and keeps
/// serving the old ones. (Half-open entries are evicted instead:
/// tests/strict_input.rs.)
#[test]
fn full_table_drops_new_flows_and_keeps_old_ones() {
    let (_, shared, stats) = setup("[1]", 50);
    let mut w = Worker::new(0, &shared, &stats[0]);
    for c in 0..50u32 {
        for (flags, data) in [(SYN, &b""[..]), (ACK, b""), (ACK | PSH, b"data")] {
            let mut f = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.1"), 7, 80, flags, data);
            assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Tx(0));
        }
    }
    let mut f = tcp(ROUTER_MAC, PORT_MAC, client(99), ip("198.18.100.1"), 7, 80, SYN, b"");
    assert_eq!(w.process(&mut f, 0, 1, false), Verdict::Drop(DropReason::TableFull));
    let mut f = tcp(ROUTER_MAC, PORT_MAC, client(3), ip("198.18.100.1"), 7, 80, ACK, b"");
    assert_eq!(w.process(&mut f, 0, 1, false), Verdict::Tx(0));
}

/// ≥ 100,000 random and mutated frames through classify + rewrite: no panic,
/// every verdict is one of the defined ones, and a frame that is sent keeps
/// its length.
#[test]
fn random_and_mutated_frames_never_panic() {
    let (_, shared, stats) = setup("[1, 1]", 4096);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let seeds: Vec<Vec<u8>> = vec![
        tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 1, 80, SYN, b"abc"),
        tcp(ROUTER_MAC, PORT_MAC, client(2), ip("198.18.100.2"), 2, 80, SYN, b""),
        tcp(NAT_MACS[0], PORT_MAC, ip("198.18.0.21"), client(2), 8080, 2, ACK, b"reply"),
        udp(ROUTER_MAC, PORT_MAC, client(3), ip("198.18.100.2"), 3, 53, b"q"),
        arp_request(ROUTER_MAC, ip("198.18.0.9"), ip("198.18.100.1")),
        icmp_echo(ROUTER_MAC, PORT_MAC, client(4), ip("198.18.100.1")),
    ];
    let mut verdicts = std::collections::HashMap::new();
    let total = 120_000;
    for i in 0..total {
        let mut f: Vec<u8> = match i % 3 {
            0 => {
                let n = rng.random_range(0..200);
                let mut f: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                if f.len() >= 14 && rng.random_bool(0.7) {
                    f[0..6].copy_from_slice(&PORT_MAC);
                    f[12..14].copy_from_slice(if rng.random_bool(0.8) { &[8, 0] } else { &[8, 6] });
                    if f.len() > 14 && rng.random_bool(0.8) {
                        f[14] = 0x45;
                    }
                }
                f
            }
            _ => {
                let mut f = seeds[rng.random_range(0..seeds.len())].clone();
                for _ in 0..rng.random_range(1..6) {
                    match rng.random_range(0..4) {
                        0 => {
                            let j = rng.random_range(0..f.len());
                            f[j] = rng.random();
                        }
                        1 if f.len() > 13 => {
                            let j = rng.random_range(12..f.len().min(60));
                            f[j] ^= 1 << rng.random_range(0..8);
                        }
                        1 | 2 => {
                            let n = rng.random_range(0..f.len());
                            f.truncate(n);
                        }
                        _ => f.extend((0..rng.random_range(0..40)).map(|_| rng.random::<u8>())),
                    }
                    if f.is_empty() {
                        break;
                    }
                }
                f
            }
        };
        let len = f.len();
        let v = w.process(&mut f, rng.random_range(0..3), i / 10, rng.random_bool(0.5));
        assert_eq!(f.len(), len);
        *verdicts.entry(format!("{v:?}")).or_insert(0u32) += 1;
        if i % 64 == 0 {
            w.sweep(i / 10);
        }
    }
    println!("{total} frames: {verdicts:?}");
    assert!(verdicts.keys().any(|k| k.starts_with("Tx")), "some mutated frames are still valid and forwarded");
    assert!(verdicts.keys().filter(|k| k.starts_with("Drop")).count() >= 5, "many drop reasons exercised");
}

#[test]
fn a_maglev_flow_without_session_follows_the_pick_every_appliance_makes() {
    // Two appliances with the same configuration: a flow begun on one
    // reaches the other mid-flow (the first failed) and goes to the same server.
    let (cfg, first, stats) = setup("[1]", 1000);
    let second = Shared::new(&cfg, &[PORT_MAC]);
    let stats2 = [WorkerStats::new(cfg.servers.len())];
    let mut a = Worker::new(0, &first, &stats[0]);
    let mut b = Worker::new(0, &second, &stats2[0]);
    for c in 0..30u32 {
        let cport = 20000 + c as u16;
        let mut syn = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.2"), cport, 80, SYN, b"");
        assert_eq!(a.process(&mut syn, 0, 0, false), Verdict::Tx(0));
        let server = check(&syn).unwrap().dst_mac;
        // A reset or a SYN-ACK without a session makes no state anywhere.
        for flags in [RST | ACK, SYN | ACK] {
            let mut f = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.2"), cport, 80, flags, b"");
            assert_eq!(b.process(&mut f, 0, 1, false), Verdict::Drop(DropReason::NoSession));
        }
        for n in 0..3 {
            let mut ack = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.2"), cport, 80, ACK, b"more");
            assert_eq!(b.process(&mut ack, 0, 2 + n, false), Verdict::Tx(0));
            assert_eq!(check(&ack).unwrap().dst_mac, server, "flow {c}: the second appliance picked another server");
        }
    }
    assert_eq!(stats2[0].midflow_picked.get(), 30, "one session made per flow, then followed");
    assert_eq!(b.sessions().count(), 30);
    // A wrr service has no pick to agree on: still no_session.
    let mut ack = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 999, 80, ACK, b"x");
    assert_eq!(b.process(&mut ack, 0, 9, false), Verdict::Drop(DropReason::NoSession));
}

/// What a server's list gives a new VIP owner: an established session of
/// `client(c):cport` to `vip`:80 on `server`, with no client-side hop known.
fn rebuilt_install(c: u32, cport: u16, vip: &str, server: u16) -> ringlb::control::channel::Command {
    use ringlb::control::channel::{Command, SessionRecord};
    use ringlb::session::{FlowKey, InstallMode, State};
    let rec = SessionRecord {
        key: FlowKey {
            client_ip: u32::from_be_bytes(client(c)),
            vip: u32::from_be_bytes(ip(vip)),
            client_port: cport,
            vport: 80,
            proto: ringlb::packet::L4Proto::Tcp,
        },
        server,
        state: State::Established,
        client_port: 0,
        client_mac: [0; 6],
        born: 0,
    };
    Command::Install { rec, mode: InstallMode::IfAbsent }
}

#[test]
fn a_siblings_sessions_count_for_their_server_as_they_come_move_and_go() {
    use ringlb::control::channel::Command;
    use ringlb::session::InstallMode;
    let (cfg, shared, stats) = setup("[1]", 1000);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let [a, b] = [cfg.services[0].servers[0], cfg.services[0].servers[2]];
    w.apply(rebuilt_install(7, 4242, "198.18.100.1", a), 1);
    assert_eq!(active_by_server(&stats[0])[usize::from(a)], 1);
    // Its update names another server: the session moves with it.
    let Command::Install { rec, .. } = rebuilt_install(7, 4242, "198.18.100.1", b) else { unreachable!() };
    w.apply(Command::Install { rec, mode: InstallMode::Upsert }, 2);
    let by_server = active_by_server(&stats[0]);
    assert_eq!((by_server[usize::from(a)], by_server[usize::from(b)]), (0, 1));
    w.apply(Command::Remove { key: rec.key, born: rec.born }, 3);
    assert!(active_by_server(&stats[0]).iter().all(|&n| n == 0));
}

#[test]
fn while_a_vip_is_rebuilt_packets_without_session_wait_for_the_servers_list() {
    let (cfg, shared, stats) = setup("[1]", 1000);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let vip = u32::from_be_bytes(ip("198.18.100.1"));
    shared.set_vip_rebuilding(vip, true);
    let mut ack = tcp(ROUTER_MAC, PORT_MAC, client(7), ip("198.18.100.1"), 4242, 80, ACK, b"x");
    let untouched = ack.clone();
    assert_eq!(w.process(&mut ack, 0, 0, false), Verdict::Await);
    assert_eq!(ack, untouched, "a waiting frame is not rewritten");
    // A reset is never held (nor a flow of a VIP not being rebuilt).
    let mut rst = tcp(ROUTER_MAC, PORT_MAC, client(7), ip("198.18.100.1"), 4243, 80, RST, b"");
    assert_eq!(w.process(&mut rst, 0, 0, false), Verdict::Drop(DropReason::NoSession));
    // The server's list arrives: the third DSR server holds the connection.
    let server = cfg.services[0].servers[2];
    w.apply(rebuilt_install(7, 4242, "198.18.100.1", server), 1);
    assert_eq!(w.process(&mut ack, 0, 2, false), Verdict::Tx(0));
    assert_eq!(check(&ack).unwrap().dst_mac, DSR_MACS[2]);
    // Rebuilt and over: an unknown wrr flow is no_session again.
    shared.set_vip_rebuilding(vip, false);
    let mut other = tcp(ROUTER_MAC, PORT_MAC, client(8), ip("198.18.100.1"), 4244, 80, ACK, b"x");
    assert_eq!(w.process(&mut other, 0, 3, false), Verdict::Drop(DropReason::NoSession));
}

#[test]
fn a_rebuilt_nat_session_replies_through_the_client_hop_and_learns_it_from_the_client() {
    let (cfg, shared, stats) = setup("[1]", 1000);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let server = cfg.services[1].servers[0];
    let rebuilt = |cport: u16| rebuilt_install(3, cport, "198.18.100.2", server);
    w.apply(rebuilt(6000), 0);
    let reply = |cport: u16| tcp(NAT_MACS[0], PORT_MAC, ip("198.18.0.21"), client(3), 8080, cport, ACK, b"data");
    // No client hop known yet: the reply cannot be addressed (counted).
    assert_eq!(w.process(&mut reply(6000), 0, 1, false), Verdict::Drop(DropReason::NoNeighbor));
    // A new flow shows the port's client-side hop: replies go through it.
    let mut syn = tcp(ROUTER_MAC, PORT_MAC, client(9), ip("198.18.100.1"), 7000, 80, SYN, b"");
    assert_eq!(w.process(&mut syn, 0, 2, false), Verdict::Tx(0));
    let mut r = reply(6000);
    assert_eq!(w.process(&mut r, 0, 3, false), Verdict::Tx(0));
    assert_eq!(check(&r).unwrap().dst_mac, ROUTER_MAC);
    // The client's own packet teaches the session its hop.
    w.apply(rebuilt(6001), 4);
    let other_hop = [2, 0, 0, 0, 0, 0x77];
    let mut ack = tcp(other_hop, PORT_MAC, client(3), ip("198.18.100.2"), 6001, 80, ACK, b"x");
    assert_eq!(w.process(&mut ack, 0, 5, false), Verdict::Tx(0));
    let mut r = reply(6001);
    assert_eq!(w.process(&mut r, 0, 6, false), Verdict::Tx(0));
    assert_eq!(check(&r).unwrap().dst_mac, other_hop);
    // Learned once: a later packet of the tuple from another MAC (a forger
    // who knows the tuple) does not redirect the replies.
    let mut forged = tcp([2, 0, 0, 0, 0, 0x66], PORT_MAC, client(3), ip("198.18.100.2"), 6001, 80, ACK, b"x");
    assert_eq!(w.process(&mut forged, 0, 7, false), Verdict::Tx(0));
    let mut r = reply(6001);
    assert_eq!(w.process(&mut r, 0, 8, false), Verdict::Tx(0));
    assert_eq!(check(&r).unwrap().dst_mac, other_hop);
}

#[test]
fn a_server_down_gets_no_new_flows_and_a_new_syn_on_its_tuple_is_placed_afresh() {
    let (cfg, shared, stats) = setup("[1]", 1000);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let dsr = &cfg.services[0].servers;
    let syn = |c: u32, port: u16| tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.1"), port, 80, SYN, b"");
    // A flow on the third server (weight 3) ...
    let mut on_third = None;
    for c in 0..20u32 {
        let mut f = syn(c, 1000);
        assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Tx(0));
        if check(&f).unwrap().dst_mac == DSR_MACS[2] {
            on_third = Some(c);
            break;
        }
    }
    let c = on_third.expect("some flow reached the third server");
    assert_eq!(active_by_server(&stats[0])[usize::from(dsr[2])], 1);
    // ... which then goes down: new flows avoid it, also on both schedulers.
    shared.set_server_weight(dsr[2], 0);
    for n in 0..60u32 {
        let mut f = syn(100 + n, 2000);
        assert_eq!(w.process(&mut f, 0, 1, false), Verdict::Tx(0));
        assert_ne!(check(&f).unwrap().dst_mac, DSR_MACS[2]);
    }
    for &id in &cfg.services[1].servers[..1] {
        shared.set_server_weight(id, 0);
    }
    for n in 0..60u32 {
        let mut f = tcp(ROUTER_MAC, PORT_MAC, client(n), ip("198.18.100.2"), 3000, 80, SYN, b"");
        assert_eq!(w.process(&mut f, 0, 1, false), Verdict::Tx(0));
        assert_eq!(check(&f).unwrap().dst_mac, NAT_MACS[1], "maglev places around the server down");
    }
    // The old flow's packets still go to it (its sessions are kept) ...
    let mut ack = tcp(ROUTER_MAC, PORT_MAC, client(c), ip("198.18.100.1"), 1000, 80, ACK, b"x");
    assert_eq!(w.process(&mut ack, 0, 2, false), Verdict::Tx(0));
    assert_eq!(check(&ack).unwrap().dst_mac, DSR_MACS[2]);
    // ... but a new SYN on its tuple (the server's reset went straight to
    // the client) is a new connection, placed on a server that is up.
    let mut again = syn(c, 1000);
    assert_eq!(w.process(&mut again, 0, 3, false), Verdict::Tx(0));
    assert_ne!(check(&again).unwrap().dst_mac, DSR_MACS[2]);
    assert_eq!(active_by_server(&stats[0])[usize::from(dsr[2])], 0, "the session moved off it");
    // Every server down: a new flow is a counted drop.
    for &id in dsr {
        shared.set_server_weight(id, 0);
    }
    assert_eq!(w.process(&mut syn(500, 4000), 0, 4, false), Verdict::Drop(DropReason::NoServer));
}

#[test]
fn probes_go_out_as_valid_syns_a_syn_ack_is_answered_with_rst_and_silence_takes_a_server_down() {
    let yaml = r#"
eal: { control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }
ports:
  - { device: "net_null0", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }
services:
  - { name: web, vip: 198.18.100.1, port: 80, mode: dsr, group: web, probe: { interval: 100ms, timeout: 50ms, rise: 2, fall: 2 } }
server_groups:
  web:
    - { ip: 198.18.0.11, port: 80, mac: "02:00:00:00:01:01" }
    - { ip: 198.18.0.12, port: 80, mac: "02:00:00:00:01:02" }
"#;
    let cfg = config::parse(yaml, "probe.yaml").unwrap();
    let shared = Shared::new(&cfg, &[PORT_MAC]);
    let stats = [WorkerStats::new(cfg.servers.len())];
    let mut w = Worker::new(0, &shared, &stats[0]);
    let mut sent = Vec::new();
    for now in 0..=400u32 {
        let mut due = Vec::new();
        w.due_probes(now, |p| {
            let mut buf = [0u8; 60];
            ringlb::packet::build_tcp_syn(
                &mut buf, p.src_mac, p.dst_mac, p.src_ip, p.dst_ip, p.src_port, p.dst_port, p.seq,
            );
            due.push((buf, p.seq));
            true
        });
        for (buf, seq) in due {
            let syn = check(&buf).expect("a probe has valid checksums");
            assert_eq!((syn.flags, syn.dport, syn.src, syn.src_mac), (SYN, 80, ip("198.18.0.1"), PORT_MAC));
            sent.push((now, syn.dst, syn.sport, seq));
            // Server .11 answers each probe with a SYN-ACK; for .12 only a
            // forger does, from its address but with a guessed acknowledgement.
            if syn.dst == ip("198.18.0.12") {
                let (from, to) = (ip("198.18.0.12"), ip("198.18.0.1"));
                let ack = Some(seq.wrapping_add(2));
                let mut forged = tcp_seq(DSR_MACS[1], PORT_MAC, from, to, (80, syn.sport), 777, ack, 65535, SYN, &[]);
                w.process(&mut forged, 0, now, false);
            }
            if syn.dst == ip("198.18.0.11") {
                let (from, to) = (ip("198.18.0.11"), ip("198.18.0.1"));
                let ack = Some(seq.wrapping_add(1));
                let mut answer = tcp_seq(DSR_MACS[0], PORT_MAC, from, to, (80, syn.sport), 777, ack, 65535, SYN, &[]);
                assert_eq!(w.process(&mut answer, 0, now, false), Verdict::Tx(0));
                let rst = check(&answer).expect("the RST has valid checksums");
                assert_eq!((rst.flags, rst.dst, rst.dport, rst.dst_mac), (RST, ip("198.18.0.11"), 80, DSR_MACS[0]));
            }
        }
    }
    let to = |s: &str| sent.iter().filter(|x| x.1 == ip(s)).count();
    assert!(to("198.18.0.11") >= 4 && to("198.18.0.12") >= 4, "{sent:?}");
    assert!(shared.server_weight(cfg.services[0].servers[0]) > 0, "the answering server stays up");
    assert_eq!(
        shared.server_weight(cfg.services[0].servers[1]),
        0,
        "two unanswered probes take it down, forged answers or not"
    );
    // A stranger's SYN-ACK to the probe port is not a probe's answer.
    let mut forged = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.0.1"), 80, 0xc000, SYN | ACK, b"");
    assert_eq!(w.process(&mut forged, 0, 500, false), Verdict::Drop(DropReason::NoService));
}

#[test]
fn on_server_down_reset_ends_the_session_with_a_rst_to_the_client_and_keep_does_not() {
    let yaml = |policy: &str| {
        yaml("[1]", 100).replace(
            "mode: dsr, scheduler: wrr, group: dsr }",
            &format!("mode: dsr, scheduler: wrr, group: dsr, on_server_down: {policy} }}"),
        )
    };
    for policy in ["keep", "reset"] {
        let cfg = config::parse(&yaml(policy), "t.yaml").unwrap();
        let shared = Shared::new(&cfg, &[PORT_MAC]);
        let stats = [WorkerStats::new(cfg.servers.len())];
        let mut w = Worker::new(0, &shared, &stats[0]);
        let pkt = |flags| tcp(ROUTER_MAC, PORT_MAC, client(4), ip("198.18.100.1"), 4444, 80, flags, b"x");
        assert_eq!(w.process(&mut pkt(SYN), 0, 0, false), Verdict::Tx(0));
        for &id in &cfg.services[0].servers {
            shared.set_server_weight(id, 0);
        }
        let mut ack = pkt(ACK);
        assert_eq!(w.process(&mut ack, 0, 1, false), Verdict::Tx(0));
        let seen = check(&ack).expect("valid checksums");
        if policy == "keep" {
            assert_eq!(seen.flags, ACK, "kept: forwarded to its server");
            assert!(DSR_MACS.contains(&seen.dst_mac));
            assert_eq!(active_by_server(&stats[0]).iter().sum::<u64>(), 1);
            continue;
        }
        assert_eq!(seen.flags, RST, "reset: the client gets a RST");
        assert_eq!((seen.src, seen.sport, seen.dst, seen.dport), (ip("198.18.100.1"), 80, client(4), 4444));
        assert_eq!((seen.dst_mac, seen.src_mac), (ROUTER_MAC, PORT_MAC));
        assert_eq!(stats[0].down_resets.get(), 1);
        assert!(active_by_server(&stats[0]).iter().all(|&n| n == 0));
        // The session is gone: its next packet has none.
        assert_eq!(w.process(&mut pkt(ACK), 0, 2, false), Verdict::Drop(DropReason::NoSession));
    }
}

#[test]
fn with_a_kernel_interface_what_the_fast_path_does_not_answer_for_the_port_goes_to_the_kernel() {
    let with_tap = yaml("[1]", 100)
        .replace("mac: \"02:00:00:00:00:01\" }", "mac: \"02:00:00:00:00:01\", kernel: { tap: rlbk0 } }");
    let router = [2, 0, 0, 0, 9, 1];
    for kernel in [false, true] {
        let text = if kernel { with_tap.clone() } else { yaml("[1]", 100) };
        let cfg = config::parse(&text, "t.yaml").unwrap();
        let shared = Shared::new(&cfg, &[PORT_MAC]);
        let stats = [WorkerStats::new(shared.server_capacity)];
        let mut w = Worker::new(0, &shared, &stats[0]);
        let to_kernel = |reason| if kernel { Verdict::Kernel(0) } else { Verdict::Drop(reason) };
        // BGP to the port's address: the kernel's (its BIRD), untouched.
        let bgp = tcp(router, PORT_MAC, ip("198.18.0.254"), ip("198.18.0.1"), 40_000, 179, SYN, b"");
        let mut f = bgp.clone();
        assert_eq!(w.process(&mut f, 0, 0, false), to_kernel(DropReason::NoService));
        assert_eq!(f, bgp, "passed as it came");
        // An ARP reply to the port's address nobody here asked for: the
        // kernel's (it asked for its BGP peer); the fast path learns nothing.
        let mut reply = arp_reply(router, ip("198.18.0.254"), PORT_MAC, ip("198.18.0.1"));
        assert_eq!(w.process(&mut reply, 0, 0, false), to_kernel(DropReason::ArpUnsolicited));
        // Not for the port's address: never the kernel's.
        let mut other = arp_reply(router, ip("198.18.0.254"), PORT_MAC, ip("198.18.0.9"));
        assert_eq!(w.process(&mut other, 0, 0, false), Verdict::Drop(DropReason::ArpUnsolicited));
        let mut elsewhere = tcp(router, PORT_MAC, ip("198.18.0.254"), ip("198.18.0.9"), 40_000, 179, SYN, b"");
        assert_eq!(w.process(&mut elsewhere, 0, 0, false), Verdict::Drop(DropReason::NoService));
        // What the fast path answers stays its own: ARP and ping for the
        // port, and the services.
        let mut ask = arp_request(router, ip("198.18.0.254"), ip("198.18.0.1"));
        assert_eq!(w.process(&mut ask, 0, 0, false), Verdict::Tx(0));
        let mut ping = icmp_echo(router, PORT_MAC, ip("198.18.0.254"), ip("198.18.0.1"));
        assert_eq!(w.process(&mut ping, 0, 0, false), Verdict::Tx(0));
        let mut web = tcp(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.1"), 1000, 80, SYN, b"");
        assert_eq!(w.process(&mut web, 0, 0, false), Verdict::Tx(0));
        // An ICMP error about the kernel's own BGP segment (from its address).
        let sent = tcp(PORT_MAC, router, ip("198.18.0.1"), ip("198.18.0.254"), 179, 40_000, ACK, b"");
        let mut err = icmp_error(router, PORT_MAC, ip("198.18.0.254"), ip("198.18.0.1"), 3, 4, &sent[14..]);
        assert_eq!(w.process(&mut err, 0, 0, false), to_kernel(DropReason::NoService));
    }
}

#[test]
fn a_flood_to_the_ports_address_reaches_the_kernel_only_within_the_workers_budget() {
    let text = yaml("[1]", 100)
        .replace("mac: \"02:00:00:00:00:01\" }", "mac: \"02:00:00:00:00:01\", kernel: { tap: rlbk0 } }");
    let cfg = config::parse(&text, "t.yaml").unwrap();
    let shared = Shared::new(&cfg, &[PORT_MAC]);
    let stats = [WorkerStats::new(shared.server_capacity)];
    let mut w = Worker::new(0, &shared, &stats[0]);
    let syn = |w: &mut Worker, n: u32, now: u32| {
        let mut f = tcp([2, 0, 0, 0, 9, 1], PORT_MAC, client(n), ip("198.18.0.1"), 1000 + n as u16, 22, SYN, b"");
        w.process(&mut f, 0, now, false)
    };
    let verdicts: Vec<Verdict> = (0..5000).map(|n| syn(&mut w, n, 0)).collect();
    assert!(verdicts[..2000].iter().all(|v| *v == Verdict::Kernel(0)), "a burst of 2,000");
    assert!(verdicts[2000..].iter().all(|v| *v == Verdict::Drop(DropReason::KernelLimit)), "then counted drops");
    // 20 more each millisecond.
    w.sweep(10);
    let passed = (0..500).filter(|&n| syn(&mut w, n, 10) == Verdict::Kernel(0)).count();
    assert_eq!(passed, 200);
}
