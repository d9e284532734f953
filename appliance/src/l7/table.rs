//! A worker's proxied connections: a fixed slab of entries and an
//! open-addressed index over them, all allocated when the worker starts
//! (so a flood of valid cookies finds the table full, never the
//! allocator). Proxied connections are fewer and larger than L4 sessions
//! (a handshake state machine, later a request buffer), so they live
//! here, not in the 32-byte slots of `session::SessionTable`.
//!
//! The index holds, per slot, a 32-bit tag of the key's hash and the
//! entry's number: most probes that miss end at the tag, without reading
//! the key. Deletes shift later slots back (no tombstones), as in the
//! session table.

/// The table is full: the new connection is refused (a counted drop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

pub struct ConnTable<T> {
    /// 0: empty; else `tag << 32 | (entry + 1)`.
    index: Box<[u64]>,
    mask: usize,
    /// Per entry: its key (0: free; a flow's key never is 0) and hash.
    keys: Box<[u128]>,
    hashes: Box<[u64]>,
    entries: Box<[T]>,
    last_seen_ms: Box<[u32]>,
    /// Entry numbers not in use, taken from the end.
    free: Vec<u32>,
    /// Where the expiry sweep goes on (an entry number).
    sweep_at: usize,
}

impl<T: Copy + Default> ConnTable<T> {
    /// Room for `capacity` connections; the index is at most half full.
    /// Panics without the memory (tests; the appliance uses `try_new`).
    pub fn new(capacity: usize) -> ConnTable<T> {
        Self::try_new(capacity).expect("memory for the connection table")
    }

    /// As `new`, but a machine without the memory gets an error naming
    /// the size, not an abort (tables are made before the ports start).
    pub fn try_new(capacity: usize) -> Result<ConnTable<T>, String> {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        let slots = (capacity * 2).next_power_of_two();
        let bytes = slots * 8 + capacity * (16 + 8 + 4 + 4 + std::mem::size_of::<T>());
        let too_big = |_| format!("cannot allocate {} MiB for {capacity} proxied connections", bytes.div_ceil(1 << 20));
        let mut free = Vec::new();
        free.try_reserve_exact(capacity).map_err(too_big)?;
        free.extend((0..capacity as u32).rev());
        Ok(ConnTable {
            index: filled(slots, 0).map_err(too_big)?,
            mask: slots - 1,
            keys: filled(capacity, 0).map_err(too_big)?,
            hashes: filled(capacity, 0).map_err(too_big)?,
            entries: filled(capacity, T::default()).map_err(too_big)?,
            last_seen_ms: filled(capacity, 0).map_err(too_big)?,
            free,
            sweep_at: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len() - self.free.len()
    }

    /// How many connections it can hold.
    pub fn capacity(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry for `key` (whose hash is `hash`), touched at `now_ms`.
    pub fn get_mut(&mut self, key: u128, hash: u64, now_ms: u32) -> Option<&mut T> {
        let entry = self.find(key, hash)?.1;
        self.last_seen_ms[entry] = now_ms;
        Some(&mut self.entries[entry])
    }

    /// Adds a connection; an existing one of the same key is replaced.
    /// `key` is not 0.
    pub fn insert(&mut self, key: u128, hash: u64, value: T, now_ms: u32) -> Result<&mut T, Full> {
        debug_assert_ne!(key, 0, "0 marks a free entry");
        if let Some((_, entry)) = self.find(key, hash) {
            self.entries[entry] = value;
            self.last_seen_ms[entry] = now_ms;
            return Ok(&mut self.entries[entry]);
        }
        let entry = self.free.pop().ok_or(Full)? as usize;
        let mut slot = home(hash, self.mask);
        while self.index[slot] != 0 {
            slot = (slot + 1) & self.mask;
        }
        self.index[slot] = tag(hash) << 32 | (entry as u64 + 1);
        self.keys[entry] = key;
        self.hashes[entry] = hash;
        self.entries[entry] = value;
        self.last_seen_ms[entry] = now_ms;
        Ok(&mut self.entries[entry])
    }

    /// Removes `key`'s connection, giving it back.
    pub fn remove(&mut self, key: u128, hash: u64) -> Option<T> {
        let (slot, entry) = self.find(key, hash)?;
        let value = self.entries[entry];
        self.unlink(slot, entry);
        Some(value)
    }

    /// Visits up to `budget` entries from where the last sweep stopped
    /// and removes those idle longer than `idle_limit(entry)` ms. Returns
    /// how many went.
    pub fn sweep(&mut self, now_ms: u32, budget: usize, mut idle_limit: impl FnMut(&T) -> u32) -> usize {
        self.visit(budget, |_, value, last_seen_ms| now_ms.wrapping_sub(last_seen_ms) <= idle_limit(value))
    }

    /// Visits up to `budget` entries from where the last visit stopped,
    /// giving each its key, value (to change: timers) and when it was last
    /// touched; an entry for which `keep` says false is removed. Returns
    /// how many were removed.
    pub fn visit(&mut self, budget: usize, mut keep: impl FnMut(u128, &mut T, u32) -> bool) -> usize {
        let mut removed = 0;
        for _ in 0..budget.min(self.keys.len()) {
            let entry = self.sweep_at;
            self.sweep_at = (self.sweep_at + 1) % self.keys.len();
            if self.keys[entry] == 0 {
                continue; // free
            }
            if !keep(self.keys[entry], &mut self.entries[entry], self.last_seen_ms[entry]) {
                if let Some((slot, _)) = self.find(self.keys[entry], self.hashes[entry]) {
                    self.unlink(slot, entry);
                    removed += 1;
                }
            }
        }
        removed
    }

    fn find(&self, key: u128, hash: u64) -> Option<(usize, usize)> {
        let want = tag(hash);
        let mut slot = home(hash, self.mask);
        loop {
            let v = self.index[slot];
            if v == 0 {
                return None;
            }
            let entry = (v as u32 - 1) as usize;
            if v >> 32 == want && self.keys[entry] == key {
                return Some((slot, entry));
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// Empties `slot` (which holds `entry`) and shifts back the slots after
    /// it whose probe would otherwise stop at the hole.
    fn unlink(&mut self, mut hole: usize, entry: usize) {
        self.keys[entry] = 0;
        self.free.push(entry as u32);
        let mut next = (hole + 1) & self.mask;
        loop {
            let v = self.index[next];
            if v == 0 {
                break;
            }
            let home_of_next = home_of_tag(v >> 32, self.mask);
            // Move it into the hole unless its home lies in (hole, next].
            if next.wrapping_sub(home_of_next) & self.mask >= next.wrapping_sub(hole) & self.mask {
                self.index[hole] = v;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.index[hole] = 0;
    }
}

/// The tag is the hash's top 32 bits; the home slot is taken from the
/// tag's top bits, so the index can find a slot's home from the tag alone
/// (backward-shift delete needs it).
/// `n` copies of `v`, or the allocator's refusal.
fn filled<V: Clone>(n: usize, v: V) -> Result<Box<[V]>, std::collections::TryReserveError> {
    let mut b = Vec::new();
    b.try_reserve_exact(n)?;
    b.resize(n, v);
    Ok(b.into_boxed_slice())
}

fn tag(hash: u64) -> u64 {
    hash >> 32
}

fn home(hash: u64, mask: usize) -> usize {
    home_of_tag(tag(hash), mask)
}

fn home_of_tag(tag: u64, mask: usize) -> usize {
    // `mask + 1` slots, at most 2^32: the tag's top bits.
    let bits = (mask + 1).trailing_zeros();
    ((tag << 32) >> (64 - bits.max(1))) as usize & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    use std::collections::HashMap;

    fn hash(key: u128) -> u64 {
        let m = (key as u64 ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul((key >> 64) as u64 | 1);
        m.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ (m >> 29)
    }

    #[test]
    fn inserted_connections_are_found_replaced_and_removed() {
        let mut t: ConnTable<u32> = ConnTable::new(100);
        for k in 1..=100u128 {
            t.insert(k, hash(k), k as u32, 0).unwrap();
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.insert(101, hash(101), 0, 0).err(), Some(Full), "the slab is full");
        t.insert(7, hash(7), 700, 0).unwrap();
        assert_eq!(t.len(), 100, "a key inserted again replaces its entry");
        assert_eq!(t.get_mut(7, hash(7), 1).copied(), Some(700));
        assert_eq!(t.remove(7, hash(7)), Some(700));
        assert_eq!(t.get_mut(7, hash(7), 1), None);
        t.insert(101, hash(101), 101, 0).unwrap();
        for k in (1..=101u128).filter(|&k| k != 7) {
            assert_eq!(t.get_mut(k, hash(k), 1).copied(), Some(k as u32), "key {k}");
        }
    }

    /// Random inserts and removes against a HashMap, with keys that share
    /// home slots (a weak hash), so probe runs and backward shifts are long.
    #[test]
    fn it_agrees_with_a_hash_map_under_churn() {
        let weak = |k: u128| (k as u64 % 64) << 58 | (k as u64) << 32;
        let mut t: ConnTable<u64> = ConnTable::new(500);
        let mut m: HashMap<u128, u64> = HashMap::new();
        let mut rng = SmallRng::seed_from_u64(7);
        for step in 0..50_000u64 {
            let k = rng.random_range(1..800u128);
            if rng.random_bool(0.55) {
                match t.insert(k, weak(k), step, 0) {
                    Ok(_) => {
                        m.insert(k, step);
                    }
                    Err(Full) => assert!(m.len() == 500 && !m.contains_key(&k)),
                }
            } else {
                assert_eq!(t.remove(k, weak(k)), m.remove(&k), "step {step}, key {k}");
            }
            assert_eq!(t.len(), m.len());
        }
        for (&k, &v) in &m {
            assert_eq!(t.get_mut(k, weak(k), 0).copied(), Some(v));
        }
    }

    #[test]
    fn the_sweep_removes_only_idle_connections_within_its_budget() {
        let mut t: ConnTable<u32> = ConnTable::new(10);
        for k in 1..=10u128 {
            // Odd keys have a short idle limit (their value is 1).
            t.insert(k, hash(k), (k % 2) as u32, 0).unwrap();
        }
        let limit = |v: &u32| if *v == 1 { 100 } else { 10_000 };
        assert_eq!(t.sweep(50, 10, limit), 0, "none idle yet");
        t.get_mut(3, hash(3), 150);
        assert_eq!(t.sweep(160, 4, limit), 1, "entries 0..4 visited: key 1 expired, key 3 was touched");
        assert_eq!(t.sweep(160, 6, limit), 3, "keys 5, 7, 9");
        assert_eq!(t.len(), 6);
        assert!(t.get_mut(3, hash(3), 160).is_some());
        assert!(t.get_mut(5, hash(5), 160).is_none());
        assert_eq!(t.sweep(20_000, 100, limit), 6, "a budget over the size visits each entry once");
        assert!(t.is_empty());
    }
}
