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
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::shared::error::Error;
use sluice_media::estimates::Estimates;
use sluice_media::resends::Resends;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The transport-wide congestion control header extension URI.
const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Slot of [`KeyframeRequestInterceptor`]: application-side of every built-in interceptor.
pub const KEYFRAME_REQUEST_SLOT: usize = 14_000;

/// Marks inbound RTCP carrying PLI or FIR for delivery to the application. When given
/// counters, it also counts inbound NACKs and records, from every reception report about a
/// stream this connection sends (a subscriber leg), the leg's fraction lost, jitter and
/// round-trip time (RFC 3550 §6.4.1, from LSR/DLSR); and keeps the connection's
/// [`Estimates`] (the congestion controller's target, which rides inbound feedback as
/// `TargetBitrateChanged`, and REMB).
#[derive(Default)]
pub struct KeyframeRequestInterceptor {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    stats: Option<std::sync::Arc<super::stats::Stats>>,
    /// Clock rate of each local (sent) stream, by SSRC.
    clock_rates: std::collections::HashMap<u32, u32>,
    /// Where the subscriber's bandwidth estimates go.
    estimates: Option<std::sync::Arc<Estimates>>,
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
        // The worst block of this report, for the connection's quality.
        let (mut loss, mut jitter, mut round_trip) = (0u8, 0f64, None::<f64>);
        let mut any = false;
        for r in reports {
            let Some(rate) = self.clock_rates.get(&r.ssrc) else {
                continue;
            };
            any = true;
            let j = r.jitter as f64 / (*rate).max(1) as f64;
            stats.leg_loss.observe_value(r.fraction_lost as f64 / 256.0);
            stats.leg_jitter.observe_value(j);
            loss = loss.max(r.fraction_lost);
            jitter = jitter.max(j);
            if let Some(rtt) = rtt_from_report(now_mid, r.last_sender_report, r.delay) {
                stats.leg_rtt.observe_value(rtt);
                round_trip = Some(round_trip.map_or(rtt, |t| t.max(rtt)));
            }
        }
        if any && let Some(e) = &self.estimates {
            e.reported.record(loss, jitter, round_trip);
        }
    }
}

/// True when the RTCP packet is a keyframe request (PLI or FIR).
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl KeyframeRequestInterceptor {
    /// One that counts into `stats` and keeps the subscriber's estimates in `estimates`.
    pub fn counted(
        stats: std::sync::Arc<super::stats::Stats>,
        estimates: std::sync::Arc<Estimates>,
    ) -> Self {
        Self {
            stats: Some(stats),
            estimates: Some(estimates),
            ..Default::default()
        }
    }
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
                    if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                        // The prober's own NACKs are not the subscriber's.
                        if nack.sender_ssrc != super::probe::PROBE_SENDER_SSRC {
                            nacks += 1;
                        }
                    } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                        self.record_reports(stats, &rr.reports);
                    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                        self.record_reports(stats, &sr.reports);
                    } else if let Some(est) = &self.estimates {
                        if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                            est.remb
                                .store(remb.bitrate.max(0.0) as u64, Ordering::Relaxed);
                        } else if any.is::<TransportLayerCc>() {
                            est.feedback_at(msg.now);
                        }
                    }
                }
                if nacks > 0 {
                    stats
                        .nacks_received
                        .fetch_add(nacks as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if let (Some(est), Some(Attribute::TargetBitrateChanged { bits_per_second })) = (
                &self.estimates,
                msg.message.get(&Attribute::TargetBitrateChanged {
                    bits_per_second: 0.0,
                }),
            ) {
                est.gcc
                    .store(bits_per_second.max(1.0) as u64, Ordering::Relaxed);
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
        // A sent stream with transport-wide sequence numbers: the congestion controller
        // runs from its initial estimate until feedback moves it.
        if let Some(est) = &self.estimates
            && info
                .rtp_header_extensions
                .iter()
                .any(|e| e.uri == TRANSPORT_CC_URI)
        {
            let _ = est
                .gcc
                .compare_exchange(0, est.initial, Ordering::Relaxed, Ordering::Relaxed);
        }
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
/// `stats`, and keeping the subscriber's bandwidth estimates in `estimates`.
pub fn with_keyframe_requests_counted(
    registry: Registry,
    stats: std::sync::Arc<super::stats::Stats>,
    estimates: std::sync::Arc<Estimates>,
) -> Registry {
    registry.with(
        Slot::from(KEYFRAME_REQUEST_SLOT),
        KeyframeRequestInterceptor::counted(stats, estimates),
    )
}

/// Slot of [`NackBudgetInterceptor`]: wire-ward of webrtc's NACK responder (4000), so
/// it thins the requests before they are answered.
pub const NACK_BUDGET_SLOT: usize = 3_500;

/// Share of the subscriber's bandwidth estimate retransmissions may use.
pub const RETRANSMIT_SHARE: f64 = 0.25;

/// Retransmissions allowed per second whatever the estimate.
const MIN_RETRANSMITS_PER_SEC: f64 = 10.0;

/// Assumed size of a retransmitted packet, bytes (video packets are near the MTU).
const RETRANSMIT_SIZE_BYTES: f64 = 1_200.0;

/// Bounds the retransmissions webrtc's NACK responder sends one subscriber: a token
/// bucket of [`RETRANSMIT_SHARE`] of the subscriber's bandwidth estimate (at least
/// [`MIN_RETRANSMITS_PER_SEC`] packets/s, half a second of burst). NACK entries beyond it
/// are removed before the responder sees them, and counted; so are requests for a packet
/// already resent [`sluice_media::resends::MAX_RESENDS`] times.
///
/// Without it, a subscriber whose receiver re-requests every missing packet every
/// 100 ms (webrtc-rs's default NACK generator does, without a retry limit) behind a
/// congested link gets retransmissions of the packets the congestion dropped, which
/// congest it further: a 200 kbit/s link then carried almost nothing else for tens of
/// seconds (`tests/bandwidth.rs`).
pub struct NackBudgetInterceptor {
    estimates: std::sync::Arc<Estimates>,
    stats: std::sync::Arc<super::stats::Stats>,
    tokens: f64,
    last: Option<Instant>,
    /// Resends per sent stream (by its SSRC), from when it is bound.
    resends: HashMap<u32, Box<Resends>>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl NackBudgetInterceptor {
    /// A budget from `estimates`, counting what it removes into `stats`.
    pub fn new(
        estimates: std::sync::Arc<Estimates>,
        stats: std::sync::Arc<super::stats::Stats>,
    ) -> Self {
        Self {
            estimates,
            stats,
            tokens: 0.0,
            last: None,
            resends: HashMap::new(),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    /// Packets per second the budget allows at estimate `bps` (0: unknown).
    pub fn rate(bps: u64) -> f64 {
        (bps as f64 * RETRANSMIT_SHARE / (8.0 * RETRANSMIT_SIZE_BYTES)).max(MIN_RETRANSMITS_PER_SEC)
    }

    /// Keeps the NACK entries of `nack` the budget covers at `now`; returns how many
    /// requested packets were removed.
    fn thin(&mut self, now: Instant, nack: &mut TransportLayerNack) -> u64 {
        let rate = Self::rate(self.estimates.effective());
        let dt = self
            .last
            .map_or(0.5, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last = Some(now);
        self.tokens = (self.tokens + rate * dt).min(rate * 0.5);
        let mut resends = self.resends.get_mut(&nack.media_ssrc);
        let mut removed = 0;
        // Thinned in place: the kept pairs move to the front, each from a pair at or
        // after its new place.
        let mut kept = 0;
        for i in 0..nack.nacks.len() {
            let pair = nack.nacks[i];
            // The pair's packets one by one: each needs a token and a resend left.
            let (mut first, mut mask) = (None::<u16>, 0u16);
            for seq in pair_seqs(&pair) {
                // (A resend is counted only when it has a token.)
                if self.tokens >= 1.0 && resends.as_mut().is_none_or(|r| r.allow(seq)) {
                    self.tokens -= 1.0;
                    match first {
                        None => first = Some(seq),
                        Some(f) => mask |= 1 << (seq.wrapping_sub(f) - 1),
                    }
                } else {
                    removed += 1;
                }
            }
            if let Some(f) = first {
                nack.nacks[kept] = NackPair {
                    packet_id: f,
                    lost_packets: mask,
                };
                kept += 1;
            }
        }
        nack.nacks.truncate(kept);
        removed
    }
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for NackBudgetInterceptor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        let now = msg.now;
        if let Packet::Rtcp(packets) = &mut msg.message.packet
            && packets
                .iter()
                .any(|p| p.as_any().is::<TransportLayerNack>())
        {
            let mut removed = 0;
            let mut out: Vec<Box<dyn rtc::rtcp::Packet>> = Vec::with_capacity(packets.len());
            for p in packets.drain(..) {
                match p.as_any().downcast_ref::<TransportLayerNack>() {
                    Some(nack) => {
                        let mut nack = nack.clone();
                        removed += self.thin(now, &mut nack);
                        if !nack.nacks.is_empty() {
                            out.push(Box::new(nack));
                        }
                    }
                    None => out.push(p),
                }
            }
            *packets = out;
            if removed > 0 {
                self.stats
                    .retransmits_suppressed
                    .fetch_add(removed, Ordering::Relaxed);
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

/// The sequence numbers a NACK pair asks for: its packet id and those its bitmask marks.
fn pair_seqs(pair: &NackPair) -> impl Iterator<Item = u16> + '_ {
    std::iter::once(pair.packet_id).chain(
        (0..16)
            .filter(|b| pair.lost_packets & (1 << b) != 0)
            .map(|b| pair.packet_id.wrapping_add(b + 1)),
    )
}

impl Interceptor for NackBudgetInterceptor {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.resends.insert(info.ssrc, Box::default());
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.resends.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Adds [`NackBudgetInterceptor`] to an interceptor registry.
pub fn with_nack_budget(
    registry: Registry,
    stats: std::sync::Arc<super::stats::Stats>,
    estimates: std::sync::Arc<Estimates>,
) -> Registry {
    registry.with(
        Slot::from(NACK_BUDGET_SLOT),
        NackBudgetInterceptor::new(estimates, stats),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn nack_budget_keeps_what_the_share_of_the_estimate_covers() {
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
        let estimates = std::sync::Arc::new(Estimates::new(0));
        // 960 kbit/s: a quarter is 25 packets/s of 1200 bytes, 12.5 in a half-second burst.
        estimates.gcc.store(960_000, Ordering::Relaxed);
        let stats = std::sync::Arc::new(super::super::Stats::default());
        let mut b = NackBudgetInterceptor::new(estimates, stats);
        let t0 = Instant::now();
        let mut nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 2,
            // 20 pairs of 3 packets each (packet_id plus two mask bits).
            nacks: (0..20)
                .map(|i| NackPair {
                    packet_id: i * 20,
                    lost_packets: 0b11,
                })
                .collect(),
        };
        let removed = b.thin(t0, &mut nack);
        assert_eq!(nack.nacks.len(), 4, "12.5 tokens cover 4 pairs of 3");
        assert_eq!(removed, 48);
        // A second later the bucket is full again (capped at half a second).
        let mut again = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 2,
            nacks: (0..20)
                .map(|i| NackPair {
                    packet_id: i * 20,
                    lost_packets: 0,
                })
                .collect(),
        };
        b.thin(t0 + Duration::from_secs(1), &mut again);
        assert_eq!(again.nacks.len(), 12);
        // Unknown estimate: the floor rate.
        assert_eq!(NackBudgetInterceptor::rate(0), MIN_RETRANSMITS_PER_SEC);
    }

    #[test]
    fn a_packet_asked_for_again_and_again_is_resent_three_times() {
        let estimates = std::sync::Arc::new(Estimates::new(0));
        estimates.gcc.store(9_600_000, Ordering::Relaxed);
        let stats = std::sync::Arc::new(super::super::Stats::default());
        let mut b = NackBudgetInterceptor::new(estimates, stats);
        b.bind_local_stream(&StreamInfo {
            ssrc: 2,
            ..Default::default()
        });
        let t0 = Instant::now();
        // Packets 10, 12 and 13 asked for five times, 100 ms apart (as webrtc-rs asks
        // for packets it got by RTX); on the fourth time 14 is new in the request.
        let mut kept = Vec::new();
        for round in 0..5u64 {
            let mut nack = TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: 2,
                nacks: vec![NackPair {
                    packet_id: 10,
                    lost_packets: if round >= 3 { 0b1110 } else { 0b110 },
                }],
            };
            b.thin(t0 + Duration::from_millis(100 * round), &mut nack);
            kept.push(nack.nacks.iter().flat_map(pair_seqs).collect::<Vec<_>>());
        }
        assert_eq!(
            kept,
            [
                vec![10, 12, 13],
                vec![10, 12, 13],
                vec![10, 12, 13],
                vec![14],
                vec![14]
            ]
        );
        // Another stream's packets (not bound here) are not counted.
        let mut other = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 3,
            nacks: vec![NackPair {
                packet_id: 10,
                lost_packets: 0,
            }],
        };
        for round in 5..10 {
            other.nacks = vec![NackPair {
                packet_id: 10,
                lost_packets: 0,
            }];
            b.thin(t0 + Duration::from_millis(100 * round), &mut other);
            assert_eq!(other.nacks.len(), 1);
        }
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
