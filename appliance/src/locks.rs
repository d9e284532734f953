//! Client locks for services with persistence: a client's
//! address → the server its new connections go to, for a fixed lifetime
//! from the lock's creation. A client's connections land on many workers
//! (flows are owned by client endpoint, not address), so every worker holds
//! every lock; the control thread copies them between workers and siblings.
//!
//! When two locks for one client differ (two appliances locked it at the
//! same moment), every copy keeps the same one: the lower rank (origin's
//! ring address, then its worker), and for one rank the later expiry.
//! Preallocated open addressing, one writer (its worker), no locks.

use crate::session::mix;

/// One lock, as workers and the control thread pass it around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRecord {
    pub client_ip: u32,
    pub service: u16,
    /// Global server id.
    pub server: u16,
    /// Lifetime left, in milliseconds.
    pub remaining_ms: u32,
    /// Who made it: (ring address order << 8) | worker. Lower wins.
    pub rank: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    /// 0 = empty; else OCCUPIED | client_ip << 16 | service.
    key: u64,
    rank: u64,
    expires_ms: u32,
    server: u16,
}

const OCCUPIED: u64 = 1 << 63;
const EMPTY: Slot = Slot { key: 0, rank: 0, expires_ms: 0, server: 0 };

/// What `offer` did with a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Inserted,
    /// It beat the lock held for that client.
    Replaced,
    /// The lock held beats it (or is the same).
    Kept,
    Full,
}

pub struct LockTable {
    slots: Box<[Slot]>,
    mask: usize,
    len: usize,
    max_len: usize,
    seed: u64,
    sweep_cursor: usize,
}

fn key(client_ip: u32, service: u16) -> u64 {
    OCCUPIED | (u64::from(client_ip) << 16) | u64::from(service)
}

/// Alive at `now`: the expiry is ahead (wrapping millisecond clock).
fn alive(expires_ms: u32, now_ms: u32) -> bool {
    (expires_ms.wrapping_sub(now_ms) as i32) > 0
}

impl LockTable {
    pub fn new(capacity: usize, seed: u64) -> LockTable {
        Self::try_new(capacity, seed).expect("memory for the lock table")
    }

    /// As [`LockTable::new`], but a refused allocation is an error.
    pub fn try_new(capacity: usize, seed: u64) -> Result<LockTable, String> {
        let capacity = capacity.max(1);
        let slots = (capacity + capacity / 3).next_power_of_two().max(8);
        let mut v = Vec::new();
        v.try_reserve_exact(slots).map_err(|e| format!("cannot allocate a lock table of {slots} slots: {e}"))?;
        v.resize(slots, EMPTY);
        Ok(LockTable { slots: v.into_boxed_slice(), mask: slots - 1, len: 0, max_len: capacity, seed, sweep_cursor: 0 })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, k: u64) -> usize {
        mix(k ^ self.seed, 0x6c6f_636b) as usize & self.mask
    }

    fn find(&self, k: u64) -> Option<usize> {
        let mut i = self.home(k);
        loop {
            let s = &self.slots[i];
            if s.key == 0 {
                return None;
            }
            if s.key == k {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The live lock for a client of a service.
    pub fn get(&mut self, client_ip: u32, service: u16, now_ms: u32) -> Option<LockRecord> {
        let i = self.find(key(client_ip, service))?;
        let s = self.slots[i];
        if !alive(s.expires_ms, now_ms) {
            self.remove_at(i);
            return None;
        }
        Some(LockRecord {
            client_ip,
            service,
            server: s.server,
            remaining_ms: s.expires_ms.wrapping_sub(now_ms),
            rank: s.rank,
        })
    }

    /// Installs `lock` unless a lock held for the same client beats it.
    pub fn offer(&mut self, lock: LockRecord, now_ms: u32) -> Offer {
        let k = key(lock.client_ip, lock.service);
        let expires_ms = now_ms.wrapping_add(lock.remaining_ms.max(1));
        let new = Slot { key: k, rank: lock.rank, expires_ms, server: lock.server };
        if let Some(i) = self.find(k) {
            let held = self.slots[i];
            let wins = !alive(held.expires_ms, now_ms)
                || lock.rank < held.rank
                || (lock.rank == held.rank && (expires_ms.wrapping_sub(held.expires_ms) as i32) > 0);
            if !wins || (held.server == new.server && held.rank == new.rank && held.expires_ms == expires_ms) {
                return Offer::Kept;
            }
            self.slots[i] = new;
            return Offer::Replaced;
        }
        if self.len >= self.max_len {
            return Offer::Full;
        }
        let mut i = self.home(k);
        while self.slots[i].key != 0 {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = new;
        self.len += 1;
        Offer::Inserted
    }

    fn remove_at(&mut self, mut i: usize) {
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            if self.slots[j].key == 0 {
                break;
            }
            let home = self.home(self.slots[j].key);
            let in_between = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !in_between {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = EMPTY;
    }

    /// Removes expired locks among up to `budget` slots; returns how many.
    pub fn sweep(&mut self, now_ms: u32, budget: usize) -> usize {
        let mut expired = 0;
        let mut visited = 0;
        while visited < budget.min(self.slots.len()) {
            let i = self.sweep_cursor;
            let s = self.slots[i];
            if s.key != 0 && !alive(s.expires_ms, now_ms) {
                self.remove_at(i);
                expired += 1;
            } else {
                self.sweep_cursor = (i + 1) & self.mask;
                visited += 1;
            }
        }
        expired
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The live lock in slot `i` (for dumps).
    pub fn entry_at(&self, i: usize, now_ms: u32) -> Option<LockRecord> {
        let s = self.slots.get(i)?;
        (s.key != 0 && alive(s.expires_ms, now_ms)).then(|| LockRecord {
            client_ip: ((s.key & !OCCUPIED) >> 16) as u32,
            service: s.key as u16,
            server: s.server,
            remaining_ms: s.expires_ms.wrapping_sub(now_ms),
            rank: s.rank,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(client: u32, server: u16, rank: u64, remaining_ms: u32) -> LockRecord {
        LockRecord { client_ip: client, service: 1, server, remaining_ms, rank }
    }

    #[test]
    fn a_lock_lives_its_lifetime_then_expires() {
        let mut t = LockTable::new(16, 3);
        assert_eq!(t.offer(lock(7, 2, 10, 1000), 100), Offer::Inserted);
        let l = t.get(7, 1, 600).unwrap();
        assert_eq!((l.server, l.remaining_ms), (2, 500));
        assert!(t.get(7, 2, 600).is_none(), "another service");
        assert!(t.get(7, 1, 1100).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn concurrent_locks_converge_on_the_lower_rank_whatever_the_order() {
        // Ranks: (ring address order << 8) | worker; a's address is smaller.
        let a = lock(9, 1, (0x0aff_0001_1ce8 << 8) | 1, 5000);
        let b = lock(9, 2, 0x0aff_0002_1ce8 << 8, 5000);
        let mut x = LockTable::new(16, 1);
        let mut y = LockTable::new(16, 2);
        assert_eq!(x.offer(a, 0), Offer::Inserted);
        assert_eq!(x.offer(b, 1), Offer::Kept);
        assert_eq!(y.offer(b, 0), Offer::Inserted);
        assert_eq!(y.offer(a, 1), Offer::Replaced);
        assert_eq!(x.get(9, 1, 2).unwrap().server, 1);
        assert_eq!(y.get(9, 1, 2).unwrap().server, 1);
        // A newer lock of the same origin (after the old one's life) replaces it.
        assert_eq!(x.offer(lock(9, 3, a.rank, 5000), 6000), Offer::Replaced);
        // An expired lock never wins, whatever its rank.
        let mut z = LockTable::new(16, 1);
        z.offer(lock(9, 1, 1, 10), 0);
        assert_eq!(z.offer(lock(9, 2, 99, 1000), 20), Offer::Replaced);
    }

    #[test]
    fn full_table_refuses_and_sweep_frees() {
        let mut t = LockTable::new(4, 1);
        for c in 0..4 {
            assert_eq!(t.offer(lock(c, 1, 1, 100), 0), Offer::Inserted);
        }
        assert_eq!(t.offer(lock(99, 1, 1, 100), 0), Offer::Full);
        assert_eq!(t.sweep(200, usize::MAX), 4);
        assert_eq!(t.offer(lock(99, 1, 1, 100), 200), Offer::Inserted);
        let all: Vec<LockRecord> = (0..t.slots()).filter_map(|i| t.entry_at(i, 250)).collect();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].client_ip, all[0].remaining_ms), (99, 50));
    }
}
