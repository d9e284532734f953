//! The proxied connections' timers, a slice of the table per call: the
//! replayed SYN and an unacknowledged request sent again, handshakes and
//! slow requests given up, idle connections removed.

use super::failover::fail_over;
use super::l7::redirect;
use super::{Proxied, State, REQUEST_RTO_MS, REQUEST_TIMEOUT_MS, REQUEST_TRIES};
use crate::dataplane::Worker;
use crate::l7::conn::Emit;
use crate::session::FlowKey;

impl Worker<'_> {
    /// Timers of the proxied connections, a slice per call: replayed SYNs
    /// and unacknowledged requests sent again, handshakes and slow requests
    /// given up, idle connections removed.
    pub(in crate::dataplane) fn proxy_sweep(&mut self, now_ms: u32) {
        let Some(mut table) = self.proxied.take() else { return };
        let timeouts = self.routing.timeouts;
        let budget = (table.capacity() / 64).max(256);
        let mut due = [(0u128, Proxied::default(), Emit::RstToServer { seq: 0 }); 32];
        let mut n_due = 0;
        let (stats, mut failed) = (self.stats, 0u64);
        let mut pool = self.requests.as_mut();
        let mut removed = 0u64;
        let (shared, routing, schedulers) = (self.shared, &*self.routing, &mut self.l7_schedulers);
        let (mut redirected, mut resume_refused) = (0u64, 0u64);
        table.visit(budget, |key, p, last_seen_ms| {
            if n_due + 2 > due.len() {
                return true; // the next visit takes it
            }
            let idle = now_ms.wrapping_sub(last_seen_ms);
            let since = now_ms.wrapping_sub(p.timer_ms);
            let reset_client = Emit::RstToClient { seq: p.conn.cookie.wrapping_add(1) };
            let keep = match p.conn.state {
                // A slow (or silent) client: its buffer goes to others.
                State::Buffering if since > REQUEST_TIMEOUT_MS => {
                    due[n_due] = (key, *p, reset_client);
                    n_due += 1;
                    false
                }
                State::Buffering => true,
                State::Connecting => {
                    let mut stays = true;
                    if let Some(e) = p.conn.on_timer(now_ms) {
                        if p.conn.state != State::Closed {
                            due[n_due] = (key, *p, e); // the SYN again
                            n_due += 1;
                        } else {
                            // The server never answered: another one (`l7`), or the client is reset.
                            let old = *p;
                            due[n_due] = (key, old, Emit::RstToServer { seq: old.conn.client_isn.wrapping_add(1) });
                            n_due += 1;
                            let l7 = routing.services[usize::from(p.svc)].l7.as_ref();
                            let sched = schedulers.get_mut(usize::from(p.svc));
                            let pool = pool.as_deref_mut();
                            match l7.zip(sched).and_then(|(l7, sched)| redirect(p, l7, sched, shared, pool, now_ms)) {
                                Some(syn) => {
                                    stats.server_redirected(old.server);
                                    redirected += 1;
                                    due[n_due] = (key, *p, syn);
                                }
                                None => {
                                    failed += 1;
                                    resume_refused += u64::from(old.track.is_some_and(|d| d.resuming()));
                                    due[n_due] = (key, old, e);
                                    // A download's client is reset at a byte far from
                                    // its cookie: no segment of it can open the
                                    // tuple again, so the entry (and its buffer)
                                    // goes at once.
                                    stays = old.track.is_none();
                                }
                            }
                            n_due += 1;
                        }
                    }
                    stays
                }
                // `l7`: a download's replacement did not answer in time
                // (whether or not it closed meanwhile; one that was given
                // up on above is `Closed`, and counted already).
                State::Spliced | State::Closing if p.track.is_some_and(|d| d.resume_expired(now_ms)) => {
                    (failed, resume_refused) = (failed + 1, resume_refused + 1);
                    due[n_due] = (key, *p, reset_client);
                    due[n_due + 1] = (key, *p, Emit::RstToServer { seq: p.conn.client_next() });
                    n_due += 2;
                    false
                }
                // `l7`: the request is not ACKed yet.
                State::Spliced
                    if p.buf.is_some()
                        && !p.request_acked
                        && since >= REQUEST_RTO_MS << (p.request_sends.max(1) - 1) =>
                {
                    if p.request_sends < REQUEST_TRIES {
                        (p.timer_ms, p.request_sends) = (now_ms, p.request_sends + 1);
                        due[n_due] = (key, *p, p.conn.request_to_server());
                        n_due += 1;
                        true
                    } else {
                        failed += 1;
                        resume_refused += u64::from(p.track.is_some_and(|d| d.resuming()));
                        due[n_due] = (key, *p, reset_client);
                        due[n_due + 1] = (key, *p, Emit::RstToServer { seq: p.conn.client_next() });
                        n_due += 2;
                        false
                    }
                }
                // `l7`: a tracked download whose server went silent while
                // the client has all it was sent: another server carries on.
                State::Spliced if p.answered && p.track.is_some_and(|d| d.stalled(now_ms)) => {
                    let old = *p;
                    let mut stays = true;
                    let l7 = routing.services[usize::from(p.svc)].l7.as_ref();
                    let sched = schedulers.get_mut(usize::from(p.svc));
                    let syn = match (l7, sched, pool.as_deref_mut()) {
                        (Some(l7), Some(sched), Some(pool)) => fail_over(p, l7, sched, shared, pool, now_ms),
                        _ => None,
                    };
                    match syn {
                        Some(syn) => {
                            stats.server_redirected(old.server);
                            due[n_due] = (key, old, Emit::RstToServer { seq: old.conn.client_next() });
                            due[n_due + 1] = (key, *p, syn);
                            n_due += 2;
                        }
                        None if old.track.is_some_and(|d| d.client_is_past_server() || d.held_fin()) => {
                            // Nobody to take over, and the client is further
                            // on than this server's FIN would be (it would
                            // discard it and wait), or its FIN was held back
                            // (the response is cut short). Both ends are reset.
                            failed += 1;
                            due[n_due] = (key, old, reset_client);
                            due[n_due + 1] = (key, old, Emit::RstToServer { seq: old.conn.client_next() });
                            n_due += 2;
                            stays = false;
                        }
                        None => {
                            // Nobody to take over: it stays as it is, untracked.
                            p.track = None;
                            if let (Some(id), Some(pool)) = (p.buf.take(), pool.as_mut()) {
                                pool.give(id);
                            }
                        }
                    }
                    stays
                }
                State::Spliced => idle <= timeouts.established_ms,
                State::Closing | State::Closed => idle <= timeouts.closing_ms,
            };
            if !keep {
                removed += 1;
                // Only RSTs are due for it: they need no buffer.
                if let (Some(id), Some(pool)) = (p.buf.take(), pool.as_mut()) {
                    pool.give(id);
                }
            }
            keep
        });
        stats.proxy_failed.add(failed);
        stats.l7_redirects.add(redirected);
        stats.l7_resume_refused.add(resume_refused);
        for _ in 0..removed {
            stats.proxy_active.dec();
        }
        self.proxied = Some(table);
        for (key, p, e) in &due[..n_due] {
            self.emit(p, &FlowKey::unpack(*key), *e);
        }
    }
}
