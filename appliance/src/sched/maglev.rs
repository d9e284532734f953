//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): every server walks
//! its own permutation of a prime-sized table and claims the first free slot
//! on its turn. Weights are honoured by giving server i a turn in round r only
//! when ⌊r·wᵢ/w_max⌋ grows, so turns (and slots) are proportional to weight.
//! Lookup is one multiply-shift and one load: no division per packet.

pub const DEFAULT_TABLE_SIZE: usize = 65_537;

pub struct Maglev {
    table: Box<[u16]>,
    servers: usize,
}

/// Server identity for the permutation: a stable name (e.g. "ip:port"), so
/// adding or removing one server leaves the others' permutations unchanged.
pub struct Backend<'a> {
    pub name: &'a str,
    pub weight: u32,
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    crate::session::mix(h, seed)
}

pub fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

impl Maglev {
    /// Builds the table. `size` must be prime and larger than the number of
    /// backends; at least one backend must have a non-zero weight.
    pub fn new(backends: &[Backend], size: usize) -> Maglev {
        assert!(is_prime(size) && size > backends.len(), "maglev size must be a prime > servers");
        assert!(backends.len() < usize::from(u16::MAX));
        let m = size as u64;
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|b| {
                let offset = fnv1a(b.name.as_bytes(), 0x5bd1_e995) % m;
                let skip = fnv1a(b.name.as_bytes(), 0x1b87_3593) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let w_max = u64::from(backends.iter().map(|b| b.weight).max().unwrap_or(0));
        assert!(w_max > 0, "maglev needs a non-zero weight");
        let mut next = vec![0u64; backends.len()];
        let mut table = vec![u16::MAX; size];
        let mut filled = 0;
        let mut round: u64 = 0;
        while filled < size {
            round += 1;
            for (i, b) in backends.iter().enumerate() {
                let w = u64::from(b.weight);
                if (round * w) / w_max == ((round - 1) * w) / w_max {
                    continue; // not this server's turn in this round
                }
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u16::MAX {
                        table[slot] = i as u16;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Maglev { table: table.into_boxed_slice(), servers: backends.len() }
    }

    /// The backend index for a flow hash.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> usize {
        let slot = ((u128::from(flow_hash as u32) * self.table.len() as u128) >> 32) as usize;
        usize::from(self.table[slot])
    }

    /// How many servers the table spreads over.
    pub fn servers(&self) -> usize {
        self.servers
    }

    pub fn table(&self) -> &[u16] {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.1.{}.{}:80", i / 200, i % 200 + 1)).collect()
    }

    fn shares(t: &Maglev, n: usize) -> Vec<f64> {
        let mut c = vec![0usize; n];
        for &s in t.table() {
            c[usize::from(s)] += 1;
        }
        c.iter().map(|&x| x as f64 / t.table().len() as f64).collect()
    }

    #[test]
    fn slot_shares_within_one_percent_of_weight_shares() {
        for weights in [vec![1, 1, 1], vec![1, 2, 3], vec![5, 1, 1, 1, 2], vec![10, 3, 7, 1, 1, 8, 2, 4]] {
            let n = names(weights.len());
            let bs: Vec<Backend> = n.iter().zip(&weights).map(|(name, &w)| Backend { name, weight: w }).collect();
            let t = Maglev::new(&bs, DEFAULT_TABLE_SIZE);
            let total: u32 = weights.iter().sum();
            for (i, s) in shares(&t, weights.len()).iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                assert!((s - want).abs() <= 0.01, "weights {weights:?}: server {i} has {s:.4}, wants {want:.4}");
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_at_most_one_nth_plus_two_percent() {
        for n in [3usize, 5, 10, 20] {
            let all = names(n);
            let bs: Vec<Backend> = all.iter().map(|name| Backend { name, weight: 1 }).collect();
            let before = Maglev::new(&bs, DEFAULT_TABLE_SIZE);
            for removed in 0..n {
                let kept: Vec<Backend> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != removed)
                    .map(|(_, name)| Backend { name, weight: 1 })
                    .collect();
                let after = Maglev::new(&kept, DEFAULT_TABLE_SIZE);
                // Map the new table's indices back to the original servers.
                let orig = |i: u16| {
                    if usize::from(i) >= removed {
                        usize::from(i) + 1
                    } else {
                        usize::from(i)
                    }
                };
                let moved =
                    before.table().iter().zip(after.table()).filter(|(b, a)| usize::from(**b) != orig(**a)).count();
                let frac = moved as f64 / DEFAULT_TABLE_SIZE as f64;
                assert!(frac <= 1.0 / n as f64 + 0.02, "n={n} removed={removed}: {frac:.4} of slots moved");
            }
        }
    }

    #[test]
    fn lookup_spreads_hashes_over_all_servers() {
        let n = names(4);
        let bs: Vec<Backend> = n.iter().map(|name| Backend { name, weight: 1 }).collect();
        let t = Maglev::new(&bs, 251);
        let mut seen = [0; 4];
        for i in 0..10_000u64 {
            seen[t.lookup(crate::session::mix(i, 7))] += 1;
        }
        assert!(seen.iter().all(|&c| c > 2000), "{seen:?}");
    }
}
