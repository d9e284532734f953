//! The `cluster:` section: this appliance's ring address, every possible
//! member, the shared key, the ring's timer profile, and sibling sync.

use super::{duration, Ctx};
use crate::config::ConfigError;
use ringlb_ring::Timers;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddrV4;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    /// This appliance's ring address (a kernel UDP socket, not a DPDK port);
    /// sibling sync uses the next port.
    address: Spanned<String>,
    /// Every address that may be a ring member: appliances and agents.
    members: Spanned<Vec<Spanned<String>>>,
    /// A file holding the cluster's shared secret (mode 0600).
    key_file: Spanned<String>,
    /// The ring's timer profile: seed (2,000/2,500 ms) or fast (300/400 ms).
    #[serde(default)]
    timers: Option<Spanned<String>>,
    /// Share sessions and client locks with the sibling appliances.
    #[serde(default = "super::yes")]
    sync: bool,
    /// Hold a new session's first packet until every sibling has its entry,
    /// at most this long; "off" forwards at once.
    #[serde(default)]
    defer: Option<Spanned<String>>,
    /// shared: every appliance answers for every VIP (siblings behind a
    /// trunk); owned: each VIP has one owner, chosen from the ring's view.
    #[serde(default)]
    vips: Option<Spanned<String>>,
    /// Gratuitous ARP a new owner sends for each VIP it takes.
    #[serde(default)]
    garp: Option<RawGarp>,
    /// With `vips: owned`: does a returning appliance take its VIPs back?
    #[serde(default)]
    preempt: Option<Spanned<bool>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGarp {
    count: Option<Spanned<u32>>,
    interval: Option<Spanned<String>>,
}

/// The shared secret; never printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub address: SocketAddrV4,
    /// Sorted, unique, including `address`.
    pub members: Vec<SocketAddrV4>,
    pub key_file: String,
    pub secret: Secret,
    pub timers: Timers,
    pub timers_name: &'static str,
    pub sync: bool,
    /// None: new sessions' first packets are not held.
    pub defer_ms: Option<u32>,
    pub vips: VipMode,
    pub garp: Garp,
    /// true: VIPs go by the ownership rule, so a returning appliance takes
    /// its VIPs back; false: a VIP stays with its owner while it lives.
    pub preempt: bool,
}

/// Who answers for a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipMode {
    /// Every appliance: active-active siblings behind a port-trunked router.
    Shared,
    /// One live appliance per VIP (active/standby, or a pool of VIPs spread
    /// over the appliances); a new owner announces it by gratuitous ARP.
    Owned,
}

impl VipMode {
    pub fn name(self) -> &'static str {
        match self {
            VipMode::Shared => "shared",
            VipMode::Owned => "owned",
        }
    }
}

/// Gratuitous ARP on taking a VIP: how many, how far apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garp {
    pub count: u32,
    pub interval_ms: u32,
}

/// keepalived's default repeat count; 100 ms apart, so the last goes out
/// half a second after the takeover.
pub const DEFAULT_GARP: Garp = Garp { count: 5, interval_ms: 100 };

/// The first packet of a new session waits at most this long for siblings.
pub const DEFAULT_DEFER_MS: u32 = 50;

fn socket_addr(cx: &Ctx, s: &Spanned<String>, key: &str) -> Result<SocketAddrV4, ConfigError> {
    s.value
        .parse::<SocketAddrV4>()
        .ok()
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
        .ok_or_else(|| cx.at(s, format!("{key}: '{}' is not an IPv4 address with a port (10.255.0.1:7400)", s.value)))
}

/// Reads the secret (`ringlb_ring::keyfile`: owner-only, 32 random bytes in hex).
fn read_secret(cx: &Ctx, s: &Spanned<String>) -> Result<Secret, ConfigError> {
    ringlb_ring::keyfile::read(&s.value).map(Secret).map_err(|e| cx.at(s, format!("cluster.key_file: {e}")))
}

pub(super) fn validate(raw: &RawCluster, cx: &Ctx) -> Result<ClusterConfig, ConfigError> {
    let address = socket_addr(cx, &raw.address, "cluster.address")?;
    let mut members = Vec::new();
    let mut seen = HashSet::new();
    for (i, m) in raw.members.value.iter().enumerate() {
        let a = socket_addr(cx, m, &format!("cluster.members[{i}]"))?;
        if a.port() == u16::MAX {
            return Err(
                cx.at(m, format!("cluster.members[{i}]: {a}: sibling sync uses the next port, and there is none"))
            );
        }
        if !seen.insert(a) {
            return Err(cx.at(m, format!("cluster.members[{i}]: {a} is listed twice")));
        }
        members.push(a);
    }
    if members.len() > ringlb_ring::wire::MAX_MEMBERS {
        return Err(cx.at(&raw.members, format!("cluster.members: at most {} members", ringlb_ring::wire::MAX_MEMBERS)));
    }
    if !seen.contains(&address) {
        return Err(cx.at(&raw.address, format!("cluster.address: {address} must be one of cluster.members")));
    }
    members.sort_by_key(ringlb_ring::wire::order);
    let (timers, timers_name) = match raw.timers.as_ref().map(|t| t.value.as_str()) {
        None | Some("seed") => (Timers::SEED, "seed"),
        Some("fast") => (Timers::FAST, "fast"),
        Some(other) => {
            let t = raw.timers.as_ref().expect("matched Some");
            return Err(cx.at(t, format!("cluster.timers: '{other}' is not seed or fast")));
        }
    };
    let defer_ms = match &raw.defer {
        None => Some(DEFAULT_DEFER_MS),
        Some(d) if d.value == "off" => None,
        Some(d) => {
            let ms = duration(cx, d, "cluster.defer")?;
            if ms > 1000 {
                return Err(cx.at(d, format!("cluster.defer: {} holds first packets too long (at most 1s)", d.value)));
            }
            Some(ms)
        }
    };
    let vips = match &raw.vips {
        None => VipMode::Shared,
        Some(v) if v.value == "shared" => VipMode::Shared,
        Some(v) if v.value == "owned" => VipMode::Owned,
        Some(v) => return Err(cx.at(v, format!("cluster.vips: '{}' is not shared or owned", v.value))),
    };
    let garp = match &raw.garp {
        None => DEFAULT_GARP,
        Some(g) => {
            let count = g.count.as_ref().map_or(Ok(DEFAULT_GARP.count), |c| {
                if (1..=100).contains(&c.value) {
                    Ok(c.value)
                } else {
                    Err(cx.at(c, format!("cluster.garp.count: {} is not between 1 and 100", c.value)))
                }
            })?;
            let interval_ms = match &g.interval {
                None => DEFAULT_GARP.interval_ms,
                Some(i) => {
                    let ms = duration(cx, i, "cluster.garp.interval")?;
                    if !(1..=10_000).contains(&ms) {
                        return Err(cx.at(i, format!("cluster.garp.interval: {} is not between 1ms and 10s", i.value)));
                    }
                    ms
                }
            };
            Garp { count, interval_ms }
        }
    };
    if let Some(p) = raw.preempt.as_ref().filter(|_| vips == VipMode::Shared) {
        return Err(cx.at(p, "cluster.preempt: only with vips: owned (shared VIPs have no owner)".to_string()));
    }
    Ok(ClusterConfig {
        vips,
        garp,
        preempt: raw.preempt.as_ref().is_none_or(|p| p.value),
        address,
        members,
        key_file: raw.key_file.value.clone(),
        secret: read_secret(cx, &raw.key_file)?,
        timers,
        timers_name,
        sync: raw.sync,
        defer_ms: defer_ms.filter(|_| raw.sync),
    })
}
