//! Smooth weighted round robin (the interleaving nginx uses): each pick adds
//! every server's weight to its credit, takes the largest credit, and charges
//! it the total. Over any window of `sum(weights)` picks each server gets
//! exactly its weight, spread out rather than in bursts.

//!
//! The weights are read at each pick (`weight(i)`): the control thread
//! changes them while workers run (a server down gets 0, `least_load`
//! scales them by reported load), and a zero weight is never picked.

pub struct SmoothWrr {
    credit: Box<[i64]>,
}

impl SmoothWrr {
    pub fn new(servers: usize) -> Self {
        SmoothWrr { credit: vec![0; servers].into_boxed_slice() }
    }

    /// The next server, by the weights `weight(i)` now; None when all are 0.
    #[inline]
    pub fn pick(&mut self, weight: impl Fn(usize) -> u32) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut total = 0i64;
        for i in 0..self.credit.len() {
            let w = i64::from(weight(i));
            if w == 0 {
                continue;
            }
            total += w;
            self.credit[i] += w;
            if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.credit[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_matches_weights_exactly() {
        let weights = [1, 2, 3];
        let mut w = SmoothWrr::new(3);
        for _ in 0..10 {
            let mut counts = [0; 3];
            for _ in 0..6 {
                counts[w.pick(|i| weights[i]).unwrap()] += 1;
            }
            assert_eq!(counts, [1, 2, 3]);
        }
    }

    #[test]
    fn zero_weight_server_is_never_picked() {
        let weights = [0, 5, 1];
        let mut w = SmoothWrr::new(3);
        for _ in 0..600 {
            assert_ne!(w.pick(|i| weights[i]), Some(0));
        }
        assert_eq!(w.pick(|_| 0), None, "every server down");
    }

    #[test]
    fn weights_changed_between_picks_take_effect_at_once() {
        let mut weights = [1u32, 1, 1];
        let mut w = SmoothWrr::new(3);
        for _ in 0..30 {
            w.pick(|i| weights[i]);
        }
        weights[1] = 0;
        for _ in 0..60 {
            assert_ne!(w.pick(|i| weights[i]), Some(1));
        }
        weights[1] = 4;
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[w.pick(|i| weights[i]).unwrap()] += 1;
        }
        assert!(counts[1] > 350 && counts[0] > 80 && counts[2] > 80, "{counts:?}");
    }
}
