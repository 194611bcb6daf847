//! One subscriber connection's bandwidth estimates: written by the connection's
//! interceptors (send-side GCC, REMB, transport-wide feedback), read by the allocator.
//! Relaxed atomics: no lock on either side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One subscriber connection's bandwidth estimates, bits/s (0: none yet).
///
/// Two sources: the send-side estimate (GCC in webrtc's congestion control interceptor,
/// fed by the subscriber's transport-wide congestion control feedback), and the REMB a
/// subscriber may send. The effective estimate is the lower of those present.
#[derive(Debug)]
pub struct Estimates {
    /// The send-side (GCC) estimate; set to the initial estimate once a sent stream
    /// negotiated transport-wide congestion control.
    pub gcc: AtomicU64,
    /// The subscriber's latest REMB.
    pub remb: AtomicU64,
    /// The initial send-side estimate, bits/s.
    pub initial: u64,
    /// Transport-wide feedback packets received.
    pub twcc_feedback: AtomicU64,
    /// When the last transport-wide feedback arrived, ms since `epoch` plus one (0: never).
    last_feedback_ms: AtomicU64,
    epoch: Instant,
    /// Extra traffic the allocator wants sent on this connection now to probe for more
    /// bandwidth, bits/s (0: none); the transport's prober.
    pub probe_bps: AtomicU64,
    /// The connection sends a video stream whose subscriber negotiated RTX, so it can
    /// probe (set by the prober).
    pub can_probe: std::sync::atomic::AtomicBool,
    /// What the subscriber acknowledged receiving over the last second, bits/s, from its
    /// transport-wide feedback (0: unknown); written by the send-side estimator. A probe
    /// passes only when this shows the path carried it (see `alloc::plan_leg`).
    pub delivered: AtomicU64,
    /// What the subscriber's latest receiver report said (loss, jitter, round trip), for
    /// its connection quality.
    pub reported: crate::quality::Reported,
}

/// Without transport-wide feedback for this long, the send-side estimate is stale: it
/// only changes when feedback arrives, and feedback only comes for what is sent.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

impl Estimates {
    /// Estimates starting (once TWCC is negotiated) from `initial` bits/s.
    pub fn new(initial: u64) -> Self {
        Self {
            gcc: AtomicU64::new(0),
            remb: AtomicU64::new(0),
            initial,
            twcc_feedback: AtomicU64::new(0),
            last_feedback_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            probe_bps: AtomicU64::new(0),
            can_probe: std::sync::atomic::AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            reported: Default::default(),
        }
    }

    /// Notes transport-wide feedback arriving at `now`.
    pub fn feedback_at(&self, now: Instant) {
        self.twcc_feedback.fetch_add(1, Ordering::Relaxed);
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.last_feedback_ms.store(ms, Ordering::Relaxed);
    }

    /// True when the effective estimate is the send-side one and no feedback has arrived
    /// for [`STALE_AFTER`] (say, because nothing is being sent): it says nothing about the
    /// path any more.
    pub fn is_stale(&self, now: Instant) -> bool {
        if self.source() != "twcc" {
            return false;
        }
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let last = self.last_feedback_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) > STALE_AFTER.as_millis() as u64
    }

    /// The effective estimate: the lower of the send-side estimate and the REMB, whichever
    /// are known; 0 when neither is (no cap).
    pub fn effective(&self) -> u64 {
        match (
            self.gcc.load(Ordering::Relaxed),
            self.remb.load(Ordering::Relaxed),
        ) {
            (0, r) => r,
            (g, 0) => g,
            (g, r) => g.min(r),
        }
    }

    /// Which source the effective estimate comes from: `"twcc"`, `"remb"` or `"none"`.
    pub fn source(&self) -> &'static str {
        let (g, r) = (
            self.gcc.load(Ordering::Relaxed),
            self.remb.load(Ordering::Relaxed),
        );
        match (g, r) {
            (0, 0) => "none",
            (0, _) => "remb",
            (_, 0) => "twcc",
            (g, r) if r < g => "remb",
            _ => "twcc",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_estimate_is_the_lower_known_one() {
        let e = Estimates::new(1_000_000);
        assert_eq!((e.effective(), e.source()), (0, "none"));
        e.remb.store(400_000, Ordering::Relaxed);
        assert_eq!((e.effective(), e.source()), (400_000, "remb"));
        e.gcc.store(300_000, Ordering::Relaxed);
        assert_eq!((e.effective(), e.source()), (300_000, "twcc"));
        e.remb.store(0, Ordering::Relaxed);
        assert_eq!((e.effective(), e.source()), (300_000, "twcc"));
    }

    #[test]
    fn a_send_side_estimate_without_feedback_goes_stale() {
        let e = Estimates::new(1_000_000);
        let t0 = Instant::now();
        // No send-side estimate yet: nothing to be stale.
        assert!(!e.is_stale(t0 + Duration::from_secs(10)));
        e.gcc.store(300_000, Ordering::Relaxed);
        e.feedback_at(t0 + Duration::from_secs(1));
        assert!(!e.is_stale(t0 + Duration::from_secs(2)));
        assert!(e.is_stale(t0 + Duration::from_secs(4)));
        e.feedback_at(t0 + Duration::from_secs(4));
        assert!(!e.is_stale(t0 + Duration::from_millis(4500)));
        // A REMB below it makes REMB the source: REMB does not go stale here.
        e.remb.store(100_000, Ordering::Relaxed);
        assert!(!e.is_stale(t0 + Duration::from_secs(60)));
    }
}
