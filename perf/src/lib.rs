//! What `ringlb-bench` and `ringlb-fastpath` share: the benchmark inputs.

#![forbid(unsafe_code)]

pub mod pcapgen;
