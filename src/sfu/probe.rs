//! Bandwidth probing on a subscriber's connection, before the allocator steps a leg up.
//!
//! The allocator asks for extra traffic (`Estimates::probe_bps`) for a short window; the
//! [`ProbeInterceptor`] produces it as RTX retransmissions of the connection's latest
//! video packets. It does not keep packets of its own: it hands webrtc's NACK responder
//! (which already keeps every sent packet for retransmission) NACKs for the newest ones,
//! and the responder sends them again on the leg's RTX stream. RTX packets have their own
//! SSRC and sequence numbers, so the receiver's SRTP replay check keeps them; they pass
//! the TWCC sender and the congestion controller like any packet (marked as
//! retransmissions, so they count as new bytes), and the transport-wide feedback on them
//! moves the estimate: up when the path carries the extra rate, down when it queues or
//! loses it. The receiver discards the repaired duplicates.
//!
//! Padding would be the other way to probe, but webrtc 0.21 writes at most 4 padding
//! bytes per packet, and a duplicate on the media SSRC is dropped by SRTP's replay check
//! (and then reported lost). So only streams whose subscriber negotiated RTX are probed
//! on; a connection without one gets no probe and the allocator steps up unprobed.

use super::stats::Stats;
use rtc::interceptor::{Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::shared::TransportContext;
use rtc::shared::error::Error;
use rtc::shared::marshal::MarshalSize;
use sluice_media::estimates::Estimates;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Slot of [`ProbeInterceptor`]: wire-ward of webrtc's NACK responder (4000), so the
/// NACKs it makes reach the responder, and application-ward of Sluice's retransmission
/// budget (3500), so probes do not use up the subscriber's retransmissions.
pub const PROBE_SLOT: usize = 3_600;

/// The sender SSRC of the NACKs the prober makes, so counters of subscribers' NACKs
/// leave them out.
pub const PROBE_SENDER_SSRC: u32 = 0x5052_4F42; // "PROB"

/// How often the prober releases probe packets while probing.
const TICK: Duration = Duration::from_millis(5);

/// The most probe bytes released at once (a burst of this many ms at the probe rate).
const MAX_BURST_MS: f64 = 20.0;

/// How far back from the newest packet the probes reach: they cycle over the newest few
/// packets, all still in the responder's buffer.
const DEPTH: u16 = 8;

/// A sent video stream the prober can probe on (its subscriber negotiated RTX).
#[derive(Debug)]
struct ProbeStream {
    ssrc: u32,
    /// The newest sequence number sent on it (None: nothing yet).
    newest: Option<u16>,
    /// Smoothed size of its packets, bytes.
    size: f64,
}

/// Turns the allocator's probe rate into NACKs for the responder; see the module docs.
pub struct ProbeInterceptor {
    estimates: Arc<Estimates>,
    stats: Arc<Stats>,
    streams: Vec<ProbeStream>,
    /// Round robin over `streams`, and over the newest [`DEPTH`] packets.
    next: usize,
    back: u16,
    /// Probe bytes owed.
    tokens: f64,
    last: Option<Instant>,
    transport: TransportContext,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl ProbeInterceptor {
    /// A prober reading its rate from `estimates.probe_bps` and counting into `stats`.
    pub fn new(estimates: Arc<Estimates>, stats: Arc<Stats>) -> Self {
        Self {
            estimates,
            stats,
            streams: Vec::new(),
            next: 0,
            back: 0,
            tokens: 0.0,
            last: None,
            transport: TransportContext::default(),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    /// Releases the probe packets owed at `now`, as NACKs on the read path.
    fn release(&mut self, now: Instant) {
        let rate = self.estimates.probe_bps.load(Ordering::Relaxed) as f64;
        if rate <= 0.0 || self.streams.iter().all(|s| s.newest.is_none()) {
            self.tokens = 0.0;
            // Asked to probe with nothing sent yet: look again a tick later (not at once:
            // a timeout of `now` would have the driver call again without pause).
            self.last = (rate > 0.0).then_some(now);
            return;
        }
        // Writes and timeouts carry their own `now`, not in order: the clock only moves
        // forward here, or the time between two calls would be counted twice.
        let dt = match self.last {
            Some(t) if now <= t => return,
            Some(t) => now.duration_since(t).as_secs_f64(),
            None => 0.0,
        };
        self.last = Some(now);
        let per_ms = rate / 8.0 / 1000.0;
        self.tokens = (self.tokens + per_ms * dt * 1000.0).min(per_ms * MAX_BURST_MS);
        let mut nacks: Vec<Box<dyn rtc::rtcp::Packet>> = Vec::new();
        let mut sent = 0u64;
        // Each pass over the streams releases at least one packet or stops.
        while self.tokens > 0.0 {
            let n = self.streams.len();
            let Some(i) = (0..n)
                .map(|k| (self.next + k) % n)
                .find(|i| self.streams[*i].newest.is_some())
            else {
                break;
            };
            let s = &self.streams[i];
            let seq = s.newest.unwrap_or_default().wrapping_sub(self.back);
            self.tokens -= s.size.max(100.0);
            nacks.push(Box::new(TransportLayerNack {
                sender_ssrc: PROBE_SENDER_SSRC,
                media_ssrc: s.ssrc,
                nacks: vec![NackPair {
                    packet_id: seq,
                    lost_packets: 0,
                }],
            }));
            sent += 1;
            self.next = (i + 1) % n;
            if self.next == 0 {
                self.back = (self.back + 1) % DEPTH;
            }
        }
        if !nacks.is_empty() {
            self.stats.probe_packets.fetch_add(sent, Ordering::Relaxed);
            self.read_queue.push_back(TaggedPacket {
                now,
                transport: self.transport,
                message: Packet::Rtcp(nacks).into(),
            });
        }
    }
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for ProbeInterceptor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.transport = msg.transport;
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if self.last.is_some() || self.estimates.probe_bps.load(Ordering::Relaxed) > 0 {
            self.release(msg.now);
        }
        if let Packet::Rtp(p) = &msg.message.packet
            && let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == p.header.ssrc)
        {
            let newer = s
                .newest
                .is_none_or(|n| (p.header.sequence_number.wrapping_sub(n) as i16) > 0);
            if newer {
                s.newest = Some(p.header.sequence_number);
            }
            let size = (p.header.marshal_size() + p.payload.len()) as f64;
            s.size = if s.size == 0.0 {
                size
            } else {
                0.9 * s.size + 0.1 * size
            };
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.release(now);
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        // Woken only while probing; a probe that starts is picked up at the next timeout
        // any other interceptor of the connection asks for (feedback, reports).
        if self.estimates.probe_bps.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(self.last.map_or_else(Instant::now, |t| t + TICK))
    }
}

impl Interceptor for ProbeInterceptor {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        let video = info.mime_type.to_ascii_lowercase().starts_with("video/");
        if video
            && info.ssrc_rtx.is_some()
            && info.payload_type_rtx.is_some()
            && !self.streams.iter().any(|s| s.ssrc == info.ssrc)
        {
            self.streams.push(ProbeStream {
                ssrc: info.ssrc,
                newest: None,
                size: 0.0,
            });
        }
        self.estimates
            .can_probe
            .store(!self.streams.is_empty(), Ordering::Relaxed);
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.streams.retain(|s| s.ssrc != info.ssrc);
        self.next = 0;
        self.estimates
            .can_probe
            .store(!self.streams.is_empty(), Ordering::Relaxed);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Makes an interceptor that keeps per-SSRC state for the streams it is bound to (webrtc's
/// TWCC sender and congestion controller) treat each stream's RTX SSRC as the stream
/// itself: binding a stream binds its RTX SSRC too.
///
/// webrtc 0.21 binds local streams by their media SSRC only, so without this the RTX
/// packets its NACK responder sends (retransmissions and probes) leave with no
/// transport-wide sequence number and outside the congestion controller's send history:
/// they load the path, yet no feedback reports them. Measured behind a 200 kbit/s limit
/// (`tests/bandwidth.rs`): a probe then raised the queueing delay while the received rate
/// counted only the media, and the estimate fell to 0.85 of that, below the layer the
/// leg had before probing.
pub struct WithRtxStreams<I>(pub I);

impl<I: Interceptor> rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for WithRtxStreams<I> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.0.handle_read(msg)
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.0.poll_read()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.0.handle_write(msg)
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.0.poll_write()
    }
    fn handle_event(&mut self, evt: ()) -> Result<(), Self::Error> {
        self.0.handle_event(evt)
    }
    fn poll_event(&mut self) -> Option<Self::Eout> {
        self.0.poll_event()
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.0.handle_timeout(now)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn close(&mut self) -> Result<(), Self::Error> {
        self.0.close()
    }
}

/// The stream info of `info`'s RTX stream, as if it were a stream of its own.
fn rtx_stream(info: &StreamInfo) -> Option<StreamInfo> {
    let ssrc = info.ssrc_rtx?;
    Some(StreamInfo {
        ssrc,
        ssrc_rtx: None,
        payload_type: info.payload_type_rtx.unwrap_or(info.payload_type),
        ..info.clone()
    })
}

impl<I: Interceptor> Interceptor for WithRtxStreams<I> {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.0.bind_local_stream(info);
        if let Some(rtx) = rtx_stream(info) {
            self.0.bind_local_stream(&rtx);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.0.unbind_local_stream(info);
        if let Some(rtx) = rtx_stream(info) {
            self.0.unbind_local_stream(&rtx);
        }
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.0.bind_remote_stream(info);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.0.unbind_remote_stream(info);
    }
}

/// Adds a [`ProbeInterceptor`] to an interceptor registry.
pub fn with_prober(registry: Registry, estimates: Arc<Estimates>, stats: Arc<Stats>) -> Registry {
    registry.with(
        Slot::from(PROBE_SLOT),
        ProbeInterceptor::new(estimates, stats),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp;
    use rtc::sansio::Protocol;

    fn info(ssrc: u32, rtx: bool, mime: &str) -> StreamInfo {
        StreamInfo {
            ssrc,
            ssrc_rtx: rtx.then_some(ssrc + 1),
            payload_type_rtx: rtx.then_some(97),
            mime_type: mime.to_owned(),
            payload_type: 96,
            clock_rate: 90_000,
            ..Default::default()
        }
    }

    fn write(p: &mut ProbeInterceptor, ssrc: u32, seq: u16, now: Instant) {
        let mut pkt = rtp::Packet::default();
        pkt.header.version = 2;
        pkt.header.ssrc = ssrc;
        pkt.header.sequence_number = seq;
        pkt.payload = bytes::Bytes::from(vec![0u8; 988]); // 1000 bytes with the header
        p.handle_write(TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: Packet::Rtp(pkt).into(),
        })
        .unwrap();
        while p.poll_write().is_some() {}
    }

    /// The NACKs the prober put on the read path: (media SSRC, sequence number).
    fn nacks(p: &mut ProbeInterceptor) -> Vec<(u32, u16)> {
        let mut out = vec![];
        while let Some(m) = p.poll_read() {
            let Packet::Rtcp(rtcp) = m.message.packet else {
                continue;
            };
            for r in rtcp {
                let n = r.as_any().downcast_ref::<TransportLayerNack>().unwrap();
                assert_eq!(n.sender_ssrc, PROBE_SENDER_SSRC);
                for pair in &n.nacks {
                    assert_eq!(pair.lost_packets, 0);
                    out.push((n.media_ssrc, pair.packet_id));
                }
            }
        }
        out
    }

    #[test]
    fn rtx_packets_get_transport_wide_sequence_numbers_too() {
        use rtc::interceptor::{RTPHeaderExtension, TwccSenderBuilder};
        const TWCC: &str =
            "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
        let mut stream = info(10, true, "video/VP8");
        stream.rtp_header_extensions = vec![RTPHeaderExtension {
            uri: TWCC.to_owned(),
            id: 5,
        }];
        let numbered = |wrapped: bool| {
            let mut plain = TwccSenderBuilder::new().build();
            let mut with = WithRtxStreams(TwccSenderBuilder::new().build());
            let t: &mut dyn Interceptor = if wrapped { &mut with } else { &mut plain };
            t.bind_local_stream(&stream);
            let mut out = vec![];
            for ssrc in [10, 11] {
                let mut pkt = rtp::Packet::default();
                pkt.header.ssrc = ssrc;
                t.handle_write(TaggedPacket {
                    now: Instant::now(),
                    transport: TransportContext::default(),
                    message: Packet::Rtp(pkt).into(),
                })
                .unwrap();
                let Packet::Rtp(p) = t.poll_write().unwrap().message.packet else {
                    panic!("not RTP");
                };
                out.push(p.header.get_extension(5).is_some());
            }
            out
        };
        // The media stream (10) is numbered either way; its RTX stream (11) only wrapped.
        assert_eq!(numbered(false), vec![true, false]);
        assert_eq!(numbered(true), vec![true, true]);
    }

    #[test]
    fn probes_at_the_asked_rate_on_the_newest_video_packets_with_rtx() {
        let estimates = Arc::new(Estimates::new(0));
        let stats = Arc::new(Stats::default());
        let mut p = ProbeInterceptor::new(estimates.clone(), stats.clone());
        // Video with RTX; video without; audio with an RTX ssrc (never probed on).
        p.bind_local_stream(&info(10, true, "video/VP8"));
        p.bind_local_stream(&info(20, false, "video/VP8"));
        p.bind_local_stream(&info(30, true, "audio/opus"));
        assert!(estimates.can_probe.load(Ordering::Relaxed));
        let t0 = Instant::now();
        for seq in 100..110 {
            write(&mut p, 10, seq, t0);
            write(&mut p, 20, seq, t0);
        }
        // Not asked: nothing, and no timer.
        p.handle_timeout(t0).unwrap();
        assert!(nacks(&mut p).is_empty());
        assert_eq!(p.poll_timeout(), None);
        // Asked, with nothing sent on a probe-capable stream yet: no probe, and the next
        // look a tick later, not at once.
        let mut idle = ProbeInterceptor::new(estimates.clone(), stats.clone());
        idle.bind_local_stream(&info(40, true, "video/VP8"));
        estimates.probe_bps.store(800_000, Ordering::Relaxed);
        idle.handle_timeout(t0).unwrap();
        assert!(nacks(&mut idle).is_empty());
        assert_eq!(idle.poll_timeout(), Some(t0 + TICK));
        estimates.probe_bps.store(0, Ordering::Relaxed);
        // 800 kbit/s for one second of 5 ms ticks: 100 packets of 1000 bytes.
        estimates.probe_bps.store(800_000, Ordering::Relaxed);
        let mut got = vec![];
        let mut t = t0;
        for _ in 0..=200 {
            p.handle_timeout(t).unwrap();
            got.extend(nacks(&mut p));
            t += TICK;
        }
        assert!((95..=105).contains(&got.len()), "{} probes", got.len());
        assert!(got.iter().all(|(ssrc, _)| *ssrc == 10));
        // The newest DEPTH packets, newest first, over and over.
        let seqs: Vec<u16> = got.iter().take(9).map(|(_, s)| *s).collect();
        assert_eq!(seqs, vec![109, 108, 107, 106, 105, 104, 103, 102, 109]);
        // Writes whose time is a little behind the timeouts' (webrtc stamps them when
        // queued) do not make the prober count any time twice: another half second of
        // them, about 50 more probes.
        let mut more = 0;
        for i in 0..100u16 {
            write(&mut p, 10, 110 + i, t - Duration::from_millis(8));
            more += nacks(&mut p).len();
            p.handle_timeout(t).unwrap();
            more += nacks(&mut p).len();
            t += TICK;
        }
        assert!((45..=55).contains(&more), "{more} probes in half a second");
        assert_eq!(
            stats.probe_packets.load(Ordering::Relaxed),
            (got.len() + more) as u64
        );
        assert!(p.poll_timeout().is_some());
        // Stopped: nothing more, and the stream gone: no probing at all.
        estimates.probe_bps.store(0, Ordering::Relaxed);
        p.handle_timeout(t).unwrap();
        assert!(nacks(&mut p).is_empty());
        p.unbind_local_stream(&info(10, true, "video/VP8"));
        assert!(!estimates.can_probe.load(Ordering::Relaxed));
    }
}
