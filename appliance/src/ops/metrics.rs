//! The appliance's counters in Prometheus's text format, through the
//! `metrics` facade and `metrics-exporter-prometheus` (without its HTTP
//! listener: `ops::server` serves the text). Each scrape fills a fresh
//! recorder from one snapshot of the workers' counters, taken by the
//! control thread: the workers are never touched, and every series of a
//! scrape comes from the same instant.
//!
//! Names follow Prometheus's conventions: `ringlb_` prefix, `_total` for
//! counters, base units (seconds), labels for the reason, the server.

use super::protocol::ServerRow;
use crate::control::status::Status;
use crate::stats::{DropReason, Snapshot};
use metrics::{counter, describe_counter, describe_gauge, gauge, with_local_recorder};
use metrics_exporter_prometheus::PrometheusBuilder;

/// The exposition text of one scrape.
pub fn render(s: &Snapshot, status: &Status, servers: &[ServerRow]) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    with_local_recorder(&recorder, || record(s, status, servers));
    handle.render()
}

fn record(s: &Snapshot, status: &Status, servers: &[ServerRow]) {
    describe_gauge!("ringlb_uptime_seconds", "Seconds since the appliance started.");
    gauge!("ringlb_uptime_seconds").set(status.t_s);

    let packets = [
        ("ringlb_rx_packets_total", "Packets the workers received.", s.rx),
        ("ringlb_tx_packets_total", "Packets the workers sent.", s.tx),
        ("ringlb_rx_bytes_total", "Bytes of the frames the workers received.", s.rx_bytes),
        ("ringlb_tx_bytes_total", "Bytes of the frames the workers sent.", s.tx_bytes),
        ("ringlb_handoff_packets_total", "Packets handed to the worker that owns their flow.", s.handoff),
        ("ringlb_kernel_in_packets_total", "Frames passed to the ports' kernel interfaces.", s.kernel_in),
        (
            "ringlb_kernel_out_packets_total",
            "Frames the kernel sent through the ports' kernel interfaces.",
            s.kernel_out,
        ),
        ("ringlb_arp_replies_total", "ARP replies sent.", s.arp_replies),
        ("ringlb_echo_replies_total", "ICMP echo replies sent.", s.echo_replies),
    ];
    for (name, help, v) in packets {
        describe_counter!(name, help);
        counter!(name).absolute(v);
    }
    describe_counter!("ringlb_drops_total", "Packets dropped, by reason.");
    for &d in DropReason::ALL.iter() {
        counter!("ringlb_drops_total", "reason" => d.name()).absolute(s.drops[d as usize]);
    }

    let sessions = [
        ("ringlb_sessions_created_total", "Sessions created.", s.created),
        ("ringlb_sessions_expired_total", "Sessions removed after their idle timeout.", s.expired),
        ("ringlb_sessions_evicted_total", "Half-open or closing sessions removed to make room.", s.evicted),
        (
            "ringlb_sessions_reset_on_server_down_total",
            "Sessions ended with a RST: their server went down.",
            s.down_resets,
        ),
    ];
    for (name, help, v) in sessions {
        describe_counter!(name, help);
        counter!(name).absolute(v);
    }
    describe_gauge!("ringlb_sessions_active", "Sessions in the tables now (local and siblings' replicas).");
    gauge!("ringlb_sessions_active").set(s.active as f64);

    describe_counter!("ringlb_server_new_sessions_total", "Sessions created for the server.");
    describe_gauge!("ringlb_server_sessions_active", "Sessions for the server in the session tables now.");
    describe_counter!("ringlb_server_redirects_total", "l7: requests taken from the server because it failed them.");
    describe_gauge!("ringlb_server_weight", "The server's weight for new flows now (0: down or drained).");
    describe_gauge!("ringlb_server_up", "1 if the server is up by its agent and probe.");
    describe_gauge!("ringlb_server_drained", "1 if the operator drained the server.");
    for r in servers {
        let labels = [("server", r.server.clone()), ("service", r.service.clone())];
        counter!("ringlb_server_new_sessions_total", &labels).absolute(r.new_sessions);
        gauge!("ringlb_server_sessions_active", &labels).set(r.active_sessions as f64);
        counter!("ringlb_server_redirects_total", &labels).absolute(r.redirected);
        gauge!("ringlb_server_weight", &labels).set(f64::from(r.weight_now));
        gauge!("ringlb_server_up", &labels).set(f64::from(u8::from(r.up)));
        gauge!("ringlb_server_drained", &labels).set(f64::from(u8::from(r.drained)));
    }

    let replication = [
        ("ringlb_sync_installed_total", "Siblings' sessions installed here.", s.sync_installed),
        ("ringlb_sync_removed_total", "Siblings' sessions removed here.", s.sync_removed),
        ("ringlb_sync_adopted_total", "Siblings' sessions whose flow came here.", s.sync_adopted),
        ("ringlb_sync_refused_total", "Siblings' sessions refused (bad or no room).", s.sync_refused),
        ("ringlb_control_queue_overflows_total", "Worker events lost to a full control queue.", s.ctl_overflow),
    ];
    for (name, help, v) in replication {
        describe_counter!(name, help);
        counter!(name).absolute(v);
    }
    describe_gauge!("ringlb_control_backlog", "Commands waiting for a worker whose queue is full.");
    gauge!("ringlb_control_backlog").set(status.replication.ctl_backlog as f64);

    if let Some(p) = &status.syn_proxy {
        let proxy = [
            ("ringlb_syn_cookies_sent_total", "SYNs answered with a SYN cookie.", p.cookies_sent),
            ("ringlb_proxy_opened_total", "Valid cookies returned: the server's side opened.", p.opened),
            ("ringlb_proxy_joined_total", "Proxied connections whose server answered.", p.joined),
            ("ringlb_proxy_failed_total", "Proxied connections reset: no server answered.", p.failed),
            ("ringlb_l7_redirects_total", "l7: requests sent to another server after theirs failed.", p.l7_redirects),
            ("ringlb_l7_resumes_total", "l7: downloads resumed on another server.", p.l7_resumes),
            ("ringlb_l7_resume_refused_total", "l7: resumes that failed (the client was reset).", p.l7_resume_refused),
        ];
        for (name, help, v) in proxy {
            describe_counter!(name, help);
            counter!(name).absolute(v);
        }
        describe_gauge!("ringlb_proxy_active", "Proxied connections held now.");
        gauge!("ringlb_proxy_active").set(p.active as f64);
    }

    if let Some(c) = &status.cluster {
        describe_gauge!("ringlb_ring_members", "Members of the ring's current view.");
        gauge!("ringlb_ring_members").set(c.members.len() as f64);
        describe_gauge!("ringlb_ring_view_version", "The ring view's version.");
        gauge!("ringlb_ring_view_version").set(c.view_version as f64);
        describe_gauge!("ringlb_ring_formed", "1 once the ring is formed, 0 while forming.");
        gauge!("ringlb_ring_formed").set(f64::from(u8::from(c.state == "ring")));
        describe_gauge!("ringlb_ring_dispatcher", "1 if this appliance is the elected dispatcher.");
        gauge!("ringlb_ring_dispatcher").set(f64::from(u8::from(c.dispatcher.as_deref() == Some(&c.address))));
        describe_counter!("ringlb_ring_purges_total", "Ring purges (a member lost, the token regenerated).");
        counter!("ringlb_ring_purges_total").absolute(c.purges);
        describe_gauge!("ringlb_ring_siblings", "Sibling appliances sessions are shared with.");
        gauge!("ringlb_ring_siblings").set(c.siblings.len() as f64);
        if let Some(p99) = c.sync.as_ref().and_then(|s| s.lag_p99_ms) {
            describe_gauge!("ringlb_sync_lag_p99_seconds", "Creation at a sibling to arrival here, 99th percentile.");
            gauge!("ringlb_sync_lag_p99_seconds").set(p99 / 1000.0);
        }
    }
}
