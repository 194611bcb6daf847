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
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slot of [`KeyframeRequestInterceptor`]: application-side of every built-in interceptor.
pub const KEYFRAME_REQUEST_SLOT: usize = 14_000;

/// Marks inbound RTCP carrying PLI or FIR for delivery to the application, and counts
/// inbound NACKs when given counters.
#[derive(Default)]
pub struct KeyframeRequestInterceptor {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    stats: Option<std::sync::Arc<super::stats::Stats>>,
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
                let nacks = packets
                    .iter()
                    .filter(|p| p.as_any().is::<TransportLayerNack>())
                    .count();
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
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
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

/// Like [`with_keyframe_requests`], counting inbound NACKs in `stats`.
pub fn with_keyframe_requests_counted(
    registry: Registry,
    stats: std::sync::Arc<super::stats::Stats>,
) -> Registry {
    registry.with(
        Slot::from(KEYFRAME_REQUEST_SLOT),
        KeyframeRequestInterceptor {
            stats: Some(stats),
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
