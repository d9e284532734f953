//! Anti-replay: per sender, the newest incarnation seen and a 64-packet
//! sliding window over its sequence numbers (the IPsec scheme, RFC 4303 §3.4.3).
//! A restarted member comes back with a larger incarnation and starts a new window.

use std::collections::HashMap;
use std::net::SocketAddrV4;

const WINDOW: u64 = 64;

#[derive(Default)]
struct Window {
    incarnation: u64,
    highest: u64,
    /// Bit i set: highest - i was seen.
    seen: u64,
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
            *w = Window { incarnation, highest: seq, seen: 1 };
            return true;
        }
        if seq > w.highest {
            let shift = seq - w.highest;
            w.seen = if shift >= WINDOW { 1 } else { (w.seen << shift) | 1 };
            w.highest = seq;
            return true;
        }
        let age = w.highest - seq;
        if age >= WINDOW || w.seen & (1 << age) != 0 {
            return false;
        }
        w.seen |= 1 << age;
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
        assert!(!g.accept(s, 5, 20), "older than the window");
        assert!(!g.accept(s, 4, 1000), "older incarnation");
        assert!(g.accept(s, 6, 0), "restart with a new incarnation");
        assert!(!g.accept(s, 5, 101));
    }
}
