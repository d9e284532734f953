//! Benchmark inputs as pcap files: the SYNs that open N sessions (the
//! warm-up), data packets sampled from those flows (replayed forever by
//! net_pcap `infinite_rx=1`), and the servers' NAT replies to them.
//! Frames are built by the test kit (etherparse), so every checksum is valid.

use pcap_file::pcap::{PcapPacket, PcapWriter};
use ringlb_testkit::{tcp_seq, PSH, SYN};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

/// Addressing shared by the generator and the configurations it feeds.
pub const VIP: [u8; 4] = [198, 18, 100, 1];
pub const VPORT: u16 = 80;
/// Client-side frames go from the router to the appliance's data/warm port
/// (the test kit's addressing, shared with the appliance tests).
pub use ringlb_testkit::{PORT_MAC, ROUTER_MAC};
/// Payload that pads a TCP/IPv4 frame to the 60-byte Ethernet minimum.
const PAD: [u8; 6] = *b"ringlb";

/// Client endpoint of flow `i`: 16,384 source ports per address, addresses
/// from 10.0.0.0 up, so 10 M flows use ~610 client addresses.
pub fn client(i: u32) -> ([u8; 4], u16) {
    ((0x0a00_0000u32 + (i >> 14)).to_be_bytes(), 1024 + (i & 0x3fff) as u16)
}

/// Which flow the k-th data packet belongs to: every flow in turn when the
/// file has room for all, else a uniform random sample (so the working set
/// spans the whole table, not a cached subset).
pub fn data_flows(flows: u32, packets: u32) -> Vec<u32> {
    if packets >= flows {
        return (0..packets).map(|k| k % flows).collect();
    }
    let mut rng = SplitMix(0x5eed_1234);
    (0..packets).map(|_| (rng.next() % u64::from(flows)) as u32).collect()
}

/// A tiny deterministic generator (SplitMix64): reproducible inputs.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Copy)]
pub enum Kind {
    /// Client → VIP, SYN: opens a session.
    Syn,
    /// Client → VIP, ACK with data: an established flow.
    Data,
}

pub struct Writer {
    out: PcapWriter<BufWriter<File>>,
    frame: Vec<u8>,
    pub count: u64,
}

impl Writer {
    pub fn create(path: &Path) -> std::io::Result<Writer> {
        let f = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let out = PcapWriter::new(f).map_err(std::io::Error::other)?;
        Ok(Writer { out, frame: Vec::with_capacity(128), count: 0 })
    }

    fn write(&mut self) -> std::io::Result<()> {
        let pkt = PcapPacket::new(Duration::ZERO, self.frame.len() as u32, &self.frame);
        self.out.write_packet(&pkt).map_err(std::io::Error::other)?;
        self.count += 1;
        Ok(())
    }

    /// One client → VIP frame of flow `i`.
    pub fn client_frame(&mut self, i: u32, kind: Kind) -> std::io::Result<()> {
        let (ip, port) = client(i);
        self.frame = match kind {
            Kind::Syn => tcp_seq(ROUTER_MAC, PORT_MAC, ip, VIP, (port, VPORT), 1000, None, 64240, SYN, &PAD),
            Kind::Data => tcp_seq(ROUTER_MAC, PORT_MAC, ip, VIP, (port, VPORT), 1001, Some(5001), 502, PSH, &PAD),
        };
        self.write()
    }

    /// A NAT server's reply to flow `i`: server:sport → client (as the
    /// server sees it), to the appliance's MAC on the server side.
    pub fn reply_frame(&mut self, i: u32, server: ([u8; 4], u16), server_mac: [u8; 6]) -> std::io::Result<()> {
        let (ip, port) = client(i);
        self.frame = tcp_seq(server_mac, PORT_MAC, server.0, ip, (server.1, port), 5001, Some(1007), 502, PSH, &PAD);
        self.write()
    }

    /// Any frame, as it is.
    pub fn raw(&mut self, frame: Vec<u8>) -> std::io::Result<()> {
        self.frame = frame;
        self.write()
    }

    pub fn finish(self) -> std::io::Result<()> {
        let mut w = self.out.into_writer();
        std::io::Write::flush(&mut w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_distinct_and_samples_in_range() {
        let a: std::collections::HashSet<_> = (0..100_000).map(client).collect();
        assert_eq!(a.len(), 100_000);
        assert!(data_flows(1000, 5000).iter().all(|&f| f < 1000));
        assert_eq!(data_flows(10, 20)[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let s = data_flows(10_000_000, 100_000);
        assert!(s.iter().all(|&f| f < 10_000_000));
        assert!(s.iter().any(|&f| f > 9_000_000), "a sample spans the whole range");
    }
}
