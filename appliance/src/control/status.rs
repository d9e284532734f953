//! What the appliance reports about itself: the status file (JSON, for
//! scripts and tests) and the cluster part of the stats line.

use super::siblings::Siblings;
use super::vips::{VipOwners, VipStatus};
use super::{Control, ControlCounters, PullReport, Ring, SiblingCounters};
use crate::stats::{DropReason, Snapshot};
use ringlb_ring::member::Counters as RingCounters;
use ringlb_ring::sync::SyncCounters;
use ringlb_ring::wire::{CAP_APPLIANCE, CAP_DISPATCH};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize, Debug)]
pub struct MemberStatus {
    pub address: String,
    pub appliance: bool,
    pub dispatch: bool,
}

#[derive(Serialize, Debug)]
pub struct SyncStatus {
    /// No resync this appliance asked for is outstanding.
    pub in_sync: bool,
    pub last_resync: Option<PullReport>,
    pub records: SiblingCounters,
    pub transport: SyncCounters,
    /// Creation at the sibling → arrival here, over the records measured.
    pub lag_records: u64,
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    /// Unacknowledged batches per sibling.
    pub backlog: BTreeMap<String, usize>,
}

#[derive(Serialize, Debug)]
pub struct ClusterStatus {
    pub address: String,
    /// "forming" or "ring".
    pub state: &'static str,
    pub master: String,
    pub view_version: u64,
    pub members: Vec<MemberStatus>,
    pub dispatcher: Option<String>,
    pub siblings: Vec<String>,
    pub ring: RingCounters,
    pub purges: u64,
    pub app_messages: u64,
    pub sync: Option<SyncStatus>,
    /// With `cluster.vips: owned`: each VIP's owner, and how often this
    /// appliance took or gave up one.
    pub vips: Option<VipsStatus>,
}

#[derive(Serialize, Debug)]
pub struct VipsStatus {
    pub owners: Vec<VipStatus>,
    pub takeovers: u64,
    pub releases: u64,
}

pub(super) fn cluster(r: &Ring, s: Option<&Siblings>, v: Option<&VipOwners>) -> Option<ClusterStatus> {
    let m = &r.member;
    let ms = |us: Option<u64>| us.map(|v| v as f64 / 1000.0);
    Some(ClusterStatus {
        address: r.me.to_string(),
        state: if m.is_forming() { "forming" } else { "ring" },
        master: m.master().to_string(),
        view_version: m.view_version(),
        members: m
            .member_entries()
            .iter()
            .map(|e| MemberStatus {
                address: e.addr.to_string(),
                appliance: e.caps & CAP_APPLIANCE != 0,
                dispatch: e.caps & CAP_DISPATCH != 0,
            })
            .collect(),
        dispatcher: r.dispatcher.map(|d| d.to_string()),
        siblings: s
            .map_or_else(Vec::new, |s| s.siblings().iter().map(|a| super::ring_address(*a).to_string()).collect()),
        ring: m.counters,
        purges: r.purges,
        app_messages: r.app_messages,
        sync: s.map(|s| {
            let (n, p50, p99) = s.lag();
            SyncStatus {
                in_sync: s.in_sync(),
                last_resync: s.last_pull().cloned(),
                records: s.counters,
                transport: s.transport(),
                lag_records: n,
                lag_p50_ms: ms(p50),
                lag_p99_ms: ms(p99),
                backlog: s.backlogs().into_iter().map(|(a, n)| (a.to_string(), n)).collect(),
            }
        }),
        vips: v.map(|v| VipsStatus { owners: v.status(), takeovers: v.takeovers, releases: v.releases }),
    })
}

#[derive(Serialize, Debug)]
pub struct Sessions {
    pub created: u64,
    pub expired: u64,
    pub active: u64,
    /// Half-open or closing sessions that made room for a new flow.
    pub evicted: u64,
    /// ICMP errors passed to the server of the quoted flow.
    pub icmp_errors: u64,
    /// Fragments of `fragments: true` services sent by the address hash.
    pub fragments: u64,
}

/// The workers' side of sibling sync and the control queues.
#[derive(Serialize, Debug)]
pub struct Replication {
    pub installed: u64,
    pub updated: u64,
    pub kept: u64,
    /// News of an older connection of a tuple than the one held: ignored.
    pub stale: u64,
    pub removed: u64,
    /// Sibling sessions that carried a packet here: flows that changed appliance.
    pub adopted: u64,
    pub refused: u64,
    /// Worker events lost to a full queue (then republished).
    pub ctl_overflow: u64,
    /// Commands waiting in the control thread for full worker queues.
    pub ctl_backlog: usize,
}

#[derive(Serialize, Debug)]
pub struct Locks {
    pub created: u64,
    pub hits: u64,
    pub table_full: u64,
}

#[derive(Serialize, Debug)]
pub struct Defer {
    pub held: u64,
    pub timeouts: u64,
    pub full: u64,
}

/// `syn_proxy` services' connections.
#[derive(Serialize, Debug)]
pub struct SynProxy {
    /// SYNs answered with a cookie.
    pub cookies_sent: u64,
    /// Valid cookies returned: the server's side opened.
    pub opened: u64,
    /// The server answered: the halves joined.
    pub joined: u64,
    /// The server refused or never answered: the client was reset.
    pub failed: u64,
    /// Proxied connections held now.
    pub active: u64,
    /// The appliance's own frames that found the queue full (sent again by their timer).
    pub emit_full: u64,
    /// `l7`: requests sent to another server after theirs failed, and per
    /// server ("service/ip:port") how many were taken from it.
    pub l7_redirects: u64,
    /// `l7` mid-download failover: downloads resumed on another server,
    /// resumes refused (the client reset), the latest resume's body offset.
    pub l7_resumes: u64,
    pub l7_resume_refused: u64,
    pub l7_resume_offset: u64,
    pub redirected_from: BTreeMap<String, u64>,
    /// `l7`, `connect: race`: per server, races it won.
    pub race_won: BTreeMap<String, u64>,
}

/// Packets of established flows that met no session (a flow that began on
/// a failed appliance).
#[derive(Serialize, Debug)]
pub struct Midflow {
    /// Held while their VIP's sessions were rebuilt from the servers.
    pub awaited: u64,
    /// Still without a session when the hold ran out (dropped).
    pub await_timeouts: u64,
    /// Maglev services: forwarded by the pick, a session made for them.
    pub picked: u64,
}

/// How this run of the appliance is laid out (fixed at start).
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub struct Runtime {
    pub workers: usize,
    /// The TSC's frequency (cycles per second).
    pub tsc_hz: u64,
    /// The session table's size in bytes, per worker.
    pub table_bytes_per_worker: u64,
}

/// Everything in the status file.
#[derive(Serialize, Debug)]
pub struct Status {
    pub t_s: f64,
    /// The running configuration's version (`ringlb check` prints it too).
    pub config_version: String,
    /// The cluster-wide part's version and generation, and each member's
    /// (`control::agreement`).
    pub config: super::agreement::AgreementStatus,
    pub runtime: Runtime,
    pub rx: u64,
    pub tx: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Frames to and from the ports' kernel interfaces.
    pub kernel_in: u64,
    pub kernel_out: u64,
    pub handoff: u64,
    pub arp_replies: u64,
    pub echo_replies: u64,
    pub drops_total: u64,
    pub drops: BTreeMap<&'static str, u64>,
    pub sessions: Sessions,
    /// New sessions per server ("service/ip:port").
    pub per_server: BTreeMap<String, u64>,
    pub replication: Replication,
    pub locks: Locks,
    pub defer: Defer,
    pub midflow: Midflow,
    pub control: ControlCounters,
    /// Sessions rebuilt from the servers' connection lists (`cluster.vips: owned`).
    pub rebuild: Option<super::rebuild::RebuildStatus>,
    /// Servers' health and weights now (with servers' agents).
    pub servers: Option<Vec<super::health::ServerHealth>>,
    /// Sessions ended with a RST because their server went down.
    pub down_resets: u64,
    /// `syn_proxy` services (None when there are none).
    pub syn_proxy: Option<SynProxy>,
    pub cluster: Option<ClusterStatus>,
}

/// Per-server counts by "service/ip:port". A server in several groups of
/// an `l7` service is one label with several entries: their counts add up.
/// `nonzero`: only the labels with a count.
fn by_label(labels: &[String], counts: &[u64], nonzero: bool) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (l, &n) in labels.iter().zip(counts) {
        if n > 0 || !nonzero {
            *m.entry(l.clone()).or_insert(0) += n;
        }
    }
    m
}

impl Status {
    pub fn new(t_s: f64, s: &Snapshot, labels: &[String], control: &Control) -> Status {
        Status {
            t_s,
            config_version: control.config_version.clone(),
            config: control.agreement_status(),
            runtime: control.runtime,
            rx: s.rx,
            tx: s.tx,
            rx_bytes: s.rx_bytes,
            tx_bytes: s.tx_bytes,
            kernel_in: s.kernel_in,
            kernel_out: s.kernel_out,
            handoff: s.handoff,
            arp_replies: s.arp_replies,
            echo_replies: s.echo_replies,
            drops_total: s.drops_total(),
            drops: DropReason::ALL.iter().map(|d| (d.name(), s.drops[*d as usize])).collect(),
            sessions: Sessions {
                created: s.created,
                expired: s.expired,
                active: s.active,
                evicted: s.evicted,
                icmp_errors: s.icmp_errors,
                fragments: s.fragments,
            },
            per_server: by_label(labels, &s.per_server, false),
            replication: Replication {
                installed: s.sync_installed,
                updated: s.sync_updated,
                kept: s.sync_kept,
                stale: s.sync_stale,
                removed: s.sync_removed,
                adopted: s.sync_adopted,
                refused: s.sync_refused,
                ctl_overflow: s.ctl_overflow,
                ctl_backlog: control.backlog(),
            },
            locks: Locks { created: s.locks_created, hits: s.lock_hits, table_full: s.lock_table_full },
            defer: Defer { held: s.deferred, timeouts: s.defer_timeouts, full: s.defer_full },
            midflow: Midflow { awaited: s.awaited, await_timeouts: s.await_timeouts, picked: s.midflow_picked },
            control: control.counters,
            rebuild: control.rebuild_status(),
            servers: control.health_status(),
            down_resets: s.down_resets,
            syn_proxy: control.has_syn_proxy().then_some(SynProxy {
                cookies_sent: s.syn_cookies_sent,
                opened: s.proxy_opened,
                joined: s.proxy_joined,
                failed: s.proxy_failed,
                active: s.proxy_active,
                emit_full: s.proxy_emit_full,
                l7_redirects: s.l7_redirects,
                l7_resumes: s.l7_resumes,
                l7_resume_refused: s.l7_resume_refused,
                l7_resume_offset: s.l7_resume_offset,
                redirected_from: by_label(labels, &s.per_server_redirects, true),
                race_won: by_label(labels, &s.per_server_race_won, true),
            }),
            cluster: control.cluster_status(),
        }
    }

    /// The cluster part of the stats line ("" when standalone).
    pub fn cluster_line(&self) -> String {
        let Some(c) = &self.cluster else { return String::new() };
        let mut o = format!(
            " | ring state={} v={} members={} siblings={} dispatcher={}",
            c.state,
            c.view_version,
            c.members.len(),
            c.siblings.len(),
            c.dispatcher.as_deref().unwrap_or("none")
        );
        if let Some(v) = &c.vips {
            let here: Vec<&str> = v.owners.iter().filter(|o| o.here).map(|o| o.vip.as_str()).collect();
            o.push_str(&format!(" | vips here=[{}] takeovers={}", here.join(","), v.takeovers));
        }
        if let Some(s) = &c.sync {
            let r = &self.replication;
            o.push_str(&format!(
                " | sync out={} in={} installed={} adopted={} lag_p99_ms={}",
                s.records.records_out,
                s.records.records_in,
                r.installed,
                r.adopted,
                s.lag_p99_ms.map_or("-".into(), |v| format!("{v:.1}"))
            ));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::by_label;

    #[test]
    fn a_server_in_two_groups_counts_once_with_both_counts() {
        let labels = ["web/10.0.0.1:80", "web/10.0.0.2:80", "web/10.0.0.1:80"].map(String::from);
        let all = by_label(&labels, &[3, 0, 4], false);
        assert_eq!(all.into_iter().collect::<Vec<_>>(), [("web/10.0.0.1:80".into(), 7), ("web/10.0.0.2:80".into(), 0)]);
        let some = by_label(&labels, &[3, 0, 4], true);
        assert_eq!(some.len(), 1);
    }
}
