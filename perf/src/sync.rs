//! Sibling sync in `make bench`: how many session updates per second one
//! appliance gets to a sibling, the lag from a session's creation to its
//! arrival there, what sync costs the fast path (DSR with sync on / off,
//! interleaved in one run), and why updates have their own channel instead
//! of the ring's reliable layer (both measured in one process).

use crate::measure::{self, RinglbMode, RinglbResult};
use crate::procs::Proc;
use ringlb_ring::member::{Config as RingConfig, Event, Member, Timers};
use ringlb_ring::sync::{Sync, SyncConfig, SyncEvent, KEY_CONTEXT};
use ringlb_ring::Key;
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the sibling saw while appliance A created its sessions.
#[derive(Serialize, Clone, Debug, Default)]
pub struct SyncTransfer {
    pub sessions: u32,
    /// Records (session updates) the sibling received per second while the
    /// transfer ran (`None` when the span could not be seen).
    pub updates_per_s: Option<f64>,
    /// Creation at A → arrival at the sibling, over every stamped record.
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    /// Sessions of A installed at the sibling (should be all of them).
    pub installed: u64,
    /// Worker events A lost to a full worker → control queue (republished).
    pub overflowed: u64,
}

/// One sync-on run: B starts, A warms up (its updates flow to B) and
/// measures its steady DSR rate. Returns A's result and B's view of the transfer.
pub fn sibling_run(
    bin: &Path,
    a: &Path,
    b: &Path,
    dir: &Path,
    sessions: u32,
    seconds: f64,
) -> Result<(RinglbResult, SyncTransfer), String> {
    let status = dir.join("sibling.json");
    let _ = std::fs::remove_file(&status);
    let mut cmd = Command::new(bin);
    cmd.args(["run", "-c"]).arg(b).args(["--stats-interval", "0.05", "--status-file"]).arg(&status);
    cmd.arg("--control-socket").arg(dir.join("sibling.sock"));
    let mut sibling = Proc::spawn("ringlb (sibling)", &mut cmd)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, status) = (Arc::clone(&stop), status.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(f64, f64)> = Vec::new();
            while !stop.load(Relaxed) {
                if let Some(s) = read(&status) {
                    samples.push((s["t_s"].as_f64().unwrap_or(0.0), records_in(&s)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    // The steady window measures forwarding with sync on, not the transfer:
    // it begins once the sibling has every session and no records flow.
    let settled = {
        let status = status.clone();
        let last = std::cell::Cell::new((0.0f64, Instant::now()));
        move || {
            let Some(s) = read(&status) else { return false };
            let n = records_in(&s);
            if n != last.get().0 {
                last.set((n, Instant::now()));
                return false;
            }
            s["replication"]["installed"].as_u64().unwrap_or(0) >= u64::from(sessions)
                && last.get().1.elapsed() >= Duration::from_millis(200)
        }
    };
    let mode = RinglbMode::Steady { sessions: u64::from(sessions), seconds };
    let run = measure::ringlb_gated(bin, a, mode, &settled);
    stop.store(true, Relaxed);
    let samples = sampler.join().unwrap_or_default();
    let last = read(&status);
    sibling.stop(Duration::from_secs(20));
    let r = run?;
    let last = last.ok_or("the sibling wrote no status file")?;
    let sync = &last["cluster"]["sync"];
    let overflowed = r.final_status["replication"]["ctl_overflow"].as_u64().unwrap_or(0);
    Ok((
        r,
        SyncTransfer {
            sessions,
            updates_per_s: transfer_rate(&samples),
            lag_p50_ms: sync["lag_p50_ms"].as_f64(),
            lag_p99_ms: sync["lag_p99_ms"].as_f64(),
            installed: last["replication"]["installed"].as_u64().unwrap_or(0),
            overflowed,
        },
    ))
}

fn read(path: &PathBuf) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn records_in(s: &serde_json::Value) -> f64 {
    s["cluster"]["sync"]["records"]["records_in"].as_f64().unwrap_or(0.0)
}

/// Records per second over the transfer's span, sampled every ~50 ms: from
/// the last sample before any record arrived (or the first with records, if
/// none came before) to the first sample at the final count. Starting before
/// the first record makes a transfer that fits between two samples still
/// measurable (a lower bound then); `None` when the span cannot be seen.
fn transfer_rate(samples: &[(f64, f64)]) -> Option<f64> {
    let &(_, total) = samples.last()?;
    let first = samples.iter().position(|(_, n)| *n > 0.0)?;
    let (t0, n0) = if first > 0 { samples[first - 1] } else { samples[first] };
    let &(t1, n1) = samples.iter().find(|(_, n)| *n >= total)?;
    (t1 > t0).then(|| (n1 - n0) / (t1 - t0))
}

/// The two transports, each moving `records` session-sized records between
/// two members in one process (no network, no loss, the same batches).
#[derive(Serialize, Clone, Debug)]
pub struct TransportComparison {
    pub records: usize,
    pub record_bytes: usize,
    /// The ring's reliable layer: one message per batch, at most 16 in
    /// flight (its per-sender receive limit), each acknowledged.
    pub reliable_records_per_s: f64,
    pub reliable_datagrams_per_batch: f64,
    /// The sync channel: sequenced batches, cumulative ACKs.
    pub sync_records_per_s: f64,
    pub sync_datagrams_per_batch: f64,
}

const RECORD: usize = 30;
/// What one sync datagram holds of such records (1400-byte datagrams).
const PER_BATCH: usize = ringlb_ring::sync::wire::DATA_ROOM / (RECORD + 1);

fn addr(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, i), 7400)
}

pub fn compare_transports(records: usize) -> TransportComparison {
    let batches = records.div_ceil(PER_BATCH);
    let batch = vec![0x5au8; PER_BATCH * RECORD];

    // The ring's reliable layer.
    let ring = |i: u8| {
        let cfg = RingConfig {
            me: addr(i),
            peers: vec![addr(1), addr(2)],
            dispatch_capable: true,
            appliance: true,
            timers: Timers::FAST,
            key: Key::from_secret("bench-transport"),
            incarnation: 1,
        };
        Member::new(cfg, 0)
    };
    let (mut a, mut b) = (ring(1), ring(2));
    let start = Instant::now();
    let (mut sent, mut got, mut datagrams) = (0usize, 0usize, 0u64);
    while got < batches {
        while sent < batches && sent - got < 16 {
            let _ = a.send_reliable(1, addr(2), &batch);
            sent += 1;
        }
        let mut moved = true;
        while moved {
            moved = false;
            while let Some(t) = a.poll_transmit() {
                datagrams += 1;
                b.handle_datagram(1, addr(1), &t.bytes);
                moved = true;
            }
            while let Some(t) = b.poll_transmit() {
                datagrams += 1;
                a.handle_datagram(1, addr(2), &t.bytes);
                moved = true;
            }
        }
        while let Some(e) = b.poll_event() {
            got += usize::from(matches!(e, Event::Reliable { .. }));
        }
        while a.poll_event().is_some() {}
    }
    let reliable_s = start.elapsed().as_secs_f64();

    // The sync channel.
    let sync = |i: u8| {
        let mut s = Sync::new(SyncConfig {
            me: addr(i),
            incarnation: 1,
            key: Key::derive(KEY_CONTEXT, "bench-transport"),
            peers: vec![addr(1), addr(2)],
            rto_ms: 20,
        });
        s.set_siblings(&[(addr(3 - i), 1)]);
        s
    };
    let (mut a, mut b) = (sync(1), sync(2));
    let record = [0x5au8; RECORD];
    let start = Instant::now();
    let (mut got, mut sync_datagrams) = (0usize, 0u64);
    let mut pushed = 0;
    while got < records {
        for _ in 0..(4096.min(records - pushed)) {
            let _ = a.broadcast(&record, 0);
            pushed += 1;
        }
        a.flush(1);
        while let Some(t) = a.poll_transmit() {
            sync_datagrams += 1;
            b.handle_datagram(1, addr(1), &t.bytes);
        }
        b.handle_timeout(1);
        while let Some(t) = b.poll_transmit() {
            sync_datagrams += 1;
            a.handle_datagram(1, addr(2), &t.bytes);
        }
        while let Some(e) = b.poll_event() {
            if let SyncEvent::Records { framed, .. } = e {
                got += ringlb_ring::sync::wire::records(&framed).count();
            }
        }
    }
    let sync_s = start.elapsed().as_secs_f64();
    TransportComparison {
        records,
        record_bytes: RECORD,
        reliable_records_per_s: (batches * PER_BATCH) as f64 / reliable_s,
        reliable_datagrams_per_batch: datagrams as f64 / batches as f64,
        sync_records_per_s: records as f64 / sync_s,
        sync_datagrams_per_batch: sync_datagrams as f64 / batches as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::transfer_rate;

    #[test]
    fn a_transfer_between_two_samples_is_still_measured() {
        let samples = [(0.0, 0.0), (0.05, 0.0), (0.10, 10_000.0), (0.15, 10_000.0)];
        assert_eq!(transfer_rate(&samples), Some(10_000.0 / 0.05));
    }

    #[test]
    fn the_span_runs_from_before_the_first_record_to_the_final_count() {
        let samples = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0), (3.0, 300.0)];
        assert_eq!(transfer_rate(&samples), Some(150.0));
    }

    #[test]
    fn no_records_or_one_sample_is_not_a_rate() {
        assert_eq!(transfer_rate(&[(0.0, 0.0), (1.0, 0.0)]), None);
        assert_eq!(transfer_rate(&[(1.0, 500.0)]), None);
        assert_eq!(transfer_rate(&[]), None);
    }
}
