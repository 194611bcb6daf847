//! A connection's quality as a client shows it, from what its link loses and delays: a
//! mean opinion score by a simplified E-model (ITU-T G.107: one-way latency from the
//! round trip and jitter, an impairment per percent of loss), and the class of that score;
//! and what a participant's receiver reports last said ([`Reported`]).

use std::sync::atomic::{AtomicU32, Ordering};

/// What one interval of a connection's link did, in the worse direction of each measure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkSample {
    /// Fraction of packets lost (0 to 1).
    pub loss: f64,
    /// Round-trip time, seconds.
    pub rtt: f64,
    /// Inter-arrival jitter, seconds.
    pub jitter: f64,
}

/// What a participant's latest receiver report said of the streams Sluice sends it (the
/// worst of its report blocks): written by its connection's RTCP interceptor, read by the
/// quality tick. webrtc-rs 0.21's own statistics have no round trip for it and its
/// jitter in RTP clock units, so Sluice keeps these itself. Relaxed atomics.
#[derive(Debug, Default)]
pub struct Reported {
    /// Fraction lost, 1/256 units (RFC 3550).
    loss_256: AtomicU32,
    /// Inter-arrival jitter, microseconds.
    jitter_us: AtomicU32,
    /// Round trip from the report's LSR and DLSR, microseconds (0: none yet).
    rtt_us: AtomicU32,
}

impl Reported {
    /// Keeps one receiver report's worst block: `fraction_lost` (1/256 units), `jitter`
    /// (seconds) and, when the report allowed it, the round trip (seconds).
    pub fn record(&self, fraction_lost: u8, jitter: f64, rtt: Option<f64>) {
        self.loss_256
            .store(u32::from(fraction_lost), Ordering::Relaxed);
        let us = |s: f64| (s.max(0.0) * 1e6).min(u32::MAX as f64) as u32;
        self.jitter_us.store(us(jitter), Ordering::Relaxed);
        if let Some(rtt) = rtt {
            self.rtt_us.store(us(rtt).max(1), Ordering::Relaxed);
        }
    }

    /// The figures as a link sample (zeros before any report).
    pub fn sample(&self) -> LinkSample {
        LinkSample {
            loss: f64::from(self.loss_256.load(Ordering::Relaxed)) / 256.0,
            rtt: f64::from(self.rtt_us.load(Ordering::Relaxed)) / 1e6,
            jitter: f64::from(self.jitter_us.load(Ordering::Relaxed)) / 1e6,
        }
    }
}

/// The class of a connection's quality (LiveKit's `ConnectionQuality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Nothing a user would notice.
    Excellent,
    /// Noticeable now and then.
    Good,
    /// Disturbing.
    Poor,
    /// Nothing gets through: the connection is interrupted.
    Lost,
}

/// Scores at or above this are [`Quality::Excellent`] (about 3 % loss on a short path).
pub const EXCELLENT: f64 = 4.2;
/// Scores at or above this are [`Quality::Good`] (about 10 % loss on a short path).
pub const GOOD: f64 = 3.6;

/// The mean opinion score (1 to 4.5) of a link that did `s`.
pub fn mos(s: &LinkSample) -> f64 {
    let latency_ms = (s.rtt.max(0.0) / 2.0 + 2.0 * s.jitter.max(0.0)) * 1000.0 + 10.0;
    let mut r = if latency_ms < 160.0 {
        93.2 - latency_ms / 40.0
    } else {
        93.2 - (latency_ms - 120.0) / 10.0
    };
    r -= 2.5 * s.loss.clamp(0.0, 1.0) * 100.0;
    let r = r.clamp(0.0, 100.0);
    (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
}

/// The class of score `mos`.
pub fn classify(mos: f64) -> Quality {
    if mos >= EXCELLENT {
        Quality::Excellent
    } else if mos >= GOOD {
        Quality::Good
    } else {
        Quality::Poor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_figures_come_back_in_seconds_and_keep_the_last_round_trip() {
        let r = Reported::default();
        assert_eq!(r.sample(), LinkSample::default());
        r.record(64, 0.012, Some(0.080));
        let s = r.sample();
        assert_eq!(s.loss, 0.25);
        assert!(
            (s.jitter - 0.012).abs() < 1e-6 && (s.rtt - 0.080).abs() < 1e-6,
            "{s:?}"
        );
        // A report without LSR (no sender report reached the participant yet) keeps the
        // round trip measured before.
        r.record(0, 0.001, None);
        let s = r.sample();
        assert_eq!(s.loss, 0.0);
        assert!((s.rtt - 0.080).abs() < 1e-6, "{s:?}");
    }

    fn q(loss: f64, rtt: f64, jitter: f64) -> Quality {
        classify(mos(&LinkSample { loss, rtt, jitter }))
    }

    #[test]
    fn a_clean_short_path_is_excellent() {
        assert_eq!(q(0.0, 0.02, 0.002), Quality::Excellent);
        assert!(mos(&LinkSample::default()) > 4.3);
    }

    #[test]
    fn loss_and_delay_lower_the_class() {
        assert_eq!(q(0.02, 0.05, 0.005), Quality::Excellent);
        assert_eq!(q(0.05, 0.05, 0.005), Quality::Good);
        assert_eq!(q(0.15, 0.05, 0.005), Quality::Poor);
        // A 600 ms round trip alone, and heavy jitter alone.
        assert_eq!(q(0.0, 0.6, 0.0), Quality::Good);
        assert_eq!(q(0.0, 0.05, 0.3), Quality::Poor);
        // The score never leaves its range, whatever the input.
        for s in [
            LinkSample {
                loss: 1.0,
                rtt: 10.0,
                jitter: 10.0,
            },
            LinkSample {
                loss: -1.0,
                rtt: -1.0,
                jitter: f64::MAX,
            },
        ] {
            let m = mos(&s);
            assert!((1.0..=4.5).contains(&m), "{s:?}: {m}");
        }
    }
}
