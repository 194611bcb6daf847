//! Send-side bandwidth estimation for one subscriber connection: GCC's delay and loss
//! signals (webrtc's building blocks) with a rate controller tuned for an SFU.
//!
//! webrtc 0.21's `Gcc` decreases on every overuse reading, to 0.85 of the rate received
//! over the last half second. An SFU reacts to a decrease by switching layers, which takes
//! up to a keyframe to show on the wire, and the queue the old layer built keeps signalling
//! overuse meanwhile: each reading multiplied the estimate down again, and a subscriber
//! behind a 200 kbit/s limit ended at the 50 kbit/s floor instead of the layer that fits
//! (found by `tests/bandwidth.rs`). [`SubscriberEstimator`] takes the same signals and
//! decreases at most once per [`DECREASE_INTERVAL`], from the rate received over one
//! second, so the estimate settles at what the path carries.

use rtc::interceptor::{
    BandwidthEstimator, LossController, OveruseDetector, PacketReport, RateCalculator,
    SlopeEstimator, Usage,
};
use sluice_media::estimates::Estimates;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// At most one delay-based decrease per this long: time for the allocator's layer switch
/// to reach the wire and for the queue the old rate built to drain.
pub const DECREASE_INTERVAL: Duration = Duration::from_secs(1);

/// The delay-based target moves up at most this often.
const INCREASE_INTERVAL: Duration = Duration::from_millis(200);

/// Multiplicative growth per second while far from the last known ceiling.
const GROWTH_PER_SEC: f64 = 1.08;

/// Additive growth per second near the last known ceiling, bits/s.
const NEAR_CEILING_GROWTH_BPS: f64 = 60_000.0;

/// Backing off to this fraction of what was received.
const DECREASE_FACTOR: f64 = 0.85;

/// GCC-style estimator for what Sluice sends one subscriber (see the module docs).
pub struct SubscriberEstimator {
    slope: SlopeEstimator,
    detector: OveruseDetector,
    received: RateCalculator,
    loss: LossController,
    delay_target: f64,
    min: f64,
    max: f64,
    target: f64,
    /// Received rate at the last decrease: the ceiling the path showed.
    ceiling: Option<f64>,
    last_decrease: Option<Instant>,
    last_increase: Option<Instant>,
    /// Underuse seen since the last decrease (the queue drained): growth may resume.
    holding: bool,
    /// Delay readings so far, at most [`MAX_DELTAS`]: the trend's scale.
    deltas: u32,
    /// When the last reports came.
    last_report: Option<Instant>,
    /// Where the rate received over the last second is published for the allocator's
    /// probe verdicts (None: nowhere).
    delivered: Option<Arc<Estimates>>,
}

/// Feedback pausing this long restarts the delay detection.
const FEEDBACK_GAP: Duration = Duration::from_secs(1);

/// The delay trend is scaled by the number of readings, up to this many.
const MAX_DELTAS: u32 = 60;

impl SubscriberEstimator {
    /// An estimator starting at `initial` bits/s, held within `min..=max`.
    pub fn new(initial: f64, min: f64, max: f64) -> Self {
        let initial = initial.clamp(min, max);
        Self {
            slope: SlopeEstimator::new(),
            detector: OveruseDetector::new(),
            received: RateCalculator::new(Duration::from_secs(1)),
            loss: LossController::new(initial, min, max),
            delay_target: initial,
            min,
            max,
            target: initial,
            ceiling: None,
            last_decrease: None,
            last_increase: None,
            holding: false,
            deltas: 0,
            last_report: None,
            delivered: None,
        }
    }

    /// Also publishes the rate the subscriber acknowledged over the last second in
    /// `estimates.delivered`, on every feedback.
    pub fn publishing_delivered(mut self, estimates: Arc<Estimates>) -> Self {
        self.delivered = Some(estimates);
        self
    }

    fn update_delay(&mut self, now: Instant, usage: Usage, received: Option<f64>) {
        match usage {
            Usage::Over => {
                let due = self
                    .last_decrease
                    .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_INTERVAL);
                if let (true, Some(r)) = (due, received) {
                    self.delay_target = (r * DECREASE_FACTOR)
                        .min(self.delay_target)
                        .clamp(self.min, self.max);
                    self.ceiling = Some(r);
                    self.last_decrease = Some(now);
                    self.last_increase = Some(now);
                    self.holding = true;
                }
            }
            Usage::Under => {
                // The queue is draining: hold until it is empty.
                self.holding = true;
                self.last_increase = Some(now);
            }
            Usage::Normal => {
                if self.holding {
                    // One normal reading after a decrease or a drain: hold once, then grow.
                    self.holding = false;
                    self.last_increase = Some(now);
                    return;
                }
                let elapsed = self
                    .last_increase
                    .map_or(INCREASE_INTERVAL, |t| now.saturating_duration_since(t));
                if elapsed < INCREASE_INTERVAL {
                    return;
                }
                let secs = elapsed.as_secs_f64().min(1.0);
                let near = self
                    .ceiling
                    .is_some_and(|c| self.delay_target > c * DECREASE_FACTOR * 0.85);
                self.delay_target = if near {
                    self.delay_target + NEAR_CEILING_GROWTH_BPS * secs
                } else {
                    self.delay_target * GROWTH_PER_SEC.powf(secs)
                }
                .clamp(self.min, self.max);
                self.last_increase = Some(now);
            }
        }
    }
}

impl BandwidthEstimator for SubscriberEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        // After a gap in feedback (nothing was sent: every track dropped), the delay
        // state describes a queue long gone, and the first reading spans the gap: start
        // the delay half afresh. Without this, the detector stayed at `Over` with no loss
        // after a dropped track came back, and held the estimate at its floor (the
        // below-the-lowest-layer phase of tests/bandwidth.rs).
        if self
            .last_report
            .is_some_and(|t| now.saturating_duration_since(t) > FEEDBACK_GAP)
        {
            self.slope = SlopeEstimator::new();
            self.detector = OveruseDetector::new();
            self.deltas = 0;
        }
        self.last_report = Some(now);
        let mut usage = self.detector.usage();
        for report in reports {
            if report.arrived {
                self.received.add(now, report.size);
            }
            if let Some(trend) = self.slope.accumulate(report) {
                // The filtered delay change per packet group, scaled by the number of
                // groups seen (at most 60) as libwebrtc does before comparing with the
                // adaptive threshold (12.5 ms to start). Unscaled, a queue growing by a
                // few ms per group never crossed it: behind a 200 kbit/s limit with a
                // 400 ms queue, webrtc's detector said `Normal` throughout.
                self.deltas = (self.deltas + 1).min(MAX_DELTAS);
                usage = self
                    .detector
                    .update(trend.at, trend.estimate_ms * f64::from(self.deltas));
            }
        }
        let received = self.received.rate_bits_per_second(now);
        if let Some(e) = &self.delivered {
            e.delivered
                .store(received.unwrap_or(0.0) as u64, Ordering::Relaxed);
        }
        self.update_delay(now, usage, received);
        let lost = reports.iter().filter(|r| !r.arrived).count();
        let loss_target = self.loss.update(now, lost, reports.len());
        self.target = self.delay_target.min(loss_target).clamp(self.min, self.max);
    }

    fn target_bitrate(&self) -> f64 {
        self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packet `i`, 1200 bytes, that left at `departure` and arrived at `arrival`.
    fn arrived(i: u64, departure: Instant, arrival: Duration) -> PacketReport {
        PacketReport {
            ssrc: 1,
            id: i,
            rtp_sequence_number: i as u16,
            is_twcc: true,
            twcc_sequence_number: i as u16,
            size: 1200,
            arrived: true,
            departure,
            arrival: Some(arrival),
            ecn: rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn::default(),
        }
    }

    #[test]
    fn a_growing_queue_makes_the_delay_half_decrease() {
        let t0 = Instant::now();
        let mut e = SubscriberEstimator::new(1_000_000.0, 50_000.0, 10_000_000.0);
        // 30 packets/s of 1200 bytes; the path carries less, so each packet waits 3 ms
        // longer than the one before; feedback every 100 ms.
        let mut batch = Vec::new();
        let mut saw_over = false;
        for i in 0..150u64 {
            let departure = t0 + Duration::from_micros(i * 33_333);
            let arrival = Duration::from_micros(i * 33_333 + 20_000 + i * 3_000);
            batch.push(arrived(i, departure, arrival));
            if batch.len() == 3 {
                let now = departure + Duration::from_millis(120);
                e.on_reports(now, &batch);
                batch.clear();
                saw_over |= e.detector.usage() == Usage::Over;
            }
        }
        assert!(saw_over, "no overuse from a queue growing 3 ms per packet");
        assert!(e.delay_target < 1_000_000.0, "{}", e.delay_target);
    }

    #[test]
    fn a_steady_path_with_jitter_is_not_overuse() {
        let t0 = Instant::now();
        let mut e = SubscriberEstimator::new(1_000_000.0, 50_000.0, 10_000_000.0);
        let mut batch = Vec::new();
        for i in 0..300u64 {
            let departure = t0 + Duration::from_micros(i * 33_333);
            // 20 ms of delay with ±1.5 ms of jitter, no trend.
            let jitter = [0, 1_500, 700, 1_200, 300][(i % 5) as usize];
            let arrival = Duration::from_micros(i * 33_333 + 20_000 + jitter);
            batch.push(arrived(i, departure, arrival));
            if batch.len() == 3 {
                e.on_reports(departure + Duration::from_millis(120), &batch);
                batch.clear();
                assert_ne!(e.detector.usage(), Usage::Over, "packet {i}");
            }
        }
        assert!(e.delay_target > 1_000_000.0, "{}", e.delay_target);
    }

    #[test]
    fn overuse_decreases_once_per_interval_from_the_received_rate() {
        let t0 = Instant::now();
        let mut e = SubscriberEstimator::new(1_000_000.0, 50_000.0, 10_000_000.0);
        e.update_delay(t0, Usage::Over, Some(200_000.0));
        assert_eq!(e.delay_target, 170_000.0);
        // The queue still signals overuse while it drains, from a lower received rate:
        // no second decrease within the interval.
        e.update_delay(
            t0 + Duration::from_millis(300),
            Usage::Over,
            Some(120_000.0),
        );
        e.update_delay(t0 + Duration::from_millis(600), Usage::Over, Some(80_000.0));
        assert_eq!(e.delay_target, 170_000.0);
        // A second decrease after the interval, never upward.
        e.update_delay(
            t0 + Duration::from_millis(1100),
            Usage::Over,
            Some(300_000.0),
        );
        assert_eq!(e.delay_target, 170_000.0);
        e.update_delay(
            t0 + Duration::from_millis(2200),
            Usage::Over,
            Some(100_000.0),
        );
        assert_eq!(e.delay_target, 85_000.0);
    }

    #[test]
    fn grows_after_a_hold_additively_near_the_ceiling_and_multiplicatively_far_from_it() {
        let t0 = Instant::now();
        let mut e = SubscriberEstimator::new(1_000_000.0, 50_000.0, 10_000_000.0);
        e.update_delay(t0, Usage::Over, Some(200_000.0));
        // The first normal reading only ends the hold.
        e.update_delay(t0 + Duration::from_millis(100), Usage::Normal, None);
        assert_eq!(e.delay_target, 170_000.0);
        // Then one second of growth near the 200 kbit/s ceiling: about +60 kbit/s.
        let mut t = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            t += INCREASE_INTERVAL;
            e.update_delay(t, Usage::Normal, None);
        }
        assert!(
            (e.delay_target - 230_000.0).abs() < 1.0,
            "{}",
            e.delay_target
        );
        // No known ceiling: 8 % per second.
        let mut f = SubscriberEstimator::new(1_000_000.0, 50_000.0, 10_000_000.0);
        f.last_increase = Some(t0);
        f.update_delay(t0 + Duration::from_secs(1), Usage::Normal, None);
        assert!(
            (f.delay_target - 1_080_000.0).abs() < 1.0,
            "{}",
            f.delay_target
        );
    }
}
