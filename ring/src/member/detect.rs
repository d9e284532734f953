//! Failure detection: silence from the upstream neighbour for the
//! communication timeout starts an out-of-band probe; a probe that goes
//! unanswered means a purge. Separately, a member whose master's heartbeat
//! stops coming round leaves its ring even while every link is alive.

use super::Timers;

struct Probe {
    nonce: u64,
    until: u64,
    next_send: u64,
}

/// What the probe timer asks for.
pub(super) enum ProbeStep {
    Idle,
    /// Send a Probe with this nonce to the upstream neighbour.
    Send(u64),
    /// The probe went unanswered: purge.
    GiveUp,
}

pub(super) struct Detector {
    last_from_upstream: u64,
    /// Last heartbeat of our own master seen (or when we joined its view).
    last_master_hb: u64,
    probe: Option<Probe>,
    probe_nonce: u64,
}

impl Detector {
    pub fn new(now: u64) -> Detector {
        Detector { last_from_upstream: now, last_master_hb: now, probe: None, probe_nonce: 0 }
    }

    /// A packet from the upstream neighbour arrived.
    pub fn heard_upstream(&mut self, now: u64) {
        self.last_from_upstream = now;
    }

    /// Our master's heartbeat came round (or we just joined its view).
    pub fn master_alive(&mut self, now: u64) {
        self.last_master_hb = now;
    }

    /// A new upstream neighbour (or a new ring): watch it from now.
    pub fn relink(&mut self, now: u64) {
        self.last_from_upstream = now;
        self.probe = None;
    }

    pub fn cancel_probe(&mut self) {
        self.probe = None;
    }

    /// Our master has been quiet for the communication timeout (a view from
    /// another master may then replace ours).
    pub fn master_silent(&self, now: u64, t: Timers) -> bool {
        now.saturating_sub(self.last_master_hb) >= t.comm_timeout_ms
    }

    /// How long a member waits for its master's heartbeat before purging:
    /// long, because under loss a heartbeat may die on any hop of the ring.
    fn master_silence_ms(t: Timers) -> u64 {
        2 * (t.comm_timeout_ms + t.probe_ms())
    }

    /// Links are alive but the token no longer comes round: leave.
    pub fn master_gone(&self, now: u64, t: Timers) -> bool {
        now >= self.last_master_hb + Self::master_silence_ms(t)
    }

    /// The next time a detection timer fires. `watch_master` is false for
    /// the master itself, which has no master to watch.
    pub fn deadline(&self, t: Timers, watch_master: bool) -> u64 {
        let mut n = match &self.probe {
            Some(p) => p.until.min(p.next_send),
            None => self.last_from_upstream + t.comm_timeout_ms,
        };
        if watch_master {
            n = n.min(self.last_master_hb + Self::master_silence_ms(t));
        }
        n
    }

    /// Starts, continues or ends the probe of a silent upstream.
    pub fn probe_step(&mut self, now: u64, t: Timers) -> ProbeStep {
        match &self.probe {
            None if now >= self.last_from_upstream + t.comm_timeout_ms => {
                // Silence from upstream: ask it directly before tearing the ring down.
                self.probe_nonce += 1;
                self.probe = Some(Probe { nonce: self.probe_nonce, until: now + t.probe_ms(), next_send: now });
                self.probe_due(now, t)
            }
            Some(p) if now >= p.until => {
                self.probe = None;
                ProbeStep::GiveUp
            }
            Some(_) => self.probe_due(now, t),
            None => ProbeStep::Idle,
        }
    }

    fn probe_due(&mut self, now: u64, t: Timers) -> ProbeStep {
        match &mut self.probe {
            Some(p) if now >= p.next_send => {
                p.next_send = now + t.heartbeat_ms / 2 + 1;
                ProbeStep::Send(p.nonce)
            }
            _ => ProbeStep::Idle,
        }
    }

    /// A ProbeAck arrived: true if it answers the probe in flight (which ends it).
    pub fn answer(&mut self, nonce: u64) -> bool {
        match &self.probe {
            Some(p) if p.nonce == nonce => {
                self.probe = None;
                true
            }
            _ => false,
        }
    }
}
