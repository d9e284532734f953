//! The packet-path fuzz target's committed seeds, replayed the way the
//! target replays them (fuzz/fuzz_targets/packet_path.rs; see its record
//! format): each must reach
//! past parsing into sessions and rewrites, or the fuzzer starts blind.

use ringlb::config;
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::stats::WorkerStats;

#[test]
fn every_packet_path_seed_gets_frames_forwarded() {
    let yaml = std::fs::read_to_string("../fuzz/seeds/config_yaml/two_modes.yaml").unwrap();
    let cfg = config::parse(&yaml, "two_modes.yaml").unwrap();
    let shared = Shared::new(&cfg, &[[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]);
    let mut seeds: Vec<_> =
        std::fs::read_dir("../fuzz/seeds/packet_path").unwrap().map(|e| e.unwrap().path()).collect();
    seeds.sort();
    assert!(seeds.len() >= 5);
    for path in seeds {
        let data = std::fs::read(&path).unwrap();
        let stats = WorkerStats::new(cfg.servers.len());
        let mut w = Worker::new(0, &shared, &stats);
        let (mut now, mut rest, mut verdicts) = (0u32, &data[..], Vec::new());
        while let [ctl, len, tail @ ..] = rest {
            let (frame, tail) = tail.split_at(usize::from(*len).min(tail.len()));
            rest = tail;
            let advance = u32::from(ctl >> 3) * 100;
            now += advance;
            if advance > 0 {
                w.due_solicits(now, |_, _| true);
            }
            // The seeds' checksums are right already (bit 2 asks the target to fix them).
            verdicts.push(w.process(&mut frame.to_vec(), ctl & 1, now, ctl & 2 != 0));
            if advance > 0 {
                w.sweep(now);
            }
        }
        let sent = verdicts.iter().filter(|v| matches!(v, Verdict::Tx(_) | Verdict::Consumed)).count();
        assert!(sent * 2 >= verdicts.len(), "{}: {verdicts:?}", path.display());
    }
}
