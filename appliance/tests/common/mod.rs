//! Helpers of the tests that run the real binary on `net_pcap` ports:
//! input and output pcaps, a scratch directory, and a run until the input
//! is consumed.
#![allow(dead_code)] // each test crate uses its own part

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = PcapWriter::new(f).unwrap();
    for (i, fr) in frames.iter().enumerate() {
        let t = Duration::from_micros(i as u64);
        w.write_packet(&PcapPacket::new(t, fr.len() as u32, fr)).unwrap();
    }
}

pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let f = std::fs::File::open(path).unwrap();
    let mut r = PcapReader::new(f).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.unwrap().data.into_owned());
    }
    out
}

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringlb-vdev-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What a run of the binary left: its output (for people), and its status
/// file's last state, written at exit (for assertions: counters by name,
/// not parsed prose).
pub struct Run {
    pub log: String,
    pub status: serde_json::Value,
}

impl Run {
    /// A counter of the final status by its JSON pointer ("/drops/no_session").
    pub fn count(&self, pointer: &str) -> u64 {
        self.status
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("no counter {pointer} in the status:\n{:#}", self.status))
    }
}

/// Runs the binary until its status file shows `expect_rx` frames
/// received, then sends it `signal`; it must exit 0.
pub fn run_ringlb(cfg_path: &Path, expect_rx: u64, signal: &str) -> Run {
    let status_file = cfg_path.with_extension("status.json");
    let _ = std::fs::remove_file(&status_file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "-c", cfg_path.to_str().unwrap(), "--stats-interval", "0.2", "--control-socket"])
        .arg(cfg_path.with_extension("sock"))
        .arg("--status-file")
        .arg(&status_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ringlb");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let read_status =
        || -> Option<serde_json::Value> { serde_json::from_slice(&std::fs::read(&status_file).ok()?).ok() };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = false;
    while Instant::now() < deadline && !done {
        std::thread::sleep(Duration::from_millis(100));
        done = read_status().and_then(|s| s["rx"].as_u64()).is_some_and(|n| n >= expect_rx);
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
    }
    if done {
        // One more interval so the last bursts are flushed, then stop.
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
    } else {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the reader's last lines
    let log: String = rx.try_iter().map(|l| l + "\n").collect();
    assert!(done, "ringlb did not receive {expect_rx} frames in time; output:\n{log}");
    assert!(status.success(), "ringlb exited with {status}; output:\n{log}");
    let status = read_status().unwrap_or_else(|| panic!("no status file at exit; output:\n{log}"));
    Run { log, status }
}
