//! The results of one `ringlb-bench` run: rows, references, targets; written
//! as JSON (for plots and history) and as a Markdown table (for people).

use crate::measure::RinglbResult;
use crate::sync::{SyncTransfer, TransportComparison};
use crate::Options;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Serialize)]
pub struct Reference {
    pub sessions: u32,
    pub workers: u32,
    pub mode: String,
    pub mpps: f64,
}

#[derive(Serialize)]
pub struct Row {
    pub sessions: u32,
    pub workers: u32,
    pub scenario: String,
    pub mpps: f64,
    /// dpdk-testpmd io forward on the same input, cores and vdevs.
    pub testpmd_io_mpps: f64,
    pub ratio: f64,
    /// Per worker: wall time per packet of a busy-polling core.
    pub ns_per_packet: f64,
    /// TSC cycles per packet per worker (this VM exposes no core cycle counter).
    pub tsc_cycles_per_packet: f64,
    pub drops_in_window: u64,
    /// Sessions actually in the table (short of `sessions` only if warm-up SYNs were dropped).
    pub sessions_present: u64,
    /// Session table bytes (all workers) per session.
    pub table_bytes_per_session: f64,
    /// Resident memory (normal + hugetlb pages) with every session in place.
    pub process_memory_bytes: u64,
}

impl Row {
    pub fn new(sessions: u32, workers: u32, scenario: &str, r: &RinglbResult, reference_pps: f64) -> Row {
        let per_worker = r.pps / f64::from(workers);
        Row {
            sessions,
            workers,
            scenario: scenario.to_string(),
            mpps: r.pps / 1e6,
            testpmd_io_mpps: reference_pps / 1e6,
            ratio: if reference_pps > 0.0 { r.pps / reference_pps } else { 0.0 },
            ns_per_packet: if per_worker > 0.0 { 1e9 / per_worker } else { 0.0 },
            tsc_cycles_per_packet: if per_worker > 0.0 { r.tsc_hz as f64 / per_worker } else { 0.0 },
            drops_in_window: r.drops,
            sessions_present: r.sessions,
            table_bytes_per_session: (r.table_bytes * u64::from(workers)) as f64 / f64::from(sessions),
            process_memory_bytes: r.memory,
        }
    }
}

/// Instructions per packet on the per-packet path alone (callgrind counts
/// them exactly, where timings on a shared machine are noise).
#[derive(Serialize, Clone)]
pub struct Instructions {
    pub sessions: u32,
    pub packets: u32,
    /// `Worker::process_burst` alone.
    pub worker: f64,
    /// With `ringlb-fastpath`'s own frame copy (what a PMD's receive does).
    pub with_harness: f64,
}

#[derive(Serialize)]
pub struct NewConnections {
    pub syns: u32,
    pub per_second_per_worker: f64,
}

/// Sibling sync: the transfer to a sibling, its fast-path cost, the transports.
#[derive(Serialize)]
pub struct SyncSection {
    pub transfer: SyncTransfer,
    pub dsr_sync_off_mpps: f64,
    pub dsr_sync_on_mpps: f64,
    pub on_off_ratio: f64,
    pub transports: TransportComparison,
}

#[derive(Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Serialize)]
pub struct Report {
    pub timestamp: String,
    pub machine: serde_json::Value,
    pub params: serde_json::Value,
    pub references: Vec<Reference>,
    pub rows: Vec<Row>,
    pub instructions: Vec<Instructions>,
    pub new_connections: Option<NewConnections>,
    /// The same SYNs to a `syn_proxy` service: cookies answered per second.
    pub syn_cookies: Option<NewConnections>,
    /// `l7` connections made per second (handshake with a cookie, request,
    /// the server's handshake and answer), each read once from a pcap.
    pub l7_connections: Option<NewConnections>,
    /// Process memory growth per session between the smallest and largest run.
    pub process_bytes_per_session: Option<f64>,
    pub sync: Option<SyncSection>,
    pub targets: Vec<Target>,
    pub lab: Option<serde_json::Value>,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Report {
    pub fn new(o: &Options, cores: usize) -> Report {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        Report {
            timestamp: sh("date", &["-u", "+%Y%m%dT%H%M%SZ"]),
            machine: serde_json::json!({
                "cpu": cpu,
                "cores": cores,
                "kernel": sh("uname", &["-r"]),
                "dpdk": sh("dpkg-query", &["-W", "-f", "${Version}", "dpdk"]),
                "memory_gib": sh("awk", &["/MemTotal/ {printf \"%.0f\", $2/1048576}", "/proc/meminfo"]),
            }),
            params: serde_json::json!({
                "data_packets": o.data_packets,
                "seconds": o.seconds,
                "frame_bytes": 60,
                "vdevs": "net_pcap (rx_pcap, infinite_rx=1) -> net_null (no-rx=1)",
                "smoke": o.smoke,
            }),
            references: Vec::new(),
            rows: Vec::new(),
            instructions: Vec::new(),
            new_connections: None,
            syn_cookies: None,
            l7_connections: None,
            process_bytes_per_session: None,
            sync: None,
            targets: Vec::new(),
            lab: None,
        }
    }

    pub fn reference(&mut self, sessions: u32, workers: u32, mode: &str, pps: f64) {
        self.references.push(Reference { sessions, workers, mode: mode.into(), mpps: pps / 1e6 });
    }

    pub fn new_connections(&mut self, syns: u32, r: &RinglbResult) {
        self.new_connections = Some(NewConnections { syns, per_second_per_worker: r.new_per_s });
    }

    pub fn syn_cookies(&mut self, syns: u32, r: &RinglbResult) {
        self.syn_cookies = Some(NewConnections { syns, per_second_per_worker: r.new_per_s });
    }

    pub fn l7_connections(&mut self, connections: u32, r: &RinglbResult) {
        self.l7_connections = Some(NewConnections { syns: connections, per_second_per_worker: r.new_per_s });
    }

    pub fn sync(&mut self, transfer: SyncTransfer, off_pps: f64, on_pps: f64, transports: TransportComparison) {
        self.sync = Some(SyncSection {
            transfer,
            dsr_sync_off_mpps: off_pps / 1e6,
            dsr_sync_on_mpps: on_pps / 1e6,
            on_off_ratio: if off_pps > 0.0 { on_pps / off_pps } else { 0.0 },
            transports,
        });
    }

    pub fn lab(&mut self, json: &str, ok: bool) -> Result<(), String> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("lab results: {e}"))?;
        if !ok {
            println!("   lab: at least one variant failed (see above); recorded as such");
        }
        self.lab = Some(v);
        Ok(())
    }

    fn row(&self, sessions: u32, scenario: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.sessions == sessions && r.workers == 1 && r.scenario == scenario)
    }

    /// Derived figures and the issue's targets, each with its measured value.
    pub fn finish(&mut self) {
        let single: Vec<&Row> = self.rows.iter().filter(|r| r.workers == 1 && r.scenario == "dsr").collect();
        if let (Some(lo), Some(hi)) = (single.first(), single.last()) {
            if hi.sessions > lo.sessions && hi.process_memory_bytes > 0 && lo.process_memory_bytes > 0 {
                self.process_bytes_per_session = Some(
                    (hi.process_memory_bytes as f64 - lo.process_memory_bytes as f64)
                        / f64::from(hi.sessions - lo.sessions),
                );
            }
        }
        let ratio = |s: &str| self.row(1_000_000, s).map(|r| r.ratio);
        let cost = match (self.row(1_000, "dsr"), self.row(10_000_000, "dsr")) {
            (Some(a), Some(b)) if a.ns_per_packet > 0.0 => Some(b.ns_per_packet / a.ns_per_packet),
            _ => None,
        };
        let table = self.rows.iter().map(|r| r.table_bytes_per_session).reduce(f64::max);
        // 0 = creation finished within one stats interval: too short to time.
        let new = self.new_connections.as_ref().map(|n| n.per_second_per_worker).filter(|v| *v > 0.0);
        let t = |name: &str, target: &str, value: Option<f64>, ok: fn(f64) -> bool| Target {
            name: name.into(),
            target: target.into(),
            value,
            met: value.map(ok),
        };
        let per_packet = self.instructions.iter().find(|i| i.sessions == 1000).map(|i| i.worker);
        let l7_new = self.l7_connections.as_ref().map(|n| n.per_second_per_worker).filter(|v| *v > 0.0);
        let spliced = self.rows.iter().find(|r| r.scenario == "l7-spliced").map(|r| r.ratio);
        self.targets = vec![
            t("instructions per packet, established DSR at 1k sessions", "<= 150", per_packet, |v| v <= 150.0),
            t("DSR at 1M sessions / testpmd io", ">= 0.60", ratio("dsr"), |v| v >= 0.60),
            t("NAT forward at 1M sessions / testpmd io", ">= 0.50", ratio("nat-forward"), |v| v >= 0.50),
            t("NAT reply at 1M sessions / testpmd io (replies)", ">= 0.50", ratio("nat-reply"), |v| v >= 0.50),
            t("DSR ns/packet at 10M / at 1k sessions", "<= 1.5", cost, |v| v <= 1.5),
            t("session table bytes per session (worst run)", "<= 128", table, |v| v <= 128.0),
            t("process memory growth per session", "<= 128", self.process_bytes_per_session, |v| v <= 128.0),
            t("new connections per second per worker", ">= 1000000", new, |v| v >= 1e6),
            t("L7 new connections per second per worker", ">= 500000", l7_new, |v| v >= 5e5),
            t("L7 spliced established flows / testpmd io", ">= 0.45", spliced, |v| v >= 0.45),
        ];
        if let Some(s) = &self.sync {
            self.targets.extend([
                t("sync: session updates per second to a sibling", ">= 1000000", s.transfer.updates_per_s, |v| {
                    v >= 1e6
                }),
                t("sync: creation → sibling lag p99 (ms)", "<= 100", s.transfer.lag_p99_ms, |v| v <= 100.0),
                t("DSR with sync on / off (same run)", ">= 0.90", Some(s.on_off_ratio), |v| v >= 0.90),
            ]);
        }
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "ringlb-bench {} on {} ({} cores), DPDK {}, {} data packets of 60 B, {} s windows",
            self.timestamp,
            self.machine["cpu"].as_str().unwrap_or("?"),
            self.machine["cores"],
            self.machine["dpdk"].as_str().unwrap_or("?"),
            self.params["data_packets"],
            self.params["seconds"]
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "| sessions | workers | scenario | Mpps | testpmd io Mpps | ratio | ns/pkt | TSC cycles/pkt | drops | table B/session |");
        let _ = writeln!(o, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {} | {:.1} |",
                r.sessions,
                r.workers,
                r.scenario,
                r.mpps,
                r.testpmd_io_mpps,
                r.ratio,
                r.ns_per_packet,
                r.tsc_cycles_per_packet,
                r.drops_in_window,
                r.table_bytes_per_session
            );
        }
        let _ = writeln!(o);
        let refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("{} sessions/{}w {} {:.2}", r.sessions, r.workers, r.mode, r.mpps))
            .collect();
        let _ = writeln!(o, "testpmd (Mpps): {}", refs.join("; "));
        for i in &self.instructions {
            let _ = writeln!(
                o,
                "instructions per packet (callgrind, ringlb-fastpath {} {}): {:.0} in Worker::process_burst, {:.0} with the harness's frame copy",
                i.sessions, i.packets, i.worker, i.with_harness
            );
        }
        if let Some(n) = &self.new_connections {
            let _ = writeln!(
                o,
                "new connections: {:.0}/s on one worker ({} SYNs of unique flows read once from a pcap file)",
                n.per_second_per_worker, n.syns
            );
        }
        if let Some(n) = &self.syn_cookies {
            let _ = writeln!(
                o,
                "SYN cookies: {:.0}/s answered on one worker (the same {} SYNs to a syn_proxy service; nothing kept)",
                n.per_second_per_worker, n.syns
            );
        }
        if let Some(n) = &self.l7_connections {
            let _ = writeln!(
                o,
                "L7 connections: {:.0}/s on one worker ({} connections read once from a pcap: SYN, cookie ACK with a GET, the server's SYN-ACK and answer)",
                n.per_second_per_worker, n.syns
            );
        }
        if let Some(b) = self.process_bytes_per_session {
            let _ = writeln!(o, "process memory growth: {b:.1} bytes per session");
        }
        if let Some(s) = &self.sync {
            let t = &s.transfer;
            let ms = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "sibling sync ({} sessions made by one worker as fast as it can, to one sibling on loopback): \
                 {} updates/s, lag p50 {} ms, p99 {} ms, {} installed, {} worker events overflowed (republished)",
                t.sessions,
                t.updates_per_s.map_or("-".into(), |v| format!("{v:.0}")),
                ms(t.lag_p50_ms),
                ms(t.lag_p99_ms),
                t.installed,
                t.overflowed
            );
            let _ = writeln!(
                o,
                "DSR at {} sessions: {:.2} Mpps with sync off, {:.2} with sync on: {:.2}",
                t.sessions, s.dsr_sync_off_mpps, s.dsr_sync_on_mpps, s.on_off_ratio
            );
            let c = &s.transports;
            let _ = writeln!(
                o,
                "transports, in one process ({} records of {} B): sync channel {:.0} records/s, {:.2} datagrams per batch; \
                 ring reliable layer {:.0} records/s, {:.2} datagrams per batch",
                c.records,
                c.record_bytes,
                c.sync_records_per_s,
                c.sync_datagrams_per_batch,
                c.reliable_records_per_s,
                c.reliable_datagrams_per_batch
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "| target | wanted | measured | met |");
        let _ = writeln!(o, "|---|---|---:|---|");
        for t in &self.targets {
            let v = t.value.map_or("not measured".into(), |v| format!("{v:.2}"));
            let m = t.met.map_or("-", |m| if m { "yes" } else { "NO" });
            let _ = writeln!(o, "| {} | {} | {} | {} |", t.name, t.target, v, m);
        }
        if let Some(lab) = &self.lab {
            let _ = writeln!(o);
            let _ = writeln!(o, "| lab variant | req/s | p99 ms | ok | what limits it |");
            let _ = writeln!(o, "|---|---:|---:|---|---|");
            for v in lab["variants"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} |",
                    v["name"].as_str().unwrap_or("?"),
                    v["rps"].as_f64().map_or("-".into(), |x| format!("{x:.0}")),
                    v["p99_ms"].as_f64().map_or("-".into(), |x| format!("{x:.2}")),
                    v["ok"],
                    v["limit"].as_str().unwrap_or("")
                );
            }
            if let Some(r) = lab["ratios"].as_object() {
                let rs: Vec<String> = r
                    .iter()
                    .map(|(k, v)| format!("{k} {}", v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))))
                    .collect();
                let _ = writeln!(o, "\nlab ratios (req/s): {}", rs.join(", "));
            }
        }
        o
    }

    /// Writes `<dir>/<timestamp>.json` and `.md`; returns the JSON's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let json = dir.join(format!("{}.json", self.timestamp));
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&json, text).map_err(|e| format!("{}: {e}", json.display()))?;
        let md = dir.join(format!("{}.md", self.timestamp));
        std::fs::write(&md, self.markdown()).map_err(|e| format!("{}: {e}", md.display()))?;
        Ok(json)
    }
}
