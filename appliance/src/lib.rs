//! ringlb: a DPDK load-balancing appliance.
//!
//! Layering, bottom up: `packet` (parse/rewrite byte slices), `session`
//! (per-worker flow table), `sched` (server selection), `dataplane` (the
//! per-packet decision), `cpu` (prefetch and huge-page hints) and `dpdk`
//! (with `cpu`, the only unsafe code), `worker` (the lcore loop), `app`
//! (setup, control thread, shutdown), `config` (YAML), `l7` (content-based
//! dispatch: SYN cookies, request gathering, rules, splicing), `ops` (the
//! control socket, the CLI's client and the Prometheus endpoint).

#![deny(unsafe_code)]

pub mod app;
pub mod config;
pub mod control;
#[allow(unsafe_code)]
pub mod cpu;
pub mod dataplane;
#[allow(unsafe_code)]
pub mod dpdk;
pub mod l7;
pub mod locks;
pub mod ops;
pub mod packet;
pub mod sched;
pub mod session;
pub mod stats;
pub mod worker;
