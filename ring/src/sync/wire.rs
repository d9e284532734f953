//! The sync wire format (SYNC.md): a header naming sender and addressee
//! incarnations, a DATA or ACK body, and a keyed BLAKE3 MAC over everything
//! before it. Decoding is total: any byte string yields a value or an error.

use crate::wire::{DecodeError, Key, Reader, Writer};
use std::net::SocketAddrV4;

pub const MAGIC: [u8; 2] = *b"RS";
pub const VERSION: u8 = 1;
pub const MAC_LEN: usize = 32;
/// magic, version, kind, sender address, sender incarnation, packet seq,
/// addressee incarnation.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 6 + 8 + 8 + 8;
/// Datagrams never exceed this (one Ethernet frame with IP/UDP headers).
pub const MAX_DATAGRAM: usize = 1400;
/// epoch, stream seq, origin time, record count.
pub const DATA_HEAD: usize = 4 + 8 + 8 + 2;
/// Room for framed records in one DATA datagram.
pub const DATA_ROOM: usize = MAX_DATAGRAM - HEADER_LEN - DATA_HEAD - MAC_LEN;
/// A record is at most this long (its length is one byte on the wire).
pub const MAX_RECORD: usize = 255;
/// Missing batches named in one ACK.
pub const MAX_NACKS: usize = 64;

const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sender: SocketAddrV4,
    pub incarnation: u64,
    /// Per (sender, incarnation), strictly increasing: the replay window's key.
    pub seq: u64,
    /// The incarnation of the member this packet is for.
    pub to_incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    /// One batch of a stream: `records` is `count` records, each a length
    /// byte and that many bytes (already validated). `stamp_us`: when the
    /// oldest record in it was made, on the sender's wall clock (0: unknown).
    Data { epoch: u32, seq: u64, stamp_us: u64, count: u16, records: &'a [u8] },
    /// The receiver has every batch below `next` of stream `epoch`, and is
    /// missing `nacks` (each above `next`).
    Ack { epoch: u32, next: u64, nacks: Vec<u64> },
}

/// Iterates over framed records (as built by a stream's batch).
pub fn records(framed: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = framed;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let (rec, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        Some(rec)
    })
}

/// Appends the MAC to `signed` (magic, version, kind, then any body), as
/// the encoders do last: for tools that build datagrams byte by byte (the fuzzer).
pub fn seal_bytes(signed: Vec<u8>, key: &Key) -> Vec<u8> {
    seal(Writer(signed), key)
}

fn seal(mut w: Writer, key: &Key) -> Vec<u8> {
    let mac = key.mac(&w.0);
    w.0.extend_from_slice(mac.as_bytes());
    w.0
}

fn header(w: &mut Writer, kind: u8, h: &Header) {
    w.0.extend_from_slice(&MAGIC);
    w.u8(VERSION);
    w.u8(kind);
    w.addr(&h.sender);
    w.u64(h.incarnation);
    w.u64(h.seq);
    w.u64(h.to_incarnation);
}

/// One DATA batch (see [`Body::Data`]).
pub struct DataBatch<'a> {
    pub epoch: u32,
    pub seq: u64,
    pub stamp_us: u64,
    pub count: u16,
    pub framed: &'a [u8],
}

pub fn encode_data(h: &Header, b: &DataBatch, key: &Key) -> Vec<u8> {
    let framed = b.framed;
    let mut w = Writer(Vec::with_capacity(HEADER_LEN + DATA_HEAD + framed.len() + MAC_LEN));
    header(&mut w, KIND_DATA, h);
    w.u32(b.epoch);
    w.u64(b.seq);
    w.u64(b.stamp_us);
    w.u16(b.count);
    w.0.extend_from_slice(framed);
    seal(w, key)
}

pub fn encode_ack(h: &Header, epoch: u32, next: u64, nacks: &[u64], key: &Key) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(HEADER_LEN + 13 + 8 * nacks.len() + MAC_LEN));
    header(&mut w, KIND_ACK, h);
    w.u32(epoch);
    w.u64(next);
    let n = nacks.len().min(MAX_NACKS);
    w.u8(n as u8);
    for s in &nacks[..n] {
        w.u64(*s);
    }
    seal(w, key)
}

/// Checks length, magic, version and MAC (constant time) before parsing
/// anything else, then decodes.
pub fn decode<'a>(bytes: &'a [u8], key: &Key) -> Result<(Header, Body<'a>), DecodeError> {
    if bytes.len() < HEADER_LEN + MAC_LEN || bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::Truncated);
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(DecodeError::BadVersion(bytes[2]));
    }
    let (signed, mac) = bytes.split_at(bytes.len() - MAC_LEN);
    let mut got = [0u8; MAC_LEN];
    got.copy_from_slice(mac);
    // blake3::Hash compares in constant time.
    if key.mac(signed) != blake3::Hash::from(got) {
        return Err(DecodeError::BadMac);
    }
    let kind = signed[3];
    let mut r = Reader(&signed[4..]);
    let h = Header { sender: r.addr()?, incarnation: r.u64()?, seq: r.u64()?, to_incarnation: r.u64()? };
    let body = match kind {
        KIND_DATA => {
            let epoch = r.u32()?;
            let seq = r.u64()?;
            let stamp_us = r.u64()?;
            let count = r.u16()?;
            let framed = r.0;
            let mut rest = framed;
            for _ in 0..count {
                let (&len, tail) = rest.split_first().ok_or(DecodeError::Truncated)?;
                if tail.len() < usize::from(len) {
                    return Err(DecodeError::Truncated);
                }
                rest = &tail[usize::from(len)..];
            }
            if !rest.is_empty() {
                return Err(DecodeError::Invalid("trailing bytes"));
            }
            Body::Data { epoch, seq, stamp_us, count, records: framed }
        }
        KIND_ACK => {
            let epoch = r.u32()?;
            let next = r.u64()?;
            let n = usize::from(r.u8()?);
            if n > MAX_NACKS {
                return Err(DecodeError::Invalid("nack count"));
            }
            let mut nacks = Vec::with_capacity(n);
            for _ in 0..n {
                nacks.push(r.u64()?);
            }
            r.end()?;
            Body::Ack { epoch, next, nacks }
        }
        k => return Err(DecodeError::UnknownMessage(k)),
    };
    Ok((h, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn h() -> Header {
        Header {
            sender: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7400),
            incarnation: 5,
            seq: 9,
            to_incarnation: 7,
        }
    }

    fn framed(recs: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for r in recs {
            v.push(r.len() as u8);
            v.extend_from_slice(r);
        }
        v
    }

    #[test]
    fn data_and_ack_round_trip() {
        let key = Key::derive("test", "secret");
        let f = framed(&[b"one", b"", b"three"]);
        let bytes = encode_data(&h(), &DataBatch { epoch: 3, seq: 42, stamp_us: 99, count: 3, framed: &f }, &key);
        let (hd, body) = decode(&bytes, &key).unwrap();
        assert_eq!(hd, h());
        assert_eq!(body, Body::Data { epoch: 3, seq: 42, stamp_us: 99, count: 3, records: &f[..] });
        let recs: Vec<&[u8]> = records(&f).collect();
        assert_eq!(recs, vec![&b"one"[..], b"", b"three"]);
        let bytes = encode_ack(&h(), 3, 40, &[41, 44], &key);
        assert_eq!(decode(&bytes, &key).unwrap().1, Body::Ack { epoch: 3, next: 40, nacks: vec![41, 44] });
    }

    #[test]
    fn forged_truncated_and_inconsistent_packets_are_errors() {
        let key = Key::derive("test", "secret");
        let f = framed(&[b"abc"]);
        let bytes = encode_data(&h(), &DataBatch { epoch: 1, seq: 1, stamp_us: 0, count: 1, framed: &f }, &key);
        assert_eq!(decode(&bytes, &Key::derive("test", "other")), Err(DecodeError::BadMac));
        assert_eq!(decode(&bytes, &Key::derive("ringlb ring v1 packet MAC", "secret")), Err(DecodeError::BadMac));
        for i in 3..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert_eq!(decode(&b, &key), Err(DecodeError::BadMac), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &key).is_err(), "prefix {n}");
        }
        // Validly signed but lying about its records: refused, not mis-read.
        let lying = encode_data(&h(), &DataBatch { epoch: 1, seq: 1, stamp_us: 0, count: 2, framed: &f }, &key);
        assert_eq!(decode(&lying, &key), Err(DecodeError::Truncated));
        let short = encode_data(&h(), &DataBatch { epoch: 1, seq: 1, stamp_us: 0, count: 0, framed: &f }, &key);
        assert_eq!(decode(&short, &key), Err(DecodeError::Invalid("trailing bytes")));
    }
}
