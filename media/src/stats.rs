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
    /// The subscriber connection's send queue was full (its driver fell behind), so the
    /// packet was dropped for that leg.
    QueueFull = 0,
    /// webrtc refused the write (track unbound, connection closing).
    WriteFailed = 1,
    /// Not the track's media: RTX, padding or FEC on the publisher's hop (never forwarded).
    NotMedia = 2,
    /// A reordered packet arrived after more packets had been left out of the leg
    /// (temporal-layer dropping) than the leg remembers, so it has no place in the leg's
    /// numbering.
    Late = 3,
    /// A RED packet for a leg that takes the publisher's RED unwrapped, whose primary block
    /// could not be found (block headers that do not fit the payload, as in an encrypted
    /// or malformed payload) or is not the track's codec.
    RedUnusable = 4,
}

impl DropReason {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
            DropReason::NotMedia => "not_media",
            DropReason::Late => "late",
            DropReason::RedUnusable => "red_unusable",
        }
    }

    /// Every reason, for exporting.
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::WriteFailed,
        DropReason::NotMedia,
        DropReason::Late,
        DropReason::RedUnusable,
    ];
}

/// A lock-free histogram with fixed bucket bounds (seconds), cheap enough for the packet
/// path: one bucket search over a handful of bounds and two relaxed atomic adds.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with the given upper bounds (ascending); an implicit `+Inf` follows.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_value(d.as_secs_f64());
    }

    /// Records one value (seconds, or a ratio); negative values count as 0.
    #[inline]
    pub fn observe_value(&self, v: f64) {
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((v * 1e9) as u64, Ordering::Relaxed);
    }

    /// `(upper bounds, cumulative counts per bound, total count, sum in seconds)`.
    pub fn snapshot(&self) -> (&'static [f64], Vec<u64>, u64, f64) {
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        let mut acc = 0;
        for c in &self.counts[..self.bounds.len()] {
            acc += c.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        let total = acc + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (self.bounds, cumulative, total, sum)
    }
}

/// Buckets of the forwarding latency histogram (receive to send of one packet).
pub const FORWARD_LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
];
/// Buckets of the join duration histogram (join to first forwarded media).
pub const JOIN_DURATION_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// Buckets of the per-leg loss histogram (fraction lost from receiver reports).
pub const LOSS_BUCKETS: &[f64] = &[0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
/// Buckets of the per-leg jitter histogram (seconds).
pub const JITTER_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];
/// Buckets of the per-leg round-trip time histogram (seconds).
pub const RTT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 1.0];

/// Hangup reasons, for counting; the order of [`crate::HangupReason::ALL`].
pub const HANGUP_REASONS: usize = 7;

/// Counters of one SFU instance.
#[derive(Debug)]
pub struct Stats {
    packets_in: [AtomicU64; 2],
    bytes_in: [AtomicU64; 2],
    packets_out: [AtomicU64; 2],
    bytes_out: [AtomicU64; 2],
    dropped: [AtomicU64; 5],
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_received: AtomicU64,
    /// PLIs sent to publishers.
    pub keyframe_requests_sent: AtomicU64,
    /// Keyframe requests coalesced by the throttle.
    pub keyframe_requests_suppressed: AtomicU64,
    /// Packets left out of a leg that receives fewer temporal layers (frames per second)
    /// than the publisher sends.
    pub temporal_layer_skipped: AtomicU64,
    /// Packets left out of a leg that receives fewer spatial layers (a lower resolution)
    /// of an SVC stream than the publisher sends.
    pub spatial_layer_skipped: AtomicU64,
    /// Packets lost on a publisher's path rebuilt from the next RED packet's redundancy,
    /// for legs that take RED unwrapped.
    pub red_recovered: AtomicU64,
    /// RED (RFC 2198 redundant audio) packets received from publishers.
    pub red_received: AtomicU64,
    /// RED packets sent unwrapped (their primary block as a plain packet of the codec) to
    /// legs that did not negotiate the publisher's RED.
    pub red_unwrapped: AtomicU64,
    /// Probe packets requested (RTX retransmissions of recent video packets sent to
    /// probe a subscriber's path for more bandwidth).
    pub probe_packets: AtomicU64,
    /// Bandwidth probes before an upward layer step, by result: the estimate still
    /// covered the step afterwards (0), or it did not (1).
    pub probes: [AtomicU64; 2],
    /// Data-channel messages refused for size or encoding.
    pub data_channel_messages_refused: AtomicU64,
    /// Data-channel messages dropped over a participant's rate or backlog limit.
    pub data_channel_messages_limited: AtomicU64,
    /// NACKs received from subscribers (answered by webrtc's NACK responder).
    pub nacks_received: AtomicU64,
    /// Retransmission requests removed by the per-subscriber retransmission budget.
    pub retransmits_suppressed: AtomicU64,
    /// Connections that failed (ICE/DTLS) after or during connecting.
    pub ice_failures: AtomicU64,
    /// Participants removed, by hangup reason.
    pub left: [AtomicU64; HANGUP_REASONS],
    /// Receive-to-send latency of forwarded packets.
    pub forward_latency: AtomicHistogram,
    /// From join to the first packet forwarded to the participant.
    pub join_duration: AtomicHistogram,
    /// Fraction lost per subscriber leg, from its receiver reports (sampled per poll).
    pub leg_loss: AtomicHistogram,
    /// Interarrival jitter per subscriber leg, from its receiver reports.
    pub leg_jitter: AtomicHistogram,
    /// Round-trip time per subscriber leg, from its receiver reports.
    pub leg_rtt: AtomicHistogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            packets_in: Default::default(),
            bytes_in: Default::default(),
            packets_out: Default::default(),
            bytes_out: Default::default(),
            dropped: Default::default(),
            keyframe_requests_received: AtomicU64::new(0),
            keyframe_requests_sent: AtomicU64::new(0),
            keyframe_requests_suppressed: AtomicU64::new(0),
            temporal_layer_skipped: AtomicU64::new(0),
            red_unwrapped: AtomicU64::new(0),
            red_received: AtomicU64::new(0),
            red_recovered: AtomicU64::new(0),
            spatial_layer_skipped: AtomicU64::new(0),
            probe_packets: AtomicU64::new(0),
            probes: Default::default(),
            data_channel_messages_refused: AtomicU64::new(0),
            data_channel_messages_limited: AtomicU64::new(0),
            nacks_received: AtomicU64::new(0),
            retransmits_suppressed: AtomicU64::new(0),
            ice_failures: AtomicU64::new(0),
            left: Default::default(),
            forward_latency: AtomicHistogram::new(FORWARD_LATENCY_BUCKETS),
            join_duration: AtomicHistogram::new(JOIN_DURATION_BUCKETS),
            leg_loss: AtomicHistogram::new(LOSS_BUCKETS),
            leg_jitter: AtomicHistogram::new(JITTER_BUCKETS),
            leg_rtt: AtomicHistogram::new(RTT_BUCKETS),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = AtomicHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let (bounds, cum, total, sum) = h.snapshot();
        assert_eq!(bounds, &[0.001, 0.01]);
        assert_eq!(cum, vec![1, 3]);
        assert_eq!(total, 4);
        assert!((sum - 1.0105).abs() < 1e-9, "{sum}");
    }
}
