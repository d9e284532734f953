//! The appliance's own health probe of servers without an agent (worker 0):
//! every `interval` a TCP SYN from the data port to the server's service
//! port; a SYN-ACK (whichever worker receives it records its sequence
//! number in `Shared::probe_answer`, and answers it with a RST) is a
//! success, no answer within `timeout` a failure. `rise` successes in a
//! row bring a server up, `fall` failures take it down (HAProxy's `inter`,
//! `rise`, `fall`); a server down gets no new flows.

use super::routing::Routing;
use super::shared::Shared;
use crate::config::{Probe, PROBE_PORT_BASE};
use std::sync::atomic::Ordering::Relaxed;

struct Probed {
    server: u16,
    probe: Probe,
    next_at: u32,
    /// The probe in flight: its sequence number and when it went out.
    in_flight: Option<(u32, u32)>,
    successes: u32,
    failures: u32,
    up: bool,
}

/// Worker 0's probes, one per probed server.
pub(super) struct Prober {
    probed: Vec<Probed>,
    /// Per server id: among `probed` (scratch for `update`).
    known: Vec<bool>,
    /// Probes sent; each probe's sequence number is a keyed hash of it, so
    /// a spoofed SYN-ACK cannot guess the acknowledgement that counts.
    sent: u64,
    key: u64,
}

/// What `due` asks the caller to send: a SYN to server `server` with `seq`
/// from source port `src_port`.
pub struct ProbeSyn {
    pub server: u16,
    pub src_port: u16,
    pub seq: u32,
}

impl Prober {
    pub fn new(shared: &Shared, routing: &Routing) -> Prober {
        // Room for every server the appliance may know, so that a reload
        // that adds probed servers allocates nothing on the worker.
        let mut prober = Prober {
            probed: Vec::with_capacity(shared.server_capacity),
            known: vec![false; shared.server_capacity],
            sent: 0,
            key: shared.hash_seed ^ 0x7072_6f62_6573,
        };
        prober.update(routing, shared);
        prober
    }

    /// Follows a new routing (a reload): servers no longer probed go, new
    /// ones start up (as at start), those kept keep their state and take
    /// the new settings.
    pub fn update(&mut self, routing: &Routing, shared: &Shared) {
        self.probed.retain_mut(|p| match routing.servers.get(usize::from(p.server)).and_then(|s| s.probe) {
            Some(probe) => {
                p.probe = probe;
                true
            }
            None => {
                // Not probed any more: up as far as the probe is concerned.
                shared.set_probe_up(p.server, true);
                false
            }
        });
        // Which servers are probed already: one pass, not one per server.
        self.known.fill(false);
        for p in &self.probed {
            if let Some(k) = self.known.get_mut(usize::from(p.server)) {
                *k = true;
            }
        }
        for (i, s) in routing.servers.iter().enumerate() {
            let Some(probe) = s.probe else { continue };
            if self.known.get(i).is_none_or(|&k| k) || self.probed.len() == self.probed.capacity() {
                continue;
            }
            self.probed.push(Probed {
                server: i as u16,
                probe,
                // Spread the first probes over the first interval.
                next_at: (i as u32).wrapping_mul(37) % probe.interval_ms.max(1),
                in_flight: None,
                successes: 0,
                failures: 0,
                up: true,
            });
        }
    }

    pub fn is_idle(&self) -> bool {
        self.probed.is_empty()
    }

    /// Settles answered or timed-out probes, then calls `send` for each
    /// probe due now (false: it could not go out, a failure at its timeout).
    pub fn due(&mut self, now: u32, shared: &Shared, mut send: impl FnMut(ProbeSyn) -> bool) {
        for p in &mut self.probed {
            if let Some((seq, at)) = p.in_flight {
                let answered = shared.probe_answer[usize::from(p.server)].load(Relaxed) == seq;
                if answered || now.wrapping_sub(at) >= p.probe.timeout_ms {
                    p.in_flight = None;
                    if answered {
                        p.successes += 1;
                        p.failures = 0;
                    } else {
                        p.failures += 1;
                        p.successes = 0;
                    }
                    let up = if p.up { p.failures < p.probe.fall } else { p.successes >= p.probe.rise };
                    if up != p.up {
                        p.up = up;
                        shared.set_probe_up(p.server, up);
                    }
                }
            }
            if p.in_flight.is_none() && now.wrapping_sub(p.next_at) < u32::MAX / 2 {
                p.next_at = now.wrapping_add(p.probe.interval_ms);
                self.sent += 1;
                let seq = (crate::session::mix(self.key, self.sent) >> 32) as u32;
                let syn = ProbeSyn { server: p.server, src_port: PROBE_PORT_BASE.wrapping_add(p.server), seq };
                // Not sent (no MAC yet, queue full): it times out as a failure.
                send(syn);
                p.in_flight = Some((seq, now));
            }
        }
    }
}
