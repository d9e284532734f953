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

/// Runs the binary until it has received `expect_rx` frames, then SIGTERM.
pub fn run_ringlb(cfg_path: &Path, expect_rx: u64, signal: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "-c", cfg_path.to_str().unwrap(), "--stats-interval", "0.2", "--control-socket"])
        .arg(cfg_path.with_extension("sock"))
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
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = String::new();
    let mut done = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                if let Some(v) = line.split_whitespace().find_map(|w| w.strip_prefix("rx=")) {
                    if v.parse::<u64>().unwrap_or(0) >= expect_rx && !done {
                        done = true;
                        // One more interval so the last bursts are flushed, then stop.
                        std::thread::sleep(Duration::from_millis(300));
                        let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
                    }
                }
                log.push_str(&line);
                log.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(done, "ringlb did not receive {expect_rx} frames in time; output:\n{log}");
    assert!(status.success(), "ringlb exited with {status}; output:\n{log}");
    assert!(log.contains("ringlb stopped cleanly"), "no clean shutdown summary:\n{log}");
    log
}
