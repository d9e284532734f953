//! `l7` mid-download failover: a download whose server
//! dies halfway is carried on by another server of its group, and the
//! client sees one unbroken response.
//!
//! A response can be resumed when it answers a GET (with no body) with
//! 200, a Content-Length, no transfer coding, a validator If-Range may
//! name (a strong ETag, or a strong Last-Modified date when there is no
//! ETag) and `Accept-Ranges: bytes`: the appliance then keeps the request
//! and the validator (`Download`, in the connection's request buffer; a
//! quarter of the pool is never given to downloads) and counts the body
//! bytes the client ACKs.
//! The server has failed when it resets the connection at its next
//! sequence number, closes it before the body's end (what `kill -9` of
//! the server process gives: its kernel FINs the socket), or sends
//! nothing for `STALL_MS` while the client has everything sent so far,
//! has room for more, and ACKed its last byte at least as long ago. A FIN
//! that comes in the segment starting the body is held from the client
//! (it must not see the response end short), and the download moves as
//! soon as the client has the bytes before it. While
//! a download is tracked the client sends nothing but ACKs, so each of
//! its segments is at its next byte and each of the server's ACKs exactly
//! the client's request: a segment that is not is a forgery (or a
//! keep-alive probe) and moves nothing.
//! Then another member of the group gets the client's SYN again (an ISN
//! placed so that its next byte is the client's next) and the request
//! for the rest (`Range: bytes=N-`, `If-Range: validator`, N the body
//! bytes the client ACKed). Its answer must be 206 for exactly that range
//! with the same validator, within `RESUME_TIMEOUT_MS`: its head (whole,
//! or gathered from several segments) is stripped, its body joins the
//! client's stream at byte N with a new sequence delta. A replacement
//! that closes before its head is complete is replaced in turn (within
//! the service's retries). Anything else resets the client at its next
//! byte: never splice in bytes of another version, and never leave the
//! client waiting (nor let a server's last FIN fall behind what the
//! client already has).

use super::l7::next_server;
use super::Proxied;
use crate::dataplane::routing::L7Rt;
use crate::dataplane::shared::Shared;
use crate::l7::conn::{Emit, Seg, ACK, FIN, RST};
use crate::l7::request::{self, Head, RequestPool};
use crate::l7::response::{self, ResponseHead, Validator};
use crate::sched::wrr::SmoothWrr;

/// No new byte from the server for this long, while the client has all
/// it was sent and room for more, is a failure.
pub const STALL_MS: u32 = 2_000;

/// A replacement has this long, from its SYN, to answer the Range
/// request; then the client is reset (it would wait for ever otherwise).
pub const RESUME_TIMEOUT_MS: u32 = 5_000;

/// How far past the server's next byte a segment may start and still
/// count (a TCP receiver accepts no more than its window; Linux's largest
/// by default is 6 MiB).
const MAX_AHEAD: u32 = 8 << 20;

/// A client window smaller than a segment holds the server back: no stall
/// is counted while the client's window is below this.
const MIN_OPEN_WINDOW: u32 = 1_460;

/// A download that can be resumed on another server of its group.
#[derive(Clone, Copy, Debug, Default)]
pub struct Download {
    /// The client-facing sequence number of the body's first byte, and
    /// the body's length.
    body_start: u32,
    body_len: u32,
    /// The serving server's next sequence number (its own space).
    server_next: u32,
    /// The client-facing end of what the serving server sent, and the
    /// furthest end any server of the download sent (a resume starts
    /// before it: the client may hold the old server's last bytes).
    sent_to_client: u32,
    furthest_to_client: u32,
    /// The highest ACK the client sent, and its last window in bytes.
    client_acked: u32,
    client_window: u32,
    /// When the server last sent a new byte, or the client ACKed one (or
    /// opened its window again).
    progress_ms: u32,
    /// The request's length at the buffer's start; the validator is the
    /// buffer's tail (`etag`: an ETag, else a Last-Modified date).
    request_len: u16,
    etag: bool,
    /// Members of the group (bit i: member i) that failed during it.
    failed: u64,
    /// A resume under way.
    resuming: Option<Resuming>,
    /// The serving server closed before the body's end in the segment
    /// that started it (its FIN was held from the client): it will send
    /// nothing more.
    closed: bool,
}

/// A resume under way: from this body byte, asked for at `since_ms`;
/// `head_seen` bytes of the replacement's head are kept so far.
#[derive(Clone, Copy, Debug)]
struct Resuming {
    from: u32,
    since_ms: u32,
    head_seen: u16,
}

/// `a` comes after `b`, modulo 2^32.
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Download {
    /// The client ACKed up to `ack` with `window` bytes of room. New ACKs
    /// count as progress, and so does a window opening again: a server
    /// held back by the client has not stalled. Returns the ACK the
    /// server may see: after a resume the client already has bytes the
    /// new server has not sent yet (the old one's last, in flight when it
    /// failed), and an ACK of unsent data would be discarded by the
    /// server's TCP, so it is held at what was sent. None while resuming
    /// (the client's segments wait) or when the ACK passes as it is.
    /// The caller has checked the segment is at the client's next byte;
    /// an ACK of bytes no server sent is not its TCP's, and one behind its
    /// last is old: neither counts.
    pub fn client_ack(&mut self, ack: u32, window: u32, now_ms: u32) -> Option<u32> {
        if after(ack, self.furthest_to_client) || after(self.client_acked, ack) {
            return None;
        }
        if after(ack, self.client_acked) {
            self.client_acked = ack;
            self.progress_ms = now_ms;
        }
        if self.client_window < MIN_OPEN_WINDOW && window >= MIN_OPEN_WINDOW {
            self.progress_ms = now_ms;
        }
        self.client_window = window;
        if self.resuming.is_some() {
            return None;
        }
        after(ack, self.sent_to_client).then_some(self.sent_to_client)
    }

    /// Whether another server is being asked for the rest.
    pub fn resuming(&self) -> bool {
        self.resuming.is_some()
    }

    /// How many bytes of the replacement's head were kept so far (0 when
    /// not resuming): its next sequence number is its ISN + 1 + these.
    pub fn head_seen(&self) -> u32 {
        self.resuming.map_or(0, |r| u32::from(r.head_seen))
    }

    /// The server has sent nothing new for `STALL_MS` though the client
    /// has all it was sent and room for more (or it closed, and the client
    /// has all it was sent).
    pub fn stalled(&self, now_ms: u32) -> bool {
        let silent = self.client_window >= MIN_OPEN_WINDOW && now_ms.wrapping_sub(self.progress_ms) > STALL_MS;
        self.resuming.is_none() && !after(self.sent_to_client, self.client_acked) && (self.closed || silent)
    }

    /// Every body byte was sent to the client.
    pub fn complete(&self) -> bool {
        !after(self.body_start.wrapping_add(self.body_len), self.sent_to_client)
    }

    /// The serving server closed early; its FIN was held from the client.
    pub fn server_closed(&mut self) {
        self.closed = true;
    }

    /// The serving server closed early (see `server_closed`): with nobody
    /// to take over, the client must learn the response was cut short.
    pub fn held_fin(&self) -> bool {
        self.closed
    }

    /// The replacement had `RESUME_TIMEOUT_MS` to answer, and did not.
    pub fn resume_expired(&self, now_ms: u32) -> bool {
        self.resuming.is_some_and(|r| now_ms.wrapping_sub(r.since_ms) > RESUME_TIMEOUT_MS)
    }

    /// The client has bytes past what the serving server sent (the
    /// previous server's last ones): that server's FIN or RST would land
    /// behind the client's next byte.
    pub fn client_is_past_server(&self) -> bool {
        after(self.furthest_to_client, self.sent_to_client)
    }

    /// The sequence numbers a RST to the client is sent at: its next
    /// byte is the end of what it was sent, or its last ACK when some of
    /// that was lost on the way (a RST off its next byte only draws an
    /// ACK from it, RFC 5961).
    pub fn client_rst_seqs(&self) -> (u32, Option<u32>) {
        let acked = (self.client_acked != self.furthest_to_client).then_some(self.client_acked);
        (self.furthest_to_client, acked)
    }
}

/// What a server segment means to a tracked download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// More of the body (or nothing new).
    Body,
    /// The body is complete: nothing to track any more.
    Done,
    /// Not the server's TCP: a RST off its next byte (the appliance has
    /// seen every byte it sent), or a segment that does not ACK exactly
    /// the client's request (the client sends nothing else while a
    /// download is tracked). A forgery; dropped.
    Forged,
    /// The server failed: a RST at its next byte, or a FIN before the
    /// body's end (`data`: the segment carries bytes to pass on first).
    Failed { data: bool },
    /// The server's held FIN (see `Download::server_closed`) again: its
    /// bytes pass, the FIN is held again.
    HeldFin,
}

/// The first bytes of a response reached the client (`payload`, at the
/// server's ISN + 1, already translated by `delta`): if the response can
/// be resumed, the connection starts tracking it. `p.buf` holds the
/// request.
pub fn track(p: &mut Proxied, pool: &mut RequestPool, seg: &Seg, payload: &[u8], now_ms: u32) {
    let (Some(id), false) = (p.buf, p.client_moved_on) else { return };
    // A tracked download keeps its request buffer to its end: a quarter
    // of the pool stays for new requests, however many downloads run.
    if pool.available() <= pool.capacity() / 4 {
        return;
    }
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
        furthest_to_client: end.wrapping_add(delta),
        client_acked: p.conn.cookie.wrapping_add(1),
        client_window: u32::MAX,
        progress_ms: now_ms,
        request_len: request_len as u16,
        etag: matches!(validator, Validator::ETag(_)),
        failed: 0,
        resuming: None,
        closed: false,
    });
    p.request_at = 0;
}

/// A segment of the serving server while its body is tracked
/// (`client_next`: the client's next sequence number, which every segment
/// of the server ACKs).
pub fn progress(d: &mut Download, seg: &Seg, delta: u32, client_next: u32, now_ms: u32) -> Progress {
    if seg.flags & RST != 0 {
        return if seg.seq == d.server_next { Progress::Failed { data: false } } else { Progress::Forged };
    }
    if seg.flags & ACK == 0 || seg.ack != client_next {
        return Progress::Forged;
    }
    // The server's next byte is the end of the furthest segment seen (a
    // segment lost on the way may come again behind it), within what a
    // receive window allows.
    let end = seg.seq.wrapping_add(seg.payload_len);
    let within = end.wrapping_sub(d.server_next) <= MAX_AHEAD;
    if within && after(end, d.server_next) {
        d.server_next = end;
        d.sent_to_client = end.wrapping_add(delta);
        if after(d.sent_to_client, d.furthest_to_client) {
            d.furthest_to_client = d.sent_to_client;
        }
        d.progress_ms = now_ms;
    }
    let body_end = d.body_start.wrapping_add(d.body_len);
    let complete = !after(body_end, d.sent_to_client);
    if seg.flags & FIN != 0 && end == d.server_next && !complete {
        // Sent again (the client has not ACKed it yet) when held already:
        // the sweep moves the download once the client has it all.
        return if d.closed { Progress::HeldFin } else { Progress::Failed { data: seg.payload_len > 0 } };
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
    // Every member that has not failed this download may take it; the
    // Range request is a request of its own, with retries of its own.
    let (tried, redirects) = (p.tried, p.redirects);
    (p.tried, p.redirects) = (d.failed, 0);
    let Some(next) = next_server(p, l7, schedulers, shared) else {
        (p.tried, p.redirects) = (tried, redirects);
        return None;
    };
    p.redirects = 0;
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
    d.resuming = Some(Resuming { from, since_ms: now_ms, head_seen: 0 });
    d.closed = false;
    p.track = Some(d);
    (p.server, p.racing, p.answered, p.request_acked, p.request_sends) = (next, 0, false, false, 0);
    p.acked_server_ms = None; // the new server's challenge ACKs are its own
    Some(p.conn.rebind(now_ms))
}

/// The replacement failed before its head was complete and another
/// member is asked instead: what was kept of the failed one's head goes,
/// and the new one has its own `RESUME_TIMEOUT_MS`.
pub fn restart_resume(p: &mut Proxied, pool: &mut RequestPool, now_ms: u32) {
    let Some(mut d) = p.track else { return };
    let Some(r) = d.resuming.as_mut() else { return };
    (r.head_seen, r.since_ms) = (0, now_ms);
    if let Some(id) = p.buf {
        pool.get_mut(id).truncate(usize::from(p.request_at) + p.conn.request_len as usize);
    }
    p.track = Some(d);
}

/// What the replacement's answer to the Range request did so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// Its head is complete and resumes the download at body byte `from`:
    /// the segment's first `strip` bytes are head, the rest is body.
    Head { strip: usize, from: u32 },
    /// Part of its head (kept), or a segment out of order: consumed, and
    /// the server's bytes to `ack` ACKed for the client.
    Partial { ack: u32 },
    /// Not 206 for exactly the rest of the same version, or a head too
    /// long: the download cannot go on.
    Refused,
}

/// A head longer than this is refused (the buffer also holds the requests).
const MAX_RESUME_HEAD: usize = 8 * 1024;

/// A segment of the replacement before its head is complete (`payload`:
/// its bytes). The head is parsed where it stands when it comes whole in
/// the first segment, else gathered in the request buffer after the Range
/// request. Once complete, it must be 206 for exactly the rest with the
/// same validator; then the delta is set that puts its body's first byte
/// at the client's byte N.
pub fn resumed(p: &mut Proxied, pool: &mut RequestPool, seg: &Seg, payload: &[u8], now_ms: u32) -> Resumed {
    let (Some(mut d), Some(id)) = (p.track, p.buf) else { return Resumed::Refused };
    let Some(mut r) = d.resuming else { return Resumed::Refused };
    let start = p.conn.server_isn.wrapping_add(1);
    let expected = start.wrapping_add(u32::from(r.head_seen));
    // A segment may start before what was kept (sent again, with more).
    let skip = expected.wrapping_sub(seg.seq) as usize;
    let Some(new) = payload.get(skip..).filter(|new| !new.is_empty()) else {
        return Resumed::Partial { ack: expected };
    };
    let buf = pool.get_mut(id);
    let head_at = usize::from(p.request_at) + p.conn.request_len as usize;
    let parsed = if r.head_seen == 0 {
        response::parse(new)
    } else if buf.push(new) {
        response::parse(buf.bytes().get(head_at..).unwrap_or(&[]))
    } else {
        return Resumed::Refused;
    };
    let validator = if d.etag { Validator::ETag(buf.tail()) } else { Validator::LastModified(buf.tail()) };
    let head_len = match parsed {
        ResponseHead::Complete(resp) if resp.resumes(u64::from(r.from), u64::from(d.body_len), &validator) => {
            resp.head_len
        }
        ResponseHead::Partial if usize::from(r.head_seen) + new.len() <= MAX_RESUME_HEAD => {
            if r.head_seen == 0 && !buf.push(new) {
                return Resumed::Refused;
            }
            r.head_seen += new.len() as u16;
            d.resuming = Some(r);
            p.track = Some(d);
            return Resumed::Partial { ack: start.wrapping_add(u32::from(r.head_seen)) };
        }
        _ => return Resumed::Refused,
    };
    buf.truncate(head_at);
    let body_at_server = start.wrapping_add(head_len as u32);
    p.conn.delta = d.body_start.wrapping_add(r.from).wrapping_sub(body_at_server);
    d.server_next = seg.seq.wrapping_add(seg.payload_len);
    d.sent_to_client = d.server_next.wrapping_add(p.conn.delta);
    d.progress_ms = now_ms;
    d.resuming = None;
    p.track = Some(d);
    Resumed::Head { strip: skip + head_len - usize::from(r.head_seen), from: r.from }
}
