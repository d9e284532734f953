//! Sequence-number translation of a spliced connection.
//!
//! The client's handshake was with the appliance, whose ISN was a cookie;
//! the server's was with the client's own ISN (the appliance replayed the
//! client's SYN), with the server's ISN. So the client's sequence numbers
//! mean the same on both sides, and the server's differ by a constant:
//! `delta = cookie - server ISN` (mod 2^32). On the way to the client a
//! segment's sequence number gains `delta`; on the way to the server its
//! acknowledgement number, and the edges of its SACK blocks (which
//! acknowledge the server's bytes), lose it. Every change updates the TCP
//! checksum incrementally (RFC 1624); addresses and ports are NAT's job.
//! When the server scales its window by another shift than the one the
//! appliance offered the client, its windows are rescaled on the way.

use crate::packet::checksum;

/// Offsets inside a TCP header (RFC 9293).
const SEQ: usize = 4;
const ACK: usize = 8;
const DATA_OFF: usize = 12;
const FLAGS: usize = 13;
const WINDOW: usize = 14;
const CHECKSUM: usize = 16;
const MIN_LEN: usize = 20;
use super::tcpopt::{OPT_END, OPT_NOP, OPT_SACK};
use crate::packet::tcp_flags::ACK as ACK_FLAG;

/// Why a segment could not be translated (a counted drop: it would reach
/// the other side with numbers that mean nothing there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceError {
    /// Shorter than its header, or a data offset outside it.
    Truncated,
    /// An option runs past the header, or a SACK option of a wrong length.
    BadOptions,
}

/// A segment from the server, on its way to the client: its sequence number
/// gains `delta`. (Its acknowledgement number counts the client's bytes,
/// which are the same on both sides.) `tcp` is the TCP header and payload.
pub fn server_to_client(tcp: &mut [u8], delta: u32) -> Result<(), SpliceError> {
    header_len(tcp)?;
    let seq = read32(tcp, SEQ);
    write32_updating_checksum(tcp, SEQ, seq.wrapping_add(delta));
    Ok(())
}

/// A segment from the client, on its way to the server: its acknowledgement
/// number (when the ACK flag is set) and its SACK blocks' edges lose `delta`.
pub fn client_to_server(tcp: &mut [u8], delta: u32) -> Result<(), SpliceError> {
    let hdr = header_len(tcp)?;
    // Options first: a malformed segment is refused before anything changes.
    let sack = find_sack(&tcp[..hdr])?;
    if tcp[FLAGS] & ACK_FLAG != 0 {
        let ack = read32(tcp, ACK);
        write32_updating_checksum(tcp, ACK, ack.wrapping_sub(delta));
    }
    if let Some((at, blocks)) = sack {
        for edge in 0..blocks * 2 {
            let off = at + 4 * edge;
            let v = read32(tcp, off);
            write32_updating_checksum(tcp, off, v.wrapping_sub(delta));
        }
    }
    Ok(())
}

/// Rewrites a segment's window for a receiver that scales windows by a
/// different shift than the sender meant: the field's value times
/// 2^`shift` (sender's scale minus receiver's; negative divides, rounding
/// down, so the window is never overstated), at most 65,535.
pub fn rescale_window(tcp: &mut [u8], shift: i8) -> Result<(), SpliceError> {
    header_len(tcp)?;
    if shift == 0 {
        return Ok(());
    }
    let old = u16::from_be_bytes([tcp[WINDOW], tcp[WINDOW + 1]]);
    let bytes = u64::from(old);
    let new = if shift > 0 { bytes << shift.min(30) } else { bytes >> (-shift).min(30) };
    let new = new.min(0xffff) as u16;
    tcp[WINDOW..WINDOW + 2].copy_from_slice(&new.to_be_bytes());
    let check = u16::from_be_bytes([tcp[CHECKSUM], tcp[CHECKSUM + 1]]);
    tcp[CHECKSUM..CHECKSUM + 2].copy_from_slice(&checksum::update16(check, old, new).to_be_bytes());
    Ok(())
}

/// The TCP header's length, checked against the segment.
/// Sets a segment's acknowledgement number (the checksum follows).
pub fn set_ack(tcp: &mut [u8], ack: u32) -> Result<(), SpliceError> {
    header_len(tcp)?;
    write32_updating_checksum(tcp, 8, ack);
    Ok(())
}

/// Clears a segment's FIN flag, updating the checksum: its data passes,
/// its close does not (a failed download's server closed early; another
/// server carries on).
pub fn clear_fin(tcp: &mut [u8]) -> Result<(), SpliceError> {
    header_len(tcp)?;
    let old = read16(tcp, 12);
    tcp[13] &= !crate::packet::tcp_flags::FIN;
    let check = checksum::update16(read16(tcp, CHECKSUM), old, read16(tcp, 12));
    tcp[CHECKSUM..CHECKSUM + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

fn header_len(tcp: &[u8]) -> Result<usize, SpliceError> {
    let off = usize::from(*tcp.get(DATA_OFF).ok_or(SpliceError::Truncated)? >> 4) * 4;
    if off < MIN_LEN || off > tcp.len() {
        return Err(SpliceError::Truncated);
    }
    Ok(off)
}

/// Where a header's SACK option's first edge is, and how many blocks it has.
fn find_sack(hdr: &[u8]) -> Result<Option<(usize, usize)>, SpliceError> {
    let mut i = MIN_LEN;
    let mut found = None;
    while i < hdr.len() {
        match hdr[i] {
            OPT_END => break,
            OPT_NOP => i += 1,
            kind => {
                let len = usize::from(*hdr.get(i + 1).ok_or(SpliceError::BadOptions)?);
                if len < 2 || i + len > hdr.len() {
                    return Err(SpliceError::BadOptions);
                }
                if kind == OPT_SACK {
                    // 1 to 4 blocks of two 32-bit edges; only one SACK option.
                    let blocks = (len - 2) / 8;
                    if (len - 2) % 8 != 0 || blocks == 0 || found.is_some() {
                        return Err(SpliceError::BadOptions);
                    }
                    found = Some((i + 2, blocks));
                }
                i += len;
            }
        }
    }
    Ok(found)
}

fn read32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Writes a 32-bit field and updates the TCP checksum. A field at an odd
/// offset (options need no alignment) straddles three 16-bit words of the
/// checksum's sum: the update covers the even-aligned words around it.
fn write32_updating_checksum(tcp: &mut [u8], off: usize, value: u32) {
    let start = off & !1;
    let end = (off + 4 + 1) & !1;
    let mut old = [0u16; 3];
    for (w, at) in old.iter_mut().zip((start..end).step_by(2)) {
        *w = read16(tcp, at);
    }
    tcp[off..off + 4].copy_from_slice(&value.to_be_bytes());
    let mut check = read16(tcp, CHECKSUM);
    for (w, at) in old.iter().zip((start..end).step_by(2)) {
        check = checksum::update16(check, *w, read16(tcp, at));
    }
    tcp[CHECKSUM..CHECKSUM + 2].copy_from_slice(&check.to_be_bytes());
}

/// A 16-bit word of the checksum's sum; past the end of an odd-length
/// segment the missing byte is the sum's zero pad.
fn read16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b.get(at + 1).copied().unwrap_or(0)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlb_testkit::{check, ip, reseal_tcp, tcp_seq, with_tcp_options};

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ETH_IP: usize = 14 + 20;

    fn segment(seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        tcp_seq(MAC_A, MAC_B, ip("10.0.0.1"), ip("198.18.100.1"), (40000, 80), seq, Some(ack), 502, 0x18, payload)
    }

    fn sack_option(edges: &[u32], lead_nops: usize) -> Vec<u8> {
        let mut o = vec![OPT_NOP; lead_nops];
        o.push(OPT_SACK);
        o.push((2 + 4 * edges.len()) as u8);
        for e in edges {
            o.extend_from_slice(&e.to_be_bytes());
        }
        while !o.len().is_multiple_of(4) {
            o.push(OPT_NOP);
        }
        o
    }

    #[test]
    fn server_sequence_numbers_shift_across_the_wrap() {
        for (seq, delta, want) in [
            (0xffff_fff0, 0x20, 0x10),                    // wraps up
            (0x10, 0u32.wrapping_sub(0x20), 0xffff_fff0), // wraps down
            (1, 0x8000_0000, 0x8000_0001),
        ] {
            let mut f = segment(seq, 1001, b"hello, odd length");
            server_to_client(&mut f[ETH_IP..], delta).unwrap();
            check(&f).expect("checksums hold");
            assert_eq!(read32(&f[ETH_IP..], SEQ), want, "seq {seq:#x} + {delta:#x}");
            assert_eq!(read32(&f[ETH_IP..], ACK), 1001, "the client's numbers are left alone");
        }
    }

    #[test]
    fn client_acks_and_sack_edges_shift_back_across_the_wrap() {
        let delta = 0x30u32;
        // Server bytes around the wrap, as the client numbers them.
        let edges = [0x10, 0x20, 0x28, 0x2c];
        for lead_nops in [2, 1, 3] {
            // 2 NOPs: the edges are 4-aligned; 1 or 3: they straddle words.
            let mut f = with_tcp_options(&segment(7, 0x05, b"x"), &sack_option(&edges, lead_nops));
            client_to_server(&mut f[ETH_IP..], delta).unwrap();
            check(&f).expect("checksums hold");
            assert_eq!(read32(&f[ETH_IP..], SEQ), 7, "the client's own numbers stay");
            assert_eq!(read32(&f[ETH_IP..], ACK), 0xffff_ffd5);
            let at = ETH_IP + MIN_LEN + lead_nops + 2;
            let got: Vec<u32> = (0..4).map(|i| read32(&f, at + 4 * i)).collect();
            assert_eq!(got, edges.map(|e: u32| e.wrapping_sub(delta)), "{lead_nops} NOPs first");
        }
    }

    #[test]
    fn a_translation_there_and_back_is_the_identity() {
        let mut f = with_tcp_options(&segment(0xdead_beef, 0xffff_ffff, b"abc"), &sack_option(&[1, 2], 2));
        let orig = f.clone();
        client_to_server(&mut f[ETH_IP..], 0x1234_5678).unwrap();
        client_to_server(&mut f[ETH_IP..], 0u32.wrapping_sub(0x1234_5678)).unwrap();
        assert_eq!(f, orig);
    }

    #[test]
    fn windows_are_rescaled_without_overstating_them() {
        let window = |f: &[u8]| u16::from_be_bytes([f[ETH_IP + WINDOW], f[ETH_IP + WINDOW + 1]]);
        for (shift, want) in [(0, 502), (2, 2008), (8, 0xffff), (-3, 62), (-9, 0), (-40, 0), (40, 0xffff)] {
            let mut f = segment(1, 2, b"data");
            rescale_window(&mut f[ETH_IP..], shift).unwrap();
            check(&f).expect("checksums hold");
            assert_eq!(window(&f), want, "502 scaled by 2^{shift}");
        }
    }

    #[test]
    fn without_the_ack_flag_the_ack_field_is_not_touched() {
        let mut f = segment(5, 0x99, b"");
        f[ETH_IP + FLAGS] = 0x02; // a bare SYN
        reseal_tcp(&mut f);
        client_to_server(&mut f[ETH_IP..], 0x10).unwrap();
        assert_eq!(read32(&f[ETH_IP..], ACK), 0x99);
        check(&f).expect("checksums hold");
    }

    #[test]
    fn a_cleared_fin_keeps_the_data_and_the_checksum() {
        let mut f = tcp_seq(
            MAC_A,
            MAC_B,
            ip("198.18.1.11"),
            ip("10.0.0.7"),
            (8080, 40001),
            7,
            Some(9),
            501,
            crate::packet::tcp_flags::FIN,
            b"last bytes",
        );
        clear_fin(&mut f[ETH_IP..]).unwrap();
        let seen = check(&f).expect("checksum holds");
        assert_eq!((seen.flags & crate::packet::tcp_flags::FIN, seen.payload.as_slice()), (0, &b"last bytes"[..]));
    }

    #[test]
    fn malformed_options_are_refused_and_nothing_changes() {
        for options in [
            vec![OPT_SACK, 7, 0, 0, 0, 0, 0, 0],                         // not 2 + 8n
            vec![OPT_SACK, 2, OPT_NOP, OPT_NOP],                         // no block
            vec![8, 40, 0, 0],                                           // runs past the header
            vec![OPT_NOP, OPT_NOP, OPT_NOP, 8],                          // a kind without its length
            [sack_option(&[1, 2], 2), sack_option(&[3, 4], 2)].concat(), // two SACKs
        ] {
            let mut f = with_tcp_options(&segment(5, 0x99, b""), &options);
            let before = f.clone();
            assert_eq!(client_to_server(&mut f[ETH_IP..], 0x10), Err(SpliceError::BadOptions), "{options:?}");
            assert_eq!(f, before);
        }
        let mut short = segment(5, 0x99, b"")[ETH_IP..ETH_IP + 12].to_vec();
        assert_eq!(server_to_client(&mut short, 1), Err(SpliceError::Truncated));
        let mut bad_off = segment(5, 0x99, b"");
        bad_off[ETH_IP + DATA_OFF] = 0x40; // 16 bytes: below the minimum
        assert_eq!(client_to_server(&mut bad_off[ETH_IP..], 1), Err(SpliceError::Truncated));
    }
}
