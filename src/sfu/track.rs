//! The webrtc-bound half of published tracks and subscriber legs: a [`PublishedTrack`] is
//! a media-core [`Source`] with the publisher connection's receiving end (for keyframe
//! requests); a [`Leg`] is a media-core [`LegSink`] with its send track, transceiver and
//! RTCP task on the subscriber's connection. The packet path itself is in
//! [`sluice_media::source`].
//!
//! ```text
//! publisher PC ──► TrackRemote::poll ──► forwarder task ──► Source::forward
//!                                         │ per leg: LegSink ──► WebrtcLegOutput
//!                                         ▼   (write_rtp polled once; full: drop + count)
//!                               subscriber PC's driver channel ──► subscriber PC
//! subscriber PC ──► TrackLocal::poll (PLI/FIR) ──► rtcp task (one per leg)
//!                                     ──► Source::keyframe_allowed ──► publisher PLI
//! ```

use super::codec;
use super::rewrite::LegParams;
use super::rtcp::is_keyframe_request;
use super::stats::{MediaKind, Stats};
use super::{SfuError, TrackInfo, TrackRef};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use sluice_media::JoinClock;
use sluice_media::estimates::Estimates;
use sluice_media::layers::Layer;
use sluice_media::select::{self, Keyframes};
use sluice_media::source::{LegOutput, LegSink, Source, SourceNegotiation, Written};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

/// A track a participant publishes: the media core's [`Source`] (dereferenced to), its
/// codec as the publisher's connection negotiated it, and the connection's receiving end.
pub(crate) struct PublishedTrack {
    source: Arc<Source>,
    pub(crate) codec: RTCRtpCodec,
    remote: Arc<dyn TrackRemote>,
}

impl std::ops::Deref for PublishedTrack {
    type Target = Source;
    fn deref(&self) -> &Source {
        &self.source
    }
}

impl PublishedTrack {
    pub(crate) fn new(
        info: TrackInfo,
        codec: RTCRtpCodec,
        negotiated: SourceNegotiation,
        remote: Arc<dyn TrackRemote>,
        first: Layer,
        keyframe_interval: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        let source = Source::new(
            info,
            codec.clock_rate,
            negotiated,
            first,
            keyframe_interval,
            stats,
        );
        Self {
            source: Arc::new(source),
            codec,
            remote,
        }
    }

    /// The media core's side of the track.
    pub(crate) fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// Whether `remote` is this track's receiving end.
    pub(crate) fn is_remote(&self, remote: &Arc<dyn TrackRemote>) -> bool {
        std::ptr::eq(
            Arc::as_ptr(&self.remote) as *const (),
            Arc::as_ptr(remote) as *const (),
        )
    }

    /// Asks the publisher for a keyframe on `ssrc`, at most once per interval per stream.
    pub(crate) async fn request_keyframe(&self, ssrc: u32) {
        if !self.source.keyframe_allowed(ssrc, Instant::now()) {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if self.remote.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
            self.source
                .stats()
                .keyframe_requests_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the keyframe requests a decision returned.
    pub(crate) async fn request_keyframes(&self, asks: Keyframes) {
        for ssrc in asks.ssrcs() {
            self.request_keyframe(ssrc).await;
        }
    }
}

/// A leg's send track as the media core writes to it.
struct WebrtcLegOutput(Arc<TrackLocalStaticRTP>);

impl LegOutput for WebrtcLegOutput {
    /// `write_rtp` locks the track's context (free unless a renegotiation binds it at that
    /// moment) and sends to the subscriber connection's bounded driver channel. The future
    /// is polled once: when the channel is full (the subscriber's connection is behind) or
    /// the context is busy, it is dropped, which cancels the send, and the packet is lost
    /// for this leg only. No task or queue of Sluice's sits between the forwarder and
    /// webrtc.
    #[inline]
    fn write(&self, pkt: rtp::Packet) -> Written {
        let fut = std::pin::pin!(self.0.write_rtp(pkt));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(Ok(())) => Written::Sent,
            std::task::Poll::Ready(Err(_)) => Written::Failed,
            std::task::Poll::Pending => Written::QueueFull,
        }
    }
}

/// One published track forwarded to one subscriber.
pub(crate) struct Leg {
    pub(crate) source: Arc<PublishedTrack>,
    /// The stream and track id the subscriber sees the track by.
    pub(crate) seen_as: TrackRef,
    /// The media section the leg rides, once active.
    mid: Mutex<Option<String>>,
    pub(crate) sink: Arc<LegSink>,
    pub(crate) sender: Arc<dyn RtpSender>,
    pub(crate) ssrc: u32,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicBool,
}

impl Leg {
    /// The media section the leg rides (None until it is active).
    pub(crate) fn mid(&self) -> Option<String> {
        self.mid.lock().unwrap().clone()
    }

    /// The media section the leg's transceiver was given by a negotiation, if any.
    pub(crate) async fn negotiated_mid(&self, pc: &dyn PeerConnection) -> Option<String> {
        let sender_id = self.sender.id();
        for t in pc.get_transceivers().await {
            if let Ok(Some(s)) = t.sender().await
                && s.id() == sender_id
            {
                return t.mid().await.ok().flatten();
            }
        }
        None
    }

    /// Adds a send track for `source` to `pc` and starts the leg's writer and RTCP tasks.
    /// Nothing is forwarded until [`Leg::activate`] after the subscriber's answer.
    pub(crate) async fn create(
        pc: &dyn PeerConnection,
        source: Arc<PublishedTrack>,
        seen_as: TrackRef,
        stats: Arc<Stats>,
        join_clock: Arc<JoinClock>,
    ) -> Result<Arc<Leg>, SfuError> {
        let ssrc = loop {
            let s: u32 = rand::random();
            if s != 0 {
                break s;
            }
        };
        let kind = match source.info.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let track = MediaStreamTrack::new(
            seen_as.stream_id.clone(),
            seen_as.track_id.clone(),
            seen_as.track_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    // Video legs retransmit (and probe, see `probe`) on an RTX stream when
                    // the subscriber negotiates RTX; webrtc clears it otherwise.
                    rtx: (kind == RtpCodecKind::Video).then(|| RTCRtpRtxParameters {
                        ssrc: loop {
                            let s: u32 = rand::random();
                            if s != 0 && s != ssrc {
                                break s;
                            }
                        },
                    }),
                    ..Default::default()
                },
                codec: source.codec.clone(),
                ..Default::default()
            }],
        );
        let local = Arc::new(TrackLocalStaticRTP::new(track));
        // A transceiver of its own, send-only: `add_track` would reuse one of the
        // subscriber's publishing transceivers, which a browser that offered it `sendonly`
        // can never receive on.
        let transceiver = pc
            .add_transceiver_from_track(
                local.clone() as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![seen_as.stream_id.clone()],
                    send_encodings: vec![],
                }),
            )
            .await?;
        let sender = transceiver
            .sender()
            .await?
            .ok_or_else(|| SfuError::WebRtc("new transceiver without a sender".into()))?;
        let out = Arc::new(WebrtcLegOutput(local.clone()));
        let sink = Arc::new(LegSink::new(source.source(), out, join_clock));
        let rtcp = tokio::spawn(rtcp_loop(
            local,
            Arc::downgrade(&source),
            Arc::downgrade(&sink),
            stats,
        ));
        Ok(Arc::new(Leg {
            source,
            seen_as,
            mid: Mutex::new(None),
            sink,
            sender,
            ssrc,
            tasks: Mutex::new(vec![rtcp]),
            active: AtomicBool::new(false),
        }))
    }

    /// Reads what the subscriber negotiated for this leg, starts forwarding, and asks the
    /// publisher for a keyframe so the subscriber can start decoding. Returns false when the
    /// leg cannot carry the source codec (the subscriber did not accept it) or the source
    /// is gone.
    pub(crate) async fn activate(&self, pc: &dyn PeerConnection) -> Result<bool, SfuError> {
        if self.active.load(Ordering::Acquire) {
            return Ok(true);
        }
        let params = self.sender.get_parameters().await?;
        let codecs = &params.rtp_parameters.codecs;
        let want = &self.source.codec;
        let matching: Vec<_> = codecs
            .iter()
            .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&want.mime_type))
            .collect();
        let chosen = matching
            .iter()
            .find(|c| c.rtp_codec.sdp_fmtp_line == want.sdp_fmtp_line)
            .or_else(|| matching.first());
        let Some(codec) = chosen else {
            tracing::warn!(
                track = %self.source.info.track.track_id,
                mime = %want.mime_type,
                "subscriber did not negotiate the publisher's codec; leg stays idle"
            );
            return Ok(false);
        };
        let leg_exts: Vec<(u16, String)> = params
            .rtp_parameters
            .header_extensions
            .iter()
            .map(|e| (e.id, e.uri.clone()))
            .collect();
        let mid = self.negotiated_mid(pc).await;
        self.mid.lock().unwrap().clone_from(&mid);
        // The publisher's RED passes through untouched (its payload may be end-to-end
        // encrypted) when the leg negotiated RED whose blocks carry the leg's payload type
        // for the codec, and that is the publisher's too; otherwise the leg receives the
        // primary blocks unwrapped.
        let (red_pt, red_block_pt) = self.source.red();
        let leg_red = if red_pt == 0 {
            0
        } else {
            codecs
                .iter()
                .find(|c| {
                    c.rtp_codec
                        .mime_type
                        .eq_ignore_ascii_case(codec::MIME_TYPE_RED)
                        && codec::red_block_payload_type(&c.rtp_codec.sdp_fmtp_line)
                            == Some(codec.payload_type)
                        && codec.payload_type == red_block_pt
                })
                .map_or(0, |c| c.payload_type)
        };
        if red_pt != 0 {
            tracing::debug!(
                track = %self.source.info.track.track_id,
                passthrough = leg_red != 0,
                "publisher sends RED: leg takes it {}",
                if leg_red != 0 { "as RED" } else { "unwrapped" }
            );
        }
        let leg_params = LegParams::new(
            self.ssrc,
            codec.payload_type,
            &self.source.source_exts,
            &leg_exts,
            mid.as_deref(),
        )
        .with_red(leg_red, red_block_pt);
        self.sink
            .set_params(leg_params, red_pt != 0 && leg_red == 0);
        if !self.source.attach(self.sink.clone()) {
            return Ok(false);
        }
        self.active.store(true, Ordering::Release);
        self.retarget(Instant::now()).await;
        Ok(true)
    }

    /// Sets the subscriber's rendered size: 0x0 pauses the leg; otherwise the layer
    /// choice follows it (a switch waits for the new layer's keyframe).
    pub(crate) async fn set_size(&self, width: u32, height: u32) {
        let was_paused = self
            .sink
            .paused
            .swap(width == 0 && height == 0, Ordering::Relaxed);
        if width == 0 && height == 0 {
            return;
        }
        self.sink.want.store(
            (width.min(0xFFFF) << 16) | height.min(0xFFFF),
            Ordering::Relaxed,
        );
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        if was_paused {
            let ask = select::resume(&self.source, &self.sink);
            self.source.request_keyframe(ask).await;
        }
        self.retarget(Instant::now()).await;
    }

    /// The RID of the layer the leg receives now, when the track is simulcast.
    pub(crate) fn layer_rid(&self) -> Option<String> {
        let ssrc = self.sink.selected_ssrc.load(Ordering::Relaxed);
        self.source.layer(ssrc).and_then(|l| l.rid.clone())
    }

    /// The RID of the layer the leg is switching to, when that is not the one it gets.
    pub(crate) fn target_rid(&self) -> Option<String> {
        let target = self.sink.target_ssrc.load(Ordering::Relaxed);
        if target == self.sink.selected_ssrc.load(Ordering::Relaxed) {
            return None;
        }
        self.source.layer(target).and_then(|l| l.rid.clone())
    }

    /// Re-chooses the layer; requests a keyframe of a new target. True when it changed.
    pub(crate) async fn retarget(&self, now: Instant) -> bool {
        let (changed, asks) = select::retarget(&self.source, &self.sink, now);
        self.source.request_keyframes(asks).await;
        changed
    }

    /// Stops forwarding and ends the leg's tasks (awaited, so nothing of the leg outlives
    /// this call). The caller removes the sender from the connection.
    pub(crate) async fn stop(&self) {
        self.source.detach(&self.sink);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Fits one subscriber's legs into its bandwidth estimate ([`select::allocate`]) and
/// sends the keyframe requests the new targets need; returns the probe rate the legs ask
/// for (bits/s, 0: none).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn allocate(
    subscriber: &str,
    legs: &[Arc<Leg>],
    estimates: &Estimates,
    now: Instant,
    clock_ms: u64,
    speakers: &[super::ParticipantId],
) -> u64 {
    let pairs: Vec<(&Source, &LegSink)> = legs
        .iter()
        .map(|l| (l.source.source().as_ref(), l.sink.as_ref()))
        .collect();
    let mut asks = Vec::new();
    let probe = select::allocate(
        subscriber, &pairs, estimates, now, clock_ms, speakers, &mut asks,
    );
    for (i, ssrc) in asks {
        legs[i].source.request_keyframe(ssrc).await;
    }
    probe
}

/// Per-leg RTCP: relays the subscriber's keyframe requests to the publisher.
async fn rtcp_loop(
    local: Arc<TrackLocalStaticRTP>,
    source: std::sync::Weak<PublishedTrack>,
    sink: std::sync::Weak<LegSink>,
    stats: Arc<Stats>,
) {
    while let Some(evt) = local.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = evt else {
            continue;
        };
        let requests = packets
            .iter()
            .filter(|p| is_keyframe_request(p.as_ref()))
            .count();
        if requests == 0 {
            continue;
        }
        stats
            .keyframe_requests_received
            .fetch_add(requests as u64, Ordering::Relaxed);
        let (Some(source), Some(sink)) = (source.upgrade(), sink.upgrade()) else {
            break;
        };
        // Several requests in one compound packet are one request. Before the first
        // layer is selected, the request is for the target.
        let ssrc = match sink.selected_ssrc.load(Ordering::Relaxed) {
            0 => sink.target_ssrc.load(Ordering::Relaxed),
            s => s,
        };
        source.request_keyframe(ssrc).await;
    }
}
