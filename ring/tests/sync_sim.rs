//! Deterministic simulation of the sync transport: three siblings stream
//! records to each other through a network with loss, duplication and
//! reordering. Every record must arrive exactly once, in its stream's order;
//! marks must be acknowledged only after every record before them arrived;
//! a sibling that falls too far behind gets a stream reset; forged, replayed,
//! truncated and misdirected datagrams are counted and change nothing.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use ringlb_ring::sync::{wire, Sync, SyncConfig, SyncEvent, KEY_CONTEXT};
use ringlb_ring::Key;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, i as u8 + 1), 7400)
}

struct Net {
    loss: f64,
    dup: f64,
    max_delay: u64,
}

/// (deliver at, tie-break, from, to, bytes)
type InFlight = (u64, u64, usize, usize, Vec<u8>);

struct Sim {
    t: u64,
    nodes: Vec<Sync>,
    rng: SmallRng,
    net: Net,
    queue: BinaryHeap<Reverse<InFlight>>,
    qseq: u64,
    /// What each node received from each origin, in delivery order.
    got: HashMap<(usize, usize), Vec<Vec<u8>>>,
    acked_marks: HashMap<usize, Vec<u64>>,
    resets: HashMap<usize, Vec<SocketAddrV4>>,
    /// Every datagram sent, for the replay test.
    sent: Vec<(usize, usize, Vec<u8>)>,
}

fn config(i: usize, n: usize, incarnation: u64) -> SyncConfig {
    SyncConfig {
        me: addr(i),
        incarnation,
        key: Key::derive(KEY_CONTEXT, "sync-sim-secret"),
        peers: (0..n).map(addr).collect(),
        rto_ms: 20,
    }
}

impl Sim {
    fn new(n: usize, seed: u64, net: Net) -> Sim {
        let mut nodes: Vec<Sync> = (0..n).map(|i| Sync::new(config(i, n, 1))).collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            let sibs: Vec<_> = (0..n).filter(|&j| j != i).map(|j| (addr(j), 1)).collect();
            node.set_siblings(&sibs);
        }
        Sim {
            t: 1,
            nodes,
            rng: SmallRng::seed_from_u64(seed),
            net,
            queue: BinaryHeap::new(),
            qseq: 0,
            got: HashMap::new(),
            acked_marks: HashMap::new(),
            resets: HashMap::new(),
            sent: Vec::new(),
        }
    }

    fn index(a: &SocketAddrV4) -> usize {
        usize::from(a.ip().octets()[3]) - 1
    }

    fn pump(&mut self, i: usize) {
        while let Some(tx) = self.nodes[i].poll_transmit() {
            let to = Self::index(&tx.to);
            self.sent.push((i, to, tx.bytes.clone()));
            if self.rng.random_bool(self.net.loss) {
                continue;
            }
            let copies = if self.rng.random_bool(self.net.dup) { 2 } else { 1 };
            for _ in 0..copies {
                let at = self.t + self.rng.random_range(0..=self.net.max_delay);
                self.qseq += 1;
                self.queue.push(Reverse((at, self.qseq, i, to, tx.bytes.clone())));
            }
        }
        while let Some(e) = self.nodes[i].poll_event() {
            match e {
                SyncEvent::Records { from, framed, .. } => {
                    let list = self.got.entry((i, Self::index(&from))).or_default();
                    list.extend(wire::records(&framed).map(<[u8]>::to_vec));
                }
                SyncEvent::MarkAcked(m) => self.acked_marks.entry(i).or_default().push(m),
                SyncEvent::StreamReset { from } => self.resets.entry(i).or_default().push(from),
            }
        }
    }

    fn step(&mut self, dt: u64) {
        let until = self.t + dt;
        while self.t < until {
            self.t += 1;
            while self.queue.peek().is_some_and(|Reverse((at, ..))| *at <= self.t) {
                let Reverse((_, _, from, to, bytes)) = self.queue.pop().unwrap();
                self.nodes[to].handle_datagram(self.t, addr(from), &bytes);
                self.pump(to);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout() <= self.t {
                    self.nodes[i].handle_timeout(self.t);
                }
                self.nodes[i].flush(self.t);
                self.pump(i);
            }
        }
    }

    fn settle(&mut self) {
        self.net = Net { loss: 0.0, dup: 0.0, max_delay: self.net.max_delay };
        self.step(3_000);
    }
}

fn record(origin: usize, k: u32) -> Vec<u8> {
    let mut r = format!("o{origin}#{k}:").into_bytes();
    r.resize(10 + (k as usize * 7) % 60, b'.');
    r
}

#[test]
fn every_record_arrives_once_in_order_under_loss_duplication_and_reordering() {
    for seed in 0..20u64 {
        let n = 3;
        let mut sim = Sim::new(n, seed, Net { loss: 0.15, dup: 0.1, max_delay: 15 });
        let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
        let mut marks: Vec<Vec<(u64, usize)>> = vec![Vec::new(); n];
        for round in 0..400u32 {
            for i in 0..n {
                let burst = sim.rng.random_range(0..40);
                for _ in 0..burst {
                    let r = record(i, sent[i].len() as u32);
                    sim.nodes[i].broadcast(&r, 0).unwrap();
                    sent[i].push(r);
                }
                if round % 50 == 7 {
                    let t = sim.t;
                    let m = sim.nodes[i].mark(t);
                    marks[i].push((m, sent[i].len()));
                }
            }
            let dt = sim.rng.random_range(1..4);
            sim.step(dt);
            // A mark is acknowledged only once every sibling has everything before it.
            for (i, marks) in marks.iter().enumerate() {
                for &m in sim.acked_marks.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                    let upto = marks.iter().find(|(id, _)| *id == m).unwrap().1;
                    for j in (0..n).filter(|&j| j != i) {
                        let have = sim.got.get(&(j, i)).map_or(0, Vec::len);
                        assert!(have >= upto, "seed {seed}: mark {m} of {i} acked but {j} has {have} < {upto}");
                    }
                }
            }
        }
        sim.settle();
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                let got = sim.got.get(&(j, i)).cloned().unwrap_or_default();
                assert_eq!(got.len(), sent[i].len(), "seed {seed}: {j} got {} of {}'s {}", got.len(), i, sent[i].len());
                assert!(got == sent[i], "seed {seed}: {j} got {i}'s records out of order or altered");
            }
            assert_eq!(sim.acked_marks.get(&i).map_or(0, Vec::len), marks[i].len(), "seed {seed}: every mark acked");
            assert!(sim.resets.is_empty(), "seed {seed}: no stream was reset");
        }
        let c = sim.nodes[0].counters;
        assert!(c.retransmits > 0 && c.rx_duplicates > 0, "seed {seed}: the network did lose and duplicate: {c:?}");
    }
}

#[test]
fn forged_replayed_truncated_and_misdirected_datagrams_are_counted_drops() {
    let mut sim = Sim::new(2, 1, Net { loss: 0.0, dup: 0.0, max_delay: 1 });
    for k in 0..200 {
        sim.nodes[0].broadcast(&record(0, k), 0).unwrap();
    }
    sim.step(50);
    assert_eq!(sim.got[&(1, 0)].len(), 200);
    let data: Vec<Vec<u8>> =
        sim.sent.iter().filter(|(f, t, _)| *f == 0 && *t == 1).map(|(_, _, b)| b.clone()).collect();
    let before = sim.nodes[1].counters;
    let t = sim.t;
    // Replays: exactly the datagrams already delivered.
    for d in &data {
        sim.nodes[1].handle_datagram(t, addr(0), d);
    }
    // Forgeries: a flipped bit anywhere, a wrong key, a spoofed source.
    let mut flipped = data[0].clone();
    flipped[40] ^= 1;
    sim.nodes[1].handle_datagram(t, addr(0), &flipped);
    let mut other = Sync::new(SyncConfig { key: Key::derive(KEY_CONTEXT, "not-the-secret"), ..config(0, 2, 9) });
    other.set_siblings(&[(addr(1), 1)]);
    other.broadcast(b"evil", 0).unwrap();
    other.flush(t);
    let evil = other.poll_transmit().unwrap().bytes;
    sim.nodes[1].handle_datagram(t, addr(0), &evil);
    sim.nodes[1].handle_datagram(t, SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 7400), &data[1]);
    // The ring's key is not the sync key: a ring-keyed copy fails the MAC.
    let mut ringkeyed = Sync::new(SyncConfig { key: Key::from_secret("sync-sim-secret"), ..config(0, 2, 9) });
    ringkeyed.set_siblings(&[(addr(1), 1)]);
    ringkeyed.broadcast(b"x", 0).unwrap();
    ringkeyed.flush(t);
    sim.nodes[1].handle_datagram(t, addr(0), &ringkeyed.poll_transmit().unwrap().bytes);
    // Truncations of a valid datagram, and garbage.
    for n in [0, 1, 10, 33, data[2].len() - 1] {
        sim.nodes[1].handle_datagram(t, addr(0), &data[2][..n]);
    }
    sim.nodes[1].handle_datagram(t, addr(0), &[0xab; 300]);
    // Sent by a genuine sibling, but to an earlier incarnation of node 1.
    let mut old = Sync::new(config(0, 2, 7));
    old.set_siblings(&[(addr(1), 0)]);
    old.broadcast(b"for your predecessor", 0).unwrap();
    old.flush(t);
    sim.nodes[1].handle_datagram(t, addr(0), &old.poll_transmit().unwrap().bytes);
    sim.pump(1);
    let c = sim.nodes[1].counters;
    assert_eq!(c.rx_replayed - before.rx_replayed, data.len() as u64, "{c:?}");
    // Flipped bit, wrong key, ring key, and the copy one byte short (its MAC is then wrong).
    assert_eq!(c.rx_bad_mac - before.rx_bad_mac, 4, "{c:?}");
    assert_eq!(c.rx_spoofed - before.rx_spoofed, 1, "{c:?}");
    // Four truncations below the header and the garbage (no magic).
    assert_eq!(c.rx_malformed - before.rx_malformed, 5, "{c:?}");
    assert_eq!(c.rx_stale - before.rx_stale, 1, "{c:?}");
    assert!(data.len() >= 3, "{} datagrams", data.len());
    assert_eq!(sim.got[&(1, 0)].len(), 200, "nothing forged or replayed was delivered");
    assert_eq!(c.rx_batches, before.rx_batches);
}

#[test]
fn a_sibling_that_falls_too_far_behind_gets_a_stream_reset_then_catches_up() {
    let mut sim = Sim::new(2, 3, Net { loss: 1.0, dup: 0.0, max_delay: 1 });
    // Node 1 hears nothing: node 0's backlog grows past its window.
    let big = vec![7u8; 200];
    let mut k = 0u64;
    while sim.nodes[0].counters.overruns == 0 {
        sim.nodes[0].broadcast(&big, 0).unwrap();
        k += 1;
        if k.is_multiple_of(1000) {
            sim.step(1);
        }
    }
    assert!(k as usize > ringlb_ring::sync::MAX_UNACKED, "{k} records");
    sim.net = Net { loss: 0.0, dup: 0.0, max_delay: 1 };
    sim.nodes[0].broadcast(b"after the reset", 0).unwrap();
    sim.step(2_000);
    // Node 1 saw only the new stream: it is told, and gets what follows the reset.
    let got = &sim.got[&(1, 0)];
    assert_eq!(got.last().map(Vec::as_slice), Some(&b"after the reset"[..]));
    assert!(got.len() < k as usize);
    let m = sim.nodes[0].mark(sim.t);
    sim.step(100);
    assert!(sim.acked_marks[&0].contains(&m));
    // A stream that starts at seq 0 of a sibling run never seen before is not a reset;
    // node 1 had seen nothing of node 0 before, so no reset event is expected here.
    assert!(sim.resets.get(&1).is_none_or(Vec::is_empty));
}

#[test]
fn a_reset_within_a_run_is_reported_so_the_receiver_can_resync() {
    let mut sim = Sim::new(2, 4, Net { loss: 0.0, dup: 0.0, max_delay: 1 });
    sim.nodes[0].broadcast(b"one", 0).unwrap();
    sim.step(20);
    // Node 0 forgets node 1 (a view without it) and re-adds it: records in between are lost to it.
    sim.nodes[0].set_siblings(&[]);
    sim.nodes[0].broadcast(b"not for 1", 0).unwrap();
    sim.nodes[0].set_siblings(&[(addr(1), 1)]);
    sim.nodes[0].broadcast(b"two", 0).unwrap();
    sim.step(50);
    assert_eq!(sim.got[&(1, 0)], vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(sim.resets.get(&1), Some(&vec![addr(0)]));
}

#[test]
fn a_restarted_sibling_gets_a_fresh_stream() {
    let mut sim = Sim::new(2, 5, Net { loss: 0.1, dup: 0.0, max_delay: 3 });
    for k in 0..100 {
        sim.nodes[0].broadcast(&record(0, k), 0).unwrap();
    }
    sim.step(200);
    // Node 1 restarts (incarnation 2): node 0 learns it from its first packet.
    sim.nodes[1] = Sync::new(config(1, 2, 2));
    sim.nodes[1].set_siblings(&[(addr(0), 1)]);
    sim.got.clear();
    sim.nodes[1].broadcast(b"hello from the new run", 0).unwrap();
    sim.step(200);
    for k in 0..10 {
        sim.nodes[0].broadcast(&record(0, 1000 + k), 0).unwrap();
    }
    sim.settle();
    let got = &sim.got[&(1, 0)];
    assert_eq!(got.len(), 10, "only what was sent after the restart reaches the new run");
    assert_eq!(got[0], record(0, 1000));
    assert_eq!(sim.got[&(0, 1)], vec![b"hello from the new run".to_vec()]);
}

#[test]
fn decoding_random_and_mutated_input_never_panics() {
    let key = Key::derive(KEY_CONTEXT, "fuzz");
    let mut rng = SmallRng::seed_from_u64(77);
    let mut n = Sync::new(SyncConfig { key: key.clone(), ..config(0, 2, 1) });
    n.set_siblings(&[(addr(1), 1)]);
    for k in 0..50 {
        n.broadcast(&record(0, k), 0).unwrap();
    }
    n.flush(1);
    let valid = n.poll_transmit().unwrap().bytes;
    let mut receiver = Sync::new(SyncConfig { key: key.clone(), ..config(1, 2, 1) });
    for i in 0..60_000u32 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let len = rng.random_range(0..1500);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut b = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            b.truncate(rng.random_range(0..=b.len()));
            b
        };
        let _ = wire::decode(&bytes, &key);
        receiver.handle_datagram(2, addr(0), &bytes);
    }
    let c = receiver.counters;
    assert_eq!(c.rx_batches, 0, "no mutated datagram may pass: {c:?}");
    assert_eq!(c.rx_bad_mac + c.rx_malformed, 60_000, "{c:?}");
}

#[test]
fn a_view_change_keeps_the_streams_of_siblings_that_stay() {
    let mut sim = Sim::new(3, 6, Net { loss: 0.0, dup: 0.0, max_delay: 1 });
    sim.nodes[0].broadcast(b"before", 0).unwrap();
    sim.step(20);
    // Node 2 leaves the view and comes back; node 1 stays throughout.
    sim.nodes[0].broadcast(b"in flight", 0).unwrap();
    sim.nodes[0].set_siblings(&[(addr(1), 1)]);
    sim.nodes[0].broadcast(b"while 2 is away", 0).unwrap();
    sim.nodes[0].set_siblings(&[(addr(1), 1), (addr(2), 1)]);
    sim.step(50);
    let to1: Vec<&[u8]> = sim.got[&(1, 0)].iter().map(Vec::as_slice).collect();
    assert_eq!(to1, vec![&b"before"[..], b"in flight", b"while 2 is away"], "nothing lost on the way");
    assert!(sim.resets.get(&1).is_none_or(Vec::is_empty), "the stream to a staying sibling is not reset");
    assert_eq!(sim.resets.get(&2), Some(&vec![addr(0)]), "the one that was away is told");
}
