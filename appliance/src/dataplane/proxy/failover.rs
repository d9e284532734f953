//! `l7` mid-download failover (seed 002 claim 9): a download whose server
//! dies halfway is carried on by another server of its group, and the
//! client sees one unbroken response.
//!
//! A response can be resumed when it answers a GET (with no body) with
//! 200, a Content-Length, a strong ETag or a Last-Modified date, and
//! `Accept-Ranges: bytes`: the appliance then keeps the request and the
//! validator (`Download`) and counts the body bytes the client ACKs.
//! The server has failed when it resets the connection at its next
//! sequence number, closes it before the body's end (what `kill -9` of
//! the server process gives: its kernel FINs the socket), or sends
//! nothing for `STALL_MS` while the client has everything sent so far
//! (and ACKed its last byte at least as long ago).
//! Then another member of the group gets the client's SYN again (an ISN
//! placed so that its next byte is the client's next) and the request
//! for the rest (`Range: bytes=N-`, `If-Range: validator`, N the body
//! bytes the client ACKed). Its answer must be 206 for exactly that range
//! with the same validator: its head is stripped, its body joins the
//! client's stream at byte N with a new sequence delta. Anything else
//! resets the client: never splice in bytes of another version.

use super::l7::next_server;
use super::Proxied;
use crate::dataplane::shared::{L7Rt, Shared};
use crate::l7::conn::{Emit, Seg, FIN, RST};
use crate::l7::request::{self, Head, RequestPool};
use crate::l7::response::{self, ResponseHead, Validator};
use crate::sched::wrr::SmoothWrr;

/// No new byte from the server for this long, while the client has all
/// it was sent, is a failure.
pub const STALL_MS: u32 = 2_000;

/// How far past the server's next byte a segment may start and still
/// count (a TCP receiver accepts no more than its window; Linux's largest
/// by default is 6 MiB).
const MAX_AHEAD: u32 = 8 << 20;

/// A download that can be resumed on another server of its group.
#[derive(Clone, Copy, Debug, Default)]
pub struct Download {
    /// The client-facing sequence number of the body's first byte, and
    /// the body's length.
    body_start: u32,
    body_len: u32,
    /// The serving server's next sequence number (its own space).
    server_next: u32,
    /// The client-facing end of what was sent to the client, and the
    /// highest ACK the client sent.
    sent_to_client: u32,
    client_acked: u32,
    /// When the server last sent a new byte, or the client ACKed one.
    pub progress_ms: u32,
    /// The request's length at the buffer's start; the validator is the
    /// buffer's tail (`etag`: an ETag, else a Last-Modified date).
    request_len: u16,
    etag: bool,
    /// Members of the group (bit i: member i) that failed during it.
    failed: u64,
    /// A resume is under way, from this body byte.
    pub resume_from: Option<u32>,
    /// The body byte the last resume started at.
    pub resumed_at: Option<u32>,
}

/// `a` comes after `b`, modulo 2^32.
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Download {
    /// The client ACKed up to `ack`. New ACKs count as progress too: a
    /// server held back by the client's window has not stalled. Returns
    /// the ACK the server may see: after a resume the client already has
    /// bytes the new server has not sent yet (the old one's last, in
    /// flight when it failed), and an ACK of unsent data would be
    /// discarded by the server's TCP, so it is held at what was sent.
    pub fn client_ack(&mut self, ack: u32, now_ms: u32) -> Option<u32> {
        if after(ack, self.client_acked) {
            self.client_acked = ack;
            self.progress_ms = now_ms;
        }
        after(ack, self.sent_to_client).then_some(self.sent_to_client)
    }

    /// Whether the client has ACKed all it was sent.
    pub fn client_has_all(&self) -> bool {
        !after(self.sent_to_client, self.client_acked)
    }

    /// The sequence number a RST to the client must carry (its next).
    pub fn client_rst_seq(&self) -> u32 {
        self.sent_to_client
    }
}

/// What a server segment means to a tracked download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// More of the body (or nothing new).
    Body,
    /// The body is complete: nothing to track any more.
    Done,
    /// A RST off the server's next byte: not the server's TCP (the
    /// appliance has seen every byte it sent), so a forgery; dropped.
    Blind,
    /// The server failed: a RST at its next byte, or a FIN before the
    /// body's end (`data`: the segment carries bytes to pass on first).
    Failed { data: bool },
}

/// The first bytes of a response reached the client (`payload`, at the
/// server's ISN + 1, already translated by `delta`): if the response can
/// be resumed, the connection starts tracking it. `p.buf` holds the
/// request.
pub fn track(p: &mut Proxied, pool: &mut RequestPool, seg: &Seg, payload: &[u8], now_ms: u32) {
    let (Some(id), false) = (p.buf, p.client_moved_on) else { return };
    let buf = pool.get_mut(id);
    let request_len = p.conn.request_len as usize;
    let Some(request) = buf.bytes().get(..request_len) else { return };
    // A GET and nothing else (the request could not be sent again as it is otherwise).
    match request::parse_head(request) {
        Head::Complete(req) if req.method == "GET" && req.head_len == request_len => {}
        _ => return,
    }
    let ResponseHead::Complete(resp) = response::parse(payload) else { return };
    let (Some(len), Some(validator)) = (resp.content_length, resp.validator) else { return };
    let body_here = (payload.len() - resp.head_len) as u64;
    if !resp.resumable("GET") || len >= 1 << 31 || body_here >= len || !buf.keep_tail(validator.value()) {
        return;
    }
    let delta = p.conn.delta;
    let end = seg.seq.wrapping_add(seg.payload_len);
    p.track = Some(Download {
        body_start: seg.seq.wrapping_add(resp.head_len as u32).wrapping_add(delta),
        body_len: len as u32,
        server_next: end,
        sent_to_client: end.wrapping_add(delta),
        client_acked: p.conn.cookie.wrapping_add(1),
        progress_ms: now_ms,
        request_len: request_len as u16,
        etag: matches!(validator, Validator::ETag(_)),
        failed: 0,
        resume_from: None,
        resumed_at: None,
    });
    p.request_at = 0;
}

/// A segment of the serving server while its body is tracked.
pub fn progress(d: &mut Download, seg: &Seg, delta: u32, now_ms: u32) -> Progress {
    if seg.flags & RST != 0 {
        return if seg.seq == d.server_next { Progress::Failed { data: false } } else { Progress::Blind };
    }
    // The server's next byte is the end of the furthest segment seen (a
    // segment lost on the way may come again behind it), within what a
    // receive window allows: a forged segment further ahead moves nothing.
    let end = seg.seq.wrapping_add(seg.payload_len);
    let within = end.wrapping_sub(d.server_next) <= MAX_AHEAD;
    if within && after(end, d.server_next) {
        d.server_next = end;
        d.sent_to_client = end.wrapping_add(delta);
        d.progress_ms = now_ms;
    }
    let body_end = d.body_start.wrapping_add(d.body_len);
    let complete = !after(body_end, d.sent_to_client);
    if seg.flags & FIN != 0 && end == d.server_next && !complete {
        return Progress::Failed { data: seg.payload_len > 0 };
    }
    if complete {
        Progress::Done
    } else {
        Progress::Body
    }
}

/// The serving server failed: another member of the group is asked for
/// the rest. Gives the SYN to send it (`p` now names it, its request is
/// the Range request); None when no member is left or the client has not
/// ACKed the response's head (the caller lets the failure reach the
/// client).
pub fn fail_over(
    p: &mut Proxied,
    l7: &L7Rt,
    schedulers: &mut [SmoothWrr],
    shared: &Shared,
    pool: &mut RequestPool,
    now_ms: u32,
) -> Option<Emit> {
    let mut d = p.track?;
    let from = d.client_acked.wrapping_sub(d.body_start);
    if (from as i32) < 0 || from >= d.body_len {
        return None; // the head is not ACKed yet, or the body is all there
    }
    let members = l7.groups.get(usize::from(p.group))?;
    if let Some(i) = members.iter().position(|&s| s == p.server) {
        d.failed |= 1 << i.min(63);
    }
    // Every member that has not failed this download may take it.
    let (tried, redirects) = (p.tried, p.redirects);
    (p.tried, p.redirects) = (d.failed, 0);
    let Some(next) = next_server(p, l7, schedulers, shared) else {
        (p.tried, p.redirects) = (tried, redirects);
        return None;
    };
    let buf = pool.get_mut(p.buf?);
    let range_len = buf.write_after(usize::from(d.request_len), |request, tail, out| {
        let validator = if d.etag { Validator::ETag(tail) } else { Validator::LastModified(tail) };
        response::range_request(request, u64::from(from), &validator, out)
    })?;
    // The Range request ends where the client's next byte begins.
    let client_next = p.conn.client_next();
    p.conn.client_isn = client_next.wrapping_sub(1).wrapping_sub(range_len as u32);
    p.conn.request_len = range_len as u32;
    p.request_at = d.request_len;
    d.resume_from = Some(from);
    p.track = Some(d);
    (p.server, p.racing, p.answered, p.request_acked, p.request_sends) = (next, 0, false, false, 0);
    Some(p.conn.rebind(now_ms))
}

/// The first bytes of the replacement's answer (`payload`, at its ISN +
/// 1): if it is 206 for exactly the rest with the same validator, gives
/// the length of its head, and sets the delta that puts its body's first
/// byte at the client's byte N. None: it cannot carry on the download.
pub fn resumed(p: &mut Proxied, pool: &RequestPool, seg: &Seg, payload: &[u8], now_ms: u32) -> Option<usize> {
    let mut d = p.track?;
    let from = d.resume_from?;
    let tail = pool.get(p.buf?).tail();
    let validator = if d.etag { Validator::ETag(tail) } else { Validator::LastModified(tail) };
    let ResponseHead::Complete(resp) = response::parse(payload) else { return None };
    if !resp.resumes(u64::from(from), u64::from(d.body_len), &validator) {
        return None;
    }
    let head_len = resp.head_len;
    let body_at_server = seg.seq.wrapping_add(head_len as u32);
    p.conn.delta = d.body_start.wrapping_add(from).wrapping_sub(body_at_server);
    d.server_next = seg.seq.wrapping_add(seg.payload_len);
    d.sent_to_client = d.server_next.wrapping_add(p.conn.delta);
    d.progress_ms = now_ms;
    (d.resume_from, d.resumed_at) = (None, Some(from));
    p.track = Some(d);
    Some(head_len)
}
