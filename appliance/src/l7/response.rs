//! A server's response head, as far as the appliance needs it: the status
//! (error redirect), and whether a download can be resumed on another
//! server if this one dies (mid-download failover): a GET answered 200
//! with a length, a strong validator and `Accept-Ranges: bytes`. Also the
//! request that resumes it (`Range` + `If-Range`) and the check of the
//! replacement's answer: never splice in bytes of another version.

use super::request::MAX_HEADERS;

/// A validator a resumed request can name in `If-Range` (RFC 9110 13.1.5:
/// a strong ETag, or a Last-Modified date).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validator<'a> {
    ETag(&'a [u8]),
    LastModified(&'a [u8]),
}

impl Validator<'_> {
    pub fn value(&self) -> &[u8] {
        match self {
            Validator::ETag(v) | Validator::LastModified(v) => v,
        }
    }
}

/// What a response head says.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    pub content_length: Option<u64>,
    /// What an If-Range may name (RFC 9110 13.1.5): the strong ETag, else
    /// a strong Last-Modified date; None when there is neither.
    pub validator: Option<Validator<'a>>,
    pub accept_ranges_bytes: bool,
    /// `Content-Range: bytes first-last/total`.
    pub content_range: Option<(u64, u64, u64)>,
    /// A `Transfer-Encoding`: the bytes on the wire are not the body's.
    pub transfer_coded: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ResponseHead<'a> {
    Partial,
    Complete(Response<'a>),
    Invalid,
}

/// Parses a response head (httparse).
pub fn parse(bytes: &[u8]) -> ResponseHead<'_> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    let head_len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ResponseHead::Partial,
        Err(_) => return ResponseHead::Invalid,
    };
    let Some(status) = resp.code else {
        return ResponseHead::Invalid;
    };
    let mut r = Response {
        status,
        head_len,
        content_length: None,
        validator: None,
        accept_ranges_bytes: false,
        content_range: None,
        transfer_coded: false,
    };
    let (mut etag, mut weak_etag, mut last_modified, mut date) = (None, false, None, None);
    for h in resp.headers.iter() {
        let name = h.name;
        let value = h.value.trim_ascii();
        if name.eq_ignore_ascii_case("content-length") {
            match (r.content_length, number(value)) {
                // Two different lengths: a smuggling attempt or a broken server.
                (Some(a), Some(b)) if a != b => return ResponseHead::Invalid,
                (_, Some(n)) => r.content_length = Some(n),
                (_, None) => return ResponseHead::Invalid,
            }
        } else if name.eq_ignore_ascii_case("etag") {
            weak_etag |= value.starts_with(b"W/");
            etag = Some(value);
        } else if name.eq_ignore_ascii_case("last-modified") {
            last_modified = Some(value);
        } else if name.eq_ignore_ascii_case("date") {
            date = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            r.transfer_coded = true;
        } else if name.eq_ignore_ascii_case("accept-ranges") {
            r.accept_ranges_bytes = value.split(|&b| b == b',').any(|u| u.trim_ascii().eq_ignore_ascii_case(b"bytes"));
        } else if name.eq_ignore_ascii_case("content-range") {
            r.content_range = content_range(value);
        }
    }
    // RFC 9110 13.1.5: If-Range takes a strong ETag; a date only when
    // there is no ETag at all, and only a strong one (8.8.2.2: at least a
    // second before the Date; the same second's could name two versions).
    r.validator = match (etag, last_modified) {
        (Some(_), _) if weak_etag => None,
        (Some(tag), _) => Some(Validator::ETag(tag)),
        (None, Some(lm)) if date != Some(lm) => Some(Validator::LastModified(lm)),
        (None, _) => None,
    };
    ResponseHead::Complete(r)
}

impl Response<'_> {
    /// Whether the body can be resumed elsewhere: a 200 to a GET with a
    /// length, a validator and byte ranges, and no transfer coding.
    pub fn resumable(&self, method: &str) -> bool {
        method == "GET"
            && self.status == 200
            && !self.transfer_coded
            && self.content_length.is_some()
            && self.validator.is_some()
            && self.accept_ranges_bytes
    }

    /// Whether this answers a resume at byte `from` of a body of `total`
    /// bytes whose validator was `validator`: 206, exactly that range, the
    /// same validator, no transfer coding, and no other length.
    pub fn resumes(&self, from: u64, total: u64, validator: &Validator) -> bool {
        self.status == 206
            && !self.transfer_coded
            && self.content_length.is_none_or(|n| n == total.saturating_sub(from))
            && self.content_range == Some((from, total.saturating_sub(1), total))
            && self.validator.as_ref() == Some(validator)
    }
}

/// Writes into `out` the request that resumes a download at byte `from`:
/// the original request head with any `Range` and `If-Range` it had
/// removed and `Range: bytes=from-` and `If-Range: validator` added before
/// the blank line. Returns its length, or None if `out` is too small or
/// the head does not end in a blank line.
pub fn range_request(original: &[u8], from: u64, validator: &Validator, out: &mut [u8]) -> Option<usize> {
    let body = original.strip_suffix(b"\r\n\r\n")?;
    let mut w = Writer { out, len: 0 };
    // Every line ends in CRLF, whatever the original used.
    let mut lines = body.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // The request line stays as it is.
    w.put(lines.next()?)?;
    w.put(b"\r\n")?;
    for line in lines {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"").trim_ascii();
        if name.eq_ignore_ascii_case(b"range") || name.eq_ignore_ascii_case(b"if-range") {
            continue;
        }
        w.put(line)?;
        w.put(b"\r\n")?;
    }
    w.put(b"Range: bytes=")?;
    w.put(decimal(from, &mut [0; 20]))?;
    w.put(b"-\r\nIf-Range: ")?;
    w.put(validator.value())?;
    w.put(b"\r\n\r\n")?;
    Some(w.len)
}

struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.len.checked_add(bytes.len())?;
        self.out.get_mut(self.len..end)?.copy_from_slice(bytes);
        self.len = end;
        Some(())
    }
}

fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A decimal number of at most 18 digits (no sign, no spaces inside).
fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// `bytes first-last/total`, with first ≤ last < total.
fn content_range(v: &[u8]) -> Option<(u64, u64, u64)> {
    let rest = v.strip_prefix(b"bytes ")?;
    let mut it = rest.splitn(2, |&b| b == b'/');
    let (range, total) = (it.next()?, number(it.next()?)?);
    let mut it = range.splitn(2, |&b| b == b'-');
    let (first, last) = (number(it.next()?)?, number(it.next()?)?);
    (first <= last && last < total).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 67108864\r\nLast-Modified: Fri, 04 Dec 2026 10:00:00 GMT\r\nETag: \"6750a0c0-4000000\"\r\nAccept-Ranges: bytes\r\n\r\n";

    fn complete(bytes: &[u8]) -> Response<'_> {
        match parse(bytes) {
            ResponseHead::Complete(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_nginx_download_is_resumable() {
        let r = complete(OK);
        assert_eq!((r.status, r.content_length, r.head_len), (200, Some(67_108_864), OK.len()));
        assert_eq!(r.validator, Some(Validator::ETag(b"\"6750a0c0-4000000\"")), "the ETag before the date");
        assert!(r.resumable("GET"));
        assert!(!r.resumable("HEAD"));
        assert_eq!(parse(&OK[..40]), ResponseHead::Partial);
    }

    #[test]
    fn without_length_validator_or_ranges_it_is_not() {
        let without = |header: &str| {
            let text = std::str::from_utf8(OK).unwrap();
            let kept: Vec<&str> = text.split("\r\n").filter(|l| !l.starts_with(header)).collect();
            kept.join("\r\n").into_bytes()
        };
        assert!(!complete(&without("Content-Length")).resumable("GET"));
        assert!(!complete(&without("Accept-Ranges")).resumable("GET"));
        let no_etag = without("ETag");
        let r = complete(&no_etag);
        assert!(matches!(r.validator, Some(Validator::LastModified(_))), "the date serves when there is no ETag");
        let neither = String::from_utf8(no_etag.clone()).unwrap().replace("Last-Modified", "X-Other");
        assert!(!complete(neither.as_bytes()).resumable("GET"));
        let weak = String::from_utf8(no_etag.clone()).unwrap().replace("Last-Modified", "ETag: W/\"x\"\r\nX");
        assert_eq!(complete(weak.as_bytes()).validator, None, "a weak ETag cannot be used in If-Range");
    }

    #[test]
    fn a_weak_etag_a_same_second_date_or_a_transfer_coding_is_not_resumable() {
        let with = |from: &str, to: &str| String::from_utf8(OK.to_vec()).unwrap().replace(from, to);
        // RFC 9110 13.1.5: no weak ETag in If-Range, and no date when there is an ETag.
        let weak = with("ETag: \"", "ETag: W/\"");
        assert_eq!(complete(weak.as_bytes()).validator, None);
        // A Last-Modified date is strong only if at least a second before the Date.
        let same = with("Server: nginx", "Date: Fri, 04 Dec 2026 10:00:00 GMT").replace("ETag", "X-Tag");
        assert_eq!(complete(same.as_bytes()).validator, None);
        let earlier = with("Server: nginx", "Date: Fri, 04 Dec 2026 10:00:01 GMT").replace("ETag", "X-Tag");
        assert!(matches!(complete(earlier.as_bytes()).validator, Some(Validator::LastModified(_))));
        // A transfer coding frames the body itself: byte offsets are not the body's.
        let chunked = with("Accept-Ranges", "Transfer-Encoding: chunked\r\nAccept-Ranges");
        assert!(!complete(chunked.as_bytes()).resumable("GET"));
        let v = Validator::ETag(b"\"abc\"");
        let partial = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 90-99/100\r\nETag: \"abc\"\r\n";
        let coded = format!("{partial}Transfer-Encoding: gzip\r\n\r\n");
        assert!(!complete(coded.as_bytes()).resumes(90, 100, &v));
        let short = format!("{partial}Content-Length: 9\r\n\r\n");
        assert!(!complete(short.as_bytes()).resumes(90, 100, &v), "a length that is not the range's");
    }

    #[test]
    fn conflicting_or_bad_lengths_are_invalid() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(parse(two), ResponseHead::Invalid);
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), ResponseHead::Invalid);
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n"), ResponseHead::Invalid);
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n\r\n"), ResponseHead::Invalid);
        let same = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(complete(same).content_length, Some(5));
    }

    #[test]
    fn a_range_request_replaces_any_range_and_names_the_validator() {
        let original =
            b"GET /big.bin HTTP/1.1\r\nHost: lab\r\nRange: bytes=0-\r\nUser-Agent: curl\r\nif-range: old\r\n\r\n";
        let mut out = [0u8; 256];
        let v = Validator::ETag(b"\"abc\"");
        let n = range_request(original, 33_554_432, &v, &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            "GET /big.bin HTTP/1.1\r\nHost: lab\r\nUser-Agent: curl\r\nRange: bytes=33554432-\r\nIf-Range: \"abc\"\r\n\r\n"
        );
        assert_eq!(range_request(original, 0, &v, &mut out[..40]), None, "too small a buffer");
        assert_eq!(range_request(b"GET / HTTP/1.1\r\n", 0, &v, &mut out), None, "no blank line");
        assert!(matches!(super::super::request::parse_head(&out[..n]), super::super::request::Head::Complete(_)));
        // The last header kept ends in CRLF like the others.
        let n = range_request(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n", 5, &v, &mut out).unwrap();
        assert_eq!(&out[..n], b"GET / HTTP/1.1\r\nHost: lab\r\nRange: bytes=5-\r\nIf-Range: \"abc\"\r\n\r\n");
    }

    #[test]
    fn only_the_exact_range_of_the_same_version_resumes() {
        let v = Validator::ETag(b"\"abc\"");
        let answer = |status: &str, range: &str, etag: &str| {
            format!("HTTP/1.1 {status}\r\nContent-Range: {range}\r\nETag: {etag}\r\nContent-Length: 10\r\n\r\n")
        };
        let good = answer("206 Partial Content", "bytes 90-99/100", "\"abc\"");
        assert!(complete(good.as_bytes()).resumes(90, 100, &v));
        for bad in [
            answer("200 OK", "bytes 90-99/100", "\"abc\""), // the whole body again
            answer("206 Partial Content", "bytes 0-99/100", "\"abc\""), // another range
            answer("206 Partial Content", "bytes 90-99/101", "\"abc\""), // another length
            answer("206 Partial Content", "bytes 90-99/100", "\"abd\""), // another version
            answer("206 Partial Content", "bytes 99-90/100", "\"abc\""), // nonsense
        ] {
            assert!(!complete(bad.as_bytes()).resumes(90, 100, &v), "{bad}");
        }
    }
}
