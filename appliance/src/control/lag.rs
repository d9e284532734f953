//! A small log-linear histogram of sync lag (microseconds): 16 buckets per
//! power of two, so quantiles are within ~6 % of the truth, in 600 counters.

const SUB: u32 = 16;
const BUCKETS: usize = 16 + 40 * SUB as usize;

pub struct Lag {
    counts: Box<[u64]>,
    total: u64,
}

impl Default for Lag {
    fn default() -> Self {
        Lag { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0 }
    }
}

fn bucket(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // ≥ 4
    let sub = (us >> (e - 4)) & u64::from(SUB - 1);
    (16 + (e - 4) * SUB + sub as u32).min(BUCKETS as u32 - 1) as usize
}

/// The smallest value of bucket `b`.
fn floor(b: usize) -> u64 {
    if b < 16 {
        return b as u64;
    }
    let e = (b - 16) as u32 / SUB + 4;
    let sub = (b - 16) as u64 % u64::from(SUB);
    (1u64 << e) | (sub << (e - 4))
}

impl Lag {
    pub fn record(&mut self, us: u64, n: u64) {
        self.counts[bucket(us)] += n;
        self.total += n;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1), in microseconds; None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let want = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(floor(b));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut l = Lag::default();
        assert_eq!(l.quantile(0.5), None);
        for us in 1..=10_000u64 {
            l.record(us, 1);
        }
        let p50 = l.quantile(0.5).unwrap();
        let p99 = l.quantile(0.99).unwrap();
        assert!((4700..=5000).contains(&p50), "{p50}");
        assert!((9300..=9900).contains(&p99), "{p99}");
        for b in 0..BUCKETS - 1 {
            assert!(floor(b) < floor(b + 1), "bucket {b}");
            assert_eq!(bucket(floor(b)), b);
        }
    }
}
