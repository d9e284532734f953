//! `syn_proxy: true` NAT services and `mode: l7` services: whole exchanges
//! through `Worker::process` and the frames the worker writes of its own
//! (`Worker::drain_frames`).
//! Every frame out is re-parsed and its checksums recomputed by
//! etherparse (ringlb-testkit), independently of ringlb's incremental
//! updates; sequence numbers are chosen to cross 2^32 on both sides.

use ringlb::config;
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::stats::{DropReason, WorkerStats};
use ringlb_testkit::*;

const S1_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const S2_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
const VIP: &str = "198.18.100.2";
const CLIENT: &str = "203.0.113.7";
/// What Linux offers in a SYN: MSS 1460, SACK-permitted, timestamps, NOP, window scale 7.
const LINUX_SYN_OPTIONS: [u8; 20] = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
/// A server's SYN-ACK answer to the replayed SYN: MSS 1460, NOP NOP SACK-permitted, NOP window scale 7.
const SERVER_SYNACK_OPTIONS: [u8; 12] = [2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 7];
const CLIENT_ISN: u32 = 0xffff_fff0;
const SERVER_ISN: u32 = 0xffff_fffa;

fn setup() -> (Shared, Vec<WorkerStats>) {
    setup_with("mode: nat, syn_proxy: true, group: nat")
}

/// One service at VIP:80 (`service`: its mode and groups), servers
/// 198.18.0.21 (S1) and .22 (S2, weight 0 in `nat`), .23 and .24 (`api`).
fn setup_with(service: &str) -> (Shared, Vec<WorkerStats>) {
    setup_api(service, "")
}

/// As `setup_with`, with `more_api` (YAML list entries) added to `api`.
fn setup_api(service: &str, more_api: &str) -> (Shared, Vec<WorkerStats>) {
    let yaml = format!(
        r#"
eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }}
ports:
  - {{ device: "net_null0", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }}
services:
  - {{ name: api, vip: {VIP}, port: 80, {service} }}
server_groups:
  nat:
    - {{ ip: 198.18.0.21, port: 8080, mac: "02:00:00:00:02:01" }}
    - {{ ip: 198.18.0.22, port: 8080, mac: "02:00:00:00:02:02", weight: 0 }}
  api:
    - {{ ip: 198.18.0.23, port: 8080, mac: "02:00:00:00:02:03" }}
    - {{ ip: 198.18.0.24, port: 8080, mac: "02:00:00:00:02:04" }}
{more_api}
sessions: {{ capacity: 1000, proxied: 100, request_buffers: 4 }}
timeouts: {{ syn: 2s, established: 60s, closing: 5s, udp: 10s }}
"#
    );
    let cfg = config::parse(&yaml, "test.yaml").unwrap();
    let shared = Shared::new(&cfg, &[PORT_MAC]);
    (shared, vec![WorkerStats::new(cfg.servers.len())])
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}
const TCP: usize = 14 + 20;
fn seq(f: &[u8]) -> u32 {
    be32(f, TCP + 4)
}
fn ack(f: &[u8]) -> u32 {
    be32(f, TCP + 8)
}
fn window(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[TCP + 14], f[TCP + 15]])
}
fn options(f: &[u8]) -> Vec<u8> {
    f[TCP + 20..TCP + usize::from(f[TCP + 12] >> 4) * 4].to_vec()
}

/// A client segment to the VIP.
fn from_client(seq: u32, ack: Option<u32>, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_seq(ROUTER_MAC, PORT_MAC, ip(CLIENT), ip(VIP), (40000, 80), seq, ack, 502, flags, payload)
}

/// A server segment to the client (as the server sees the flow).
fn from_server(mac: [u8; 6], seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_seq(mac, PORT_MAC, ip("198.18.0.21"), ip(CLIENT), (8080, 40000), seq, Some(ack), 64240, flags, payload)
}

/// The frames the worker wrote of its own since the last call.
fn own_frames(w: &mut Worker) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    w.drain_frames(|port, f| {
        out.push((port, f.to_vec()));
        true
    });
    out
}

/// Client SYN → cookie SYN-ACK (window 0: `syn_proxy`); returns the cookie.
fn handshake_with_cookie(w: &mut Worker, now: u32) -> u32 {
    handshake_with_window(w, now, 0)
}

fn handshake_with_window(w: &mut Worker, now: u32, want_window: u16) -> u32 {
    let mut syn = with_tcp_options(&from_client(CLIENT_ISN, None, SYN, b""), &LINUX_SYN_OPTIONS);
    assert_eq!(w.process(&mut syn, 0, now, false), Verdict::Tx(0));
    let seen = check(&syn).expect("a valid SYN-ACK");
    assert_eq!((seen.src, seen.dst, seen.sport, seen.dport), (ip(VIP), ip(CLIENT), 80, 40000));
    assert_eq!((seen.src_mac, seen.dst_mac, seen.flags), (PORT_MAC, ROUTER_MAC, SYN | ACK));
    assert_eq!(ack(&syn), CLIENT_ISN.wrapping_add(1));
    assert_eq!(window(&syn), want_window, "syn_proxy: no data before the join; l7: room for the request");
    // MSS, window scale 7 and SACK-permitted answered; timestamps declined.
    assert_eq!(options(&syn), [2, 4, 5, 180, 1, 3, 3, 7, 1, 1, 4, 2]);
    seq(&syn)
}

#[test]
fn a_proxied_connection_is_joined_and_spliced_across_the_wrap() {
    let (shared, stats) = setup();
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = handshake_with_cookie(&mut w, 10);
    assert!(own_frames(&mut w).is_empty());
    assert_eq!(stats[0].proxy_active.get(), 0, "a SYN leaves no state");
    assert_eq!(handshake_with_cookie(&mut w, 11), cookie, "a retransmitted SYN gets the same cookie");

    // A forged ACK (not our cookie) opens nothing.
    let mut forged = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(2)), ACK, b"");
    assert_eq!(w.process(&mut forged, 0, 12, false), Verdict::Drop(DropReason::CookieForged));
    assert!(own_frames(&mut w).is_empty());

    // The client's ACK proves the cookie: its SYN is replayed to the server.
    let mut ack1 = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, b"");
    assert_eq!(w.process(&mut ack1, 0, 13, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 1, "the replayed SYN");
    let (port, syn) = &frames[0];
    let s = check(syn).expect("a valid replayed SYN");
    assert_eq!(*port, 0);
    assert_eq!((s.src_mac, s.dst_mac, s.flags), (PORT_MAC, S1_MAC, SYN));
    assert_eq!((s.src, s.dst, s.sport, s.dport), (ip(CLIENT), ip("198.18.0.21"), 40000, 8080));
    assert_eq!(seq(syn), CLIENT_ISN, "the client's own ISN");
    assert_eq!(options(syn), [2, 4, 5, 180, 1, 3, 3, 7, 1, 1, 4, 2], "the client's MSS, scale and SACK");
    assert_eq!(stats[0].proxy_opened.get(), 1);

    // Meanwhile the client's window probe waits; forged and spoofed SYN-ACKs are refused.
    let mut probe = from_client(CLIENT_ISN, Some(cookie.wrapping_add(1)), ACK, b"");
    assert_eq!(w.process(&mut probe, 0, 14, false), Verdict::Consumed);
    let mut wrong_ack = from_server(S1_MAC, SERVER_ISN, CLIENT_ISN.wrapping_add(7), SYN | ACK, b"");
    assert_eq!(w.process(&mut wrong_ack, 0, 15, false), Verdict::Drop(DropReason::ProxyRefused));
    // As in SYN-SENT (RFC 9293): reset what it acknowledges, and the SYN again.
    let frames = own_frames(&mut w);
    let flags: Vec<u8> = frames.iter().map(|(_, f)| check(f).unwrap().flags).collect();
    assert_eq!(flags, [RST, SYN]);
    assert_eq!((seq(&frames[0].1), seq(&frames[1].1)), (CLIENT_ISN.wrapping_add(7), CLIENT_ISN));
    let mut spoofed = from_server(S2_MAC, SERVER_ISN, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut spoofed, 0, 15, false), Verdict::Drop(DropReason::SpoofedReply));
    assert!(own_frames(&mut w).is_empty());

    // The server answers: the appliance ACKs it and opens the client's window.
    let mut synack = with_tcp_options(
        &from_server(S1_MAC, SERVER_ISN, CLIENT_ISN.wrapping_add(1), SYN | ACK, b""),
        &SERVER_SYNACK_OPTIONS,
    );
    assert_eq!(w.process(&mut synack, 0, 16, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 2, "ACK to the server, window update to the client");
    let (to_server, to_client) = (&frames[0].1, &frames[1].1);
    let s = check(to_server).expect("a valid ACK");
    assert_eq!((s.dst, s.dport, s.flags, s.dst_mac), (ip("198.18.0.21"), 8080, ACK, S1_MAC));
    assert_eq!(
        (seq(to_server), ack(to_server), window(to_server)),
        (CLIENT_ISN.wrapping_add(1), SERVER_ISN.wrapping_add(1), 502)
    );
    let c = check(to_client).expect("a valid window update");
    assert_eq!((c.src, c.sport, c.dst, c.flags, c.dst_mac), (ip(VIP), 80, ip(CLIENT), ACK, ROUTER_MAC));
    assert_eq!((seq(to_client), ack(to_client)), (cookie.wrapping_add(1), CLIENT_ISN.wrapping_add(1)));
    assert_eq!(window(to_client), 64240 >> 7, "the server's window in the scale the client reads");
    assert_eq!(stats[0].proxy_joined.get(), 1);

    // Data both ways, its sequence numbers crossing 2^32 on each side.
    let request = b"GET /0123456789abcdef HTTP/1.1\r\n\r\n";
    let mut data = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK | PSH, request);
    assert_eq!(w.process(&mut data, 0, 17, false), Verdict::Tx(0));
    let s = check(&data).expect("valid after translation");
    assert_eq!((s.dst, s.dport, s.dst_mac, s.payload.as_slice()), (ip("198.18.0.21"), 8080, S1_MAC, &request[..]));
    assert_eq!((seq(&data), ack(&data)), (CLIENT_ISN.wrapping_add(1), SERVER_ISN.wrapping_add(1)));
    let after_request = CLIENT_ISN.wrapping_add(1).wrapping_add(request.len() as u32);

    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut reply = from_server(S1_MAC, SERVER_ISN.wrapping_add(1), after_request, ACK | PSH, response);
    assert_eq!(w.process(&mut reply, 0, 18, false), Verdict::Tx(0));
    let c = check(&reply).expect("valid after translation");
    assert_eq!((c.src, c.sport, c.dst, c.dport, c.dst_mac), (ip(VIP), 80, ip(CLIENT), 40000, ROUTER_MAC));
    assert_eq!(c.payload.as_slice(), &response[..]);
    assert_eq!((seq(&reply), ack(&reply)), (cookie.wrapping_add(1), after_request));
    assert_eq!(window(&reply), 64240, "equal scales: the window passes unchanged");

    // The client's ACK and SACK block (in the cookie's space) reach the server in its own.
    let edge = |n: u32| cookie.wrapping_add(1).wrapping_add(n);
    let mut sack = [1u8, 1, 5, 10, 0, 0, 0, 0, 0, 0, 0, 0];
    sack[4..8].copy_from_slice(&edge(20).to_be_bytes());
    sack[8..12].copy_from_slice(&edge(30).to_be_bytes());
    let mut client_ack = with_tcp_options(&from_client(after_request, Some(edge(10)), ACK, b""), &sack);
    assert_eq!(w.process(&mut client_ack, 0, 19, false), Verdict::Tx(0));
    check(&client_ack).expect("valid after translation");
    let server_edge = |n: u32| SERVER_ISN.wrapping_add(1).wrapping_add(n);
    assert_eq!(ack(&client_ack), server_edge(10));
    let o = options(&client_ack);
    assert_eq!((be32(&o, 4), be32(&o, 8)), (server_edge(20), server_edge(30)));

    // FIN both ways passes through.
    let mut fin = from_client(after_request, Some(edge(response.len() as u32)), FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 20, false), Verdict::Tx(0));
    assert_eq!(check(&fin).unwrap().flags, FIN | ACK);
    let mut fin =
        from_server(S1_MAC, server_edge(response.len() as u32), after_request.wrapping_add(1), FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 21, false), Verdict::Tx(0));
    assert_eq!(seq(&fin), edge(response.len() as u32));
    assert_eq!(stats[0].proxy_active.get(), 1);
    assert!(own_frames(&mut w).is_empty());
}

#[test]
fn a_server_that_never_answers_gets_the_syn_again_then_the_client_is_reset() {
    let (shared, stats) = setup();
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = handshake_with_cookie(&mut w, 0);
    let mut ack1 = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, b"");
    assert_eq!(w.process(&mut ack1, 0, 0, false), Verdict::Consumed);
    assert_eq!(own_frames(&mut w).len(), 1);
    let mut syns = 1;
    let mut reset = None;
    let mut server_reset = false;
    for now in (10..2000).step_by(10) {
        w.sweep(now);
        for (_, f) in own_frames(&mut w) {
            let s = check(&f).expect("valid");
            if s.flags == SYN {
                assert_eq!(seq(&f), CLIENT_ISN);
                syns += 1;
            } else if s.dst == ip("198.18.0.21") {
                // Its half-open connection, if the SYNs reached it, is ended too.
                assert_eq!((s.flags, seq(&f)), (RST, CLIENT_ISN.wrapping_add(1)));
                server_reset = true;
            } else {
                assert_eq!((s.flags, s.dst, s.sport), (RST, ip(CLIENT), 80));
                reset.get_or_insert((now, seq(&f)));
            }
        }
    }
    assert_eq!(syns, 4, "the SYN is sent 4 times in all");
    assert!(server_reset, "the server is reset when the client is");
    let (when, rst_seq) = reset.expect("the client is reset");
    assert!((750..=1100).contains(&when), "reset at {when} ms");
    assert_eq!(rst_seq, cookie.wrapping_add(1), "at the client's next expected sequence number");
    assert_eq!(stats[0].proxy_failed.get(), 1);
    // The failed connection goes after the closing timeout.
    w.sweep(10_000);
    assert_eq!(stats[0].proxy_active.get(), 0);
}

#[test]
fn a_server_refusing_the_replayed_syn_resets_the_client_and_a_new_syn_starts_afresh() {
    let (shared, stats) = setup();
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = handshake_with_cookie(&mut w, 0);
    let mut ack1 = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, b"");
    assert_eq!(w.process(&mut ack1, 0, 0, false), Verdict::Consumed);
    own_frames(&mut w);
    let mut refused = from_server(S1_MAC, 0, CLIENT_ISN.wrapping_add(1), RST | ACK, b"");
    assert_eq!(w.process(&mut refused, 0, 1, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 1);
    let c = check(&frames[0].1).expect("valid");
    assert_eq!((c.flags, c.dst, seq(&frames[0].1)), (RST, ip(CLIENT), cookie.wrapping_add(1)));
    assert_eq!(stats[0].proxy_failed.get(), 1);
    // The client tries again on the same port: a new cookie answers.
    assert_eq!(handshake_with_cookie(&mut w, 2), cookie);
    assert_eq!(stats[0].proxy_active.get(), 0, "the failed connection made room");
}

#[test]
fn acks_without_a_valid_cookie_open_nothing() {
    let (shared, stats) = setup();
    let mut w = Worker::new(0, &shared, &stats[0]);
    // Blind ACKs, as a flood of spoofed ones would be: each refused, as
    // stale (its slice bits name no live slice) or forged.
    for i in 0..1000u32 {
        let mut f = from_client(i.wrapping_mul(2_654_435_761), Some(i.wrapping_mul(40503)), ACK, b"");
        let v = w.process(&mut f, 0, 0, false);
        assert!(matches!(v, Verdict::Drop(DropReason::CookieForged | DropReason::CookieStale)), "{v:?}");
    }
    // A RST without a connection is nobody's.
    let mut rst = from_client(1, None, RST, b"");
    assert_eq!(w.process(&mut rst, 0, 0, false), Verdict::Drop(DropReason::NoSession));
    // The cookie of another client port does not open this one.
    let cookie = handshake_with_cookie(&mut w, 0);
    let mut other = tcp_seq(
        ROUTER_MAC,
        PORT_MAC,
        ip(CLIENT),
        ip(VIP),
        (40001, 80),
        CLIENT_ISN.wrapping_add(1),
        Some(cookie.wrapping_add(1)),
        502,
        ACK,
        b"",
    );
    assert_eq!(w.process(&mut other, 0, 1, false), Verdict::Drop(DropReason::CookieForged));
    assert!(own_frames(&mut w).is_empty());
    assert_eq!(stats[0].proxy_active.get(), 0);
}

const L7: &str = "mode: l7, group: nat, l7: { rules: [ { path_prefix: /api/, group: api } ] }";
const S3_MAC: [u8; 6] = [2, 0, 0, 0, 2, 3];
const S4_MAC: [u8; 6] = [2, 0, 0, 0, 2, 4];

/// An `l7` connection up to its cookie ACK: returns the cookie.
fn l7_accepted(w: &mut Worker) -> u32 {
    let cookie = handshake_with_window(w, 0, 16384);
    let mut ack = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 1, false), Verdict::Consumed);
    assert!(own_frames(w).is_empty(), "no server before the request");
    cookie
}

/// Sends `request` in `pieces` client segments; checks each is ACKed by
/// the appliance; returns the frames written after the last one.
fn send_request(w: &mut Worker, cookie: u32, request: &[u8], pieces: usize) -> Vec<(u8, Vec<u8>)> {
    let size = request.len().div_ceil(pieces);
    let mut at = 0;
    let mut last = Vec::new();
    for chunk in request.chunks(size) {
        let seq = CLIENT_ISN.wrapping_add(1).wrapping_add(at as u32);
        let mut f = from_client(seq, Some(cookie.wrapping_add(1)), ACK | PSH, chunk);
        assert_eq!(w.process(&mut f, 0, 2, false), Verdict::Consumed);
        at += chunk.len();
        let frames = own_frames(w);
        let (_, ack) = &frames[0];
        let a = check(ack).expect("a valid ACK");
        assert_eq!((a.src, a.dst, a.flags, a.dst_mac), (ip(VIP), ip(CLIENT), ACK, ROUTER_MAC));
        assert_eq!((seq_of(ack), ack_of(ack)), (cookie.wrapping_add(1), CLIENT_ISN.wrapping_add(1 + at as u32)));
        last = frames;
    }
    last
}

fn seq_of(f: &[u8]) -> u32 {
    seq(f)
}
fn ack_of(f: &[u8]) -> u32 {
    ack(f)
}

#[test]
fn l7_requests_are_gathered_in_1_2_and_7_segments_and_routed_by_their_path() {
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test\r\n\r\n");
    for (pieces, path, server_mac) in [(1, "/api/users", S3_MAC), (2, "/index.html", S1_MAC), (7, "/api/v2", S4_MAC)] {
        let (shared, stats) = setup_with(L7);
        let mut w = Worker::new(0, &shared, &stats[0]);
        // The api group alternates its two servers: the third case is the second api request.
        if server_mac == S4_MAC {
            let cookie = l7_accepted(&mut w);
            send_request(&mut w, cookie, request("/api/first").as_bytes(), 1);
            let mut rst = from_client(CLIENT_ISN.wrapping_add(1 + request("/api/first").len() as u32), None, RST, b"");
            assert_eq!(w.process(&mut rst, 0, 3, false), Verdict::Consumed);
            own_frames(&mut w);
        }
        let cookie = l7_accepted(&mut w);
        let req = request(path);
        let frames = send_request(&mut w, cookie, req.as_bytes(), pieces);
        assert_eq!(frames.len(), 2, "{pieces} pieces: the last ACK, then the replayed SYN");
        let (_, syn) = &frames[1];
        let s = check(syn).expect("a valid SYN");
        assert_eq!((s.flags, s.dst_mac, seq(syn)), (SYN, server_mac, CLIENT_ISN), "{path} in {pieces} pieces");
        assert_eq!(stats[0].proxy_active.get(), 1);
    }
}

#[test]
fn l7_sends_the_request_at_the_join_and_splices_the_response_across_the_wrap() {
    let (shared, stats) = setup_with(L7);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    let req = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: ringlb-test/1.0\r\nAccept: */*\r\nX-Long: 0123456789012345678901234567890123456789\r\n\r\n";
    // A retransmitted first piece and an out-of-order one: ACKed with what is gathered.
    send_request(&mut w, cookie, &req[..10], 1);
    let mut again = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, &req[..10]);
    assert_eq!(w.process(&mut again, 0, 3, false), Verdict::Consumed);
    let mut ahead = from_client(CLIENT_ISN.wrapping_add(21), Some(cookie.wrapping_add(1)), ACK, &req[20..]);
    assert_eq!(w.process(&mut ahead, 0, 3, false), Verdict::Consumed);
    for (_, dup) in own_frames(&mut w) {
        assert_eq!(ack(&dup), CLIENT_ISN.wrapping_add(11), "a duplicate ACK of what is gathered");
    }
    let mut rest = from_client(CLIENT_ISN.wrapping_add(11), Some(cookie.wrapping_add(1)), ACK | PSH, &req[10..]);
    assert_eq!(w.process(&mut rest, 0, 4, false), Verdict::Consumed);
    assert_eq!(own_frames(&mut w).len(), 2, "ACK, SYN to the default group's server");

    // The server answers: the request goes to it, ACKing its SYN-ACK.
    let mut synack = with_tcp_options(
        &from_server(S1_MAC, SERVER_ISN, CLIENT_ISN.wrapping_add(1), SYN | ACK, b""),
        &[2, 4, 0, 64, 1, 3, 3, 7], // MSS 64: the request goes in 64-byte segments
    );
    assert_eq!(w.process(&mut synack, 0, 5, false), Verdict::Consumed);
    let sent = own_frames(&mut w);
    assert_eq!(sent.len(), req.len().div_ceil(64));
    assert!(sent.len() >= 2);
    let mut got = Vec::new();
    for (i, (_, f)) in sent.iter().enumerate() {
        let s = check(f).expect("a valid request segment");
        assert_eq!((s.dst, s.dport, s.dst_mac), (ip("198.18.0.21"), 8080, S1_MAC));
        assert_eq!(seq(f), CLIENT_ISN.wrapping_add(1 + got.len() as u32));
        assert_eq!(ack(f), SERVER_ISN.wrapping_add(1));
        assert_eq!(s.flags & PSH != 0, i == sent.len() - 1, "PSH on the last segment only");
        got.extend_from_slice(&s.payload);
    }
    assert_eq!(got, req);
    assert_eq!(stats[0].proxy_joined.get(), 1);

    // Not ACKed within 200 ms: sent again (then 400 ms after).
    w.sweep(150);
    assert!(own_frames(&mut w).is_empty());
    w.sweep(210);
    assert_eq!(own_frames(&mut w).len(), sent.len(), "the request again");
    // The server ACKs it and answers; the response reaches the client in its numbers.
    let after = CLIENT_ISN.wrapping_add(1 + req.len() as u32);
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut reply = from_server(S1_MAC, SERVER_ISN.wrapping_add(1), after, ACK | PSH, response);
    assert_eq!(w.process(&mut reply, 0, 300, false), Verdict::Tx(0));
    let c = check(&reply).expect("valid after translation");
    assert_eq!((c.src, c.sport, c.dst, c.payload.as_slice()), (ip(VIP), 80, ip(CLIENT), &response[..]));
    assert_eq!((seq(&reply), ack(&reply)), (cookie.wrapping_add(1), after));
    w.sweep(2000);
    assert!(own_frames(&mut w).is_empty(), "ACKed: not sent again");
    // A keep-alive request on the same connection goes to the same server, spliced.
    let next = b"GET /api/x HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let mut f = from_client(after, Some(cookie.wrapping_add(1 + response.len() as u32)), ACK | PSH, next);
    assert_eq!(w.process(&mut f, 0, 2001, false), Verdict::Tx(0));
    let s = check(&f).expect("valid after translation");
    assert_eq!((s.dst_mac, ack(&f)), (S1_MAC, SERVER_ISN.wrapping_add(1 + response.len() as u32)));
}

#[test]
fn l7_refuses_what_is_not_a_request_and_slow_clients() {
    let (shared, stats) = setup_with(L7);
    let mut w = Worker::new(0, &shared, &stats[0]);
    // Not HTTP: the client is reset.
    let cookie = l7_accepted(&mut w);
    let mut junk =
        from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, b"\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(w.process(&mut junk, 0, 2, false), Verdict::Drop(DropReason::L7Request));
    let frames = own_frames(&mut w);
    let (_, rst) = frames.last().expect("a RST");
    assert_eq!((check(rst).unwrap().flags, seq(rst)), (RST, cookie.wrapping_add(1)));
    assert_eq!(stats[0].proxy_active.get(), 0);
    // A head that never completes within 16 KiB: reset.
    let cookie = l7_accepted(&mut w);
    let mut at = 0u32;
    let line = [b'a'; 1400];
    let mut last = Verdict::Consumed;
    while last == Verdict::Consumed {
        let mut f = from_client(CLIENT_ISN.wrapping_add(1 + at), Some(cookie.wrapping_add(1)), ACK, &line);
        last = w.process(&mut f, 0, 3, false);
        at += 1400;
        assert!(at < 20_000, "never refused");
    }
    assert_eq!(last, Verdict::Drop(DropReason::L7Request));
    assert!(at > 16 * 1024 - 1400);
    // A client that sends part of a head and stops: reset after 10 s.
    own_frames(&mut w);
    let cookie = l7_accepted(&mut w);
    let mut part = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, b"GET / HTTP/1.1\r\n");
    assert_eq!(w.process(&mut part, 0, 3, false), Verdict::Consumed);
    own_frames(&mut w);
    w.sweep(5_000);
    assert!(own_frames(&mut w).is_empty());
    w.sweep(10_100);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 1);
    assert_eq!(check(&frames[0].1).unwrap().flags, RST);
    assert_eq!(stats[0].proxy_active.get(), 0, "every buffer given back");
}

#[test]
fn l7_a_client_closing_before_its_request_is_reset_at_once() {
    let (shared, stats) = setup_with(L7);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    let mut fin = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), FIN | ACK, b"GET / HT");
    assert_eq!(w.process(&mut fin, 0, 2, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    let (_, rst) = frames.last().expect("a RST");
    assert_eq!((check(rst).unwrap().flags, seq(rst)), (RST, cookie.wrapping_add(1)));
    assert_eq!(stats[0].proxy_active.get(), 0);
    // A FIN after a complete head waits for the join: the request is bound.
    let cookie = l7_accepted(&mut w);
    let mut fin =
        from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), FIN | ACK, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(w.process(&mut fin, 0, 2, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 2, "the ACK (of the bytes, not the FIN), the SYN to the server");
    assert_eq!(ack(&frames[0].1), CLIENT_ISN.wrapping_add(1 + 18));
    assert_eq!(check(&frames[1].1).unwrap().flags, SYN);
}

/// A segment from server `addr` (port 8080) to the client.
fn from(addr: &str, mac: [u8; 6], seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_seq(mac, PORT_MAC, ip(addr), ip(CLIENT), (8080, 40000), seq, Some(ack), 64240, flags, payload)
}

const REDIRECT: &str = "mode: l7, group: api, l7: { redirect_on: [503], retries: 1 }";

#[test]
fn l7_a_server_answering_503_is_replaced_before_the_client_sees_anything() {
    let (shared, stats) = setup_with(REDIRECT);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let frames = send_request(&mut w, cookie, req, 1);
    assert_eq!(check(&frames[1].1).unwrap().dst_mac, S3_MAC, "the first pick");
    let after = CLIENT_ISN.wrapping_add(1 + req.len() as u32);
    let mut synack = from("198.18.0.23", S3_MAC, 0x5000, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 3, false), Verdict::Consumed);
    assert_eq!(own_frames(&mut w).len(), 1, "the request");
    // 503: the client sees nothing; S3 is reset at its next expected byte, S4 gets the SYN.
    let mut busy =
        from("198.18.0.23", S3_MAC, 0x5001, after, ACK | PSH, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(w.process(&mut busy, 0, 4, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 2);
    let (rst, syn) = (check(&frames[0].1).unwrap(), check(&frames[1].1).unwrap());
    assert_eq!((rst.flags, rst.dst_mac, seq(&frames[0].1)), (RST, S3_MAC, after));
    assert_eq!((syn.flags, syn.dst_mac, seq(&frames[1].1)), (SYN, S4_MAC, CLIENT_ISN));
    assert_eq!((stats[0].l7_redirects.get(), stats[0].server_redirects[0].get()), (1, 1));
    // S3's late segments find no connection bound to it; S4 joins with its own ISN and answers.
    let mut late = from("198.18.0.23", S3_MAC, 0x5001, after, ACK, b"x");
    assert_eq!(w.process(&mut late, 0, 5, false), Verdict::Drop(DropReason::NoSession));
    let mut synack = from("198.18.0.24", S4_MAC, 0x9000_0000, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 6, false), Verdict::Consumed);
    let sent = own_frames(&mut w);
    assert_eq!(check(&sent[0].1).unwrap().payload, req, "the same request to S4");
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut reply = from("198.18.0.24", S4_MAC, 0x9000_0001, after, ACK | PSH, ok);
    assert_eq!(w.process(&mut reply, 0, 7, false), Verdict::Tx(0));
    let c = check(&reply).unwrap();
    assert_eq!((c.src, c.payload.as_slice(), seq(&reply)), (ip(VIP), &ok[..], cookie.wrapping_add(1)));
    // Answered: a later 503 on the connection is the client's business.
    let mut later =
        from("198.18.0.24", S4_MAC, 0x9000_0001 + ok.len() as u32, after, ACK, b"HTTP/1.1 503 Busy\r\n\r\n");
    assert_eq!(w.process(&mut later, 0, 8, false), Verdict::Tx(0));
}

#[test]
fn l7_a_refused_or_silent_server_is_replaced_and_retries_are_bounded() {
    let (shared, stats) = setup_with(REDIRECT);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    send_request(&mut w, cookie, b"GET / HTTP/1.1\r\n\r\n", 1);
    // S3 refuses the SYN: S4 gets it, no RST to the client.
    let mut refused = from("198.18.0.23", S3_MAC, 0, CLIENT_ISN.wrapping_add(1), RST | ACK, b"");
    assert_eq!(w.process(&mut refused, 0, 3, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 1);
    assert_eq!((check(&frames[0].1).unwrap().flags, check(&frames[0].1).unwrap().dst_mac), (SYN, S4_MAC));
    // S4 stays silent: after its SYN tries, retries (1) are used up: the client is reset.
    let mut resets = 0;
    for now in (10..3000).step_by(10) {
        w.sweep(now);
        for (_, f) in own_frames(&mut w) {
            let s = check(&f).unwrap();
            if s.flags == RST && s.dst == ip(CLIENT) {
                resets += 1;
                assert_eq!(seq(&f), cookie.wrapping_add(1));
            } else {
                assert_eq!(s.dst_mac, S4_MAC, "no third server");
            }
        }
    }
    assert_eq!(resets, 1);
    assert_eq!((stats[0].l7_redirects.get(), stats[0].proxy_failed.get()), (1, 1));

    // With retries left but one server only answering 503s, that answer reaches the client.
    let (shared, stats) = setup_with("mode: l7, group: api, l7: { redirect_on: [503], retries: 0 }");
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    let req = b"GET / HTTP/1.1\r\n\r\n";
    send_request(&mut w, cookie, req, 1);
    let mut synack = from("198.18.0.23", S3_MAC, 7, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    w.process(&mut synack, 0, 3, false);
    let mut busy = from(
        "198.18.0.23",
        S3_MAC,
        8,
        CLIENT_ISN.wrapping_add(1 + req.len() as u32),
        ACK,
        b"HTTP/1.1 503 Busy\r\n\r\n",
    );
    assert_eq!(w.process(&mut busy, 0, 4, false), Verdict::Tx(0), "no retries: forwarded as it is");
}

#[test]
fn l7_race_sends_the_syn_to_two_servers_and_the_first_answer_binds() {
    let (shared, stats) = setup_with("mode: l7, group: api, l7: { connect: race, fanout: 2 }");
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    let req = b"GET / HTTP/1.1\r\n\r\n";
    let frames = send_request(&mut w, cookie, req, 1);
    let syns: Vec<[u8; 6]> = frames[1..].iter().map(|(_, f)| check(f).unwrap().dst_mac).collect();
    assert_eq!(syns, [S3_MAC, S4_MAC], "the SYN to both");
    // S4 answers first: it gets the request, S3's handshake is reset.
    let mut synack = from("198.18.0.24", S4_MAC, 0x4000, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 3, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    let seen: Vec<(u8, [u8; 6])> =
        frames.iter().map(|(_, f)| check(f).map(|s| (s.flags, s.dst_mac)).unwrap()).collect();
    assert_eq!(seen, [(RST, S3_MAC), (ACK | PSH, S4_MAC)]);
    assert_eq!(seq(&frames[0].1), CLIENT_ISN.wrapping_add(1), "S3 reset in SYN-RECEIVED");
    assert_eq!((stats[0].server_race_won[1].get(), stats[0].server_new_sessions[1].get()), (1, 1));
    // S3's late SYN-ACK belongs to nobody now.
    let mut late = from("198.18.0.23", S3_MAC, 0x3000, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut late, 0, 4, false), Verdict::Drop(DropReason::NoSession));
    // A refusal in the race leaves the other candidate.
    let (shared, stats) = setup_with("mode: l7, group: api, l7: { connect: race, fanout: 2 }");
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    send_request(&mut w, cookie, req, 1);
    let mut refused = from("198.18.0.23", S3_MAC, 0, CLIENT_ISN.wrapping_add(1), RST | ACK, b"");
    assert_eq!(w.process(&mut refused, 0, 3, false), Verdict::Consumed);
    assert!(own_frames(&mut w).is_empty(), "S4 may still answer");
    assert_eq!(stats[0].server_redirects[0].get(), 1, "a failed attempt on S3");
    w.sweep(300);
    let again: Vec<[u8; 6]> = own_frames(&mut w).iter().map(|(_, f)| check(f).unwrap().dst_mac).collect();
    assert_eq!(again, [S4_MAC], "the SYN again, to S4 only");
    let mut synack = from("198.18.0.24", S4_MAC, 0x4000, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 301, false), Verdict::Consumed);
    assert_eq!(stats[0].proxy_joined.get(), 1);
}

#[test]
fn l7_a_blind_reset_or_error_in_the_servers_name_does_not_move_the_request() {
    let (shared, stats) = setup_with(REDIRECT);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    let req = b"GET /x HTTP/1.1\r\n\r\n";
    send_request(&mut w, cookie, req, 1);
    let after = CLIENT_ISN.wrapping_add(1 + req.len() as u32);
    let mut synack = from("198.18.0.23", S3_MAC, 0x5000, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 3, false), Verdict::Consumed);
    own_frames(&mut w);
    // Forged in S3's name (its address, port and MAC) but not at its next
    // sequence number (0x5001): neither ends the attempt nor sends the request elsewhere.
    let mut rst = from("198.18.0.23", S3_MAC, 0x7777, after, RST | ACK, b"");
    w.process(&mut rst, 0, 4, false);
    let mut busy = from("198.18.0.23", S3_MAC, 0x9999, after, ACK | PSH, b"HTTP/1.1 503 Busy\r\n\r\n");
    w.process(&mut busy, 0, 5, false);
    assert!(own_frames(&mut w).iter().all(|(_, f)| check(f).unwrap().dst_mac != S4_MAC), "no SYN to S4");
    assert_eq!(stats[0].l7_redirects.get(), 0);
    // S3's real answer still reaches the client.
    let mut ok = from("198.18.0.23", S3_MAC, 0x5001, after, ACK | PSH, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(w.process(&mut ok, 0, 6, false), Verdict::Tx(0));
    assert_eq!(seq(&ok), cookie.wrapping_add(1));
}

// Mid-download failover.

const DOWNLOAD: &str = "mode: l7, group: api, l7: { retries: 1 }";
const GET: &[u8] = b"GET /big.bin HTTP/1.1\r\nHost: a\r\nUser-Agent: test\r\n\r\n";
const HEAD_200: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nETag: \"abc\"\r\nAccept-Ranges: bytes\r\n\r\n";
const S3_ISN: u32 = 0x5000;

fn body() -> Vec<u8> {
    (0..3000u32).map(|i| (i % 251) as u8).collect()
}

/// An l7 download from S3: the request, S3's head and body bytes 0..1000,
/// the client's ACK of the head and 600 body bytes. Returns (cookie, the
/// client's next sequence number).
fn download_halfway(w: &mut Worker) -> (u32, u32) {
    let cookie = l7_accepted(w);
    let frames = send_request(w, cookie, GET, 1);
    assert_eq!(check(&frames[1].1).unwrap().dst_mac, S3_MAC);
    let after = CLIENT_ISN.wrapping_add(1 + GET.len() as u32);
    let mut synack = from("198.18.0.23", S3_MAC, S3_ISN, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 3, false), Verdict::Consumed);
    own_frames(w);
    let mut head = from("198.18.0.23", S3_MAC, S3_ISN + 1, after, ACK | PSH, HEAD_200);
    assert_eq!(w.process(&mut head, 0, 4, false), Verdict::Tx(0));
    let at = S3_ISN + 1 + HEAD_200.len() as u32;
    let mut data = from("198.18.0.23", S3_MAC, at, after, ACK, &body()[..1000]);
    assert_eq!(w.process(&mut data, 0, 5, false), Verdict::Tx(0));
    assert_eq!(seq(&data), cookie.wrapping_add(1 + HEAD_200.len() as u32));
    let client_has = cookie.wrapping_add(1 + HEAD_200.len() as u32 + 600);
    let mut ack = from_client(after, Some(client_has), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 6, false), Verdict::Tx(0));
    assert!(own_frames(w).is_empty());
    (cookie, after)
}

#[test]
fn l7_a_blind_fin_or_reset_in_the_servers_name_does_not_move_a_download() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (_, after) = download_halfway(&mut w);
    let next = S3_ISN + 1 + HEAD_200.len() as u32 + 1000;
    // A FIN further ahead than any receive window, and RSTs off the
    // server's next byte: no failover.
    for (seq, flags) in [(next + (16 << 20), FIN | ACK), (next + 1, RST), (next - 10, RST | ACK)] {
        let mut forged = from("198.18.0.23", S3_MAC, seq, after, flags, b"");
        let v = w.process(&mut forged, 0, 7, false);
        assert!(own_frames(&mut w).is_empty(), "{flags:#x} at {seq:#x} moved the download ({v:?})");
        if flags & RST != 0 {
            assert_eq!(v, Verdict::Drop(DropReason::ProxyRefused), "a RST off the server's next byte");
        }
    }
    assert_eq!(stats[0].l7_resumes.get() + stats[0].server_redirects[0].get(), 0);
}

/// S3 closes early (a FIN with its last bytes, 1000..1400); S4 gets the
/// SYN. Returns (cookie, after, the resumed SYN's ISN).
fn fail_halfway_to_syn(w: &mut Worker) -> (u32, u32, u32) {
    let (cookie, after) = download_halfway(w);
    let at = S3_ISN + 1 + HEAD_200.len() as u32 + 1000;
    let mut last = from("198.18.0.23", S3_MAC, at, after, FIN | ACK | PSH, &body()[1000..1400]);
    assert_eq!(w.process(&mut last, 0, 10, false), Verdict::Tx(0), "its last bytes pass");
    let c = check(&last).expect("valid with its FIN cleared");
    assert_eq!((c.flags & FIN, c.payload.as_slice()), (0, &body()[1000..1400]), "the FIN does not reach the client");
    let frames = own_frames(w);
    assert_eq!(frames.len(), 2, "RST to S3, SYN to S4");
    let (rst, syn) = (check(&frames[0].1).unwrap(), check(&frames[1].1).unwrap());
    assert_eq!((rst.flags, rst.dst_mac, seq(&frames[0].1)), (RST, S3_MAC, after));
    assert_eq!((syn.flags, syn.dst_mac, syn.src, syn.sport), (SYN, S4_MAC, ip(CLIENT), 40000));
    let isn = seq(&frames[1].1);
    // The client's ACK meanwhile goes nowhere.
    let mut ack = from_client(after, Some(cookie.wrapping_add(1 + HEAD_200.len() as u32 + 1400)), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 11, false), Verdict::Consumed);
    (cookie, after, isn)
}

/// As `fail_halfway_to_syn`, then S4 joins and gets the Range request for
/// byte 600 on.
fn fail_halfway(w: &mut Worker, stats: &[WorkerStats]) -> (u32, u32, u32) {
    let (cookie, after, isn) = fail_halfway_to_syn(w);
    // S4 answers: the Range request, ending exactly where the client's next byte begins.
    let mut synack = from("198.18.0.24", S4_MAC, 0x9000_0000, isn.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 12, false), Verdict::Consumed);
    let sent = own_frames(w);
    let range: Vec<u8> = sent.iter().flat_map(|(_, f)| check(f).unwrap().payload).collect();
    let text = String::from_utf8(range.clone()).unwrap();
    assert!(text.starts_with("GET /big.bin HTTP/1.1\r\n"), "{text:?}");
    assert!(text.contains("\r\nRange: bytes=600-\r\n") && text.ends_with("If-Range: \"abc\"\r\n\r\n"), "{text:?}");
    assert_eq!((seq(&sent[0].1), isn.wrapping_add(1 + range.len() as u32)), (isn.wrapping_add(1), after));
    assert_eq!(stats[0].server_redirects[0].get(), 1, "counted against S3");
    (cookie, after, isn)
}

#[test]
fn l7_a_download_whose_server_closes_halfway_continues_from_another_server() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    // S4's 206 for bytes 600 on: its head is stripped, its body lands at the client's byte 600.
    let head = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 600-2999/3000\r\nContent-Length: 2400\r\nETag: \"abc\"\r\n\r\n";
    let s4_body = 0x9000_0001u32 + head.len() as u32;
    let body = body();
    let mut first = from("198.18.0.24", S4_MAC, 0x9000_0001, after, ACK, &[&head[..], &body[600..1000]].concat());
    assert_eq!(w.process(&mut first, 0, 13, false), Verdict::Tx(0));
    let c = check(&first).expect("valid after the strip");
    assert_eq!((c.src, c.payload.as_slice()), (ip(VIP), &body[600..1000]));
    let byte0 = cookie.wrapping_add(1 + HEAD_200.len() as u32);
    assert_eq!(seq(&first), byte0 + 600);
    assert_eq!((stats[0].l7_resumes.get(), stats[0].l7_resume_offset.get()), (1, 600));
    // The client already has S3's last bytes (to 1400): its ACK of them
    // would be of data S4 has not sent, which S4 would discard; it reaches
    // S4 held at what S4 sent.
    let mut dup = from_client(after, Some(byte0 + 1400), ACK, b"");
    assert_eq!(w.process(&mut dup, 0, 13, false), Verdict::Tx(0));
    assert_eq!((check(&dup).expect("valid").dst_mac, ack_of(&dup)), (S4_MAC, s4_body + 400));
    // The rest, then S4's FIN at the body's end: it passes.
    let mut rest = from("198.18.0.24", S4_MAC, s4_body + 400, after, ACK, &body[1000..3000]);
    assert_eq!(w.process(&mut rest, 0, 14, false), Verdict::Tx(0));
    assert_eq!(seq(&rest), byte0 + 1000);
    let mut fin = from("198.18.0.24", S4_MAC, s4_body + 2400, after, FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 15, false), Verdict::Tx(0));
    assert_eq!(check(&fin).unwrap().flags & FIN, FIN);
    assert!(own_frames(&mut w).is_empty());
    // The client's ACK of it all reaches S4 in S4's numbers.
    let mut ack = from_client(after, Some(byte0 + 3001), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 16, false), Verdict::Tx(0));
    assert_eq!((check(&ack).unwrap().dst_mac, ack_of(&ack)), (S4_MAC, s4_body + 2401));
}

#[test]
fn l7_a_replacement_that_cannot_serve_the_same_bytes_resets_the_client() {
    let other_version =
        &b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 600-2999/3000\r\nETag: \"xyz\"\r\n\r\n"[..];
    let whole = &b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nETag: \"abc\"\r\n\r\n"[..];
    let other_range = &b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-2999/3000\r\nETag: \"abc\"\r\n\r\n"[..];
    for answer in [other_version, whole, other_range] {
        let (shared, stats) = setup_with(DOWNLOAD);
        let mut w = Worker::new(0, &shared, &stats[0]);
        let (cookie, after, _) = fail_halfway(&mut w, &stats);
        let mut head = from("198.18.0.24", S4_MAC, 0x9000_0001, after, ACK, &[answer, &body()[..100]].concat());
        assert_eq!(w.process(&mut head, 0, 13, false), Verdict::Consumed, "{}", String::from_utf8_lossy(answer));
        let frames = own_frames(&mut w);
        let flags: Vec<_> = frames.iter().map(|(_, f)| (check(f).unwrap().flags, check(f).unwrap().dst_mac)).collect();
        assert_eq!(flags, [(RST, S4_MAC), (RST, ROUTER_MAC)]);
        assert_eq!(
            seq(&frames[1].1),
            cookie.wrapping_add(1 + HEAD_200.len() as u32 + 1400),
            "at the client's next byte"
        );
        assert_eq!((stats[0].l7_resumes.get(), stats[0].l7_resume_refused.get()), (0, 1));
        assert_eq!(stats[0].proxy_active.get(), 0);
    }
}

#[test]
fn l7_a_download_whose_server_goes_silent_moves_once_the_client_has_everything() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = download_halfway(&mut w);
    // The client has 600 of the 1000 bytes sent: not a stall yet (they may be in flight).
    w.sweep(3000);
    assert!(own_frames(&mut w).is_empty());
    let mut ack = from_client(after, Some(cookie.wrapping_add(1 + HEAD_200.len() as u32 + 1000)), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 3001, false), Verdict::Tx(0));
    w.sweep(4900);
    assert!(own_frames(&mut w).is_empty(), "the server sent its last byte long ago, but the client's ACK is recent");
    w.sweep(5100);
    let frames = own_frames(&mut w);
    let seen: Vec<_> = frames.iter().map(|(_, f)| (check(f).unwrap().flags, check(f).unwrap().dst_mac)).collect();
    assert_eq!(seen, [(RST, S3_MAC), (SYN, S4_MAC)]);
}

#[test]
fn l7_a_segment_lost_before_the_appliance_does_not_hide_the_servers_failure() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (_, after) = download_halfway(&mut w);
    let at = S3_ISN + 1 + HEAD_200.len() as u32 + 1000;
    // 1000..1400 is lost on the way; 1400..2000 passes, then 1000..1400 comes again.
    let mut later = from("198.18.0.23", S3_MAC, at + 400, after, ACK, &body()[1400..2000]);
    assert_eq!(w.process(&mut later, 0, 7, false), Verdict::Tx(0));
    let mut again = from("198.18.0.23", S3_MAC, at, after, ACK, &body()[1000..1400]);
    assert_eq!(w.process(&mut again, 0, 8, false), Verdict::Tx(0));
    // The server's FIN after 2000 is its failure.
    let mut fin = from("198.18.0.23", S3_MAC, at + 1000, after, FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 9, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    let seen: Vec<_> = frames.iter().map(|(_, f)| (check(f).unwrap().flags, check(f).unwrap().dst_mac)).collect();
    assert_eq!(seen, [(RST, S3_MAC), (SYN, S4_MAC)]);
}

#[test]
fn l7_segments_that_do_not_ack_the_clients_request_neither_end_nor_move_a_download() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (_, after) = download_halfway(&mut w);
    let next = S3_ISN + 1 + HEAD_200.len() as u32 + 1000;
    // A blind sender knows neither the client's sequence numbers nor the
    // server's: a FIN within a window, at the server's next byte or a
    // little ahead, that does not ACK the client's request exactly, is
    // not the server's.
    for (seq, ack) in [(next + 1000, after + 7), (next, after.wrapping_sub(1)), (next + 4000, 0x1234_5678)] {
        let mut forged = from("198.18.0.23", S3_MAC, seq, ack, FIN | ACK, b"");
        let v = w.process(&mut forged, 0, 7, false);
        assert!(own_frames(&mut w).is_empty(), "a FIN at {seq:#x} acking {ack:#x} moved the download ({v:?})");
    }
    // Forged data ahead does not move the server's next byte: its real
    // FIN there is still its failure.
    let mut ahead = from("198.18.0.23", S3_MAC, next + 600, after ^ 0x8000, ACK, &[0u8; 100]);
    w.process(&mut ahead, 0, 8, false);
    let mut fin = from("198.18.0.23", S3_MAC, next, after, FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 9, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    let seen: Vec<_> = frames.iter().map(|(_, f)| (check(f).unwrap().flags, check(f).unwrap().dst_mac)).collect();
    assert_eq!(seen, [(RST, S3_MAC), (SYN, S4_MAC)]);
}

/// The client-facing sequence number after what the client has in
/// `fail_halfway` (S3's bytes to 1400).
fn client_next_byte(cookie: u32) -> u32 {
    cookie.wrapping_add(1 + HEAD_200.len() as u32 + 1400)
}

/// The sequence numbers of the RSTs to the client among `frames`.
fn client_rsts(frames: Vec<(u8, Vec<u8>)>) -> Vec<u32> {
    let to_client = |f: &Vec<u8>| check(f).is_ok_and(|s| s.flags & RST != 0 && s.dst == ip(CLIENT));
    frames.iter().filter(|(_, f)| to_client(f)).map(|(_, f)| seq(f)).collect()
}

/// Runs the sweep from `from` to `to` ms; the RSTs sent to the client (their sequence numbers).
fn client_resets(w: &mut Worker, from: u32, to: u32) -> Vec<u32> {
    (from..to)
        .step_by(10)
        .flat_map(|now| {
            w.sweep(now);
            client_rsts(own_frames(w))
        })
        .collect()
}

#[test]
fn l7_a_resume_that_fails_resets_the_client_at_its_next_byte() {
    // S4 refuses the SYN, and no member is left.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, _, isn) = fail_halfway_to_syn(&mut w);
    let mut refused = from("198.18.0.24", S4_MAC, 0, isn.wrapping_add(1), RST | ACK, b"");
    assert_eq!(w.process(&mut refused, 0, 13, false), Verdict::Consumed);
    assert_eq!(client_rsts(own_frames(&mut w)), [client_next_byte(cookie)], "refused SYN");
    assert_eq!(stats[0].l7_resume_refused.get(), 1);

    // S4 never answers the SYN.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, _, _) = fail_halfway_to_syn(&mut w);
    assert_eq!(client_resets(&mut w, 20, 3000), [client_next_byte(cookie)], "silent SYN");
    assert_eq!(stats[0].l7_resume_refused.get(), 1);

    // S4 closes before its answer.
    for flags in [FIN | ACK, RST | ACK] {
        let (shared, stats) = setup_with(DOWNLOAD);
        let mut w = Worker::new(0, &shared, &stats[0]);
        let (cookie, after, _) = fail_halfway(&mut w, &stats);
        let mut close = from("198.18.0.24", S4_MAC, 0x9000_0001, after, flags, b"");
        w.process(&mut close, 0, 13, false);
        assert_eq!(client_rsts(own_frames(&mut w)), [client_next_byte(cookie)], "{flags:#x} before the head");
        assert_eq!(stats[0].proxy_active.get(), 0);
    }

    // S4 ACKs the Range request but never answers it.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    let mut acked = from("198.18.0.24", S4_MAC, 0x9000_0001, after, ACK, b"");
    assert_eq!(w.process(&mut acked, 0, 14, false), Verdict::Consumed);
    assert_eq!(client_resets(&mut w, 20, 12_000), [client_next_byte(cookie)], "silent after the request");
    assert_eq!(stats[0].proxy_active.get(), 0);
}

#[test]
fn l7_a_client_that_shuts_its_window_is_not_a_stalled_server() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = download_halfway(&mut w);
    // The client has all 1000 bytes and no room for more.
    let all = cookie.wrapping_add(1 + HEAD_200.len() as u32 + 1000);
    let mut shut = tcp_seq(ROUTER_MAC, PORT_MAC, ip(CLIENT), ip(VIP), (40000, 80), after, Some(all), 0, ACK, b"");
    assert_eq!(w.process(&mut shut, 0, 10, false), Verdict::Tx(0));
    for now in (20..10_000).step_by(100) {
        w.sweep(now);
    }
    assert!(own_frames(&mut w).is_empty(), "a shut window is the client's, not the server's");
    // It opens again: the server has its time to send before it counts as stalled.
    let mut open = tcp_seq(ROUTER_MAC, PORT_MAC, ip(CLIENT), ip(VIP), (40000, 80), after, Some(all), 500, ACK, b"");
    assert_eq!(w.process(&mut open, 0, 10_000, false), Verdict::Tx(0));
    w.sweep(11_000);
    assert!(own_frames(&mut w).is_empty(), "1 s after the window opened");
    let moved = (11_000..13_000).step_by(100).map(|now| {
        w.sweep(now);
        own_frames(&mut w)
    });
    let moved: Vec<_> = moved
        .flat_map(|frames| frames.into_iter().map(|(_, f)| (check(&f).unwrap().flags, check(&f).unwrap().dst_mac)))
        .take(2)
        .collect();
    assert_eq!(moved, [(RST, S3_MAC), (SYN, S4_MAC)]);
    assert_eq!(stats[0].l7_resume_refused.get(), 0);
}

#[test]
fn l7_a_replacement_whose_head_comes_in_two_segments_still_resumes() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    let head = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 600-2999/3000\r\nContent-Length: 2400\r\nETag: \"abc\"\r\n\r\n";
    let (first, second) = head.split_at(40);
    let s4 = 0x9000_0001u32;
    // The head's first part: the appliance keeps it and ACKs it for the client.
    let mut one = from("198.18.0.24", S4_MAC, s4, after, ACK, first);
    assert_eq!(w.process(&mut one, 0, 13, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(frames.len(), 1);
    assert_eq!((check(&frames[0].1).unwrap().dst_mac, ack_of(&frames[0].1)), (S4_MAC, s4 + 40));
    // Sent again: still nothing for the client.
    let mut again = from("198.18.0.24", S4_MAC, s4, after, ACK, first);
    assert_eq!(w.process(&mut again, 0, 13, false), Verdict::Consumed);
    own_frames(&mut w);
    // The rest of the head and the first body bytes: the body lands at byte 600.
    let body = body();
    let mut two = from("198.18.0.24", S4_MAC, s4 + 40, after, ACK, &[second, &body[600..1000]].concat());
    assert_eq!(w.process(&mut two, 0, 14, false), Verdict::Tx(0));
    let c = check(&two).expect("valid after the strip");
    assert_eq!(c.payload.as_slice(), &body[600..1000]);
    assert_eq!(seq(&two), cookie.wrapping_add(1 + HEAD_200.len() as u32 + 600));
    assert_eq!((stats[0].l7_resumes.get(), stats[0].l7_resume_offset.get()), (1, 600));
}

/// The flags and destination MAC of each frame.
fn flags_to(frames: &[(u8, Vec<u8>)]) -> Vec<(u8, [u8; 6])> {
    frames.iter().map(|(_, f)| (check(f).unwrap().flags, check(f).unwrap().dst_mac)).collect()
}

const RANGE_HEAD: &[u8] =
    b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 600-2999/3000\r\nContent-Length: 2400\r\nETag: \"abc\"\r\n\r\n";

#[test]
fn l7_a_replacement_that_closes_partway_through_its_head_resets_the_client() {
    let s4 = 0x9000_0001u32;
    // A RST or a FIN at its next byte after part of its head, or a FIN
    // with more of it: no member is left, the client is reset at once.
    let closes: [(u32, u8, &[u8]); 3] =
        [(s4 + 40, RST | ACK, b""), (s4 + 40, FIN | ACK, b""), (s4 + 40, FIN | ACK, &RANGE_HEAD[40..60])];
    for (at, flags, payload) in closes {
        let (shared, stats) = setup_with(DOWNLOAD);
        let mut w = Worker::new(0, &shared, &stats[0]);
        let (cookie, after, _) = fail_halfway(&mut w, &stats);
        let mut one = from("198.18.0.24", S4_MAC, s4, after, ACK, &RANGE_HEAD[..40]);
        assert_eq!(w.process(&mut one, 0, 13, false), Verdict::Consumed);
        own_frames(&mut w);
        let mut close = from("198.18.0.24", S4_MAC, at, after, flags, payload);
        w.process(&mut close, 0, 14, false);
        let frames = own_frames(&mut w);
        assert_eq!(client_rsts(frames), [client_next_byte(cookie)], "{flags:#x} with {} bytes", payload.len());
        assert_eq!((stats[0].proxy_active.get(), stats[0].l7_resume_refused.get()), (0, 1));
    }
}

#[test]
fn l7_a_second_failure_with_no_member_left_resets_the_client_at_its_next_byte() {
    // S4 took over at byte 600 and sent to 1000, but the client has S3's
    // bytes to 1400: S4's FIN or RST at 1000 would fall behind the
    // client's next byte and be discarded, leaving it waiting.
    for flags in [FIN | ACK, RST | ACK] {
        let (shared, stats) = setup_with(DOWNLOAD);
        let mut w = Worker::new(0, &shared, &stats[0]);
        let (cookie, after, _) = fail_halfway(&mut w, &stats);
        let body = body();
        let mut first = from("198.18.0.24", S4_MAC, 0x9000_0001, after, ACK, &[RANGE_HEAD, &body[600..1000]].concat());
        assert_eq!(w.process(&mut first, 0, 13, false), Verdict::Tx(0));
        let s4_next = 0x9000_0001u32 + RANGE_HEAD.len() as u32 + 400;
        let mut fail = from("198.18.0.24", S4_MAC, s4_next, after, flags, b"");
        assert_eq!(w.process(&mut fail, 0, 14, false), Verdict::Consumed, "{flags:#x}");
        let frames = own_frames(&mut w);
        assert_eq!(client_rsts(frames.clone()), [client_next_byte(cookie)], "{flags:#x}");
        let to_s4 = usize::from(flags & RST == 0);
        assert_eq!(flags_to(&frames).iter().filter(|f| **f == (RST, S4_MAC)).count(), to_s4, "{flags:#x}");
        assert_eq!(stats[0].proxy_active.get(), 0);
    }
}

#[test]
fn l7_blind_segments_in_the_clients_name_neither_hold_nor_move_a_download() {
    // A forged zero window (off the client's next byte) does not hide a
    // silent server.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = download_halfway(&mut w);
    let all = cookie.wrapping_add(1 + HEAD_200.len() as u32 + 1000);
    let mut ack = from_client(after, Some(all), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 10, false), Verdict::Tx(0));
    let mut shut = tcp_seq(ROUTER_MAC, PORT_MAC, ip(CLIENT), ip(VIP), (40000, 80), after + 100, Some(all), 0, ACK, b"");
    w.process(&mut shut, 0, 20, false);
    // Nor does a keep-alive probe (one byte before it) end the tracking.
    let mut probe = from_client(after.wrapping_sub(1), Some(all), ACK, b"x");
    w.process(&mut probe, 0, 30, false);
    own_frames(&mut w);
    let moved: Vec<_> = (100..5_000)
        .step_by(100)
        .flat_map(|now| {
            w.sweep(now);
            flags_to(&own_frames(&mut w))
        })
        .take(2)
        .collect();
    assert_eq!(moved, [(RST, S3_MAC), (SYN, S4_MAC)], "a forged window held the download");
    assert_eq!(stats[0].l7_resume_refused.get(), 0);

    // A forged ACK off the client's next byte, or one of bytes nobody
    // sent, does not move where the resume starts (the client has 600).
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = download_halfway(&mut w);
    let byte0 = cookie.wrapping_add(1 + HEAD_200.len() as u32);
    for (seq, acked) in [(after + 7, byte0 + 900), (after, byte0 + 5000)] {
        let mut forged = from_client(seq, Some(acked), ACK, b"");
        w.process(&mut forged, 0, 7, false);
    }
    let next = S3_ISN + 1 + HEAD_200.len() as u32 + 1000;
    let mut rst = from("198.18.0.23", S3_MAC, next, after, RST | ACK, b"");
    assert_eq!(w.process(&mut rst, 0, 8, false), Verdict::Consumed);
    let isn = seq(&own_frames(&mut w)[0].1);
    let mut synack = from("198.18.0.24", S4_MAC, 0x9000_0000, isn.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 9, false), Verdict::Consumed);
    let range: Vec<u8> = own_frames(&mut w).iter().flat_map(|(_, f)| check(f).unwrap().payload).collect();
    let text = String::from_utf8(range).unwrap();
    assert!(text.contains("\r\nRange: bytes=600-\r\n"), "{text:?}");

    // A blind RST while the replacement is asked ends nothing.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    let mut blind = from_client(after + 1000, None, RST, b"");
    assert_eq!(w.process(&mut blind, 0, 13, false), Verdict::Drop(DropReason::ProxyRefused));
    assert!(own_frames(&mut w).is_empty());
    let body = body();
    let mut first = from("198.18.0.24", S4_MAC, 0x9000_0001, after, ACK, &[RANGE_HEAD, &body[600..1000]].concat());
    assert_eq!(w.process(&mut first, 0, 14, false), Verdict::Tx(0));
    assert_eq!(seq(&first), cookie.wrapping_add(1 + HEAD_200.len() as u32 + 600));
    assert_eq!(stats[0].proxy_active.get(), 1);
}

const S5_MAC: [u8; 6] = [2, 0, 0, 0, 2, 5];

#[test]
fn l7_a_replacement_that_fails_partway_through_its_head_is_replaced_from_the_start() {
    let (shared, stats) = setup_api(DOWNLOAD, r#"    - { ip: 198.18.0.25, port: 8080, mac: "02:00:00:00:02:05" }"#);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, isn) = fail_halfway(&mut w, &stats);
    let s4 = 0x9000_0001u32;
    let mut one = from("198.18.0.24", S4_MAC, s4, after, ACK, &RANGE_HEAD[..40]);
    assert_eq!(w.process(&mut one, 0, 13, false), Verdict::Consumed);
    own_frames(&mut w);
    // S4 resets after 40 bytes of its head: S5 is asked, from the start.
    let mut rst = from("198.18.0.24", S4_MAC, s4 + 40, after, RST | ACK, b"");
    assert_eq!(w.process(&mut rst, 0, 14, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(flags_to(&frames), [(SYN, S5_MAC)]);
    assert_eq!(seq(&frames[0].1), isn, "the same ISN: the Range request still ends at the client's next byte");
    let mut synack = from("198.18.0.25", S5_MAC, 0x7000_0000, isn.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 15, false), Verdict::Consumed);
    let range: Vec<u8> = own_frames(&mut w).iter().flat_map(|(_, f)| check(f).unwrap().payload).collect();
    assert!(String::from_utf8_lossy(&range).contains("\r\nRange: bytes=600-\r\n"));
    let body = body();
    let mut first = from("198.18.0.25", S5_MAC, 0x7000_0001, after, ACK, &[RANGE_HEAD, &body[600..1000]].concat());
    assert_eq!(w.process(&mut first, 0, 16, false), Verdict::Tx(0));
    assert_eq!(check(&first).expect("valid after the strip").payload.as_slice(), &body[600..1000]);
    assert_eq!(seq(&first), cookie.wrapping_add(1 + HEAD_200.len() as u32 + 600));
    assert_eq!((stats[0].l7_resumes.get(), stats[0].l7_resume_refused.get()), (1, 0));
}

#[test]
fn l7_blind_segments_in_the_replacements_name_do_not_end_a_resume() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    let s4 = 0x9000_0001u32;
    let mut one = from("198.18.0.24", S4_MAC, s4, after, ACK, &RANGE_HEAD[..40]);
    assert_eq!(w.process(&mut one, 0, 13, false), Verdict::Consumed);
    own_frames(&mut w);
    // In S4's name (its address, port and MAC), but not S4's TCP: a FIN
    // ahead of its next byte (s4 + 40), one at it that does not ACK the
    // client's request, one behind it, and RSTs off its next byte.
    let forged: [(u32, u32, u8, &[u8]); 6] = [
        (s4 + 1000, after, FIN | ACK, b"x"),
        (s4 + 40, after + 7, FIN | ACK, b"x"),
        (s4 + 20, after, FIN | ACK, &RANGE_HEAD[20..30]),
        (s4 + 1000, after, RST | ACK, b""),
        (s4 + 45, after, RST, b""),
        (s4 + 39, after, RST | ACK, b""),
    ];
    for (seq, ack, flags, payload) in forged {
        let mut f = from("198.18.0.24", S4_MAC, seq, ack, flags, payload);
        let v = w.process(&mut f, 0, 14, false);
        let frames = own_frames(&mut w);
        assert!(client_rsts(frames).is_empty(), "{flags:#x} at {seq:#x} acking {ack:#x} reset the client ({v:?})");
        assert_eq!(stats[0].proxy_active.get(), 1, "{flags:#x} at {seq:#x} acking {ack:#x} ended it ({v:?})");
    }
    // S4's real rest of the head: the body lands at the client's byte 600.
    let body = body();
    let mut two = from("198.18.0.24", S4_MAC, s4 + 40, after, ACK, &[&RANGE_HEAD[40..], &body[600..1000]].concat());
    assert_eq!(w.process(&mut two, 0, 15, false), Verdict::Tx(0));
    assert_eq!(check(&two).expect("valid after the strip").payload.as_slice(), &body[600..1000]);
    assert_eq!(seq(&two), cookie.wrapping_add(1 + HEAD_200.len() as u32 + 600));
    assert_eq!((stats[0].l7_resumes.get(), stats[0].l7_resume_refused.get()), (1, 0));
}

#[test]
fn l7_a_blind_client_reset_does_not_disable_failover() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (_, after) = download_halfway(&mut w);
    // RSTs in the client's name, off its next byte: the server's TCP
    // would refuse them, and the appliance keeps tracking the download.
    for seq in [after + 1000, after.wrapping_sub(1)] {
        let mut blind = from_client(seq, None, RST, b"");
        assert_eq!(w.process(&mut blind, 0, 7, false), Verdict::Drop(DropReason::ProxyRefused), "at {seq:#x}");
        assert!(own_frames(&mut w).is_empty());
    }
    // S3 then fails for real: S4 takes over.
    let next = S3_ISN + 1 + HEAD_200.len() as u32 + 1000;
    let mut fin = from("198.18.0.23", S3_MAC, next, after, FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 8, false), Verdict::Consumed);
    assert_eq!(flags_to(&own_frames(&mut w)), [(RST, S3_MAC), (SYN, S4_MAC)]);
}

#[test]
fn l7_a_replacement_that_stalls_behind_the_client_with_no_member_left_resets_it() {
    // S4 took over at byte 600 and sent to 1000; the client has S3's
    // bytes to 1400. S4 goes silent: no member is left, and S4's FIN
    // would fall behind what the client has, so both ends are reset.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    let body = body();
    let mut first = from("198.18.0.24", S4_MAC, 0x9000_0001, after, ACK, &[RANGE_HEAD, &body[600..1000]].concat());
    assert_eq!(w.process(&mut first, 0, 13, false), Verdict::Tx(0));
    let mut frames = Vec::new();
    for now in (20..8_000).step_by(10) {
        w.sweep(now);
        frames.extend(own_frames(&mut w));
    }
    assert_eq!(client_rsts(frames.clone()), [client_next_byte(cookie)]);
    assert_eq!(flags_to(&frames).iter().filter(|f| **f == (RST, S4_MAC)).count(), 1);
    assert_eq!(stats[0].proxy_active.get(), 0);
}

#[test]
fn l7_a_resume_that_ends_is_counted_once() {
    // S4 never answers the SYN: one failure, one RST to the client, however long the sweep runs.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, _, _) = fail_halfway_to_syn(&mut w);
    assert_eq!(client_resets(&mut w, 20, 3_000), [client_next_byte(cookie)]);
    assert_eq!(stats[0].proxy_active.get(), 0, "gone at once: blind packets cannot hold it (and its buffer)");
    assert_eq!(client_resets(&mut w, 3_000, 12_000), Vec::<u32>::new());
    assert_eq!((stats[0].proxy_failed.get(), stats[0].l7_resume_refused.get()), (1, 1));

    // The client itself resets while S4's head is awaited: it passes to
    // S4, and nothing is refused nor reset later.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (_, after, _) = fail_halfway(&mut w, &stats);
    let mut rst = from_client(after, None, RST, b"");
    assert_eq!(w.process(&mut rst, 0, 13, false), Verdict::Tx(0));
    assert_eq!(check(&rst).unwrap().dst_mac, S4_MAC);
    assert_eq!(client_resets(&mut w, 20, 12_000), Vec::<u32>::new());
    assert_eq!((stats[0].proxy_failed.get(), stats[0].l7_resume_refused.get()), (0, 0));
}

#[test]
fn l7_blind_segments_before_the_answer_neither_close_nor_pin_the_request() {
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = joined_to_s3(&mut w);
    // Joined, nothing answered yet. In the client's name, off its next
    // byte: a RST, a FIN, data (which would pin the request to S3); a RST
    // in the request's bytes, and one a byte on (where it would be after a
    // FIN of the client's). In S3's name, off its next byte: a FIN. (The
    // request's own bytes again:
    // `l7_the_request_again_before_the_answer_draws_an_ack_at_a_bounded_rate`.)
    let client_side: [(u32, u8, &[u8]); 5] = [
        (after + 1000, RST, b""),
        (after + 9, FIN | ACK, b""),
        (after + 500, ACK | PSH, b"xyz"),
        (after - 5, RST, b""),
        (after + 1, RST, b""),
    ];
    for (seq, flags, payload) in client_side {
        let mut f = from_client(seq, Some(cookie.wrapping_add(1)), flags, payload);
        let v = w.process(&mut f, 0, 4, false);
        assert_eq!(v, Verdict::Drop(DropReason::ProxyRefused), "{flags:#x} at {seq:#x}");
        assert!(own_frames(&mut w).is_empty(), "{flags:#x} at {seq:#x} drew an answer");
    }
    let mut fin = from("198.18.0.23", S3_MAC, S3_ISN + 5000, after, FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 5, false), Verdict::Drop(DropReason::ProxyRefused));
    // The answer is still tracked: S3's death halfway moves the download to S4.
    let mut head = from("198.18.0.23", S3_MAC, S3_ISN + 1, after, ACK | PSH, HEAD_200);
    assert_eq!(w.process(&mut head, 0, 6, false), Verdict::Tx(0));
    let at = S3_ISN + 1 + HEAD_200.len() as u32;
    let mut data = from("198.18.0.23", S3_MAC, at, after, ACK, &body()[..1000]);
    assert_eq!(w.process(&mut data, 0, 7, false), Verdict::Tx(0));
    let mut ack = from_client(after, Some(cookie.wrapping_add(1 + HEAD_200.len() as u32 + 600)), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 8, false), Verdict::Tx(0));
    // Blind FINs from both sides again, now that the download is tracked
    // (a blind sender knows neither side's sequence numbers).
    let mut fin = from("198.18.0.23", S3_MAC, at + 5000, after ^ 0x4000, FIN | ACK, b"");
    w.process(&mut fin, 0, 9, false);
    let mut fin = from_client(after + 77, Some(cookie.wrapping_add(1)), FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 9, false), Verdict::Drop(DropReason::ProxyRefused));
    own_frames(&mut w);
    let mut last = from("198.18.0.23", S3_MAC, at + 1000, after, FIN | ACK, b"");
    assert_eq!(w.process(&mut last, 0, 10, false), Verdict::Consumed);
    assert_eq!(flags_to(&own_frames(&mut w)), [(RST, S3_MAC), (SYN, S4_MAC)]);
}

#[test]
fn l7_a_replacement_reset_off_the_head_kept_draws_a_challenge_ack() {
    // S4's first head piece was lost: its second is ahead of what the
    // appliance has. Its RST then comes at its own next byte, not the
    // appliance's: a challenge ACK asks where it stands, and its answer
    // (a RST at the ACK, as a closed socket gives) ends the resume.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    let s4 = 0x9000_0001u32;
    let mut ahead = from("198.18.0.24", S4_MAC, s4 + 40, after, ACK, &RANGE_HEAD[40..]);
    assert_eq!(w.process(&mut ahead, 0, 13, false), Verdict::Consumed);
    own_frames(&mut w);
    let mut rst = from("198.18.0.24", S4_MAC, s4 + RANGE_HEAD.len() as u32, after, RST | ACK, b"");
    assert_eq!(w.process(&mut rst, 0, 14, false), Verdict::Drop(DropReason::ProxyRefused));
    let frames = own_frames(&mut w);
    assert_eq!(flags_to(&frames), [(ACK, S4_MAC)]);
    assert_eq!((seq(&frames[0].1), ack_of(&frames[0].1)), (after, s4));
    let mut answer = from("198.18.0.24", S4_MAC, s4, 0, RST, b"");
    w.process(&mut answer, 0, 15, false);
    assert_eq!(client_rsts(own_frames(&mut w)), [client_next_byte(cookie)]);
    assert_eq!(stats[0].proxy_active.get(), 0);
}

/// An `l7` connection joined to S3, its request (`GET`) sent, nothing
/// answered: returns (cookie, the client's next sequence number).
fn joined_to_s3(w: &mut Worker) -> (u32, u32) {
    let cookie = l7_accepted(w);
    send_request(w, cookie, GET, 1);
    let mut synack = from("198.18.0.23", S3_MAC, S3_ISN, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 3, false), Verdict::Consumed);
    own_frames(w);
    (cookie, CLIENT_ISN.wrapping_add(1 + GET.len() as u32))
}

#[test]
fn l7_the_request_again_before_the_answer_draws_an_ack_at_a_bounded_rate() {
    // The appliance ACKed the request itself. When that ACK is lost the
    // client sends the request again (perhaps with more bytes or its FIN
    // collapsed onto it); an idle one sends a keep-alive probe a byte back
    // (Windows sends one byte, which lands here; Linux sends none, and its
    // probe passes to the server like any ACK). Each draws an ACK of the
    // client's next byte, at most one per 500 ms, and none pins the
    // request to S3.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = joined_to_s3(&mut w);
    let mut acks_for = |at: u32, payload: &[u8], now: u32| {
        let mut f = from_client(at, Some(cookie.wrapping_add(1)), ACK | PSH, payload);
        assert_eq!(w.process(&mut f, 0, now, false), Verdict::Consumed, "{} bytes at {at:#x}", payload.len());
        let frames = own_frames(&mut w);
        for (_, f) in &frames {
            let c = check(f).expect("a valid ACK");
            assert_eq!((c.src, c.dst, c.flags, c.dst_mac), (ip(VIP), ip(CLIENT), ACK, ROUTER_MAC));
            assert!(window(f) > 0, "the window stays open");
        }
        frames.iter().map(|(_, f)| (seq(f), ack(f))).collect::<Vec<_>>()
    };
    let acked = (cookie.wrapping_add(1), after);
    assert_eq!(acks_for(CLIENT_ISN.wrapping_add(1), GET, 200), [acked]);
    assert_eq!(acks_for(CLIENT_ISN.wrapping_add(1), GET, 300), [], "at most one per 500 ms");
    assert_eq!(acks_for(after.wrapping_sub(1), b"x", 800), [acked], "a keep-alive probe");
    let collapsed = [GET, b"GET /next HTTP/1.1\r\n"].concat();
    assert_eq!(acks_for(CLIENT_ISN.wrapping_add(1), &collapsed, 1400), [acked], "only the bytes already ACKed");
    let mut with_fin = from_client(CLIENT_ISN.wrapping_add(1), Some(cookie.wrapping_add(1)), FIN | ACK, GET);
    assert_eq!(w.process(&mut with_fin, 0, 1450, false), Verdict::Consumed);
    assert!(own_frames(&mut w).is_empty(), "50 ms after the last ACK");
    // Not pinned: S3 closing before it answers still moves the request to S4.
    let mut fin = from("198.18.0.23", S3_MAC, S3_ISN + 1, after, FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 1500, false), Verdict::Consumed);
    assert_eq!(flags_to(&own_frames(&mut w)), [(RST, S3_MAC), (SYN, S4_MAC)]);
}

#[test]
fn l7_a_flood_of_blind_resets_draws_a_bounded_number_of_challenge_acks() {
    // RFC 5961: a RST off the server's next byte draws a challenge ACK; a
    // flood of them must not draw a flood of ACKs (at most one per 500 ms
    // per connection), nor close anything.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (_, after) = joined_to_s3(&mut w);
    let mut challenges = Vec::new();
    for (i, now) in (0..200u32).map(|i| (i, 10 + i * 5)) {
        let mut rst = from("198.18.0.23", S3_MAC, S3_ISN + 1000 + i * 1460, after, RST, b"");
        assert_eq!(w.process(&mut rst, 0, now, false), Verdict::Drop(DropReason::ProxyRefused));
        for (_, f) in own_frames(&mut w) {
            assert_eq!(check(&f).unwrap().flags, ACK);
            assert_eq!((seq(&f), ack(&f)), (after, S3_ISN + 1));
            challenges.push(now);
        }
    }
    assert_eq!(challenges, [10, 510], "one per 500 ms over a second of RSTs");
    // The connection is as it was: S3's answer reaches the client.
    let mut head = from("198.18.0.23", S3_MAC, S3_ISN + 1, after, ACK | PSH, HEAD_200);
    assert_eq!(w.process(&mut head, 0, 1100, false), Verdict::Tx(0));
}

#[test]
fn l7_a_client_reset_after_its_own_fin_passes_before_the_answer() {
    // The client half-closes after its request (its FIN passes to S3),
    // then gives up: its RST comes at its next byte after the FIN.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = joined_to_s3(&mut w);
    let mut fin = from_client(after, Some(cookie.wrapping_add(1)), FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 4, false), Verdict::Tx(0));
    assert_eq!(check(&fin).unwrap().dst_mac, S3_MAC);
    let mut rst = from_client(after.wrapping_add(1), None, RST, b"");
    assert_eq!(w.process(&mut rst, 0, 5, false), Verdict::Tx(0));
    assert_eq!((check(&rst).unwrap().dst_mac, seq(&rst)), (S3_MAC, after.wrapping_add(1)));
}

#[test]
fn l7_a_first_answer_cut_short_by_its_fin_is_carried_on_by_another_server() {
    // S3's head and the first 1000 body bytes come with its FIN: the
    // client must not see the response end short. The FIN is held; once
    // the client has those bytes, S4 carries on at once.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = joined_to_s3(&mut w);
    let answer = [HEAD_200, &body()[..1000]].concat();
    let mut first = from("198.18.0.23", S3_MAC, S3_ISN + 1, after, FIN | ACK | PSH, &answer);
    assert_eq!(w.process(&mut first, 0, 4, false), Verdict::Tx(0));
    let c = check(&first).expect("valid with its FIN cleared");
    assert_eq!((c.flags & FIN, c.payload.len()), (0, answer.len()), "the bytes pass, the FIN does not");
    let mut ack = from_client(after, Some(cookie.wrapping_add(1 + answer.len() as u32)), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 5, false), Verdict::Tx(0));
    w.sweep(10);
    assert_eq!(flags_to(&own_frames(&mut w)), [(RST, S3_MAC), (SYN, S4_MAC)], "no stall time: S3 closed");
}

#[test]
fn l7_a_replacement_whose_head_comes_with_its_fin_before_the_end_does_not_end_the_download() {
    // S4's 206 head, body 600..1000 and its FIN in one segment, while the
    // client already has S3's bytes to 1400: S4's FIN would fall behind
    // the client's next byte. It is held, and with no member left the
    // client is reset at its next byte (a response cut short is an error,
    // not an end).
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after, _) = fail_halfway(&mut w, &stats);
    let piece = [RANGE_HEAD, &body()[600..1000]].concat();
    let mut first = from("198.18.0.24", S4_MAC, 0x9000_0001, after, FIN | ACK, &piece);
    assert_eq!(w.process(&mut first, 0, 13, false), Verdict::Tx(0));
    let c = check(&first).expect("valid after the strip");
    assert_eq!((c.flags & FIN, c.payload.as_slice()), (0, &body()[600..1000]));
    assert!(own_frames(&mut w).is_empty());
    assert_eq!(client_resets(&mut w, 20, 40), [client_next_byte(cookie)]);
    assert_eq!(stats[0].proxy_active.get(), 0);
}

#[test]
fn l7_a_replacement_head_piece_out_of_order_with_its_fin_draws_a_duplicate_ack() {
    // S4's first head piece is lost; its second comes with a FIN. It is
    // not a close yet (the appliance lacks bytes before it): a duplicate
    // ACK asks for the missing piece.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (_, after, _) = fail_halfway(&mut w, &stats);
    let s4 = 0x9000_0001u32;
    let mut ahead = from("198.18.0.24", S4_MAC, s4 + 40, after, FIN | ACK, &RANGE_HEAD[40..]);
    assert_eq!(w.process(&mut ahead, 0, 13, false), Verdict::Consumed);
    let frames = own_frames(&mut w);
    assert_eq!(flags_to(&frames), [(ACK, S4_MAC)]);
    assert_eq!((seq(&frames[0].1), ack_of(&frames[0].1)), (after, s4));
    assert_eq!(stats[0].proxy_active.get(), 1);
}

#[test]
fn l7_a_client_fin_before_the_answer_pins_the_request() {
    // The client's FIN passed to S3: another server could not be given
    // it, so S3's failure (here a close without an answer) reaches the
    // client as it is, and nothing is resumed later.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = joined_to_s3(&mut w);
    let mut fin = from_client(after, Some(cookie.wrapping_add(1)), FIN | ACK, b"");
    assert_eq!(w.process(&mut fin, 0, 4, false), Verdict::Tx(0));
    let mut close = from("198.18.0.23", S3_MAC, S3_ISN + 1, after.wrapping_add(1), FIN | ACK, b"");
    assert_eq!(w.process(&mut close, 0, 5, false), Verdict::Tx(0), "to the client");
    assert_eq!(check(&close).unwrap().dst, ip(CLIENT));
    assert!(own_frames(&mut w).is_empty());
    assert_eq!(stats[0].l7_redirects.get(), 0);
}

#[test]
fn l7_a_held_fin_sent_again_is_held_again() {
    // S3's first answer comes with its FIN (held); S3 sends the FIN again,
    // with its last bytes, before the client ACKed them: the FIN still
    // does not reach the client, and once the client has everything, S4
    // carries on.
    let (shared, stats) = setup_with(DOWNLOAD);
    let mut w = Worker::new(0, &shared, &stats[0]);
    let (cookie, after) = joined_to_s3(&mut w);
    let answer = [HEAD_200, &body()[..1000]].concat();
    let mut first = from("198.18.0.23", S3_MAC, S3_ISN + 1, after, FIN | ACK | PSH, &answer);
    assert_eq!(w.process(&mut first, 0, 4, false), Verdict::Tx(0));
    let tail = S3_ISN + 1 + HEAD_200.len() as u32 + 900;
    for (at, payload) in [(tail, &body()[900..1000]), (tail + 100, &[][..])] {
        let mut again = from("198.18.0.23", S3_MAC, at, after, FIN | ACK, payload);
        let v = w.process(&mut again, 0, 300, false);
        assert!(v == Verdict::Tx(0) || v == Verdict::Consumed, "{v:?}");
        if v == Verdict::Tx(0) {
            let c = check(&again).expect("valid with its FIN cleared");
            assert_eq!((c.dst, c.flags & FIN, c.payload.len()), (ip(CLIENT), 0, payload.len()));
        }
        assert!(own_frames(&mut w).is_empty());
    }
    let mut ack = from_client(after, Some(cookie.wrapping_add(1 + answer.len() as u32)), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 400, false), Verdict::Tx(0));
    w.sweep(410);
    assert_eq!(flags_to(&own_frames(&mut w)), [(RST, S3_MAC), (SYN, S4_MAC)]);
}

#[test]
fn l7_a_held_fin_with_no_member_left_resets_both_ends() {
    // One usable member (S2 has weight 0): S1's answer cut short by its
    // FIN cannot be carried on. The client, which has every byte sent, is
    // reset (a response cut short is an error, not an end), and so is S1.
    let (shared, stats) = setup_with("mode: l7, group: nat, l7: { retries: 1 }");
    let mut w = Worker::new(0, &shared, &stats[0]);
    let cookie = l7_accepted(&mut w);
    send_request(&mut w, cookie, GET, 1);
    let after = CLIENT_ISN.wrapping_add(1 + GET.len() as u32);
    let mut synack = from("198.18.0.21", S1_MAC, S3_ISN, CLIENT_ISN.wrapping_add(1), SYN | ACK, b"");
    assert_eq!(w.process(&mut synack, 0, 3, false), Verdict::Consumed);
    own_frames(&mut w);
    let answer = [HEAD_200, &body()[..1000]].concat();
    let mut first = from("198.18.0.21", S1_MAC, S3_ISN + 1, after, FIN | ACK | PSH, &answer);
    assert_eq!(w.process(&mut first, 0, 4, false), Verdict::Tx(0));
    assert_eq!(check(&first).unwrap().flags & FIN, 0);
    let end = cookie.wrapping_add(1 + answer.len() as u32);
    let mut ack = from_client(after, Some(end), ACK, b"");
    assert_eq!(w.process(&mut ack, 0, 5, false), Verdict::Tx(0));
    w.sweep(10);
    let frames = own_frames(&mut w);
    assert_eq!(flags_to(&frames), [(RST, ROUTER_MAC), (RST, S1_MAC)]);
    assert_eq!(client_rsts(frames), [end], "at the client's next byte");
    assert_eq!(stats[0].proxy_active.get(), 0);
}
