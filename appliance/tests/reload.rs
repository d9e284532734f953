//! A reload as the running appliance does it: `config::reload::prepare`
//! renumbers the new configuration, `Control::reload` sets weights and
//! hands each worker the new routing behind a `Command::Switch`, the worker
//! takes it between two packets and hands the old one back. Real frames
//! before and after, checked by etherparse (ringlb-testkit).

use ringlb::config::{self, reload, Config};
use ringlb::control::channel::{worker_channel, Command, CommandRx, QUEUE_LEN};
use ringlb::control::{Control, Now};
use ringlb::dataplane::{Shared, Verdict, Worker};
use ringlb::session::FlowKey;
use ringlb::stats::WorkerStats;
use ringlb_testkit::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const VIP: &str = "198.18.100.1";

/// A NAT service over servers 198.18.0.<last>:8080 with static MACs
/// 02:00:00:00:02:<last>.
fn yaml(servers: &[(u8, u32)], scheduler: &str, on_down: &str) -> String {
    let list: String = servers
        .iter()
        .map(|(l, w)| {
            format!("    - {{ ip: 198.18.0.{l}, port: 8080, weight: {w}, mac: \"02:00:00:00:02:{l:02x}\" }}\n")
        })
        .collect();
    format!(
        "eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }}\n\
         ports:\n  - {{ device: net_null0, ip: 198.18.0.1/24, mac: \"02:00:00:00:00:01\" }}\n\
         services:\n  - {{ name: web, vip: {VIP}, port: 80, mode: nat, scheduler: {scheduler}, \
         maglev_table_size: 251, on_server_down: {on_down}, group: web }}\n\
         server_groups:\n  web:\n{list}\
         timeouts: {{ syn: 5s, established: 60s, closing: 5s, udp: 10s }}\n"
    )
}

fn client(i: u32) -> [u8; 4] {
    (0xcb00_7100u32 + i).to_be_bytes() // 203.0.113.x
}

struct Rig {
    shared: &'static Shared,
    stats: &'static [WorkerStats],
    worker: Worker<'static>,
    commands: CommandRx,
    control: Control,
    running: Config,
}

impl Rig {
    fn start(yaml: &str) -> Rig {
        let cfg = config::parse(yaml, "running.yaml").unwrap();
        let arc = Arc::new(Shared::new(&cfg, &[PORT_MAC]));
        let shared: &'static Shared = Box::leak(Box::new(Arc::clone(&arc)));
        let stats: &'static [WorkerStats] = Box::leak(Box::new([WorkerStats::new(shared.server_capacity)]));
        let (port, commands, events) = worker_channel(QUEUE_LEN);
        let mut worker = Worker::new(0, shared, &stats[0]);
        worker.connect(events);
        let control = Control::new(&cfg, arc, vec![port], Now { ms: 0, wall_us: 0 }, 1);
        Rig { shared, stats, worker, commands, control, running: cfg }
    }

    /// Reloads from `yaml` as the driver does; Err: refused.
    fn reload(&mut self, yaml: &str) -> Result<reload::Changes, String> {
        let new = config::parse(yaml, "new.yaml").map_err(|e| e.to_string())?;
        let (new, changes) = reload::prepare(&self.running, new, self.shared.server_capacity)?;
        self.control.reload(&new)?;
        self.running = new;
        Ok(changes)
    }

    /// The worker's turn between two bursts: it applies its commands.
    fn worker_round(&mut self, now_ms: u32) {
        while let Some(c) = self.commands.pop() {
            match c {
                Command::Switch => {
                    let next = self.commands.take_switch().expect("the routing comes before its command");
                    let old = self.worker.switch_routing(next);
                    self.commands.give_back(old);
                }
                Command::Release { .. } => {}
                c => self.worker.apply(c, now_ms),
            }
        }
        self.control.poll_workers(Now { ms: u64::from(now_ms), wall_us: 0 });
    }

    /// A client packet of flow `c`; the frame after the worker.
    fn client_packet(&mut self, c: u32, flags: u8, now_ms: u32) -> (Verdict, Vec<u8>) {
        let mut f = tcp(ROUTER_MAC, PORT_MAC, client(c), ip(VIP), 40_000 + c as u16, 80, flags, b"x");
        let v = self.worker.process(&mut f, 0, now_ms, false);
        (v, f)
    }

    /// Opens flow `c`: the last byte of the server it went to.
    fn open(&mut self, c: u32, now_ms: u32) -> u8 {
        let (v, f) = self.client_packet(c, SYN, now_ms);
        assert_eq!(v, Verdict::Tx(0), "flow {c}");
        let seen = check(&f).expect("valid checksums");
        assert_eq!(seen.dst_mac[5], seen.dst[3], "sent to the server's own MAC");
        seen.dst[3]
    }

    /// Where flow `c`'s next packet goes now.
    fn follow(&mut self, c: u32, now_ms: u32) -> u8 {
        let (v, f) = self.client_packet(c, ACK, now_ms);
        assert_eq!(v, Verdict::Tx(0), "flow {c}");
        check(&f).expect("valid checksums").dst[3]
    }

    fn active(&self, server_last: u8) -> u64 {
        let id = self.running.servers.iter().position(|s| s.ip as u8 == server_last).unwrap();
        self.stats[0].server_sessions_active[id].get()
    }
}

fn counts(servers: impl Iterator<Item = u8>) -> BTreeMap<u8, u32> {
    let mut m = BTreeMap::new();
    for s in servers {
        *m.entry(s).or_default() += 1;
    }
    m
}

#[test]
fn a_reload_keeps_every_session_on_its_server_and_new_flows_follow_the_new_weights() {
    let mut rig = Rig::start(&yaml(&[(11, 1), (12, 1), (13, 1)], "wrr", "keep"));
    let before: Vec<u8> = (0..30).map(|c| rig.open(c, 0)).collect();
    assert_eq!(counts(before.iter().copied()), BTreeMap::from([(11, 10), (12, 10), (13, 10)]));

    // 12 reweighted, 13 removed, 14 added.
    let changes = rig.reload(&yaml(&[(11, 1), (12, 2), (14, 3)], "wrr", "keep")).unwrap();
    assert_eq!(
        changes.summary(),
        "added web/198.18.0.14:8080; removed web/198.18.0.13:8080; weights web/198.18.0.12:8080 1 → 2"
    );
    assert_eq!(rig.control.switching(), 1, "the worker has not taken it yet");
    // Until its next round the worker routes by the old tables.
    assert_eq!(
        rig.worker.routing_version(),
        config::parse(&yaml(&[(11, 1), (12, 1), (13, 1)], "wrr", "keep"), "x").unwrap().version()
    );
    rig.worker_round(1);
    assert_eq!(rig.control.switching(), 0, "the old routing came back to the control thread");
    assert_eq!(rig.worker.routing_version(), rig.running.version());

    // Every session keeps its server, the removed one's too (`keep`).
    for c in 0..30 {
        assert_eq!(rig.follow(c, 2), before[c as usize], "flow {c}");
    }
    assert_eq!(rig.active(13), 10, "the removed server's sessions go on");
    // Its NAT replies are still recognised.
    let on_13 = before.iter().position(|&s| s == 13).unwrap() as u32;
    let mut reply =
        tcp([2, 0, 0, 0, 2, 13], PORT_MAC, ip("198.18.0.13"), client(on_13), 8080, 40_000 + on_13 as u16, ACK, b"y");
    assert_eq!(rig.worker.process(&mut reply, 0, 3, false), Verdict::Tx(0));
    let seen = check(&reply).unwrap();
    assert_eq!((seen.src, seen.sport), (ip(VIP), 80), "translated back to the VIP");

    // New flows: 1:2:3, none to the removed server.
    let after: Vec<u8> = (100..160).map(|c| rig.open(c, 4)).collect();
    assert_eq!(counts(after.into_iter()), BTreeMap::from([(11, 10), (12, 20), (14, 30)]));

    // 13 back: its old id, its sessions counted on it all along.
    rig.reload(&yaml(&[(11, 1), (12, 2), (13, 1), (14, 3)], "wrr", "keep")).unwrap();
    rig.worker_round(5);
    assert_eq!(rig.running.servers.len(), 4, "no new id");
    assert_eq!(rig.active(13), 10);
    let again: Vec<u8> = (200..270).map(|c| rig.open(c, 6)).collect();
    assert_eq!(counts(again.into_iter()), BTreeMap::from([(11, 10), (12, 20), (13, 10), (14, 30)]));
}

#[test]
fn a_removed_server_under_on_server_down_reset_has_its_clients_reset() {
    let mut rig = Rig::start(&yaml(&[(11, 1), (12, 1)], "wrr", "reset"));
    let servers: Vec<u8> = (0..4).map(|c| rig.open(c, 0)).collect();
    rig.reload(&yaml(&[(11, 1)], "wrr", "reset")).unwrap();
    rig.worker_round(1);
    for c in 0..4 {
        let (v, f) = rig.client_packet(c, ACK, 2);
        assert_eq!(v, Verdict::Tx(0));
        let seen = check(&f).unwrap();
        if servers[c as usize] == 12 {
            assert_eq!((seen.flags, seen.dst), (RST, client(c)), "flow {c}: reset");
        } else {
            assert_eq!((seen.flags, seen.dst[3]), (ACK, 11), "flow {c}: untouched");
        }
    }
    assert_eq!(rig.stats[0].down_resets.get(), 2);
}

#[test]
fn a_switch_from_wrr_to_maglev_places_new_flows_as_every_appliance_would_and_keeps_old_ones() {
    let mut rig = Rig::start(&yaml(&[(11, 1), (12, 1), (13, 1)], "wrr", "keep"));
    let before: Vec<u8> = (0..12).map(|c| rig.open(c, 0)).collect();
    rig.reload(&yaml(&[(11, 1), (12, 1), (13, 1)], "maglev", "keep")).unwrap();
    // A second reload before the worker took the first is refused, and
    // changes nothing.
    let refused = rig.reload(&yaml(&[(11, 5)], "wrr", "keep")).unwrap_err();
    assert!(refused.contains("not taken up the last reload"), "{refused}");
    rig.worker_round(1);
    for c in 0..12 {
        assert_eq!(rig.follow(c, 2), before[c as usize]);
    }
    let routing = rig.shared.routing();
    for c in 100..200u32 {
        let key = FlowKey {
            client_ip: u32::from_be_bytes(client(c)),
            vip: u32::from_be_bytes(ip(VIP)),
            client_port: 40_000 + c as u16,
            vport: 80,
            proto: ringlb::packet::L4Proto::Tcp,
        };
        let predicted = routing.maglev_pick(0, &key).unwrap();
        let last = rig.running.servers[usize::from(predicted)].ip as u8;
        assert_eq!(rig.open(c, 3), last, "flow {c}");
    }
}

#[test]
fn an_invalid_file_or_a_change_that_needs_a_restart_changes_nothing() {
    let mut rig = Rig::start(&yaml(&[(11, 1), (12, 1)], "wrr", "keep"));
    let version = rig.running.version();
    let broken = yaml(&[(11, 1)], "wrr", "keep").replace("weight: 1", "weight: many");
    let e = rig.reload(&broken).unwrap_err();
    assert!(e.starts_with("new.yaml:"), "file:line:column first: {e}");
    let ports = yaml(&[(11, 1)], "wrr", "keep").replace("198.18.0.1/24", "198.18.0.2/24");
    assert!(rig.reload(&ports).unwrap_err().contains("ports changed"));
    rig.worker_round(1);
    assert_eq!(rig.control.switching(), 0, "nothing was sent");
    assert_eq!(rig.worker.routing_version(), version);
    assert_eq!(rig.control.config_version, version);
    let spread: Vec<u8> = (0..4).map(|c| rig.open(c, 2)).collect();
    assert_eq!(counts(spread.into_iter()), BTreeMap::from([(11, 2), (12, 2)]));
}

#[test]
fn a_removed_servers_address_is_not_asked_for_any_more() {
    // Servers without a static MAC: worker 0 asks for them by ARP.
    let dynamic = |servers: &[(u8, u32)]| {
        let mut y = yaml(servers, "wrr", "keep");
        for (l, _) in servers {
            y = y.replace(&format!(", mac: \"02:00:00:00:02:{l:02x}\""), "");
        }
        y
    };
    let mut rig = Rig::start(&dynamic(&[(11, 1), (12, 1), (13, 1)]));
    let asked = |rig: &mut Rig, now: u32| {
        let mut v = Vec::new();
        rig.worker.due_solicits(now, |n, _| {
            v.push(n.ip as u8);
            true
        });
        v.sort_unstable();
        v
    };
    assert_eq!(asked(&mut rig, 0), vec![11, 12, 13]);
    rig.reload(&dynamic(&[(11, 1), (12, 1)])).unwrap();
    rig.worker_round(1);
    // Unanswered requests are repeated each second: 13's no more.
    assert_eq!(asked(&mut rig, 1_100), vec![11, 12]);
    rig.reload(&dynamic(&[(11, 1), (12, 1), (13, 1)])).unwrap();
    rig.worker_round(1_200);
    assert_eq!(asked(&mut rig, 2_300), vec![11, 12, 13], "back with its server");
}

#[test]
fn a_server_a_reload_adds_gets_new_flows_once_its_mac_is_known() {
    let dynamic = |servers: &[(u8, u32)]| {
        let mut y = yaml(servers, "wrr", "keep");
        for (l, _) in servers {
            y = y.replace(&format!(", mac: \"02:00:00:00:02:{l:02x}\""), "");
        }
        y
    };
    // Worker 0 asks; server `l` answers from 02:00:00:00:02:<l>.
    let resolve = |rig: &mut Rig, now: u32, servers: &[u8]| {
        rig.worker.due_solicits(now, |_, _| true);
        for &l in servers {
            let mac = [2, 0, 0, 0, 2, l];
            let mut reply = arp_reply(mac, ip(&format!("198.18.0.{l}")), PORT_MAC, ip("198.18.0.1"));
            assert_eq!(rig.worker.process(&mut reply, 0, now, false), Verdict::Consumed, "server {l}");
        }
    };
    let mut rig = Rig::start(&dynamic(&[(11, 1), (12, 1)]));
    resolve(&mut rig, 0, &[11, 12]);
    rig.reload(&dynamic(&[(11, 1), (12, 1), (13, 2)])).unwrap();
    rig.worker_round(1);
    // 13's MAC is unknown: new flows go to 11 and 12 (none dropped).
    let before: Vec<u8> = (0..40).map(|c| rig.open(c, 2)).collect();
    assert_eq!(counts(before.into_iter()), BTreeMap::from([(11, 20), (12, 20)]));
    resolve(&mut rig, 1_100, &[13]);
    let after: Vec<u8> = (100..140).map(|c| rig.open(c, 1_101)).collect();
    assert_eq!(counts(after.into_iter()), BTreeMap::from([(11, 10), (12, 10), (13, 20)]));
}

#[test]
fn handshakes_under_way_at_a_reload_complete_through_it() {
    let mut rig = Rig::start(&yaml(&[(11, 1), (12, 1)], "wrr", "keep"));
    let servers: Vec<u8> = (0..40).map(|c| rig.open(c, 0)).collect();
    rig.reload(&yaml(&[(11, 1), (12, 2), (13, 3)], "maglev", "keep")).unwrap();
    rig.worker_round(1);
    for (c, &s) in servers.iter().enumerate() {
        let c = c as u32;
        let mut synack = tcp(
            [2, 0, 0, 0, 2, s],
            PORT_MAC,
            ip(&format!("198.18.0.{s}")),
            client(c),
            8080,
            40_000 + c as u16,
            SYN | ACK,
            b"",
        );
        let mut burst = [&mut synack[..]];
        let mut v = [Verdict::Consumed; 1];
        rig.worker.process_burst(&mut burst, &[0], 2, false, &mut v);
        assert_eq!(v[0], Verdict::Tx(0), "flow {c}'s SYN-ACK from {s}");
        let mut ack = tcp(ROUTER_MAC, PORT_MAC, client(c), ip(VIP), 40_000 + c as u16, 80, ACK, b"GET /");
        let mut burst = [&mut ack[..]];
        rig.worker.process_burst(&mut burst, &[0], 3, false, &mut v);
        assert_eq!(v[0], Verdict::Tx(0), "flow {c}'s ACK");
        assert_eq!(check(&ack).unwrap().dst[3], s, "flow {c} stays on its server");
    }
}

#[test]
fn a_handshake_under_way_with_a_removed_server_completes_with_it() {
    let mut rig = Rig::start(&yaml(&[(11, 1), (12, 1), (13, 1)], "wrr", "keep"));
    let on: Vec<u8> = (0..6).map(|c| rig.open(c, 0)).collect();
    let c = on.iter().position(|&s| s == 13).unwrap() as u32;
    // 13 answered the SYN; its SYN-ACK is on its way when 13 is removed.
    let mut synack =
        tcp([2, 0, 0, 0, 2, 13], PORT_MAC, ip("198.18.0.13"), client(c), 8080, 40_000 + c as u16, SYN | ACK, b"");
    assert_eq!(rig.worker.process(&mut synack, 0, 1, false), Verdict::Tx(0));
    rig.reload(&yaml(&[(11, 1), (12, 1)], "wrr", "keep")).unwrap();
    rig.worker_round(2);
    // The client's SYN again (its timer fired first): still 13, not another
    // server that would reset the client's next segment.
    let (v, f) = rig.client_packet(c, SYN, 1_000);
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!(check(&f).unwrap().dst[3], 13);
    assert_eq!(rig.follow(c, 1_001), 13);
    // A new flow never goes there.
    assert!((100..130).all(|n| rig.open(n, 1_002) != 13));
}
