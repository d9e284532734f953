//! Gratuitous ARP for the VIPs this appliance has just taken over: a fixed
//! number of announcements, spaced out, so a lost one does not leave the
//! segment's caches pointing at an appliance that died (RFC 5227's ARP
//! announcements; keepalived sends five). Worker 0 sends them from its
//! housekeeping tick; nothing here allocates after start.

use crate::config::Garp;

#[derive(Clone, Copy, Debug)]
struct Pending {
    vip: u32,
    left: u32,
    next_ms: u32,
}

pub(super) struct Announcer {
    garp: Garp,
    /// One slot per VIP at most (a second takeover restarts the count).
    pending: Vec<Pending>,
    /// The number of VIPs: the slots preallocated.
    limit: usize,
}

impl Announcer {
    pub fn new(garp: Garp, vips: usize) -> Announcer {
        Announcer { garp, pending: Vec::with_capacity(vips), limit: vips }
    }

    /// Announce `vip` `count` times from now on.
    pub fn start(&mut self, vip: u32, now_ms: u32) {
        let p = Pending { vip, left: self.garp.count, next_ms: now_ms };
        if let Some(slot) = self.pending.iter_mut().find(|p| p.vip == vip) {
            *slot = p;
        } else if self.pending.len() < self.limit {
            self.pending.push(p);
        }
        // (More VIPs than configured cannot come from the control thread.)
    }

    /// Stop announcing `vip` (it moved away again).
    pub fn stop(&mut self, vip: u32) {
        self.pending.retain(|p| p.vip != vip);
    }

    /// Calls `send(vip)` for every announcement due; one that could not go
    /// out (no buffer, TX full) is tried again on the next call.
    pub fn due(&mut self, now_ms: u32, mut send: impl FnMut(u32) -> bool) {
        let interval = self.garp.interval_ms;
        for p in &mut self.pending {
            if p.left > 0 && now_ms.wrapping_sub(p.next_ms) < u32::MAX / 2 && send(p.vip) {
                p.left -= 1;
                p.next_ms = now_ms.wrapping_add(interval);
            }
        }
        self.pending.retain(|p| p.left > 0);
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_at(a: &mut Announcer, until: u32) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for t in 0..=until {
            a.due(t, |vip| {
                out.push((t, vip));
                true
            });
        }
        out
    }

    #[test]
    fn announces_count_times_interval_apart() {
        let mut a = Announcer::new(Garp { count: 3, interval_ms: 100 }, 4);
        a.start(7, 0);
        assert_eq!(sent_at(&mut a, 1000), vec![(0, 7), (100, 7), (200, 7)]);
        assert!(a.is_idle());
    }

    #[test]
    fn a_failed_send_is_retried_and_a_second_takeover_restarts_the_count() {
        let mut a = Announcer::new(Garp { count: 2, interval_ms: 10 }, 1);
        a.start(7, 0);
        a.due(0, |_| false);
        let mut n = 0;
        a.due(1, |_| {
            n += 1;
            true
        });
        assert_eq!(n, 1);
        a.start(7, 5);
        assert_eq!(sent_at(&mut a, 100).len(), 2, "restarted: two more");
    }

    #[test]
    fn stop_cancels_and_capacity_is_never_exceeded() {
        let mut a = Announcer::new(Garp { count: 5, interval_ms: 10 }, 1);
        a.start(1, 0);
        a.start(2, 0);
        a.stop(1);
        assert!(a.is_idle());
        assert!(sent_at(&mut a, 100).is_empty());
    }
}
