//! The per-packet path (`Worker::process`) with a session table and every
//! kind of service (DSR, NAT TCP and UDP, fragments, persistence, a SYN
//! proxy), fed a
//! sequence of frames: each record is a control byte (bit 0: the port,
//! bit 1: handed off by another worker, bit 2: the harness sets the IPv4
//! header and ICMP checksums right, so mutations get past them, and makes
//! a TCP ACK the valid answer to the last cookie SYN-ACK, so the proxied
//! and `l7` paths past the cookie are reached; bits 3–7:
//! how far the clock moves, in 100 ms steps, so timeouts are reached), a
//! length byte and the frame. When the clock moves the worker sweeps and
//! asks for ARP, as its lcore loop does. Nothing may panic, and the
//! counters stay consistent.
//!
//! A second worker, on its own copy of the configuration, takes the same
//! frames in bursts (`Worker::process_burst`, the lean lane the lcores
//! run; bursts end where the clock moves): every frame must get the same
//! verdict and bytes from both, and both must write the same frames of
//! their own (a proxied connection's SYN, ACKs, RSTs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::stats::WorkerStats;
use std::sync::OnceLock;

const CAPACITY: u64 = 256;

const BURST: usize = 32;

/// The configuration's shared state, twice (one per worker: ARP learning
/// changes it), with one hash seed.
fn shared() -> &'static [Shared; 2] {
    static SHARED: OnceLock<[Shared; 2]> = OnceLock::new();
    SHARED.get_or_init(|| {
        let yaml = include_str!("../seeds/config_yaml/two_modes.yaml");
        let cfg = ringlb::config::parse(yaml, "two_modes.yaml").expect("built-in config");
        let one = || {
            Shared::new(&cfg, &[[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]).with_hash_seed(0x5eed).with_cookie_key((1, 2))
        };
        [one(), one()]
    })
}

/// Frames waiting for the burst worker, with what the single one made of them.
#[derive(Default)]
struct Pending {
    input: Vec<Vec<u8>>,
    expected: Vec<(Verdict, Vec<u8>)>,
    ports: Vec<u8>,
    handed_off: Vec<bool>,
    /// The frames the single worker wrote of its own meanwhile.
    own: Vec<(u8, Vec<u8>)>,
}

/// The frames `w` wrote of its own since the last call.
fn own_frames(w: &mut Worker) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    w.drain_frames(|port, f| {
        out.push((port, f.to_vec()));
        true
    });
    out
}

impl Pending {
    /// Runs the pending frames through `w` in bursts of frames with the same
    /// hand-off flag (as the lcore loop does) and compares.
    fn flush(&mut self, w: &mut Worker, now: u32) {
        let mut start = 0;
        while start < self.input.len() {
            let h = self.handed_off[start];
            let mut end = start;
            while end < self.input.len() && end - start < BURST && self.handed_off[end] == h {
                end += 1;
            }
            let mut frames: Vec<Vec<u8>> = self.input[start..end].to_vec();
            let mut slices: Vec<&mut [u8]> = frames.iter_mut().map(|f| f.as_mut_slice()).collect();
            let mut verdicts = [Verdict::Consumed; BURST];
            w.process_burst(&mut slices, &self.ports[start..end], now, h, &mut verdicts);
            for (i, frame) in frames.iter().enumerate() {
                let (v, bytes) = &self.expected[start + i];
                assert_eq!(verdicts[i], *v, "burst and single verdicts differ: {:02x?}", self.input[start + i]);
                assert_eq!(frame, bytes, "burst and single bytes differ: {:02x?}", self.input[start + i]);
            }
            start = end;
        }
        assert_eq!(own_frames(w), self.own, "burst and single workers wrote different frames of their own");
        *self = Pending::default();
    }
}

fuzz_target!(|data: &[u8]| {
    let [shared, shared_b] = shared();
    let stats = WorkerStats::new(16);
    let mut w = Worker::new(0, shared, &stats);
    let stats_b = WorkerStats::new(16);
    let mut b = Worker::new(0, shared_b, &stats_b);
    let mut pending = Pending::default();
    let mut now: u32 = 0;
    // The last SYN-ACK the worker answered a SYN with: its frame.
    let mut last_synack: Option<Vec<u8>> = None;
    let mut rest = data;
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, tail) = tail.split_at(n);
        rest = tail;
        let advance = u32::from(ctl >> 3) * 100;
        if advance > 0 {
            pending.flush(&mut b, now);
        }
        now = now.wrapping_add(advance);
        if advance > 0 {
            w.due_solicits(now, |_, _| true);
            b.due_solicits(now, |_, _| true);
        }
        let mut buf = frame.to_vec();
        if ctl & 4 != 0 {
            if let Some(synack) = &last_synack {
                answer_cookie(&mut buf, synack);
            }
            fix_checksums(&mut buf);
        }
        let input = buf.clone();
        let v = w.process(&mut buf, ctl & 1, now, ctl & 2 != 0);
        if matches!(v, Verdict::Tx(_)) && buf.len() >= 54 && buf[23] == 6 && buf[47] == 0x12 {
            last_synack = Some(buf.clone());
        }
        pending.input.push(input);
        pending.expected.push((v, buf));
        pending.ports.push(ctl & 1);
        pending.handed_off.push(ctl & 2 != 0);
        let own = own_frames(&mut w);
        for (port, f) in &own {
            assert!(usize::from(*port) < shared.ports.len(), "own frame out of a port that does not exist");
            assert!(f.len() >= 60, "own frame shorter than Ethernet's minimum");
        }
        pending.own.extend(own);
        if let Verdict::Tx(port) | Verdict::Defer { port, .. } = v {
            assert!(usize::from(port) < shared.ports.len(), "sent out of a port that does not exist");
        }
        if advance > 0 {
            // The frame the clock moved for, then the sweep: the same for both.
            pending.flush(&mut b, now);
            w.sweep(now);
            b.sweep(now);
            assert_eq!(own_frames(&mut w), own_frames(&mut b), "the sweeps wrote different frames");
        }
        let active = stats.sessions_active.get();
        assert!(active <= CAPACITY, "{active} sessions in a table of {CAPACITY}");
        // Every session that ended or is active was created once; renewals
        // (a new connection of a tuple, in place) are created but not added.
        let ended = stats.sessions_expired.get() + stats.sessions_evicted.get() + stats.down_resets.get();
        assert!(stats.sessions_created.get() >= active + ended, "sessions counted out of thin air");
        let proxied = stats.proxy_active.get();
        assert!(proxied <= 64 && proxied <= stats.proxy_opened.get(), "{proxied} proxied connections");
    }
    pending.flush(&mut b, now);
});

/// Makes a TCP ACK (Ethernet + IPv4 without options) the client's answer
/// to `synack`: its flow, sequence number ISN + 1, acknowledgement cookie + 1.
fn answer_cookie(f: &mut [u8], synack: &[u8]) {
    if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 6 || f[47] & 0x12 != 0x10 {
        return;
    }
    f[26..30].copy_from_slice(&synack[30..34]); // addresses, swapped back
    f[30..34].copy_from_slice(&synack[26..30]);
    f[34..36].copy_from_slice(&synack[36..38]); // ports
    f[36..38].copy_from_slice(&synack[34..36]);
    f[38..42].copy_from_slice(&synack[42..46]); // seq = the SYN-ACK's ack
    let cookie = u32::from_be_bytes([synack[38], synack[39], synack[40], synack[41]]);
    f[42..46].copy_from_slice(&cookie.wrapping_add(1).to_be_bytes());
}

/// RFC 1071 checksum, written here (not the code under test's).
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sets the IPv4 header checksum of an Ethernet + IPv4 frame, and the ICMP
/// checksum when it carries ICMP, wherever the lengths allow.
fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    f[24..26].fill(0);
    let c = inet_checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    if f[23] == 1 && total >= ihl + 4 && f.len() >= 14 + total {
        let icmp = 14 + ihl;
        f[icmp + 2..icmp + 4].fill(0);
        let c = inet_checksum(&f[icmp..14 + total]);
        f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    }
}
