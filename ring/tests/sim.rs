//! Deterministic simulation of the ring: many members driven through their
//! sans-IO interface by a simulated network with loss, duplication,
//! reordering, delay, crashes, restarts, late joins, partitions and heals.
//! Every scenario is a seed; a failure prints the seed that reproduces it
//! (`RING_SIM_SEED=<seed> cargo test -p ringlb-ring --test sim one_seed`).

use rand::{rngs::SmallRng, Rng, SeedableRng};
use ringlb_ring::member::{Config, Event, Member, Timers};
use ringlb_ring::{Dest, Key};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

struct Node {
    addr: SocketAddrV4,
    capable: bool,
    member: Option<Member>,
    incarnation: u64,
    /// Simulation time when this incarnation started: the member's clock
    /// starts at zero there, like the UDP driver's after a process start.
    boot: u64,
    wake: u64,
    /// Ids accepted per incarnation.
    ids: HashMap<u64, Vec<u64>>,
}

#[derive(Clone, Copy)]
struct NetParams {
    loss: f64,
    dup: f64,
    max_delay: u64,
}

enum Fault {
    Crash(usize),
    Restart(usize),
    Start(usize),
    Partition(Vec<u8>),
    Heal,
    Net(NetParams),
}

type InFlight = (u64, u64, usize, usize, Vec<u8>);

struct Sim {
    t: u64,
    nodes: Vec<Node>,
    key: Key,
    timers: Timers,
    peers: Vec<SocketAddrV4>,
    rng: SmallRng,
    net: NetParams,
    group: Option<Vec<u8>>,
    /// (deliver at, tie-break, from, to, datagram), earliest first.
    queue: BinaryHeap<Reverse<InFlight>>,
    qseq: u64,
    /// (receiver, origin, payload) deliveries: at-most-once check.
    delivered: HashSet<(usize, SocketAddrV4, Vec<u8>)>,
    delivered_count: HashMap<(usize, Vec<u8>), u32>,
    trace: bool,
}

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, (i / 200) as u8, (i % 200) as u8 + 1), 7400)
}

impl Sim {
    fn new(n: usize, timers: Timers, seed: u64, capable: Vec<bool>, max_delay: u64) -> Sim {
        let nodes = (0..n)
            .map(|i| Node {
                addr: addr(i),
                capable: capable[i],
                member: None,
                incarnation: 0,
                boot: 0,
                wake: u64::MAX,
                ids: HashMap::new(),
            })
            .collect();
        Sim {
            t: 0,
            nodes,
            key: Key::from_secret("sim"),
            timers,
            peers: (0..n).map(addr).collect(),
            rng: SmallRng::seed_from_u64(seed ^ 0xabcdef),
            net: NetParams { loss: 0.0, dup: 0.0, max_delay },
            group: None,
            queue: BinaryHeap::new(),
            qseq: 0,
            delivered: HashSet::new(),
            delivered_count: HashMap::new(),
            trace: std::env::var("RING_SIM_TRACE").is_ok(),
        }
    }

    fn start(&mut self, i: usize) -> Result<(), String> {
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        let cfg = Config {
            me: n.addr,
            peers: self.peers.clone(),
            dispatch_capable: n.capable,
            appliance: false,
            timers: self.timers,
            key: self.key.clone(),
            incarnation: n.incarnation,
        };
        n.boot = self.t;
        n.member = Some(Member::new(cfg, 0));
        self.pump(i)
    }

    fn index(&self, a: &SocketAddrV4) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == *a)
    }

    /// Moves a node's transmits into the network and its events into checks.
    fn pump(&mut self, i: usize) -> Result<(), String> {
        let Some(m) = self.nodes[i].member.as_mut() else { return Ok(()) };
        let mut sends = Vec::new();
        while let Some(tx) = m.poll_transmit() {
            sends.push(tx);
        }
        let mut events = Vec::new();
        while let Some(e) = m.poll_event() {
            events.push(e);
        }
        self.nodes[i].wake = m.poll_timeout().saturating_add(self.nodes[i].boot);
        for tx in sends {
            let Some(to) = self.index(&tx.to) else { continue };
            self.transmit(i, to, tx.bytes);
        }
        for e in events {
            if self.trace {
                println!("{:>7} {} {:?}", self.t, self.nodes[i].addr, e);
            }
            match e {
                Event::IdAccepted(id) => {
                    let (inc, a) = (self.nodes[i].incarnation, self.nodes[i].addr);
                    let ids = self.nodes[i].ids.entry(inc).or_default();
                    ids.push(id);
                    if ids.len() > 1 {
                        return Err(format!("{a} accepted a second id in incarnation {inc}: {ids:?}"));
                    }
                }
                Event::App { origin, payload } => {
                    if !self.delivered.insert((i, origin, payload.clone())) {
                        return Err(format!("{} got app message {payload:?} from {origin} twice", self.nodes[i].addr));
                    }
                    *self.delivered_count.entry((i, payload)).or_insert(0) += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if let Some(g) = &self.group {
            if g[from] != g[to] {
                return;
            }
        }
        if self.rng.random_bool(self.net.loss) {
            return;
        }
        let copies = if self.rng.random_bool(self.net.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.t + 1 + self.rng.random_range(0..=self.net.max_delay);
            self.qseq += 1;
            self.queue.push(Reverse((at, self.qseq, from, to, bytes.clone())));
        }
    }

    /// Runs until `until`, applying the network and waking members on time.
    fn run_until(&mut self, until: u64) -> Result<(), String> {
        loop {
            let next_pkt = self.queue.peek().map(|Reverse((t, ..))| *t).unwrap_or(u64::MAX);
            let (wi, next_wake) = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.member.is_some())
                .map(|(i, n)| (i, n.wake))
                .min_by_key(|x| x.1)
                .unwrap_or((0, u64::MAX));
            let next = next_pkt.min(next_wake);
            if next > until {
                self.t = until;
                return Ok(());
            }
            self.t = self.t.max(next);
            if next_pkt <= next_wake {
                let Reverse((_, _, from, to, bytes)) = self.queue.pop().unwrap();
                let src = self.nodes[from].addr;
                let local = self.t - self.nodes[to].boot;
                if let Some(m) = self.nodes[to].member.as_mut() {
                    m.handle_datagram(local, src, &bytes);
                    self.pump(to)?;
                }
            } else {
                let local = self.t - self.nodes[wi].boot;
                if let Some(m) = self.nodes[wi].member.as_mut() {
                    m.handle_timeout(local);
                }
                self.pump(wi)?;
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].member.is_some()).collect()
    }

    fn distinct_dispatchers(&self) -> usize {
        let d: HashSet<SocketAddrV4> =
            self.live().iter().filter_map(|&i| self.nodes[i].member.as_ref().unwrap().dispatcher()).collect();
        d.len()
    }

    /// None if converged, else why not.
    fn check_converged(&self) -> Option<String> {
        let live = self.live();
        let want: Vec<SocketAddrV4> = live.iter().map(|&i| self.nodes[i].addr).collect();
        let want_dispatcher = if live.len() < 2 {
            None
        } else {
            live.iter().find(|&&i| self.nodes[i].capable).map(|&i| self.nodes[i].addr)
        };
        let mut ids = HashSet::new();
        for (k, &i) in live.iter().enumerate() {
            let m = self.nodes[i].member.as_ref().unwrap();
            let a = self.nodes[i].addr;
            if m.is_forming() {
                return Some(format!("{a} still forming"));
            }
            if m.members() != want {
                return Some(format!("{a} sees {:?}, live are {:?}", m.members(), want));
            }
            let sv = m.state_vars();
            let down = want[(k + 1) % want.len()];
            let up = want[(k + want.len() - 1) % want.len()];
            if sv.downstream != down
                || sv.upstream != up
                || sv.smallest != want[0]
                || sv.greatest != want[want.len() - 1]
            {
                return Some(format!("{a} neighbours {:?}", sv));
            }
            if m.dispatcher() != want_dispatcher {
                return Some(format!("{a} says dispatcher {:?}, want {:?}", m.dispatcher(), want_dispatcher));
            }
            if m.id() == 0 || !ids.insert(m.id()) {
                return Some(format!("{a} has id {} (missing or duplicate)", m.id()));
            }
            let entry = m.member_entries().iter().find(|e| e.addr == a).unwrap();
            if entry.id != m.id() {
                return Some(format!("{a}: view lists id {}, member accepted {}", entry.id, m.id()));
            }
        }
        let versions: HashSet<u64> =
            live.iter().map(|&i| self.nodes[i].member.as_ref().unwrap().view_version()).collect();
        if versions.len() > 1 {
            return Some(format!("views differ in version: {versions:?}"));
        }
        None
    }
}

struct Outcome {
    /// A partition had produced two dispatchers before it healed.
    dual_dispatchers_healed: bool,
    members: usize,
    bound: u64,
    converged_after: u64,
}

fn scenario(seed: u64, timers: Timers) -> Result<Outcome, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = match rng.random_range(0..100) {
        0..60 => rng.random_range(2..=8),
        60..85 => rng.random_range(9..=24),
        _ => rng.random_range(25..=64),
    };
    let c = timers.comm_timeout_ms;
    let max_delay_quiet = rng.random_range(1..=(c / 20).max(2));
    let capable: Vec<bool> = (0..n).map(|_| rng.random_bool(0.6)).collect();
    let mut sim = Sim::new(n, timers, seed, capable, max_delay_quiet);
    // The fault script: starts (some late), then random faults.
    let fault_span = rng.random_range(2..=6) * (c + timers.broadcast_timeout_ms);
    let mut script: BTreeMap<(u64, u32), Fault> = BTreeMap::new();
    let mut k = 0;
    let mut add = |s: &mut BTreeMap<(u64, u32), Fault>, t: u64, f: Fault| {
        k += 1;
        s.insert((t, k), f);
    };
    for i in 0..n {
        let t = if rng.random_bool(0.2) { rng.random_range(0..fault_span) } else { rng.random_range(0..20) };
        add(&mut script, t, Fault::Start(i));
    }
    let faults = rng.random_range(0..=6);
    let mut crashed: Vec<usize> = Vec::new();
    for _ in 0..faults {
        let t = rng.random_range(0..fault_span);
        let f = match rng.random_range(0..6) {
            0 | 1 => {
                let i = rng.random_range(0..n);
                crashed.push(i);
                Fault::Crash(i)
            }
            2 if !crashed.is_empty() => Fault::Restart(crashed[rng.random_range(0..crashed.len())]),
            3 => Fault::Partition((0..n).map(|_| rng.random_range(0..2)).collect()),
            4 => Fault::Heal,
            _ => Fault::Net(NetParams {
                loss: rng.random_range(0.0..=0.2),
                dup: rng.random_range(0.0..=0.05),
                max_delay: rng.random_range(1..=(c / 10).max(2)),
            }),
        };
        add(&mut script, t, f);
    }
    // Background loss for the whole fault phase in some scenarios.
    if rng.random_bool(0.5) {
        add(
            &mut script,
            0,
            Fault::Net(NetParams {
                loss: rng.random_range(0.0..=0.2),
                dup: rng.random_range(0.0..=0.05),
                max_delay: rng.random_range(1..=(c / 10).max(2)),
            }),
        );
    }
    let mut app_tag = 0u32;
    let mut dual = false;
    for ((t, _), f) in script {
        sim.run_until(t)?;
        match f {
            Fault::Start(i) if sim.nodes[i].member.is_none() && sim.nodes[i].incarnation == 0 => sim.start(i)?,
            Fault::Start(_) => {}
            Fault::Crash(i) => sim.nodes[i].member = None,
            Fault::Restart(i) if sim.nodes[i].member.is_none() && sim.nodes[i].incarnation > 0 => sim.start(i)?,
            Fault::Restart(_) => {}
            Fault::Partition(g) => sim.group = Some(g),
            Fault::Heal => {
                dual |= sim.distinct_dispatchers() > 1;
                sim.group = None;
            }
            Fault::Net(p) => sim.net = p,
        }
        // Some application traffic during the faults (checked for at-most-once).
        let live = sim.live();
        if !live.is_empty() && rng.random_bool(0.5) {
            let i = live[rng.random_range(0..live.len())];
            app_tag += 1;
            let now = sim.t - sim.nodes[i].boot;
            sim.nodes[i]
                .member
                .as_mut()
                .unwrap()
                .send_app(now, Dest::Broadcast, format!("f{app_tag}").into_bytes())
                .unwrap();
            sim.pump(i)?;
        }
    }
    // Every node that was scripted to start has started.
    sim.run_until(fault_span)?;
    for i in 0..n {
        if sim.nodes[i].incarnation == 0 {
            sim.start(i)?;
        }
    }
    // Last fault: the network heals and goes quiet (delay/reordering stays).
    let t_last = sim.t;
    dual |= sim.group.is_some() && sim.distinct_dispatchers() > 1;
    sim.group = None;
    sim.net = NetParams { loss: 0.0, dup: 0.0, max_delay: max_delay_quiet };
    let bound = timers.convergence_bound_ms(max_delay_quiet + 1, n);
    let mut converged_at = None;
    let step = timers.heartbeat_ms;
    let mut t = t_last;
    while t < t_last + bound {
        t = (t + step).min(t_last + bound);
        sim.run_until(t)?;
        match sim.check_converged() {
            None => {
                converged_at.get_or_insert(t);
            }
            Some(_) => converged_at = None,
        }
    }
    if let Some(why) = sim.check_converged() {
        if sim.trace {
            for i in sim.live() {
                let m = sim.nodes[i].member.as_ref().unwrap();
                let sv = m.state_vars();
                println!(
                    "final {} forming={} master={} version={} up={} down={} members={}",
                    sim.nodes[i].addr,
                    m.is_forming(),
                    m.master(),
                    m.view_version(),
                    sv.upstream,
                    sv.downstream,
                    m.members().len()
                );
            }
        }
        return Err(format!("not converged {bound} ms after the last fault ({n} members): {why}"));
    }
    let converged_after = converged_at.unwrap_or(t_last) - t_last;

    // Quiet ring: every member broadcasts once; each message reaches every
    // other member exactly once and is removed when it returns to its origin.
    let live = sim.live();
    let returned_before: Vec<u64> =
        live.iter().map(|&i| sim.nodes[i].member.as_ref().unwrap().counters.app_own_returned).collect();
    for &i in &live {
        let now = sim.t - sim.nodes[i].boot;
        sim.nodes[i].member.as_mut().unwrap().send_app(now, Dest::Broadcast, format!("q{i}").into_bytes()).unwrap();
        sim.pump(i)?;
    }
    let settle = sim.t + 4 * timers.heartbeat_ms + (live.len() as u64 + 2) * (max_delay_quiet + 2);
    sim.run_until(settle)?;
    for &i in &live {
        for &j in &live {
            let got = sim.delivered_count.get(&(j, format!("q{i}").into_bytes())).copied().unwrap_or(0);
            let want = u32::from(i != j);
            if got != want {
                return Err(format!("message q{i} reached {} {got} times (want {want})", sim.nodes[j].addr));
            }
        }
    }
    if live.len() > 1 {
        for (k, &i) in live.iter().enumerate() {
            let r = sim.nodes[i].member.as_ref().unwrap().counters.app_own_returned;
            if r != returned_before[k] + 1 {
                return Err(format!(
                    "{}'s own message was not removed on return ({} → {r})",
                    sim.nodes[i].addr, returned_before[k]
                ));
            }
        }
    }
    if let Some(why) = sim.check_converged() {
        return Err(format!("ring broke in the quiet phase: {why}"));
    }
    Ok(Outcome { dual_dispatchers_healed: dual, members: live.len(), bound, converged_after })
}

/// RING_SIM_COUNT / RING_SIM_BASE widen or move the sweep (default 500 each).
fn run_many(profile: &str, timers: Timers, count: u64, base: u64) {
    let count = std::env::var("RING_SIM_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(count);
    let base = base + std::env::var("RING_SIM_BASE").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    let mut sizes = [0usize; 3];
    let mut duals = 0;
    for s in 0..count {
        let seed = base + s;
        match scenario(seed, timers) {
            Ok(o) => {
                worst = worst.max(o.converged_after as f64 / o.bound as f64);
                duals += usize::from(o.dual_dispatchers_healed);
                sizes[match o.members {
                    0..=8 => 0,
                    9..=24 => 1,
                    _ => 2,
                }] += 1;
            }
            Err(e) => failures.push(format!("seed {seed} ({profile}): {e}")),
        }
    }
    println!(
        "{profile}: {count} scenarios, live members ≤8/9–24/≥25: {sizes:?}, {duals} healed partitions that had two dispatchers (one abdicated), worst convergence {:.0}% of its bound (bound for 8 members, 1 ms delay: {} ms)",
        worst * 100.0,
        timers.convergence_bound_ms(1, 8)
    );
    assert!(
        failures.is_empty(),
        "{} of {count} scenarios failed; reproduce with RING_SIM_SEED:\n{}",
        failures.len(),
        failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn fast_profile_500_scenarios() {
    run_many("fast", Timers::FAST, 500, 1_000);
}

#[test]
fn seed_profile_500_scenarios() {
    run_many("seed", Timers::SEED, 500, 50_000);
}

/// Re-runs one scenario: RING_SIM_SEED=<seed> [RING_SIM_PROFILE=fast|seed].
#[test]
fn one_seed() {
    let Ok(seed) = std::env::var("RING_SIM_SEED") else { return };
    let timers = if std::env::var("RING_SIM_PROFILE").as_deref() == Ok("seed") { Timers::SEED } else { Timers::FAST };
    let seed: u64 = seed.parse().expect("RING_SIM_SEED is a number");
    match scenario(seed, timers) {
        Ok(o) => println!(
            "seed {seed}: ok, {} members, converged after {} ms (bound {})",
            o.members, o.converged_after, o.bound
        ),
        Err(e) => panic!("seed {seed}: {e}"),
    }
}

/// A master killed and restarted at once comes back with a fresh clock (its
/// new views carry small versions): the ring must still converge on it.
#[test]
fn master_restarting_quickly_is_followed() {
    for (timers, name) in [(Timers::FAST, "fast"), (Timers::SEED, "seed")] {
        for n in [2usize, 3, 5] {
            let mut sim = Sim::new(n, timers, 1, vec![true; n], 2);
            for i in 0..n {
                sim.start(i).unwrap();
            }
            // Run long enough that the master's versions are large.
            sim.run_until(20 * timers.broadcast_timeout_ms).unwrap();
            assert_eq!(sim.check_converged(), None, "{name}/{n}: initial ring");
            sim.nodes[0].member = None;
            let t = sim.t + 50;
            sim.run_until(t).unwrap();
            sim.start(0).unwrap();
            let bound = sim.t + timers.convergence_bound_ms(3, n);
            sim.run_until(bound).unwrap();
            assert_eq!(sim.check_converged(), None, "{name}/{n}: after the master's quick restart");
        }
    }
}
