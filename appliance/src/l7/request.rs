//! Delayed binding's first half: the client's request, gathered from its
//! segments until the head (request line and headers) is complete, then
//! parsed. The buffer is the connection's until it is bound; buffers come
//! from a pool made at start, so gathering allocates nothing.

/// Most a request head may take (request line, headers, blank line). A
/// longer one goes to the service's default group, or is refused.
pub const HEAD_CAP: usize = 16 * 1024;

/// Most headers a head may carry; more make it `Invalid`.
pub const MAX_HEADERS: usize = 64;

/// A connection's request so far.
pub struct RequestBuf {
    data: Box<[u8; HEAD_CAP]>,
    len: usize,
    /// The sequence number of the next byte expected from the client.
    next_seq: u32,
    /// Bytes kept at the buffer's far end (a tracked download's validator).
    tail_len: usize,
}

/// What a segment did to the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gathered {
    /// New bytes taken (a retransmitted start is skipped): ACK up to `next_seq`.
    Took(usize),
    /// Nothing new (a retransmission): ACK again.
    Duplicate,
    /// Starts past what is gathered (a segment was lost): not taken; ACK
    /// what is gathered so the client sends it again.
    Gap,
    /// The head would pass `HEAD_CAP`.
    TooLong,
}

/// The request's head, parsed. (Large, with its headers inline: it lives
/// on the stack for one decision and is never stored, and boxing would
/// allocate per request.)
#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Head<'a> {
    /// More bytes are needed.
    Partial,
    /// Complete: what the rules look at, and where the body starts.
    Complete(Request<'a>),
    /// Not HTTP/1.x as httparse reads it (a counted refusal).
    Invalid,
}

/// The parts of a request the rules can match on.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    headers: [(&'a str, &'a [u8]); MAX_HEADERS],
    header_count: usize,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
}

impl<'a> Request<'a> {
    /// The headers, in the order they came.
    pub fn headers(&self) -> &[(&'a str, &'a [u8])] {
        &self.headers[..self.header_count]
    }

    /// The first header named `name` (case-insensitive, as HTTP says).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, v)| v)
    }
}

impl RequestBuf {
    /// A buffer for a connection whose first data byte will be `next_seq`
    /// (the client's ISN plus one).
    pub fn new(next_seq: u32) -> RequestBuf {
        RequestBuf { data: Box::new([0; HEAD_CAP]), len: 0, next_seq, tail_len: 0 }
    }

    /// Makes a pooled buffer ready for another connection.
    pub fn reset(&mut self, next_seq: u32) {
        self.len = 0;
        self.next_seq = next_seq;
        self.tail_len = 0;
    }

    /// What is gathered, in order.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }

    /// The sequence number the client's next new byte will carry.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Takes a segment's payload that starts at sequence number `seq`.
    pub fn gather(&mut self, seq: u32, payload: &[u8]) -> Gathered {
        // How far the segment starts before the next byte expected (mod 2^32).
        let behind = self.next_seq.wrapping_sub(seq);
        if behind > i32::MAX as u32 {
            return Gathered::Gap;
        }
        let skip = behind as usize;
        if skip >= payload.len() {
            return Gathered::Duplicate;
        }
        let new = &payload[skip..];
        if self.len + new.len() > HEAD_CAP - self.tail_len {
            return Gathered::TooLong;
        }
        self.data[self.len..self.len + new.len()].copy_from_slice(new);
        self.len += new.len();
        self.next_seq = self.next_seq.wrapping_add(new.len() as u32);
        Gathered::Took(new.len())
    }

    /// Parses what is gathered.
    pub fn head(&self) -> Head<'_> {
        parse_head(self.bytes())
    }

    /// Keeps `bytes` at the buffer's far end, apart from the request (a
    /// download's validator, for resuming it). False: no room.
    pub fn keep_tail(&mut self, bytes: &[u8]) -> bool {
        if self.len + bytes.len() > HEAD_CAP {
            return false;
        }
        self.tail_len = bytes.len();
        self.data[HEAD_CAP - bytes.len()..].copy_from_slice(bytes);
        true
    }

    /// What `keep_tail` kept.
    pub fn tail(&self) -> &[u8] {
        &self.data[HEAD_CAP - self.tail_len..]
    }

    /// Appends `bytes` after what is gathered (a resumed download's
    /// replacement head, when it comes in pieces). False: no room before
    /// the tail.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        let end = self.len + bytes.len();
        if end + self.tail_len > HEAD_CAP {
            return false;
        }
        self.data[self.len..end].copy_from_slice(bytes);
        self.len = end;
        true
    }

    /// Forgets what was gathered past the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Replaces what follows the first `at` bytes with what `write` puts
    /// in `out` (it is given the first `at` bytes and the tail too), so
    /// that the buffer holds the request and, after it, a request derived
    /// from it. Returns how many bytes `write` wrote; None (nothing
    /// changed) if it wrote none or `at` is past what is gathered.
    pub fn write_after(
        &mut self,
        at: usize,
        write: impl FnOnce(&[u8], &[u8], &mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        if at > self.len {
            return None;
        }
        let (first, rest) = self.data.split_at_mut(at);
        let (out, tail) = rest.split_at_mut(HEAD_CAP - at - self.tail_len);
        let n = write(first, tail, out)?;
        self.len = at + n;
        Some(n)
    }
}

/// A worker's request buffers, made at start: a connection takes one at
/// its first data byte and gives it back once its request is bound (or it
/// ends). When all are taken, a new request waits (its bytes are not
/// acknowledged, so the client sends them again).
pub struct RequestPool {
    bufs: Box<[RequestBuf]>,
    free: Vec<u32>,
}

/// A buffer taken from a pool: its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId(u32);

impl RequestPool {
    pub fn new(count: usize) -> RequestPool {
        Self::try_new(count).expect("memory for the request buffers")
    }

    /// As `new`, but a machine without the memory gets an error naming
    /// the size, not an abort (buffers are made before the ports start).
    pub fn try_new(count: usize) -> Result<RequestPool, String> {
        let count = count.min(u32::MAX as usize);
        let too_big = |_| format!("cannot allocate {} MiB for {count} request buffers", (count * HEAD_CAP) >> 20);
        let mut bufs = Vec::new();
        bufs.try_reserve_exact(count).map_err(too_big)?;
        for _ in 0..count {
            let mut data = Vec::new();
            data.try_reserve_exact(HEAD_CAP).map_err(too_big)?;
            data.resize(HEAD_CAP, 0u8);
            let data: Box<[u8; HEAD_CAP]> =
                data.into_boxed_slice().try_into().map_err(|_| String::from("request buffer size"))?;
            bufs.push(RequestBuf { data, len: 0, next_seq: 0, tail_len: 0 });
        }
        Ok(RequestPool { bufs: bufs.into_boxed_slice(), free: (0..count as u32).rev().collect() })
    }

    /// A buffer for a request whose first byte is `next_seq`, if one is free.
    pub fn take(&mut self, next_seq: u32) -> Option<BufId> {
        let id = self.free.pop()?;
        self.bufs[id as usize].reset(next_seq);
        Some(BufId(id))
    }

    /// Gives a buffer back. (An id is given back once: the connection that
    /// took it forgets it.)
    pub fn give(&mut self, id: BufId) {
        debug_assert!(!self.free.contains(&id.0), "buffer {} given back twice", id.0);
        self.free.push(id.0);
    }

    pub fn get(&self, id: BufId) -> &RequestBuf {
        &self.bufs[id.0 as usize]
    }

    pub fn get_mut(&mut self, id: BufId) -> &mut RequestBuf {
        &mut self.bufs[id.0 as usize]
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }
}

/// Parses a request head with httparse, into headers kept on the stack.
pub fn parse_head(bytes: &[u8]) -> Head<'_> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => {
            let (Some(method), Some(path)) = (req.method, req.path) else {
                return Head::Invalid;
            };
            let mut headers = [("", &[][..]); MAX_HEADERS];
            for (slot, h) in headers.iter_mut().zip(req.headers.iter()) {
                *slot = (h.name, h.value);
            }
            Head::Complete(Request { method, path, headers, header_count: req.headers.len(), head_len })
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] =
        b"GET /static/logo.png?v=2 HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: curl/7.88\r\nCookie: a=1; lang=fi\r\n\r\n";

    #[test]
    fn a_derived_request_is_written_after_the_request_and_the_tail_survives() {
        let mut buf = gathered_in(2);
        assert!(buf.keep_tail(b"\"abc-123\""));
        let n = buf.write_after(REQUEST.len(), |req, tail, out| {
            assert_eq!((req, tail), (REQUEST, &b"\"abc-123\""[..]));
            out[..5].copy_from_slice(b"again");
            Some(5)
        });
        assert_eq!(n, Some(5));
        assert_eq!(&buf.bytes()[..REQUEST.len()], REQUEST);
        assert_eq!(&buf.bytes()[REQUEST.len()..], b"again");
        // Written again (a second resume): it replaces the first.
        buf.write_after(REQUEST.len(), |_, _, out| {
            out[..2].copy_from_slice(b"no");
            Some(2)
        });
        assert_eq!(&buf.bytes()[REQUEST.len()..], b"no");
        assert_eq!(buf.tail(), b"\"abc-123\"");
        // Past what is gathered, or nothing written: nothing changes.
        assert_eq!(buf.write_after(HEAD_CAP, |_, _, _| Some(1)), None);
        assert_eq!(buf.write_after(REQUEST.len(), |_, _, _| None), None);
        assert_eq!(buf.bytes().len(), REQUEST.len() + 2);
        // Pushed bytes go after it, never over the tail; truncated away.
        assert!(buf.push(b"HTTP/1.1 206"));
        assert_eq!(&buf.bytes()[REQUEST.len() + 2..], b"HTTP/1.1 206");
        let room = HEAD_CAP - buf.bytes().len() - buf.tail().len();
        assert!(!buf.push(&vec![b'x'; room + 1]), "over the tail");
        assert!(buf.push(&vec![b'x'; room]));
        assert_eq!(buf.tail(), b"\"abc-123\"");
        buf.truncate(REQUEST.len() + 2);
        assert_eq!(&buf.bytes()[REQUEST.len()..], b"no");
        buf.reset(7);
        assert!(buf.tail().is_empty());
    }

    /// Feeds REQUEST in `pieces` segments of near-equal size, from ISN 0xffff_fff0
    /// (so the sequence numbers wrap on the way).
    fn gathered_in(pieces: usize) -> RequestBuf {
        let isn = 0xffff_fff0u32;
        let mut buf = RequestBuf::new(isn.wrapping_add(1));
        let step = REQUEST.len().div_ceil(pieces);
        for (i, chunk) in REQUEST.chunks(step).enumerate() {
            let seq = isn.wrapping_add(1 + (i * step) as u32);
            let before_last = (i + 1) * step < REQUEST.len();
            assert_eq!(buf.gather(seq, chunk), Gathered::Took(chunk.len()));
            if before_last {
                assert_eq!(buf.head(), Head::Partial, "piece {i} of {pieces}");
            }
        }
        assert_eq!(buf.bytes(), REQUEST);
        buf
    }

    #[test]
    fn a_request_in_1_2_or_7_segments_parses_the_same() {
        for pieces in [1, 2, 7] {
            let buf = gathered_in(pieces);
            let Head::Complete(req) = buf.head() else { panic!("{pieces} segments: incomplete") };
            assert_eq!((req.method, req.path, req.head_len), ("GET", "/static/logo.png?v=2", REQUEST.len()));
            assert_eq!(req.header("host"), Some(&b"Example.COM:8080"[..]));
            assert_eq!(req.headers().len(), 3);
            assert_eq!(buf.next_seq(), 0xffff_fff1u32.wrapping_add(REQUEST.len() as u32));
        }
    }

    #[test]
    fn retransmissions_and_overlaps_take_only_new_bytes() {
        let mut buf = RequestBuf::new(100);
        assert_eq!(buf.gather(100, b"GET / HT"), Gathered::Took(8));
        assert_eq!(buf.gather(100, b"GET / HT"), Gathered::Duplicate, "the same segment again");
        assert_eq!(buf.gather(104, b"/ HTTP/1.1\r\n"), Gathered::Took(8), "overlapping: only its new part");
        assert_eq!(buf.gather(130, b"Host: x\r\n"), Gathered::Gap, "past a lost segment");
        assert_eq!(buf.bytes(), b"GET / HTTP/1.1\r\n");
        assert_eq!(buf.gather(116, b"Host: x\r\n\r\n"), Gathered::Took(11));
        assert!(matches!(buf.head(), Head::Complete(_)));
    }

    #[test]
    fn a_head_over_the_cap_is_refused_and_bad_heads_are_invalid() {
        let mut buf = RequestBuf::new(0);
        let filler = vec![b'a'; 1000];
        let mut seq = 0u32;
        let mut outcome = Gathered::Duplicate;
        for _ in 0..20 {
            outcome = buf.gather(seq, &filler);
            if outcome == Gathered::TooLong {
                break;
            }
            seq += 1000;
        }
        assert_eq!(outcome, Gathered::TooLong);
        assert!(buf.bytes().len() <= HEAD_CAP);
        assert_eq!(parse_head(b"\x16\x03\x01\x02\x00 TLS hello\r\n\r\n"), Head::Invalid);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), Head::Invalid);
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..], &b"X: y\r\n".repeat(MAX_HEADERS + 1), b"\r\n"].concat();
        assert_eq!(parse_head(&many), Head::Invalid, "more headers than MAX_HEADERS");
    }

    #[test]
    fn a_pool_lends_each_buffer_once_and_clean() {
        let mut pool = RequestPool::new(2);
        let a = pool.take(10).unwrap();
        assert_eq!(pool.get_mut(a).gather(10, b"GET /"), Gathered::Took(5));
        let b = pool.take(20).unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.take(30), None, "all lent");
        pool.give(a);
        let c = pool.take(40).unwrap();
        let taken = pool.get_mut(c);
        assert_eq!((taken.bytes(), taken.next_seq()), (&b""[..], 40), "taken clean");
        assert_eq!(pool.available(), 0);
    }

    #[test]
    fn a_pooled_buffer_starts_over() {
        let mut buf = gathered_in(2);
        buf.reset(5);
        assert_eq!((buf.bytes(), buf.next_seq()), (&b""[..], 5));
        assert_eq!(buf.head(), Head::Partial);
    }
}
