//! The wire format (see PROTOCOL.md): a versioned header, zero or more
//! messages, and a keyed BLAKE3 MAC over everything before it. Decoding is a
//! bounds-checked reader: any byte string yields a value or an error, never a
//! panic.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const MAGIC: [u8; 2] = *b"RL";
/// 2: the MAC covers the receiver's address too.
pub const VERSION: u8 = 2;
pub const MAC_LEN: usize = 32;
pub const HEADER_LEN: usize = 2 + 1 + 1 + 6 + 8 + 8;
/// Datagrams never exceed this (fits an Ethernet jumbo-free path with IP/UDP headers).
pub const MAX_DATAGRAM: usize = 1400;
pub const MAX_MEMBERS: usize = 256;

/// Capability bits a member announces.
pub const CAP_DISPATCH: u8 = 0x01;
/// A ringlb appliance: it shares session state with the other appliances
/// of the view, its siblings. Server agents do not set it.
pub const CAP_APPLIANCE: u8 = 0x02;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadMagic,
    BadVersion(u8),
    BadMac,
    UnknownMessage(u8),
    Invalid(&'static str),
}

/// One member as a view lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberEntry {
    pub addr: SocketAddrV4,
    pub caps: u8,
    /// The member's id: assigned by the master that first admits it, then
    /// reported by the member itself (0 = none yet).
    pub id: u64,
    pub incarnation: u64,
}

/// The ring as its master sees it; circulated in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMsg {
    pub version: u64,
    /// Ring creation time (the master's clock, ms), one of a member's state variables.
    pub created_ms: u64,
    /// Sorted by address; the first is the master.
    pub members: Vec<MemberEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Broadcast,
    To(SocketAddrV4),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// "I am here": sent to every configured peer while forming or joining.
    Hello {
        caps: u8,
        id: u64,
    },
    /// The token: the master's view, passed downstream around the ring.
    Heartbeat {
        seq: u64,
        view: ViewMsg,
    },
    /// Out-of-band copy of the master's view for members outside it.
    Announce {
        view: ViewMsg,
    },
    /// Leave and re-enter: the ring led by `master` is broken.
    Purge {
        master: SocketAddrV4,
        version: u64,
    },
    /// Ask a master to be admitted.
    Join {
        caps: u8,
        id: u64,
    },
    /// Is my upstream alive, and in which ring?
    Probe {
        nonce: u64,
    },
    ProbeAck {
        nonce: u64,
        master: SocketAddrV4,
        version: u64,
        downstream: SocketAddrV4,
    },
    /// An application message riding the ring.
    App {
        origin: SocketAddrV4,
        incarnation: u64,
        seq: u64,
        dest: Dest,
        hops_left: u8,
        payload: Vec<u8>,
    },
    /// Reliable layer: the token says how many carriage packets make the message.
    RelToken {
        msg_id: u64,
        count: u32,
        total_len: u32,
    },
    RelCarriage {
        msg_id: u64,
        index: u32,
        data: Vec<u8>,
    },
    RelNack {
        msg_id: u64,
        missing: Vec<u32>,
    },
    RelAck {
        msg_id: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub sender: SocketAddrV4,
    pub incarnation: u64,
    /// Per (sender, incarnation), strictly increasing: the replay window's key.
    pub seq: u64,
    pub msgs: Vec<Msg>,
}

/// Ordering key of an address: IP, then port (members are ordered by address).
pub fn order(a: &SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

// ---------- encoding ----------

/// Appends big-endian fields (shared with the sync codec).
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn addr(&mut self, a: &SocketAddrV4) {
        self.u32(u32::from(*a.ip()));
        self.u16(a.port());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.0.extend_from_slice(b);
    }
    fn view(&mut self, v: &ViewMsg) {
        self.u64(v.version);
        self.u64(v.created_ms);
        self.u16(v.members.len() as u16);
        for m in &v.members {
            self.addr(&m.addr);
            self.u8(m.caps);
            self.u64(m.id);
            self.u64(m.incarnation);
        }
    }
}

fn kind(m: &Msg) -> u8 {
    match m {
        Msg::Hello { .. } => 1,
        Msg::Heartbeat { .. } => 2,
        Msg::Announce { .. } => 3,
        Msg::Purge { .. } => 4,
        Msg::Join { .. } => 5,
        Msg::Probe { .. } => 6,
        Msg::ProbeAck { .. } => 7,
        Msg::App { .. } => 8,
        Msg::RelToken { .. } => 9,
        Msg::RelCarriage { .. } => 10,
        Msg::RelNack { .. } => 11,
        Msg::RelAck { .. } => 12,
    }
}

fn encode_msg(w: &mut Writer, m: &Msg) {
    let mut body = Writer(Vec::new());
    match m {
        Msg::Hello { caps, id } | Msg::Join { caps, id } => {
            body.u8(*caps);
            body.u64(*id);
        }
        Msg::Heartbeat { seq, view } => {
            body.u64(*seq);
            body.view(view);
        }
        Msg::Announce { view } => body.view(view),
        Msg::Purge { master, version } => {
            body.addr(master);
            body.u64(*version);
        }
        Msg::Probe { nonce } => body.u64(*nonce),
        Msg::ProbeAck { nonce, master, version, downstream } => {
            body.u64(*nonce);
            body.addr(master);
            body.u64(*version);
            body.addr(downstream);
        }
        Msg::App { origin, incarnation, seq, dest, hops_left, payload } => {
            body.addr(origin);
            body.u64(*incarnation);
            body.u64(*seq);
            match dest {
                Dest::Broadcast => body.u8(0),
                Dest::To(a) => {
                    body.u8(1);
                    body.addr(a);
                }
            }
            body.u8(*hops_left);
            body.bytes(payload);
        }
        Msg::RelToken { msg_id, count, total_len } => {
            body.u64(*msg_id);
            body.u32(*count);
            body.u32(*total_len);
        }
        Msg::RelCarriage { msg_id, index, data } => {
            body.u64(*msg_id);
            body.u32(*index);
            body.bytes(data);
        }
        Msg::RelNack { msg_id, missing } => {
            body.u64(*msg_id);
            body.u16(missing.len() as u16);
            for i in missing {
                body.u32(*i);
            }
        }
        Msg::RelAck { msg_id } => body.u64(*msg_id),
    }
    w.u8(kind(m));
    w.bytes(&body.0);
}

/// Encoded size of a message (for packing messages into datagrams).
pub fn msg_len(m: &Msg) -> usize {
    let mut w = Writer(Vec::new());
    encode_msg(&mut w, m);
    w.0.len()
}

/// The MAC key derived from the cluster's shared secret.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// The ring's packet key.
    pub fn from_secret(secret: &str) -> Key {
        Key::derive("ringlb ring v1 packet MAC", secret)
    }

    /// A key for one protocol (`context`) from the cluster's shared secret:
    /// protocols sharing a secret never share a key.
    pub fn derive(context: &str, secret: &str) -> Key {
        Key(blake3::derive_key(context, secret.as_bytes()))
    }

    pub(crate) fn mac(&self, bytes: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, bytes)
    }

    /// The MAC of a ring packet for receiver `to`: a packet captured on its
    /// way to one member fails the MAC at every other.
    fn mac_for(&self, bytes: &[u8], to: &SocketAddrV4) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(bytes);
        h.update(&to.ip().octets());
        h.update(&to.port().to_be_bytes());
        h.finalize()
    }
}

/// Appends to `signed` (magic, version, kind, then any body) the MAC for
/// receiver `to`, as `encode` does last. For tools that build packets
/// byte by byte, such as the fuzzer, which must get past the MAC to reach
/// the body decoder.
pub fn seal_for(mut signed: Vec<u8>, to: &SocketAddrV4, key: &Key) -> Vec<u8> {
    let mac = key.mac_for(&signed, to);
    signed.extend_from_slice(mac.as_bytes());
    signed
}

/// The packet's bytes for receiver `to` (its MAC is bound to `to`).
pub fn encode(p: &Packet, to: &SocketAddrV4, key: &Key) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.0.extend_from_slice(&MAGIC);
    w.u8(VERSION);
    w.u8(0);
    w.addr(&p.sender);
    w.u64(p.incarnation);
    w.u64(p.seq);
    w.u16(p.msgs.len() as u16);
    for m in &p.msgs {
        encode_msg(&mut w, m);
    }
    let mac = key.mac_for(&w.0, to);
    w.0.extend_from_slice(mac.as_bytes());
    w.0
}

// ---------- decoding ----------

/// A bounds-checked big-endian reader (shared with the sync codec).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn addr(&mut self) -> Result<SocketAddrV4, DecodeError> {
        let ip = Ipv4Addr::from(self.u32()?);
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn view(&mut self) -> Result<ViewMsg, DecodeError> {
        let version = self.u64()?;
        let created_ms = self.u64()?;
        let n = usize::from(self.u16()?);
        if n == 0 || n > MAX_MEMBERS {
            return Err(DecodeError::Invalid("member count"));
        }
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            members.push(MemberEntry {
                addr: self.addr()?,
                caps: self.u8()?,
                id: self.u64()?,
                incarnation: self.u64()?,
            });
        }
        if members.windows(2).any(|w| order(&w[0].addr) >= order(&w[1].addr)) {
            return Err(DecodeError::Invalid("members not sorted and unique"));
        }
        Ok(ViewMsg { version, created_ms, members })
    }
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid("trailing bytes"))
        }
    }
}

fn decode_msg(kind: u8, body: &[u8]) -> Result<Msg, DecodeError> {
    let mut r = Reader(body);
    let m = match kind {
        1 => Msg::Hello { caps: r.u8()?, id: r.u64()? },
        2 => Msg::Heartbeat { seq: r.u64()?, view: r.view()? },
        3 => Msg::Announce { view: r.view()? },
        4 => Msg::Purge { master: r.addr()?, version: r.u64()? },
        5 => Msg::Join { caps: r.u8()?, id: r.u64()? },
        6 => Msg::Probe { nonce: r.u64()? },
        7 => Msg::ProbeAck { nonce: r.u64()?, master: r.addr()?, version: r.u64()?, downstream: r.addr()? },
        8 => {
            let origin = r.addr()?;
            let incarnation = r.u64()?;
            let seq = r.u64()?;
            let dest = match r.u8()? {
                0 => Dest::Broadcast,
                1 => Dest::To(r.addr()?),
                _ => return Err(DecodeError::Invalid("destination kind")),
            };
            Msg::App { origin, incarnation, seq, dest, hops_left: r.u8()?, payload: r.bytes()?.to_vec() }
        }
        9 => Msg::RelToken { msg_id: r.u64()?, count: r.u32()?, total_len: r.u32()? },
        10 => Msg::RelCarriage { msg_id: r.u64()?, index: r.u32()?, data: r.bytes()?.to_vec() },
        11 => {
            let msg_id = r.u64()?;
            let n = usize::from(r.u16()?);
            if n > MAX_DATAGRAM / 4 {
                return Err(DecodeError::Invalid("nack length"));
            }
            let mut missing = Vec::with_capacity(n);
            for _ in 0..n {
                missing.push(r.u32()?);
            }
            Msg::RelNack { msg_id, missing }
        }
        12 => Msg::RelAck { msg_id: r.u64()? },
        k => return Err(DecodeError::UnknownMessage(k)),
    };
    r.end()?;
    Ok(m)
}

/// Verifies the MAC (made for receiver `me`), then decodes. The MAC is
/// checked first so that nothing from an unauthenticated sender is parsed
/// beyond the fixed header.
pub fn decode(bytes: &[u8], me: &SocketAddrV4, key: &Key) -> Result<Packet, DecodeError> {
    if bytes.len() < HEADER_LEN + 2 + MAC_LEN {
        return Err(DecodeError::Truncated);
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(DecodeError::BadVersion(bytes[2]));
    }
    let (signed, mac) = bytes.split_at(bytes.len() - MAC_LEN);
    let want = key.mac_for(signed, me);
    let mut got = [0u8; MAC_LEN];
    got.copy_from_slice(mac);
    // blake3::Hash compares in constant time.
    if want != blake3::Hash::from(got) {
        return Err(DecodeError::BadMac);
    }
    let mut r = Reader(&signed[4..]);
    let sender = r.addr()?;
    let incarnation = r.u64()?;
    let seq = r.u64()?;
    let n = usize::from(r.u16()?);
    let mut msgs = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let kind = r.u8()?;
        let body = r.bytes()?;
        msgs.push(decode_msg(kind, body)?);
    }
    r.end()?;
    Ok(Packet { sender, incarnation, seq, msgs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), port)
    }

    pub fn sample() -> Packet {
        let view = ViewMsg {
            version: 7,
            created_ms: 1234,
            members: vec![
                MemberEntry { addr: a(1, 7000), caps: CAP_DISPATCH, id: 1, incarnation: 9 },
                MemberEntry { addr: a(2, 7000), caps: 0, id: 0, incarnation: 3 },
            ],
        };
        Packet {
            sender: a(1, 7000),
            incarnation: 9,
            seq: 42,
            msgs: vec![
                Msg::Hello { caps: 1, id: 0 },
                Msg::Heartbeat { seq: 5, view: view.clone() },
                Msg::Announce { view },
                Msg::Purge { master: a(1, 7000), version: 7 },
                Msg::Join { caps: 0, id: 3 },
                Msg::Probe { nonce: 11 },
                Msg::ProbeAck { nonce: 11, master: a(1, 7000), version: 7, downstream: a(2, 7000) },
                Msg::App {
                    origin: a(2, 7000),
                    incarnation: 3,
                    seq: 1,
                    dest: Dest::To(a(1, 7000)),
                    hops_left: 3,
                    payload: b"hi".to_vec(),
                },
                Msg::App {
                    origin: a(2, 7000),
                    incarnation: 3,
                    seq: 2,
                    dest: Dest::Broadcast,
                    hops_left: 3,
                    payload: vec![],
                },
                Msg::RelToken { msg_id: 1, count: 3, total_len: 3000 },
                Msg::RelCarriage { msg_id: 1, index: 2, data: vec![1, 2, 3] },
                Msg::RelNack { msg_id: 1, missing: vec![0, 2] },
                Msg::RelAck { msg_id: 1 },
            ],
        }
    }

    #[test]
    fn every_message_kind_round_trips() {
        let key = Key::from_secret("s3cret");
        let p = sample();
        let to = a(2, 7400);
        assert_eq!(decode(&encode(&p, &to, &key), &to, &key), Ok(p));
    }

    #[test]
    fn a_packet_for_one_member_fails_the_mac_at_another() {
        let key = Key::from_secret("s3cret");
        let bytes = encode(&sample(), &a(2, 7400), &key);
        assert!(decode(&bytes, &a(2, 7400), &key).is_ok());
        assert_eq!(decode(&bytes, &a(3, 7400), &key), Err(DecodeError::BadMac));
        assert_eq!(decode(&bytes, &a(2, 7401), &key), Err(DecodeError::BadMac));
    }

    #[test]
    fn wrong_key_and_flipped_bits_fail_the_mac() {
        let key = Key::from_secret("s3cret");
        let to = a(2, 7400);
        let bytes = encode(&sample(), &to, &key);
        assert_eq!(decode(&bytes, &to, &Key::from_secret("other")), Err(DecodeError::BadMac));
        for i in 4..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert_eq!(decode(&b, &to, &key), Err(DecodeError::BadMac), "byte {i}");
        }
    }

    #[test]
    fn truncations_are_errors() {
        let key = Key::from_secret("k");
        let to = a(2, 7400);
        let bytes = encode(&sample(), &to, &key);
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &to, &key).is_err());
        }
    }
}
