//! `syn_proxy: true` and `mode: l7` services: the worker's side of the
//! SYN proxy, and of delayed binding.
//!
//! A client's SYN is answered in its place with a SYN-ACK whose ISN is a
//! cookie and whose window is 0, and nothing is kept. When the client's
//! ACK returns a valid cookie, the connection is made (`l7::conn`): the
//! server is picked as for a NAT session, the client's SYN is replayed to
//! it (the client's own ISN and options, from the cookie), and once the
//! server answers, the appliance ACKs it and opens the client's window.
//! From then on each segment is NAT-rewritten as in `nat` mode and its
//! sequence numbers are translated (`l7::splice`): the server's shifted
//! by the delta between the cookie and its ISN, acknowledgements and SACK
//! blocks shifted back; windows are rescaled where the two sides' window
//! scales differ.
//!
//! An `l7` service (delayed binding: the server is chosen
//! once the request's head has arrived) answers the SYN the same
//! way but with an open window: the client's cookie ACK makes the
//! connection `Buffering`, and the appliance gathers and ACKs the
//! client's request itself (`l7::request`, at most 16 KiB) until its head
//! is complete. The head picks the group (`l7::rules`) and the group's
//! weighted round robin the server; the client's SYN is replayed to it,
//! and its SYN-ACK is answered with the gathered request (sent again
//! until the server ACKs it). Then the connection is spliced as above.
//! Keep-alive requests that follow stay on that server.
//!
//! Proxied connections live in their own table (`l7::table`), not in the
//! session table: they are not synced to siblings nor rebuilt from the
//! servers' lists. Frames the appliance sends of its own (the replayed
//! SYN, ACKs, window updates, RSTs) wait in `Emits` until the worker loop
//! sends them (`Worker::drain_frames`).
//!
//! Here: the SYN answered, the cookie checked, the server's segments (the
//! join, a race's winner, a failure before the answer) and the splicing
//! both ways. `l7`: the request gathered and bound, and the next server
//! after a failure; `failover`: a download carried on by another server
//! when its own dies halfway; `emit`: the frames of the appliance's own;
//! `timers`: retries, give-ups, stalls and expiry.

mod emit;
mod failover;
mod l7;
mod timers;

pub use emit::Emits;
use failover::{Progress, Resumed};
use l7::{redirect, status_of};

use super::{Verdict, Worker};
use crate::l7::conn::{Action, Conn, Emit, Seg, State};
use crate::l7::cookie::{CookieError, CookieFlow};
use crate::l7::request::{BufId, HEAD_CAP};
use crate::l7::segment::{self, SynAckParams};
use crate::l7::{splice, table::ConnTable, tcpopt};
use crate::packet::{self, tcp_flags, L4Info, Mac};
use crate::session::FlowKey;
use crate::stats::DropReason;

/// The MSS the appliance announces to clients: an Ethernet MTU's.
const PROXY_MSS: u16 = 1460;
/// The window scale the appliance offers clients (Linux's usual choice,
/// so against Linux servers windows pass unchanged).
const PROXY_WSCALE: u8 = 7;
/// The window of a replayed SYN (its real window follows with the client's next segment).
const REPLAYED_SYN_WINDOW: u16 = 65_535;
/// `l7`: a client has this long from its cookie ACK to send a whole
/// request head (a slow client cannot hold a buffer for ever).
pub const REQUEST_TIMEOUT_MS: u32 = 10_000;
/// `l7`: the request is sent again when the server has not ACKed it this
/// long after (doubling each time), at most `REQUEST_TRIES` times in all.
const REQUEST_RTO_MS: u32 = 200;
const REQUEST_TRIES: u8 = 5;
/// `l7`: a segment the appliance will not pass (one in forged names, or
/// bytes it already ACKed) draws an ACK at most this often per connection
/// and direction, so a flood of forged segments draws no flood of answers
/// (RFC 5961 section 7; Linux's `tcp_invalid_ratelimit` is the same).
const UNPASSED_ACK_GAP_MS: u32 = 500;

/// One proxied connection as a worker keeps it.
#[derive(Clone, Copy, Default)]
pub struct Proxied {
    conn: Conn,
    /// Global server id.
    server: u16,
    /// The port toward the client, and the client's next hop there.
    client_port: u8,
    client_mac: Mac,
    /// The window of the client's cookie ACK (in its own scale), for the
    /// ACK that completes the server's handshake.
    client_window: u16,
    /// Window rescaling, sender's scale minus receiver's (see `splice::rescale_window`).
    shift_to_client: i8,
    shift_to_server: i8,
    /// `l7`: the gathered request, held until the server ACKs it.
    buf: Option<BufId>,
    /// The server's MSS (the request's segments are no larger).
    server_mss: u16,
    /// `l7`: when the request phase's timer started (the cookie ACK while
    /// buffering; the last send of the request after the join), and how
    /// many times the request was sent.
    timer_ms: u32,
    request_sends: u8,
    /// The service (for the timers).
    svc: u16,
    /// `l7`: the group the request was bound in, its members tried (bit i:
    /// member i), and how many times the request went to another server.
    group: u8,
    tried: u64,
    redirects: u8,
    /// `l7`: the server ACKed the whole request; a byte of its answer
    /// reached the client (from then on it is the client's server).
    request_acked: bool,
    answered: bool,
    /// `l7`: the client sent bytes past the request, or its FIN, before the
    /// answer: they went to the server (another could not be given them),
    /// so the request cannot go elsewhere, nor its download be resumed.
    client_moved_on: bool,
    /// `l7`, `connect: race`: the servers the SYN went to, while none has
    /// answered (`racing` of them; 0: not racing). The first SYN-ACK binds.
    race: [u16; 4],
    racing: u8,
    /// `l7`: where in the buffer the request to send starts (after the
    /// original request when it is a resumed download's Range request).
    request_at: u16,
    /// `l7`: a download that another server can carry on if this one fails.
    track: Option<failover::Download>,
    /// `l7`: when the appliance last ACKed a segment it did not pass, to
    /// the client and to the server (see `UNPASSED_ACK_GAP_MS`).
    acked_client_ms: Option<u32>,
    acked_server_ms: Option<u32>,
}

/// Whether an ACK for a segment not passed may go now (`last`: when the
/// previous one went, updated when this one may).
fn unpassed_ack_due(last: &mut Option<u32>, now_ms: u32) -> bool {
    if last.is_some_and(|then| now_ms.wrapping_sub(then) < UNPASSED_ACK_GAP_MS) {
        return false;
    }
    *last = Some(now_ms);
    true
}

/// A client segment's way to the server: its server, the sequence delta
/// and the window rescaling.
#[derive(Clone, Copy)]
struct Splice {
    server: u16,
    delta: u32,
    shift: i8,
}

/// The proxied-connection table of one worker.
pub type ProxyTable = ConnTable<Proxied>;

/// The sequence, acknowledgement and window of a TCP segment (`info`'s),
/// as the connection's state machine reads them.
fn seg_of(frame: &[u8], info: &L4Info) -> Option<Seg> {
    let t = frame.get(usize::from(info.l4_off)..usize::from(info.l4_off) + 20)?;
    let be32 = |at: usize| u32::from_be_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]]);
    Some(Seg {
        seq: be32(4),
        ack: be32(8),
        flags: info.flags,
        window: u16::from_be_bytes([t[14], t[15]]),
        payload_len: u32::from(info.payload_len),
    })
}

/// Clears the FIN of `frame`'s TCP header (checksum kept); false when the
/// header is not there.
fn clear_fin(frame: &mut [u8], info: &L4Info) -> bool {
    frame.get_mut(usize::from(info.l4_off)..).map(splice::clear_fin).and_then(Result::ok).is_some()
}

fn flow_of(key: &FlowKey) -> CookieFlow {
    CookieFlow { client_ip: key.client_ip, client_port: key.client_port, vip: key.vip, vport: key.vport }
}

impl Worker<'_> {
    /// A client's segment to a `syn_proxy` service.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proxy_client(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        in_port: u8,
        now_ms: u32,
    ) -> Verdict {
        let Some(seg) = seg_of(frame, info) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let syn = info.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        let Some(table) = self.proxied.as_mut() else {
            return Verdict::Drop(DropReason::NoSession); // not allocated: no proxied service
        };
        let l7 = self.routing.services[usize::from(svc)].l7.is_some();
        if let Some(p) = table.get_mut(key.pack(), hash, now_ms) {
            if let Some(d) = p.track.as_mut() {
                // `l7`, a tracked download: the client's ACKs say how far
                // it got. It sends nothing but ACKs at its next byte
                // meanwhile: a segment elsewhere (a blind one, or a
                // keep-alive probe) neither moves nor ends the tracking.
                let at_next = seg.seq == p.conn.client_next();
                if seg.flags & tcp_flags::ACK != 0 && at_next {
                    let window = u32::from(seg.window) << p.conn.opts.wscale.unwrap_or(0).min(14);
                    if let Some(held) = d.client_ack(seg.ack, window, now_ms) {
                        let tcp = usize::from(info.l4_off);
                        if frame.get_mut(tcp..).map(|t| splice::set_ack(t, held)).and_then(Result::ok).is_none() {
                            return Verdict::Drop(DropReason::Malformed);
                        }
                    }
                }
                let rst = seg.flags & tcp_flags::RST != 0;
                if seg.flags & (tcp_flags::RST | tcp_flags::FIN) != 0 && !at_next {
                    // Not the client's TCP (its server's would refuse it
                    // too): it neither ends the download nor its failover.
                    return Verdict::Drop(DropReason::ProxyRefused);
                }
                if d.resuming() && !rst {
                    // Another server is taking the download over: the
                    // client's segments wait (TCP sends them again).
                    return Verdict::Consumed;
                }
                if at_next && (rst || seg.payload_len > 0 || seg.flags & tcp_flags::FIN != 0) {
                    // The client moved on (a resume could not replay it),
                    // or gave up (nothing is left to resume for it).
                    p.track = None;
                    if let (Some(id), Some(pool)) = (p.buf.take(), self.requests.as_mut()) {
                        pool.give(id);
                    }
                }
            }
            if l7 && matches!(p.conn.state, State::Buffering | State::Connecting) && !syn {
                return self.gather(frame, info, &seg, svc, key, hash, now_ms);
            }
            let ends_or_sends = seg.flags & (tcp_flags::RST | tcp_flags::FIN) != 0 || seg.payload_len > 0;
            if l7 && p.conn.state == State::Spliced && !p.answered && !p.client_moved_on && ends_or_sends {
                // `l7`, before the answer: the client has sent nothing past
                // its request (which the appliance ACKed), so its next byte
                // is known. A segment elsewhere must
                // neither close the connection nor pin the request to this
                // server.
                let next = p.conn.client_next();
                let rst = seg.flags & tcp_flags::RST != 0;
                if seg.seq != next {
                    let behind = next.wrapping_sub(seg.seq);
                    if rst || behind > p.conn.request_len {
                        return Verdict::Drop(DropReason::ProxyRefused); // a blind one
                    }
                    // Bytes the appliance ACKed, again: its ACK was lost, or
                    // it is a keep-alive probe. They are ACKed once more.
                    if unpassed_ack_due(&mut p.acked_client_ms, now_ms) {
                        // The window the appliance gave while it gathered
                        // the request (the client sends nothing more before
                        // the answer; the server's next segment sets its own).
                        let room =
                            (HEAD_CAP as u32).saturating_sub(p.conn.request_len) >> p.conn.our_wscale.unwrap_or(0);
                        let window = u16::try_from(room).unwrap_or(u16::MAX).max(1);
                        let ack = Emit::WindowToClient { seq: p.conn.cookie.wrapping_add(1), ack: next, window };
                        let p = *p;
                        self.emit(&p, key, ack);
                    }
                    return Verdict::Consumed;
                }
            }
            if !(syn && matches!(p.conn.state, State::Closing | State::Closed)) {
                let (action, emit) = p.conn.on_client(&seg);
                if l7
                    && !p.answered
                    && action == Action::Forward
                    && (seg.payload_len > 0 || seg.flags & tcp_flags::FIN != 0)
                {
                    p.client_moved_on = true;
                }
                // What the splice needs, not the whole entry (which is
                // copied only to emit a segment of the connection's own).
                let to_server = Splice { server: p.server, delta: p.conn.delta, shift: p.shift_to_server };
                if let Some(e) = emit {
                    let p = *p;
                    self.emit(&p, key, e);
                }
                return match action {
                    Action::Forward => self.splice_to_server(frame, info, to_server),
                    Action::Consume => Verdict::Consumed,
                    Action::Drop(_) => Verdict::Drop(DropReason::ProxyRefused),
                };
            }
            // A new connection of the tuple after the last one closed.
            if let Some(old) = table.remove(key.pack(), hash) {
                self.release(&old);
            }
        }
        if syn {
            return self.answer_syn(frame, svc, key, in_port, now_ms);
        }
        if info.flags & (tcp_flags::ACK | tcp_flags::RST) != tcp_flags::ACK {
            return Verdict::Drop(DropReason::NoSession);
        }
        self.open_proxied(frame, info, &seg, svc, key, hash, in_port, now_ms)
    }

    /// A SYN: the SYN-ACK with the cookie, written in its place. Nothing is kept.
    fn answer_syn(&mut self, frame: &mut [u8], svc: u16, key: &FlowKey, in_port: u8, now_ms: u32) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        if !shared.owns_vip_of(service) {
            return Verdict::Drop(DropReason::VipNotOwned);
        }
        if service.servers.iter().all(|&s| shared.server_weight(s) == 0) {
            // No cookie for a connection no server could take.
            return Verdict::Drop(DropReason::NoServer);
        }
        let Some(port) = shared.ports.get(usize::from(in_port)) else {
            return Verdict::Drop(DropReason::NotForUs);
        };
        let Ok((isn, offered)) = segment::read_syn(frame) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let opts = segment::agreed(&offered.opts, Some(PROXY_WSCALE));
        let cookie = shared.cookies.make(&flow_of(key), isn, &opts, self.wall_ms(now_ms));
        // `syn_proxy`: window 0, nothing before the join; `l7`: room for the request.
        let window = if service.l7.is_some() { HEAD_CAP as u16 } else { 0 };
        let params = SynAckParams { mss: PROXY_MSS, wscale: Some(PROXY_WSCALE), window };
        match segment::synack_in_place(frame, port.mac, cookie, &params) {
            Ok(len) => {
                // The SYN's extra bytes become zero padding after the datagram.
                if let Some(tail) = frame.get_mut(len..) {
                    tail.fill(0);
                }
                self.stats.syn_cookies_sent.inc();
                Verdict::Tx(in_port)
            }
            Err(_) => Verdict::Drop(DropReason::Malformed),
        }
    }

    /// An ACK without a connection: if it returns a valid cookie, the
    /// connection is made and the client's SYN replayed to a server.
    #[allow(clippy::too_many_arguments)]
    fn open_proxied(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        seg: &Seg,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        in_port: u8,
        now_ms: u32,
    ) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let cookie = seg.ack.wrapping_sub(1);
        let isn = seg.seq.wrapping_sub(1);
        let opts = match shared.cookies.check(&flow_of(key), isn, cookie, self.wall_ms(now_ms)) {
            Ok(opts) => opts,
            Err(CookieError::Stale) => return Verdict::Drop(DropReason::CookieStale),
            Err(CookieError::Forged) => return Verdict::Drop(DropReason::CookieForged),
        };
        let service = &routing.services[usize::from(svc)];
        if !shared.owns_vip_of(service) {
            return Verdict::Drop(DropReason::VipNotOwned);
        }
        let our_wscale = opts.wscale.map(|_| PROXY_WSCALE);
        // `l7`: the server waits for the request; `syn_proxy`: picked now.
        let (server, conn, syn) = if service.l7.is_some() {
            (0, Conn::accept(seg, cookie, opts, our_wscale), None)
        } else {
            let Some(server) = self.pick_server(svc, key, now_ms) else {
                return self.refuse_in_place(frame, info, in_port);
            };
            let (conn, syn) = Conn::open(seg, cookie, opts, our_wscale, now_ms);
            (server, conn, Some(syn))
        };
        let p = Proxied {
            conn,
            server,
            client_port: in_port,
            client_mac: packet::src_mac(frame),
            client_window: seg.window,
            shift_to_client: 0,
            shift_to_server: 0,
            buf: None,
            server_mss: PROXY_MSS,
            timer_ms: now_ms,
            request_sends: 0,
            svc,
            group: 0,
            tried: 0,
            redirects: 0,
            request_acked: false,
            answered: false,
            client_moved_on: false,
            race: [0; 4],
            racing: 0,
            request_at: 0,
            track: None,
            acked_client_ms: None,
            acked_server_ms: None,
        };
        let Some(table) = self.proxied.as_mut() else {
            return Verdict::Drop(DropReason::NoSession);
        };
        if table.insert(key.pack(), hash, p, now_ms).is_err() {
            self.stats.drop(DropReason::ProxyFull);
            return self.refuse_in_place(frame, info, in_port);
        }
        self.stats.proxy_opened.inc();
        self.stats.proxy_active.inc();
        match syn {
            Some(syn) => {
                self.stats.server_new_session(server);
                self.emit(&p, key, syn);
                Verdict::Consumed
            }
            // `l7`: the ACK may carry the request's first bytes.
            None => self.gather(frame, info, seg, svc, key, hash, now_ms),
        }
    }

    /// A proxied connection left the table: its buffer goes back, and it is counted.
    fn release(&mut self, p: &Proxied) {
        if let (Some(id), Some(pool)) = (p.buf, self.requests.as_mut()) {
            pool.give(id);
        }
        self.stats.proxy_active.dec();
    }

    /// The client's ACK proved its cookie but no connection can be made:
    /// it is answered with a RST, so the client knows at once.
    fn refuse_in_place(&mut self, frame: &mut [u8], info: &L4Info, in_port: u8) -> Verdict {
        self.stats.proxy_failed.inc();
        let Some(port) = self.shared.ports.get(usize::from(in_port)) else {
            return Verdict::Drop(DropReason::NoServer);
        };
        packet::reset_in_place(frame, info, port.mac);
        Verdict::Tx(in_port)
    }

    /// A server's segment of a `syn_proxy` service (`key`: its client's flow).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proxy_server(
        &mut self,
        frame: &mut [u8],
        info: &L4Info,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        in_port: u8,
        now_ms: u32,
    ) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let Some(mut seg) = seg_of(frame, info) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let Some(mut p) = self.proxied.as_mut().and_then(|t| t.get_mut(key.pack(), hash, now_ms)) else {
            return Verdict::Drop(DropReason::NoSession);
        };
        let from = (info.src_ip, info.src_port);
        if p.racing > 1 && p.conn.state == State::Connecting {
            // `connect: race`: which candidate answers?
            let racing = usize::from(p.racing);
            let Some(k) = p.race[..racing]
                .iter()
                .position(|&c| routing.reply_source_check(c, from, in_port, packet::src_mac(frame)).is_ok())
            else {
                return Verdict::Drop(DropReason::NoSession);
            };
            let for_our_syn = seg.flags & tcp_flags::ACK != 0 && seg.ack == p.conn.client_isn.wrapping_add(1);
            if seg.flags & tcp_flags::RST != 0 && for_our_syn {
                // It refused: out of the race (a failed attempt on it). With
                // one candidate left the race is over, and its refusal
                // will be the connection's.
                self.stats.server_redirects[usize::from(p.race[k])].inc();
                p.race.copy_within(k + 1..racing, k);
                p.racing -= 1;
                p.server = p.race[0];
                if p.racing == 1 {
                    p.racing = 0;
                    self.stats.server_new_session(p.server);
                }
                return Verdict::Consumed;
            } else if seg.flags & (tcp_flags::SYN | tcp_flags::RST) == tcp_flags::SYN && for_our_syn {
                // The first SYN-ACK binds; the others' handshakes are reset.
                let winner = p.race[k];
                let losers = *p;
                (p.server, p.racing) = (winner, 0);
                self.stats.server_new_session(winner);
                self.stats.server_won_race(winner);
                for (i, &loser) in losers.race[..racing].iter().enumerate() {
                    if i != k {
                        let mut q = losers;
                        (q.server, q.racing) = (loser, 0);
                        self.emit(&q, key, Emit::RstToServer { seq: q.conn.client_isn.wrapping_add(1) });
                    }
                }
                // Borrowed again after the emits.
                return self.proxy_server(frame, info, svc, key, hash, in_port, now_ms);
            } else {
                return Verdict::Drop(DropReason::ProxyRefused);
            }
        } else if let Err(reason) = routing.reply_source_check(p.server, from, in_port, packet::src_mac(frame)) {
            return Verdict::Drop(reason);
        }
        if info.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let l7 = routing.services[usize::from(svc)].l7.as_ref();
        let before = p.conn.state;
        let mut head_to_strip = None;
        if let (Some(l7), State::Spliced, false) = (l7, before, p.answered) {
            // `l7`, before any of the answer reached the client: a RST, a
            // FIN without data or an error status is the server's failure.
            let payload = tcp_header(frame, info)
                .and_then(|h| frame.get(usize::from(info.l4_off) + h.len()..))
                .map_or(&[][..], |rest| &rest[..rest.len().min(usize::from(info.payload_len))]);
            // Only at the server's next sequence number (it has sent no data
            // yet: its ISN + 1; a download's replacement, the part of its
            // head kept), so a blind segment in its name moves nothing.
            let head_seen = p.track.map_or(0, |d| d.head_seen());
            let expected = p.conn.server_isn.wrapping_add(1).wrapping_add(head_seen);
            let in_order = seg.seq == expected;
            let resuming = p.track.is_some_and(|d| d.resuming());
            // Nothing of its answer passed yet, so the appliance knows the
            // server's next byte exactly: a RST elsewhere is not accepted,
            // but draws a challenge ACK (RFC 5961) at that byte, which a
            // server that really closed answers with a RST there; a FIN
            // that does not reach it is not the server's (but a piece of a
            // replacement's head ahead of what was kept is gathered, FIN
            // or not: it gets a duplicate ACK and closes nothing).
            if seg.flags & tcp_flags::RST != 0 && !in_order {
                if unpassed_ack_due(&mut p.acked_server_ms, now_ms) {
                    let p = *p;
                    self.emit(&p, key, Emit::AckToServer { seq: p.conn.client_next(), ack: expected });
                }
                return Verdict::Drop(DropReason::ProxyRefused);
            }
            let head_piece = resuming && !payload.is_empty();
            if seg.flags & tcp_flags::FIN != 0 && expected.wrapping_sub(seg.seq) > seg.payload_len && !head_piece {
                return Verdict::Drop(DropReason::ProxyRefused);
            }
            let closed = seg.flags & tcp_flags::RST != 0 || seg.flags & tcp_flags::FIN != 0 && payload.is_empty();
            let error = status_of(payload).is_some_and(|code| l7.redirect.on_status.contains(&code));
            if (closed || error) && in_order && !p.client_moved_on {
                if let Some(v) = self.fail_before_answer(key, hash, svc, seg.flags & tcp_flags::RST != 0, now_ms) {
                    return v;
                }
                // No other server: an error answer goes to the client as it is.
                let Some(again) = self.proxied.as_mut().and_then(|t| t.get_mut(key.pack(), hash, now_ms)) else {
                    return Verdict::Drop(DropReason::NoSession);
                };
                p = again;
            }
            if !payload.is_empty() && resuming {
                // A resumed download: the replacement's head must answer
                // the Range request exactly (it may come in pieces), and
                // each of its segments ACKs exactly that request.
                if seg.flags & tcp_flags::ACK == 0 || seg.ack != p.conn.client_next() {
                    return Verdict::Drop(DropReason::ProxyRefused);
                }
                let pool = self.requests.as_mut();
                match pool.map_or(Resumed::Refused, |pool| failover::resumed(p, pool, &seg, payload, now_ms)) {
                    Resumed::Head { strip, from } => {
                        p.answered = true;
                        head_to_strip = Some((strip, from));
                    }
                    Resumed::Partial { ack }
                        if seg.flags & tcp_flags::FIN != 0 && seg.seq.wrapping_add(seg.payload_len) == ack =>
                    {
                        // It closed right after part of its head: another
                        // member is asked, or the client is reset.
                        return self.fail_before_answer(key, hash, svc, false, now_ms).unwrap_or(Verdict::Consumed);
                    }
                    Resumed::Partial { ack } => {
                        // A piece kept is ACKed; one out of order draws a
                        // duplicate ACK (not limited: only the replacement
                        // knows the exact ACK checked above).
                        let p = *p;
                        self.emit(&p, key, Emit::AckToServer { seq: p.conn.client_next(), ack });
                        return Verdict::Consumed;
                    }
                    Resumed::Refused => {
                        let gone = *p;
                        return self.refuse_resume(&gone, key, hash);
                    }
                }
            } else if !payload.is_empty() && in_order {
                p.answered = true;
                if let Some(pool) = self.requests.as_mut() {
                    failover::track(p, pool, &seg, payload, now_ms);
                }
            }
            if let (true, Some(d)) = (seg.flags & tcp_flags::FIN != 0, p.track.as_mut().filter(|d| !d.resuming())) {
                // The first answer (or a replacement's) closes before the
                // body's end, in the segment that starts it: the client
                // must not see the response end short. The FIN is held;
                // the download moves on once the client has these bytes.
                if !d.complete() {
                    d.server_closed();
                    seg.flags &= !tcp_flags::FIN;
                    if !clear_fin(frame, info) {
                        return Verdict::Drop(DropReason::Malformed);
                    }
                }
            }
        } else if let (Some(l7), State::Spliced, true, Some(mut d)) = (l7, before, p.answered, p.track) {
            // `l7`, a tracked download: its body, and its server's failure.
            p.track = match failover::progress(&mut d, &seg, p.conn.delta, p.conn.client_next(), now_ms) {
                Progress::Body => Some(d),
                Progress::Done => None,
                Progress::Forged => return Verdict::Drop(DropReason::ProxyRefused),
                Progress::HeldFin => {
                    seg.flags &= !tcp_flags::FIN;
                    if !clear_fin(frame, info) {
                        return Verdict::Drop(DropReason::Malformed);
                    }
                    Some(d)
                }
                Progress::Failed { data } => {
                    p.track = Some(d);
                    let old = *p;
                    let sched = &mut self.l7_schedulers[usize::from(svc)];
                    let syn =
                        self.requests.as_mut().and_then(|pool| failover::fail_over(p, l7, sched, shared, pool, now_ms));
                    if let Some(syn) = syn {
                        let new = *p;
                        self.stats.server_redirected(old.server);
                        if seg.flags & tcp_flags::RST == 0 {
                            self.emit(&old, key, Emit::RstToServer { seq: old.conn.client_next() });
                        }
                        self.emit(&new, key, syn);
                        if !data {
                            return Verdict::Consumed;
                        }
                        // Its last bytes pass, its FIN does not.
                        if !clear_fin(frame, info) {
                            return Verdict::Drop(DropReason::Malformed);
                        }
                        return self.splice_to_client(frame, info, svc, &old);
                    }
                    if d.client_is_past_server() {
                        // No other server, and the client is further on than
                        // this one's FIN or RST: it would discard it and wait.
                        let gone = *p;
                        return self.reset_both(&gone, key, hash, seg.flags & tcp_flags::RST == 0);
                    }
                    None // no other server: the failure reaches the client
                }
            };
        }
        let (action, mut emits) = p.conn.on_server(&seg);
        // Looked up again: the borrow above ends at the `&mut self` calls.
        let l7 = self.routing.services[usize::from(svc)].l7.as_ref();
        if let (Some(l7), State::Connecting, State::Closed) = (l7, before, p.conn.state) {
            // `l7`: the server refused the replayed SYN: another one, if any.
            let failed_server = p.server;
            let sched = &mut self.l7_schedulers[usize::from(svc)];
            match redirect(p, l7, sched, shared, self.requests.as_mut(), now_ms) {
                Some(syn) => {
                    emits = [Some(syn), None];
                    self.stats.server_redirected(failed_server);
                    self.stats.l7_redirects.inc();
                }
                None if p.track.is_some_and(|d| d.resuming()) => {
                    let gone = *p;
                    return self.refuse_resume(&gone, key, hash);
                }
                None => {}
            }
        }
        if before == State::Connecting {
            match p.conn.state {
                State::Spliced => {
                    let offered = tcp_header(frame, info).and_then(|h| tcpopt::read(h).ok());
                    (p.shift_to_client, p.shift_to_server) = window_shifts(p, offered.and_then(|o| o.opts.wscale));
                    if let Some(o) = offered.filter(|o| o.mss_present) {
                        p.server_mss = o.opts.mss.clamp(64, PROXY_MSS);
                    }
                    (p.timer_ms, p.request_sends) = (now_ms, 1);
                    self.stats.proxy_joined.inc();
                }
                State::Closed => self.stats.proxy_failed.inc(),
                _ => {}
            }
        }
        // `l7`: the server has the whole request (no more sending it
        // again); once its answer reaches the client, the request cannot
        // go elsewhere any more and its buffer goes back.
        let request_end = p.conn.client_next();
        let acked = seg.flags & tcp_flags::ACK != 0 && (seg.ack.wrapping_sub(request_end) as i32) >= 0;
        p.request_acked |= p.conn.state == State::Spliced && acked;
        let mut action = action;
        if p.track.is_some_and(|d| d.resuming()) && !p.answered && action == Action::Forward {
            // The replacement's segments before its head are the appliance's business.
            action = Action::Consume;
        }
        let mut info = *info;
        if let Some((head_len, from)) = head_to_strip {
            // The replacement's head is not the client's: stripped, and ACKed for it.
            self.stats.l7_resumes.inc();
            self.stats.l7_resume_offset.set(u64::from(from));
            if usize::from(info.payload_len) == head_len {
                emits[1] =
                    Some(Emit::AckToServer { seq: p.conn.client_next(), ack: seg.seq.wrapping_add(seg.payload_len) });
                action = Action::Consume;
            } else if segment::strip_front(frame, head_len).is_ok() {
                info.payload_len -= head_len as u16;
            } else {
                let gone = *p;
                return self.refuse_resume(&gone, key, hash);
            }
        }
        let done =
            if p.answered && p.track.is_none() || p.conn.state != State::Spliced && p.conn.state != State::Connecting {
                p.buf.take()
            } else {
                None
            };
        if let (Some(id), Some(pool)) = (done, self.requests.as_mut()) {
            pool.give(id);
        }
        let p = *p;
        for e in emits.into_iter().flatten() {
            self.emit(&p, key, e);
        }
        match action {
            Action::Forward => self.splice_to_client(frame, &info, svc, &p),
            Action::Consume => Verdict::Consumed,
            Action::Drop(_) => Verdict::Drop(DropReason::ProxyRefused),
        }
    }

    /// `l7`, before any of its answer reached the client: the bound server
    /// failed (it closed, reset, or answered with an error status). The
    /// request goes to another member (the old one reset unless it reset
    /// first); with none left, a download's resume is refused. None: no
    /// member is left and nothing is being resumed (the failure reaches
    /// the client as it is).
    fn fail_before_answer(
        &mut self,
        key: &FlowKey,
        hash: u64,
        svc: u16,
        server_reset: bool,
        now_ms: u32,
    ) -> Option<Verdict> {
        let shared = self.shared;
        let routing = &*self.routing;
        let l7 = routing.services[usize::from(svc)].l7.as_ref()?;
        let p = self.proxied.as_mut()?.get_mut(key.pack(), hash, now_ms)?;
        let old = *p;
        let sched = &mut self.l7_schedulers[usize::from(svc)];
        match redirect(p, l7, sched, shared, self.requests.as_mut(), now_ms) {
            Some(syn) => {
                let new = *p;
                self.stats.server_redirected(old.server);
                self.stats.l7_redirects.inc();
                if !server_reset {
                    self.emit(&old, key, Emit::RstToServer { seq: old.conn.client_next() });
                }
                self.emit(&new, key, syn);
                Some(Verdict::Consumed)
            }
            // No other server for the rest of a download.
            None if old.track.is_some_and(|d| d.resuming()) => Some(self.refuse_resume(&old, key, hash)),
            None => None,
        }
    }

    /// A download's resume failed: no server is left to ask, or the one
    /// asked did not answer its Range request with exactly the rest of the
    /// same version. Both ends are reset (the client must not get bytes
    /// of another version, nor wait for ever) and the connection goes.
    fn refuse_resume(&mut self, p: &Proxied, key: &FlowKey, hash: u64) -> Verdict {
        self.stats.l7_resume_refused.inc();
        self.reset_both(p, key, hash, true)
    }

    /// Resets a connection that cannot go on, the client at its next byte
    /// (and the server unless it reset first), and removes it.
    fn reset_both(&mut self, p: &Proxied, key: &FlowKey, hash: u64, server_too: bool) -> Verdict {
        self.stats.proxy_failed.inc();
        if server_too {
            self.emit(p, key, Emit::RstToServer { seq: p.conn.client_next() });
        }
        self.emit(p, key, Emit::RstToClient { seq: p.conn.cookie.wrapping_add(1) });
        if let Some(gone) = self.proxied.as_mut().and_then(|t| t.remove(key.pack(), hash)) {
            self.release(&gone);
        }
        Verdict::Consumed
    }

    /// A client's segment of a joined connection, on its way to the server.
    fn splice_to_server(&self, frame: &mut [u8], info: &L4Info, p: Splice) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let srv = &routing.servers[usize::from(p.server)];
        let nb = &routing.neighbors[usize::from(srv.neighbor)];
        let Some(server_mac) = nb.mac() else {
            return Verdict::Drop(DropReason::NoNeighbor);
        };
        let tcp = usize::from(info.l4_off);
        let translated = frame
            .get_mut(tcp..)
            .map(|t| splice::client_to_server(t, p.delta).and_then(|()| splice::rescale_window(t, p.shift)));
        if !matches!(translated, Some(Ok(()))) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let egress_mac = shared.ports[usize::from(nb.port)].mac;
        packet::rewrite_nat_forward(frame, info, srv.ip, srv.port, server_mac, egress_mac);
        Verdict::Tx(nb.port)
    }

    /// A server's segment of a joined connection, on its way to the client.
    fn splice_to_client(&self, frame: &mut [u8], info: &L4Info, svc: u16, p: &Proxied) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        let Some(out) = shared.ports.get(usize::from(p.client_port)) else {
            return Verdict::Drop(DropReason::NoNeighbor);
        };
        let tcp = usize::from(info.l4_off);
        let translated = frame.get_mut(tcp..).map(|t| {
            splice::server_to_client(t, p.conn.delta).and_then(|()| splice::rescale_window(t, p.shift_to_client))
        });
        if !matches!(translated, Some(Ok(()))) {
            return Verdict::Drop(DropReason::Malformed);
        }
        packet::rewrite_nat_reply(frame, info, service.vip, service.port, p.client_mac, out.mac);
        Verdict::Tx(p.client_port)
    }

    /// Wall-clock milliseconds now (cookies are cut in wall-clock slices,
    /// so that siblings and restarts agree on them).
    #[inline]
    fn wall_ms(&self, now_ms: u32) -> u64 {
        self.shared.start_wall_ms + u64::from(now_ms)
    }
}

/// The window rescaling of a joined connection: (server → client, client →
/// server), each the sender's scale minus the receiver's. `server_wscale`
/// is what the server's SYN-ACK offered.
fn window_shifts(p: &Proxied, server_wscale: Option<u8>) -> (i8, i8) {
    let Some(client_wscale) = p.conn.opts.wscale else {
        return (0, 0); // nobody scales
    };
    let ours = p.conn.our_wscale.unwrap_or(0) as i8;
    match server_wscale {
        // Both scale; the server reads the client's windows with the
        // client's own scale (the replayed SYN offered it).
        Some(s) => (s.min(14) as i8 - ours, 0),
        // The server declined: its windows are unscaled, and it reads the
        // client's unscaled.
        None => (-ours, client_wscale as i8),
    }
}

/// `window` as a receiver with `shift` less scale reads it (at most 65,535).
fn rescaled(window: u16, shift: i8) -> u16 {
    let w = u64::from(window);
    let v = if shift >= 0 { w << shift.min(30) } else { w >> (-shift).min(30) };
    v.min(0xffff) as u16
}

/// The TCP header of `info`'s segment, options included.
fn tcp_header<'f>(frame: &'f [u8], info: &L4Info) -> Option<&'f [u8]> {
    let t = frame.get(usize::from(info.l4_off)..)?;
    let len = usize::from(t.get(12)? >> 4) * 4;
    t.get(..len).filter(|_| len >= 20)
}
