//! State reconstruction: an appliance that takes a VIP
//! rebuilds the VIP's sessions from the servers. It asks the `ringlb-agent`
//! of every server of the VIP's services (`server_groups.*.agent`) for the
//! server's established connections ("conns? <ports>", a ring App message to
//! that agent); each agent answers over the ring's reliable layer with one
//! "local remote" line per connection, and each line of a service of the
//! VIP becomes a session, installed in its worker like a sibling's replica:
//!
//! - DSR: the server holds the VIP, so a line "VIP:port client" is the
//!   client's flow to that server;
//! - NAT: a line "server:port client" is the client's flow to the service
//!   whose backend that is.
//!
//! A line counts only for a server whose agent sent it (an agent speaks
//! for its own machine), and only for a VIP this appliance asked about.
//! Entries go in `IfAbsent` and dated as old news: what sibling sync
//! brought (or brings later) wins over them.
//!
//! Until every asked agent has answered, or `ANSWER_WAIT_MS` has passed,
//! the VIP is marked rebuilding: the workers hold packets of established
//! flows that find no session (`Verdict::Await`) and process them again
//! when the entries are in, instead of dropping them or picking a server
//! the lists would contradict.

use super::channel::{Command, SessionRecord, WorkerPort};
use super::Now;
use crate::config::{Config, Mode, PortConfig};
use crate::dataplane::Shared;
use crate::packet::L4Proto;
use crate::session::{born_at, FlowKey, InstallMode, State};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

/// How long a VIP's rebuild waits for its agents' answers. An agent reads
/// /proc/net/tcp and answers within milliseconds; one that has not in a
/// second is taken as gone (the ring will say so soon after).
pub const ANSWER_WAIT_MS: u64 = 1000;
/// Lines taken from one answer at most (a forged or runaway list stays bounded).
const MAX_LINES: usize = 1 << 20;
/// How far back rebuilt entries are dated: any sibling news of the same
/// connection is newer (born stamps compare within about 8.7 minutes).
const OLD_NEWS_MS: u64 = 8 * 60_000;

/// A TCP service as reconstruction sees it.
struct Service {
    vip: u32,
    vport: u16,
    mode: Mode,
    /// (global server id, address, port, agent).
    servers: Vec<(u16, u32, u16, Option<SocketAddrV4>)>,
}

/// What the last completed rebuild did.
#[derive(serde::Serialize, Debug, Clone)]
pub struct RebuildReport {
    pub vips: Vec<String>,
    /// Agents asked, and those that answered in time.
    pub asked: usize,
    pub answered: usize,
    pub sessions: u64,
    /// From taking the VIPs to the last answer (or the wait's end).
    pub ms: u64,
}

#[derive(serde::Serialize, Debug, Clone, Default)]
pub struct RebuildStatus {
    /// Sessions installed from the servers' lists, over the run.
    pub sessions: u64,
    pub answers: u64,
    /// Lines that named no service of an asked VIP at the sender's servers.
    pub lines_ignored: u64,
    /// Answers from members not asked (or asked and already timed out).
    pub unasked: u64,
    pub timeouts: u64,
    pub last: Option<RebuildReport>,
}

/// One rebuild in progress: the VIPs taken (together, or while it ran)
/// and the answers still awaited from each agent.
struct Round {
    started_ms: u64,
    vips: Vec<u32>,
    waiting: BTreeMap<SocketAddrV4, u32>,
    asked: usize,
    sessions: u64,
}

pub struct Rebuild {
    services: Vec<Service>,
    /// The data ports (their subnets say which one faces a client).
    ports: Vec<PortConfig>,
    round: Option<Round>,
    status: RebuildStatus,
}

/// "a.b.c.d:p" as the agent prints it (IPv4 only).
fn endpoint(s: &str) -> Option<SocketAddrV4> {
    match s.parse::<SocketAddr>().ok()? {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped().map(IpAddr::V4) {
            Some(IpAddr::V4(ip)) => Some(SocketAddrV4::new(ip, a.port())),
            _ => None,
        },
    }
}

impl Rebuild {
    /// None when no server names an agent (nothing to ask).
    pub fn new(cfg: &Config) -> Option<Rebuild> {
        if !cfg.servers.iter().any(|s| s.agent.is_some()) {
            return None;
        }
        let services = cfg
            .services
            .iter()
            // A proxied connection's sequence delta is nowhere in a
            // server's list: `syn_proxy` and `l7` services are not rebuilt.
            .filter(|s| s.proto == L4Proto::Tcp && !s.syn_proxy && s.mode != Mode::L7)
            .map(|s| Service {
                vip: s.vip,
                vport: s.port,
                mode: s.mode,
                servers: s
                    .servers
                    .iter()
                    .map(|&id| {
                        let sv = &cfg.servers[usize::from(id)];
                        (id, sv.ip, sv.port, sv.agent)
                    })
                    .collect(),
            })
            .collect();
        Some(Rebuild { services, ports: cfg.ports.clone(), round: None, status: RebuildStatus::default() })
    }

    /// This appliance took `vips`: returns the question for each agent of
    /// their servers that is in the ring (`live`), and marks the VIPs
    /// rebuilding until they answer. VIPs taken while a rebuild runs join
    /// it (its agents then owe one answer more).
    pub fn start(
        &mut self,
        vips: &[u32],
        live: &[SocketAddrV4],
        now: Now,
        shared: &Shared,
    ) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let mut ports: BTreeMap<SocketAddrV4, BTreeSet<u16>> = BTreeMap::new();
        for s in self.services.iter().filter(|s| vips.contains(&s.vip)) {
            for &(_, _, port, agent) in &s.servers {
                if let Some(a) = agent.filter(|a| live.contains(a)) {
                    // DSR: the server's end is the VIP's port; NAT: its own.
                    ports.entry(a).or_default().insert(if s.mode == Mode::Dsr { s.vport } else { port });
                }
            }
        }
        if ports.is_empty() {
            return Vec::new();
        }
        for &v in vips {
            shared.set_vip_rebuilding(v, true);
        }
        let round = self.round.get_or_insert_with(|| Round {
            started_ms: now.ms,
            vips: Vec::new(),
            waiting: BTreeMap::new(),
            asked: 0,
            sessions: 0,
        });
        round.vips.extend_from_slice(vips);
        round.asked += ports.len();
        for &a in ports.keys() {
            *round.waiting.entry(a).or_default() += 1;
        }
        ports
            .into_iter()
            .map(|(a, p)| {
                let list: Vec<String> = p.iter().map(u16::to_string).collect();
                (a, format!("conns? {}", list.join(",")).into_bytes())
            })
            .collect()
    }

    /// An answer over the reliable layer from `from`: installs a session
    /// for each of its lines that belongs to an asked VIP at one of the
    /// sender's servers. Returns true when it was the last answer awaited.
    pub fn on_answer(
        &mut self,
        from: SocketAddrV4,
        payload: &[u8],
        now: Now,
        shared: &Shared,
        workers: &mut [WorkerPort],
    ) -> bool {
        let Some(round) = self.round.as_mut().filter(|r| r.waiting.contains_key(&from)) else {
            self.status.unasked += 1;
            return false;
        };
        match round.waiting.get_mut(&from) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                round.waiting.remove(&from);
            }
        }
        self.status.answers += 1;
        let born = born_at(now.wall_us / 1000 - OLD_NEWS_MS.min(now.wall_us / 1000));
        let text = String::from_utf8_lossy(payload);
        for line in text.lines().filter(|l| !l.is_empty()).take(MAX_LINES) {
            let mut f = line.split_whitespace();
            let (Some(local), Some(remote)) = (f.next().and_then(endpoint), f.next().and_then(endpoint)) else {
                self.status.lines_ignored += 1;
                continue;
            };
            let found = self.services.iter().filter(|s| round.vips.contains(&s.vip)).find_map(|s| {
                let mine = |&&(_, ip, port, agent): &&(u16, u32, u16, Option<SocketAddrV4>)| {
                    agent == Some(from)
                        && match s.mode {
                            Mode::Dsr => u32::from(*local.ip()) == s.vip && local.port() == s.vport,
                            Mode::Nat | Mode::L7 => u32::from(*local.ip()) == ip && local.port() == port,
                        }
                };
                s.servers.iter().find(mine).map(|&(id, ..)| (s, id))
            });
            let Some((s, server)) = found else {
                self.status.lines_ignored += 1;
                continue;
            };
            let client_ip = u32::from(*remote.ip());
            let rec = SessionRecord {
                key: FlowKey { client_ip, vip: s.vip, client_port: remote.port(), vport: s.vport, proto: L4Proto::Tcp },
                server,
                state: State::Established,
                // The port facing the client (NAT replies leave by it).
                client_port: self.ports.iter().position(|p| p.contains(client_ip)).unwrap_or(0) as u8,
                client_mac: [0; 6],
                born,
            };
            let w = shared.owner(client_ip, remote.port());
            workers[w].send(Command::Install { rec, mode: InstallMode::IfAbsent });
            round.sessions += 1;
            self.status.sessions += 1;
        }
        if round.waiting.is_empty() {
            self.finish(now, shared);
            return true;
        }
        false
    }

    /// Ends the rebuild whose wait is over. Returns a note if one ended.
    pub fn poll(&mut self, now: Now, shared: &Shared) -> Option<String> {
        let due = self.round.as_ref().is_some_and(|r| now.ms >= r.started_ms + ANSWER_WAIT_MS);
        if !due {
            return None;
        }
        let late: Vec<String> = self.round.as_ref()?.waiting.keys().map(ToString::to_string).collect();
        self.status.timeouts += late.len() as u64;
        self.finish(now, shared);
        Some(format!("rebuild: no answer in {ANSWER_WAIT_MS} ms from {}", late.join(",")))
    }

    /// `vip` went to another appliance: no packets wait for its rebuild.
    pub fn released(&mut self, vip: u32, shared: &Shared) {
        shared.set_vip_rebuilding(vip, false);
        if let Some(r) = &mut self.round {
            r.vips.retain(|v| *v != vip);
        }
    }

    /// The report of the last rebuild (the one just ended, after `finish`).
    pub fn last_note(&self) -> Option<String> {
        let r = self.status.last.as_ref()?;
        Some(format!(
            "rebuild: {} session(s) of {} from {} of {} agent(s) in {} ms",
            r.sessions,
            r.vips.join(","),
            r.answered,
            r.asked,
            r.ms
        ))
    }

    fn finish(&mut self, now: Now, shared: &Shared) {
        let Some(r) = self.round.take() else { return };
        for &v in &r.vips {
            shared.set_vip_rebuilding(v, false);
        }
        self.status.last = Some(RebuildReport {
            vips: r.vips.iter().map(|&v| Ipv4Addr::from(v).to_string()).collect(),
            asked: r.asked,
            answered: r.asked - r.waiting.values().map(|&n| n as usize).sum::<usize>(),
            sessions: r.sessions,
            ms: now.ms - r.started_ms,
        });
    }

    pub fn status(&self) -> RebuildStatus {
        self.status.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::channel::{worker_channel, CommandRx};

    fn agent(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, i), 7400)
    }
    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }
    fn now(ms: u64) -> Now {
        Now { ms, wall_us: 1_000_000_000 + ms * 1000 }
    }

    /// DSR web on .1 (servers .11, .12), NAT api on .2 (.21:8080), DSR
    /// other on .3 (.11 again); agents 10.255.0.11/12/21 on their servers.
    fn setup() -> (Rebuild, Config, Shared, Vec<WorkerPort>, CommandRx) {
        let mut cfg = crate::config::parse(
            "eal: { control_core: 0, worker_cores: [1] }
ports:
  - { device: net_null0, ip: 198.18.0.1/24 }
services:
  - { name: web, vip: 198.18.100.1, port: 80, mode: dsr, group: web }
  - { name: api, vip: 198.18.100.2, port: 80, mode: nat, group: api }
  - { name: other, vip: 198.18.100.3, port: 80, mode: dsr, group: other }
server_groups:
  web:
    - { ip: 198.18.0.11, port: 80 }
    - { ip: 198.18.0.12, port: 80 }
  api:
    - { ip: 198.18.0.21, port: 8080 }
  other:
    - { ip: 198.18.0.11, port: 80 }
",
            "t.yaml",
        )
        .unwrap();
        for s in &mut cfg.servers {
            s.agent = Some(agent((s.ip & 0xff) as u8));
        }
        let shared = Shared::new(&cfg, &[[2, 0, 0, 0, 0, 1]]);
        let (port, rx, _tx) = worker_channel(64);
        (Rebuild::new(&cfg).unwrap(), cfg, shared, vec![port], rx)
    }

    fn installs(w: &mut [WorkerPort], rx: &mut CommandRx) -> Vec<SessionRecord> {
        w[0].flush();
        std::iter::from_fn(|| rx.pop())
            .map(|c| match c {
                Command::Install { rec, mode: InstallMode::IfAbsent } => rec,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_new_owner_rebuilds_dsr_and_nat_sessions_from_each_agents_own_lines() {
        let (mut rb, cfg, shared, mut w, mut rx) = setup();
        let (v1, v2, v3) = (ip("198.18.100.1"), ip("198.18.100.2"), ip("198.18.100.3"));
        let mut asked = rb.start(&[v1, v2], &[agent(11), agent(12), agent(21), agent(1)], now(0), &shared);
        asked.sort();
        assert_eq!(
            asked,
            vec![
                (agent(11), b"conns? 80".to_vec()),
                (agent(12), b"conns? 80".to_vec()),
                (agent(21), b"conns? 8080".to_vec())
            ]
        );
        assert!(shared.vip_rebuilding(v1) && shared.vip_rebuilding(v2) && !shared.vip_rebuilding(v3));

        // Agent .11: one line of web; one of a VIP not taken; one of a NAT
        // backend that is not its machine's; garbage.
        let answer = "198.18.100.1:80 203.0.113.5:40000\n198.18.100.3:80 203.0.113.6:1\n\
                      198.18.0.21:8080 203.0.113.7:5\nnot a line\n";
        assert!(!rb.on_answer(agent(11), answer.as_bytes(), now(5), &shared, &mut w));
        let got = installs(&mut w, &mut rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].server, cfg.services[0].servers[0]);
        assert_eq!(
            (got[0].key.client_ip, got[0].key.client_port, got[0].key.vip, got[0].key.vport),
            (ip("203.0.113.5"), 40000, v1, 80)
        );
        assert_eq!(got[0].state, State::Established);
        assert_eq!(rb.status().lines_ignored, 3);

        // Someone not asked (or asked twice) is not listened to.
        assert!(!rb.on_answer(agent(1), b"198.18.100.1:80 203.0.113.9:9", now(6), &shared, &mut w));
        assert!(!rb.on_answer(agent(11), b"198.18.100.1:80 203.0.113.9:9", now(6), &shared, &mut w));
        assert_eq!(rb.status().unasked, 2);
        assert!(installs(&mut w, &mut rx).is_empty());

        assert!(!rb.on_answer(agent(12), b"", now(7), &shared, &mut w));
        // The NAT backend's list names the server's own address; IPv4-mapped too.
        assert!(rb.on_answer(agent(21), b"[::ffff:198.18.0.21]:8080 [::ffff:203.0.113.7]:5", now(9), &shared, &mut w));
        let got = installs(&mut w, &mut rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].server, cfg.services[1].servers[0]);
        assert_eq!((got[0].key.client_ip, got[0].key.client_port, got[0].key.vip), (ip("203.0.113.7"), 5, v2));
        assert!(!shared.vip_rebuilding(v1) && !shared.vip_rebuilding(v2), "every answer in: no packet waits");
        let last = rb.status().last.unwrap();
        assert_eq!((last.asked, last.answered, last.sessions, last.ms), (3, 3, 2, 9));
    }

    #[test]
    fn a_rebuild_ends_after_the_wait_without_every_answer_and_a_vip_let_go_stops_waiting() {
        let (mut rb, _, shared, mut w, _rx) = setup();
        let v1 = ip("198.18.100.1");
        // Agents outside the ring are not asked.
        assert_eq!(rb.start(&[v1], &[agent(12)], now(0), &shared).len(), 1);
        assert!(rb.poll(now(ANSWER_WAIT_MS - 1), &shared).is_none());
        assert!(shared.vip_rebuilding(v1));
        let note = rb.poll(now(ANSWER_WAIT_MS), &shared).unwrap();
        assert!(note.contains("10.255.0.12:7400"), "{note}");
        assert!(!shared.vip_rebuilding(v1));
        assert_eq!(rb.status().timeouts, 1);
        assert!(!rb.on_answer(agent(12), b"", now(ANSWER_WAIT_MS + 1), &shared, &mut w), "too late: not listened to");

        rb.start(&[v1], &[agent(11)], now(2000), &shared);
        rb.released(v1, &shared);
        assert!(!shared.vip_rebuilding(v1));
        // No agent of the VIP's servers in the ring: nothing waits.
        assert!(rb.start(&[v1], &[], now(3000), &shared).is_empty());
        assert!(!shared.vip_rebuilding(v1));
    }

    #[test]
    fn a_vip_taken_while_a_rebuild_runs_joins_it_and_waits_for_its_own_answer() {
        let (mut rb, _, shared, mut w, mut rx) = setup();
        let (v1, v3) = (ip("198.18.100.1"), ip("198.18.100.3"));
        assert_eq!(rb.start(&[v1], &[agent(11)], now(0), &shared).len(), 1);
        assert_eq!(rb.start(&[v3], &[agent(11)], now(100), &shared).len(), 1, "asked again, for v3");
        assert!(shared.vip_rebuilding(v1) && shared.vip_rebuilding(v3));
        // The first answer (to the question about v1) is not the last awaited.
        assert!(!rb.on_answer(agent(11), b"198.18.100.1:80 203.0.113.5:1", now(110), &shared, &mut w));
        assert!(shared.vip_rebuilding(v3));
        assert!(rb.on_answer(agent(11), b"198.18.100.3:80 203.0.113.6:2", now(120), &shared, &mut w));
        assert_eq!(installs(&mut w, &mut rx).len(), 2);
        assert!(!shared.vip_rebuilding(v1) && !shared.vip_rebuilding(v3));
        let last = rb.status().last.unwrap();
        assert_eq!((last.asked, last.answered, last.sessions), (2, 2, 2));
    }
}
