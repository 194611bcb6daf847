//! Sluice: a selective forwarding unit (SFU) for Matrix voice and video calls.
//!
//! The crate has two worlds with one narrow seam: the media core ([`sfu`]) knows nothing of
//! Matrix, and the signaling layer knows nothing of RTP. See ARCHITECTURE.md.

#![warn(missing_docs)]

pub mod config;
pub mod fuzz;
pub mod http;
pub mod livekit;
pub mod logging;
pub mod matrix;
pub mod metrics;
pub mod ops;
pub mod sfu;
