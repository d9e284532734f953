//! ringlb: a DPDK load-balancing appliance.
//!
//! Layering, bottom up: `packet` (parse/rewrite byte slices), `session`
//! (per-worker flow table), `sched` (server selection), `dataplane` (the
//! per-packet decision), `cpu` (prefetch and huge-page hints) and `dpdk`
//! (with `cpu`, the only unsafe code), `worker` (the lcore loop), `app`
//! (setup, control thread, shutdown), `config` (YAML).

pub mod app;
pub mod config;
pub mod control;
pub mod cpu;
pub mod dataplane;
pub mod dpdk;
pub mod locks;
pub mod packet;
pub mod sched;
pub mod session;
pub mod stats;
pub mod worker;
