//! Who answers for each VIP when `cluster.vips: owned`: a pool of virtual
//! addresses spread over the appliances and moved when one fails or joins
//! (active/standby when there is one VIP).
//!
//! Every appliance computes the same assignment from what the ring tells
//! them all: the candidates are the appliances of the master's view that
//! have said they are ready (they hold their siblings' sessions, or need
//! none); the ring's dispatcher comes first, the others follow in ring
//! address order; the i-th VIP (ascending) goes to candidate i mod n. So
//! one VIP belongs to the dispatcher, and a pool spreads over the live
//! appliances. When an appliance leaves the view its VIPs move at once;
//! when one comes back, it takes its VIPs only once it is ready, and the
//! appliance that held them lets go `HANDOVER_MS` after it hears so. A new owner
//! announces each VIP by gratuitous ARP (worker 0, `dataplane::announce`).
//!
//! With `preempt: false` a VIP stays with a live owner: the readiness
//! message lists the VIPs its sender answers for, and a VIP so claimed by a
//! candidate is not reassigned (the rule above places only the others).
//!
//! Readiness travels as a ring broadcast, "appliance ready <incarnation>",
//! sent once this appliance is ready, after every view change, and every
//! `READY_EVERY_MS`; the incarnation ties it to one run, so a restarted
//! appliance is not taken for ready by its earlier run's word. An appliance
//! waits `CLAIM_GRACE_MS` after it is ready before it says so or counts
//! itself: by then it has
//! heard every ready appliance repeat itself twice, so it does not take a VIP
//! that is owned (which would send the segment a gratuitous ARP for an
//! appliance that lets go of the VIP a moment later). Appliances that start
//! together end their grace together and may each claim before they hear
//! each other; the loser lets go within a ring round trip and stops its
//! announcements, while the owner's go on (`garp.count` × `garp.interval`),
//! so the segment's caches end at the owner.

use super::channel::{Command, WorkerPort};
use crate::dataplane::Shared;
use ringlb_ring::wire::MemberEntry;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// How often a ready appliance repeats that it is ready.
pub const READY_EVERY_MS: u64 = 500;
/// How long an owner still answers for a VIP it hands over to an
/// appliance that has just claimed it: the claimant's gratuitous ARP, sent
/// as it claims, has reached the segment by then. Until then both answer
/// (both forward correctly: they share sessions), so no new flow that
/// still reaches the old owner is refused.
pub const HANDOVER_MS: u64 = 300;
/// How long a joining appliance listens before it claims VIPs.
pub const CLAIM_GRACE_MS: u64 = 2 * READY_EVERY_MS + 200;
const READY_PREFIX: &str = "appliance ready ";

/// The owner of each VIP (by index) among `candidates`, in their order.
pub fn assign(vips: usize, candidates: &[SocketAddrV4]) -> Vec<Option<SocketAddrV4>> {
    (0..vips).map(|i| (!candidates.is_empty()).then(|| candidates[i % candidates.len()])).collect()
}

/// The candidates in assignment order: the dispatcher first, then the rest
/// in ring address order.
pub fn order(mut ready: Vec<SocketAddrV4>, dispatcher: Option<SocketAddrV4>) -> Vec<SocketAddrV4> {
    ready.sort_by_key(ringlb_ring::wire::order);
    ready.dedup();
    if let Some(pos) = dispatcher.and_then(|d| ready.iter().position(|a| *a == d)) {
        let d = ready.remove(pos);
        ready.insert(0, d);
    }
    ready
}

/// "appliance ready <incarnation>[ owns <vip>,<vip>...]": the VIPs the
/// sender answers for now (what `preempt: false` keeps with it).
pub fn ready_message(incarnation: u64, owned: &[u32]) -> Vec<u8> {
    let mut m = format!("{READY_PREFIX}{incarnation}");
    if !owned.is_empty() {
        let list: Vec<String> = owned.iter().map(|&v| Ipv4Addr::from(v).to_string()).collect();
        m.push_str(" owns ");
        m.push_str(&list.join(","));
    }
    m.into_bytes()
}

/// The incarnation and owned VIPs in a readiness message; None for any
/// other payload (or a malformed one).
pub fn parse_ready(payload: &[u8]) -> Option<(u64, Vec<u32>)> {
    let rest = std::str::from_utf8(payload).ok()?.strip_prefix(READY_PREFIX)?;
    let (inc, owns) = match rest.split_once(" owns ") {
        Some((inc, list)) => (inc, Some(list)),
        None => (rest, None),
    };
    let incarnation = inc.parse().ok()?;
    let mut owned = Vec::new();
    for v in owns.into_iter().flat_map(|l| l.split(',')) {
        owned.push(u32::from(v.parse::<Ipv4Addr>().ok()?));
    }
    Some((incarnation, owned))
}

#[derive(serde::Serialize, Debug, Clone)]
pub struct VipStatus {
    pub vip: String,
    pub owner: Option<String>,
    pub here: bool,
}

pub struct VipOwners {
    me: SocketAddrV4,
    /// Ascending, as `Shared::vip_addresses`.
    vips: Vec<u32>,
    owners: Vec<Option<SocketAddrV4>>,
    /// Per VIP being handed over to another appliance: until when this one
    /// still answers for it.
    handover_until: Vec<Option<u64>>,
    /// Other appliances that said they are ready: the run that said it, and
    /// the VIPs it answered for then.
    ready: BTreeMap<SocketAddrV4, (u64, Vec<u32>)>,
    /// false: a VIP stays with its owner while that one lives (a returning
    /// appliance does not take its VIPs back).
    preempt: bool,
    /// When this appliance last said it is ready (None: not yet, or it
    /// must say it again now).
    said_ready_ms: Option<u64>,
    /// Since when this appliance has been ready for traffic.
    ready_since_ms: Option<u64>,
    /// Ready long enough: it may own VIPs (for the rest of the run).
    may_own: bool,
    pub takeovers: u64,
    pub releases: u64,
    /// VIPs taken and let go since the control thread last looked
    /// (`take_changes`): a VIP taken has its sessions rebuilt.
    taken: Vec<u32>,
    let_go: Vec<u32>,
}

impl VipOwners {
    pub fn new(me: SocketAddrV4, preempt: bool, shared: &Shared) -> VipOwners {
        let vips = shared.vip_addresses();
        VipOwners {
            me,
            owners: vec![None; vips.len()],
            handover_until: vec![None; vips.len()],
            vips,
            ready: BTreeMap::new(),
            preempt,
            said_ready_ms: None,
            ready_since_ms: None,
            may_own: false,
            takeovers: 0,
            releases: 0,
            taken: Vec::new(),
            let_go: Vec::new(),
        }
    }

    /// The VIPs taken and let go since the last call.
    pub fn take_changes(&mut self) -> (Vec<u32>, Vec<u32>) {
        (std::mem::take(&mut self.taken), std::mem::take(&mut self.let_go))
    }

    /// A ring broadcast from `origin`: remember a readiness message (it
    /// counts only while `origin` is an appliance of the view with that
    /// incarnation; see `update`).
    pub fn on_app(&mut self, origin: SocketAddrV4, payload: &[u8]) {
        if let Some((incarnation, owned)) = parse_ready(payload).filter(|_| origin != self.me) {
            self.ready.insert(origin, (incarnation, owned));
        }
    }

    /// The view changed: everyone (a newcomer too) should hear from us again.
    pub fn view_changed(&mut self) {
        self.said_ready_ms = None;
    }

    /// Whether this appliance may own VIPs: it has been ready for traffic
    /// for `CLAIM_GRACE_MS` (alone in its view too: a starting appliance may
    /// be alone for a moment before its ring merges with the others'). From
    /// then on it stays so for the rest of its run: while the ring re-forms
    /// after a failure it is not "ready for traffic", but it still holds
    /// every session, and a survivor must not wait to take a dead owner's VIPs.
    pub fn may_own(&mut self, now_ms: u64, ready_for_traffic: bool) -> bool {
        if self.may_own {
            return true;
        }
        if !ready_for_traffic {
            self.ready_since_ms = None;
            return false;
        }
        let since = *self.ready_since_ms.get_or_insert(now_ms);
        self.may_own = now_ms >= since + CLAIM_GRACE_MS;
        self.may_own
    }

    /// The readiness message: our incarnation and the VIPs we answer for.
    pub fn ready_message(&self, incarnation: u64) -> Vec<u8> {
        let owned: Vec<u32> =
            self.vips.iter().zip(&self.owners).filter(|(_, o)| **o == Some(self.me)).map(|(v, _)| *v).collect();
        ready_message(incarnation, &owned)
    }

    /// A readiness message is due now (`said_ready` once it went out).
    pub fn ready_message_due(&self, now_ms: u64, ready: bool) -> bool {
        ready && self.said_ready_ms.is_none_or(|t| now_ms >= t + READY_EVERY_MS)
    }

    pub fn said_ready(&mut self, now_ms: u64) {
        self.said_ready_ms = Some(now_ms);
    }

    /// Recomputes the owners from the view (`members`: None while the ring
    /// is forming or the view is not the master's: then nothing changes) and applies what changed
    /// here: the workers' ownership flags, gratuitous ARP for VIPs taken.
    /// Returns a note per change.
    pub fn update(
        &mut self,
        now_ms: u64,
        members: Option<&[MemberEntry]>,
        dispatcher: Option<SocketAddrV4>,
        me_ready: bool,
        shared: &Shared,
        workers: &mut [WorkerPort],
    ) -> Vec<String> {
        // While the ring re-forms there is no view everyone shares: keep
        // what we have (dropping every VIP would leave them unanswered).
        let candidates = match members {
            None => return Vec::new(),
            Some(members) => {
                let appliances = members.iter().filter(|m| m.caps & ringlb_ring::wire::CAP_APPLIANCE != 0);
                self.ready.retain(|a, (inc, _)| members.iter().any(|m| m.addr == *a && m.incarnation == *inc));
                let ready = appliances
                    .filter(|m| {
                        if m.addr == self.me {
                            me_ready
                        } else {
                            self.ready.get(&m.addr).is_some_and(|(inc, _)| *inc == m.incarnation)
                        }
                    })
                    .map(|m| m.addr)
                    .collect();
                order(ready, dispatcher)
            }
        };
        let mut owners = assign(self.vips.len(), &candidates);
        if !self.preempt {
            // A VIP stays with a live candidate that answers for it (the
            // first of them in candidate order, should two say so).
            for (i, &vip) in self.vips.iter().enumerate() {
                let holder = candidates.iter().copied().find(|c| {
                    if *c == self.me {
                        self.owners[i] == Some(self.me)
                    } else {
                        self.ready.get(c).is_some_and(|(_, owned)| owned.contains(&vip))
                    }
                });
                if holder.is_some() {
                    owners[i] = holder;
                }
            }
        }
        let mut notes = Vec::new();
        for (i, (&vip, owner)) in self.vips.iter().zip(owners).enumerate() {
            let was = self.owners[i] == Some(self.me);
            let is = owner == Some(self.me);
            if was && !is && owner.is_some() {
                // Handing over to a live appliance: stop announcing at once,
                // keep answering a little longer (see HANDOVER_MS).
                match self.handover_until[i] {
                    None => {
                        self.handover_until[i] = Some(now_ms + HANDOVER_MS);
                        if let Some(w) = workers.first_mut() {
                            w.send(Command::Withdraw { vip });
                        }
                        continue;
                    }
                    Some(until) if now_ms < until => continue,
                    Some(_) => {}
                }
            }
            // A handover called off (the claimant left): announce again,
            // as its gratuitous ARP may have moved the segment's caches.
            if self.handover_until[i].take().is_some() && is {
                if let Some(w) = workers.first_mut() {
                    w.send(Command::Announce { vip });
                }
                notes.push(format!("vip {}: handover called off, announced again", Ipv4Addr::from(vip)));
            }
            self.owners[i] = owner;
            if was == is {
                continue;
            }
            shared.set_vip_owned(vip, is);
            // Tell the others what we answer for now.
            self.said_ready_ms = None;
            let ip = Ipv4Addr::from(vip);
            if is {
                self.takeovers += 1;
                self.taken.push(vip);
                if let Some(w) = workers.first_mut() {
                    w.send(Command::Announce { vip });
                }
                notes.push(format!("vip {ip}: owned here now (gratuitous ARP x{})", shared.garp.count));
            } else {
                self.releases += 1;
                self.let_go.push(vip);
                if let Some(w) = workers.first_mut() {
                    w.send(Command::Withdraw { vip });
                }
                let to = owner.map_or("nobody (no ready appliance)".into(), |o| o.to_string());
                notes.push(format!("vip {ip}: released to {to}"));
            }
        }
        notes
    }

    pub fn status(&self) -> Vec<VipStatus> {
        self.vips
            .iter()
            .zip(&self.owners)
            .map(|(&vip, owner)| VipStatus {
                vip: Ipv4Addr::from(vip).to_string(),
                owner: owner.map(|o| o.to_string()),
                here: *owner == Some(self.me),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, i), 7400)
    }

    #[test]
    fn one_vip_belongs_to_the_dispatcher_and_a_pool_spreads() {
        let c = order(vec![a(3), a(1), a(2)], Some(a(2)));
        assert_eq!(c, vec![a(2), a(1), a(3)]);
        assert_eq!(assign(1, &c), vec![Some(a(2))]);
        assert_eq!(assign(4, &c), vec![Some(a(2)), Some(a(1)), Some(a(3)), Some(a(2))]);
        assert_eq!(assign(2, &[]), vec![None, None]);
    }

    #[test]
    fn every_member_computes_the_same_owners_whatever_order_it_heard_in() {
        let x = order(vec![a(1), a(2), a(3)], Some(a(1)));
        let y = order(vec![a(3), a(2), a(1), a(2)], Some(a(1)));
        assert_eq!(assign(3, &x), assign(3, &y));
    }

    #[test]
    fn a_dead_members_vips_move_to_the_survivors() {
        let before = assign(3, &order(vec![a(1), a(2)], Some(a(1))));
        let after = assign(3, &order(vec![a(2)], Some(a(2))));
        assert_eq!(before, vec![Some(a(1)), Some(a(2)), Some(a(1))]);
        assert_eq!(after, vec![Some(a(2)); 3]);
    }

    #[test]
    fn readiness_messages_round_trip_and_nothing_else_parses() {
        assert_eq!(parse_ready(&ready_message(1_700_000_000_123, &[])), Some((1_700_000_000_123, vec![])));
        let vips = [u32::from(Ipv4Addr::new(198, 18, 100, 1)), u32::from(Ipv4Addr::new(198, 18, 100, 3))];
        assert_eq!(parse_ready(&ready_message(7, &vips)), Some((7, vips.to_vec())));
        assert_eq!(parse_ready(b"load 0.5 conns 3"), None);
        assert_eq!(parse_ready(b"appliance ready x"), None);
        assert_eq!(parse_ready(b"appliance ready 7 owns 198.18.100.1,bogus"), None);
        assert_eq!(parse_ready(&[0xff, 0xfe]), None);
    }

    /// One VIP, this appliance 10.255.0.2, and its worker-0 command queue.
    fn owners_here() -> (VipOwners, crate::dataplane::Shared, Vec<WorkerPort>, super::super::channel::CommandRx) {
        let cfg = crate::config::parse(
            "eal: { control_core: 0, worker_cores: [1] }
ports:
  - { device: net_null0, ip: 198.18.0.1/24 }
services:
  - { name: web, vip: 198.18.100.1, port: 80, mode: dsr, group: web }
server_groups:
  web:
    - { ip: 198.18.0.11, port: 80 }
",
            "t.yaml",
        )
        .unwrap();
        let shared = crate::dataplane::Shared::new(&cfg, &[[2, 0, 0, 0, 0, 1]]);
        let (port, rx, _tx) = super::super::channel::worker_channel(64);
        (VipOwners::new(a(2), true, &shared), shared, vec![port], rx)
    }

    fn appliance(i: u8, incarnation: u64) -> MemberEntry {
        MemberEntry { addr: a(i), caps: ringlb_ring::wire::CAP_APPLIANCE | 1, id: 0, incarnation }
    }

    fn commands(w: &mut [WorkerPort], rx: &mut super::super::channel::CommandRx) -> Vec<Command> {
        w[0].flush();
        std::iter::from_fn(|| rx.pop()).collect()
    }

    #[test]
    fn readiness_counts_only_from_an_appliance_of_the_view_with_its_incarnation() {
        let (mut v, shared, mut w, mut rx) = owners_here();
        let vip = u32::from(Ipv4Addr::new(198, 18, 100, 1));
        // The view: appliance 1 (run 5) and us (2), and an agent (3, no
        // appliance bit). Forged or stale words: appliance 1's earlier run,
        // the agent, and a non-member, each claiming to be ready.
        let agent = MemberEntry { addr: a(3), caps: 0, id: 0, incarnation: 9 };
        let view = [appliance(1, 5), appliance(2, 7), agent];
        v.on_app(a(1), &ready_message(4, &[]));
        v.on_app(a(3), &ready_message(9, &[]));
        v.on_app(a(4), &ready_message(1, &[]));
        v.update(0, Some(&view), Some(a(1)), true, &shared, &mut w);
        assert_eq!(v.status()[0].owner, Some(a(2).to_string()), "none of them counted: we own the VIP");
        assert!(shared.owns_vip(vip), "the workers answer for it");
        assert_eq!(commands(&mut w, &mut rx), vec![Command::Announce { vip }]);
        // Appliance 1's current run says it is ready: the VIP goes to it
        // (the dispatcher), after the handover time.
        v.on_app(a(1), &ready_message(5, &[]));
        v.update(10, Some(&view), Some(a(1)), true, &shared, &mut w);
        assert_eq!(commands(&mut w, &mut rx), vec![Command::Withdraw { vip }], "announcements stop at once");
        assert_eq!(v.status()[0].owner, Some(a(2).to_string()), "still answering during the handover");
        v.update(10 + HANDOVER_MS, Some(&view), Some(a(1)), true, &shared, &mut w);
        assert_eq!(v.status()[0].owner, Some(a(1).to_string()));
        assert!(!shared.owns_vip(vip), "the workers are silent for it");
    }

    #[test]
    fn a_handover_called_off_is_announced_again() {
        let (mut v, shared, mut w, mut rx) = owners_here();
        let vip = u32::from(Ipv4Addr::new(198, 18, 100, 1));
        let both = [appliance(1, 5), appliance(2, 7)];
        v.update(0, Some(&both[1..]), Some(a(2)), true, &shared, &mut w);
        v.on_app(a(1), &ready_message(5, &[]));
        v.update(10, Some(&both), Some(a(1)), true, &shared, &mut w);
        assert_eq!(commands(&mut w, &mut rx), vec![Command::Announce { vip }, Command::Withdraw { vip }]);
        // The claimant dies before the handover ends: we keep the VIP and
        // announce it again (its gratuitous ARP may have moved the caches).
        v.update(20, Some(&both[1..]), Some(a(2)), true, &shared, &mut w);
        assert_eq!(v.status()[0].owner, Some(a(2).to_string()));
        assert_eq!(commands(&mut w, &mut rx), vec![Command::Announce { vip }]);
    }
}
