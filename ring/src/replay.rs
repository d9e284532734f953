//! Anti-replay: per sender, the newest incarnation seen and a 1,024-packet
//! sliding window over its sequence numbers (the IPsec scheme, RFC 4303
//! §3.4.3, with a wide window because reliable-layer bursts reorder). A
//! restarted member comes back with a larger incarnation and a new window.

use std::collections::HashMap;
use std::net::SocketAddrV4;

const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Default)]
struct Window {
    incarnation: u64,
    highest: u64,
    /// Bit (seq mod WINDOW) set: seq was seen (for seq within the window).
    seen: [u64; WORDS],
}

impl Window {
    fn bit(seq: u64) -> (usize, u64) {
        let b = seq % WINDOW;
        ((b / 64) as usize, 1 << (b % 64))
    }
    fn set(&mut self, seq: u64) {
        let (w, m) = Self::bit(seq);
        self.seen[w] |= m;
    }
    fn is_set(&self, seq: u64) -> bool {
        let (w, m) = Self::bit(seq);
        self.seen[w] & m != 0
    }
    fn clear(&mut self, seq: u64) {
        let (w, m) = Self::bit(seq);
        self.seen[w] &= !m;
    }
}

#[derive(Default)]
pub struct ReplayGuard {
    senders: HashMap<SocketAddrV4, Window>,
}

impl ReplayGuard {
    /// True if the packet is new (and records it); false for a replay, a
    /// packet older than the window, or an older incarnation.
    pub fn accept(&mut self, sender: SocketAddrV4, incarnation: u64, seq: u64) -> bool {
        let w = self.senders.entry(sender).or_default();
        if incarnation < w.incarnation {
            return false;
        }
        if incarnation > w.incarnation {
            *w = Window { incarnation, highest: seq, ..Default::default() };
            w.set(seq);
            return true;
        }
        if seq > w.highest {
            // Slide: forget what falls out of the window.
            if seq - w.highest >= WINDOW {
                w.seen = [0; WORDS];
            } else {
                for s in w.highest + 1..seq {
                    w.clear(s);
                }
            }
            w.highest = seq;
            w.set(seq);
            return true;
        }
        if w.highest - seq >= WINDOW || w.is_set(seq) {
            return false;
        }
        w.set(seq);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn replays_old_and_stale_incarnations_are_refused() {
        let s = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let mut g = ReplayGuard::default();
        assert!(g.accept(s, 5, 10));
        assert!(!g.accept(s, 5, 10), "exact replay");
        assert!(g.accept(s, 5, 8), "reordered but new");
        assert!(!g.accept(s, 5, 8));
        assert!(g.accept(s, 5, 100));
        assert!(g.accept(s, 5, 20), "reordered within the window");
        assert!(g.accept(s, 5, 2000));
        assert!(!g.accept(s, 5, 900), "older than the window");
        assert!(!g.accept(s, 5, 100), "slid out, refused");
        assert!(!g.accept(s, 4, 1000), "older incarnation");
        assert!(g.accept(s, 6, 0), "restart with a new incarnation");
        assert!(!g.accept(s, 5, 2001));
    }
}
