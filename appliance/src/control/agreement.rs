//! The configuration a member runs, and how the members of a cluster agree
//! on its shared part (`config::reload::SHARED_SECTIONS`: services, server
//! groups, timeouts). Sans-IO: the control thread feeds it ring messages
//! and views and sends what it returns.
//!
//! A reload on one member (the coordinator) proposes the shared sections
//! of its file to every other appliance in the ring's view, over the ring's
//! reliable layer, in two phases:
//! 1. `prepare`: each member merges the sections into its own running
//!    configuration, validates the result as a reload of its own
//!    (`config::reload::prepare`) and votes `ok` or `no` with the reason;
//! 2. all `ok`: `commit` to each, and everyone switches; any `no`, or no
//!    answer in `ROUND_LIMIT_MS`: `abort`, and no one does.
//!
//! A member that leaves the view during a round is not waited for. Every
//! change carries a generation, one more than the highest any member had;
//! members broadcast theirs (`have`) every `HAVE_EVERY_MS` and on each
//! view. A member behind (one that was away, restarted from its file, or
//! missed a commit when its coordinator failed) pulls the newest shared
//! sections from a member that has them and applies them: every member
//! ends on the highest generation. Only appliances of the current view are
//! heard, and the ring authenticates every message (keyed MAC, anti-replay).

use crate::config::reload::{self, Changes};
use crate::config::Config;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddrV4;
use std::path::PathBuf;

/// How long a coordinator waits for every vote.
pub const ROUND_LIMIT_MS: u64 = 10_000;
/// How often a member says which generation it runs.
pub const HAVE_EVERY_MS: u64 = 2_000;
/// A pull not answered by then is asked again (of whoever is ahead then).
const PULL_RETRY_MS: u64 = 3_000;
/// Aborted rounds remembered (an abort that overtook its prepare).
const ABORTED_KEPT: usize = 16;
/// A prepared change whose commit or abort never comes is dropped then.
const PREPARED_LIMIT_MS: u64 = 2 * ROUND_LIMIT_MS;

/// What the control thread does for the agreement.
#[derive(Debug)]
pub enum Effect {
    /// Broadcast around the ring (small).
    Broadcast(Vec<u8>),
    /// Send over the reliable layer.
    To(SocketAddrV4, Vec<u8>),
    /// Switch to this configuration (`Control::reload`); the log line.
    Apply(Box<Config>, String),
    Note(String),
    Warn(String),
}

/// A reload the operator asked for.
pub enum Started {
    /// Applied here at once (no other appliance to agree with).
    Applied(Box<Config>, String),
    /// Proposed to the others: round `id` decides (`Agreement::outcome`).
    Proposed(u64),
}

/// A change this member coordinates.
struct Round {
    id: u64,
    generation: u64,
    version: String,
    text: String,
    config: Config,
    changes: Changes,
    waiting: BTreeSet<SocketAddrV4>,
    started_ms: u64,
}

/// A change another member coordinates, validated here and voted for.
struct Prepared {
    from: SocketAddrV4,
    id: u64,
    generation: u64,
    text: String,
    config: Config,
    changes: Changes,
    at_ms: u64,
}

/// What each member runs, as the status shows it.
#[derive(serde::Serialize, Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    pub member: String,
    pub generation: u64,
    pub cluster_version: String,
}

#[derive(serde::Serialize, Debug, Clone, Default)]
pub struct AgreementStatus {
    /// This member's generation and cluster version (the shared part's).
    pub generation: u64,
    pub cluster_version: String,
    /// Every appliance it has heard from, itself included.
    pub members: Vec<MemberConfig>,
    pub rounds: u64,
    pub committed: u64,
    pub aborted: u64,
    pub pulled: u64,
    /// Changes from others this member could not take (the last reason).
    pub refused: u64,
    pub last_refusal: Option<String>,
}

pub struct Agreement {
    me: Option<SocketAddrV4>,
    path: Option<PathBuf>,
    /// The configuration running, and the text it came from.
    running: Config,
    text: String,
    generation: u64,
    /// Others' (generation, cluster version), as they said.
    peers: BTreeMap<SocketAddrV4, (u64, String)>,
    /// Appliances in the view now, besides this one.
    view: BTreeSet<SocketAddrV4>,
    round: Option<Round>,
    prepared: Option<Prepared>,
    next_round: u64,
    /// Decided rounds (coordinator): id → the answer for the operator.
    outcomes: BTreeMap<u64, Result<String, String>>,
    last_have_ms: Option<u64>,
    /// The pull under way: whom it asked, when.
    pull: Option<(SocketAddrV4, u64)>,
    /// A (generation, version) this member could not take: not pulled again.
    refused_state: Option<(u64, String)>,
    /// Rounds of others aborted lately (an abort may overtake its prepare).
    aborted: VecDeque<(SocketAddrV4, u64)>,
    /// Server ids the appliance can hold (`Shared::server_capacity`).
    capacity: usize,
    status: AgreementStatus,
}

fn line_and_body(payload: &[u8]) -> Option<(Vec<&str>, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let words: Vec<&str> = head.split(' ').collect();
    (words.first() == Some(&"cfg")).then_some((words, body))
}

impl Agreement {
    /// `me`: this appliance's ring address (None: standalone); `path`: the
    /// file `running` was read from (None: reloads are refused).
    pub fn new(me: Option<SocketAddrV4>, path: Option<PathBuf>, running: Config, capacity: usize) -> Agreement {
        let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let status = AgreementStatus { cluster_version: running.cluster_version(), ..Default::default() };
        Agreement {
            me,
            path,
            running,
            text,
            generation: 0,
            peers: BTreeMap::new(),
            view: BTreeSet::new(),
            round: None,
            prepared: None,
            next_round: 1,
            outcomes: BTreeMap::new(),
            last_have_ms: None,
            pull: None,
            refused_state: None,
            aborted: VecDeque::new(),
            capacity,
            status,
        }
    }

    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Whether a payload is this module's (others' parsers skip it).
    pub fn is_ours(payload: &[u8]) -> bool {
        payload.starts_with(b"cfg ")
    }

    /// The operator's reload: the file read again. With other appliances
    /// in the view its shared sections are proposed to them; otherwise it
    /// is applied at once.
    pub fn reload(&mut self, now_ms: u64, out: &mut Vec<Effect>) -> Result<Started, String> {
        let Some(path) = &self.path else { return Err("this appliance was not started from a file".into()) };
        if self.round.is_some() || self.prepared.is_some() {
            return Err("another configuration change is under way in the cluster; try again".into());
        }
        let file = path.to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
        let new = crate::config::parse(&text, &file).map_err(|e| e.to_string())?;
        let (new, changes) = reload::prepare(&self.running, new, self.capacity)?;
        let generation = self.peers.values().map(|p| p.0).chain([self.generation]).max().unwrap_or(0) + 1;
        if self.view.is_empty() {
            let line = self.line(&new, &changes, generation, "");
            self.adopt(new, text, generation);
            return Ok(Started::Applied(Box::new(self.running.clone()), line));
        }
        let id = self.next_round;
        self.next_round += 1;
        let shared = reload::shared_text(&text);
        let version = new.cluster_version();
        for &m in &self.view {
            out.push(Effect::To(m, format!("cfg prepare {id} {generation} {version}\n{shared}").into_bytes()));
        }
        self.status.rounds += 1;
        self.round = Some(Round {
            id,
            generation,
            version,
            text,
            config: new,
            changes,
            waiting: self.view.clone(),
            started_ms: now_ms,
        });
        Ok(Started::Proposed(id))
    }

    /// Round `id`'s answer, once decided.
    pub fn outcome(&mut self, id: u64) -> Option<Result<String, String>> {
        self.outcomes.remove(&id)
    }

    /// A message from appliance `from` of the current view.
    pub fn on_message(&mut self, from: SocketAddrV4, payload: &[u8], now_ms: u64, out: &mut Vec<Effect>) {
        let Some((w, body)) = line_and_body(payload) else { return };
        let num = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
        match (w.get(1).copied(), num(2), num(3)) {
            (Some("have"), Some(generation), _) => {
                let version = w.get(3).unwrap_or(&"").to_string();
                self.peers.insert(from, (generation, version));
                self.pull_if_behind(now_ms, out);
            }
            (Some("pull"), _, _) => {
                let shared = reload::shared_text(&self.text);
                let v = self.running.cluster_version();
                out.push(Effect::To(from, format!("cfg state {} {v}\n{shared}", self.generation).into_bytes()));
            }
            // Only the answer to our own pull, and only with no change under way.
            (Some("state"), Some(generation), _)
                if self.pull.is_some_and(|(asked, _)| asked == from)
                    && self.round.is_none()
                    && self.prepared.is_none() =>
            {
                let version = w.get(3).unwrap_or(&"").to_string();
                if !self.ahead(generation, &version, from) {
                    self.pull = None;
                    return;
                }
                match self.validate(body, &format!("the cluster's configuration from {from}")) {
                    Ok((config, text, changes)) if config.cluster_version() == version => {
                        self.pull = None;
                        self.status.pulled += 1;
                        let line = self.line(&config, &changes, generation, &format!(" (pulled from {from})"));
                        self.adopt(config, text, generation);
                        out.push(Effect::Apply(Box::new(self.running.clone()), line));
                        self.pull_if_behind(now_ms, out);
                    }
                    // Refused: not asked for again (the pull stays as the
                    // back-off until its retry time).
                    Ok(_) => {
                        self.refused_state = Some((generation, version.clone()));
                        self.refuse(format!("{from}'s generation {generation} is not version {version} here"), out);
                    }
                    Err(e) => {
                        self.refused_state = Some((generation, version));
                        self.refuse(format!("generation {generation} from {from}: {e}"), out);
                    }
                }
            }
            (Some("prepare"), Some(id), Some(generation)) => {
                let version = w.get(4).unwrap_or(&"").to_string();
                // The same change proposed by several members at once (a
                // SIGHUP to every member): agreed, whoever commits first.
                let same_change =
                    self.round.as_ref().is_some_and(|r| (r.generation, &r.version) == (generation, &version))
                        || self.prepared.as_ref().is_some_and(|p| {
                            (p.generation, p.config.cluster_version()) == (generation, version.clone())
                        });
                let vote = if same_change {
                    Ok(())
                } else if self.aborted.contains(&(from, id)) {
                    Err("aborted already".to_string())
                } else if self.round.is_some() || self.prepared.is_some() {
                    Err("another change is under way here".to_string())
                } else if generation <= self.generation {
                    Err(format!("generation {generation} is not newer than {} here", self.generation))
                } else {
                    match self.validate(body, &format!("the change proposed by {from}")) {
                        Ok((config, _, _)) if config.cluster_version() != version => {
                            Err(format!("it is version {} here, not {version}", config.cluster_version()))
                        }
                        Ok((config, text, changes)) => {
                            let at_ms = now_ms;
                            let p = Prepared { from, id, generation, text, config, changes, at_ms };
                            self.prepared = Some(p);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                };
                let answer = match &vote {
                    Ok(()) => format!("cfg vote {id} ok"),
                    Err(e) => {
                        self.refuse(format!("the change proposed by {from}: {e}"), out);
                        format!("cfg vote {id} no {}", e.replace('\n', " "))
                    }
                };
                out.push(Effect::To(from, answer.into_bytes()));
            }
            (Some("vote"), Some(id), _) => {
                let Some(r) = self.round.as_mut().filter(|r| r.id == id && r.waiting.contains(&from)) else { return };
                if w.get(3) == Some(&"ok") {
                    r.waiting.remove(&from);
                    self.finish_if_all_voted(out);
                } else {
                    let reason = w.get(4..).map(|r| r.join(" ")).unwrap_or_default();
                    self.abort(format!("{from} refused it: {reason}"), out);
                }
            }
            (Some("commit"), Some(id), _) => {
                let Some(p) = self.prepared.take_if(|p| p.from == from && p.id == id) else { return };
                let line = self.line(&p.config, &p.changes, p.generation, &format!(" (proposed by {from})"));
                self.status.committed += 1;
                self.adopt(p.config, p.text, p.generation);
                out.push(Effect::Apply(Box::new(self.running.clone()), line));
            }
            (Some("abort"), Some(id), _) => {
                if self.aborted.len() == ABORTED_KEPT {
                    self.aborted.pop_front();
                }
                self.aborted.push_back((from, id));
                if self.prepared.take_if(|p| p.from == from && p.id == id).is_some() {
                    self.status.aborted += 1;
                    out.push(Effect::Note(format!("config: the change proposed by {from} was aborted")));
                }
            }
            _ => {}
        }
    }

    /// The ring's view changed: `appliances`, the other appliances in it.
    pub fn on_view(&mut self, appliances: &[SocketAddrV4], now_ms: u64, out: &mut Vec<Effect>) {
        self.view = appliances.iter().copied().collect();
        self.peers.retain(|a, _| self.view.contains(a));
        if self.prepared.as_ref().is_some_and(|p| !self.view.contains(&p.from)) {
            self.prepared = None;
            out.push(Effect::Warn("config: the coordinator of a prepared change left the ring: dropped".into()));
        }
        if let Some(r) = &mut self.round {
            r.waiting.retain(|a| appliances.contains(a));
            self.finish_if_all_voted(out);
        }
        self.last_have_ms = None; // say ours at once
        self.poll(now_ms, out);
    }

    /// Timers: the periodic `have`, a round's limit, a pull's retry.
    pub fn poll(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        if self.me.is_some() && self.last_have_ms.is_none_or(|t| now_ms >= t + HAVE_EVERY_MS) && !self.view.is_empty() {
            self.last_have_ms = Some(now_ms);
            let v = self.running.cluster_version();
            out.push(Effect::Broadcast(format!("cfg have {} {v}", self.generation).into_bytes()));
        }
        if self.round.as_ref().is_some_and(|r| now_ms >= r.started_ms + ROUND_LIMIT_MS) {
            let missing: Vec<String> =
                self.round.as_ref().map_or(Vec::new(), |r| r.waiting.iter().map(ToString::to_string).collect());
            self.abort(format!("no vote from {} in {ROUND_LIMIT_MS} ms", missing.join(", ")), out);
        }
        if self.prepared.as_ref().is_some_and(|p| now_ms >= p.at_ms + PREPARED_LIMIT_MS) {
            self.prepared = None;
            out.push(Effect::Warn("config: a prepared change was never committed or aborted: dropped".into()));
        }
        if self.pull.is_some_and(|(_, at)| now_ms >= at + PULL_RETRY_MS) {
            self.pull = None;
        }
        self.pull_if_behind(now_ms, out);
    }

    /// The next timer, in ms on the control clock.
    pub fn poll_timeout(&self) -> u64 {
        if self.me.is_none() || self.view.is_empty() {
            return u64::MAX;
        }
        self.last_have_ms.map_or(0, |t| t + HAVE_EVERY_MS)
    }

    pub fn status(&self) -> AgreementStatus {
        let mut s = self.status.clone();
        s.generation = self.generation;
        s.cluster_version = self.running.cluster_version();
        s.members = self
            .me
            .iter()
            .map(|&me| (me, (self.generation, s.cluster_version.clone())))
            .chain(self.peers.iter().map(|(a, p)| (*a, p.clone())))
            .map(|(a, (generation, cluster_version))| MemberConfig {
                member: a.to_string(),
                generation,
                cluster_version,
            })
            .collect();
        s.members.sort_by(|a, b| a.member.cmp(&b.member));
        s
    }

    /// Whether a member's (generation, version) is ahead of this one's:
    /// a higher generation, or (after a partition) the same one with other
    /// content at a lower address, so that every member ends on one. At
    /// generation 0 (each started from its file) nothing is ahead.
    fn ahead(&self, generation: u64, version: &str, from: SocketAddrV4) -> bool {
        if self.refused_state.as_ref().is_some_and(|(g, v)| *g == generation && v == version) {
            return false;
        }
        let mine = self.running.cluster_version();
        generation > self.generation
            || (generation == self.generation
                && generation > 0
                && version != mine
                && self.me.is_some_and(|me| (from.ip().octets(), from.port()) < (me.ip().octets(), me.port())))
    }

    /// Asks a member ahead of this one for its shared sections.
    fn pull_if_behind(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        if self.pull.is_some() || self.round.is_some() || self.prepared.is_some() {
            return;
        }
        // The highest generation; of equals, the lowest address (the one
        // the others end on too).
        let ahead = self
            .peers
            .iter()
            .filter(|(a, p)| self.ahead(p.0, &p.1, **a))
            .max_by_key(|(a, p)| (p.0, std::cmp::Reverse((a.ip().octets(), a.port()))));
        if let Some((&from, _)) = ahead {
            self.pull = Some((from, now_ms));
            out.push(Effect::To(from, b"cfg pull".to_vec()));
        }
    }

    fn finish_if_all_voted(&mut self, out: &mut Vec<Effect>) {
        if !self.round.as_ref().is_some_and(|r| r.waiting.is_empty()) {
            return;
        }
        let Some(r) = self.round.take() else { return };
        for &m in &self.view {
            out.push(Effect::To(m, format!("cfg commit {}", r.id).into_bytes()));
        }
        let line = self.line(&r.config, &r.changes, r.generation, " (agreed by every appliance in the ring)");
        self.status.committed += 1;
        self.adopt(r.config, r.text, r.generation);
        out.push(Effect::Apply(Box::new(self.running.clone()), line.clone()));
        self.outcomes.insert(r.id, Ok(line));
    }

    fn abort(&mut self, reason: String, out: &mut Vec<Effect>) {
        let Some(r) = self.round.take() else { return };
        for &m in &self.view {
            out.push(Effect::To(m, format!("cfg abort {}", r.id).into_bytes()));
        }
        self.status.aborted += 1;
        out.push(Effect::Warn(format!("config: change to {} aborted, nothing changed: {reason}", r.version)));
        self.outcomes.insert(r.id, Err(format!("aborted, nothing changed anywhere: {reason}")));
    }

    fn refuse(&mut self, reason: String, out: &mut Vec<Effect>) {
        self.status.refused += 1;
        self.status.last_refusal = Some(reason.clone());
        out.push(Effect::Warn(format!("config: refused {reason}")));
    }

    /// `shared` merged into what runs here, validated as a reload here.
    fn validate(&self, shared: &str, what: &str) -> Result<(Config, String, Changes), String> {
        let text = reload::merge_shared(&self.text, shared);
        let new = crate::config::parse(&text, what).map_err(|e| e.to_string())?;
        let (config, changes) = reload::prepare(&self.running, new, self.capacity)?;
        Ok((config, text, changes))
    }

    fn adopt(&mut self, config: Config, text: String, generation: u64) {
        self.running = config;
        self.text = text;
        self.generation = generation;
    }

    fn line(&self, new: &Config, changes: &Changes, generation: u64, how: &str) -> String {
        format!(
            "reload: config version {} → {} (cluster version {}, generation {generation}){how}: {}",
            self.running.version(),
            new.version(),
            new.cluster_version(),
            changes.summary()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Member `i`'s file: its own port address, the shared servers given.
    fn text(i: u8, servers: &[(u8, u32)]) -> String {
        let list: String =
            servers.iter().map(|(l, w)| format!("    - {{ ip: 198.18.1.{l}, port: 8080, weight: {w} }}\n")).collect();
        format!(
            "eal: {{ control_core: 0, worker_cores: [1], hugepages: false, memory_mb: 256 }}\n\
             ports:\n  - {{ device: net_null0, ip: 198.18.0.{i}/24, mac: \"02:00:00:00:00:0{i}\" }}\n  \
             - {{ device: net_null1, ip: 198.18.1.{i}/24, mac: \"02:00:00:00:01:0{i}\" }}\n\
             services:\n  - {{ name: web, vip: 198.18.100.1, port: 80, mode: nat, scheduler: wrr, group: web }}\n\
             server_groups:\n  web:\n{list}"
        )
    }

    fn addr(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, i].into(), 7400)
    }

    /// Three members, their files in `dir`, and the messages between them.
    struct Cluster {
        dir: PathBuf,
        members: Vec<Agreement>,
        /// In flight: (to, from, payload); broadcasts are one per receiver.
        wire: VecDeque<(usize, usize, Vec<u8>)>,
        applied: Vec<Vec<String>>,
        up: Vec<bool>,
    }

    impl Cluster {
        fn new(tag: &str) -> Cluster {
            let dir = std::env::temp_dir().join(format!("ringlb-agreement-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let members = (1..=3u8).map(|i| Cluster::start(&dir, i)).collect();
            let mut c =
                Cluster { dir, members, wire: VecDeque::new(), applied: vec![Vec::new(); 3], up: vec![true; 3] };
            c.view(0);
            c
        }

        fn start(dir: &std::path::Path, i: u8) -> Agreement {
            let path = dir.join(format!("m{i}.yaml"));
            if !path.exists() {
                std::fs::write(&path, text(i, &[(11, 1), (12, 1)])).unwrap();
            }
            let cfg = crate::config::load(&path.to_string_lossy()).unwrap();
            Agreement::new(Some(addr(i)), Some(path), cfg, 256)
        }

        fn write(&self, i: usize, servers: &[(u8, u32)]) {
            std::fs::write(self.dir.join(format!("m{}.yaml", i + 1)), text(i as u8 + 1, servers)).unwrap();
        }

        fn view(&mut self, now: u64) {
            for i in 0..3 {
                if !self.up[i] {
                    continue;
                }
                let others: Vec<SocketAddrV4> =
                    (0..3).filter(|&j| j != i && self.up[j]).map(|j| addr(j as u8 + 1)).collect();
                let mut out = Vec::new();
                self.members[i].on_view(&others, now, &mut out);
                self.send(i, out);
            }
        }

        fn send(&mut self, from: usize, out: Vec<Effect>) {
            for e in out {
                match e {
                    Effect::Broadcast(p) => {
                        for to in (0..3).filter(|&j| j != from) {
                            self.wire.push_back((to, from, p.clone()));
                        }
                    }
                    Effect::To(to, p) => self.wire.push_back((usize::from(to.ip().octets()[3]) - 1, from, p)),
                    Effect::Apply(cfg, line) => {
                        assert_eq!(cfg.cluster_version(), self.members[from].running().cluster_version());
                        self.applied[from].push(line);
                    }
                    Effect::Note(_) | Effect::Warn(_) => {}
                }
            }
        }

        /// Delivers everything in flight (to members that are up).
        fn settle(&mut self, now: u64) {
            while let Some((to, from, p)) = self.wire.pop_front() {
                if !self.up[to] || !self.up[from] {
                    continue;
                }
                let mut out = Vec::new();
                self.members[to].on_message(addr(from as u8 + 1), &p, now, &mut out);
                self.send(to, out);
            }
        }

        fn versions(&self) -> Vec<(u64, String)> {
            self.members.iter().map(|m| (m.generation, m.running().cluster_version())).collect()
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn reload(c: &mut Cluster, i: usize, now: u64) -> Started {
        let mut out = Vec::new();
        let started = c.members[i].reload(now, &mut out).unwrap();
        c.send(i, out);
        started
    }

    #[test]
    fn a_reload_on_one_member_reaches_every_member_in_two_phases() {
        let mut c = Cluster::new("all");
        c.settle(0);
        let before = c.versions();
        c.write(0, &[(11, 1), (12, 3), (13, 1)]);
        let Started::Proposed(id) = reload(&mut c, 0, 1) else { panic!("with others in the view it is proposed") };
        assert_eq!(c.versions(), before, "nothing changes before every vote is in");
        c.settle(1);
        let done = c.members[0].outcome(id).expect("decided").unwrap();
        assert!(done.contains("added web/198.18.1.13:8080"), "{done}");
        let v = c.versions();
        assert!(v.iter().all(|x| *x == v[0]) && v[0].0 == 1, "{v:?}");
        assert_ne!(v[0].1, before[0].1);
        // Each kept its own ports: their full versions differ.
        assert_ne!(c.members[1].running().version(), c.members[2].running().version());
        assert_eq!(c.members[1].running().servers.len(), 3);
        // The status lists all three at generation 1 once they said so.
        let mut out = Vec::new();
        c.members[1].poll(10_000, &mut out);
        c.send(1, out);
        c.settle(10_000);
        let s = c.members[0].status();
        assert_eq!(s.members.iter().filter(|m| m.generation == 1 && m.cluster_version == v[0].1).count(), 2, "{s:?}");
    }

    #[test]
    fn one_members_refusal_aborts_the_change_everywhere() {
        let mut c = Cluster::new("refused");
        // Member 3 has room for 2 server ids only: it cannot take a third.
        c.members[2].capacity = 2;
        c.write(0, &[(11, 1), (12, 1), (13, 1)]);
        let before = c.versions();
        let Started::Proposed(id) = reload(&mut c, 0, 1) else { panic!() };
        c.settle(1);
        let e = c.members[0].outcome(id).unwrap().unwrap_err();
        assert!(e.contains("127.0.0.3") && e.contains("server ids"), "{e}");
        assert_eq!(c.versions(), before, "no one switched");
        assert!(c.members[1].prepared.is_none(), "2 dropped its prepared change on the abort");
        assert!(c.applied.iter().all(Vec::is_empty));
    }

    #[test]
    fn a_member_away_during_the_change_pulls_it_on_return() {
        let mut c = Cluster::new("away");
        c.up[2] = false; // killed
        c.view(0);
        c.write(0, &[(11, 2)]);
        let Started::Proposed(id) = reload(&mut c, 0, 1) else { panic!() };
        c.settle(1);
        assert!(c.members[0].outcome(id).unwrap().is_ok(), "the two in the ring agree");
        assert_eq!(c.versions()[0], c.versions()[1]);
        // 3 restarts from its old file: generation 0, the old servers.
        c.members[2] = Cluster::start(&c.dir, 3);
        c.up[2] = true;
        c.view(100);
        c.settle(100);
        let v = c.versions();
        assert!(v.iter().all(|x| *x == v[0]) && v[0].0 == 1, "converged on return: {v:?}");
        assert!(c.applied[2][0].contains("pulled from 127.0.0.1:7400"), "{:?}", c.applied[2]);
        assert_eq!(c.members[2].running().servers.iter().filter(|s| !s.removed).count(), 1);
    }

    #[test]
    fn a_member_that_leaves_before_voting_is_not_waited_for() {
        let mut c = Cluster::new("leaves");
        c.write(0, &[(11, 1), (12, 2)]);
        let Started::Proposed(id) = reload(&mut c, 0, 1) else { panic!() };
        c.up[2] = false; // its vote never comes
        c.settle(1);
        assert!(c.members[0].outcome(id).is_none(), "waiting for 3");
        c.view(2); // the ring purges it
        c.settle(2);
        assert!(c.members[0].outcome(id).unwrap().is_ok());
        assert_eq!(c.versions()[0], c.versions()[1]);
    }

    #[test]
    fn forged_stale_or_out_of_turn_messages_change_nothing() {
        let mut c = Cluster::new("forged");
        let before = c.versions();
        let m = &mut c.members[1];
        let mut out = Vec::new();
        // A commit or state nobody prepared or that is not newer.
        m.on_message(addr(3), b"cfg commit 1", 0, &mut out);
        let shared = reload::shared_text(&text(1, &[(99, 1)]));
        m.on_message(addr(3), format!("cfg state 0 abc\n{shared}").as_bytes(), 0, &mut out);
        // A prepare that is not newer than what runs.
        m.on_message(addr(3), format!("cfg prepare 7 0 x\n{shared}").as_bytes(), 0, &mut out);
        assert!(matches!(&out[..], [Effect::Warn(_), Effect::To(_, p)] if p.starts_with(b"cfg vote 7 no")), "{out:?}");
        // A valid prepare from 3, then a commit in 1's name: ignored.
        out.clear();
        let v = crate::config::parse(&reload::merge_shared(&m.text, &shared), "x").unwrap().cluster_version();
        m.on_message(addr(3), format!("cfg prepare 8 5 {v}\n{shared}").as_bytes(), 0, &mut out);
        assert!(matches!(&out[..], [Effect::To(_, p)] if p == b"cfg vote 8 ok"), "{out:?}");
        m.on_message(addr(1), b"cfg commit 8", 0, &mut out);
        m.on_message(addr(3), b"cfg commit 9", 0, &mut out);
        // Garbage.
        m.on_message(addr(3), b"cfg", 0, &mut out);
        m.on_message(addr(3), b"cfg prepare x y\n\xff", 0, &mut out);
        m.on_message(addr(3), &[0xff; 40], 0, &mut out);
        assert_eq!(c.versions(), before);
        assert!(c.applied.iter().all(Vec::is_empty));
    }

    #[test]
    fn the_same_change_proposed_by_every_member_at_once_is_agreed() {
        let mut c = Cluster::new("same");
        c.settle(0);
        let mut ids = Vec::new();
        for i in 0..3 {
            c.write(i, &[(11, 1), (12, 1), (14, 2)]);
            let Started::Proposed(id) = reload(&mut c, i, 1) else { panic!() };
            ids.push(id);
        }
        c.settle(1);
        for (i, id) in ids.into_iter().enumerate() {
            assert!(c.members[i].outcome(id).unwrap().is_ok(), "member {}'s round", i + 1);
        }
        let v = c.versions();
        assert!(v.iter().all(|x| *x == v[0]) && v[0].0 == 1, "{v:?}");
    }

    #[test]
    fn a_state_nobody_pulled_is_ignored_and_a_refused_one_is_not_pulled_again() {
        let mut c = Cluster::new("state");
        let before = c.versions();
        let shared = reload::shared_text(&text(3, &[(11, 9)]));
        let mut out = Vec::new();
        c.members[1].on_message(addr(3), format!("cfg state 9 x\n{shared}").as_bytes(), 0, &mut out);
        assert!(out.is_empty() && c.versions() == before, "unsolicited: {out:?}");
        // 3 says it is at generation 9 with content 2 cannot take (its
        // version does not match): 2 pulls once, refuses, and stops asking.
        c.members[1].on_message(addr(3), b"cfg have 9 x", 0, &mut out);
        assert!(matches!(&out[..], [Effect::To(a, p)] if *a == addr(3) && p == b"cfg pull"), "{out:?}");
        out.clear();
        c.members[1].on_message(addr(3), format!("cfg state 9 x\n{shared}").as_bytes(), 0, &mut out);
        assert!(matches!(&out[..], [Effect::Warn(_)]), "{out:?}");
        out.clear();
        c.members[1].poll(60_000, &mut out);
        assert!(!out.iter().any(|e| matches!(e, Effect::To(_, p) if p == b"cfg pull")), "pulled again: {out:?}");
        assert_eq!(c.versions(), before);
    }

    #[test]
    fn after_a_partition_two_changes_of_one_generation_end_on_the_lower_addresss() {
        let mut c = Cluster::new("split");
        // 1 and 3 cannot hear each other: each changes alone (2 is away).
        c.up[1] = false;
        c.up[2] = false;
        c.view(0);
        c.write(0, &[(11, 5)]);
        assert!(matches!(reload(&mut c, 0, 1), Started::Applied(..)));
        c.up[0] = false;
        c.up[2] = true;
        c.view(2);
        c.write(2, &[(12, 7)]);
        assert!(matches!(reload(&mut c, 2, 3), Started::Applied(..)));
        assert_eq!(c.versions()[0].0, c.versions()[2].0, "one generation each");
        assert_ne!(c.versions()[0].1, c.versions()[2].1);
        // Healed: everyone hears everyone; all end on member 1's.
        c.up = vec![true; 3];
        c.view(10);
        c.settle(10);
        let v = c.versions();
        assert!(v.iter().all(|x| x.1 == v[0].1), "{v:?}");
        assert_eq!(c.members[2].running().servers.iter().filter(|s| !s.removed).count(), 1);
    }
}
