//! The TCP options of a handshake: what a SYN (or a server's SYN-ACK)
//! offers, and the option block the appliance writes into its own SYN-ACK
//! and into the SYN it replays to a server.

use super::cookie::SynOptions;

/// TCP option kinds (RFC 9293, RFC 7323, RFC 2018).
pub(super) const OPT_END: u8 = 0;
pub(super) const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERMITTED: u8 = 4;
pub(super) const OPT_SACK: u8 = 5;
const OPT_TIMESTAMPS: u8 = 8;

/// The MSS a SYN without the option implies (RFC 9293, 3.7.1).
pub const DEFAULT_MSS: u16 = 536;

/// What a handshake segment's options offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offered {
    pub opts: SynOptions,
    /// The MSS option was present (else `opts.mss` is the default).
    pub mss_present: bool,
    /// Timestamps were offered (the appliance does not take them up).
    pub timestamps: bool,
}

/// Why a handshake segment's options were refused (a counted drop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadOptions;

/// Reads the options of a TCP header (`hdr`: the header alone, its data
/// offset already checked). Unknown options are skipped; a length that
/// runs past the header, or a known option of the wrong length, refuses it.
pub fn read(hdr: &[u8]) -> Result<Offered, BadOptions> {
    let opts = SynOptions { mss: DEFAULT_MSS, wscale: None, sack_permitted: false };
    let mut got = Offered { opts, mss_present: false, timestamps: false };
    let mut i = 20;
    while i < hdr.len() {
        let kind = hdr[i];
        match kind {
            OPT_END => break,
            OPT_NOP => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let len = usize::from(*hdr.get(i + 1).ok_or(BadOptions)?);
        if len < 2 || i + len > hdr.len() {
            return Err(BadOptions);
        }
        let body = &hdr[i + 2..i + len];
        match (kind, body.len()) {
            (OPT_MSS, 2) => {
                got.opts.mss = u16::from_be_bytes([body[0], body[1]]);
                got.mss_present = true;
            }
            (OPT_WSCALE, 1) => got.opts.wscale = Some(body[0].min(14)),
            (OPT_SACK_PERMITTED, 0) => got.opts.sack_permitted = true,
            (OPT_TIMESTAMPS, 8) => got.timestamps = true,
            (OPT_MSS | OPT_WSCALE | OPT_SACK_PERMITTED | OPT_TIMESTAMPS, _) => return Err(BadOptions),
            _ => {}
        }
        i += len;
    }
    Ok(got)
}

/// The option block for a handshake segment that answers or replays
/// `opts`: MSS `mss` if given; window scale `our_wscale` only if `opts`
/// has one (scaling is on only when both ends offer it); SACK-permitted
/// if `opts` has it. NOP-padded to a multiple of 4 (at most 12 bytes).
/// Never longer than the block of a SYN that offered the same (with an
/// MSS when `mss` is given): an answer built in the SYN's place fits.
/// Returns the block and its length.
pub fn write(mss: Option<u16>, opts: &SynOptions, our_wscale: Option<u8>) -> ([u8; 12], usize) {
    let mut b = [OPT_NOP; 12];
    let mut n = 0;
    if let Some(mss) = mss {
        b[..4].copy_from_slice(&[OPT_MSS, 4, (mss >> 8) as u8, mss as u8]);
        n = 4;
    }
    if let (Some(_), Some(w)) = (opts.wscale, our_wscale) {
        b[n + 1..n + 4].copy_from_slice(&[OPT_WSCALE, 3, w]);
        n += 4; // NOP, then the 3-byte option
    }
    if opts.sack_permitted {
        b[n + 2..n + 4].copy_from_slice(&[OPT_SACK_PERMITTED, 2]);
        n += 4; // NOP NOP, then the 2-byte option
    }
    (b, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_with(options: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h.extend_from_slice(options);
        h
    }

    #[test]
    fn a_linux_syn_offers_mss_sack_timestamps_and_scale() {
        // What Linux sends: MSS 1460, SACK-permitted, timestamps, NOP, window scale 7.
        let linux = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        let got = read(&header_with(&linux)).unwrap();
        assert_eq!(got.opts, SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true });
        assert!(got.timestamps);
    }

    #[test]
    fn missing_options_take_their_defaults_and_unknown_ones_are_skipped() {
        let got = read(&header_with(&[])).unwrap();
        assert_eq!(got.opts, SynOptions { mss: 536, wscale: None, sack_permitted: false });
        // An experimental option (kind 254, 4 bytes) then END and garbage after it.
        let got = read(&header_with(&[254, 4, 1, 2, 0, 99, 99, 99])).unwrap();
        assert_eq!(got.opts.mss, 536);
        assert_eq!(read(&header_with(&[3, 3, 200, 1])).unwrap().opts.wscale, Some(14), "scale capped at 14");
    }

    #[test]
    fn malformed_options_are_refused() {
        for bad in [
            &[2, 4, 5][..],      // runs past the header
            &[2, 3, 5, 1],       // MSS of the wrong length
            &[3, 4, 7, 1],       // window scale of the wrong length
            &[4, 3, 0, 1],       // SACK-permitted with a body
            &[8, 6, 0, 0, 0, 0], // short timestamps
            &[254, 1, 1, 1],     // a length below 2
            &[1, 1, 1, 254],     // a kind without its length
        ] {
            assert_eq!(read(&header_with(bad)), Err(BadOptions), "{bad:?}");
        }
    }

    #[test]
    fn written_options_read_back_and_offer_only_what_both_ends_can() {
        for opts in [
            SynOptions { mss: 1460, wscale: Some(7), sack_permitted: true },
            SynOptions { mss: 1400, wscale: None, sack_permitted: true },
            SynOptions { mss: 536, wscale: Some(2), sack_permitted: false },
            SynOptions { mss: 1200, wscale: None, sack_permitted: false },
        ] {
            let (b, n) = write(Some(opts.mss), &opts, Some(9));
            assert!(n.is_multiple_of(4) && n <= 12);
            let back = read(&header_with(&b[..n])).unwrap();
            assert_eq!(back.opts.mss, opts.mss);
            assert_eq!(back.opts.wscale, opts.wscale.map(|_| 9), "our scale, and only if the peer offered one");
            assert_eq!(back.opts.sack_permitted, opts.sack_permitted);
            assert!(!back.timestamps);
        }
        let (b, n) = write(Some(1460), &SynOptions { mss: 1460, wscale: Some(7), sack_permitted: false }, None);
        assert_eq!(read(&header_with(&b[..n])).unwrap().opts.wscale, None, "we may decline scaling");
        let (b, n) = write(None, &SynOptions { mss: 536, wscale: Some(7), sack_permitted: true }, Some(7));
        let back = read(&header_with(&b[..n])).unwrap();
        assert!(!back.mss_present && back.opts.wscale == Some(7) && back.opts.sack_permitted);
    }

    /// Whatever a SYN offers, the answer's block is no longer than the
    /// SYN's own (padded to 4): the SYN-ACK is built in the SYN's place.
    #[test]
    fn an_answer_never_outgrows_the_syn() {
        for mask in 0..8u8 {
            let mut syn = Vec::new();
            if mask & 1 != 0 {
                syn.extend_from_slice(&[2, 4, 5, 180]);
            }
            if mask & 2 != 0 {
                syn.extend_from_slice(&[3, 3, 7]);
            }
            if mask & 4 != 0 {
                syn.extend_from_slice(&[4, 2]);
            }
            while !syn.len().is_multiple_of(4) {
                syn.push(OPT_NOP);
            }
            let got = read(&header_with(&syn)).unwrap();
            let (_, n) = write(got.mss_present.then_some(1460), &got.opts, Some(7));
            assert!(n <= syn.len(), "offered {syn:?}: answer {n} bytes");
        }
    }
}
