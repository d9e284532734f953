//! Raw bindings to the system's DPDK 22.11 and the ringlb C shim.
//!
//! Everything here is `unsafe`; the appliance wraps it in one module
//! (`ringlb::dpdk`) with a safe API.
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code)]
#![allow(clippy::all, unnecessary_transmutes, unsafe_op_in_unsafe_fn)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// The DPDK series these bindings were generated for.
pub const BUILT_FOR_SERIES: &str = "22.11";
