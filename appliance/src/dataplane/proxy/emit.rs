//! The frames a proxied connection sends of its own (the replayed SYN,
//! ACKs, window updates, the request, RSTs): built into a fixed queue at
//! once, sent by the worker loop with the burst's frames.

use super::{rescaled, Proxied, REPLAYED_SYN_WINDOW};
use crate::dataplane::Worker;
use crate::l7::conn::Emit;
use crate::l7::segment::{self, Outgoing, MAX_FRAME};
use crate::l7::tcpopt;
use crate::packet::tcp_flags;
use crate::session::FlowKey;

/// Frames of the appliance's own one worker queues between sends.
const EMIT_CAPACITY: usize = 256;

/// Frames built and waiting to be sent: a fixed ring, no allocation.
pub struct Emits {
    frames: Box<[[u8; MAX_FRAME]]>,
    meta: Box<[(u8, u16)]>,
    len: usize,
}

impl Emits {
    pub fn new() -> Emits {
        Emits {
            frames: vec![[0; MAX_FRAME]; EMIT_CAPACITY].into_boxed_slice(),
            meta: vec![(0, 0); EMIT_CAPACITY].into_boxed_slice(),
            len: 0,
        }
    }

    /// Room for one more frame: its buffer, or None when full.
    fn slot(&mut self) -> Option<&mut [u8; MAX_FRAME]> {
        self.frames.get_mut(self.len)
    }

    /// The frame just written into `slot` (`len` 0: nothing was written).
    fn commit(&mut self, port: u8, len: usize) {
        if len > 0 {
            self.meta[self.len] = (port, len as u16);
            self.len += 1;
        }
    }
}

impl Worker<'_> {
    /// Builds one of the connection's own segments into the queue. While
    /// a `connect: race` is on, what goes to "the server" (the SYN, a RST)
    /// goes to every candidate.
    pub(super) fn emit(&mut self, p: &Proxied, key: &FlowKey, e: Emit) {
        if p.racing > 1 && matches!(e, Emit::SynToServer { .. } | Emit::RstToServer { .. }) {
            for &c in &p.race[..usize::from(p.racing)] {
                let mut q = *p;
                (q.server, q.racing) = (c, 0);
                self.emit_one(&q, key, e);
            }
            return;
        }
        self.emit_one(p, key, e);
    }

    fn emit_one(&mut self, p: &Proxied, key: &FlowKey, e: Emit) {
        let shared = self.shared;
        let routing = &*self.routing;
        let srv = &routing.servers[usize::from(p.server)];
        let nb = &routing.neighbors[usize::from(srv.neighbor)];
        let client = (key.client_ip, key.client_port);
        let server = (srv.ip, srv.port);
        let service = (key.vip, key.vport);
        let (block, n) = match e {
            Emit::SynToServer { opts, .. } => tcpopt::write(Some(opts.mss), &opts, opts.wscale),
            _ => ([0; 12], 0),
        };
        let options = &block[..n];
        // Toward the server: from the client's address, out of the server's port.
        let to_server = |seq, ack, flags, window| {
            let src_mac = shared.ports.get(usize::from(nb.port))?.mac;
            let dst_mac = nb.mac()?;
            Some((nb.port, Outgoing { src_mac, dst_mac, src: client, dst: server, seq, ack, flags, window, options }))
        };
        // Toward the client: from the service, out of the client's port.
        let to_client = |seq, ack, flags, window| {
            let src_mac = shared.ports.get(usize::from(p.client_port))?.mac;
            let (dst_mac, options) = (p.client_mac, &[][..]);
            Some((
                p.client_port,
                Outgoing { src_mac, dst_mac, src: service, dst: client, seq, ack, flags, window, options },
            ))
        };
        if let Emit::RequestToServer { seq, ack } = e {
            // The gathered request, in segments of the server's MSS.
            let (Some(id), Some(pool)) = (p.buf, self.requests.as_ref()) else { return };
            let bytes = pool.get(id).bytes().get(usize::from(p.request_at)..).unwrap_or(&[]);
            let bytes = &bytes[..bytes.len().min(p.conn.request_len as usize)];
            let window = rescaled(p.client_window, p.shift_to_server);
            let chunks = bytes.chunks(usize::from(p.server_mss.max(64)));
            let last = chunks.len().saturating_sub(1);
            let mut at = seq;
            for (i, chunk) in chunks.enumerate() {
                let flags = if i == last { tcp_flags::PSH } else { 0 };
                let Some((port, out)) = to_server(at, Some(ack), flags, window) else { return };
                match self.emits.slot() {
                    Some(buf) => {
                        let len = segment::build_with(buf, &out, chunk);
                        self.emits.commit(port, len);
                    }
                    None => self.stats.proxy_emit_full.inc(),
                }
                at = at.wrapping_add(chunk.len() as u32);
            }
            return;
        }
        let frame = match e {
            Emit::RequestToServer { .. } => None, // above
            Emit::SynToServer { isn, .. } => to_server(isn, None, tcp_flags::SYN, REPLAYED_SYN_WINDOW),
            Emit::AckToServer { seq, ack } => {
                to_server(seq, Some(ack), 0, rescaled(p.client_window, p.shift_to_server))
            }
            Emit::RstToServer { seq } => to_server(seq, None, tcp_flags::RST, 0),
            Emit::WindowToClient { seq, ack, window } => to_client(seq, Some(ack), 0, window),
            Emit::RstToClient { seq } => match p.track.map(|d| d.client_rst_seqs()) {
                // A tracked download: the client is further on than the
                // connection's own numbers say.
                Some((seq, also)) => {
                    if let Some(acked) = also {
                        let untracked = Proxied { track: None, ..*p };
                        self.emit_one(&untracked, key, Emit::RstToClient { seq: acked });
                    }
                    to_client(seq, None, tcp_flags::RST, 0)
                }
                None => to_client(seq, None, tcp_flags::RST, 0),
            },
        };
        // A server whose MAC is not known yet: the SYN goes again on its timer.
        let Some((port, out)) = frame else { return };
        match self.emits.slot() {
            Some(buf) => {
                let len = segment::build_with(buf, &out, &[]);
                self.emits.commit(port, len);
            }
            None => self.stats.proxy_emit_full.inc(),
        }
    }

    /// Hands each queued frame of the appliance's own to `send(port,
    /// frame)`, in order; the queue is empty afterwards. A frame `send`
    /// cannot take is lost (counted; the connection's timer or the peer's
    /// retransmission brings it again).
    pub fn drain_frames(&mut self, mut send: impl FnMut(u8, &[u8]) -> bool) {
        for i in 0..self.emits.len {
            let (port, len) = self.emits.meta[i];
            if !send(port, &self.emits.frames[i][..usize::from(len)]) {
                self.stats.proxy_emit_full.inc();
            }
        }
        self.emits.len = 0;
    }
}
