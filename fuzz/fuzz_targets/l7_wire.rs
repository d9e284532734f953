//! The L7 decoders: everything that reads a client's or a server's bytes
//! before a proxied connection is bound. Byte 0 picks the decoder; the
//! rest is its input. None may panic, and each keeps its promise:
//! translations undo, a SYN-ACK built in a SYN's place is no longer than
//! the SYN and its options read back, a range request parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::l7::conn::{Conn, Seg};
use ringlb::l7::cookie::SynOptions;
use ringlb::l7::request::{parse_head, Gathered, Head, RequestBuf, HEAD_CAP};
use ringlb::l7::{response, segment, splice, tcpopt};

const ETH_IP: usize = 34;

/// Equal segments, but for the checksum's two forms of zero (0x0000 and
/// 0xffff are the same one's-complement number; RFC 1624's update may
/// turn one into the other, and a receiver accepts both).
fn same_segment(a: &[u8], b: &[u8]) -> bool {
    let zero = |c: &[u8]| c == [0, 0] || c == [0xff, 0xff];
    a.len() == b.len()
        && a[..16] == b[..16]
        && a[18..] == b[18..]
        && (a[16..18] == b[16..18] || (zero(&a[16..18]) && zero(&b[16..18])))
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else { return };
    match which % 6 {
        0 => {
            // Options of a header: 20 fixed bytes, then the input.
            let mut hdr = vec![0u8; 20];
            hdr.extend_from_slice(&input[..input.len().min(40)]);
            if let Ok(got) = tcpopt::read(&hdr) {
                let (b, n) = tcpopt::write(got.mss_present.then_some(got.opts.mss), &got.opts, Some(7));
                let mut back = vec![0u8; 20];
                back.extend_from_slice(&b[..n]);
                assert!(tcpopt::read(&back).is_ok(), "what we write reads back");
            }
        }
        1 => {
            // A request in segments: each [seq offset, length, bytes].
            let mut buf = RequestBuf::new(1000);
            let mut rest = input;
            while let [off, len, tail @ ..] = rest {
                let n = usize::from(*len).min(tail.len());
                let seq = 1000u32.wrapping_add(u32::from(*off) * 16).wrapping_sub(512);
                if let Gathered::Took(k) = buf.gather(seq, &tail[..n]) {
                    assert!(k <= n);
                }
                assert!(buf.bytes().len() <= HEAD_CAP);
                rest = &tail[n..];
            }
            if let Head::Complete(req) = buf.head() {
                assert!(req.head_len <= buf.bytes().len());
            }
        }
        2 => {
            if let response::ResponseHead::Complete(r) = response::parse(input) {
                assert!(r.head_len <= input.len());
                if let (Some(v), Some(len)) = (r.validator, r.content_length) {
                    let mut out = [0u8; 4096];
                    let request = b"GET /f HTTP/1.1\r\nHost: h\r\nRange: bytes=0-\r\n\r\n";
                    if let Some(n) = response::range_request(request, len / 2, &v, &mut out) {
                        // A validator with a line break in it would not
                        // parse: httparse rejected such a header above.
                        assert!(!matches!(parse_head(&out[..n]), Head::Partial));
                    }
                }
            }
        }
        3 => {
            // A TCP segment (header + payload): a translation and its inverse.
            let Some((&d, seg)) = input.split_first() else { return };
            let delta = u32::from(d).wrapping_mul(0x0101_0101);
            let mut t = seg.to_vec();
            if splice::client_to_server(&mut t, delta).is_ok() {
                splice::client_to_server(&mut t, delta.wrapping_neg()).expect("still well formed");
                assert!(same_segment(&t, seg), "client_to_server undoes");
            }
            let mut t = seg.to_vec();
            if splice::server_to_client(&mut t, delta).is_ok() {
                splice::server_to_client(&mut t, delta.wrapping_neg()).expect("still well formed");
                assert!(same_segment(&t, seg), "server_to_client undoes");
            }
            let _ = splice::rescale_window(&mut seg.to_vec(), (d as i8) >> 3);
        }
        4 => {
            // A frame taken for a client's SYN.
            let mut f = input.to_vec();
            let p = segment::SynAckParams { mss: 1460, wscale: Some(7), window: 0 };
            if let Ok(len) = segment::synack_in_place(&mut f, [2, 0, 0, 0, 0, 1], 0x1234_5678, &p) {
                assert!(len <= input.len(), "the answer fits in the SYN's place");
                let off = usize::from(f[ETH_IP + 12] >> 4) * 4;
                assert!(tcpopt::read(&f[ETH_IP..ETH_IP + off]).is_ok());
            }
        }
        _ => {
            // A proxied connection's handshake under arbitrary segments.
            let opts = SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true };
            let ack = Seg { seq: 1001, ack: 5, flags: 0x10, window: 0, payload_len: 0 };
            let (mut c, _) = Conn::open(&ack, 4, opts, Some(7), 0);
            for (i, chunk) in input.chunks_exact(11).enumerate() {
                let seg = Seg {
                    seq: u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]),
                    ack: u32::from_be_bytes([chunk[5], chunk[6], chunk[7], chunk[8]]),
                    flags: chunk[9],
                    window: u16::from(chunk[10]) << 8,
                    payload_len: 0,
                };
                match chunk[0] % 3 {
                    0 => drop(c.on_client(&seg)),
                    1 => drop(c.on_server(&seg)),
                    _ => drop(c.on_timer(i as u32 * 100)),
                }
            }
        }
    }
});
