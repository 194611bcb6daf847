//! Sluice's media core: what happens to a packet between a publisher and its subscribers,
//! and the decisions behind it. Synchronous and free of I/O by construction: this crate
//! depends on no async runtime and no connection type (RTP packet types only).
//!
//! - [`source::Source`]: a published track, its layers and its subscriber legs; its
//!   [`source::Source::forward`] is the packet path (layer switches at keyframes,
//!   temporal and spatial layer dropping, RED, the rewrite), handing each leg's packet to
//!   its [`source::LegOutput`], the transport's side of the seam.
//! - [`layers`]: layer state, the quality ladder, layer choice by tile size.
//! - [`select`]: per-leg targets (re-targeting, the bandwidth allocation) as values: the
//!   keyframe requests they need are returned, not sent.
//! - [`alloc`]: the allocator's per-leg step decisions; [`rewrite`]: per-leg header
//!   rewriting; [`codec`]: payload formats, one file each; [`speakers`]: active speaker
//!   ranking; [`keyframe`]: the keyframe request throttle; [`estimates`]: a connection's bandwidth
//!   estimates; [`quality`]: a connection's quality score and class; [`stats`]: the counters.

pub mod alloc;
pub mod codec;
pub mod dynacast;
pub mod estimates;
pub mod keyframe;
pub mod layers;
pub mod quality;
pub mod resends;
pub mod rewrite;
pub mod select;
pub mod source;
pub mod speakers;
pub mod stats;

use serde::Serialize;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub use stats::{DropReason, MediaKind, Stats};

/// Conference key, chosen by the front end (Matrix: room id + call id).
pub type ConferenceId = String;
/// Participant key within a conference, chosen by the front end (Matrix: user + device).
pub type ParticipantId = String;

/// Why a participant's session ended. The strings are the protocol's hangup reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HangupReason {
    /// Normal end: the client left or its membership is gone.
    UserHangup,
    /// The client stopped answering keep-alives.
    KeepAliveTimeout,
    /// ICE or DTLS failed after connecting, or the connection failed.
    IceFailed,
    /// ICE did not connect within the configured deadline.
    InviteTimeout,
    /// An internal error ended the session.
    UnknownError,
    /// The instance is shutting down.
    Draining,
    /// The member may no longer be in the call: kicked, banned or departed from the room,
    /// or Sluice itself was removed from it.
    Unauthorized,
}

impl HangupReason {
    /// Every reason, in the order of [`Stats::left`].
    pub const ALL: [HangupReason; stats::HANGUP_REASONS] = [
        HangupReason::UserHangup,
        HangupReason::KeepAliveTimeout,
        HangupReason::IceFailed,
        HangupReason::InviteTimeout,
        HangupReason::UnknownError,
        HangupReason::Draining,
        HangupReason::Unauthorized,
    ];

    /// Its index in [`HangupReason::ALL`] (and [`Stats::left`]).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The reason string sent in `m.call.hangup`.
    pub fn as_str(self) -> &'static str {
        match self {
            HangupReason::UserHangup => "user_hangup",
            HangupReason::KeepAliveTimeout => "keep_alive_timeout",
            HangupReason::IceFailed => "ice_failed",
            HangupReason::InviteTimeout => "invite_timeout",
            HangupReason::UnknownError => "unknown_error",
            HangupReason::Draining => "sluice.draining",
            HangupReason::Unauthorized => "sluice.unauthorized",
        }
    }
}

/// A track named by its MediaStream id and track id, as in SDP `msid` and stream metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct TrackRef {
    /// MediaStream id.
    pub stream_id: String,
    /// Track id.
    pub track_id: String,
}

/// A published track as the conference sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackInfo {
    /// Who publishes it.
    pub publisher: ParticipantId,
    /// Stream and track id, kept unchanged on every subscriber leg.
    pub track: TrackRef,
    /// Audio or video.
    pub kind: MediaKind,
    /// Codec MIME type, e.g. `video/VP8`.
    pub mime_type: String,
}

/// How a subscriber leg receives a publisher's RFC 2198 RED audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedDelivery {
    /// As RED, payload untouched (the leg negotiated RED over the same Opus payload type).
    Passthrough,
    /// Each packet's primary block alone, as plain Opus (the leg has no matching RED).
    Unwrapped,
}

/// When a participant joined, and whether its first forwarded packet was timed yet (the
/// join-to-first-media histogram).
#[derive(Debug)]
pub struct JoinClock {
    /// When the participant joined.
    pub at: Instant,
    /// The first packet forwarded to it was timed.
    pub done: AtomicBool,
}

impl JoinClock {
    /// A clock started now.
    pub fn start() -> Self {
        Self {
            at: Instant::now(),
            done: AtomicBool::new(false),
        }
    }
}
