//! What sibling appliances tell each other, as sync records (SYNC.md,
//! "Records"). Servers and services travel as addresses, not as this
//! appliance's indices, so siblings whose configurations list servers in
//! another order still agree; a record naming a service or server this
//! appliance does not have is refused and counted. Decoding is total.

use crate::control::channel::SessionRecord;
use crate::dataplane::Shared;
use crate::locks::LockRecord;
use crate::packet::L4Proto;
use crate::session::{FlowKey, InstallMode, State};

const SESSION: u8 = 1;
const SESSION_IF_ABSENT: u8 = 2;
const REMOVED: u8 = 3;
const LOCK: u8 = 4;
const RESYNC_REQUEST: u8 = 5;
const RESYNC_DONE: u8 = 6;

const KEY_LEN: usize = 13;
pub const SESSION_LEN: usize = 1 + KEY_LEN + 6 + 1 + 1 + 6 + 2;
pub const REMOVED_LEN: usize = 1 + KEY_LEN + 2;
pub const LOCK_LEN: usize = 1 + 4 + 4 + 2 + 1 + 6 + 4 + 8;
pub const RESYNC_DONE_LEN: usize = 1 + 4 + 4;

/// A record, in this appliance's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Session {
        rec: SessionRecord,
        mode: InstallMode,
    },
    Removed {
        key: FlowKey,
        born: u16,
    },
    Lock(LockRecord),
    /// "Send me everything you hold."
    ResyncRequest,
    /// The end of a resync: how many sessions and locks it carried.
    ResyncDone {
        sessions: u32,
        locks: u32,
    },
}

/// Why a record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    /// Names a service (VIP, port, protocol) or a server this appliance lacks.
    Unknown,
}

/// An encoded record, on the stack (the control thread encodes millions).
pub struct Encoded {
    buf: [u8; 32],
    len: usize,
}

impl Encoded {
    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
    fn extend_from_slice(&mut self, s: &[u8]) {
        self.buf[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

const _: () = assert!(SESSION_LEN <= 32 && LOCK_LEN <= 32 && REMOVED_LEN <= 32 && RESYNC_DONE_LEN <= 32);

fn put_key(b: &mut Encoded, k: &FlowKey) {
    b.extend_from_slice(&k.client_ip.to_be_bytes());
    b.extend_from_slice(&k.vip.to_be_bytes());
    b.extend_from_slice(&k.client_port.to_be_bytes());
    b.extend_from_slice(&k.vport.to_be_bytes());
    b.push(k.proto as u8);
}

/// Encodes a record; None if it names a server this appliance does not know
/// (it made the record itself, so only a bug gets there).
pub fn encode(shared: &Shared, r: &Record) -> Option<Encoded> {
    let mut b = Encoded { buf: [0; 32], len: 0 };
    match r {
        Record::Session { rec, mode } => {
            let (ip, port, _) = shared.routing().server_addr(rec.server)?;
            b.push(if *mode == InstallMode::Upsert { SESSION } else { SESSION_IF_ABSENT });
            put_key(&mut b, &rec.key);
            b.extend_from_slice(&ip.to_be_bytes());
            b.extend_from_slice(&port.to_be_bytes());
            b.push(rec.state as u8);
            b.push(rec.client_port);
            b.extend_from_slice(&rec.client_mac);
            b.extend_from_slice(&rec.born.to_be_bytes());
        }
        Record::Removed { key, born } => {
            b.push(REMOVED);
            put_key(&mut b, key);
            b.extend_from_slice(&born.to_be_bytes());
        }
        Record::Lock(l) => {
            let (vip, vport, proto) = shared.routing().service_endpoint(l.service)?;
            let (ip, port, _) = shared.routing().server_addr(l.server)?;
            b.push(LOCK);
            b.extend_from_slice(&l.client_ip.to_be_bytes());
            b.extend_from_slice(&vip.to_be_bytes());
            b.extend_from_slice(&vport.to_be_bytes());
            b.push(proto);
            b.extend_from_slice(&ip.to_be_bytes());
            b.extend_from_slice(&port.to_be_bytes());
            b.extend_from_slice(&l.remaining_ms.to_be_bytes());
            b.extend_from_slice(&l.rank.to_be_bytes());
        }
        Record::ResyncRequest => b.push(RESYNC_REQUEST),
        Record::ResyncDone { sessions, locks } => {
            b.push(RESYNC_DONE);
            b.extend_from_slice(&sessions.to_be_bytes());
            b.extend_from_slice(&locks.to_be_bytes());
        }
    }
    Some(b)
}

/// A bounds-checked reader over one record.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(Refused::Malformed)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, Refused> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Refused> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, Refused> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, Refused> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn proto(&mut self) -> Result<L4Proto, Refused> {
        match self.u8()? {
            6 => Ok(L4Proto::Tcp),
            17 => Ok(L4Proto::Udp),
            _ => Err(Refused::Malformed),
        }
    }
    fn key(&mut self) -> Result<FlowKey, Refused> {
        Ok(FlowKey {
            client_ip: self.u32()?,
            vip: self.u32()?,
            client_port: self.u16()?,
            vport: self.u16()?,
            proto: self.proto()?,
        })
    }
    fn end(&self) -> Result<(), Refused> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Refused::Malformed)
        }
    }
}

/// Decodes a sibling's record into this appliance's terms.
pub fn decode(shared: &Shared, bytes: &[u8]) -> Result<Record, Refused> {
    let mut f = Fields(bytes);
    let r = match f.u8()? {
        kind @ (SESSION | SESSION_IF_ABSENT) => {
            let key = f.key()?;
            let (ip, port) = (f.u32()?, f.u16()?);
            let state = State::from_u8(f.u8()?).ok_or(Refused::Malformed)?;
            let client_port = f.u8()?;
            let client_mac = f.take::<6>()?;
            let born = f.u16()?;
            let svc = shared.service_at(key.vip, key.vport, key.proto as u8).ok_or(Refused::Unknown)?;
            let server = shared.routing().server_of(svc, ip, port).ok_or(Refused::Unknown)?;
            if usize::from(client_port) >= shared.ports.len() {
                return Err(Refused::Unknown);
            }
            let mode = if kind == SESSION { InstallMode::Upsert } else { InstallMode::IfAbsent };
            Record::Session { rec: SessionRecord { key, server, state, client_port, client_mac, born }, mode }
        }
        REMOVED => Record::Removed { key: f.key()?, born: f.u16()? },
        LOCK => {
            let client_ip = f.u32()?;
            let (vip, vport, proto) = (f.u32()?, f.u16()?, f.proto()?);
            let (ip, port) = (f.u32()?, f.u16()?);
            let (remaining_ms, rank) = (f.u32()?, f.u64()?);
            let service = shared.service_at(vip, vport, proto as u8).ok_or(Refused::Unknown)?;
            let server = shared.routing().server_of(service, ip, port).ok_or(Refused::Unknown)?;
            Record::Lock(LockRecord { client_ip, service, server, remaining_ms, rank })
        }
        RESYNC_REQUEST => Record::ResyncRequest,
        RESYNC_DONE => Record::ResyncDone { sessions: f.u32()?, locks: f.u32()? },
        _ => return Err(Refused::Malformed),
    };
    f.end()?;
    Ok(r)
}
