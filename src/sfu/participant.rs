//! A participant: one peer connection that publishes and subscribes, its negotiation state,
//! its subscriber legs and its published tracks.

use super::conference::Conference;
use super::probe::WithRtxStreams;
use super::rewrite::MID_EXTENSION;
use super::rtcp::with_keyframe_requests_counted;
use super::sdp;
use super::stats::MediaKind;
use super::track::{Leg, PublishedTrack};
use super::{
    HangupReason, IceCandidate, Inner, ParticipantId, SdpKind, SessionDescription, SfuError,
    SfuEventKind, TrackInfo, TrackRef,
};
use rtc::interceptor::{CongestionControlBuilder, SenderReportBuilder, Slot, TwccSenderBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use sluice_media::JoinClock;
use sluice_media::layers::Layer;
use sluice_media::source::SourceNegotiation;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
    configure_nack, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};

/// Largest data-channel message accepted or sent (docs/protocol.md §8).
pub const MAX_DATA_CHANNEL_MESSAGE: usize = 64 * 1024;

/// Header extensions Sluice negotiates besides the ones webrtc's defaults register
/// (mid, rid, repaired-rid for video; transport-cc).
const AUDIO_EXTENSIONS: &[&str] = &[MID_EXTENSION, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"];
const VIDEO_EXTENSIONS: &[&str] = &[
    "urn:3gpp:video-orientation",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension",
];

#[derive(Default)]
struct Negotiation {
    /// A Sluice offer is out, waiting for the client's answer.
    awaiting_answer: bool,
    /// Something changed while an offer was out: offer again after the answer.
    needs_offer: bool,
    /// Legs added since the last offer.
    unsent: Vec<Arc<Leg>>,
    /// Legs in the offer that is out; activated when the answer arrives.
    in_flight: Vec<Arc<Leg>>,
}

#[derive(Default)]
struct CandidateGate {
    open: bool,
    pending: Vec<Option<IceCandidate>>,
}

pub(crate) struct Participant {
    pub(crate) id: ParticipantId,
    conference: Weak<Conference>,
    conference_id: String,
    inner: Weak<Inner>,
    pc: Arc<dyn PeerConnection>,
    neg: tokio::sync::Mutex<Negotiation>,
    legs: Mutex<HashMap<TrackRef, Arc<Leg>>>,
    published: Mutex<Vec<Arc<PublishedTrack>>>,
    /// Stream ids the client declared as screenshares (applies to tracks published later).
    screenshare_streams: Mutex<HashSet<String>>,
    dc: Mutex<Option<Arc<dyn DataChannel>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    gate: Mutex<CandidateGate>,
    first_mid: Mutex<Option<String>>,
    connected: AtomicBool,
    removed: AtomicBool,
    /// Since when the participant publishes and subscribes nothing (None: it does).
    idle_since: Mutex<Option<Instant>>,
    /// Join time, for the join-to-first-media histogram.
    pub(crate) join_clock: Arc<JoinClock>,
    /// The subscriber's bandwidth estimates (send-side GCC and REMB).
    pub(crate) estimates: Arc<sluice_media::estimates::Estimates>,
}

struct Handler {
    me: OnceLock<Weak<Participant>>,
}

impl Handler {
    fn participant(&self) -> Option<Arc<Participant>> {
        self.me.get().and_then(Weak::upgrade)
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Some(p) = self.participant() else { return };
        match event.candidate.to_json() {
            Ok(init) => {
                let mid = p.first_mid.lock().unwrap().clone();
                p.local_candidate(Some(IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: mid,
                    sdp_mline_index: Some(0),
                }));
            }
            Err(e) => warn!(participant = %p.id, error = %e, "cannot encode local candidate"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(p) = self.participant()
        {
            p.local_candidate(None);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let Some(p) = self.participant() else { return };
        debug!(conference = %p.conference_id, participant = %p.id, %state, "connection state");
        match state {
            RTCPeerConnectionState::Connected if !p.connected.swap(true, Ordering::AcqRel) => {
                info!(conference = %p.conference_id, participant = %p.id, "connected");
                p.emit(SfuEventKind::Connected);
            }
            RTCPeerConnectionState::Failed => {
                if let Some(inner) = p.inner.upgrade() {
                    inner.stats.ice_failures.fetch_add(1, Ordering::Relaxed);
                }
                // Never call into the connection from its own event handler: spawn.
                tokio::spawn(async move { p.remove(HangupReason::IceFailed).await });
            }
            _ => {}
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let Some(p) = self.participant() else { return };
        {
            let mut slot = p.dc.lock().unwrap();
            if slot.is_some() {
                debug!(participant = %p.id, "ignoring a second data channel");
                return;
            }
            *slot = Some(dc.clone());
        }
        let task = tokio::spawn(data_channel_loop(Arc::downgrade(&p), dc));
        p.track_task(task);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(p) = self.participant() else { return };
        let task = tokio::spawn(publish_loop(Arc::downgrade(&p), track));
        p.track_task(task);
    }
}

fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}

async fn build_pc(
    inner: &Inner,
    handler: Arc<Handler>,
    estimates: Arc<sluice_media::estimates::Estimates>,
) -> Result<Arc<dyn PeerConnection>, SfuError> {
    let cfg = &inner.config;
    let mut last_err = None;
    for port in inner.ports.candidates() {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        // RFC 2198 RED for Opus, so that a publisher that prefers it (browsers send RED
        // only when it is first in their offer; webrtc answers in the offer's order) can
        // send it, and it reaches subscribers that take RED untouched: its payload may be
        // end-to-end encrypted as a whole. Its fmtp matches any single payload type.
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: super::codec::MIME_TYPE_RED.to_owned(),
                    clock_rate: 48000,
                    channels: 2,
                    sdp_fmtp_line: "111/111".to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type: RED_PAYLOAD_TYPE,
            },
            RtpCodecKind::Audio,
        )?;
        for (uris, kind) in [
            (AUDIO_EXTENSIONS, RtpCodecKind::Audio),
            (VIDEO_EXTENSIONS, RtpCodecKind::Video),
        ] {
            for uri in uris {
                media.register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: (*uri).to_owned(),
                    },
                    kind,
                    None,
                )?;
            }
        }
        // webrtc's default set (NACK both ways, simulcast header extensions, TWCC
        // feedback to publishers, sender reports) without receiver reports. A browser stops
        // putting mid/rid on a simulcast stream's packets once a receiver report acknowledges
        // its SSRC, and webrtc 0.21 forgets the rid→SSRC mapping it learned at every
        // renegotiation (`start_rtp` rebuilds rid codings with no SSRC): with reports, a
        // publisher's layers become unroutable after its first renegotiation. Publishers
        // still get TWCC feedback (bandwidth, loss) and NACKs; Sluice's loss/jitter/RTT
        // figures come from the subscribers' reports, which are unaffected.
        let registry = configure_nack(Default::default(), &mut media);
        configure_simulcast_extension_headers(&mut media)?;
        //
        // Send-side bandwidth estimation for what Sluice sends this participant: the TWCC
        // sender numbers every departing packet, the congestion controller records them and
        // runs Sluice's GCC-style estimator (`bwe`) on the participant's transport-wide
        // feedback; its target reaches
        // `Estimates` through the keyframe-request interceptor. No pacer: forwarded media
        // leaves at the publisher's pace, and the allocator keeps the total under the
        // estimate by choosing layers.
        let registry = configure_twcc_receiver_only(registry, &mut media)?
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            // Both see RTX packets (retransmissions, probes) as their stream's: see
            // `probe::WithRtxStreams`.
            .with(
                Slot::TwccSender,
                WithRtxStreams(TwccSenderBuilder::new().build()),
            )
            .with(
                Slot::CongestionControl,
                WithRtxStreams(
                    CongestionControlBuilder::new(super::bwe::SubscriberEstimator::new(
                        (cfg.bandwidth_initial_kbps * 1000) as f64,
                        (cfg.bandwidth_min_kbps * 1000) as f64,
                        (cfg.bandwidth_max_kbps * 1000) as f64,
                    ))
                    .build(),
                ),
            );
        let registry =
            with_keyframe_requests_counted(registry, inner.stats.clone(), estimates.clone());
        let registry =
            super::rtcp::with_nack_budget(registry, inner.stats.clone(), estimates.clone());
        let registry = super::probe::with_prober(registry, estimates.clone(), inner.stats.clone());
        let mut settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(cfg.bind_address.is_loopback());
        if !cfg.nat_1to1_ips.is_empty() {
            settings = settings.with_nat_1to1_ips(
                cfg.nat_1to1_ips.iter().map(|ip| ip.to_string()).collect(),
                RTCIceCandidateType::Host,
            );
        }
        let result = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler.clone() as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![SocketAddr::new(cfg.bind_address, port)])
            .build()
            .await;
        match result {
            Ok(pc) => return Ok(Arc::new(pc)),
            Err(e) => {
                debug!(port, error = %e, "cannot build a peer connection on this port");
                last_err = Some(e);
            }
        }
    }
    Err(SfuError::WebRtc(format!(
        "no peer connection could be built (UDP ports exhausted?): {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    )))
}

fn same_track(a: &Arc<dyn TrackRemote>, b: &Arc<dyn TrackRemote>) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

impl Participant {
    /// Builds the participant's connection, answers its offer, and makes it visible in the
    /// conference (reserved by the caller). The answer is emitted before any candidate.
    pub(crate) async fn create(
        inner: &Arc<Inner>,
        conf: &Arc<Conference>,
        id: &str,
        offer_sdp: &str,
    ) -> Result<Arc<Participant>, SfuError> {
        let handler = Arc::new(Handler {
            me: OnceLock::new(),
        });
        let estimates = Arc::new(sluice_media::estimates::Estimates::new(
            inner.config.bandwidth_initial_kbps * 1000,
        ));
        let pc = build_pc(inner, handler.clone(), estimates.clone()).await?;
        let p = Arc::new(Participant {
            id: id.to_owned(),
            conference: Arc::downgrade(conf),
            conference_id: conf.id.clone(),
            inner: Arc::downgrade(inner),
            pc: pc.clone(),
            neg: tokio::sync::Mutex::new(Negotiation::default()),
            legs: Mutex::new(HashMap::new()),
            published: Mutex::new(Vec::new()),
            screenshare_streams: Mutex::new(HashSet::new()),
            dc: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            gate: Mutex::new(CandidateGate::default()),
            first_mid: Mutex::new(None),
            connected: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            idle_since: Mutex::new(Some(Instant::now())),
            estimates,
            join_clock: Arc::new(JoinClock::start()),
        });
        let _ = handler.me.set(Arc::downgrade(&p));

        let answered: Result<String, SfuError> = async {
            pc.set_remote_description(RTCSessionDescription::offer(offer_sdp.to_owned())?)
                .await
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            let local = pc
                .local_description()
                .await
                .ok_or_else(|| SfuError::WebRtc("no local description after answer".into()))?;
            Ok(local.sdp)
        }
        .await;
        let answer = match answered {
            Ok(a) => a,
            Err(e) => {
                p.removed.store(true, Ordering::Release);
                let _ = pc.close().await;
                return Err(e);
            }
        };
        *p.first_mid.lock().unwrap() = first_mid(&answer);
        conf.activate(id, p.clone());
        info!(conference = %conf.id, participant = %id, "joined");
        p.emit(SfuEventKind::Answer(answer));
        p.open_gate();

        let weak = Arc::downgrade(&p);
        let timeout = inner.config.ice_connect_timeout();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(p) = weak.upgrade()
                && !p.connected.load(Ordering::Acquire)
            {
                warn!(conference = %p.conference_id, participant = %p.id, "ICE did not connect in time");
                // Removal aborts this task: run it on its own.
                tokio::spawn(async move { p.remove(HangupReason::InviteTimeout).await });
            }
        });
        p.track_task(timer);
        Ok(p)
    }

    /// Keeps a task to end on removal; ends it at once when removal already ran.
    fn track_task(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap();
        if self.removed.load(Ordering::Acquire) {
            task.abort();
        } else {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    fn emit(&self, kind: SfuEventKind) {
        if let Some(inner) = self.inner.upgrade() {
            inner.emit(&self.conference_id, &self.id, kind);
        }
    }

    fn local_candidate(&self, c: Option<IceCandidate>) {
        let mut gate = self.gate.lock().unwrap();
        if gate.open {
            drop(gate);
            self.emit(SfuEventKind::LocalCandidate(c));
        } else {
            gate.pending.push(c);
        }
    }

    fn open_gate(&self) {
        let pending = {
            let mut gate = self.gate.lock().unwrap();
            gate.open = true;
            std::mem::take(&mut gate.pending)
        };
        for c in pending {
            self.emit(SfuEventKind::LocalCandidate(c));
        }
    }

    pub(crate) fn leg_count(&self) -> usize {
        self.legs.lock().unwrap().len()
    }

    pub(crate) fn legs_by_kind(&self) -> [usize; 2] {
        let mut n = [0; 2];
        for l in self.legs.lock().unwrap().values() {
            n[l.source.info.kind as usize] += 1;
        }
        n
    }

    pub(crate) fn subscriptions(&self) -> Vec<super::SubscriptionInfo> {
        let mut v: Vec<super::SubscriptionInfo> = self
            .legs
            .lock()
            .unwrap()
            .iter()
            .map(|(t, leg)| super::SubscriptionInfo {
                track: t.clone(),
                layer: leg.layer_rid(),
                temporal_layer: leg.sink.temporal_layer(),
                spatial_layer: leg.sink.spatial_layer(),
                red: leg.sink.red_delivery(),
                paused: leg.sink.paused.load(Ordering::Relaxed)
                    || leg.sink.step.bw_paused.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.track.track_id.cmp(&b.track.track_id));
        v
    }

    /// Replaces the set of this publisher's stream ids that are screenshares, and marks
    /// its published tracks accordingly.
    pub(crate) fn set_screenshare_streams(&self, streams: HashSet<String>) {
        let mut screenshares = self.screenshare_streams.lock().unwrap();
        for t in self.published.lock().unwrap().iter() {
            t.screenshare
                .store(streams.contains(&t.info.track.stream_id), Ordering::Relaxed);
        }
        *screenshares = streams;
    }

    /// The stream ids declared as screenshares, sorted.
    pub(crate) fn screenshare_streams(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .screenshare_streams
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Fits this subscriber's legs into its bandwidth estimate (see `track::allocate`);
    /// `speakers` are the conference's active speakers, loudest first.
    pub(crate) async fn allocate(&self, now: Instant, speakers: &[ParticipantId]) {
        let legs: Vec<Arc<Leg>> = self.legs.lock().unwrap().values().cloned().collect();
        if legs.is_empty() {
            return;
        }
        let clock_ms = now
            .saturating_duration_since(self.join_clock.at)
            .as_millis() as u64
            + 1;
        let probe = super::track::allocate(
            &self.id,
            &legs,
            self.estimates.effective(),
            self.estimates.is_stale(now),
            now,
            clock_ms,
            speakers,
            self.estimates.can_probe.load(Ordering::Relaxed),
        )
        .await;
        self.estimates.probe_bps.store(probe, Ordering::Relaxed);
    }

    /// The subscriber's effective bandwidth estimate (bits/s), 0 while unknown.
    pub(crate) fn estimate(&self) -> u64 {
        self.estimates.effective()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How long the participant has published and subscribed nothing; None while it does.
    pub(crate) fn idle_for(&self) -> Option<std::time::Duration> {
        let busy =
            !self.legs.lock().unwrap().is_empty() || !self.published.lock().unwrap().is_empty();
        let mut idle = self.idle_since.lock().unwrap();
        if busy {
            *idle = None;
            return None;
        }
        let now = Instant::now();
        Some(now.saturating_duration_since(*idle.get_or_insert(now)))
    }

    pub(crate) async fn add_remote_candidate(&self, c: IceCandidate) -> Result<(), SfuError> {
        if c.candidate.trim().is_empty() {
            return Ok(());
        }
        if c.candidate.len() > 1024 {
            return Err(SfuError::BadCandidate(
                "candidate longer than 1024 bytes".into(),
            ));
        }
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                ..Default::default()
            })
            .await
            .map_err(|e| SfuError::BadCandidate(e.to_string()))
    }

    /// Sends a Sluice offer for pending changes, unless one is already out.
    async fn renegotiate(&self, neg: &mut Negotiation) -> Result<(), SfuError> {
        if self.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        if neg.awaiting_answer {
            neg.needs_offer = true;
            return Ok(());
        }
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        let sdp = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| SfuError::WebRtc("no local description after offer".into()))?
            .sdp;
        let mut unsent = std::mem::take(&mut neg.unsent);
        neg.in_flight.append(&mut unsent);
        neg.awaiting_answer = true;
        neg.needs_offer = false;
        self.emit(SfuEventKind::Offer(sdp));
        Ok(())
    }

    pub(crate) async fn remote_description(
        &self,
        desc: SessionDescription,
    ) -> Result<(), SfuError> {
        if desc.sdp.len() > sdp::MAX_SDP_BYTES {
            return Err(SfuError::BadSdp(format!(
                "SDP is {} bytes, above the limit of {}",
                desc.sdp.len(),
                sdp::MAX_SDP_BYTES
            )));
        }
        let mut neg = self.neg.lock().await;
        match desc.kind {
            SdpKind::Answer => {
                if !neg.awaiting_answer {
                    return Err(SfuError::InvalidState(
                        "answer received but no Sluice offer is outstanding".into(),
                    ));
                }
                let answer = RTCSessionDescription::answer(desc.sdp)
                    .map_err(|e| SfuError::BadSdp(e.to_string()))?;
                if let Err(e) = self.pc.set_remote_description(answer).await {
                    // Take the offer back so the next change can be offered afresh.
                    let _ = self
                        .pc
                        .set_local_description(RTCSessionDescription::rollback(None)?)
                        .await;
                    neg.awaiting_answer = false;
                    let mut flight = std::mem::take(&mut neg.in_flight);
                    neg.unsent.append(&mut flight);
                    return Err(SfuError::BadSdp(e.to_string()));
                }
                neg.awaiting_answer = false;
                let legs = std::mem::take(&mut neg.in_flight);
                for leg in legs {
                    if let Err(e) = leg.activate(&*self.pc).await {
                        warn!(participant = %self.id, error = %e, "cannot activate leg");
                    }
                }
                if neg.needs_offer || !neg.unsent.is_empty() {
                    self.renegotiate(&mut neg).await?;
                }
                Ok(())
            }
            SdpKind::Offer => {
                sdp::check_offer(&desc.sdp)?;
                let offer = RTCSessionDescription::offer(desc.sdp)
                    .map_err(|e| SfuError::BadSdp(e.to_string()))?;
                if neg.awaiting_answer {
                    // Glare: Sluice is polite. Roll back, answer, offer the change again.
                    debug!(participant = %self.id, "glare: rolling back the Sluice offer");
                    self.pc
                        .set_local_description(RTCSessionDescription::rollback(None)?)
                        .await?;
                    neg.awaiting_answer = false;
                    let mut flight = std::mem::take(&mut neg.in_flight);
                    flight.append(&mut neg.unsent);
                    neg.unsent = flight;
                    neg.needs_offer = true;
                }
                self.pc
                    .set_remote_description(offer)
                    .await
                    .map_err(|e| SfuError::BadSdp(e.to_string()))?;
                let answer = self.pc.create_answer(None).await?;
                self.pc.set_local_description(answer).await?;
                let sdp = self
                    .pc
                    .local_description()
                    .await
                    .ok_or_else(|| SfuError::WebRtc("no local description after answer".into()))?
                    .sdp;
                self.emit(SfuEventKind::Answer(sdp));
                self.reap_stopped_publications().await;
                if neg.needs_offer || !neg.unsent.is_empty() {
                    self.renegotiate(&mut neg).await?;
                }
                Ok(())
            }
        }
    }

    /// Unpublishes tracks the client stopped sending in its last offer. webrtc-rs does not
    /// end a remote track on renegotiation, so this reads the transceivers' directions.
    async fn reap_stopped_publications(&self) {
        use rtc::rtp_transceiver::RTCRtpTransceiverDirection as Dir;
        let published: Vec<Arc<PublishedTrack>> = self.published.lock().unwrap().clone();
        if published.is_empty() {
            return;
        }
        let mut stopped = Vec::new();
        for t in self.pc.get_transceivers().await {
            let Ok(Some(r)) = t.receiver().await else {
                continue;
            };
            let dir = t.current_direction().await.unwrap_or(Dir::Unspecified);
            if matches!(dir, Dir::Recvonly | Dir::Sendrecv) {
                continue;
            }
            if let Some(p) = published.iter().find(|p| p.is_remote(r.track())) {
                stopped.push(p.clone());
            }
        }
        for t in stopped {
            self.unpublish(&t).await;
        }
    }

    pub(crate) async fn subscribe(
        &self,
        sources: Vec<Arc<PublishedTrack>>,
    ) -> Result<(), SfuError> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| SfuError::UnknownParticipant(self.id.clone()))?;
        let mut neg = self.neg.lock().await;
        if self.removed.load(Ordering::Acquire) {
            return Err(SfuError::UnknownParticipant(self.id.clone()));
        }
        let fresh: Vec<Arc<PublishedTrack>> = {
            let legs = self.legs.lock().unwrap();
            let own: Vec<String> = self
                .published
                .lock()
                .unwrap()
                .iter()
                .map(|t| t.info.track.track_id.clone())
                .collect();
            let mut fresh: Vec<Arc<PublishedTrack>> = Vec::new();
            for s in sources {
                if legs.contains_key(&s.info.track)
                    || fresh.iter().any(|f| f.info.track == s.info.track)
                {
                    continue;
                }
                let tid = &s.info.track.track_id;
                if own.contains(tid)
                    || legs.keys().any(|k| &k.track_id == tid)
                    || fresh.iter().any(|f| &f.info.track.track_id == tid)
                {
                    return Err(SfuError::TrackIdConflict(tid.clone()));
                }
                fresh.push(s);
            }
            let limit = inner.config.max_subscriptions_per_participant;
            if legs.len() + fresh.len() > limit {
                return Err(SfuError::TooManySubscriptions(limit));
            }
            fresh
        };
        if fresh.is_empty() {
            return Ok(());
        }
        for source in fresh {
            let key = source.info.track.clone();
            let leg = Leg::create(
                &*self.pc,
                source,
                inner.stats.clone(),
                self.join_clock.clone(),
            )
            .await?;
            self.legs.lock().unwrap().insert(key, leg.clone());
            neg.unsent.push(leg);
        }
        self.renegotiate(&mut neg).await
    }

    pub(crate) async fn unsubscribe(&self, tracks: &[TrackRef]) -> Result<(), SfuError> {
        let removed: Vec<Arc<Leg>> = {
            let mut legs = self.legs.lock().unwrap();
            tracks.iter().filter_map(|t| legs.remove(t)).collect()
        };
        self.drop_legs(removed).await
    }

    /// Ends the subscription to `track` if there is one (its publisher stopped or left).
    async fn drop_leg(&self, track: &TrackRef) {
        let removed: Vec<Arc<Leg>> = self
            .legs
            .lock()
            .unwrap()
            .remove(track)
            .into_iter()
            .collect();
        if let Err(e) = self.drop_legs(removed).await {
            debug!(participant = %self.id, error = %e, "renegotiation after a track ended failed");
        }
    }

    async fn drop_legs(&self, legs: Vec<Arc<Leg>>) -> Result<(), SfuError> {
        if legs.is_empty() {
            return Ok(());
        }
        for leg in &legs {
            leg.stop().await;
        }
        let mut neg = self.neg.lock().await;
        neg.unsent
            .retain(|l| !legs.iter().any(|d| Arc::ptr_eq(l, d)));
        neg.in_flight
            .retain(|l| !legs.iter().any(|d| Arc::ptr_eq(l, d)));
        if self.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        for leg in &legs {
            if let Err(e) = self.pc.remove_track(&leg.sender).await {
                debug!(participant = %self.id, error = %e, "remove_track failed");
            }
        }
        self.renegotiate(&mut neg).await
    }

    /// Sets the rendered size of a subscribed track (0x0 pauses it).
    pub(crate) async fn set_track_size(
        &self,
        track: &TrackRef,
        width: u32,
        height: u32,
    ) -> Result<(), SfuError> {
        let leg = self
            .legs
            .lock()
            .unwrap()
            .get(track)
            .cloned()
            .ok_or_else(|| SfuError::UnknownTrack {
                stream_id: track.stream_id.clone(),
                track_id: track.track_id.clone(),
            })?;
        leg.set_size(width, height).await;
        Ok(())
    }

    pub(crate) async fn send_data(&self, text: &str) -> Result<(), SfuError> {
        if text.len() > MAX_DATA_CHANNEL_MESSAGE {
            return Err(SfuError::DataChannel(format!(
                "message of {} bytes is above the {MAX_DATA_CHANNEL_MESSAGE}-byte limit",
                text.len()
            )));
        }
        let dc = self
            .dc
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| SfuError::DataChannel("no data channel yet".into()))?;
        dc.send_text(text)
            .await
            .map_err(|e| SfuError::DataChannel(e.to_string()))
    }

    /// Registers a track that started flowing and announces it.
    fn publish(&self, track: Arc<PublishedTrack>) -> bool {
        let Some(conf) = self.conference.upgrade() else {
            return false;
        };
        // Lock order: screenshare_streams, then published (as in set_screenshare_streams),
        // so a purpose change cannot miss a track being published.
        let screenshares = self.screenshare_streams.lock().unwrap();
        track.screenshare.store(
            screenshares.contains(&track.info.track.stream_id),
            Ordering::Relaxed,
        );
        if self.removed.load(Ordering::Acquire) || !conf.add_track(track.clone()) {
            return false;
        }
        self.published.lock().unwrap().push(track.clone());
        drop(screenshares);
        info!(
            conference = %self.conference_id, participant = %self.id,
            stream = %track.info.track.stream_id, track = %track.info.track.track_id,
            kind = track.info.kind.as_str(), codec = %track.info.mime_type, "track published"
        );
        self.emit(SfuEventKind::TrackPublished(track.info.clone()));
        true
    }

    /// Unregisters a track and ends every subscription to it. Idempotent.
    async fn unpublish(&self, track: &Arc<PublishedTrack>) {
        self.published
            .lock()
            .unwrap()
            .retain(|t| !Arc::ptr_eq(t, track));
        track.close();
        let Some(conf) = self.conference.upgrade() else {
            return;
        };
        if !conf.remove_track(track) {
            return;
        }
        info!(
            conference = %self.conference_id, participant = %self.id,
            track = %track.info.track.track_id, "track unpublished"
        );
        self.emit(SfuEventKind::TrackUnpublished(track.info.clone()));
        for other in conf.participants() {
            if other.id != self.id {
                other.drop_leg(&track.info.track).await;
            }
        }
    }

    /// Removes the participant and releases everything it holds. Runs once.
    pub(crate) async fn remove(self: &Arc<Self>, reason: HangupReason) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(conference = %self.conference_id, participant = %self.id, reason = reason.as_str(), "leaving");
        if let Some(inner) = self.inner.upgrade() {
            inner.stats.left[reason.index()].fetch_add(1, Ordering::Relaxed);
        }
        let conf = self.conference.upgrade();
        if let Some(conf) = &conf {
            conf.remove_participant(&self.id, self);
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let published: Vec<Arc<PublishedTrack>> =
            std::mem::take(&mut *self.published.lock().unwrap());
        for t in &published {
            self.unpublish(t).await;
        }
        let legs: Vec<Arc<Leg>> = self.legs.lock().unwrap().drain().map(|(_, l)| l).collect();
        for leg in &legs {
            leg.stop().await;
        }
        {
            let mut neg = self.neg.lock().await;
            neg.unsent.clear();
            neg.in_flight.clear();
        }
        let dc = self.dc.lock().unwrap().take();
        if let Some(dc) = dc {
            let _ = dc.close().await;
        }
        if let Err(e) = self.pc.close().await {
            debug!(participant = %self.id, error = %e, "closing the peer connection");
        }
        if let (Some(conf), Some(inner)) = (conf, self.inner.upgrade()) {
            inner.drop_if_empty(&conf);
        }
        self.emit(SfuEventKind::Left(reason));
    }
}

/// Reads one remote track: registers it at its first packet, forwards its packets, and
/// unregisters it when it ends.
async fn publish_loop(p: Weak<Participant>, remote: Arc<dyn TrackRemote>) {
    let kind = match remote.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        RtpCodecKind::Video => MediaKind::Video,
        _ => return,
    };
    let mut published: Option<Arc<PublishedTrack>> = None;
    // Set when the track could not be registered (duplicate id): read and discard.
    let mut refused = false;
    while let Some(evt) = remote.poll().await {
        match evt {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                if let Some(t) = &published {
                    t.forward(pkt, Instant::now());
                }
            }
            TrackRemoteEvent::OnOpen(init) => {
                let layer = Layer {
                    rid: init.rid.clone(),
                    ssrc: init.ssrc,
                };
                if let Some(t) = &published {
                    t.add_layer(layer);
                    continue;
                }
                if refused {
                    continue;
                }
                let Some(part) = p.upgrade() else { return };
                let Some(inner) = part.inner.upgrade() else {
                    return;
                };
                let Some(mut codec) = remote.codec(init.ssrc).await else {
                    warn!(participant = %part.id, ssrc = init.ssrc, "remote track without a codec");
                    refused = true;
                    continue;
                };
                let mut exts = Vec::new();
                let mut codecs = Vec::new();
                for r in part.pc.get_receivers().await {
                    if same_track(r.track(), &remote) {
                        if let Ok(params) = r.get_parameters().await {
                            exts = params
                                .rtp_parameters
                                .header_extensions
                                .iter()
                                .map(|e| (e.id, e.uri.clone()))
                                .collect();
                            codecs = params.rtp_parameters.codecs;
                        }
                        break;
                    }
                }
                let SourceCodecs { media_pts, red } = match source_codecs(&mut codec, &codecs) {
                    Ok(found) => found,
                    Err(why) => {
                        warn!(participant = %part.id, ssrc = init.ssrc, "{why}; track ignored");
                        refused = true;
                        continue;
                    }
                };
                let info = TrackInfo {
                    publisher: part.id.clone(),
                    track: TrackRef {
                        stream_id: remote.stream_id().await,
                        track_id: remote.track_id().await,
                    },
                    kind,
                    mime_type: codec.mime_type.clone(),
                };
                let track = Arc::new(PublishedTrack::new(
                    info,
                    codec,
                    SourceNegotiation {
                        exts,
                        media_pts,
                        red,
                    },
                    remote.clone(),
                    layer,
                    inner.config.keyframe_request_min_interval(),
                    inner.stats.clone(),
                ));
                if part.publish(track.clone()) {
                    published = Some(track);
                } else {
                    warn!(
                        participant = %part.id, track = %track.info.track.track_id,
                        "a track with this stream and track id is already published; ignoring it"
                    );
                    refused = true;
                }
            }
            TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
            _ => {}
        }
    }
    if let (Some(t), Some(part)) = (published, p.upgrade()) {
        part.unpublish(&t).await;
    }
}

/// The payload type Sluice offers RED (RFC 2198 redundant Opus) at when it offers first.
const RED_PAYLOAD_TYPE: u8 = 63;

/// The track's codec and the payload types it is forwarded from, given the codec of its
/// first packet (`codec`) and the receiver's negotiated `codecs`: the codec's payload
/// types, and the RED that carries it, if negotiated, as `(RED payload type, block payload
/// type)`. A track whose first packet was RED gets the codec RED carries (`codec` is
/// replaced): legs negotiate that codec, and RED beside it when they can.
fn source_codecs(
    codec: &mut RTCRtpCodec,
    codecs: &[RTCRtpCodecParameters],
) -> Result<SourceCodecs, String> {
    let is_red = |c: &RTCRtpCodec| {
        c.mime_type
            .eq_ignore_ascii_case(super::codec::MIME_TYPE_RED)
    };
    if is_red(codec) {
        let inner = super::codec::red_block_payload_type(&codec.sdp_fmtp_line)
            .and_then(|pt| {
                codecs
                    .iter()
                    .find(|c| c.payload_type == pt && !is_red(&c.rtp_codec))
            })
            .ok_or_else(|| {
                format!(
                    "RED track whose fmtp {:?} names no single negotiated codec",
                    codec.sdp_fmtp_line
                )
            })?;
        *codec = inner.rtp_codec.clone();
    }
    let media_pts: Vec<u8> = codecs
        .iter()
        .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type))
        .map(|c| c.payload_type)
        .collect();
    let red = codecs.iter().find_map(|c| {
        let block = super::codec::red_block_payload_type(&c.rtp_codec.sdp_fmtp_line)?;
        (is_red(&c.rtp_codec) && media_pts.contains(&block)).then_some((c.payload_type, block))
    });
    let mut pts = media_pts;
    if let Some((red_pt, _)) = red {
        pts.push(red_pt);
    }
    Ok(SourceCodecs {
        media_pts: pts,
        red,
    })
}

/// What [`source_codecs`] found: see [`SourceNegotiation`]'s fields of the same names.
#[derive(Debug, PartialEq)]
struct SourceCodecs {
    media_pts: Vec<u8>,
    red: Option<(u8, u8)>,
}

/// Reads the participant's data channel and turns its messages into events.
async fn data_channel_loop(p: Weak<Participant>, dc: Arc<dyn DataChannel>) {
    while let Some(evt) = dc.poll().await {
        let Some(part) = p.upgrade() else { return };
        match evt {
            DataChannelEvent::OnOpen => part.emit(SfuEventKind::DataChannelOpen),
            DataChannelEvent::OnMessage(msg) => {
                let refusal = if !msg.is_string {
                    Some("binary data-channel messages are not accepted".to_owned())
                } else if msg.data.len() > MAX_DATA_CHANNEL_MESSAGE {
                    Some(format!(
                        "message of {} bytes is above the {MAX_DATA_CHANNEL_MESSAGE}-byte limit",
                        msg.data.len()
                    ))
                } else {
                    None
                };
                let text = match refusal {
                    Some(r) => Err(r),
                    None => String::from_utf8(msg.data.to_vec())
                        .map_err(|_| "data-channel text is not UTF-8".to_owned()),
                };
                match text {
                    Ok(text) => part.emit(SfuEventKind::DataChannelMessage(text)),
                    Err(reason) => {
                        warn!(participant = %part.id, bytes = msg.data.len(), %reason, "refusing a data-channel message");
                        if let Some(inner) = part.inner.upgrade() {
                            inner
                                .stats
                                .data_channel_messages_refused
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        part.emit(SfuEventKind::DataChannelRefused(reason));
                    }
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(mime: &str, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: pt,
        }
    }

    #[test]
    fn a_track_whose_first_packet_was_red_gets_the_codec_red_carries() {
        // As a browser that prefers RED negotiates it: RED first, Opus beside it.
        let negotiated = [
            c("audio/red", "109/109", 63),
            c("audio/opus", "minptime=10;useinbandfec=1", 109),
            c("audio/PCMU", "", 0),
        ];
        let mut codec = negotiated[0].rtp_codec.clone();
        let found = source_codecs(&mut codec, &negotiated).unwrap();
        assert_eq!(codec.mime_type, "audio/opus");
        assert_eq!(found.media_pts, vec![109, 63]);
        assert_eq!(found.red, Some((63, 109)));
        // The same track seen from a plain Opus first packet.
        let mut codec = negotiated[1].rtp_codec.clone();
        assert_eq!(
            source_codecs(&mut codec, &negotiated).unwrap(),
            SourceCodecs {
                media_pts: vec![109, 63],
                red: Some((63, 109))
            }
        );
    }

    #[test]
    fn red_over_another_codec_is_not_the_tracks() {
        let negotiated = [
            c("audio/opus", "", 111),
            c("audio/red", "0/0", 63),
            c("audio/PCMU", "", 0),
        ];
        let mut codec = negotiated[0].rtp_codec.clone();
        assert_eq!(
            source_codecs(&mut codec, &negotiated).unwrap(),
            SourceCodecs {
                media_pts: vec![111],
                red: None
            }
        );
        // RED naming a payload type nobody negotiated: refused, with the reason.
        let mut codec = c("audio/red", "100/100", 63).rtp_codec;
        let err = source_codecs(&mut codec, &[c("audio/red", "100/100", 63)]).unwrap_err();
        assert!(err.contains("100/100"), "{err}");
    }
}
