//! RTCP handling: delivering keyframe requests to the application, and throttling the ones
//! relayed to publishers.
//!
//! webrtc-rs ends the inbound RTCP path in its interceptor chain: feedback reaches the
//! application only when an interceptor marks it `DeliverToApplication`.
//! [`KeyframeRequestInterceptor`] marks compound packets that carry a PLI or FIR, so a
//! subscriber's keyframe request arrives on the forwarded track's `TrackLocal::poll`.

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slot of [`KeyframeRequestInterceptor`]: application-side of every built-in interceptor.
pub const KEYFRAME_REQUEST_SLOT: usize = 14_000;

/// Marks inbound RTCP carrying PLI or FIR for delivery to the application. When given
/// counters, it also counts inbound NACKs and records, from every reception report about a
/// stream this connection sends (a subscriber leg), the leg's fraction lost, jitter and
/// round-trip time (RFC 3550 §6.4.1, from LSR/DLSR).
#[derive(Default)]
pub struct KeyframeRequestInterceptor {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    stats: Option<std::sync::Arc<super::stats::Stats>>,
    /// Clock rate of each local (sent) stream, by SSRC.
    clock_rates: std::collections::HashMap<u32, u32>,
    /// Where the subscriber's latest REMB estimate (bits/s) goes.
    estimate: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// The middle 32 bits of the current NTP time (the unit of LSR in reception reports).
fn ntp_middle_32(now: std::time::SystemTime) -> u32 {
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (((secs & 0xFFFF) << 16) | (frac >> 16)) as u32
}

/// Round-trip time from a reception report's LSR and DLSR at NTP time `now_mid`, when the
/// report carries them and the result is plausible.
pub fn rtt_from_report(now_mid: u32, lsr: u32, dlsr: u32) -> Option<f64> {
    if lsr == 0 {
        return None;
    }
    let rtt = now_mid.wrapping_sub(lsr).wrapping_sub(dlsr);
    let secs = rtt as f64 / 65_536.0;
    (secs < 60.0).then_some(secs)
}

impl KeyframeRequestInterceptor {
    fn record_reports(
        &self,
        stats: &super::stats::Stats,
        reports: &[rtc::rtcp::reception_report::ReceptionReport],
    ) {
        let now_mid = ntp_middle_32(std::time::SystemTime::now());
        for r in reports {
            let Some(rate) = self.clock_rates.get(&r.ssrc) else {
                continue;
            };
            stats.leg_loss.observe_value(r.fraction_lost as f64 / 256.0);
            stats
                .leg_jitter
                .observe_value(r.jitter as f64 / (*rate).max(1) as f64);
            if let Some(rtt) = rtt_from_report(now_mid, r.last_sender_report, r.delay) {
                stats.leg_rtt.observe_value(rtt);
            }
        }
    }
}

/// True when the RTCP packet is a keyframe request (PLI or FIR).
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestInterceptor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if let Some(stats) = &self.stats {
                let mut nacks = 0;
                for p in packets {
                    let any = p.as_any();
                    if any.is::<TransportLayerNack>() {
                        nacks += 1;
                    } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                        self.record_reports(stats, &rr.reports);
                    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                        self.record_reports(stats, &sr.reports);
                    } else if let (Some(remb), Some(est)) = (
                        any.downcast_ref::<ReceiverEstimatedMaximumBitrate>(),
                        &self.estimate,
                    ) {
                        est.store(
                            remb.bitrate.max(0.0) as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
                if nacks > 0 {
                    stats
                        .nacks_received
                        .fetch_add(nacks as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestInterceptor {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.clock_rates.insert(info.ssrc, info.clock_rate);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.clock_rates.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Adds [`KeyframeRequestInterceptor`] to an interceptor registry.
pub fn with_keyframe_requests(registry: Registry) -> Registry {
    registry.with(
        Slot::from(KEYFRAME_REQUEST_SLOT),
        KeyframeRequestInterceptor::default(),
    )
}

/// Like [`with_keyframe_requests`], counting inbound NACKs and reception reports in
/// `stats`, and storing the subscriber's REMB estimate in `estimate`.
pub fn with_keyframe_requests_counted(
    registry: Registry,
    stats: std::sync::Arc<super::stats::Stats>,
    estimate: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Registry {
    registry.with(
        Slot::from(KEYFRAME_REQUEST_SLOT),
        KeyframeRequestInterceptor {
            stats: Some(stats),
            estimate: Some(estimate),
            ..Default::default()
        },
    )
}

/// Lets at most one keyframe request through per interval for one publisher stream.
///
/// Lock-free: many subscriber legs may ask at once; exactly one wins each interval.
#[derive(Debug)]
pub struct KeyframeThrottle {
    epoch: Instant,
    interval_ms: u64,
    /// Milliseconds since `epoch` of the last request let through, plus one (0 = never).
    last: AtomicU64,
}

impl KeyframeThrottle {
    /// A throttle allowing one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
        }
    }

    /// True when a request at `now` may go to the publisher; false when it is coalesced
    /// into one sent less than an interval ago.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            if last != 0 && now_ms < last + self.interval_ms {
                return false;
            }
            match self
                .last
                .compare_exchange_weak(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval() {
        let t = KeyframeThrottle::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        assert!(t.try_acquire(t0));
        let passed = (1..20)
            .filter(|i| t.try_acquire(t0 + Duration::from_millis(i * 5)))
            .count();
        assert_eq!(passed, 0);
        assert!(t.try_acquire(t0 + Duration::from_millis(1001)));
    }

    #[test]
    fn rtt_from_lsr_and_dlsr() {
        // LSR at t, 0.25 s of delay at the receiver, report back at t + 0.3 s: RTT 0.05 s.
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lsr = ntp_middle_32(t);
        let now = ntp_middle_32(t + Duration::from_millis(300));
        let rtt = rtt_from_report(now, lsr, 65_536 / 4).unwrap();
        assert!((rtt - 0.05).abs() < 0.001, "{rtt}");
        assert_eq!(rtt_from_report(now, 0, 0), None);
    }

    #[test]
    fn zero_interval_throttles_nothing() {
        let t = KeyframeThrottle::new(Duration::ZERO);
        let t0 = Instant::now();
        assert!(t.try_acquire(t0));
        assert!(t.try_acquire(t0));
    }

    #[test]
    fn recognises_pli_and_fir_only() {
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
        };
        assert!(is_keyframe_request(&pli));
        let fir = FullIntraRequest {
            sender_ssrc: 1,
            media_ssrc: 2,
            fir: vec![],
        };
        assert!(is_keyframe_request(&fir));
        let rr = rtc::rtcp::receiver_report::ReceiverReport::default();
        assert!(!is_keyframe_request(&rr));
    }
}
