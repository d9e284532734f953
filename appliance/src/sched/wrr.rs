//! Smooth weighted round robin (the interleaving nginx uses): each pick adds
//! every server's weight to its credit, takes the largest credit, and charges
//! it the total. Over any window of `sum(weights)` picks each server gets
//! exactly its weight, spread out rather than in bursts.

pub struct SmoothWrr {
    weights: Box<[i64]>,
    credit: Box<[i64]>,
    total: i64,
}

impl SmoothWrr {
    /// `weights` must be non-empty with at least one non-zero weight (config validation ensures it).
    pub fn new(weights: &[u32]) -> Self {
        SmoothWrr {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            credit: vec![0; weights.len()].into_boxed_slice(),
            total: weights.iter().map(|&w| i64::from(w)).sum(),
        }
    }

    #[inline]
    pub fn pick(&mut self) -> usize {
        let mut best = 0;
        for i in 0..self.weights.len() {
            self.credit[i] += self.weights[i];
            if self.credit[i] > self.credit[best] {
                best = i;
            }
        }
        self.credit[best] -= self.total;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_matches_weights_exactly() {
        let mut w = SmoothWrr::new(&[1, 2, 3]);
        for _ in 0..10 {
            let mut counts = [0; 3];
            for _ in 0..6 {
                counts[w.pick()] += 1;
            }
            assert_eq!(counts, [1, 2, 3]);
        }
    }

    #[test]
    fn zero_weight_server_is_never_picked() {
        let mut w = SmoothWrr::new(&[0, 5, 1]);
        for _ in 0..600 {
            assert_ne!(w.pick(), 0);
        }
    }
}
