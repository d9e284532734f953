//! The ring's and the sibling sync's wire decoders. Inputs are sealed with
//! the MAC of a known key first, so the fuzzer reaches the body decoders
//! (an attacker without the key stops at the MAC); byte 0 picks the
//! protocol and, for the ring, whether the MAC is right. Decoding never
//! panics; what decodes, re-encodes to bytes that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb_ring::{sync, wire};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

fn keys() -> &'static (wire::Key, wire::Key) {
    static KEYS: OnceLock<(wire::Key, wire::Key)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        (wire::Key::from_secret(secret), wire::Key::derive("ringlb sibling sync v1", secret))
    })
}

/// The appliance tables a sibling's records are checked against.
fn shared() -> &'static ringlb::dataplane::Shared {
    static SHARED: OnceLock<ringlb::dataplane::Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let yaml = include_str!("../seeds/config_yaml/two_modes.yaml");
        let cfg = ringlb::config::parse(yaml, "two_modes.yaml").expect("built-in config");
        ringlb::dataplane::Shared::new(&cfg, &[[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]])
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let (ring_key, sync_key) = keys();
    let me = SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, 1), 7400);
    if mode & 1 == 0 {
        let mut signed = wire::MAGIC.to_vec();
        signed.push(wire::VERSION);
        signed.extend_from_slice(body);
        let to = if mode & 2 == 0 { me } else { SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, 2), 7400) };
        let bytes = wire::seal_for(signed, &to, ring_key);
        if let Ok(p) = wire::decode(&bytes, &me, ring_key) {
            assert_eq!(to, me, "a packet sealed for another member decoded");
            let again = wire::encode(&p, &me, ring_key);
            let q = wire::decode(&again, &me, ring_key).expect("re-encoded packet decodes");
            assert_eq!(p, q);
        }
    } else {
        let mut signed = sync::wire::MAGIC.to_vec();
        signed.push(sync::wire::VERSION);
        signed.extend_from_slice(body);
        let bytes = sync::wire::seal_bytes(signed, sync_key);
        // A batch's records are the appliance's session and lock records.
        if let Ok((_, sync::wire::Body::Data { records, .. })) = sync::wire::decode(&bytes, sync_key) {
            for r in sync::wire::records(records) {
                let _ = ringlb::control::records::decode(shared(), r);
            }
        }
    }
});
