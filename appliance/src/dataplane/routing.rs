//! What a configuration says about where flows go: services and their
//! schedulers' tables, servers, next hops, and the endpoint lookups. Built
//! whole from a configuration (at start, and again at each reload) and
//! shared read-only: each worker holds the one it uses and takes a new one
//! at a burst boundary (`Worker::switch_routing`), so a reload never
//! changes a table under a packet.
//!
//! Server ids are stable across reloads (`config::reload` keeps them), so
//! sessions and counters keep pointing at the same server.

use super::shared::Neighbor;
use crate::config::{Config, Mode, SchedulerKind};
use crate::packet::Mac;
use crate::sched::{maglev, wrr::SmoothWrr, Scheduler};
use crate::session::{FlowKey, Timeouts};
use crate::stats::DropReason;
use rustc_hash::FxHashMap;
use std::sync::Arc;

pub(super) struct ServiceRt {
    /// The VIP's slot in `Shared::vip_owned`.
    pub vip_slot: usize,
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub mode: Mode,
    /// Global server ids.
    pub servers: Vec<u16>,
    pub maglev: Option<Arc<maglev::Maglev>>,
    /// Client-lock lifetime, if the service has persistence.
    pub persistence_ms: Option<u32>,
    /// `fragments: true`: every datagram goes by the address hash (`Worker::by_address`).
    pub fragments: bool,
    /// `on_server_down: reset`: a session of a server that is down ends
    /// with a RST to the client at its next packet.
    pub reset_on_down: bool,
    /// `syn_proxy: true` or `mode: l7`: SYNs are answered with cookies,
    /// connections are proxied (`dataplane::proxy`), not kept in the
    /// session table.
    pub proxied: bool,
    /// `mode: l7`: the content rules and each group's servers.
    pub l7: Option<L7Rt>,
}

/// An `l7` service's routing as the workers use it.
pub(super) struct L7Rt {
    pub rules: crate::l7::rules::Rules,
    pub redirect: crate::config::Redirect,
    /// Per group (the default first): global server ids.
    pub groups: Vec<Vec<u16>>,
}

pub(super) struct ServerRt {
    pub ip: u32,
    pub port: u16,
    pub service: u16,
    pub neighbor: u16,
    /// The appliance probes this server itself (its service has `probe`,
    /// and it has no agent).
    pub probe: Option<crate::config::Probe>,
    /// A reload removed it (its id stays for its sessions).
    pub removed: bool,
}

/// (address, port, protocol) → a service's entry, for the handful of
/// endpoints an appliance serves: a small open-addressed table (linear
/// probing, at most half full, built before the workers start), so a lookup
/// is one multiply and, nearly always, one compare. Keys are
/// `packet::dst_key`s, which the per-packet path takes out of a frame's
/// tuple without swapping bytes.
pub(super) struct EndpointMap<V> {
    /// (key, value); key 0 marks an empty slot (a key carries its protocol
    /// number, never 0).
    slots: Vec<(u64, V)>,
    len: usize,
}

impl<V> Default for EndpointMap<V> {
    fn default() -> Self {
        EndpointMap { slots: Vec::new(), len: 0 }
    }
}

impl<V: Copy + Default> EndpointMap<V> {
    fn key(ip: u32, port: u16, proto: u8) -> u64 {
        crate::packet::endpoint_key(ip, port, proto)
    }

    #[inline(always)]
    fn home(k: u64, slots: usize) -> usize {
        (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & slots.wrapping_sub(1)
    }

    /// Adds or replaces an endpoint's value.
    fn insert(&mut self, ip: u32, port: u16, proto: u8, value: V) {
        if (self.len + 1) * 2 > self.slots.len() {
            let grown = vec![(0, V::default()); (self.slots.len() * 2).max(8)];
            let old = std::mem::replace(&mut self.slots, grown);
            self.len = 0;
            for (k, v) in old.into_iter().filter(|&(k, _)| k != 0) {
                self.put(k, v);
            }
        }
        self.put(Self::key(ip, port, proto), value);
    }

    fn put(&mut self, k: u64, value: V) {
        let mask = self.slots.len() - 1;
        let mut i = Self::home(k, self.slots.len());
        while self.slots[i].0 != 0 && self.slots[i].0 != k {
            i = (i + 1) & mask;
        }
        if self.slots[i].0 == 0 {
            self.len += 1;
        }
        self.slots[i] = (k, value);
    }

    /// The value at (address, port, protocol), in host byte order.
    #[inline]
    pub fn get(&self, ip: u32, port: u16, proto: u8) -> Option<V> {
        self.get_wire(Self::key(ip, port, proto))
    }

    /// The value at a `packet::dst_key`.
    #[inline(always)]
    pub fn get_wire(&self, k: u64) -> Option<V> {
        let mut i = Self::home(k, self.slots.len());
        loop {
            // Ends: the table always has an empty slot.
            let &(key, value) = self.slots.get(i)?;
            if key == k {
                return Some(value);
            }
            if key == 0 {
                return None;
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }
}

/// A VIP endpoint's service, with what the per-packet path decides by it
/// before it looks at the service itself.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(super) struct VipEntry {
    pub svc: u16,
    /// `fragments: true`: every datagram goes by the address hash.
    pub by_address: bool,
    /// Without `on_server_down: reset`, a packet of an established session
    /// needs nothing of the service beyond its mode and the session's
    /// server: it may take the short way (`dataplane::lean`).
    pub short_way: bool,
    pub nat: bool,
}

/// One configuration's routing tables.
pub struct Routing {
    pub(super) services: Vec<ServiceRt>,
    /// By server id; a removed server keeps its slot, in no service's list.
    pub(super) servers: Vec<ServerRt>,
    /// Next hops; one a reload keeps (same address and port) is the same
    /// object, MAC and all.
    pub(super) neighbors: Vec<Arc<Neighbor>>,
    /// Per next hop: a server not removed goes through it.
    neighbor_in_use: Vec<bool>,
    /// (VIP, port, proto) → service.
    pub(super) vips: EndpointMap<VipEntry>,
    /// (server IP, port, proto) → NAT service, to recognise replies.
    pub(super) nat_backends: EndpointMap<u16>,
    /// (VIP, 0, proto) → the service that takes the VIP's fragments.
    pub(super) fragment_vips: EndpointMap<u16>,
    pub timeouts: Timeouts,
    /// The configuration's version (`Config::version`).
    pub version: String,
}

/// A worker's per-service scheduler state for one `Routing`: built off
/// the fast path (by the control thread at a reload) and handed over whole.
pub struct Schedulers {
    pub(super) services: Vec<Scheduler>,
    /// `l7`: per service, per group, the group's weighted round robin.
    pub(super) l7: Vec<Vec<SmoothWrr>>,
}

impl Routing {
    /// The tables for `cfg`. `vip_slots` are the appliance's VIP slots
    /// (fixed for its life); `port_macs` the MACs in use on the ports;
    /// `previous`, the routing this one replaces, lends it the next hops
    /// it keeps.
    pub fn build(
        cfg: &Config,
        port_macs: &[Mac],
        vip_slots: &FxHashMap<u32, usize>,
        previous: Option<&Routing>,
    ) -> Routing {
        let services: Vec<ServiceRt> = cfg
            .services
            .iter()
            .map(|s| {
                let names: Vec<String> = s
                    .servers
                    .iter()
                    .map(|&id| {
                        let sv = &cfg.servers[usize::from(id)];
                        format!("{}:{}", std::net::Ipv4Addr::from(sv.ip), sv.port)
                    })
                    .collect();
                let weights: Vec<u32> = s.servers.iter().map(|&id| cfg.servers[usize::from(id)].weight).collect();
                let maglev = (s.scheduler == SchedulerKind::Maglev).then(|| {
                    let bs: Vec<maglev::Backend> =
                        names.iter().zip(&weights).map(|(name, &weight)| maglev::Backend { name, weight }).collect();
                    Arc::new(maglev::Maglev::new(&bs, s.maglev_table_size))
                });
                ServiceRt {
                    vip_slot: vip_slots[&s.vip],
                    vip: s.vip,
                    port: s.port,
                    proto: s.proto as u8,
                    mode: s.mode,
                    servers: s.servers.clone(),
                    maglev,
                    persistence_ms: s.persistence_ms,
                    fragments: s.fragments,
                    reset_on_down: s.on_server_down == crate::config::OnServerDown::Reset,
                    proxied: s.syn_proxy || s.mode == Mode::L7,
                    l7: s.l7.as_ref().map(|l| L7Rt {
                        rules: l.rules.clone(),
                        redirect: l.redirect.clone(),
                        groups: l
                            .groups
                            .iter()
                            .map(|g| g.members.iter().map(|&p| s.servers[usize::from(p)]).collect())
                            .collect(),
                    }),
                }
            })
            .collect();
        let mut vips = EndpointMap::default();
        let mut nat_backends = EndpointMap::default();
        let mut fragment_vips = EndpointMap::default();
        // A removed server's sessions go on (`on_server_down: keep`): its
        // NAT replies are still recognised. Live servers come after and win.
        for s in cfg.servers.iter().filter(|s| s.removed) {
            let svc = &cfg.services[usize::from(s.service)];
            if svc.mode != Mode::Dsr {
                nat_backends.insert(s.ip, s.port, svc.proto as u8, s.service);
            }
        }
        for (i, s) in cfg.services.iter().enumerate() {
            // Proxied services' packets go the long way, which knows them.
            let short_way =
                s.on_server_down != crate::config::OnServerDown::Reset && !s.syn_proxy && s.mode != Mode::L7;
            let entry = VipEntry { svc: i as u16, by_address: s.fragments, short_way, nat: s.mode == Mode::Nat };
            vips.insert(s.vip, s.port, s.proto as u8, entry);
            if s.fragments {
                fragment_vips.insert(s.vip, 0, s.proto as u8, i as u16);
            }
            // NAT and L7 servers' replies come back through the appliance.
            if s.mode != Mode::Dsr {
                for &id in &s.servers {
                    let sv = &cfg.servers[usize::from(id)];
                    nat_backends.insert(sv.ip, sv.port, s.proto as u8, i as u16);
                }
            }
        }
        let neighbors = cfg
            .neighbors
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let kept = previous
                    .and_then(|p| p.neighbors.get(i))
                    .filter(|old| old.ip == n.ip && old.port == n.port && old.static_mac() == n.static_mac);
                match kept {
                    Some(old) => Arc::clone(old),
                    None => {
                        let port_mac = port_macs.get(usize::from(n.port)).copied().unwrap_or([0; 6]);
                        Arc::new(Neighbor::new(n.ip, n.port, port_mac, n.static_mac))
                    }
                }
            })
            .collect();
        let mut neighbor_in_use = vec![false; cfg.neighbors.len()];
        for s in cfg.servers.iter().filter(|s| !s.removed) {
            if let Some(u) = neighbor_in_use.get_mut(usize::from(s.neighbor)) {
                *u = true;
            }
        }
        Routing {
            services,
            neighbor_in_use,
            servers: cfg
                .servers
                .iter()
                .map(|s| ServerRt {
                    ip: s.ip,
                    port: s.port,
                    service: s.service,
                    neighbor: s.neighbor,
                    probe: cfg.services[usize::from(s.service)].probe.filter(|_| s.agent.is_none() && !s.removed),
                    removed: s.removed,
                })
                .collect(),
            neighbors,
            vips,
            nat_backends,
            fragment_vips,
            timeouts: cfg.timeouts,
            version: cfg.version(),
        }
    }

    /// Fresh scheduler state for a worker.
    pub fn schedulers(&self) -> Schedulers {
        Schedulers {
            services: self
                .services
                .iter()
                .map(|s| match &s.maglev {
                    Some(m) => Scheduler::Maglev(Arc::clone(m)),
                    None => Scheduler::RoundRobin(SmoothWrr::new(s.servers.len())),
                })
                .collect(),
            l7: self
                .services
                .iter()
                .map(|s| {
                    s.l7.as_ref().map_or(Vec::new(), |l| l.groups.iter().map(|g| SmoothWrr::new(g.len())).collect())
                })
                .collect(),
        }
    }

    /// Whether a service of `vip` has a server `takes` new flows.
    pub fn serves(&self, vip: u32, takes: impl Fn(u16) -> bool) -> bool {
        self.services.iter().filter(|s| s.vip == vip).any(|s| s.servers.iter().any(|&id| takes(id)))
    }

    /// The service at (VIP, port, protocol).
    pub fn service_at(&self, vip: u32, port: u16, proto: u8) -> Option<u16> {
        self.vips.get(vip, port, proto).map(|v| v.svc)
    }

    /// The global id of `service`'s server at (ip, port).
    pub fn server_of(&self, service: u16, ip: u32, port: u16) -> Option<u16> {
        let s = self.services.get(usize::from(service))?;
        s.servers.iter().copied().find(|&id| {
            let sv = &self.servers[usize::from(id)];
            sv.ip == ip && sv.port == port
        })
    }

    /// Whether a reload removed server `id`.
    pub fn removed(&self, id: u16) -> bool {
        self.servers.get(usize::from(id)).is_some_and(|s| s.removed)
    }

    /// A server's (ip, port, service).
    pub fn server_addr(&self, id: u16) -> Option<(u32, u16, u16)> {
        self.servers.get(usize::from(id)).map(|s| (s.ip, s.port, s.service))
    }

    /// A service's (VIP, port, protocol).
    pub fn service_endpoint(&self, service: u16) -> Option<(u32, u16, u8)> {
        self.services.get(usize::from(service)).map(|s| (s.vip, s.port, s.proto))
    }

    /// The server a Maglev service gives a new flow (the same on every
    /// appliance); None for round-robin services. Lets tools predict placement.
    pub fn maglev_pick(&self, service: usize, key: &FlowKey) -> Option<u16> {
        let s = self.services.get(service)?;
        let m = s.maglev.as_ref()?;
        Some(s.servers[m.lookup(key.hash(0))])
    }

    /// Whether next hop `i` serves a server that is not removed.
    pub fn neighbor_in_use(&self, i: usize) -> bool {
        self.neighbor_in_use.get(i).copied().unwrap_or(false)
    }

    /// The next hops.
    pub fn neighbors(&self) -> &[Arc<Neighbor>] {
        &self.neighbors
    }

    /// Server `id`'s next hop (the server itself on its subnet).
    #[inline(always)]
    pub(super) fn next_hop(&self, id: u16) -> Option<&Neighbor> {
        self.neighbors.get(usize::from(self.servers.get(usize::from(id))?.neighbor)).map(|n| &**n)
    }

    /// Whether a NAT reply (its source address and port, the port it came
    /// in on and its source MAC) comes from server `id` itself: Err names
    /// the drop. Addresses are easy to spoof, the link a frame came by less
    /// so; the long way and the short way of a reply both ask this.
    #[inline(always)]
    pub(super) fn reply_source_check(
        &self,
        id: u16,
        src: (u32, u16),
        in_port: u8,
        src_mac: Mac,
    ) -> Result<(), DropReason> {
        let Some(srv) = self.servers.get(usize::from(id)) else {
            return Err(DropReason::NoSession);
        };
        if (srv.ip, srv.port) != src {
            // A reply from a server this client's session is not bound to.
            return Err(DropReason::NoSession);
        }
        match self.neighbors.get(usize::from(srv.neighbor)) {
            Some(hop) if hop.port == in_port && hop.mac() == Some(src_mac) => Ok(()),
            _ => Err(DropReason::SpoofedReply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointMap;

    #[test]
    fn endpoint_map_finds_replaces_and_misses_small_and_large() {
        assert_eq!(EndpointMap::<u16>::default().get(0xc612_6400, 80, 6), None, "empty");
        for n in [1u32, 3, 100, 5000] {
            let mut m = EndpointMap::default();
            for i in 0..n {
                m.insert(0xc612_6400 + i, 80, 6, i as u16);
            }
            m.insert(0xc612_6400, 80, 6, 999); // replaces
            assert_eq!(m.get(0xc612_6400, 80, 6), Some(999));
            for i in 1..n {
                assert_eq!(m.get(0xc612_6400 + i, 80, 6), Some(i as u16));
                assert_eq!(m.get(0xc612_6400 + i, 81, 6), None, "other port");
                assert_eq!(m.get(0xc612_6400 + i, 80, 17), None, "other protocol");
            }
            assert_eq!(m.get(0xc612_6400 + n, 80, 6), None);
            // The wire's byte order finds the same entry.
            // A frame's tuple finds the same entry.
            let ips = u64::from_ne_bytes([203, 0, 113, 7, 198, 18, 100, 2]);
            let tuple = crate::packet::wire_key(ips, u32::from_ne_bytes([0x9c, 0x40, 0, 80]), 6);
            assert_eq!(m.get_wire(crate::packet::dst_key(tuple)), (n > 2).then_some(2));
        }
    }
}
