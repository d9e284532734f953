//! Packet classification and in-place rewrites on plain byte slices.
//!
//! Parsing uses smoltcp's typed `wire` views, whose `new_checked` constructors
//! validate lengths; rewrites then address the already-validated offsets, so
//! nothing here can index out of bounds on a malformed frame. Independent of
//! DPDK: unit tests and fuzzers drive it directly.

pub mod checksum;

use crate::stats::Drop;
use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol,
    Ipv4Packet, TcpPacket, UdpPacket,
};

pub const ETH_HDR: usize = 14;
pub const ARP_FRAME_LEN: usize = ETH_HDR + 28;
/// Shortest Ethernet frame without FCS; shorter frames are padded to it.
pub const MIN_FRAME: usize = 60;
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

pub type Mac = [u8; 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4Proto {
    Tcp = 6,
    Udp = 17,
}

/// TCP flag bits as they sit in the header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What a validated TCP or UDP packet over IPv4 carries, with the offsets
/// the rewrites need.
#[derive(Clone, Copy, Debug)]
pub struct L4Info {
    pub l4_off: usize,
    pub proto: L4Proto,
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for UDP).
    pub flags: u8,
    pub ttl: u8,
}

#[derive(Clone, Copy, Debug)]
pub struct ArpInfo {
    pub is_request: bool,
    pub sender_mac: Mac,
    pub sender_ip: u32,
    pub target_ip: u32,
}

#[derive(Clone, Copy, Debug)]
pub enum Parsed {
    Arp(ArpInfo),
    /// ICMP echo request to `dst_ip`.
    Echo {
        dst_ip: u32,
    },
    L4(L4Info),
}

#[inline]
pub fn dst_mac(frame: &[u8]) -> Option<Mac> {
    frame.get(0..6).map(|m| m.try_into().unwrap_or_default())
}

#[inline]
pub fn src_mac(frame: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

/// Classifies a frame. Anything that is not well-formed ARP, ICMP echo
/// request, or unfragmented TCP/UDP over IPv4 is a drop with its reason.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, Drop> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Drop::Malformed)?;
    match eth.ethertype() {
        EthernetProtocol::Arp => parse_arp(eth.payload()),
        EthernetProtocol::Ipv4 => parse_ipv4(eth.payload()),
        _ => Err(Drop::UnsupportedEthertype),
    }
}

fn parse_arp(buf: &[u8]) -> Result<Parsed, Drop> {
    let arp = ArpPacket::new_checked(buf).map_err(|_| Drop::Malformed)?;
    if arp.hardware_type() != ArpHardware::Ethernet
        || arp.protocol_type() != EthernetProtocol::Ipv4
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
    {
        return Err(Drop::Malformed);
    }
    let is_request = match arp.operation() {
        ArpOperation::Request => true,
        ArpOperation::Reply => false,
        _ => return Err(Drop::Malformed),
    };
    let ip = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(arp.source_hardware_addr());
    Ok(Parsed::Arp(ArpInfo {
        is_request,
        sender_mac,
        sender_ip: ip(arp.source_protocol_addr()),
        target_ip: ip(arp.target_protocol_addr()),
    }))
}

#[inline]
fn parse_ipv4(buf: &[u8]) -> Result<Parsed, Drop> {
    // new_checked validates version-independent lengths: header length within
    // the buffer, total length ≥ header length and ≤ buffer.
    let ip = Ipv4Packet::new_checked(buf).map_err(|_| Drop::Malformed)?;
    // smoltcp checks lengths, not that the header is at least the 20 fixed bytes.
    if buf[0] >> 4 != 4 || ip.header_len() < 20 {
        return Err(Drop::Malformed);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(Drop::Fragment);
    }
    let src_ip = u32::from(ip.src_addr());
    let dst_ip = u32::from(ip.dst_addr());
    let l4_off = ETH_HDR + usize::from(ip.header_len());
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| Drop::Malformed)?;
            Ok(Parsed::L4(L4Info {
                l4_off,
                proto: L4Proto::Tcp,
                src_ip,
                dst_ip,
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                flags: payload[13],
                ttl: ip.hop_limit(),
            }))
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| Drop::Malformed)?;
            Ok(Parsed::L4(L4Info {
                l4_off,
                proto: L4Proto::Udp,
                src_ip,
                dst_ip,
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
                flags: 0,
                ttl: ip.hop_limit(),
            }))
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| Drop::Malformed)?;
            if icmp.msg_type() == Icmpv4Message::EchoRequest {
                Ok(Parsed::Echo { dst_ip })
            } else {
                Err(Drop::UnsupportedProtocol)
            }
        }
        _ => Err(Drop::UnsupportedProtocol),
    }
}

#[inline]
fn set_macs(frame: &mut [u8], dst: Mac, src: Mac) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}

/// L4/2 (direct server return): only the MAC addresses change.
#[inline]
pub fn rewrite_dsr(frame: &mut [u8], server_mac: Mac, egress_mac: Mac) {
    set_macs(frame, server_mac, egress_mac);
}

/// Offset of the L4 checksum field within the L4 header.
#[inline]
fn l4_check_off(info: &L4Info) -> usize {
    info.l4_off
        + match info.proto {
            L4Proto::Tcp => 16,
            L4Proto::Udp => 6,
        }
}

#[inline]
fn read16(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

#[inline]
fn write16(frame: &mut [u8], off: usize, v: u16) {
    frame[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Replaces one IPv4 address (`addr_off` is 12 for source, 16 for destination)
/// and the matching L4 port, updating IP and L4 checksums incrementally.
fn rewrite_endpoint(frame: &mut [u8], info: &L4Info, is_dst: bool, new_ip: u32, new_port: u16) {
    let (addr_off, old_ip, port_off, old_port) = if is_dst {
        (ETH_HDR + 16, info.dst_ip, info.l4_off + 2, info.dst_port)
    } else {
        (ETH_HDR + 12, info.src_ip, info.l4_off, info.src_port)
    };
    let ip_check = read16(frame, ETH_HDR + 10);
    write16(frame, ETH_HDR + 10, checksum::update32(ip_check, old_ip, new_ip));
    frame[addr_off..addr_off + 4].copy_from_slice(&new_ip.to_be_bytes());

    // The L4 checksum covers the pseudo-header (addresses) and the ports.
    let coff = l4_check_off(info);
    let mut c = read16(frame, coff);
    c = match info.proto {
        L4Proto::Tcp => checksum::update16(checksum::update32(c, old_ip, new_ip), old_port, new_port),
        L4Proto::Udp => checksum::update_udp16(checksum::update_udp32(c, old_ip, new_ip), old_port, new_port),
    };
    write16(frame, coff, c);
    write16(frame, port_off, new_port);
}

/// Decrements the TTL with its checksum update; the caller has checked ttl > 1.
fn decrement_ttl(frame: &mut [u8]) {
    let off = ETH_HDR + 8;
    let old = read16(frame, off);
    frame[off] -= 1;
    let new = read16(frame, off);
    let c = read16(frame, ETH_HDR + 10);
    write16(frame, ETH_HDR + 10, checksum::update16(c, old, new));
}

/// L4/3 forward: client → server. Destination address (and port) become the server's.
pub fn rewrite_nat_forward(frame: &mut [u8], info: &L4Info, server_ip: u32, server_port: u16, dst: Mac, src: Mac) {
    rewrite_endpoint(frame, info, true, server_ip, server_port);
    decrement_ttl(frame);
    set_macs(frame, dst, src);
}

/// L4/3 reply: server → client. Source address (and port) become the VIP's.
pub fn rewrite_nat_reply(frame: &mut [u8], info: &L4Info, vip: u32, vport: u16, dst: Mac, src: Mac) {
    rewrite_endpoint(frame, info, false, vip, vport);
    decrement_ttl(frame);
    set_macs(frame, dst, src);
}

/// Turns an ARP request (already parsed) into the reply for `our_mac`, in place.
pub fn arp_reply_in_place(frame: &mut [u8], info: &ArpInfo, our_mac: Mac) {
    set_macs(frame, info.sender_mac, our_mac);
    let mut arp = ArpPacket::new_unchecked(&mut frame[ETH_HDR..]);
    arp.set_operation(ArpOperation::Reply);
    arp.set_source_hardware_addr(&our_mac);
    arp.set_source_protocol_addr(&info.target_ip.to_be_bytes());
    arp.set_target_hardware_addr(&info.sender_mac);
    arp.set_target_protocol_addr(&info.sender_ip.to_be_bytes());
}

/// Turns an ICMP echo request into its reply, in place: swap addresses, type 8 → 0.
pub fn echo_reply_in_place(frame: &mut [u8], our_mac: Mac) {
    let peer_mac = src_mac(frame);
    set_macs(frame, peer_mac, our_mac);
    let (src, dst) = (ETH_HDR + 12, ETH_HDR + 16);
    for i in 0..4 {
        frame.swap(src + i, dst + i);
    }
    // Swapping the two addresses leaves the IP checksum unchanged.
    let ihl = usize::from(frame[ETH_HDR] & 0x0f) * 4;
    let icmp = ETH_HDR + ihl;
    let old = read16(frame, icmp);
    frame[icmp] = 0; // echo reply
    let new = read16(frame, icmp);
    let c = read16(frame, icmp + 2);
    write16(frame, icmp + 2, checksum::update16(c, old, new));
}

/// Writes a broadcast ARP request for `target_ip` into `buf` (≥ 60 bytes),
/// padded to the minimum frame size. Returns the frame length.
pub fn build_arp_request(buf: &mut [u8], our_mac: Mac, our_ip: u32, target_ip: u32) -> usize {
    let frame = &mut buf[..MIN_FRAME];
    frame.fill(0);
    set_macs(frame, BROADCAST_MAC, our_mac);
    write16(frame, 12, 0x0806);
    let mut arp = ArpPacket::new_unchecked(&mut frame[ETH_HDR..ARP_FRAME_LEN]);
    arp.set_hardware_type(ArpHardware::Ethernet);
    arp.set_protocol_type(EthernetProtocol::Ipv4);
    arp.set_hardware_len(6);
    arp.set_protocol_len(4);
    arp.set_operation(ArpOperation::Request);
    arp.set_source_hardware_addr(&our_mac);
    arp.set_source_protocol_addr(&our_ip.to_be_bytes());
    arp.set_target_hardware_addr(&[0; 6]);
    arp.set_target_protocol_addr(&target_ip.to_be_bytes());
    MIN_FRAME
}

/// A gratuitous ARP announcing that `vip` is now at `our_mac`: a broadcast
/// request whose sender and target address are both the VIP (RFC 5227's
/// announcement). Receivers that cache the VIP update the entry.
pub fn build_gratuitous_arp(buf: &mut [u8], our_mac: Mac, vip: u32) -> usize {
    build_arp_request(buf, our_mac, vip, vip)
}

/// The TCP checksum over the IPv4 pseudo-header and `segment` (checksum field zeroed).
fn tcp_checksum(src: u32, dst: u32, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.to_be_bytes());
    pseudo[4..8].copy_from_slice(&dst.to_be_bytes());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    let mut sum = u32::from(!checksum::full(&pseudo));
    sum += u32::from(!checksum::full(segment));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes a health probe into `buf` (≥ 60 bytes): a TCP SYN from
/// `src_ip:src_port` to the server, padded to the minimum frame. Returns
/// the frame length.
#[allow(clippy::too_many_arguments)]
pub fn build_tcp_syn(
    buf: &mut [u8],
    src_mac: Mac,
    dst_mac: Mac,
    src_ip: u32,
    dst_ip: u32,
    src_port: u16,
    dst_port: u16,
    seq: u32,
) -> usize {
    const IP: usize = ETH_HDR;
    const TCP: usize = ETH_HDR + 20;
    let frame = &mut buf[..MIN_FRAME];
    frame.fill(0);
    set_macs(frame, dst_mac, src_mac);
    write16(frame, 12, 0x0800);
    frame[IP] = 0x45;
    write16(frame, IP + 2, 40);
    frame[IP + 6] = 0x40; // don't fragment
    frame[IP + 8] = 64;
    frame[IP + 9] = 6;
    frame[IP + 12..IP + 16].copy_from_slice(&src_ip.to_be_bytes());
    frame[IP + 16..IP + 20].copy_from_slice(&dst_ip.to_be_bytes());
    let c = checksum::full(&frame[IP..IP + 20]);
    write16(frame, IP + 10, c);
    write16(frame, TCP, src_port);
    write16(frame, TCP + 2, dst_port);
    frame[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
    frame[TCP + 12] = 5 << 4;
    frame[TCP + 13] = tcp_flags::SYN;
    write16(frame, TCP + 14, 1024);
    let c = tcp_checksum(src_ip, dst_ip, &frame[TCP..TCP + 20]);
    write16(frame, TCP + 16, c);
    MIN_FRAME
}

/// Turns a received TCP segment that carries an ACK (a server's SYN-ACK to
/// a probe, a client's packet of a session that ends) into the RST that
/// answers it, in place: back to the sender, sequence number = the
/// segment's acknowledgement (RFC 793), no options, no data (the IP length
/// shrinks to 40; the frame's extra bytes are Ethernet padding).
pub fn reset_in_place(frame: &mut [u8], info: &L4Info, our_mac: Mac) {
    let ip = ETH_HDR;
    let tcp = info.l4_off;
    if tcp != ip + 20 || frame.len() < tcp + 20 {
        return; // IP options: never built by us; parse already checked lengths
    }
    let peer_mac = src_mac(frame);
    set_macs(frame, peer_mac, our_mac);
    frame[ip + 12..ip + 16].copy_from_slice(&info.dst_ip.to_be_bytes());
    frame[ip + 16..ip + 20].copy_from_slice(&info.src_ip.to_be_bytes());
    write16(frame, ip + 2, 40);
    frame[ip + 8] = 64;
    write16(frame, ip + 10, 0);
    let c = checksum::full(&frame[ip..ip + 20]);
    write16(frame, ip + 10, c);
    let ack = [frame[tcp + 8], frame[tcp + 9], frame[tcp + 10], frame[tcp + 11]];
    write16(frame, tcp, info.dst_port);
    write16(frame, tcp + 2, info.src_port);
    frame[tcp + 4..tcp + 8].copy_from_slice(&ack);
    frame[tcp + 8..tcp + 12].fill(0);
    frame[tcp + 12] = 5 << 4;
    frame[tcp + 13] = tcp_flags::RST;
    write16(frame, tcp + 14, 0);
    write16(frame, tcp + 16, 0);
    write16(frame, tcp + 18, 0);
    let c = tcp_checksum(info.dst_ip, info.src_ip, &frame[tcp..tcp + 20]);
    write16(frame, tcp + 16, c);
}
