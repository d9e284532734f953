//! What a member believes the ring is: its phase (forming or in a ring), the
//! view it holds, its id, and the rule that decides whether a view seen in a
//! heartbeat or announce replaces the one it holds.

use crate::wire::{order, MemberEntry, ViewMsg, CAP_DISPATCH};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// A ring as one master issued it: sorted by address, the first is master.
#[derive(Clone, Debug)]
pub(super) struct View {
    pub version: u64,
    pub created_ms: u64,
    pub members: Vec<MemberEntry>,
}

impl View {
    pub fn master(&self) -> SocketAddrV4 {
        self.members[0].addr
    }
    pub fn position(&self, a: &SocketAddrV4) -> Option<usize> {
        self.members.binary_search_by_key(&order(a), |m| order(&m.addr)).ok()
    }
    pub fn downstream(&self, me: &SocketAddrV4) -> SocketAddrV4 {
        let i = self.position(me).unwrap_or(0);
        self.members[(i + 1) % self.members.len()].addr
    }
    pub fn upstream(&self, me: &SocketAddrV4) -> SocketAddrV4 {
        let i = self.position(me).unwrap_or(0);
        self.members[(i + self.members.len() - 1) % self.members.len()].addr
    }
    pub fn dispatcher(&self) -> Option<SocketAddrV4> {
        if self.members.len() < 2 {
            return None; // a lone survivor serves standalone
        }
        self.members.iter().find(|m| m.caps & CAP_DISPATCH != 0).map(|m| m.addr)
    }
    pub fn to_msg(&self) -> ViewMsg {
        ViewMsg { version: self.version, created_ms: self.created_ms, members: self.members.clone() }
    }
    pub fn from_msg(v: &ViewMsg) -> View {
        View { version: v.version, created_ms: v.created_ms, members: v.members.clone() }
    }
}

pub(super) enum Phase {
    /// Leaving and re-entering: collect Hellos until `until`.
    Forming {
        until: u64,
        next_hello: u64,
        heard: BTreeMap<u64, MemberEntry>,
    },
    Member,
}

/// The member's standing in the ring.
pub(super) struct Membership {
    pub phase: Phase,
    pub view: View,
    pub my_id: u64,
    /// The highest view version this member issued as master: its versions
    /// only grow, so "same master, higher version" always means newer.
    pub version_floor: u64,
    /// The dispatcher last reported in an event.
    pub last_dispatcher: Option<SocketAddrV4>,
}

/// What to do with a view seen in a heartbeat or an announce.
pub(super) enum Verdict {
    Adopt,
    /// The view's ring should hold us: ask its master to admit us.
    AskToJoin(SocketAddrV4),
    Ignore,
}

impl Membership {
    pub fn is_forming(&self) -> bool {
        matches!(self.phase, Phase::Forming { .. })
    }
    pub fn in_ring(&self) -> bool {
        matches!(self.phase, Phase::Member)
    }
    pub fn is_master(&self, me: &SocketAddrV4) -> bool {
        self.in_ring() && self.view.master() == *me
    }
    /// More than one member: there are neighbours to watch and talk to.
    pub fn has_neighbours(&self) -> bool {
        self.view.members.len() > 1
    }
    pub fn dispatcher(&self) -> Option<SocketAddrV4> {
        if self.is_forming() {
            None
        } else {
            self.view.dispatcher()
        }
    }

    /// The adoption rule (PROTOCOL.md, "Views"). `me`/`incarnation` identify
    /// this member; `master_silent` says our own master has been quiet for
    /// the communication timeout.
    pub fn judge(&self, me: &SocketAddrV4, incarnation: u64, v: &ViewMsg, master_silent: bool) -> Verdict {
        let their_master = v.members[0].addr;
        let in_view = v.members.iter().any(|m| m.addr == *me && m.incarnation == incarnation);
        let my_master = match &self.phase {
            Phase::Forming { heard, .. } => {
                heard.values().map(|m| m.addr).chain([*me]).min_by_key(order).unwrap_or(*me)
            }
            Phase::Member => self.view.master(),
        };
        let smaller = order(&their_master) < order(&my_master);
        // Same master address: a restarted master (higher incarnation) starts a
        // new version series, so compare (incarnation, version).
        let mine = (self.view.members[0].incarnation, self.view.version);
        let same_master_newer = their_master == my_master && (v.members[0].incarnation, v.version) > mine;
        // Our master has gone quiet: a view from another master that holds us
        // wins even if its master is greater (else a stale view can block a ring).
        let orphaned = their_master != my_master && master_silent && !self.is_master(me);
        if in_view {
            let newer = match self.phase {
                Phase::Forming { .. } => true,
                Phase::Member => smaller || orphaned || same_master_newer,
            };
            if newer {
                Verdict::Adopt
            } else {
                Verdict::Ignore
            }
        } else if smaller || their_master == my_master {
            Verdict::AskToJoin(their_master)
        } else {
            Verdict::Ignore
        }
    }
}
