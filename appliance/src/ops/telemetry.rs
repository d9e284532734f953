//! The appliance's counters as DPDK telemetry commands, for the tools
//! that read EAL's telemetry socket (`dpdk-telemetry.py`, telegraf's dpdk
//! input): `/ringlb/stats` (the stats line's figures, and bytes), `/ringlb/drops`
//! (by reason) and `/ringlb/servers` (new sessions per server). The
//! control thread publishes them each time it prints the stats line, so
//! both show the same numbers.

use crate::dpdk::telemetry;
use crate::stats::{DropReason, Snapshot};

const COMMANDS: [(&str, &str); 3] = [
    ("/ringlb/stats", "ringlb's packet and session counters, as on its stats line. No parameters."),
    ("/ringlb/drops", "ringlb's dropped packets by reason. No parameters."),
    ("/ringlb/servers", "ringlb's new sessions per server (service/ip_port). No parameters."),
];

/// Registers the commands (after EAL is up).
pub fn register() -> Result<(), String> {
    for (cmd, help) in COMMANDS {
        telemetry::register(cmd, help).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Publishes `s` (`labels`: the servers' "service/ip:port").
pub fn publish(s: &Snapshot, labels: &[String]) {
    let stats = [
        ("rx", s.rx),
        ("tx", s.tx),
        ("rx_bytes", s.rx_bytes),
        ("tx_bytes", s.tx_bytes),
        ("drops", s.drops_total()),
        ("handoff", s.handoff),
        ("active", s.active),
        ("created", s.created),
        ("expired", s.expired),
        ("cookies", s.syn_cookies_sent),
        ("joined", s.proxy_joined),
    ];
    telemetry::publish("/ringlb/stats", &stats.map(|(n, v)| (n.to_string(), v)));
    let drops: Vec<(String, u64)> =
        DropReason::ALL.iter().map(|&d| (d.name().to_string(), s.drops[d as usize])).collect();
    telemetry::publish("/ringlb/drops", &drops);
    let servers: Vec<(String, u64)> = labels.iter().cloned().zip(s.per_server.iter().copied()).collect();
    telemetry::publish("/ringlb/servers", &servers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_names_are_valid_telemetry_names() {
        let s = Snapshot { rx: 7, per_server: vec![3], ..Default::default() };
        publish(&s, &["web/198.18.1.11:8080".to_string()]);
        assert_eq!(telemetry::published("/ringlb/servers").unwrap(), [("web/198_18_1_11_8080".to_string(), 3)]);
        assert!(telemetry::published("/ringlb/stats").unwrap().contains(&("rx".to_string(), 7)));
        assert_eq!(telemetry::published("/ringlb/drops").unwrap().len(), DropReason::ALL.len());
    }
}
