//! Sluice's load-test tool as a library: the call-level load test (`call`) and the Matrix
//! client it signals with (`matrix`). The binary adds the micro-benchmarks.

pub mod call;
pub mod floor;
pub mod janus;
pub mod matrix;
pub mod peer;
pub mod plot;
