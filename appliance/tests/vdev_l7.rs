//! The real binary on a `net_pcap` port with an `l7` and a `syn_proxy`
//! service: whole exchanges scripted in the input pcap (handshakes, the
//! request in pieces, the server's handshake, the response, FINs, with
//! retransmissions from both sides), and every frame the appliance sends
//! checked (etherparse recomputes every checksum). The cookie key comes
//! from `syn_cookies.key_file`, so the script can answer the cookies.

mod common;
use common::{read_pcap, run_ringlb, tmpdir, write_pcap};
use ringlb::l7::cookie::{CookieFlow, CookieJar, SynOptions};
use ringlb_testkit::*;

const CONFIG: &str = r#"
eal: { control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 512 }
ports:
  - { device: "DEVICE", ip: 198.18.0.1/24, mac: "02:00:00:00:00:01" }
services:
  - { name: site, vip: 198.18.100.1, port: 80, mode: l7, group: site, l7: { rules: [ { path_prefix: /api/, group: api } ] } }
  - { name: guarded, vip: 198.18.100.2, port: 80, mode: nat, syn_proxy: true, group: guarded }
server_groups:
  site: [ { ip: 198.18.0.21, port: 8080, mac: "02:00:00:00:02:01" } ]
  api: [ { ip: 198.18.0.22, port: 8080, mac: "02:00:00:00:02:02" } ]
  guarded: [ { ip: 198.18.0.23, port: 8080, mac: "02:00:00:00:02:03" } ]
sessions: { capacity: 1000 }
syn_cookies: { key_file: "KEYFILE" }
"#;

const KEY: &str = "3f1c9a7e5b2d4f6081a3c5e7f9b1d3e5a7c9e1f3b5d7f9a1c3e5a7c9e1f3b5d7";
const API_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
const GUARDED_MAC: [u8; 6] = [2, 0, 0, 0, 2, 3];
/// Linux's SYN options: MSS 1460, SACK-permitted, timestamps, NOP, window scale 7.
const LINUX_SYN: [u8; 20] = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
/// A server's SYN-ACK options: MSS 1460, NOP NOP SACK-permitted, NOP window scale 7.
const SERVER_SYNACK: [u8; 12] = [2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 7];
const OPTS: SynOptions = SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true };

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// What the test compares of an output frame.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Out {
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
}

fn out(f: &[u8]) -> Out {
    let s = check(f).unwrap_or_else(|e| panic!("an invalid frame out: {e}: {f:02x?}"));
    assert_eq!(s.src_mac, PORT_MAC);
    Out { dst: s.dst, dport: s.dport, flags: s.flags, seq: be32(f, 38), ack: be32(f, 42), payload: s.payload }
}

#[test]
fn scripted_l7_and_syn_proxy_exchanges_through_net_pcap() {
    let dir = tmpdir("l7");
    let key_file = dir.join("cookie.key");
    std::fs::write(&key_file, KEY).unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let jar = CookieJar::from_secret(KEY);
    let client = ip("203.0.113.7");
    let (vip, guarded_vip, api) = (ip("198.18.100.1"), ip("198.18.100.2"), ip("198.18.0.22"));
    let mut input = Vec::new();
    let mut want = Vec::new();
    let c_tcp = |dst: [u8; 4], port: u16, seq: u32, ack: Option<u32>, flags: u8, payload: &[u8]| {
        tcp_seq(ROUTER_MAC, PORT_MAC, client, dst, (port, 80), seq, ack, 502, flags, payload)
    };

    // --- l7: /api/x in two pieces, across 2^32 on both sides ---
    let (c_isn, s_isn) = (0xffff_fff0u32, 0xffff_fffau32);
    let flow = CookieFlow {
        client_ip: u32::from_be_bytes(client),
        client_port: 40000,
        vip: u32::from_be_bytes(vip),
        vport: 80,
    };
    let cookie = jar.make(&flow, c_isn, &OPTS, wall_ms());
    let syn = with_tcp_options(&c_tcp(vip, 40000, c_isn, None, SYN, b""), &LINUX_SYN);
    input.push(syn.clone());
    input.push(syn); // the client's SYN again
    input.push(c_tcp(vip, 40000, c_isn.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK, b""));
    let (piece1, piece2) = (&b"GET /api/x HTTP/1.1\r\n"[..], &b"Host: example.com\r\n\r\n"[..]);
    let req_len = (piece1.len() + piece2.len()) as u32;
    let request = [piece1, piece2].concat();
    input.push(c_tcp(vip, 40000, c_isn.wrapping_add(1), Some(cookie.wrapping_add(1)), ACK | PSH, piece1));
    let p2 =
        c_tcp(vip, 40000, c_isn.wrapping_add(1 + piece1.len() as u32), Some(cookie.wrapping_add(1)), ACK | PSH, piece2);
    input.push(p2.clone());
    input.push(p2); // piece 2 again
                    // A server's segment to the client's port `cport`.
    let s_tcp = |mac: [u8; 6], src: [u8; 4], cport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]| {
        tcp_seq(mac, PORT_MAC, src, client, (8080, cport), seq, Some(ack), 64240, flags, payload)
    };
    let synack =
        with_tcp_options(&s_tcp(API_MAC, api, 40000, s_isn, c_isn.wrapping_add(1), SYN | ACK, b""), &SERVER_SYNACK);
    input.push(synack.clone());
    input.push(synack); // the server's SYN-ACK again: the request again
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let after_req = c_isn.wrapping_add(1 + req_len);
    let resp = s_tcp(API_MAC, api, 40000, s_isn.wrapping_add(1), after_req, ACK | PSH, response);
    input.push(resp.clone());
    input.push(resp); // the response again
    let c_after = cookie.wrapping_add(1 + response.len() as u32);
    input.push(c_tcp(vip, 40000, after_req, Some(c_after), ACK, b""));
    input.push(c_tcp(vip, 40000, after_req, Some(c_after), FIN | ACK, b""));
    let s_after = s_isn.wrapping_add(1 + response.len() as u32);
    input.push(s_tcp(API_MAC, api, 40000, s_after, after_req.wrapping_add(1), FIN | ACK, b""));

    let to_client =
        |flags, seq, ack, payload: &[u8]| Out { dst: client, dport: 40000, flags, seq, ack, payload: payload.to_vec() };
    let to_api =
        |flags, seq, ack, payload: &[u8]| Out { dst: api, dport: 8080, flags, seq, ack, payload: payload.to_vec() };
    // (the SYN-ACKs are checked apart: their cookie is of the slice at run time)
    want.push(to_client(ACK, cookie.wrapping_add(1), c_isn.wrapping_add(1 + piece1.len() as u32), b""));
    want.push(to_client(ACK, cookie.wrapping_add(1), after_req, b""));
    want.push(to_client(ACK, cookie.wrapping_add(1), after_req, b"")); // piece 2 again: ACKed again
    want.push(to_api(SYN, c_isn, 0, b""));
    want.push(to_api(ACK | PSH, c_isn.wrapping_add(1), s_isn.wrapping_add(1), &request));
    want.push(to_api(ACK | PSH, c_isn.wrapping_add(1), s_isn.wrapping_add(1), &request));
    want.push(to_client(ACK | PSH, cookie.wrapping_add(1), after_req, response));
    want.push(to_client(ACK | PSH, cookie.wrapping_add(1), after_req, response));
    want.push(to_api(ACK, after_req, s_after, b""));
    want.push(to_api(FIN | ACK, after_req, s_after, b""));
    want.push(to_client(FIN | ACK, c_after, after_req.wrapping_add(1), b""));

    // --- syn_proxy: window 0 until the server answers, then spliced ---
    let (g_isn, g_s_isn) = (0x1000u32, 0x8000_0000u32);
    let gflow = CookieFlow {
        client_ip: u32::from_be_bytes(client),
        client_port: 40001,
        vip: u32::from_be_bytes(guarded_vip),
        vport: 80,
    };
    let gcookie = jar.make(&gflow, g_isn, &OPTS, wall_ms());
    input.push(with_tcp_options(&c_tcp(guarded_vip, 40001, g_isn, None, SYN, b""), &LINUX_SYN));
    input.push(c_tcp(guarded_vip, 40001, g_isn + 1, Some(gcookie.wrapping_add(1)), ACK, b""));
    let guarded = ip("198.18.0.23");
    input.push(with_tcp_options(
        &s_tcp(GUARDED_MAC, guarded, 40001, g_s_isn, g_isn + 1, SYN | ACK, b""),
        &SERVER_SYNACK,
    ));
    input.push(c_tcp(guarded_vip, 40001, g_isn + 1, Some(gcookie.wrapping_add(1)), ACK | PSH, b"hello"));
    input.push(s_tcp(GUARDED_MAC, guarded, 40001, g_s_isn + 1, g_isn + 6, ACK | PSH, b"world"));
    let g_client =
        |flags, seq, ack, payload: &[u8]| Out { dst: client, dport: 40001, flags, seq, ack, payload: payload.to_vec() };
    let g_server =
        |flags, seq, ack, payload: &[u8]| Out { dst: guarded, dport: 8080, flags, seq, ack, payload: payload.to_vec() };
    want.push(g_server(SYN, g_isn, 0, b""));
    want.push(g_server(ACK, g_isn + 1, g_s_isn + 1, b""));
    want.push(g_client(ACK, gcookie.wrapping_add(1), g_isn + 1, b"")); // the window opens
    want.push(g_server(ACK | PSH, g_isn + 1, g_s_isn + 1, b"hello"));
    want.push(g_client(ACK | PSH, gcookie.wrapping_add(1), g_isn + 6, b"world"));

    // --- a forged cookie ACK: nothing goes out ---
    input.push(c_tcp(guarded_vip, 40002, 77, Some(gcookie.wrapping_add(1)), ACK, b""));

    let inp = dir.join("in.pcap");
    let outp = dir.join("out.pcap");
    write_pcap(&inp, &input);
    let device = format!("net_pcap0,rx_pcap={},tx_pcap={}", inp.display(), outp.display());
    let cfg = dir.join("ringlb.yaml");
    std::fs::write(&cfg, CONFIG.replace("DEVICE", &device).replace("KEYFILE", key_file.to_str().unwrap())).unwrap();
    let run = run_ringlb(&cfg, input.len() as u64, "-TERM");
    let log = &run.log;
    let frames = read_pcap(&outp);

    // The SYN-ACKs: valid cookies for their flows, options answered, window 0 for syn_proxy.
    let mut got: Vec<Out> = Vec::new();
    let mut synacks = Vec::new();
    for f in &frames {
        let o = out(f);
        if o.flags == SYN | ACK {
            synacks.push(o);
        } else {
            got.push(o);
        }
    }
    assert_eq!(synacks.len(), 3, "two for the l7 flow's two SYNs, one for syn_proxy:\n{log}");
    for s in &synacks {
        let (f, isn) = if s.dport == 40000 { (&flow, c_isn) } else { (&gflow, g_isn) };
        assert_eq!(s.ack, isn.wrapping_add(1));
        assert_eq!(jar.check(f, isn, s.seq, wall_ms()), Ok(OPTS), "a cookie for its flow");
    }
    got.sort();
    want.sort();
    assert_eq!(got, want, "frames out (sorted) differ; log:\n{log}");
    assert_eq!(
        run.count("/drops/cookie_forged") + run.count("/drops/cookie_stale"),
        1,
        "the forged ACK counted:\n{log}"
    );
    assert_eq!(run.count("/syn_proxy/joined"), 2, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
