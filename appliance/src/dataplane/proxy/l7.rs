//! `l7` connections before the join: the request gathered and ACKed by
//! the appliance, its head parsed, the group chosen by the rules and the
//! server by the group's round robin (or a race of several); and the
//! choice of another server when one fails before answering.

use super::{failover, tcp_header, Proxied, State};
use crate::dataplane::routing::L7Rt;
use crate::dataplane::shared::Shared;
use crate::dataplane::{Verdict, Worker};
use crate::l7::conn::{Action, Emit, Seg};
use crate::l7::request::{self, Gathered, Head, RequestPool, HEAD_CAP};
use crate::packet::{tcp_flags, L4Info};
use crate::sched::wrr::SmoothWrr;
use crate::session::FlowKey;
use crate::stats::DropReason;

impl Worker<'_> {
    /// `l7`, before the join: a client segment's bytes go into the
    /// connection's request buffer and are ACKed by the appliance; once the
    /// head is complete, the rules and the group's scheduler pick the
    /// server and the client's SYN is replayed to it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gather(
        &mut self,
        frame: &[u8],
        info: &L4Info,
        seg: &Seg,
        svc: u16,
        key: &FlowKey,
        hash: u64,
        now_ms: u32,
    ) -> Verdict {
        let shared = self.shared;
        let routing = &*self.routing;
        let service = &routing.services[usize::from(svc)];
        let (Some(table), Some(pool), Some(l7)) = (self.proxied.as_mut(), self.requests.as_mut(), &service.l7) else {
            return Verdict::Drop(DropReason::NoSession);
        };
        let Some(p) = table.get_mut(key.pack(), hash, now_ms) else {
            return Verdict::Drop(DropReason::NoSession);
        };
        let mut out: [Option<Emit>; 2] = [None, None];
        let mut verdict = Verdict::Consumed;
        let mut end = false;
        let reset_client = Emit::RstToClient { seq: p.conn.cookie.wrapping_add(1) };
        let payload_at = usize::from(info.l4_off) + tcp_header(frame, info).map_or(20, <[u8]>::len);
        let payload = frame.get(payload_at..payload_at + usize::from(info.payload_len)).unwrap_or(&[]);
        if seg.flags & tcp_flags::RST != 0 {
            let (action, emit) = p.conn.on_client(seg);
            out[0] = emit;
            end = p.conn.state == State::Closed;
            if let Action::Drop(_) = action {
                verdict = Verdict::Drop(DropReason::ProxyRefused);
            }
        } else if payload.is_empty() {
            // Pure ACKs and window probes change nothing.
        } else if let Some(id) = p.buf.or_else(|| pool.take(p.conn.client_isn.wrapping_add(1))) {
            p.buf = Some(id);
            let buf = pool.get_mut(id);
            let buffering = p.conn.state == State::Buffering;
            match buf.gather(seg.seq, payload) {
                // Over 16 KiB without a complete head: refused, the client reset.
                Gathered::TooLong if buffering => {
                    (out[0], end, verdict) = (Some(reset_client), true, Verdict::Drop(DropReason::L7Request));
                }
                // Past the head while the server is being opened: not
                // ACKed; it passes after the join.
                Gathered::TooLong => {}
                Gathered::Took(_) | Gathered::Duplicate | Gathered::Gap => {
                    let room = (HEAD_CAP - buf.bytes().len()) >> p.conn.our_wscale.unwrap_or(0);
                    let ack = Emit::WindowToClient {
                        seq: p.conn.cookie.wrapping_add(1),
                        ack: buf.next_seq(),
                        window: u16::try_from(room).unwrap_or(u16::MAX),
                    };
                    out[0] = Some(ack);
                    let gathered = buf.bytes().len() as u32;
                    if !buffering {
                        p.conn.request_len = gathered; // sent with the request at the join
                    } else {
                        match request::parse_head(buf.bytes()) {
                            Head::Partial => {}
                            Head::Invalid => {
                                out = [Some(reset_client), None];
                                (end, verdict) = (true, Verdict::Drop(DropReason::L7Request));
                            }
                            Head::Complete(req) => {
                                let group = usize::from(l7.rules.choose(&req));
                                let members = &l7.groups[group];
                                let weight = |i: usize| shared.server_weight(members[i]);
                                match self.l7_schedulers[usize::from(svc)][group].pick(weight) {
                                    Some(i) => {
                                        p.server = members[i];
                                        (p.group, p.tried) = (group as u8, 1 << i.min(63));
                                        out[1] = Some(p.conn.bind(gathered, now_ms));
                                        // `connect: race`: more servers get the SYN; the first to answer binds.
                                        let sched = &mut self.l7_schedulers[usize::from(svc)][group];
                                        (p.race[0], p.racing) = (p.server, 1);
                                        while p.racing < l7.redirect.fanout.min(4) {
                                            let tried = p.tried;
                                            let weight = |j: usize| {
                                                if tried & (1 << j.min(63)) != 0 {
                                                    0
                                                } else {
                                                    shared.server_weight(members[j])
                                                }
                                            };
                                            let Some(j) = sched.pick(weight) else { break };
                                            p.tried |= 1 << j.min(63);
                                            p.race[usize::from(p.racing)] = members[j];
                                            p.racing += 1;
                                        }
                                        if p.racing == 1 {
                                            p.racing = 0; // nobody to race with
                                            self.stats.server_new_session(p.server);
                                        }
                                    }
                                    None => {
                                        out = [Some(reset_client), None];
                                        (end, verdict) = (true, Verdict::Drop(DropReason::NoServer));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        } else {
            // No buffer free: not ACKed, so the client sends it again.
            verdict = Verdict::Drop(DropReason::L7NoBuffer);
        }
        // A FIN is never ACKed before the join (the client sends it again,
        // and then it passes); a client that closes before its request's
        // head is complete is reset, its buffer freed at once.
        if seg.flags & tcp_flags::FIN != 0 && p.conn.state == State::Buffering && !end {
            (out, end) = ([Some(reset_client), None], true);
        }
        let p = *p;
        if end {
            if let Some(gone) = table.remove(key.pack(), hash) {
                self.release(&gone);
            }
        }
        for e in out.into_iter().flatten() {
            self.emit(&p, key, e);
        }
        verdict
    }
}

/// `l7`: another member of the connection's group it has not tried yet,
/// by the group's weighted round robin (transparent error
/// redirect). None: its retries are used up, or every other member was
/// tried or is down.
pub(super) fn next_server(p: &mut Proxied, l7: &L7Rt, schedulers: &mut [SmoothWrr], shared: &Shared) -> Option<u16> {
    if p.redirects >= l7.redirect.retries {
        return None;
    }
    let members = l7.groups.get(usize::from(p.group))?;
    // Its server left its group (a reload changed the groups since it was
    // bound): `group` and `tried` name positions of another list now.
    if !members.contains(&p.server) {
        return None;
    }
    let tried = p.tried;
    let weight = |i: usize| if tried & (1 << i.min(63)) != 0 { 0 } else { shared.server_weight(members[i]) };
    let i = schedulers.get_mut(usize::from(p.group))?.pick(weight)?;
    p.tried |= 1 << i.min(63);
    p.redirects += 1;
    Some(members[i])
}

/// `l7`: the bound server failed before any of its answer reached the
/// client (it refused the SYN, stayed silent, closed, or answered with an
/// error status), and the request goes to another member of the group
/// (transparent error redirect; a download's replacement is
/// asked for the rest again, with a deadline of its own). Gives the SYN
/// for the new one; None when no member is left.
pub(super) fn redirect(
    p: &mut Proxied,
    l7: &L7Rt,
    schedulers: &mut [SmoothWrr],
    shared: &Shared,
    pool: Option<&mut RequestPool>,
    now_ms: u32,
) -> Option<Emit> {
    let next = next_server(p, l7, schedulers, shared)?;
    (p.server, p.racing) = (next, 0);
    p.acked_server_ms = None; // the new server's challenge ACKs are its own
    (p.request_acked, p.request_sends) = (false, 0);
    if let Some(pool) = pool {
        failover::restart_resume(p, pool, now_ms);
    }
    Some(p.conn.rebind(now_ms))
}

/// The status of an HTTP/1.x response whose first bytes `payload` holds
/// ("HTTP/1.1 503 …"); None when they are not a status line's start.
pub(super) fn status_of(payload: &[u8]) -> Option<u16> {
    let line = payload.get(..12)?;
    if !line.starts_with(b"HTTP/1.") || line[8] != b' ' || !line[9..12].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(line[9..12].iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}
