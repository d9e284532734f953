//! What a reload may change, and the server ids it keeps.
//!
//! A running appliance takes a new configuration's servers, weights,
//! schedulers, timeouts, probes and `l7` rules without a restart. What
//! sizes its memory, its ports or its cores (`eal`, `ports`, `sessions`,
//! `cluster`, the set of services and their addresses and modes) needs a
//! restart: `prepare` refuses such a change and names it.
//!
//! Sessions and counters name a server by its id (its index in
//! `Config::servers`), so `prepare` renumbers the new configuration's
//! servers to keep every id: a server still there (same service, address
//! and port) keeps its id, a new one takes the next free id, and a removed
//! one stays as a tombstone (`ServerConfig::removed`) in no service's list.
//! A server removed and added back gets its old id again. Next hops keep
//! their indexes the same way.

use super::{Config, NeighborConfig, ServerConfig};
use std::collections::HashMap;

/// What a reload changes, for the log and the operator.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// "label weight a → b".
    pub reweighted: Vec<String>,
    /// "service scheduler a → b".
    pub rescheduled: Vec<String>,
}

impl Changes {
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |what: &str, v: &[String]| {
            if !v.is_empty() {
                parts.push(format!("{what} {}", v.join(", ")));
            }
        };
        list("added", &self.added);
        list("removed", &self.removed);
        list("weights", &self.reweighted);
        list("schedulers", &self.rescheduled);
        if parts.is_empty() {
            "no server, weight or scheduler changed".into()
        } else {
            parts.join("; ")
        }
    }
}

/// `new` renumbered to keep `running`'s server ids, with what changed; Err
/// names what only a restart can change, or that the server ids a
/// restart would free are used up (`capacity`).
pub fn prepare(running: &Config, mut new: Config, capacity: usize) -> Result<(Config, Changes), String> {
    needs_no_restart(running, &new)?;
    // Next hops: kept ones keep their index, new ones follow.
    let mut neighbors: Vec<NeighborConfig> = running.neighbors.clone();
    let mut neighbor_map = Vec::with_capacity(new.neighbors.len());
    for n in &new.neighbors {
        let i = match neighbors.iter().position(|o| o.ip == n.ip && o.port == n.port) {
            Some(i) => {
                neighbors[i].static_mac = n.static_mac;
                i
            }
            None => {
                neighbors.push(n.clone());
                neighbors.len() - 1
            }
        };
        neighbor_map.push(i as u16);
    }
    // Servers: every old one starts as a tombstone, the new ones take
    // their old ids or the next free ones.
    let key = |cfg: &Config, s: &ServerConfig| (cfg.services[usize::from(s.service)].name.clone(), s.ip, s.port);
    // A key may have several ids (a server in two groups of one `l7`
    // service): they are handed out again in order.
    let mut old_ids: HashMap<_, Vec<usize>> = HashMap::new();
    for (i, s) in running.servers.iter().enumerate() {
        old_ids.entry(key(running, s)).or_default().push(i);
    }
    let mut servers: Vec<ServerConfig> =
        running.servers.iter().map(|s| ServerConfig { removed: true, agent: None, ..s.clone() }).collect();
    let mut taken = vec![false; servers.len()];
    let mut server_map = Vec::with_capacity(new.servers.len());
    let mut changes = Changes::default();
    for s in &new.servers {
        let moved = ServerConfig { neighbor: neighbor_map[usize::from(s.neighbor)], ..s.clone() };
        let label = new.server_label(server_map.len());
        let kept = old_ids.get(&key(&new, s)).and_then(|ids| ids.iter().copied().find(|&i| !taken[i]));
        let id = match kept {
            Some(i) => {
                let old = &running.servers[i];
                if old.removed {
                    changes.added.push(label);
                } else if old.weight != s.weight {
                    changes.reweighted.push(format!("{label} {} → {}", old.weight, s.weight));
                }
                servers[i] = moved;
                i
            }
            None => {
                changes.added.push(label);
                servers.push(moved);
                taken.push(false);
                servers.len() - 1
            }
        };
        taken[id] = true;
        server_map.push(id as u16);
    }
    if new.services.iter().any(|s| s.probe.is_some()) && servers.len() > super::MAX_PROBED {
        return Err(format!(
            "the reload needs {} server ids; probes allow {} (one probe port each; ids of removed servers are \
             freed by a restart)",
            servers.len(),
            super::MAX_PROBED
        ));
    }
    if servers.len() > capacity {
        return Err(format!(
            "the reload needs {} server ids, the appliance has {capacity} (ids of removed servers are freed \
             by a restart)",
            servers.len()
        ));
    }
    for (i, s) in running.servers.iter().enumerate() {
        if !s.removed && !taken[i] {
            changes.removed.push(running.server_label(i));
        }
    }
    for (old, s) in running.services.iter().zip(&new.services) {
        if old.scheduler != s.scheduler {
            changes.rescheduled.push(format!("{} {} → {}", s.name, old.scheduler.name(), s.scheduler.name()));
        }
    }
    for s in &mut new.services {
        for id in &mut s.servers {
            *id = server_map[usize::from(*id)];
        }
    }
    new.servers = servers;
    new.neighbors = neighbors;
    Ok((new, changes))
}

/// Err names the first change that needs a restart.
fn needs_no_restart(running: &Config, new: &Config) -> Result<(), String> {
    let same = |a: String, b: String| a == b;
    if !same(format!("{:?}", running.eal), format!("{:?}", new.eal)) {
        return Err("eal changed: cores and memory need a restart".into());
    }
    if !same(format!("{:?}", running.ports), format!("{:?}", new.ports)) {
        return Err("ports changed: ports need a restart".into());
    }
    if !same(format!("{:?}", running.cluster), format!("{:?}", new.cluster)) {
        return Err("cluster changed: the cluster section needs a restart".into());
    }
    let capacities = |c: &Config| (c.session_capacity, c.lock_capacity, c.proxied_capacity, c.request_buffers);
    if capacities(running) != capacities(new) {
        return Err("sessions changed: table capacities need a restart".into());
    }
    if running.arp_refresh_ms != new.arp_refresh_ms
        || running.syn_cookie_key_file != new.syn_cookie_key_file
        || running.bird != new.bird
    {
        return Err("arp.refresh, syn_cookies or bird changed: they need a restart".into());
    }
    let names = |c: &Config| c.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if names(running) != names(new) {
        return Err(format!(
            "the services changed ({} → {}): adding, removing or reordering services needs a restart",
            names(running).join(", "),
            names(new).join(", ")
        ));
    }
    // Agents are ring members: the ring's peer list is fixed at start.
    let agents = |c: &Config| {
        let mut v: Vec<String> = c
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.removed && s.agent.is_some())
            .map(|(i, s)| format!("{} agent {:?}", c.server_label(i), s.agent))
            .collect();
        v.sort();
        v
    };
    if agents(running) != agents(new) {
        return Err("servers with an agent changed: the ring's members need a restart".into());
    }
    let had_locks = running.services.iter().any(|s| s.persistence_ms.is_some());
    for (old, s) in running.services.iter().zip(&new.services) {
        let fixed =
            |x: &super::ServiceConfig| (x.vip, x.port, x.proto, x.mode, x.syn_proxy, x.fragments, x.l7.is_some());
        if fixed(old) != fixed(s) {
            return Err(format!(
                "service {}: its vip, port, protocol, mode, syn_proxy, fragments or l7 changed; \
                 that needs a restart",
                s.name
            ));
        }
        if s.persistence_ms.is_some() && !had_locks {
            return Err(format!(
                "service {}: persistence where no service had it needs a restart (the lock table)",
                s.name
            ));
        }
    }
    Ok(())
}

/// The top-level sections every member of a cluster shares: a reload on
/// one member proposes them to all (`control::agreement`); each member
/// keeps its own `eal`, `ports`, `sessions`, `cluster` and the rest.
pub const SHARED_SECTIONS: [&str; 3] = ["services", "server_groups", "timeouts"];

/// A YAML document's top-level blocks: (key, text from its line to the
/// next top-level key). Text before the first key has key "".
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![(String::new(), String::new())];
    for line in text.split_inclusive('\n') {
        let top = line.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if let Some(key) = line.split_once(':').map(|(k, _)| k).filter(|_| top) {
            out.push((key.trim().to_string(), String::new()));
        }
        if let Some(last) = out.last_mut() {
            last.1.push_str(line);
        }
    }
    out
}

/// The shared sections of a configuration file's text.
pub fn shared_text(text: &str) -> String {
    blocks(text).into_iter().filter(|(k, _)| SHARED_SECTIONS.contains(&k.as_str())).map(|(_, t)| t).collect()
}

/// `local` (this member's file) with its shared sections replaced by those
/// of `shared` (a `shared_text`): sections `shared` lacks are dropped,
/// ones `local` lacks are appended.
pub fn merge_shared(local: &str, shared: &str) -> String {
    let theirs = blocks(shared);
    let mut out = String::new();
    let mut placed = Vec::new();
    for (key, text) in blocks(local) {
        if !SHARED_SECTIONS.contains(&key.as_str()) {
            out.push_str(&text);
            if !out.ends_with('\n') && !out.is_empty() {
                out.push('\n');
            }
            continue;
        }
        if let Some((_, t)) = theirs.iter().find(|(k, _)| *k == key) {
            out.push_str(t);
            placed.push(key);
        }
    }
    for (key, text) in theirs.iter().filter(|(k, _)| SHARED_SECTIONS.contains(&k.as_str())) {
        if !placed.contains(key) {
            if !out.ends_with('\n') && !out.is_empty() {
                out.push('\n');
            }
            out.push_str(text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn yaml(servers: &str, scheduler: &str, extra: &str) -> String {
        format!(
            "eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }}\n\
             ports:\n  - {{ device: net_null0, ip: 198.18.0.1/24, mac: \"02:00:00:00:00:01\" }}\n\
             services:\n  - {{ name: web, vip: 198.18.100.1, port: 80, mode: nat, scheduler: {scheduler}, group: web }}\n\
             server_groups:\n  web:\n{servers}{extra}"
        )
    }

    fn server(last: u8, weight: u32) -> String {
        format!("    - {{ ip: 198.18.0.{last}, port: 8080, weight: {weight} }}\n")
    }

    fn cfg(servers: &[(u8, u32)], scheduler: &str, extra: &str) -> Config {
        let list: String = servers.iter().map(|&(l, w)| server(l, w)).collect();
        parse(&yaml(&list, scheduler, extra), "test.yaml").unwrap()
    }

    /// (ip's last byte, weight, removed) per server id.
    fn ids(c: &Config) -> Vec<(u8, u32, bool)> {
        c.servers.iter().map(|s| (s.ip as u8, s.weight, s.removed)).collect()
    }

    #[test]
    fn kept_servers_keep_their_ids_new_ones_follow_and_removed_ones_stay_as_tombstones() {
        let running = cfg(&[(11, 1), (12, 1), (13, 1)], "wrr", "");
        // 12 removed, 13 reweighted, 14 added; listed in another order.
        let (new, changes) = prepare(&running, cfg(&[(14, 2), (13, 3), (11, 1)], "maglev", ""), 16).unwrap();
        assert_eq!(ids(&new), vec![(11, 1, false), (12, 1, true), (13, 3, false), (14, 2, false)]);
        assert_eq!(new.services[0].servers, vec![3, 2, 0], "the service lists the new config's order by kept id");
        assert_eq!(changes.added, vec!["web/198.18.0.14:8080"]);
        assert_eq!(changes.removed, vec!["web/198.18.0.12:8080"]);
        assert_eq!(changes.reweighted, vec!["web/198.18.0.13:8080 1 → 3"]);
        assert_eq!(changes.rescheduled, vec!["web wrr → maglev"]);
        // Each server's next hop is still its own address.
        for s in new.servers.iter() {
            assert_eq!(new.neighbors[usize::from(s.neighbor)].ip, s.ip);
        }
        // 12 back: its old id again, nothing new.
        let (again, changes) = prepare(&new, cfg(&[(11, 1), (12, 5)], "maglev", ""), 16).unwrap();
        assert_eq!(ids(&again), vec![(11, 1, false), (12, 5, false), (13, 3, true), (14, 2, true)]);
        assert_eq!(changes.added, vec!["web/198.18.0.12:8080"]);
        assert_eq!(again.version(), cfg(&[(11, 1), (12, 5)], "maglev", "").version(), "tombstones are not config");
    }

    #[test]
    fn changes_only_a_restart_can_make_are_refused_by_name() {
        let running = cfg(&[(11, 1)], "wrr", "");
        let refused = |new: &str| prepare(&running, parse(new, "new.yaml").unwrap(), 16).unwrap_err();
        let ports = yaml(&server(11, 1), "wrr", "").replace("198.18.0.1/24", "198.18.0.2/24");
        assert!(refused(&ports).contains("ports changed"), "{}", refused(&ports));
        let cores = yaml(&server(11, 1), "wrr", "").replace("worker_cores: [1]", "worker_cores: [1, 2]");
        assert!(refused(&cores).contains("eal changed"));
        let sessions = yaml(&server(11, 1), "wrr", "sessions: { capacity: 10 }\n");
        assert!(refused(&sessions).contains("sessions changed"));
        let vip = yaml(&server(11, 1), "wrr", "").replace("198.18.100.1", "198.18.100.2");
        assert!(refused(&vip).contains("service web"), "{}", refused(&vip));
        let api = "  api:\n    - { ip: 198.18.0.50, port: 8081 }\n";
        let services = yaml(&server(11, 1), "wrr", api).replace(
            "group: web }\n",
            "group: web }\n  - { name: api, vip: 198.18.100.1, port: 81, mode: nat, group: api }\n",
        );
        assert!(refused(&services).contains("services changed (web → web, api)"), "{}", refused(&services));
        // Out of ids: the 17th server ever.
        let many: Vec<(u8, u32)> = (20..37).map(|l| (l, 1)).collect();
        assert!(prepare(&running, cfg(&many, "wrr", ""), 16).unwrap_err().contains("server ids"));
    }

    #[test]
    fn a_members_own_sections_stay_and_the_shared_ones_are_taken_from_the_proposal() {
        let local = "# b\neal: { control_core: 0, worker_cores: [1] }\nservices:\n  - old\nsessions: { capacity: 9 }\ncluster:\n  address: b\n";
        let theirs =
            "eal: { control_core: 5 }\nservices:\n  - new\nserver_groups:\n  web: []\ncluster:\n  address: a\n";
        let shared = shared_text(theirs);
        assert_eq!(shared, "services:\n  - new\nserver_groups:\n  web: []\n");
        assert_eq!(
            merge_shared(local, &shared),
            "# b\neal: { control_core: 0, worker_cores: [1] }\nservices:\n  - new\nsessions: { capacity: 9 }\n\
             cluster:\n  address: b\nserver_groups:\n  web: []\n"
        );
        // A real file: merged with its own shared text, the same config.
        let running = cfg(&[(11, 1), (12, 2)], "wrr", "timeouts: { syn: 3s }\n");
        let text = yaml(&(server(11, 1) + &server(12, 2)), "wrr", "timeouts: { syn: 3s }\n");
        let merged = parse(&merge_shared(&text, &shared_text(&text)), "m.yaml").unwrap();
        assert_eq!(merged.version(), running.version());
        assert_eq!(merged.cluster_version(), running.cluster_version());
        // Another member's ports and cores do not change the cluster version.
        let other = parse(&text.replace("198.18.0.1/24", "198.18.0.2/24"), "o.yaml").unwrap();
        assert_ne!(other.version(), running.version());
        assert_eq!(other.cluster_version(), running.cluster_version());
    }

    #[test]
    fn a_server_in_two_groups_of_one_l7_service_keeps_both_its_ids() {
        let l7 = |api_weight: u32| {
            format!(
                "eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }}\n\
                 ports:\n  - {{ device: net_null0, ip: 198.18.0.1/24, mac: \"02:00:00:00:00:01\" }}\n\
                 services:\n  - name: web\n    vip: 198.18.100.1\n    port: 80\n    mode: l7\n    group: site\n\
                 \x20   l7:\n      rules:\n        - {{ path_prefix: /api/, group: api }}\n\
                 server_groups:\n  site:\n    - {{ ip: 198.18.0.11, port: 8080 }}\n    \
                 - {{ ip: 198.18.0.12, port: 8080 }}\n  api:\n    - {{ ip: 198.18.0.12, port: 8080, weight: {api_weight} }}\n"
            )
        };
        let running = parse(&l7(1), "r.yaml").unwrap();
        let n = running.servers.len();
        let (new, changes) = prepare(&running, parse(&l7(4), "n.yaml").unwrap(), 16).unwrap();
        assert_eq!(new.servers.len(), n, "no id leaked: {:?}", ids(&new));
        assert!(new.servers.iter().all(|s| !s.removed));
        assert!(changes.added.is_empty() && changes.removed.is_empty(), "{changes:?}");
        let (again, _) = prepare(&new, parse(&l7(4), "n.yaml").unwrap(), 16).unwrap();
        assert_eq!(again.servers.len(), n);
    }
}
