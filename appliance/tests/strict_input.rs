//! Hostile input at the per-packet path (`Worker::process`), one forged
//! case per test: each must end as a counted drop with its own reason, or
//! leave sessions and neighbours as they were. Frames are built by the
//! test kit (ringlb-testkit), not by the code under test.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use ringlb::config;
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::stats::WorkerStats;
use ringlb_testkit::*;

const DSR_MACS: [[u8; 6]; 3] = [[2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 3]];
const NAT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 2, 1], [2, 0, 0, 0, 2, 2]];
const DSR_VIP: &str = "198.18.100.1";
const NAT_VIP: &str = "198.18.100.2";

fn yaml(capacity: usize) -> String {
    format!(
        r#"
eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }}
ports:
  - {{ device: "net_null0", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }}
  - {{ device: "net_null1", ip: 198.19.0.1/24, mac: "02:00:00:00:00:02" }}
services:
  - {{ name: web, vip: {DSR_VIP}, port: 80, mode: dsr, scheduler: wrr, group: dsr }}
  - {{ name: api, vip: {NAT_VIP}, port: 80, mode: nat, scheduler: wrr, group: nat }}
  - {{ name: dns, vip: {NAT_VIP}, port: 53, protocol: udp, mode: nat, group: udp }}
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

struct Lab {
    shared: Shared,
    stats: WorkerStats,
    closing_ms: u32,
}

fn lab(capacity: usize) -> Lab {
    let cfg = config::parse(&yaml(capacity), "strict.yaml").unwrap();
    let shared = Shared::new(&cfg, &[PORT_MAC, PORT2_MAC]);
    let stats = WorkerStats::new(cfg.servers.len());
    Lab { shared, stats, closing_ms: cfg.timeouts.closing_ms }
}

/// The drop reason's name, or None for any other verdict.
fn reason(v: Verdict) -> Option<&'static str> {
    match v {
        Verdict::Drop(d) => Some(d.name()),
        _ => None,
    }
}

fn client(i: u32) -> [u8; 4] {
    (0xcb00_7100u32 + i).to_be_bytes() // 203.0.113.x and up
}

fn to_vip(vip: &str, c: u32, cport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    tcp(ROUTER_MAC, PORT_MAC, client(c), ip(vip), cport, 80, flags, data)
}

/// A NAT server's segment back to client `c` (from `mac`).
fn from_server(mac: [u8; 6], server: [u8; 4], c: u32, cport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    tcp(mac, PORT_MAC, server, client(c), 8080, cport, flags, data)
}

fn nat_server_of(frame: &[u8]) -> ([u8; 6], [u8; 4]) {
    let s = check(frame).unwrap();
    (s.dst_mac, s.dst)
}

#[test]
fn ipv4_header_checksum_and_lengths_are_checked() {
    let l = lab(100);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let good = to_vip(DSR_VIP, 1, 1000, SYN, b"");
    let run = |w: &mut Worker, mut f: Vec<u8>| reason(w.process(&mut f, 0, 0, false));

    let mut bad_sum = good.clone();
    bad_sum[14 + 10] ^= 0x01;
    assert_eq!(run(&mut w, bad_sum), Some("ip_checksum"));

    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    assert_eq!(run(&mut w, ihl4), Some("ip_header"));
    let mut v6 = good.clone();
    v6[14] = 0x65;
    assert_eq!(run(&mut w, v6), Some("ip_header"));

    // Total length beyond the frame; and shorter than the header.
    for total in [2000u16, 16] {
        let mut f = good.clone();
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[24..26].fill(0);
        let c = inet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(run(&mut w, f), Some("ip_length"), "total length {total}");
    }
    // A frame longer than its datagram beyond the minimum-size padding.
    let mut trailing = to_vip(DSR_VIP, 1, 1001, SYN, &[7; 40]);
    let total = u16::from_be_bytes([trailing[16], trailing[17]]);
    trailing.extend_from_slice(&[0xee; 30]);
    assert_eq!(usize::from(total) + 14 + 30, trailing.len());
    assert_eq!(run(&mut w, trailing), Some("ip_length"));
    // A UDP length that disagrees with the IP payload.
    let mut udp_len = udp(ROUTER_MAC, PORT_MAC, client(2), ip(NAT_VIP), 999, 53, b"query!!!");
    udp_len[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&12u16.to_be_bytes());
    assert_eq!(run(&mut w, udp_len), Some("ip_length"));

    // A short SYN padded to 60 bytes is fine.
    let mut padded = good.clone();
    padded.resize(60, 0);
    assert_eq!(w.process(&mut padded, 0, 0, false), Verdict::Tx(0));
}

#[test]
fn invalid_tcp_flag_combinations_are_dropped_and_make_no_session() {
    const URG: u8 = 0x20;
    let l = lab(100);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let combos = [SYN | FIN, SYN | RST, SYN | FIN | ACK, 0, FIN, FIN | PSH | URG, PSH, URG, FIN | RST | ACK, RST | PSH];
    for (i, flags) in combos.into_iter().enumerate() {
        for vip in [DSR_VIP, NAT_VIP] {
            let mut f = with_tcp_flags(to_vip(vip, 10 + i as u32, 2000, SYN, b""), flags);
            assert_eq!(reason(w.process(&mut f, 0, 0, false)), Some("tcp_flags"), "flags {flags:#04x} to {vip}");
        }
    }
    assert_eq!(l.stats.sessions_created.get(), 0);
    assert_eq!(l.stats.sessions_active.get(), 0);
    // What real stacks send still passes: SYN with ECN bits, a bare RST.
    let mut ecn_syn = with_tcp_flags(to_vip(DSR_VIP, 1, 3000, SYN, b""), SYN | 0x40 | 0x80);
    assert_eq!(w.process(&mut ecn_syn, 0, 0, false), Verdict::Tx(0));
    let mut rst = to_vip(DSR_VIP, 1, 3000, RST, b"");
    assert_eq!(w.process(&mut rst, 0, 1, false), Verdict::Tx(0));
}

/// DSR sees the client's side only: a session is established by the
/// client's data after its handshake ACK. A flood of spoofed SYN + ACK
/// pairs leaves half-open entries that new flows evict; established
/// sessions survive the flood, and a table of established sessions only
/// still refuses new flows.
#[test]
fn a_spoofed_syn_ack_flood_cannot_fill_a_dsr_table() {
    let l = lab(1000);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let mut server_of = Vec::new();
    for c in 0..100u32 {
        let mut mac = None;
        for (t, (flags, data)) in
            [(SYN, &b""[..]), (ACK, b""), (ACK | PSH, b"GET / HTTP/1.1\r\n\r\n")].into_iter().enumerate()
        {
            let mut f = to_vip(DSR_VIP, c, 4000, flags, data);
            assert_eq!(w.process(&mut f, 0, t as u32, false), Verdict::Tx(0));
            mac = Some(check(&f).unwrap().dst_mac);
        }
        server_of.push(mac.unwrap());
    }
    let mut rng = SmallRng::seed_from_u64(7);
    for i in 0..2000u32 {
        let src: [u8; 4] = rng.random();
        let sport: u16 = rng.random_range(1024..65535);
        let now = 10 + i / 10;
        for flags in [SYN, ACK] {
            let mut f = tcp(ROUTER_MAC, PORT_MAC, src, ip(DSR_VIP), sport, 80, flags, b"");
            w.process(&mut f, 0, now, false);
        }
    }
    assert!(l.stats.sessions_evicted.get() >= 1000, "evicted {}", l.stats.sessions_evicted.get());
    for c in 0..100u32 {
        let mut f = to_vip(DSR_VIP, 1000 + c, 5000, SYN, b"");
        assert_eq!(w.process(&mut f, 0, 300, false), Verdict::Tx(0), "legitimate SYN {c} after the flood");
    }
    for (c, mac) in server_of.iter().enumerate() {
        let mut f = to_vip(DSR_VIP, c as u32, 4000, ACK | PSH, b"more");
        assert_eq!(w.process(&mut f, 0, 301, false), Verdict::Tx(0), "established flow {c} survived");
        assert_eq!(&check(&f).unwrap().dst_mac, mac);
    }

    // A table of established sessions only: a new flow is refused.
    let l = lab(50);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    for c in 0..50u32 {
        for (flags, data) in [(SYN, &b""[..]), (ACK, b""), (ACK | PSH, b"data")] {
            let mut f = to_vip(DSR_VIP, c, 4000, flags, data);
            assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Tx(0));
        }
    }
    let mut f = to_vip(DSR_VIP, 99, 4000, SYN, b"");
    assert_eq!(reason(w.process(&mut f, 0, 1, false)), Some("table_full"));
    assert_eq!(l.stats.sessions_evicted.get(), 0);
}

/// NAT sees both sides: a spoofed SYN that the server answers with its
/// SYN-ACK is still half-open (no client ACK followed), so new flows evict it.
#[test]
fn spoofed_syns_answered_by_the_server_cannot_fill_a_nat_table() {
    let l = lab(1000);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let mut rng = SmallRng::seed_from_u64(9);
    let mut real = Vec::new();
    for c in 0..50u32 {
        let mut syn = to_vip(NAT_VIP, c, 6000, SYN, b"");
        assert_eq!(w.process(&mut syn, 0, 0, false), Verdict::Tx(0));
        let (mac, server) = nat_server_of(&syn);
        let mut synack = from_server(mac, server, c, 6000, SYN | ACK, b"");
        assert_eq!(w.process(&mut synack, 0, 1, false), Verdict::Tx(0));
        let mut ack = to_vip(NAT_VIP, c, 6000, ACK, b"");
        assert_eq!(w.process(&mut ack, 0, 2, false), Verdict::Tx(0));
        real.push((mac, server));
    }
    for i in 0..2000u32 {
        let src: [u8; 4] = [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let sport: u16 = rng.random_range(1024..65535);
        let mut syn = tcp(ROUTER_MAC, PORT_MAC, src, ip(NAT_VIP), sport, 80, SYN, b"");
        assert_eq!(w.process(&mut syn, 0, 10 + i, false), Verdict::Tx(0), "spoofed SYN {i} found room");
        let (mac, server) = nat_server_of(&syn);
        let mut synack = tcp(mac, PORT_MAC, server, src, 8080, sport, SYN | ACK, b"");
        assert_eq!(w.process(&mut synack, 0, 10 + i, false), Verdict::Tx(0));
    }
    assert!(
        l.stats.sessions_evicted.get() >= 1000,
        "evicted {} created {} expired {} active {}",
        l.stats.sessions_evicted.get(),
        l.stats.sessions_created.get(),
        l.stats.sessions_expired.get(),
        l.stats.sessions_active.get()
    );
    for c in 0..50u32 {
        let mut f = to_vip(NAT_VIP, 500 + c, 7000, SYN, b"");
        assert_eq!(w.process(&mut f, 0, 2020, false), Verdict::Tx(0), "legitimate SYN {c}");
    }
    for (c, (mac, server)) in real.iter().enumerate() {
        let mut f = from_server(*mac, *server, c as u32, 6000, ACK | PSH, b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(w.process(&mut f, 0, 2021, false), Verdict::Tx(0), "established flow {c} survived");
    }
}

/// A forged RST (then a SYN) on a live tuple neither moves the connection
/// to another server nor shortens its life.
#[test]
fn a_blind_reset_and_syn_keep_the_server_and_the_session() {
    let l = lab(1000);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let long = l.closing_ms + 1000;
    let mut servers = Vec::new();
    for c in 0..20u32 {
        let mut mac = None;
        for (flags, data) in [(SYN, &b""[..]), (ACK, b""), (ACK | PSH, b"GET /big HTTP/1.1\r\n\r\n")] {
            let mut f = to_vip(DSR_VIP, c, 8000, flags, data);
            assert_eq!(w.process(&mut f, 0, 0, false), Verdict::Tx(0));
            mac = Some(check(&f).unwrap().dst_mac);
        }
        servers.push(mac.unwrap());
    }
    // The attacker: RST, then a SYN on the same tuple.
    for c in 0..20u32 {
        let mut rst = to_vip(DSR_VIP, c, 8000, RST, b"");
        assert_eq!(w.process(&mut rst, 0, 10, false), Verdict::Tx(0));
        let mut syn = to_vip(DSR_VIP, c, 8000, SYN, b"");
        assert_eq!(w.process(&mut syn, 0, 11, false), Verdict::Tx(0));
        assert_eq!(check(&syn).unwrap().dst_mac, servers[c as usize], "flow {c}: the SYN kept the server");
    }
    // The real client, quiet for longer than the closing timeout, goes on.
    for c in 0..20u32 {
        let mut f = to_vip(DSR_VIP, c, 8000, ACK, b"");
        assert_eq!(w.process(&mut f, 0, 11 + long, false), Verdict::Tx(0), "flow {c} outlived the forged RST");
        assert_eq!(check(&f).unwrap().dst_mac, servers[c as usize]);
    }

    // NAT: a FIN from one side only keeps the session past the closing
    // timeout; once the other side's FIN confirms it, the closing timeout applies.
    let mut syn = to_vip(NAT_VIP, 1, 8100, SYN, b"");
    assert_eq!(w.process(&mut syn, 0, 0, false), Verdict::Tx(0));
    let (mac, server) = nat_server_of(&syn);
    let mut synack = from_server(mac, server, 1, 8100, SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 1, false), Verdict::Tx(0));
    let mut ack = to_vip(NAT_VIP, 1, 8100, ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 2, false), Verdict::Tx(0));
    let mut fin = to_vip(NAT_VIP, 1, 8100, FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 3, false), Verdict::Tx(0));
    let mut data = from_server(mac, server, 1, 8100, ACK | PSH, b"still sending");
    assert_eq!(w.process(&mut data, 0, 3 + long, false), Verdict::Tx(0), "one-sided FIN shortened the session");
    let t = 3 + long;
    let mut sfin = from_server(mac, server, 1, 8100, FIN | ACK, b"");
    assert_eq!(w.process(&mut sfin, 0, t, false), Verdict::Tx(0));
    let mut last = to_vip(NAT_VIP, 1, 8100, ACK, b"");
    assert_eq!(reason(w.process(&mut last, 0, t + l.closing_ms + 1, false)), Some("no_session"));
}

#[test]
fn a_nat_reply_is_taken_only_from_the_bound_servers_mac_and_port() {
    let l = lab(100);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let mut syn = to_vip(NAT_VIP, 1, 9000, SYN, b"");
    assert_eq!(w.process(&mut syn, 0, 0, false), Verdict::Tx(0));
    let (mac, server) = nat_server_of(&syn);
    // Right addresses and ports, wrong MAC; right MAC on the wrong port.
    let mut forged = from_server([2, 0, 0, 0, 6, 6], server, 1, 9000, SYN | ACK, b"");
    assert_eq!(reason(w.process(&mut forged, 0, 1, false)), Some("spoofed_reply"));
    let other = NAT_MACS.iter().find(|m| **m != mac).unwrap();
    let mut wrong_server_mac = from_server(*other, server, 1, 9000, SYN | ACK, b"");
    assert_eq!(reason(w.process(&mut wrong_server_mac, 0, 1, false)), Some("spoofed_reply"));
    let mut wrong_port = from_server(mac, server, 1, 9000, SYN | ACK, b"");
    wrong_port[0..6].copy_from_slice(&PORT2_MAC);
    assert_eq!(reason(w.process(&mut wrong_port, 1, 1, false)), Some("spoofed_reply"));
    let mut real = from_server(mac, server, 1, 9000, SYN | ACK, b"");
    assert_eq!(w.process(&mut real, 0, 1, false), Verdict::Tx(0));
}

/// A server's MAC is learned only from a reply to our own request, and
/// never a broadcast, multicast, zero or our own MAC.
#[test]
fn arp_learns_only_replies_to_our_requests_and_only_sane_macs() {
    let l = lab(100);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let udp_server = ip("198.18.0.31");
    let routing = l.shared.routing();
    let nb = routing.neighbors().iter().find(|n| n.ip == ipu("198.18.0.31")).unwrap();
    let poison = [2, 0, 0, 0, 6, 6];
    assert_eq!(nb.mac(), None);
    // Unsolicited: a reply nobody asked for, and a request from the server.
    let mut f = arp_reply(poison, udp_server, PORT_MAC, ip("198.18.0.1"));
    assert_eq!(reason(w.process(&mut f, 0, 0, false)), Some("arp_unsolicited"));
    let mut req = arp_request(poison, udp_server, ip("198.18.0.1"));
    assert_eq!(w.process(&mut req, 0, 0, false), Verdict::Tx(0), "a request for our address is answered");
    assert_eq!(nb.mac(), None, "neither taught us a MAC");

    // We ask; the server answers; that is learned.
    let mut asked = false;
    w.due_solicits(5, |n, _| {
        asked |= n.ip == ipu("198.18.0.31");
        true
    });
    assert!(asked);
    for bad in [[0xff; 6], [0x01, 0, 0x5e, 0, 0, 1], [0; 6], PORT_MAC] {
        let mut f = arp_reply(bad, udp_server, PORT_MAC, ip("198.18.0.1"));
        assert_eq!(reason(w.process(&mut f, 0, 6, false)), Some("arp_bad_mac"), "sender {bad:02x?}");
    }
    let real = [2, 0, 0, 0, 3, 1];
    let mut f = arp_reply(real, udp_server, PORT_MAC, ip("198.18.0.1"));
    assert_eq!(w.process(&mut f, 0, 6, false), Verdict::Consumed);
    assert_eq!(nb.mac(), Some(real));
    // A second reply (a poisoner racing the real one) is not taken.
    let mut f = arp_reply(poison, udp_server, PORT_MAC, ip("198.18.0.1"));
    assert_eq!(reason(w.process(&mut f, 0, 7, false)), Some("arp_unsolicited"));
    assert_eq!(nb.mac(), Some(real));
    // A static MAC never changes.
    let routing = l.shared.routing();
    let dsr = routing.neighbors().iter().find(|n| n.ip == ipu("198.18.0.11")).unwrap();
    let mut f = arp_reply(poison, ip("198.18.0.11"), PORT_MAC, ip("198.18.0.1"));
    assert_eq!(reason(w.process(&mut f, 0, 8, false)), Some("arp_unsolicited"));
    assert_eq!(dsr.mac(), Some(DSR_MACS[0]));
}

/// The packet a service sent to client `c` (from the VIP), as an ICMP
/// error quotes it: its IP header and the first `l4_bytes` of its TCP header.
fn quoted_reply(vip: &str, c: u32, cport: u16, l4_bytes: usize) -> Vec<u8> {
    let f = tcp(PORT_MAC, ROUTER_MAC, ip(vip), client(c), 80, cport, ACK | PSH, &[0x55; 1400]);
    f[14..14 + 20 + l4_bytes].to_vec()
}

#[test]
fn icmp_errors_reach_the_server_of_the_quoted_flow() {
    let l = lab(100);
    let mut w = Worker::new(0, &l.shared, &l.stats);
    let router = ip("192.0.2.1");
    // DSR: the server sent from the VIP; the router's "fragmentation
    // needed" goes to the session's server with only the MACs changed.
    let mut syn = to_vip(DSR_VIP, 1, 10000, SYN, b"");
    assert_eq!(w.process(&mut syn, 0, 0, false), Verdict::Tx(0));
    let server_mac = check(&syn).unwrap().dst_mac;
    let mut err = icmp_error(ROUTER_MAC, PORT_MAC, router, ip(DSR_VIP), 3, 4, &quoted_reply(DSR_VIP, 1, 10000, 20));
    let before = err.clone();
    assert_eq!(w.process(&mut err, 0, 1, false), Verdict::Tx(0));
    assert_eq!(&err[0..6], &server_mac);
    assert_eq!(&err[6..12], &PORT_MAC);
    assert_eq!(&err[12..], &before[12..], "DSR forwards the error unchanged");

    // NAT: translated to the server's address and port, every checksum valid.
    let mut syn = to_vip(NAT_VIP, 2, 10001, SYN, b"");
    assert_eq!(w.process(&mut syn, 0, 0, false), Verdict::Tx(0));
    let (mac, server) = nat_server_of(&syn);
    for l4_bytes in [8, 20] {
        let mut err =
            icmp_error(ROUTER_MAC, PORT_MAC, router, ip(NAT_VIP), 3, 4, &quoted_reply(NAT_VIP, 2, 10001, l4_bytes));
        assert_eq!(w.process(&mut err, 0, 1, false), Verdict::Tx(0));
        let s = check(&err).expect("outer IP and ICMP checksums valid");
        assert_eq!((s.dst_mac, s.dst, s.src, s.ttl), (mac, server, router, 63));
        let q = &err[14 + 20 + 8..];
        assert_eq!(&q[12..16], &server, "quoted source is the server");
        assert_eq!(&q[16..20], &client(2));
        assert_eq!(u16::from_be_bytes([q[20], q[21]]), 8080, "quoted source port is the server's");
        assert_eq!(inet_checksum(&q[..20]), 0, "quoted IP header checksum valid");
        if l4_bytes == 20 {
            // The quoted TCP checksum, as the server computed it on its own
            // packet (before the translation): recompute over that packet.
            let mut orig = tcp(PORT_MAC, ROUTER_MAC, server, client(2), 8080, 10001, ACK | PSH, &[0x55; 1400]);
            let want = check(&orig).unwrap();
            assert_eq!(want.sport, 8080);
            orig.truncate(14 + 40);
            assert_eq!(&q[36..38], &orig[14 + 36..14 + 38], "quoted TCP checksum translated");
        }
    }
    assert_eq!(l.stats.icmp_errors_forwarded.get(), 3);

    // Malformed quotes; an error for a flow without a session.
    let mut short = icmp_error(ROUTER_MAC, PORT_MAC, router, ip(NAT_VIP), 3, 4, &quoted_reply(NAT_VIP, 2, 10001, 4));
    assert_eq!(reason(w.process(&mut short, 0, 2, false)), Some("icmp_malformed"));
    let mut bad_sum = icmp_error(ROUTER_MAC, PORT_MAC, router, ip(NAT_VIP), 3, 4, &quoted_reply(NAT_VIP, 2, 10001, 8));
    bad_sum[14 + 20 + 2] ^= 0xff;
    assert_eq!(reason(w.process(&mut bad_sum, 0, 2, false)), Some("icmp_malformed"));
    let mut ihl = quoted_reply(NAT_VIP, 2, 10001, 8);
    ihl[0] = 0x4f; // claims 60 bytes of header, 28 quoted
    let mut bad_ihl = icmp_error(ROUTER_MAC, PORT_MAC, router, ip(NAT_VIP), 3, 4, &ihl);
    assert_eq!(reason(w.process(&mut bad_ihl, 0, 2, false)), Some("icmp_malformed"));
    let mut unknown = icmp_error(ROUTER_MAC, PORT_MAC, router, ip(NAT_VIP), 3, 4, &quoted_reply(NAT_VIP, 3, 1, 8));
    assert_eq!(reason(w.process(&mut unknown, 0, 2, false)), Some("no_session"));
}

const FRAG_YAML: &str = r#"
eal: { control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }
ports:
  - { device: "net_null0", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }
services:
  - { name: media, vip: 198.18.100.5, port: 5004, protocol: udp, mode: dsr, scheduler: maglev, maglev_table_size: 251, group: media, fragments: true }
  - { name: dns, vip: 198.18.100.6, port: 53, protocol: udp, mode: dsr, group: dns }
server_groups:
  media:
    - { ip: 198.18.0.41, port: 5004, mac: "02:00:00:00:04:01" }
    - { ip: 198.18.0.42, port: 5004, mac: "02:00:00:00:04:02" }
    - { ip: 198.18.0.43, port: 5004, mac: "02:00:00:00:04:03" }
  dns:
    - { ip: 198.18.0.51, port: 53, mac: "02:00:00:00:05:01" }
"#;

/// All fragments of a datagram (and the client's unfragmented datagrams)
/// meet at one server of a `fragments: true` service; fragments to any
/// other service are counted drops.
#[test]
fn fragments_go_to_one_server_by_address_hash_or_are_dropped() {
    let cfg = config::parse(FRAG_YAML, "frag.yaml").unwrap();
    let shared = Shared::new(&cfg, &[PORT_MAC]);
    let stats = WorkerStats::new(cfg.servers.len());
    let mut w = Worker::new(0, &shared, &stats);
    let mut used = std::collections::HashSet::new();
    for c in 0..60u32 {
        let src = client(c);
        let whole = udp(ROUTER_MAC, PORT_MAC, src, ip("198.18.100.5"), 4000, 5004, &[1; 100]);
        let first = ipv4_frame(ROUTER_MAC, PORT_MAC, src, ip("198.18.100.5"), 17, 0x2000, &[9; 64]);
        let later = ipv4_frame(ROUTER_MAC, PORT_MAC, src, ip("198.18.100.5"), 17, 8, &[9; 64]);
        let mut macs = Vec::new();
        for mut f in [whole, first, later] {
            assert_eq!(w.process(&mut f, 0, c, false), Verdict::Tx(0), "client {c}");
            macs.push(<[u8; 6]>::try_from(&f[0..6]).unwrap());
        }
        assert!(macs.iter().all(|m| *m == macs[0]), "client {c}: {macs:02x?}");
        used.insert(macs[0]);
    }
    assert_eq!(used.len(), 3, "the hash spreads clients over the servers");
    assert_eq!(stats.fragments_forwarded.get(), 180);
    let mut f = ipv4_frame(ROUTER_MAC, PORT_MAC, client(1), ip("198.18.100.6"), 17, 0x2000, &[9; 64]);
    assert_eq!(reason(w.process(&mut f, 0, 0, false)), Some("fragment"));
}
