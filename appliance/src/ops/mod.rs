//! What an operator reaches a running appliance through: the control
//! socket (`ringlb status`, `servers`, `drain`, …) and the Prometheus
//! endpoint.
//!
//! `protocol`: the requests and answers, one JSON line each way;
//! `server`: the thread that listens on the unix socket and the metrics
//! port and hands each request to the control thread, which answers it
//! between two rounds of its loop (`control::driver`), so nothing here
//! touches a worker or its tables; `answer`: what the control thread
//! answers; `metrics`: the counters in Prometheus's text format;
//! `client`: the CLI's side of the socket, and its tables; `telemetry`:
//! the same counters as DPDK telemetry commands (`/ringlb/...`).

pub mod answer;
pub mod client;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod telemetry;

/// Where `ringlb run` listens, and the CLI asks, unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ringlb.sock";
