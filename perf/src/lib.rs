//! What `ringlb-bench` and `ringlb-fastpath` share: the benchmark inputs.

pub mod pcapgen;
