//! Sluice's fuzz targets and the engine that runs them (docs/fuzzing.md).
//!
//! Every parser of untrusted input has a target: a function of arbitrary bytes that feeds
//! them to the parser as Sluice receives them and checks what the parser promises (a panic
//! or a failed check is a finding). The engine mutates a seed corpus (`fuzz/corpus/`), with
//! structure-aware mutations for JSON and text, guided by edge coverage when the binary is
//! instrumented (`scripts/fuzz`) and blind otherwise (the bounded run in the test suite).
//! Every finding is kept under `fuzz/regressions/<target>/` and replayed by the tests.

pub mod coverage;
pub mod engine;
pub mod media;
pub mod mutate;

use mutate::Shape;

/// One fuzz target.
pub struct Target {
    /// Its name: the directory of its seeds and regressions.
    pub name: &'static str,
    /// What its input looks like (chooses the mutations).
    pub shape: Shape,
    /// Longest input worth trying: a little above what the wire carries (a datagram, the
    /// 64 KiB to-device and data-channel limits, LiveKit's SDP limit); mutants are cut to it.
    pub max_len: usize,
    /// Runs one input; panics on a finding. True when the parser accepted the input.
    pub run: fn(&[u8]) -> bool,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "to_device",
        shape: Shape::HeadJson,
        max_len: 64 << 10,
        run: sluice::fuzz::to_device,
    },
    Target {
        name: "membership",
        shape: Shape::HeadJson,
        max_len: 64 << 10,
        run: sluice::fuzz::membership,
    },
    Target {
        name: "stream_metadata",
        shape: Shape::Json,
        max_len: 64 << 10,
        run: sluice::fuzz::stream_metadata,
    },
    Target {
        name: "sdp_offer",
        shape: Shape::Lines,
        max_len: 256 << 10,
        run: sluice::fuzz::sdp_offer,
    },
    Target {
        name: "dc_message",
        shape: Shape::Json,
        max_len: 64 << 10,
        run: sluice::fuzz::dc_message,
    },
    Target {
        name: "livekit_signal",
        shape: Shape::Bytes,
        max_len: 256 << 10,
        run: sluice::fuzz::livekit_signal,
    },
    Target {
        name: "livekit_data",
        shape: Shape::Bytes,
        max_len: 64 << 10,
        run: sluice::fuzz::livekit_data,
    },
    Target {
        name: "livekit_token",
        shape: Shape::Lines,
        max_len: 16 << 10,
        run: sluice::fuzz::livekit_token,
    },
    Target {
        name: "livekit_auth",
        shape: Shape::HeadJson,
        max_len: 16 << 10,
        run: sluice::fuzz::livekit_auth,
    },
    Target {
        name: "rtcp",
        shape: Shape::Bytes,
        max_len: 1500,
        run: sluice::fuzz::rtcp,
    },
    Target {
        name: "rtp_payload",
        shape: Shape::Bytes,
        max_len: 1500,
        run: media::rtp_payload,
    },
    Target {
        name: "av1_dependency_descriptor",
        shape: Shape::Bytes,
        max_len: 4096,
        run: media::av1_dependency_descriptor,
    },
    Target {
        name: "rewrite",
        shape: Shape::Bytes,
        max_len: 64 << 10,
        run: media::rewrite,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
