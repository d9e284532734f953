//! Forged, truncated and replayed packets are refused and counted by a
//! member; random bytes never panic the decoder; the reliable layer moves a
//! 1 MiB message intact across 10% loss.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use ringlb_ring::member::{Config, Event, Member, Timers};
use ringlb_ring::wire::{self, Key, Msg, Packet};
use std::net::{Ipv4Addr, SocketAddrV4};

fn addr(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, i), 7500)
}

fn member(i: u8, key: &str) -> Member {
    let cfg = Config {
        me: addr(i),
        peers: vec![addr(1), addr(2)],
        dispatch_capable: true,
        appliance: false,
        timers: Timers::FAST,
        key: Key::from_secret(key),
        incarnation: 1,
    };
    Member::new(cfg, 0)
}

/// A Hello from `sender` to member 1.
fn hello_from(sender: SocketAddrV4, seq: u64, key: &Key) -> Vec<u8> {
    hello_to(sender, addr(1), seq, key)
}

fn hello_to(sender: SocketAddrV4, to: SocketAddrV4, seq: u64, key: &Key) -> Vec<u8> {
    wire::encode(&Packet { sender, incarnation: 1, seq, msgs: vec![Msg::Hello { caps: 1, id: 0 }] }, &to, key)
}

#[test]
fn forged_truncated_replayed_and_spoofed_packets_are_counted_drops() {
    let key = Key::from_secret("cluster-secret");
    let mut m = member(1, "cluster-secret");
    let good = hello_from(addr(2), 1, &key);
    m.handle_datagram(1, addr(2), &good);
    assert_eq!(m.counters.rx_packets, 1);

    // Replay of the same datagram.
    m.handle_datagram(2, addr(2), &good);
    assert_eq!(m.counters.rx_replayed, 1);

    // Forged: signed with another key, or altered after signing.
    m.handle_datagram(3, addr(2), &hello_from(addr(2), 2, &Key::from_secret("guess")));
    let mut altered = hello_from(addr(2), 3, &key);
    let n = altered.len();
    altered[n - 40] ^= 1;
    m.handle_datagram(4, addr(2), &altered);
    assert_eq!(m.counters.rx_bad_mac, 2);

    // A genuine packet for another member, replayed to this one (its MAC
    // is bound to its receiver).
    m.handle_datagram(4, addr(2), &hello_to(addr(2), addr(3), 6, &key));
    assert_eq!(m.counters.rx_bad_mac, 3);

    // Truncated.
    let whole = hello_from(addr(2), 4, &key);
    for cut in [0, 5, 20, whole.len() - 1] {
        m.handle_datagram(5, addr(2), &whole[..cut]);
    }
    assert_eq!(m.counters.rx_malformed + m.counters.rx_bad_mac, 3 + 4);

    // Valid MAC but claiming another sender than the datagram's source.
    m.handle_datagram(6, addr(3), &hello_from(addr(2), 5, &key));
    assert_eq!(m.counters.rx_spoofed, 1);
    // Valid MAC from a key holder that is not a configured peer.
    m.handle_datagram(7, addr(9), &hello_from(addr(9), 1, &key));
    assert_eq!(m.counters.rx_unknown_sender, 1);
    assert_eq!(m.counters.rx_packets, 1, "nothing but the first packet was accepted");
}

#[test]
fn decoder_survives_random_and_mutated_bytes() {
    let key = Key::from_secret("k");
    let mut rng = SmallRng::seed_from_u64(99);
    let valid = wire::encode(
        &Packet {
            sender: addr(1),
            incarnation: 1,
            seq: 1,
            msgs: vec![Msg::Hello { caps: 0, id: 0 }, Msg::Probe { nonce: 3 }, Msg::RelAck { msg_id: 9 }],
        },
        &addr(2),
        &key,
    );
    let mut ok = 0;
    for i in 0..120_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let n = rng.random_range(0..600);
            let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if b.len() > 3 && rng.random_bool(0.5) {
                b[0..3].copy_from_slice(&[b'R', b'L', 1]);
            }
            b
        } else {
            let mut b = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                let j = rng.random_range(0..b.len());
                b[j] = rng.random();
            }
            if rng.random_bool(0.3) {
                b.truncate(rng.random_range(0..b.len()));
            }
            b
        };
        // A mutation may write back the same byte: only changed strings count.
        if bytes != valid && wire::decode(&bytes, &addr(2), &key).is_ok() {
            ok += 1;
        }
    }
    // Random bytes cannot carry a valid MAC.
    assert_eq!(ok, 0);
}

/// Two members exchange a 1 MiB reliable message through a lossy, reordering
/// simulated link (10% loss each way).
#[test]
fn reliable_1mib_under_10_percent_loss() {
    let mut a = member(1, "s");
    let mut b = member(2, "s");
    let mut rng = SmallRng::seed_from_u64(7);
    let payload: Vec<u8> = (0..(1 << 20)).map(|_| rng.random()).collect();
    let mut now = 0u64;
    let mut id = None;
    let mut inflight: Vec<(u64, bool, Vec<u8>)> = Vec::new(); // (deliver at, to_b, bytes)
    let mut got = None;
    let (mut sent, mut lost) = (0u32, 0u32);
    while now < 120_000 && got.is_none() {
        if now == 1000 {
            id = Some(a.send_reliable(now, addr(2), &payload).unwrap());
        }
        for (m, to_b) in [(&mut a, true), (&mut b, false)] {
            if m.poll_timeout() <= now {
                m.handle_timeout(now);
            }
            while let Some(tx) = m.poll_transmit() {
                sent += 1;
                if rng.random_bool(0.10) {
                    lost += 1;
                    continue;
                }
                inflight.push((now + rng.random_range(1..20), to_b, tx.bytes));
            }
        }
        let (due, rest): (Vec<_>, Vec<_>) = inflight.into_iter().partition(|(t, ..)| *t <= now);
        inflight = rest;
        for (_, to_b, bytes) in due {
            if to_b {
                b.handle_datagram(now, addr(1), &bytes);
            } else {
                a.handle_datagram(now, addr(2), &bytes);
            }
        }
        while let Some(e) = b.poll_event() {
            if let Event::Reliable { from, payload } = e {
                assert_eq!(from, addr(1));
                assert!(got.is_none(), "delivered twice");
                got = Some(payload);
            }
        }
        while a.poll_event().is_some() {}
        now += 1;
    }
    assert!(id.is_some());
    let got = got.expect("1 MiB message not delivered within 120 s of simulated time");
    assert!(got == payload, "payload corrupted");
    let st = a.reliable_stats();
    println!(
        "delivered 1 MiB at t={now} ms; datagrams {sent}, lost {lost}; carriages resent {}; receiver nacks {}",
        st.carriages_resent,
        b.reliable_stats().nacks_sent
    );
    assert!(lost > 0 && st.carriages_resent > 0, "the test must actually lose and resend");
}
