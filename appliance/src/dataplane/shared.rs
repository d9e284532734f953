//! What every worker shares, built once before they start and read-only
//! after (neighbour MACs and the defer switch are atomics): ports, services
//! and their schedulers' tables, servers, neighbours, endpoint lookups, and
//! the cluster facts the workers need.

use crate::config::{Config, Garp, Mode, SchedulerKind, VipMode, DEFAULT_GARP};
use crate::l7::cookie::CookieJar;
use crate::packet::Mac;
use crate::sched::maglev;
use crate::session::{mix, FlowKey};
use crate::stats::DropReason;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;

/// A next hop, and its MAC once known: written by whichever worker hears
/// its ARP reply, read by all.
pub struct Neighbor {
    pub ip: u32,
    pub port: u8,
    /// The first 8 bytes of an Ethernet header to it as the wire holds them
    /// (its MAC, then the first two bytes of its port's), as one native
    /// value; 0 while its MAC is unknown. One load and one store put it in
    /// a frame.
    head: AtomicU64,
    /// The port's MAC (the header's source).
    port_mac: Mac,
    pub is_static: bool,
    /// Our ARP request for it is out and unanswered (worker 0 sets it when
    /// it asks and clears it after `ARP_REPLY_WINDOW_MS`): the only time a
    /// reply is learned, so an unsolicited reply cannot redirect a server.
    asked: AtomicBool,
}

impl Neighbor {
    fn new(ip: u32, port: u8, port_mac: Mac, static_mac: Option<Mac>) -> Neighbor {
        let n = Neighbor {
            ip,
            port,
            head: AtomicU64::new(0),
            port_mac,
            is_static: static_mac.is_some(),
            asked: AtomicBool::new(false),
        };
        if let Some(mac) = static_mac {
            n.head.store(n.encode(mac), Relaxed);
        }
        n
    }

    #[inline]
    pub fn mac(&self) -> Option<Mac> {
        let v = self.head.load(Relaxed);
        if v == 0 {
            return None;
        }
        let b = v.to_ne_bytes();
        Some([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Writes the Ethernet addresses of a frame to it, from its port. False
    /// (and nothing written) while its MAC is unknown.
    #[inline(always)]
    pub fn address(&self, frame: &mut [u8]) -> bool {
        let v = self.head.load(Relaxed);
        match frame.first_chunk_mut::<12>() {
            Some(h) if v != 0 => {
                h[0..8].copy_from_slice(&v.to_ne_bytes());
                h[8..12].copy_from_slice(&self.port_mac[2..]);
                true
            }
            _ => false,
        }
    }

    /// Learns `mac` from an ARP reply, if we asked (a static MAC never
    /// changes). Returns whether the reply was one we asked for.
    #[inline]
    pub fn learn_reply(&self, mac: Mac) -> bool {
        if self.is_static || !self.asked.load(Relaxed) {
            return false;
        }
        self.asked.store(false, Relaxed);
        self.head.store(self.encode(mac), Relaxed);
        true
    }

    /// Our request went out (`asked`) or its reply window closed (`!asked`).
    pub(super) fn set_asked(&self, asked: bool) {
        self.asked.store(asked, Relaxed);
    }

    pub(super) fn is_asked(&self) -> bool {
        self.asked.load(Relaxed)
    }

    /// The `head` for `mac` (0, "unknown", for the all-zero MAC, which no
    /// neighbour has: ARP never learns it).
    fn encode(&self, mac: Mac) -> u64 {
        if mac == [0; 6] {
            return 0;
        }
        let p = self.port_mac;
        u64::from_ne_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], p[0], p[1]])
    }
}

pub struct PortRt {
    pub ip: u32,
    pub mac: Mac,
}

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

/// An address an ARP request or ping asks about, as this appliance sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AddressKind {
    /// A port address, or a VIP this appliance answers for.
    Ours,
    /// A VIP of the cluster that another appliance owns now.
    OtherAppliances,
    Foreign,
}

/// Everything the workers share, read-only once built (neighbour MACs and
/// VIP ownership are atomics).
pub struct Shared {
    pub ports: Vec<PortRt>,
    pub(super) services: Vec<ServiceRt>,
    pub(super) servers: Vec<ServerRt>,
    pub neighbors: Vec<Neighbor>,
    /// (VIP, port, proto) → service.
    pub(super) vips: EndpointMap<VipEntry>,
    /// (server IP, port, proto) → NAT service, to recognise replies.
    pub(super) nat_backends: EndpointMap<u16>,
    /// (VIP, 0, proto) → the service that takes the VIP's fragments.
    pub(super) fragment_vips: EndpointMap<u16>,
    /// VIP → its slot in `vip_owned`.
    vip_slots: FxHashMap<u32, usize>,
    /// Per distinct VIP (ascending address): does this appliance answer
    /// for it? Always true unless `cluster.vips: owned`, where the control
    /// thread sets it from the ring's view (`control::vips`).
    vip_owned: Vec<(u32, AtomicBool)>,
    /// Per VIP slot: its sessions are being rebuilt from the servers'
    /// connection lists (a takeover with agents): packets of established
    /// flows that find no session wait for them (`Verdict::Await`).
    vip_rebuilding: Vec<AtomicBool>,
    /// Per server (global id): its weight for new flows now. The control
    /// thread sets it (`control::health`): 0 while the server is down,
    /// scaled by reported load under `least_load`; the configured weight
    /// otherwise.
    server_weight: Vec<AtomicU32>,
    /// Per server: drained by the operator (`ringlb drain`): no new flows,
    /// its sessions stay.
    drained: Vec<AtomicBool>,
    /// Per server: up by the appliance's own probe (always, unprobed);
    /// worker 0 decides (`probe`).
    probe_up: Vec<AtomicBool>,
    /// Per server: the sequence number of the last probe its SYN-ACK
    /// answered (whichever worker received it).
    pub(super) probe_answer: Vec<AtomicU32>,
    /// Gratuitous ARP on taking a VIP.
    pub garp: Garp,
    pub workers: usize,
    pub timeouts: crate::session::Timeouts,
    pub session_capacity_per_worker: usize,
    /// Client locks per worker; None when no service has persistence.
    pub lock_capacity: Option<usize>,
    /// Proxied connections per worker; None when no service has `syn_proxy` or is `l7`.
    pub proxied_capacity: Option<usize>,
    /// Request buffers per worker (`l7`), None without an `l7` service.
    pub request_buffers: Option<usize>,
    /// Makes and checks the SYN cookies of `syn_proxy` and `l7` services
    /// (its key: `syn_cookies.key_file`, else the cluster key, else random).
    pub(super) cookies: CookieJar,
    pub arp_refresh_ms: u32,
    /// Random per process: keys the owner and session-table hashes.
    pub(super) hash_seed: u64,
    /// Wall-clock milliseconds at the workers' clock zero (lock periods
    /// are wall-clock based, so every appliance agrees on them).
    pub(super) start_wall_ms: u64,
    /// Workers report sessions and locks to the control thread (sibling sync).
    pub sync_events: bool,
    /// This appliance's ring address order, shifted to leave room for the
    /// worker id: a lock's rank.
    pub(super) rank_base: u64,
    /// Hold first packets until siblings have the session (control sets it
    /// while there are siblings).
    defer_active: AtomicBool,
    /// How long a first packet may be held.
    pub defer_ms: Option<u32>,
    /// The ports are started: workers may poll and send on them. A cluster
    /// member starts them only once it holds its siblings' sessions.
    ports_up: AtomicBool,
}

impl Shared {
    /// Builds the shared tables. `port_macs` are the MACs actually in use on
    /// each port (configured, or the device's own).
    pub fn new(cfg: &Config, port_macs: &[Mac]) -> Shared {
        let ports = cfg.ports.iter().zip(port_macs).map(|(p, &mac)| PortRt { ip: p.ip, mac }).collect();
        let owned_at_start = cfg.cluster.as_ref().is_none_or(|c| c.vips == VipMode::Shared);
        let mut addresses: Vec<u32> = cfg.services.iter().map(|s| s.vip).collect();
        addresses.sort_unstable();
        addresses.dedup();
        let vip_owned: Vec<(u32, AtomicBool)> =
            addresses.iter().map(|&ip| (ip, AtomicBool::new(owned_at_start))).collect();
        let vip_slots: FxHashMap<u32, usize> = addresses.iter().enumerate().map(|(i, &ip)| (ip, i)).collect();
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
            .map(|n| {
                let port_mac = port_macs.get(usize::from(n.port)).copied().unwrap_or([0; 6]);
                Neighbor::new(n.ip, n.port, port_mac, n.static_mac)
            })
            .collect();
        let workers = cfg.eal.worker_cores.len();
        let cluster = cfg.cluster.as_ref();
        Shared {
            ports,
            services,
            servers: cfg
                .servers
                .iter()
                .map(|s| ServerRt {
                    ip: s.ip,
                    port: s.port,
                    service: s.service,
                    neighbor: s.neighbor,
                    probe: cfg.services[usize::from(s.service)].probe.filter(|_| s.agent.is_none()),
                })
                .collect(),
            probe_up: cfg.servers.iter().map(|_| AtomicBool::new(true)).collect(),
            probe_answer: cfg.servers.iter().map(|_| AtomicU32::new(0)).collect(),
            neighbors,
            vips,
            nat_backends,
            fragment_vips,
            vip_slots,
            vip_rebuilding: vip_owned.iter().map(|_| AtomicBool::new(false)).collect(),
            server_weight: cfg.servers.iter().map(|s| AtomicU32::new(s.weight)).collect(),
            drained: cfg.servers.iter().map(|_| AtomicBool::new(false)).collect(),
            vip_owned,
            garp: cfg.cluster.as_ref().map_or(DEFAULT_GARP, |c| c.garp),
            workers,
            timeouts: cfg.timeouts,
            session_capacity_per_worker: cfg.session_capacity.div_ceil(workers),
            lock_capacity: cfg.services.iter().any(|s| s.persistence_ms.is_some()).then_some(cfg.lock_capacity),
            proxied_capacity: cfg
                .services
                .iter()
                .any(|s| s.syn_proxy || s.mode == Mode::L7)
                .then_some(cfg.proxied_capacity.div_ceil(workers)),
            request_buffers: cfg
                .services
                .iter()
                .any(|s| s.mode == Mode::L7)
                .then_some(cfg.request_buffers.div_ceil(workers)),
            // `syn_cookies.key_file`, else the cluster key (siblings check each
            // other's cookies: the trunk may send the ACK to another), else random.
            cookies: match cfg.syn_cookie_secret.as_ref().or(cluster.map(|c| &c.secret)) {
                Some(secret) => CookieJar::from_secret(&secret.0),
                None => CookieJar::random(),
            },
            arp_refresh_ms: cfg.arp_refresh_ms,
            hash_seed: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new().build_hasher().finish()
            },
            start_wall_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            sync_events: cluster.is_some_and(|c| c.sync),
            rank_base: cluster.map_or(0, |c| ringlb_ring::wire::order(&c.address) << 8),
            defer_active: AtomicBool::new(false),
            defer_ms: cluster.and_then(|c| c.defer_ms),
            ports_up: AtomicBool::new(false),
        }
    }

    /// Whether a service answers SYNs with cookies (`syn_proxy` or `l7`).
    pub fn has_syn_proxy(&self) -> bool {
        self.proxied_capacity.is_some()
    }

    /// Workers poll and send on the ports only once they are started.
    #[inline]
    pub fn ports_up(&self) -> bool {
        self.ports_up.load(Acquire)
    }

    /// Called by the main lcore after it started every port (the release
    /// ordering makes the started ports visible to the workers).
    pub fn set_ports_up(&self) {
        self.ports_up.store(true, Release);
    }

    /// Wall-clock milliseconds at the workers' clock zero.
    pub fn start_wall_ms(&self) -> u64 {
        self.start_wall_ms
    }

    /// Whether workers hold first packets for the siblings now.
    #[inline]
    pub fn defer_active(&self) -> bool {
        self.defer_active.load(Relaxed)
    }

    /// The control thread turns first-packet holding on while it has
    /// siblings to wait for (and the configuration asks for it).
    pub fn set_defer_active(&self, on: bool) {
        self.defer_active.store(on && self.defer_ms.is_some(), Relaxed);
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

    /// A server's (ip, port, service).
    pub fn server_addr(&self, id: u16) -> Option<(u32, u16, u16)> {
        self.servers.get(usize::from(id)).map(|s| (s.ip, s.port, s.service))
    }

    /// A service's (VIP, port, protocol).
    pub fn service_endpoint(&self, service: u16) -> Option<(u32, u16, u8)> {
        self.services.get(usize::from(service)).map(|s| (s.vip, s.port, s.proto))
    }

    /// The worker that owns a client endpoint. Multiply-shift instead of `%`.
    #[inline]
    pub fn owner(&self, client_ip: u32, client_port: u16) -> usize {
        if self.workers == 1 {
            return 0;
        }
        let h = mix(u64::from(client_ip) ^ self.hash_seed, u64::from(client_port)) >> 32;
        ((h * self.workers as u64) >> 32) as usize
    }

    /// The server a Maglev service gives a new flow (the same on every
    /// appliance); None for round-robin services. Lets tools predict placement.
    pub fn maglev_pick(&self, service: usize, key: &FlowKey) -> Option<u16> {
        let s = self.services.get(service)?;
        let m = s.maglev.as_ref()?;
        Some(s.servers[m.lookup(key.hash(0))])
    }

    /// Whom an ARP request or ping for `ip` on `port` concerns.
    pub(super) fn address_kind(&self, ip: u32, port: u8) -> AddressKind {
        if self.ports.get(usize::from(port)).is_some_and(|p| p.ip == ip) {
            return AddressKind::Ours;
        }
        match self.vip_slots.get(&ip) {
            Some(&slot) if self.vip_owned[slot].1.load(Relaxed) => AddressKind::Ours,
            Some(_) => AddressKind::OtherAppliances,
            None => AddressKind::Foreign,
        }
    }

    /// The same, with `seed` for the random per-process hash seed (flow
    /// owners, session table slots): for tests and fuzzing that compare two
    /// workers, which must place flows alike.
    pub fn with_hash_seed(mut self, seed: u64) -> Shared {
        self.hash_seed = seed;
        self
    }

    /// The same, with `key` for the SYN-cookie key (random per process
    /// without a cluster): two workers compared frame by frame must make
    /// the same cookies.
    pub fn with_cookie_key(mut self, key: (u64, u64)) -> Shared {
        self.cookies = CookieJar::new(key);
        self
    }

    /// Server `id`'s next hop (the server itself on its subnet).
    #[inline(always)]
    pub(super) fn next_hop(&self, id: u16) -> Option<&Neighbor> {
        self.neighbors.get(usize::from(self.servers.get(usize::from(id))?.neighbor))
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

    /// Does this appliance take new flows for the service's VIP?
    #[inline]
    pub(super) fn owns_vip_of(&self, service: &ServiceRt) -> bool {
        self.vip_owned[service.vip_slot].1.load(Relaxed)
    }

    /// Are the sessions of the service's VIP being rebuilt now?
    #[inline]
    pub(super) fn rebuilding_vip_of(&self, service: &ServiceRt) -> bool {
        self.vip_rebuilding[service.vip_slot].load(Relaxed)
    }

    /// The control thread's word (`control::rebuild`): the sessions of
    /// `ip` are being rebuilt (or no longer are).
    pub fn set_vip_rebuilding(&self, ip: u32, rebuilding: bool) {
        if let Some(&slot) = self.vip_slots.get(&ip) {
            self.vip_rebuilding[slot].store(rebuilding, Relaxed);
        }
    }

    /// Server `id`'s weight for new flows now (0: down or drained).
    #[inline]
    pub fn server_weight(&self, id: u16) -> u32 {
        if self.drained.get(usize::from(id)).is_some_and(|d| d.load(Relaxed)) {
            return 0;
        }
        self.carrying_weight(id)
    }

    /// Server `id`'s weight for the flows it carries already (0: down; a
    /// drained server keeps them).
    #[inline]
    pub fn carrying_weight(&self, id: u16) -> u32 {
        let i = usize::from(id);
        match (self.server_weight.get(i), self.probe_up.get(i)) {
            (Some(w), Some(up)) if up.load(Relaxed) => w.load(Relaxed),
            _ => 0,
        }
    }

    /// Is server `id` up by the appliance's probe (true when not probed)?
    pub fn probe_up(&self, id: u16) -> bool {
        self.probe_up.get(usize::from(id)).is_some_and(|u| u.load(Relaxed))
    }

    pub(super) fn set_probe_up(&self, id: u16, up: bool) {
        if let Some(u) = self.probe_up.get(usize::from(id)) {
            u.store(up, Relaxed);
        }
    }

    /// Whether the operator drained server `id`.
    pub fn drained(&self, id: u16) -> bool {
        self.drained.get(usize::from(id)).is_some_and(|d| d.load(Relaxed))
    }

    /// The operator's word on server `id` (`ringlb drain` / `undrain`).
    pub fn set_drained(&self, id: u16, drained: bool) {
        if let Some(d) = self.drained.get(usize::from(id)) {
            d.store(drained, Relaxed);
        }
    }

    /// The control thread's word on server `id` (`control::health`).
    pub fn set_server_weight(&self, id: u16, weight: u32) {
        if let Some(w) = self.server_weight.get(usize::from(id)) {
            w.store(weight, Relaxed);
        }
    }

    /// Whether `ip`'s sessions are being rebuilt now.
    pub fn vip_rebuilding(&self, ip: u32) -> bool {
        self.vip_slots.get(&ip).is_some_and(|&slot| self.vip_rebuilding[slot].load(Relaxed))
    }

    pub fn vip_count(&self) -> usize {
        self.vip_owned.len()
    }

    /// Every distinct VIP, ascending.
    pub fn vip_addresses(&self) -> Vec<u32> {
        self.vip_owned.iter().map(|(ip, _)| *ip).collect()
    }

    /// Whether the workers answer for `ip` now.
    pub fn owns_vip(&self, ip: u32) -> bool {
        self.vip_slots.get(&ip).is_some_and(|&slot| self.vip_owned[slot].1.load(Relaxed))
    }

    /// The control thread's decision (`control::vips`): answer for `ip` or not.
    pub fn set_vip_owned(&self, ip: u32, owned: bool) {
        if let Some(&slot) = self.vip_slots.get(&ip) {
            self.vip_owned[slot].1.store(owned, Relaxed);
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
