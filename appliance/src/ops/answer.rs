//! What the control thread answers to the operator's requests. It runs
//! between two rounds of the control loop: reading counters and flipping a
//! server's drain flag are all it does, never a wait.

use super::metrics;
use super::protocol::{Request, Response, ServerRow, SessionRow, MAX_SESSIONS};
use crate::config::Config;
use crate::control::channel::SessionRecord;
use crate::control::status::Status;
use crate::control::Control;
use crate::packet::L4Proto;
use crate::stats::Snapshot;
use std::net::Ipv4Addr;

/// A server as configured.
struct ServerInfo {
    label: String,
    service: String,
    ip: Ipv4Addr,
    port: u16,
    weight: u32,
    /// Removed by a reload: not listed, not drained.
    removed: bool,
}

/// Answers requests about the appliance `cfg` configures.
pub struct Answerer {
    servers: Vec<ServerInfo>,
    /// Each service's name, VIP and port.
    services: Vec<(String, u32, u16)>,
}

/// An answer now, or one the workers must help with first.
pub enum Answer {
    /// The answer, and a note for the log (drains).
    Now(Response, Option<String>),
    /// `ringlb sessions`: sample `id` was asked of the workers
    /// (`Control::sampled` gives it, `Answerer::sessions` answers with it).
    Sample(u32),
}

impl Answerer {
    pub fn new(cfg: &Config) -> Answerer {
        let servers = cfg
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| ServerInfo {
                label: cfg.server_label(i),
                service: cfg.services[usize::from(s.service)].name.clone(),
                ip: Ipv4Addr::from(s.ip),
                port: s.port,
                weight: s.weight,
                removed: s.removed,
            })
            .collect();
        let services = cfg.services.iter().map(|s| (s.name.clone(), s.vip, s.port)).collect();
        Answerer { servers, services }
    }

    /// The answer to `request`, `t_s` seconds after the start; `snap`: the
    /// workers' counters now. Drains and undrains are also returned as a
    /// note for the log.
    pub fn answer(&self, request: &Request, t_s: f64, snap: &Snapshot, control: &mut Control) -> Answer {
        if let Request::Sessions { service, limit } = request {
            let service = match service {
                None => None,
                Some(name) => match self.services.iter().find(|s| &s.0 == name) {
                    Some(&(_, vip, port)) => Some((vip, port)),
                    None => {
                        let known: Vec<&str> = self.services.iter().map(|s| s.0.as_str()).collect();
                        let e = format!("no service '{name}' (services: {})", known.join(", "));
                        return Answer::Now(Response::error(e), None);
                    }
                },
            };
            return Answer::Sample(control.start_sample(service, (*limit).min(MAX_SESSIONS)));
        }
        let (r, note) = self.answer_now(request, t_s, snap, control);
        Answer::Now(r, note)
    }

    /// The answer to `ringlb sessions` from the workers' sample.
    pub fn sessions(&self, sample: &[(SessionRecord, bool)]) -> Response {
        let service = |vip: u32, port: u16| {
            let s = self.services.iter().find(|s| s.1 == vip && s.2 == port);
            s.map_or_else(|| format!("{}:{port}", Ipv4Addr::from(vip)), |s| s.0.clone())
        };
        let rows: Vec<SessionRow> = sample
            .iter()
            .map(|(r, replica)| SessionRow {
                client: format!("{}:{}", Ipv4Addr::from(r.key.client_ip), r.key.client_port),
                proto: if r.key.proto == L4Proto::Udp { "udp" } else { "tcp" }.into(),
                service: service(r.key.vip, r.key.vport),
                server: self
                    .servers
                    .get(usize::from(r.server))
                    .map_or_else(|| r.server.to_string(), |s| s.label.clone()),
                state: format!("{:?}", r.state).to_lowercase(),
                replica: *replica,
            })
            .collect();
        match serde_json::to_value(rows) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error(format!("encoding the answer: {e}")),
        }
    }

    fn answer_now(
        &self,
        request: &Request,
        t_s: f64,
        snap: &Snapshot,
        control: &Control,
    ) -> (Response, Option<String>) {
        let labels: Vec<String> = self.servers.iter().map(|s| s.label.clone()).collect();
        let json = |v: Result<serde_json::Value, serde_json::Error>| match v {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error(format!("encoding the answer: {e}")),
        };
        match request {
            Request::Sessions { .. } => (Response::error("sessions are sampled, not answered at once"), None),
            Request::Reload => (Response::error("the control loop answers reloads itself"), None),
            Request::Status => (json(serde_json::to_value(Status::new(t_s, snap, &labels, control))), None),
            Request::Servers => (json(serde_json::to_value(self.rows(snap, control))), None),
            Request::Metrics => {
                let status = Status::new(t_s, snap, &labels, control);
                (Response::ok(metrics::render(snap, &status, &self.rows(snap, control)).into()), None)
            }
            Request::Drain { server } | Request::Undrain { server } => {
                let drain = matches!(request, Request::Drain { .. });
                let ids = self.matching(server);
                if ids.is_empty() {
                    let known: Vec<&str> = self.servers.iter().map(|s| s.label.as_str()).collect();
                    let e = format!(
                        "no server matches '{server}' (give service/ip:port, ip:port or ip; servers: {})",
                        known.join(", ")
                    );
                    return (Response::error(e), None);
                }
                let shared = control.shared();
                for &i in &ids {
                    shared.set_drained(i as u16, drain);
                }
                let names: Vec<&str> = ids.iter().map(|&i| self.servers[i].label.as_str()).collect();
                let note = match drain {
                    true => format!("ops: drained {}: no new flows, their sessions stay", names.join(", ")),
                    false => format!("ops: undrained {}: new flows again", names.join(", ")),
                };
                let rows: Vec<ServerRow> =
                    self.rows(snap, control).into_iter().filter(|r| names.contains(&r.server.as_str())).collect();
                (json(serde_json::to_value(rows)), Some(note))
            }
        }
    }

    /// The servers `spec` names: "service/ip:port" (one), "ip:port" or
    /// "ip" (each service's).
    fn matching(&self, spec: &str) -> Vec<usize> {
        let spec = spec.trim();
        let by = |s: &ServerInfo| {
            !s.removed
                && (s.label == spec
                    || format!("{}:{}", s.ip, s.port) == spec
                    || spec.parse::<Ipv4Addr>().is_ok_and(|ip| ip == s.ip))
        };
        (0..self.servers.len()).filter(|&i| by(&self.servers[i])).collect()
    }

    fn rows(&self, snap: &Snapshot, control: &Control) -> Vec<ServerRow> {
        let shared = control.shared();
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.removed)
            .map(|(i, s)| ServerRow {
                server: s.label.clone(),
                service: s.service.clone(),
                address: format!("{}:{}", s.ip, s.port),
                weight: s.weight,
                weight_now: shared.server_weight(i as u16),
                up: shared.carrying_weight(i as u16) > 0 || s.weight == 0 && shared.probe_up(i as u16),
                drained: shared.drained(i as u16),
                new_sessions: snap.per_server.get(i).copied().unwrap_or(0),
                active_sessions: snap.per_server_active.get(i).copied().unwrap_or(0),
                redirected: snap.per_server_redirects.get(i).copied().unwrap_or(0),
            })
            .collect()
    }
}
