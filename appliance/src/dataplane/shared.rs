//! What every worker shares, built once before they start and read-only
//! after (neighbour MACs and the defer switch are atomics): ports, services
//! and their schedulers' tables, servers, neighbours, endpoint lookups, and
//! the cluster facts the workers need.

use super::routing::{Routing, ServiceRt};
use crate::config::{Config, Garp, Mode, VipMode, DEFAULT_GARP};
use crate::l7::cookie::CookieJar;
use crate::packet::Mac;
use crate::session::mix;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex};

/// Server slots allocated at least, so that a reload can add servers.
pub const MIN_SERVER_CAPACITY: usize = 256;

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
    /// When worker 0 last asked for its MAC (`u64::MAX`: never).
    solicited_at: AtomicU64,
}

impl Neighbor {
    pub(super) fn new(ip: u32, port: u8, port_mac: Mac, static_mac: Option<Mac>) -> Neighbor {
        let n = Neighbor {
            ip,
            port,
            head: AtomicU64::new(0),
            port_mac,
            is_static: static_mac.is_some(),
            asked: AtomicBool::new(false),
            solicited_at: AtomicU64::new(u64::MAX),
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

    /// Its configured MAC, if static.
    pub fn static_mac(&self) -> Option<Mac> {
        if self.is_static {
            self.mac()
        } else {
            None
        }
    }

    /// When worker 0 last asked for its MAC, on its clock.
    pub(super) fn solicited_at(&self) -> Option<u32> {
        let t = self.solicited_at.load(Relaxed);
        (t != u64::MAX).then_some(t as u32)
    }

    pub(super) fn set_solicited_at(&self, now_ms: u32) {
        self.solicited_at.store(u64::from(now_ms), Relaxed);
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
    /// The port has a kernel interface (`ports[].kernel`): what the fast
    /// path does not answer for its address goes there (`Verdict::Kernel`).
    pub kernel: bool,
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
    /// The routing tables now: the control thread's and the operator's
    /// view. Workers hold their own `Arc` of it and take a new one at a
    /// reload (`Worker::switch_routing`); they never lock this.
    routing: Mutex<Arc<Routing>>,
    /// The most servers the appliance can know in its life: per-server
    /// atomics and counters are allocated for this many, and server ids a
    /// reload adds are taken from them (`config::reload`).
    pub server_capacity: usize,
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
        let ports = cfg
            .ports
            .iter()
            .zip(port_macs)
            .map(|(p, &mac)| PortRt { ip: p.ip, mac, kernel: p.kernel.is_some() })
            .collect();
        let owned_at_start = cfg.cluster.as_ref().is_none_or(|c| c.vips == VipMode::Shared);
        let mut addresses: Vec<u32> = cfg.services.iter().map(|s| s.vip).collect();
        addresses.sort_unstable();
        addresses.dedup();
        let vip_owned: Vec<(u32, AtomicBool)> =
            addresses.iter().map(|&ip| (ip, AtomicBool::new(owned_at_start))).collect();
        let vip_slots: FxHashMap<u32, usize> = addresses.iter().enumerate().map(|(i, &ip)| (ip, i)).collect();
        let routing = Routing::build(cfg, port_macs, &vip_slots, None);
        let server_capacity = cfg.servers.len().max(MIN_SERVER_CAPACITY);
        let workers = cfg.eal.worker_cores.len();
        let cluster = cfg.cluster.as_ref();
        Shared {
            ports,
            routing: Mutex::new(Arc::new(routing)),
            server_capacity,
            probe_up: (0..server_capacity).map(|_| AtomicBool::new(true)).collect(),
            probe_answer: (0..server_capacity).map(|_| AtomicU32::new(0)).collect(),
            vip_slots,
            vip_rebuilding: vip_owned.iter().map(|_| AtomicBool::new(false)).collect(),
            server_weight: (0..server_capacity)
                .map(|i| AtomicU32::new(cfg.servers.get(i).map_or(0, |s| s.weight)))
                .collect(),
            drained: (0..server_capacity).map(|_| AtomicBool::new(false)).collect(),
            vip_owned,
            garp: cfg.cluster.as_ref().map_or(DEFAULT_GARP, |c| c.garp),
            workers,
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

    /// The routing tables now (control thread and operator; workers hold
    /// their own).
    pub fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes `routing` the one `routing()` returns (a reload: the control
    /// thread then hands it to each worker).
    pub fn set_routing(&self, routing: Arc<Routing>) {
        *self.routing.lock().unwrap_or_else(|e| e.into_inner()) = routing;
    }

    /// The VIP slots (fixed for the appliance's life).
    pub fn vip_slots(&self) -> &FxHashMap<u32, usize> {
        &self.vip_slots
    }

    /// The MACs in use on the ports.
    pub fn port_macs(&self) -> Vec<Mac> {
        self.ports.iter().map(|p| p.mac).collect()
    }

    /// The service at (VIP, port, protocol), by the routing now.
    pub fn service_at(&self, vip: u32, port: u16, proto: u8) -> Option<u16> {
        self.routing().service_at(vip, port, proto)
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

    /// The worker that owns a client endpoint. Multiply-shift instead of `%`.
    #[inline]
    pub fn owner(&self, client_ip: u32, client_port: u16) -> usize {
        if self.workers == 1 {
            return 0;
        }
        let h = mix(u64::from(client_ip) ^ self.hash_seed, u64::from(client_port)) >> 32;
        ((h * self.workers as u64) >> 32) as usize
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
