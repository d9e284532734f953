//! Test helpers: frames are built and checked with etherparse, a crate
//! independent of the smoltcp views and checksum code under test.
#![allow(dead_code)]

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

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
    let mut b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).tcp(sport, dport, 1000, 65535);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(5000);
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
    b.write(&mut v, payload).unwrap();
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
