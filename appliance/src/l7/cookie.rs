//! SYN cookies: the appliance answers a client's SYN with a SYN-ACK whose
//! initial sequence number carries everything it must remember, so nothing
//! is stored until the client's ACK returns the number (plus one) and so
//! proves it saw the SYN-ACK. A spoofed SYN flood then costs no memory.
//!
//! A cookie is 32 bits: the low 2 bits of the time slice it was made in,
//! the client's options (MSS as an index into [`MSS_TABLE`], its window
//! scale, SACK-permitted) and a 22-bit keyed MAC over the flow, the
//! client's ISN, the whole slice number and those option bits. Changing any
//! of them, or presenting the cookie under another key or more than one
//! slice late, fails the MAC or the slice check. A blind guess passes one
//! time in 4 million.
//!
//! TCP timestamps are not carried: the SYN-ACK does not offer them, so the
//! connection runs without (RFC 7323: both ends must agree).

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// MSS values a cookie can name (3 bits). A SYN's MSS is rounded down to
/// the largest entry not above it: the appliance never promises the server
/// will send more than the client can take.
pub const MSS_TABLE: [u16; 8] = [536, 1200, 1300, 1360, 1400, 1440, 1452, 1460];

/// A slice lasts 2^16 ms (65.5 s) of wall-clock time (Unix epoch, so
/// siblings that share a VIP agree on it); a cookie is good in its own
/// slice and the next, so for 65 to 131 s.
const SLICE_SHIFT: u32 = 16;

/// Window scale shifts go up to 14 (RFC 7323); the field's 15 says "none".
const MAX_WSCALE: u8 = 14;
const NO_WSCALE: u32 = 15;

const MAC_BITS: u32 = 22;
const MAC_MASK: u32 = (1 << MAC_BITS) - 1;

/// What a client's SYN offered that must survive until its ACK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    /// Maximum segment size (one of [`MSS_TABLE`] after a round trip).
    pub mss: u16,
    /// Window scale shift; None: the client did not offer scaling.
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
}

/// The flow a cookie is bound to: the client's and the service's address
/// and port, as the client's SYN carried them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CookieFlow {
    pub client_ip: u32,
    pub client_port: u16,
    pub vip: u32,
    pub vport: u16,
}

/// Makes and checks cookies under one secret key. Siblings that share a
/// VIP must share the key, since the ACK may reach another appliance
/// than the SYN did.
#[derive(Clone)]
pub struct CookieJar {
    key: (u64, u64),
}

/// Why a returned cookie was refused (each a counted drop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    /// Made more than one slice ago (or its slice bits name the future).
    Stale,
    /// The MAC does not match: forged, altered, or for another flow or key.
    Forged,
}

impl CookieJar {
    pub fn new(key: (u64, u64)) -> CookieJar {
        CookieJar { key }
    }

    /// A jar keyed from a shared secret (a key file's text): every
    /// appliance given the same secret makes and checks the same cookies.
    pub fn from_secret(secret: &str) -> CookieJar {
        use std::hash::Hasher;
        let half = |label: &[u8]| {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(0x7379_6e63_6f6f_6b69, 0x7269_6e67_6c62);
            h.write(label);
            h.write(secret.as_bytes());
            h.finish()
        };
        CookieJar::new((half(b"ringlb syn cookie key 0"), half(b"ringlb syn cookie key 1")))
    }

    /// A jar with a random key (16 bytes of /dev/urandom; without it, std's
    /// per-process random hasher keys).
    pub fn random() -> CookieJar {
        let mut b = [0u8; 16];
        let urandom = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        if urandom.is_err() {
            use std::hash::{BuildHasher, Hasher};
            let r = std::collections::hash_map::RandomState::new();
            b[..8].copy_from_slice(&r.build_hasher().finish().to_le_bytes());
            b[8..].copy_from_slice(&r.hash_one(1u8).to_le_bytes());
        }
        let word = |at: usize| {
            u64::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]])
        };
        CookieJar::new((word(0), word(8)))
    }

    /// The ISN of the SYN-ACK that answers a SYN of `flow` with sequence
    /// number `client_isn` and options `opts`, at wall-clock time `wall_ms`
    /// (milliseconds since the Unix epoch).
    pub fn make(&self, flow: &CookieFlow, client_isn: u32, opts: &SynOptions, wall_ms: u64) -> u32 {
        let slice = slice_of(wall_ms);
        let fields = encode_fields(slice, opts);
        fields | (self.mac(flow, client_isn, slice, fields) & MAC_MASK)
    }

    /// Checks the cookie an ACK returns (its acknowledgement number minus
    /// one) for `flow` whose client's ISN is `client_isn` (the ACK's
    /// sequence number minus one), at wall-clock time `wall_ms`, and gives
    /// back the SYN's options.
    pub fn check(
        &self,
        flow: &CookieFlow,
        client_isn: u32,
        cookie: u32,
        wall_ms: u64,
    ) -> Result<SynOptions, CookieError> {
        let now_slice = slice_of(wall_ms);
        // The whole slice number is the latest one with the cookie's low 2 bits.
        let age = now_slice.wrapping_sub(cookie >> 30) & 3;
        if age > 1 {
            return Err(CookieError::Stale);
        }
        let slice = now_slice.wrapping_sub(age);
        let fields = cookie & !MAC_MASK;
        if self.mac(flow, client_isn, slice, fields) & MAC_MASK != cookie & MAC_MASK {
            return Err(CookieError::Forged);
        }
        Ok(decode_fields(fields))
    }

    fn mac(&self, flow: &CookieFlow, client_isn: u32, slice: u32, fields: u32) -> u32 {
        // Fixed bytes in network order: every CPU makes the same MAC.
        let mut input = [0u8; 24];
        for (at, v) in [(0, flow.client_ip), (4, flow.vip), (12, client_isn), (16, slice), (20, fields)] {
            input[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        input[8..10].copy_from_slice(&flow.client_port.to_be_bytes());
        input[10..12].copy_from_slice(&flow.vport.to_be_bytes());
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(&input);
        h.finish() as u32
    }
}

/// The slice a wall-clock time falls in (its number wraps after 2^32
/// slices, 8,900 years).
fn slice_of(wall_ms: u64) -> u32 {
    (wall_ms >> SLICE_SHIFT) as u32
}

/// The cookie's upper 10 bits: slice (2), MSS index (3), window scale (4), SACK (1).
fn encode_fields(slice: u32, opts: &SynOptions) -> u32 {
    let mss_index = MSS_TABLE.iter().rposition(|&m| m <= opts.mss).unwrap_or(0) as u32;
    let wscale = opts.wscale.map_or(NO_WSCALE, |w| u32::from(w.min(MAX_WSCALE)));
    ((slice & 3) << 30) | (mss_index << 27) | (wscale << 23) | (u32::from(opts.sack_permitted) << 22)
}

fn decode_fields(fields: u32) -> SynOptions {
    let wscale = (fields >> 23) & 0xf;
    SynOptions {
        mss: MSS_TABLE[(fields >> 27 & 7) as usize],
        wscale: (wscale != NO_WSCALE).then_some(wscale as u8),
        sack_permitted: fields >> 22 & 1 == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: CookieFlow = CookieFlow { client_ip: 0x0a00_0001, client_port: 40000, vip: 0xc612_6401, vport: 80 };
    const OPTS: SynOptions = SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true };
    /// Early December 2026, 1,234 ms into a slice.
    const NOW: u64 = (1_796_000_000_000 >> SLICE_SHIFT << SLICE_SHIFT) + 1234;
    const SLICE: u64 = 1 << SLICE_SHIFT;

    fn jar() -> CookieJar {
        CookieJar::new((0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210))
    }

    #[test]
    fn a_cookie_returns_the_options_of_its_syn() {
        for opts in [
            OPTS,
            SynOptions { mss: 536, wscale: None, sack_permitted: false },
            SynOptions { mss: 1400, wscale: Some(0), sack_permitted: true },
            SynOptions { mss: 1440, wscale: Some(14), sack_permitted: false },
        ] {
            let c = jar().make(&FLOW, 777, &opts, NOW);
            assert_eq!(jar().check(&FLOW, 777, c, NOW), Ok(opts));
            // Good for the rest of its slice and the whole next one.
            assert_eq!(jar().check(&FLOW, 777, c, NOW + 2 * SLICE - 1235), Ok(opts));
        }
    }

    #[test]
    fn odd_options_are_rounded_to_what_the_cookie_can_say() {
        let c = jar().make(&FLOW, 1, &SynOptions { mss: 1380, wscale: Some(15), sack_permitted: false }, NOW);
        let got = jar().check(&FLOW, 1, c, NOW).unwrap();
        assert_eq!((got.mss, got.wscale), (1360, Some(14)), "MSS rounded down, scale capped at 14");
        let c = jar().make(&FLOW, 1, &SynOptions { mss: 88, wscale: None, sack_permitted: false }, NOW);
        assert_eq!(jar().check(&FLOW, 1, c, NOW).unwrap().mss, 536, "below the table: its smallest");
    }

    #[test]
    fn a_cookie_under_another_key_is_refused() {
        let c = jar().make(&FLOW, 777, &OPTS, NOW);
        let other = CookieJar::new((0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3211));
        assert_eq!(other.check(&FLOW, 777, c, NOW), Err(CookieError::Forged));
    }

    #[test]
    fn a_stale_cookie_is_refused() {
        let c = jar().make(&FLOW, 777, &OPTS, NOW);
        for later in 2..6 {
            assert!(jar().check(&FLOW, 777, c, NOW + later * SLICE).is_err(), "{later} slices later");
        }
        assert_eq!(jar().check(&FLOW, 777, c, NOW + 2 * SLICE), Err(CookieError::Stale));
        // From a slice that has not begun.
        assert_eq!(jar().check(&FLOW, 777, c, NOW - SLICE), Err(CookieError::Stale));
    }

    #[test]
    fn altered_options_flow_or_isn_are_refused() {
        let c = jar().make(&FLOW, 777, &OPTS, NOW);
        for bit in 22..30 {
            // MSS index (27..30), window scale (23..27), SACK (22).
            assert_eq!(jar().check(&FLOW, 777, c ^ 1 << bit, NOW), Err(CookieError::Forged), "bit {bit}");
        }
        let moved = [
            CookieFlow { client_ip: FLOW.client_ip + 1, ..FLOW },
            CookieFlow { client_port: FLOW.client_port + 1, ..FLOW },
            CookieFlow { vip: FLOW.vip + 1, ..FLOW },
            CookieFlow { vport: 443, ..FLOW },
        ];
        for flow in moved {
            assert_eq!(jar().check(&flow, 777, c, NOW), Err(CookieError::Forged), "{flow:?}");
        }
        assert_eq!(jar().check(&FLOW, 778, c, NOW), Err(CookieError::Forged), "another ISN");
    }

    #[test]
    fn blind_guesses_almost_never_pass() {
        // Guesses in the live slice, so only the MAC can refuse them.
        let slice_bits = (slice_of(NOW) & 3) << 30;
        let passed = (0..1u32 << 20).filter(|&guess| jar().check(&FLOW, 777, slice_bits | guess, NOW).is_ok()).count();
        // 2^20 guesses at 1 in 2^22 each expect 0.25 passes.
        assert!(passed <= 2, "{passed} of 2^20 guessed cookies passed");
    }

    #[test]
    fn slice_numbers_wrap() {
        let late = (u64::from(u32::MAX) << SLICE_SHIFT) + 10;
        let c = jar().make(&FLOW, 9, &OPTS, late);
        assert_eq!(jar().check(&FLOW, 9, c, late + SLICE), Ok(OPTS));
    }

    /// The MAC is over fixed bytes, not the CPU's: this value holds on any
    /// machine (and changes if the input's layout does).
    #[test]
    fn a_cookie_is_the_same_on_every_cpu() {
        let slice = slice_of(NOW);
        let fields = (slice & 3) << 30 | 7 << 27 | 7 << 23 | 1 << 22; // MSS 1460, scale 7, SACK
        let mut input = vec![10, 0, 0, 1, 198, 18, 100, 1, 0x9c, 0x40, 0, 80, 0, 0, 0x03, 0x09];
        input.extend_from_slice(&slice.to_be_bytes());
        input.extend_from_slice(&fields.to_be_bytes());
        let mut h = SipHasher13::new_with_keys(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        h.write(&input);
        let want = fields | (h.finish() as u32 & MAC_MASK);
        assert_eq!(jar().make(&FLOW, 777, &OPTS, NOW), want);
        assert_eq!(want, 0x7bc3_31d8, "SipHash-1-3 of those bytes under that key");
    }
}
