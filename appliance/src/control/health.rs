//! Server health and load from the ring (acceptability checks and
//! load-aware dispatch). A server with an agent (`server_groups.*.agent`)
//! is up while its agent is a member of the ring's view: the agent leaves
//! the ring when its acceptability check fails, and the ring's detection
//! bound is how soon the appliances see it go. A server down gets weight
//! 0: no new flows (its existing sessions go on). Under
//! `scheduler: least_load` each server's weight is divided by (1 + the
//! load its agent last reported).
//!
//! The result is each server's weight now, which the workers read at every
//! pick (`Shared::server_weight`). Servers without an agent, of a service
//! with `probe`, are probed by the appliance itself (worker 0,
//! `dataplane::probe`); a server down by its probe has weight 0 there, and
//! this module only reports it.

use super::Note;
use crate::config::{Config, SchedulerKind};
use crate::dataplane::Shared;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Weights of `least_load` services are kept this many times finer, so a
/// load of a few tenths already shifts the share.
const LOAD_SCALE: f64 = 1000.0;

struct Server {
    label: String,
    weight: u32,
    agent: Option<SocketAddrV4>,
    least_load: bool,
    /// Its agent is in the ring's view (true for servers without one).
    up: bool,
    weight_now: u32,
    /// Probed by the appliance (no agent, the service has `probe`), and up by it.
    probed: bool,
    probe_up: bool,
    /// Added by a reload: its first weight is not news.
    fresh: bool,
    /// Removed by a reload: its weight is `Control::reload`'s business.
    removed: bool,
}

#[derive(serde::Serialize, Debug, Clone)]
pub struct ServerHealth {
    pub server: String,
    pub agent: Option<String>,
    /// "agent", "probe" or "none": what says whether it is up.
    pub checked_by: &'static str,
    pub up: bool,
    /// The load its agent last reported.
    pub load: Option<f64>,
    /// The weight new flows are placed by now (0 while down).
    pub weight_now: u32,
}

pub struct Health {
    servers: Vec<Server>,
    loads: BTreeMap<SocketAddrV4, f64>,
    pub downs: u64,
    pub ups: u64,
}

/// The load in an agent's report "load <1-min load> conns <n>".
pub fn parse_load(payload: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(payload).ok()?;
    let v: f64 = text.strip_prefix("load ")?.split_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v.min(1e6))
}

impl Health {
    /// None when no server names an agent (nothing to follow).
    pub fn new(cfg: &Config) -> Option<Health> {
        let probed = |s: &crate::config::ServerConfig| {
            !s.removed && s.agent.is_none() && cfg.services[usize::from(s.service)].probe.is_some()
        };
        if !cfg.servers.iter().any(|s| s.agent.is_some() || probed(s)) {
            return None;
        }
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                let svc = &cfg.services[usize::from(s.service)];
                let least_load = svc.scheduler == SchedulerKind::LeastLoad;
                Server {
                    label: format!("{}/{}:{}", svc.name, Ipv4Addr::from(s.ip), s.port),
                    weight: s.weight,
                    agent: s.agent,
                    least_load,
                    up: true,
                    // What `Shared` starts with; `apply` scales least_load's.
                    weight_now: s.weight,
                    probed: probed(s),
                    probe_up: true,
                    fresh: false,
                    removed: s.removed,
                }
            })
            .collect();
        Some(Health { servers, loads: BTreeMap::new(), downs: 0, ups: 0 })
    }

    /// Follows a reload (`config::reload` kept the server ids): servers
    /// kept keep what the ring and the probes said of them; new ones start
    /// up, as at start; removed ones get weight 0. Call `apply` next.
    pub fn reload(old: Option<Health>, cfg: &Config) -> Option<Health> {
        let mut new = Health::new(cfg)?;
        let Some(old) = old else {
            // Nothing followed before: the weights in `Shared` are the configured ones.
            for (s, c) in new.servers.iter_mut().zip(&cfg.servers) {
                if c.removed {
                    s.weight = 0;
                }
                s.weight_now = s.weight;
                s.fresh = true;
            }
            return Some(new);
        };
        for (i, s) in new.servers.iter_mut().enumerate() {
            s.weight = if cfg.servers[i].removed { 0 } else { s.weight };
            match old.servers.get(i) {
                Some(o) => {
                    s.up = o.up;
                    s.probe_up = o.probe_up;
                    s.weight_now = o.weight_now;
                }
                None => {
                    s.weight_now = 0;
                    s.fresh = true;
                }
            }
        }
        new.loads = old.loads;
        new.downs = old.downs;
        new.ups = old.ups;
        Some(new)
    }

    /// A view the master issued: servers whose agent is not in it are down.
    pub fn on_view(&mut self, members: &[SocketAddrV4]) {
        for s in &mut self.servers {
            s.up = s.agent.is_none_or(|a| members.contains(&a));
        }
        self.loads.retain(|a, _| members.contains(a));
    }

    /// A ring broadcast: a load report from one of the servers' agents.
    pub fn on_app(&mut self, origin: SocketAddrV4, payload: &[u8]) {
        if let Some(load) = parse_load(payload) {
            if self.servers.iter().any(|s| s.agent == Some(origin)) {
                self.loads.insert(origin, load);
            }
        }
    }

    /// Sets each server's weight now; returns a note per server that went
    /// down or came back.
    pub fn apply(&mut self, shared: &Shared) -> Vec<Note> {
        let mut notes = Vec::new();
        for (id, s) in self.servers.iter_mut().enumerate().filter(|(_, s)| !s.removed) {
            let load = s.agent.and_then(|a| self.loads.get(&a).copied()).unwrap_or(0.0);
            let now = match (s.up, s.least_load) {
                (false, _) => 0,
                (true, true) => scaled(s.weight, load),
                (true, false) => s.weight,
            };
            if (now == 0) != (s.weight_now == 0) && s.weight != 0 && !s.fresh {
                if now == 0 {
                    self.downs += 1;
                    notes.push(Note::warn(format!(
                        "health: server {} down (its agent left the ring): no new flows",
                        s.label
                    )));
                } else {
                    self.ups += 1;
                    notes.push(format!("health: server {} up again (its agent is back in the ring)", s.label).into());
                }
            }
            if now != s.weight_now || s.fresh {
                s.weight_now = now;
                s.fresh = false;
                shared.set_server_weight(id as u16, now);
            }
            let probe_up = shared.probe_up(id as u16);
            if s.probed && probe_up != s.probe_up {
                s.probe_up = probe_up;
                if probe_up {
                    self.ups += 1;
                    notes.push(format!("health: server {} up again (its probe's SYN-ACKs are back)", s.label).into());
                } else {
                    self.downs += 1;
                    notes.push(Note::warn(format!(
                        "health: server {} down (its probe got no SYN-ACK): no new flows",
                        s.label
                    )));
                }
            }
        }
        notes
    }

    pub fn status(&self) -> Vec<ServerHealth> {
        self.servers
            .iter()
            .map(|s| ServerHealth {
                server: s.label.clone(),
                agent: s.agent.map(|a| a.to_string()),
                checked_by: if s.agent.is_some() {
                    "agent"
                } else if s.probed {
                    "probe"
                } else {
                    "none"
                },
                up: s.up && s.probe_up,
                load: s.agent.and_then(|a| self.loads.get(&a).copied()),
                weight_now: if s.probe_up { s.weight_now } else { 0 },
            })
            .collect()
    }
}

/// A `least_load` weight: the configured one over (1 + load), kept finer
/// by `LOAD_SCALE`, never 0 for a server that is up and weighted.
fn scaled(weight: u32, load: f64) -> u32 {
    if weight == 0 {
        return 0;
    }
    ((f64::from(weight) * LOAD_SCALE / (1.0 + load)).round() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, i), 7400)
    }

    fn setup() -> (Health, Shared) {
        let mut cfg = crate::config::parse(
            "eal: { control_core: 0, worker_cores: [1] }
ports:
  - { device: net_null0, ip: 198.18.0.1/24 }
services:
  - { name: web, vip: 198.18.100.1, port: 80, mode: dsr, group: web }
  - { name: api, vip: 198.18.100.2, port: 80, mode: dsr, scheduler: least_load, group: api }
server_groups:
  web:
    - { ip: 198.18.0.11, port: 80, weight: 2 }
    - { ip: 198.18.0.12, port: 80 }
  api:
    - { ip: 198.18.0.11, port: 80 }
    - { ip: 198.18.0.12, port: 80 }
    - { ip: 198.18.0.13, port: 80 }
",
            "t.yaml",
        )
        .unwrap();
        // .11 and .12 run agents; .13 does not.
        for s in &mut cfg.servers {
            if s.ip & 0xff != 13 {
                s.agent = Some(agent((s.ip & 0xff) as u8));
            }
        }
        let shared = Shared::new(&cfg, &[[2, 0, 0, 0, 0, 1]]);
        (Health::new(&cfg).unwrap(), shared)
    }

    #[test]
    fn a_server_whose_agent_leaves_the_view_gets_no_new_flows_until_it_is_back() {
        let (mut h, shared) = setup();
        h.on_view(&[agent(1), agent(11), agent(12)]);
        assert!(h.apply(&shared).is_empty());
        assert_eq!((shared.server_weight(0), shared.server_weight(1)), (2, 1));
        h.on_view(&[agent(1), agent(11)]);
        let notes = h.apply(&shared);
        assert_eq!(notes.len(), 2, "web and api on .12 went down: {notes:?}");
        assert_eq!((shared.server_weight(1), shared.server_weight(3)), (0, 0));
        assert_eq!(shared.server_weight(4), 1000, "a server without an agent stays up");
        h.on_view(&[agent(1), agent(11), agent(12)]);
        assert_eq!(h.apply(&shared).len(), 2);
        assert_eq!(shared.server_weight(1), 1);
        assert_eq!((h.downs, h.ups), (2, 2));
    }

    #[test]
    fn least_load_divides_weights_by_reported_load_and_ignores_strangers() {
        let (mut h, shared) = setup();
        h.on_view(&[agent(1), agent(11), agent(12)]);
        h.on_app(agent(11), b"load 0.00 conns 3");
        h.on_app(agent(12), b"load 3.00 conns 9");
        h.on_app(agent(99), b"load 0.00 conns 0");
        h.on_app(agent(12), b"load -1 conns 0");
        h.on_app(agent(12), b"appliance ready 5");
        h.apply(&shared);
        // api: .11 at 1000, .12 at 1000 / 4, .13 (no agent) at 1000.
        assert_eq!((shared.server_weight(2), shared.server_weight(3), shared.server_weight(4)), (1000, 250, 1000));
        // wrr services keep their configured weights whatever the load.
        assert_eq!(shared.server_weight(1), 1);
        assert_eq!(parse_load(b"load NaN conns 1"), None);
    }
}
