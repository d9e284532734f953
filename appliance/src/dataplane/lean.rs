//! The burst's two passes, and the short way an established flow takes
//! through them.
//!
//! Pass one looks at every frame: the common one (unicast to the port,
//! IPv4 without options, TCP or UDP, to a VIP this worker owns or from a
//! NAT server) is parsed once, its session key hashed and its slot
//! prefetched; everything else gets its verdict now, or is left for the
//! general path. Pass two finishes the flows, whose slots are in cache by
//! then. A packet of a busy local session that changes nothing in it (no
//! SYN, FIN or RST, the session established or UDP) is rewritten at once;
//! any other goes the long way (`Worker::forward`, `Worker::nat_reply`),
//! which knows every case. Both ways give the same verdict: the short one
//! only skips the checks that cannot apply.

use super::{forward_key, Step, Verdict, Worker};
use crate::packet::{self, tcp_flags, Common, L4Info};
use crate::session::State;

/// What pass one leaves for pass two.
#[derive(Clone, Copy)]
enum Kind {
    /// The verdict is written already.
    Done,
    /// A rare frame that needs the general path in pass two (an ICMP
    /// error, a probe's answer, an IPv4 header with options).
    Again,
    /// Client → service.
    Forward,
    /// Client → DSR service that decides nothing per packet beyond the
    /// session (`VipEntry::short_way`).
    ShortDsr,
    /// Client → NAT service, likewise.
    ShortNat,
    /// NAT server → client.
    Reply,
}

/// One frame between the passes: for a flow, what `packet::Common`
/// holds, the session key's hash and the service, in 32 bytes.
#[derive(Clone, Copy)]
pub(super) struct Look {
    /// The frame's own addresses, ports and protocol (`packet::wire_key`;
    /// for a client's packet, its session key).
    tuple: u128,
    /// The session key's hash.
    hash: u64,
    svc: u16,
    payload_len: u16,
    kind: Kind,
    flags: u8,
    ttl: u8,
}

const DONE: Look = Look { tuple: 0, hash: 0, svc: 0, payload_len: 0, kind: Kind::Done, flags: 0, ttl: 0 };

impl Look {
    #[inline(always)]
    fn new(c: &Common, svc: u16, kind: Kind, hash: u64) -> Look {
        Look { tuple: c.tuple, hash, svc, payload_len: c.payload_len, kind, flags: c.flags, ttl: c.ttl }
    }

    #[inline]
    fn info(&self) -> L4Info {
        Common { tuple: self.tuple, flags: self.flags, ttl: self.ttl, payload_len: self.payload_len }.info()
    }
}

/// Flags that change a session's state: such packets go the long way.
const STATE_FLAGS: u8 = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;

impl Worker<'_> {
    /// A burst in two passes (see the module text). `frames[i]` arrived on
    /// `ports[i]`; its verdict goes to `verdicts[i]`. At most N frames are
    /// processed.
    #[inline]
    pub fn process_burst<const N: usize>(
        &mut self,
        frames: &mut [&mut [u8]],
        ports: &[u8],
        now_ms: u32,
        handed_off: bool,
        verdicts: &mut [Verdict; N],
    ) {
        if self.table.fits_in_cache() {
            // Nothing to wait for: each frame in one go.
            for ((frame, &port), verdict) in frames.iter_mut().zip(ports).zip(verdicts.iter_mut()) {
                match self.flow_look::<false>(frame, port, handed_off) {
                    Some(look) => self.second_look(frame, &look, port, now_ms, handed_off, verdict),
                    None => *verdict = self.process_general(frame, port, now_ms, handed_off),
                }
            }
            return;
        }
        let mut looks = [DONE; N];
        for (((frame, &port), look), verdict) in frames.iter_mut().zip(ports).zip(&mut looks).zip(verdicts.iter_mut()) {
            *look = match self.flow_look::<true>(frame, port, handed_off) {
                Some(flow) => flow,
                None => self.first_look_general(frame, port, handed_off, verdict),
            };
        }
        for (((frame, &port), look), verdict) in frames.iter_mut().zip(ports).zip(&looks).zip(verdicts.iter_mut()) {
            self.second_look(frame, look, port, now_ms, handed_off, verdict);
        }
    }

    /// Pass two for one frame.
    #[inline(always)]
    fn second_look(
        &mut self,
        frame: &mut [u8],
        look: &Look,
        port: u8,
        now_ms: u32,
        handed_off: bool,
        verdict: &mut Verdict,
    ) {
        match look.kind {
            Kind::ShortDsr => self.finish_short_dsr(frame, look, port, now_ms, verdict),
            Kind::ShortNat => self.finish_short_nat(frame, look, port, now_ms, verdict),
            Kind::Reply => self.finish_reply(frame, look, port, now_ms, verdict),
            Kind::Done => {}
            _ => *verdict = self.finish_general(frame, look, port, now_ms, handed_off),
        }
    }

    /// Pass two the long way: NAT replies, and the rare frames again.
    #[inline(never)]
    fn finish_general(&mut self, frame: &mut [u8], look: &Look, port: u8, now_ms: u32, handed_off: bool) -> Verdict {
        match look.kind {
            Kind::Reply => {
                let info = look.info();
                let key = self.reply_key(&info, look.svc);
                self.nat_reply(frame, &info, look.svc, &key, look.hash, port, now_ms)
            }
            Kind::Forward | Kind::ShortDsr | Kind::ShortNat => {
                let info = look.info();
                self.forward(frame, &info, look.svc, &forward_key(&info), look.hash, port, now_ms)
            }
            Kind::Again => self.process(frame, port, now_ms, handed_off),
            Kind::Done => Verdict::Consumed, // not called for it
        }
    }

    /// Everything but the common flows, as a single frame (out of line, so
    /// the common frame's loop stays small).
    #[inline(never)]
    fn process_general(&mut self, frame: &mut [u8], in_port: u8, now_ms: u32, handed_off: bool) -> Verdict {
        self.process(frame, in_port, now_ms, handed_off)
    }

    /// Pass one for a common frame of a flow: a client's packet to a
    /// service, or a NAT server's reply, that this worker owns. None:
    /// anything else (`first_look_general`). `PREFETCH`: start loading the
    /// session's slots.
    #[inline(always)]
    fn flow_look<const PREFETCH: bool>(&mut self, frame: &[u8], in_port: u8, handed_off: bool) -> Option<Look> {
        let shared = self.shared;
        let routing = &*self.routing;
        let port = shared.ports.get(usize::from(in_port))?;
        let c = packet::parse_common(frame, &port.mac)?;
        let (svc, kind, hash) = match routing.vips.get_wire(c.dst_key()) {
            Some(vip) if vip.by_address || !(handed_off || self.owns(&c)) => return None,
            Some(vip) => {
                let kind = match (vip.short_way, vip.nat) {
                    (false, _) => Kind::Forward,
                    (true, false) => Kind::ShortDsr,
                    (true, true) => Kind::ShortNat,
                };
                (vip.svc, kind, self.table.hash_packed(c.tuple))
            }
            None => {
                let svc = self.reply_service(&c, port.ip, handed_off)?;
                (svc, Kind::Reply, self.table.hash(&self.reply_key(&c.info(), svc)))
            }
        };
        if PREFETCH {
            self.table.prefetch(hash);
        }
        Some(Look::new(&c, svc, kind, hash))
    }

    /// Whether this worker owns a client's flow (see `Shared::owner`).
    #[inline(always)]
    fn owns(&self, c: &Common) -> bool {
        if self.shared.workers == 1 {
            return true;
        }
        let (src_ip, src_port) = c.src();
        self.shared.owner(src_ip, src_port) == self.id
    }

    /// The NAT service a common frame is a reply of, when this worker owns
    /// its flow (or another worker handed it here).
    #[inline]
    fn reply_service(&self, c: &Common, port_ip: u32, handed_off: bool) -> Option<u16> {
        let (src_ip, src_port) = c.src();
        let (dst_ip, dst_port, proto) = c.dst();
        if dst_ip == port_ip {
            return None; // to the port's own address: a probe's answer?
        }
        let svc = self.routing.nat_backends.get(src_ip, src_port, proto)?;
        (handed_off || self.shared.owner(dst_ip, dst_port) == self.id).then_some(svc)
    }

    /// Pass one for everything but the common flows, as a single frame
    /// would be: `classify` parses again (the common frames that reach this
    /// are handed off, dropped, probes' answers or fragments' services).
    /// Out of line, so the common frame's loop stays small.
    #[inline(never)]
    fn first_look_general(&mut self, frame: &mut [u8], in_port: u8, handed_off: bool, verdict: &mut Verdict) -> Look {
        match self.classify(frame, in_port, handed_off) {
            Step::Done(v) => {
                *verdict = v;
                DONE
            }
            Step::Forward { .. } | Step::Reply { .. } | Step::ToPort { .. } | Step::IcmpError { .. } => {
                Look { kind: Kind::Again, ..DONE }
            }
        }
    }

    /// Pass two for a client's packet of a DSR `short_way` service: the
    /// short way when its session is busy, local and unchanged by it (see
    /// the module text); the long way otherwise.
    #[inline(always)]
    fn finish_short_dsr(&mut self, frame: &mut [u8], look: &Look, in_port: u8, now_ms: u32, verdict: &mut Verdict) {
        if look.flags & STATE_FLAGS == 0 {
            if let Some(e) = self.table.local_live(look.tuple, look.hash, now_ms) {
                if matches!(e.state, State::Established | State::Udp) {
                    // DSR: only the Ethernet addresses change.
                    if let Some(hop) = self.routing.next_hop(e.server).filter(|hop| hop.address(frame)) {
                        e.touch_local(now_ms);
                        *verdict = Verdict::Tx(hop.port);
                        return;
                    }
                }
            }
        }
        *verdict = self.finish_general(frame, look, in_port, now_ms, false);
    }

    /// The same for a NAT `short_way` service: the destination becomes the
    /// session's server, the TTL drops by one.
    #[inline(always)]
    fn finish_short_nat(&mut self, frame: &mut [u8], look: &Look, in_port: u8, now_ms: u32, verdict: &mut Verdict) {
        if look.flags & STATE_FLAGS == 0 && look.ttl > 1 {
            if let Some(e) = self.table.local_live(look.tuple, look.hash, now_ms) {
                if matches!(e.state, State::Established | State::Udp) {
                    let shared = self.shared;
                    let routing = &*self.routing;
                    let server = routing.servers.get(usize::from(e.server));
                    let hop = routing
                        .next_hop(e.server)
                        .and_then(|hop| Some((hop.port, hop.mac()?, shared.ports.get(usize::from(hop.port))?.mac)));
                    if let (Some(srv), Some((port, server_mac, egress_mac))) = (server, hop) {
                        e.touch_local(now_ms);
                        packet::rewrite_nat_forward(frame, &look.info(), srv.ip, srv.port, server_mac, egress_mac);
                        *verdict = Verdict::Tx(port);
                        return;
                    }
                }
            }
        }
        *verdict = self.finish_general(frame, look, in_port, now_ms, false);
    }

    /// Pass two for a NAT server's reply: the short way when its session is
    /// busy, local, unchanged by it and bound to this server on this port
    /// and MAC; the long way (`Worker::nat_reply`, which names the drop)
    /// otherwise.
    #[inline(always)]
    fn finish_reply(&mut self, frame: &mut [u8], look: &Look, in_port: u8, now_ms: u32, verdict: &mut Verdict) {
        if look.flags & STATE_FLAGS == 0 && look.ttl > 1 {
            let info = look.info();
            let shared = self.shared;
            let routing = &*self.routing;
            let service = &routing.services[usize::from(look.svc)];
            let key = self.reply_key(&info, look.svc);
            if let Some(e) = self.table.local_live(key.pack(), look.hash, now_ms) {
                let from = (info.src_ip, info.src_port);
                let from_bound_server =
                    routing.reply_source_check(e.server, from, in_port, packet::src_mac(frame)).is_ok();
                let out = shared.ports.get(usize::from(e.client_port()));
                if let (true, Some(out), true) = (
                    matches!(e.state, State::Established | State::Udp) && from_bound_server,
                    out,
                    e.client_hop_mac != [0; 6],
                ) {
                    e.touch_local(now_ms);
                    let port = e.client_port();
                    packet::rewrite_nat_reply(frame, &info, service.vip, service.port, e.client_hop_mac, out.mac);
                    *verdict = Verdict::Tx(port);
                    return;
                }
            }
        }
        *verdict = self.finish_general(frame, look, in_port, now_ms, false);
    }
}
