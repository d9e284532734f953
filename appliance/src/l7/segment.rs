//! Segments the appliance writes itself. The SYN-ACK that carries a
//! cookie is built in the place of the client's SYN (same buffer, never
//! longer: see `tcpopt::write`), so answering a SYN flood allocates
//! nothing. The segments a proxied connection sends of its own (the
//! replayed SYN, ACKs, window updates, RSTs: `conn::Emit`) are built
//! whole by `build`. Headers are small, so their checksums are computed
//! whole.

use super::cookie::SynOptions;
use super::tcpopt;
use crate::packet::{checksum, Mac};

const ETH: usize = 14;
const IP: usize = ETH;
const TCP: usize = ETH + 20;

use crate::packet::tcp_flags::{ACK, SYN};

/// What the appliance's SYN-ACK says besides the cookie.
#[derive(Clone, Copy, Debug)]
pub struct SynAckParams {
    /// The MSS announced (when the client announced one).
    pub mss: u16,
    /// The window scale offered (None: decline scaling).
    pub wscale: Option<u8>,
    /// The receive window (unscaled, as in every SYN).
    pub window: u16,
}

/// Why a SYN could not be answered in its place (a counted drop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAnswered {
    /// IP options, or a frame shorter than its headers.
    Shape,
    /// Its TCP options are malformed.
    Options,
}

/// Reads what a client's SYN offers: its ISN and options. `frame` is
/// Ethernet + IPv4 without options + TCP.
pub fn read_syn(frame: &[u8]) -> Result<(u32, tcpopt::Offered), NotAnswered> {
    let hdr = tcp_header(frame)?;
    let offered = tcpopt::read(hdr).map_err(|_| NotAnswered::Options)?;
    Ok((be32(frame, TCP + 4), offered))
}

/// Turns a client's SYN into the appliance's SYN-ACK in place: addresses,
/// ports and MACs swapped (the answer goes back to the SYN's sender from
/// `port_mac`), `seq = cookie`, `ack = ISN + 1`, options answering the
/// client's (MSS, window scale and SACK-permitted only where it offered
/// them), no payload. Returns the answer's length, never more than the
/// SYN's.
pub fn synack_in_place(frame: &mut [u8], port_mac: Mac, cookie: u32, p: &SynAckParams) -> Result<usize, NotAnswered> {
    let (isn, offered) = read_syn(frame)?;
    let (block, n) = tcpopt::write(offered.mss_present.then_some(p.mss), &offered.opts, p.wscale);
    let len = TCP + 20 + n;
    debug_assert!(len <= ETH + usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]])));

    // Ethernet: back to the sender.
    let client_mac: Mac = frame[6..12].try_into().unwrap_or_default();
    frame[0..6].copy_from_slice(&client_mac);
    frame[6..12].copy_from_slice(&port_mac);
    // IPv4: addresses swapped, a fresh header.
    let (src, dst): ([u8; 4], [u8; 4]) = (copy4(frame, IP + 12), copy4(frame, IP + 16));
    let ip = &mut frame[IP..TCP];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((len - ETH) as u16).to_be_bytes());
    ip[4..6].fill(0); // identification: DF is set, nothing to reassemble
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&dst);
    ip[16..20].copy_from_slice(&src);
    let c = checksum::full(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    // TCP: ports swapped, our numbers, our options.
    let (sport, dport) = (copy2(frame, TCP), copy2(frame, TCP + 2));
    let t = &mut frame[TCP..len];
    t[0..2].copy_from_slice(&dport);
    t[2..4].copy_from_slice(&sport);
    t[4..8].copy_from_slice(&cookie.to_be_bytes());
    t[8..12].copy_from_slice(&isn.wrapping_add(1).to_be_bytes());
    t[12] = (((20 + n) / 4) as u8) << 4;
    t[13] = SYN | ACK;
    t[14..16].copy_from_slice(&p.window.to_be_bytes());
    t[16..20].fill(0); // checksum, urgent pointer
    t[20..].copy_from_slice(&block[..n]);
    let c = tcp_checksum(&dst, &src, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(len)
}

/// A TCP segment the appliance sends of its own (no payload): a replayed
/// SYN, an ACK, a window update, a RST.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// (address, port), host order.
    pub src: (u32, u16),
    pub dst: (u32, u16),
    pub seq: u32,
    /// With the ACK flag when Some.
    pub ack: Option<u32>,
    /// SYN, RST, FIN bits (ACK follows `ack`).
    pub flags: u8,
    pub window: u16,
    /// A multiple of 4 bytes, at most 40 (`tcpopt::write`).
    pub options: &'a [u8],
}

/// The longest frame `build` writes: Ethernet, IPv4, TCP with 40 bytes of options.
pub const MAX_BUILT: usize = TCP + 60;

/// The longest frame `build_with` writes: a full Ethernet frame.
pub const MAX_FRAME: usize = 1514;

/// Writes `seg` as a whole frame into `out`; returns its length. Short
/// frames are padded to Ethernet's 60-byte minimum.
pub fn build(out: &mut [u8; MAX_BUILT], seg: &Outgoing) -> usize {
    build_with(out, seg, &[])
}

/// `build` with a payload after the header (the request an `l7`
/// connection sends its server). Returns 0, writing nothing, when the
/// frame would not fit in `out`.
pub fn build_with(out: &mut [u8], seg: &Outgoing, payload: &[u8]) -> usize {
    let opts = &seg.options[..seg.options.len().min(40) & !3];
    let tcp_len = 20 + opts.len() + payload.len();
    let len = TCP + tcp_len;
    let Some(out) = out.get_mut(..len.max(60)) else { return 0 };
    out.fill(0);
    out[0..6].copy_from_slice(&seg.dst_mac);
    out[6..12].copy_from_slice(&seg.src_mac);
    out[12..14].copy_from_slice(&[0x08, 0x00]);
    let (src, dst) = (seg.src.0.to_be_bytes(), seg.dst.0.to_be_bytes());
    let ip = &mut out[IP..TCP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum::full(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut out[TCP..len];
    t[0..2].copy_from_slice(&seg.src.1.to_be_bytes());
    t[2..4].copy_from_slice(&seg.dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    t[8..12].copy_from_slice(&seg.ack.unwrap_or(0).to_be_bytes());
    t[12] = (((20 + opts.len()) / 4) as u8) << 4;
    t[13] = (seg.flags & !ACK) | if seg.ack.is_some() { ACK } else { 0 };
    t[14..16].copy_from_slice(&seg.window.to_be_bytes());
    t[20..20 + opts.len()].copy_from_slice(opts);
    t[20 + opts.len()..].copy_from_slice(payload);
    let c = tcp_checksum(&src, &dst, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    len.max(60)
}

/// Removes the first `n` bytes of a segment's payload in place: the rest
/// moves up, the sequence number advances by `n`, the IP length and both
/// checksums are made anew, and the freed bytes at the end become zero
/// padding. (A resumed download's new response head, which the client must
/// not see; rare, so the checksums are computed whole.)
pub fn strip_front(frame: &mut [u8], n: usize) -> Result<(), NotAnswered> {
    let payload_at = TCP + tcp_header(frame)?.len();
    let total = usize::from(u16::from_be_bytes(copy2(frame, IP + 2)));
    let end = ETH + total;
    if payload_at + n > end {
        return Err(NotAnswered::Shape);
    }
    frame.copy_within(payload_at + n..end, payload_at);
    frame[end - n..end].fill(0);
    let total = total - n;
    frame[IP + 2..IP + 4].copy_from_slice(&(total as u16).to_be_bytes());
    frame[IP + 10..IP + 12].fill(0);
    let ip_sum = checksum::full(&frame[IP..IP + 20]);
    frame[IP + 10..IP + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let seq = be32(frame, TCP + 4).wrapping_add(n as u32);
    frame[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
    frame[TCP + 16..TCP + 18].fill(0);
    let (src, dst) = (copy4(frame, IP + 12), copy4(frame, IP + 16));
    let tcp_sum = tcp_checksum(&src, &dst, &frame[TCP..ETH + total]);
    frame[TCP + 16..TCP + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    Ok(())
}

/// The options a SYN-ACK's client will use: what it offered, as the
/// cookie can carry them, and window scaling only if both sides offer it.
pub fn agreed(offered: &SynOptions, our_wscale: Option<u8>) -> SynOptions {
    SynOptions { wscale: our_wscale.and(offered.wscale), ..*offered }
}

/// The TCP header of an Ethernet + IPv4 (no options) + TCP frame, checked.
fn tcp_header(frame: &[u8]) -> Result<&[u8], NotAnswered> {
    if frame.len() < TCP + 20 || frame[IP] != 0x45 {
        return Err(NotAnswered::Shape);
    }
    let total = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    let off = usize::from(frame[TCP + 12] >> 4) * 4;
    if off < 20 || ETH + total > frame.len() || 20 + off > total {
        return Err(NotAnswered::Shape);
    }
    Ok(&frame[TCP..TCP + off])
}

/// A TCP segment's checksum from scratch, with its pseudo-header.
fn tcp_checksum(src: &[u8; 4], dst: &[u8; 4], segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(src);
    pseudo[4..8].copy_from_slice(dst);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    // One's-complement sums add: the pseudo-header's and the segment's
    // (12 bytes, an even length, so the second starts on a word).
    let sum = u32::from(!checksum::full(&pseudo)) + u32::from(!checksum::full(segment));
    !(((sum & 0xffff) + (sum >> 16)) as u16)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(copy4(b, at))
}

fn copy4(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

fn copy2(b: &[u8], at: usize) -> [u8; 2] {
    [b[at], b[at + 1]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlb_testkit::{check, ip, tcp_seq, with_tcp_options, PORT_MAC, ROUTER_MAC, RST as RST_FLAG, SYN as T_SYN};

    const LINUX_OPTIONS: [u8; 20] = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
    const PARAMS: SynAckParams = SynAckParams { mss: 1460, wscale: Some(7), window: 16384 };

    fn syn(isn: u32, options: &[u8]) -> Vec<u8> {
        let bare = tcp_seq(
            ROUTER_MAC,
            PORT_MAC,
            ip("10.0.0.7"),
            ip("198.18.100.1"),
            (40001, 80),
            isn,
            None,
            64240,
            T_SYN,
            b"",
        );
        with_tcp_options(&bare, options)
    }

    #[test]
    fn a_linux_syn_becomes_a_valid_synack_carrying_the_cookie() {
        let mut f = syn(0xffff_ffff, &LINUX_OPTIONS);
        let before = f.len();
        let len = synack_in_place(&mut f, PORT_MAC, 0xabcd_1234, &PARAMS).unwrap();
        assert!(len <= before);
        f.truncate(len);
        let seen = check(&f).expect("checksums hold");
        assert_eq!((seen.src, seen.dst, seen.sport, seen.dport), (ip("198.18.100.1"), ip("10.0.0.7"), 80, 40001));
        assert_eq!((seen.src_mac, seen.dst_mac), (PORT_MAC, ROUTER_MAC));
        assert_eq!(seen.flags, SYN | ACK);
        assert_eq!(be32(&f, TCP + 4), 0xabcd_1234, "seq is the cookie");
        assert_eq!(be32(&f, TCP + 8), 0, "ack is the client's ISN + 1, across the wrap");
        assert!(seen.payload.is_empty());
        let answered = tcpopt::read(tcp_header(&f).unwrap()).unwrap();
        assert_eq!(answered.opts, SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true });
        assert!(!answered.timestamps, "timestamps are not taken up");
    }

    #[test]
    fn only_what_the_client_offered_is_answered() {
        for options in [&[][..], &[2, 4, 5, 180][..], &[1, 3, 3, 2][..], &[4, 2, 1, 1][..]] {
            let mut f = syn(1000, options);
            let (_, offered) = read_syn(&f).unwrap();
            let len = synack_in_place(&mut f, PORT_MAC, 5, &PARAMS).unwrap();
            f.truncate(len);
            check(&f).expect("checksums hold");
            let answered = tcpopt::read(tcp_header(&f).unwrap()).unwrap();
            assert_eq!(answered.mss_present, offered.mss_present, "{options:?}");
            assert_eq!(answered.opts.wscale.is_some(), offered.opts.wscale.is_some(), "{options:?}");
            assert_eq!(answered.opts.sack_permitted, offered.opts.sack_permitted, "{options:?}");
            assert_eq!(agreed(&offered.opts, PARAMS.wscale).wscale, offered.opts.wscale);
        }
    }

    #[test]
    fn built_segments_are_valid_frames_with_the_numbers_asked_for() {
        let (block, n) =
            tcpopt::write(Some(1460), &SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true }, Some(7));
        let syn = Outgoing {
            src_mac: PORT_MAC,
            dst_mac: ROUTER_MAC,
            src: (0x0a00_0007, 40001),
            dst: (0xc612_000b, 80),
            seq: 0xffff_ffff,
            ack: None,
            flags: SYN,
            window: 64240,
            options: &block[..n],
        };
        let rst = Outgoing { flags: RST_FLAG, options: &[], ack: None, seq: 5, ..syn };
        let update = Outgoing { flags: 0, options: &[], ack: Some(0), seq: 0xffff_fff1, window: 501, ..syn };
        for (seg, flags) in [(syn, SYN), (rst, RST_FLAG), (update, ACK)] {
            let mut out = [0u8; MAX_BUILT];
            let len = build(&mut out, &seg);
            let seen = check(&out[..len]).expect("checksums hold");
            assert_eq!((seen.src, seen.dst), (ip("10.0.0.7"), ip("198.18.0.11")));
            assert_eq!((seen.sport, seen.dport, seen.flags), (40001, 80, flags));
            assert_eq!((seen.src_mac, seen.dst_mac), (PORT_MAC, ROUTER_MAC));
            assert_eq!(be32(&out, TCP + 4), seg.seq);
            assert_eq!(be32(&out, TCP + 8), seg.ack.unwrap_or(0));
            assert_eq!(u16::from_be_bytes([out[TCP + 14], out[TCP + 15]]), seg.window);
            assert!(seen.payload.is_empty() && len >= 60);
            let offered = tcpopt::read(tcp_header(&out[..len]).unwrap()).unwrap();
            assert_eq!(offered.mss_present, !seg.options.is_empty());
        }
    }

    #[test]
    fn a_stripped_head_leaves_a_valid_segment_of_the_rest() {
        let head = b"HTTP/1.1 206 Partial Content\r\n\r\n";
        let payload = [&head[..], b"body bytes"].concat();
        let mut f = tcp_seq(
            ROUTER_MAC,
            PORT_MAC,
            ip("198.18.1.11"),
            ip("10.0.0.7"),
            (8080, 40001),
            0xffff_fff0,
            Some(9),
            501,
            0,
            &payload,
        );
        strip_front(&mut f, head.len()).unwrap();
        let seen = check(&f).expect("checksums hold after the strip");
        assert_eq!(seen.payload, b"body bytes");
        assert_eq!(be32(&f, TCP + 4), 0xffff_fff0u32.wrapping_add(head.len() as u32));
        assert!(f[f.len() - head.len()..].iter().all(|&b| b == 0), "the freed bytes are zero padding");
        // More than the payload: refused, untouched.
        let before = f.clone();
        assert_eq!(strip_front(&mut f, 11), Err(NotAnswered::Shape));
        assert_eq!(f, before);
    }

    #[test]
    fn malformed_syns_are_not_answered_and_not_touched() {
        let mut bad_opts = syn(1, &[2, 4, 5, 180, 3, 9, 9, 9]);
        let before = bad_opts.clone();
        assert_eq!(synack_in_place(&mut bad_opts, PORT_MAC, 5, &PARAMS), Err(NotAnswered::Options));
        assert_eq!(bad_opts, before);
        let mut with_ip_options = syn(1, &[]);
        with_ip_options[IP] = 0x46;
        assert_eq!(synack_in_place(&mut with_ip_options, PORT_MAC, 5, &PARAMS), Err(NotAnswered::Shape));
        let mut short = syn(1, &[])[..TCP + 10].to_vec();
        assert_eq!(synack_in_place(&mut short, PORT_MAC, 5, &PARAMS), Err(NotAnswered::Shape));
        let mut lying_offset = syn(1, &[]);
        lying_offset[TCP + 12] = 0xf0; // 60 bytes of header in a 20-byte segment
        assert_eq!(synack_in_place(&mut lying_offset, PORT_MAC, 5, &PARAMS), Err(NotAnswered::Shape));
    }
}
