//! Counters of the media core. Plain atomics, incremented on the packet path without locks;
//! the metrics layer reads them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Media kind, as a small index for counter arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// Audio track.
    Audio = 0,
    /// Video track.
    Video = 1,
}

impl MediaKind {
    /// `"audio"` or `"video"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// Why a forwarded packet did not reach a subscriber leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The leg's queue was full: its writer fell behind.
    QueueFull = 0,
    /// webrtc refused the write (track unbound, connection closing).
    WriteFailed = 1,
}

impl DropReason {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
        }
    }

    /// Every reason, for exporting.
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::WriteFailed];
}

/// Counters of one SFU instance.
#[derive(Debug, Default)]
pub struct Stats {
    packets_in: [AtomicU64; 2],
    bytes_in: [AtomicU64; 2],
    packets_out: [AtomicU64; 2],
    bytes_out: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_received: AtomicU64,
    /// PLIs sent to publishers.
    pub keyframe_requests_sent: AtomicU64,
    /// Keyframe requests coalesced by the throttle.
    pub keyframe_requests_suppressed: AtomicU64,
    /// Data-channel messages refused for size or encoding.
    pub data_channel_messages_refused: AtomicU64,
}

impl Stats {
    /// Counts one packet received from a publisher.
    #[inline]
    pub fn record_in(&self, kind: MediaKind, bytes: usize) {
        self.packets_in[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.bytes_in[kind as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one packet handed to a subscriber leg's connection.
    #[inline]
    pub fn record_out(&self, kind: MediaKind, bytes: usize) {
        self.packets_out[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.bytes_out[kind as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one packet not forwarded to a leg.
    #[inline]
    pub fn record_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Packets received from publishers of `kind`.
    pub fn packets_in(&self, kind: MediaKind) -> u64 {
        self.packets_in[kind as usize].load(Ordering::Relaxed)
    }

    /// Bytes (RTP payload) received from publishers of `kind`.
    pub fn bytes_in(&self, kind: MediaKind) -> u64 {
        self.bytes_in[kind as usize].load(Ordering::Relaxed)
    }

    /// Packets forwarded to subscriber legs of `kind`.
    pub fn packets_out(&self, kind: MediaKind) -> u64 {
        self.packets_out[kind as usize].load(Ordering::Relaxed)
    }

    /// Bytes (RTP payload) forwarded to subscriber legs of `kind`.
    pub fn bytes_out(&self, kind: MediaKind) -> u64 {
        self.bytes_out[kind as usize].load(Ordering::Relaxed)
    }

    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }
}
