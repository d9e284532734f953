//! Frames for tests and benchmarks, built and checked with etherparse and
//! checksums written here: independent of the appliance's packet code.
#![forbid(unsafe_code)]

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// The appliance port's MAC in tests and benchmarks (port 0).
pub const PORT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// A second appliance port's MAC.
pub const PORT2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The router in front of the appliance: the source of client frames.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub fn ip(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

pub fn ipu(s: &str) -> u32 {
    u32::from_be_bytes(ip(s))
}

#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    // Sequence 1000, acknowledgement 5000 when ACK is set, a full window.
    let ack = (flags & ACK != 0).then_some(5000);
    tcp_seq(src_mac, dst_mac, src, dst, (sport, dport), 1000, ack, 65535, flags, payload)
}

/// A TCP segment with explicit sequence and acknowledgement numbers and
/// window (`ack` None: no ACK flag), for generated traffic.
#[allow(clippy::too_many_arguments)]
pub fn tcp_seq(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    seq: u32,
    ack: Option<u32>,
    window: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).tcp(ports.0, ports.1, seq, window);
    if let Some(a) = ack {
        b = b.ack(a);
    }
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if flags & PSH != 0 {
        b = b.psh();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("a frame etherparse can write");
    v
}

pub fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).udp(sport, dport).write(&mut v, payload).unwrap();
    v
}

pub fn arp_request(src_mac: [u8; 6], src_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&src_ip);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target);
    v.resize(60, 0);
    v
}

pub fn icmp_echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut v, b"ping")
        .unwrap();
    v
}

/// What a checked TCP/UDP frame carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// Parses a frame with etherparse and verifies the IPv4 header checksum and
/// the TCP/UDP/ICMP checksum, recomputed from scratch.
pub fn check(frame: &[u8]) -> Result<Seen, String> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| format!("parse: {e}"))?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        return Err("no ethernet".into());
    };
    let Some(NetSlice::Ipv4(ipv4)) = &p.net else {
        return Err("not ipv4".into());
    };
    let h = ipv4.header();
    let hdr = h.to_header();
    if hdr.calc_header_checksum() != h.header_checksum() {
        return Err(format!(
            "bad IPv4 header checksum {:#06x}, want {:#06x}",
            h.header_checksum(),
            hdr.calc_header_checksum()
        ));
    }
    let (src, dst) = (h.source(), h.destination());
    let (sport, dport, flags, payload) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.calc_checksum_ipv4(src, dst).map_err(|e| e.to_string())?;
            if want != t.checksum() {
                return Err(format!("bad TCP checksum {:#06x}, want {want:#06x}", t.checksum()));
            }
            let f = frame[14 + usize::from(h.ihl()) * 4 + 13];
            (t.source_port(), t.destination_port(), f, t.payload().to_vec())
        }
        Some(TransportSlice::Udp(u)) => {
            if u.checksum() != 0 {
                let want = u.to_header().calc_checksum_ipv4_raw(src, dst, u.payload()).map_err(|e| e.to_string())?;
                if want != u.checksum() {
                    return Err(format!("bad UDP checksum {:#06x}, want {want:#06x}", u.checksum()));
                }
            }
            (u.source_port(), u.destination_port(), 0, u.payload().to_vec())
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let bytes = i.slice();
            let mut sum: u32 = 0;
            for c in bytes.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            if sum != 0xffff {
                return Err("bad ICMP checksum".into());
            }
            (0, 0, bytes[0], i.payload().to_vec())
        }
        _ => return Err("no transport".into()),
    };
    Ok(Seen { src_mac: eth.source(), dst_mac: eth.destination(), src, dst, sport, dport, flags, ttl: h.ttl(), payload })
}

/// The Internet checksum of `data` (RFC 1071), written here from the RFC
/// so tests do not trust the code under test: 0 over a header that
/// carries its checksum means the header is intact.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP reply from `src` to `dst`.
pub fn arp_reply(src_mac: [u8; 6], src_ip: [u8; 4], dst_mac: [u8; 6], dst_ip: [u8; 4]) -> Vec<u8> {
    let mut v = dst_mac.to_vec();
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&src_ip);
    v.extend_from_slice(&dst_mac);
    v.extend_from_slice(&dst_ip);
    v.resize(60, 0);
    v
}

/// An Ethernet + IPv4 frame around `payload` with the given protocol and
/// fragment word (flags and offset), header checksum set.
pub fn ipv4_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = dst_mac.to_vec();
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = inet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&h);
    v.extend_from_slice(payload);
    if v.len() < 60 {
        v.resize(60, 0);
    }
    v
}

/// An ICMP error (`icmp_type`, `code`) from `router` to `dst`, quoting
/// `quoted` (an IP packet, truncated as the caller chose).
pub fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    router: [u8; 4],
    dst: [u8; 4],
    icmp_type: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0xdc]; // next-hop MTU 1500
    m.extend_from_slice(quoted);
    let c = inet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_frame(src_mac, dst_mac, router, dst, 1, 0, &m)
}

/// Replaces the TCP flags byte of a frame built by `tcp` (no IP options).
pub fn with_tcp_flags(mut frame: Vec<u8>, flags: u8) -> Vec<u8> {
    frame[14 + 20 + 13] = flags;
    frame
}

/// A TCP frame built by `tcp`/`tcp_seq` (no IP options) with `options`
/// (a multiple of 4 bytes) inserted after its TCP header: data offset, IP
/// total length and both checksums set again (with this kit's own sum).
pub fn with_tcp_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    const L4: usize = 14 + 20;
    assert!(options.len() % 4 == 0 && options.len() <= 40, "TCP options: a multiple of 4, at most 40");
    let hdr = usize::from(frame[L4 + 12] >> 4) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let mut f = frame[..L4 + hdr].to_vec();
    f.extend_from_slice(options);
    f.extend_from_slice(&frame[L4 + hdr..14 + total]);
    f[L4 + 12] = (((hdr + options.len()) / 4) as u8) << 4;
    reseal_tcp(&mut f);
    f
}

/// Sets a TCP frame's IP total length (to the frame's length) and both
/// checksums from scratch, with this kit's own sum: for tests that edit
/// a segment's fields by hand.
pub fn reseal_tcp(f: &mut [u8]) {
    const L4: usize = 14 + 20;
    let total = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24..26].fill(0);
    let c = inet_checksum(&f[14..L4]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let mut pseudo = f[26..L4].to_vec();
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((f.len() - L4) as u16).to_be_bytes());
    f[L4 + 16..L4 + 18].fill(0);
    pseudo.extend_from_slice(&f[L4..]);
    let c = inet_checksum(&pseudo);
    f[L4 + 16..L4 + 18].copy_from_slice(&c.to_be_bytes());
}
