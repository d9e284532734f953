//! The per-worker session table: preallocated, open addressing with linear
//! probing and backward-shift deletion (no tombstones), fixed 32-byte entries.
//! Exactly one worker touches a table, so there are no locks. Idle entries
//! are expired by a clock sweep that visits a bounded number of slots per
//! call, and lazily when a lookup meets one.

use crate::packet::{L4Proto, Mac};

/// The flow as the client sees it: client endpoint → service endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_ip: u32,
    pub vip: u32,
    pub client_port: u16,
    pub vport: u16,
    pub proto: L4Proto,
}

impl FlowKey {
    /// Packs the key into one u128 so comparison is a single wide compare.
    #[inline]
    pub fn pack(&self) -> u128 {
        (u128::from(self.client_ip) << 96)
            | (u128::from(self.vip) << 64)
            | (u128::from(self.client_port) << 48)
            | (u128::from(self.vport) << 32)
            | (self.proto as u128)
    }

    /// The flow's hash under `seed`. Session tables use a random per-process
    /// seed (no one can aim flows at one probe run); 0 gives a hash every
    /// appliance agrees on (Maglev).
    #[inline]
    pub fn hash(&self, seed: u64) -> u64 {
        hash_packed(self.pack(), seed)
    }
}

#[inline]
fn hash_packed(p: u128, seed: u64) -> u64 {
    mix(p as u64 ^ seed, (p >> 64) as u64)
}

/// A fast 64-bit mixer (multiply-fold). Not cryptographic: flow placement
/// only needs good spread.
#[inline]
pub fn mix(a: u64, b: u64) -> u64 {
    let m = u128::from(a ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(u128::from(b ^ 0xd6e8_feb8_6659_fd93));
    let x = (m as u64) ^ ((m >> 64) as u64);
    let m = u128::from(x ^ 0xa076_1d64_78bd_642f).wrapping_mul(0xe703_7ed1_a0b4_28db);
    (m as u64) ^ ((m >> 64) as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Empty = 0,
    /// TCP: SYN seen, handshake not finished.
    SynSeen,
    Established,
    /// TCP: FIN or RST seen; kept briefly for the last segments.
    Closing,
    /// UDP: no handshake, idle timeout only.
    Udp,
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct Entry {
    key: u128,
    pub last_seen_ms: u32,
    /// Global server id.
    pub server: u16,
    /// Service id.
    pub service: u16,
    pub state: State,
    /// Port the client's packets arrive on; NAT replies leave through it.
    pub client_port_id: u8,
    /// MAC of the client-side previous hop; NAT replies are sent to it.
    pub client_hop_mac: Mac,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 32);

const EMPTY: Entry = Entry {
    key: 0,
    last_seen_ms: 0,
    server: 0,
    service: 0,
    state: State::Empty,
    client_port_id: 0,
    client_hop_mac: [0; 6],
};

/// Idle timeouts per state, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub syn_ms: u32,
    pub established_ms: u32,
    pub closing_ms: u32,
    pub udp_ms: u32,
}

impl Timeouts {
    #[inline]
    fn for_state(&self, s: State) -> u32 {
        match s {
            State::SynSeen => self.syn_ms,
            State::Established => self.established_ms,
            State::Closing => self.closing_ms,
            State::Udp => self.udp_ms,
            State::Empty => 0,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct TableFull;

pub struct SessionTable {
    slots: Box<[Entry]>,
    mask: usize,
    len: usize,
    max_len: usize,
    timeouts: Timeouts,
    sweep_cursor: usize,
    seed: u64,
}

impl SessionTable {
    /// A table that holds up to `capacity` sessions. Slots are the next power
    /// of two ≥ capacity × 4/3, keeping the load factor ≤ 75% so probes stay short.
    pub fn new(capacity: usize, timeouts: Timeouts, seed: u64) -> Self {
        let capacity = capacity.max(1);
        let slots = Self::slots_for(capacity);
        let mut v = Vec::with_capacity(slots);
        crate::cpu::advise_hugepages(v.spare_capacity_mut());
        v.resize(slots, EMPTY);
        SessionTable {
            slots: v.into_boxed_slice(),
            mask: slots - 1,
            len: 0,
            max_len: capacity,
            timeouts,
            sweep_cursor: 0,
            seed,
        }
    }

    /// Slots allocated for `capacity` sessions (each `size_of::<Entry>()` bytes).
    pub fn slots_for(capacity: usize) -> usize {
        let capacity = capacity.max(1);
        (capacity + capacity / 3).next_power_of_two().max(8)
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn expired(&self, e: &Entry, now_ms: u32) -> bool {
        now_ms.wrapping_sub(e.last_seen_ms) > self.timeouts.for_state(e.state)
    }

    /// Finds the live entry for `key`. An entry found idle past its timeout
    /// is removed and reported through `on_expire` instead.
    #[inline]
    pub fn lookup(
        &mut self,
        key: &FlowKey,
        hash: u64,
        now_ms: u32,
        on_expire: impl FnOnce(&Entry),
    ) -> Option<&mut Entry> {
        let packed = key.pack();
        let mut i = hash as usize & self.mask;
        loop {
            let e = &self.slots[i];
            if e.state == State::Empty {
                return None;
            }
            if e.key == packed {
                if self.expired(e, now_ms) {
                    on_expire(e);
                    self.remove_at(i);
                    return None;
                }
                return Some(&mut self.slots[i]);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts a new entry for `key` (which must not be present).
    #[inline]
    pub fn insert(&mut self, key: &FlowKey, hash: u64, entry: Entry) -> Result<&mut Entry, TableFull> {
        if self.len >= self.max_len {
            return Err(TableFull);
        }
        let mut i = hash as usize & self.mask;
        while self.slots[i].state != State::Empty {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Entry { key: key.pack(), ..entry };
        self.len += 1;
        Ok(&mut self.slots[i])
    }

    /// Removes the entry at slot `i` and shifts later members of its probe
    /// run back, so lookups never need tombstones.
    fn remove_at(&mut self, mut i: usize) {
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            if self.slots[j].state == State::Empty {
                break;
            }
            // An entry may move to i only if its home slot is not in (i, j].
            let home = self.home(&self.slots[j]);
            let in_between = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !in_between {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = EMPTY;
    }

    #[inline]
    fn home(&self, e: &Entry) -> usize {
        hash_packed(e.key, self.seed) as usize & self.mask
    }

    /// Starts loading the slots a lookup of `hash` probes first: its home
    /// slot and the two after it, which span at most two cache lines. Most
    /// probe runs end there, so the lookup then finds its entry in cache.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let i = hash as usize & self.mask;
        crate::cpu::prefetch(&self.slots[i]);
        crate::cpu::prefetch(&self.slots[(i + 2) & self.mask]);
    }

    /// The hash lookups and inserts must be given for `key`.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        key.hash(self.seed)
    }

    /// Visits up to `budget` slots from the sweep cursor and removes the idle
    /// entries, reporting each through `on_expire`. Returns how many expired.
    pub fn sweep(&mut self, now_ms: u32, budget: usize, mut on_expire: impl FnMut(&Entry)) -> usize {
        let mut expired = 0;
        let mut visited = 0;
        // Bounded by budget + removals: each step either advances or shrinks the table.
        while visited < budget.min(self.slots.len()) {
            let i = self.sweep_cursor;
            let e = self.slots[i];
            if e.state != State::Empty && self.expired(&e, now_ms) {
                on_expire(&e);
                self.remove_at(i);
                expired += 1;
                // A later entry may have shifted into slot i: look at it again.
            } else {
                self.sweep_cursor = (i + 1) & self.mask;
                visited += 1;
            }
        }
        expired
    }
}

impl Entry {
    pub fn new(now_ms: u32, server: u16, service: u16, state: State, client_port_id: u8, client_hop_mac: Mac) -> Self {
        Entry { key: 0, last_seen_ms: now_ms, server, service, state, client_port_id, client_hop_mac }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts { syn_ms: 100, established_ms: 1000, closing_ms: 50, udp_ms: 300 };

    fn key(i: u32) -> FlowKey {
        FlowKey {
            client_ip: 0x0a00_0000 + i,
            vip: 0xc612_6401,
            client_port: (i % 60000) as u16 + 1024,
            vport: 80,
            proto: L4Proto::Tcp,
        }
    }

    fn entry(now: u32, server: u16) -> Entry {
        Entry::new(now, server, 0, State::Established, 0, [2; 6])
    }

    #[test]
    fn insert_then_lookup_finds_each_entry() {
        let mut t = SessionTable::new(10_000, T, 7);
        for i in 0..10_000 {
            let k = key(i);
            t.insert(&k, t.hash(&k), entry(0, (i % 7) as u16)).unwrap();
        }
        assert_eq!(t.len(), 10_000);
        for i in 0..10_000 {
            let k = key(i);
            let e = t.lookup(&k, t.hash(&k), 10, |_| panic!("not idle")).expect("present");
            assert_eq!(e.server, (i % 7) as u16);
        }
        let missing = key(20_000);
        assert!(t.lookup(&missing, t.hash(&missing), 10, |_| ()).is_none());
    }

    #[test]
    fn full_table_refuses_new_flows() {
        let mut t = SessionTable::new(100, T, 7);
        for i in 0..100 {
            let k = key(i);
            t.insert(&k, t.hash(&k), entry(0, 0)).unwrap();
        }
        let k = key(100);
        assert_eq!(t.insert(&k, t.hash(&k), entry(0, 0)).err(), Some(TableFull));
    }

    #[test]
    fn sweep_expires_idle_entries_by_state() {
        let mut t = SessionTable::new(1000, T, 7);
        for i in 0..1000 {
            let k = key(i);
            let mut e = entry(0, 0);
            e.state = if i % 2 == 0 { State::Closing } else { State::Established };
            t.insert(&k, t.hash(&k), e).unwrap();
        }
        // At t=60 only closing entries (50 ms) are idle.
        let n = t.sweep(60, usize::MAX, |e| assert_eq!(e.state, State::Closing));
        assert_eq!(n, 500);
        assert_eq!(t.len(), 500);
        // Survivors are all still reachable after the backward shifts.
        for i in (1..1000).step_by(2) {
            let k = key(i);
            assert!(t.lookup(&k, t.hash(&k), 60, |_| panic!()).is_some(), "lost key {i}");
        }
        assert_eq!(t.sweep(2000, usize::MAX, |_| ()), 500);
        assert!(t.is_empty());
    }

    #[test]
    fn lookup_expires_lazily() {
        let mut t = SessionTable::new(10, T, 7);
        let k = key(1);
        t.insert(&k, t.hash(&k), entry(0, 3)).unwrap();
        let mut seen = false;
        assert!(t.lookup(&k, t.hash(&k), 5000, |_| seen = true).is_none());
        assert!(seen);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn random_insert_remove_matches_a_model() {
        use std::collections::HashMap;
        let mut t = SessionTable::new(512, T, 7);
        let mut model: HashMap<u32, u32> = HashMap::new();
        let mut x: u64 = 12345;
        let mut now = 0u32;
        for _ in 0..50_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let id = ((x >> 33) % 700) as u32;
            now += (x >> 60) as u32;
            let k = key(id);
            // Model expiry: Established with 1000 ms timeout.
            model.retain(|_, seen| now.wrapping_sub(*seen) <= 1000);
            let found = t.lookup(&k, t.hash(&k), now, |_| ()).map(|e| {
                e.last_seen_ms = now;
            });
            match (found.is_some(), model.contains_key(&id)) {
                (true, true) => {
                    model.insert(id, now);
                }
                (false, false) => {
                    if t.insert(&k, t.hash(&k), entry(now, 0)).is_err() {
                        // Full of idle entries not yet swept: reclaim, then it must fit
                        // unless the model is really full too.
                        t.sweep(now, usize::MAX, |_| ());
                        if t.insert(&k, t.hash(&k), entry(now, 0)).is_err() {
                            assert_eq!(model.len(), 512);
                            continue;
                        }
                    }
                    model.insert(id, now);
                }
                (a, b) => panic!("table says {a}, model says {b} for {id}"),
            }
            if x & 7 == 0 {
                t.sweep(now, 64, |_| ());
            }
        }
    }
}
