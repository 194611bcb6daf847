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
    DataChannels, EventSink, HangupReason, IceCandidate, Inner, JoinOptions, OfferMode,
    ParticipantId, SdpKind, SessionDescription, SfuError, SfuEvent, SfuEventKind, TrackInfo,
    TrackRef,
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

mod connection;
mod datachannel;
mod negotiation;
mod publish;
mod quality;
mod subscribe;

use connection::{Handler, build_pc, first_mid, same_track};
use datachannel::{Allowance, data_channel_loop};
use publish::{RED_PAYLOAD_TYPE, publish_loop};
pub use quality::ConnectionQuality;

/// Largest data-channel message accepted or sent (docs/protocol.md §8).
pub const MAX_DATA_CHANNEL_MESSAGE: usize = 64 * 1024;

/// Most bytes a data channel's send buffer may hold before messages to it are dropped.
pub const MAX_DATA_CHANNEL_BACKLOG: usize = 1024 * 1024;

/// Header extensions Sluice negotiates besides the ones webrtc's defaults register
/// (mid, rid, repaired-rid for video; transport-cc).
const AUDIO_EXTENSIONS: &[&str] = &[MID_EXTENSION, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"];
const VIDEO_EXTENSIONS: &[&str] = &[
    "urn:3gpp:video-orientation",
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension",
];

/// A data channel and its label.
type LabelledChannel = (Arc<str>, Arc<dyn DataChannel>);

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
    /// ([`OfferMode::Client`]) A client offer attached none of the unsent legs: ask again
    /// only when something changes.
    stalled: bool,
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
    /// Its data channels by label, in the order they opened (one in
    /// [`DataChannels::Text`] mode).
    dcs: Mutex<Vec<LabelledChannel>>,
    /// What its data channels carry.
    data: DataChannels,
    /// Its data-channel messages' allowance, over all its channels.
    allowance: Mutex<Allowance>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Where the participant's events go (its front end's).
    sink: EventSink,
    /// Who offers after the join.
    offers: OfferMode,
    first_mid: Mutex<Option<String>>,
    connected: AtomicBool,
    /// Its connection is interrupted (ICE disconnected) after having connected.
    interrupted: AtomicBool,
    /// What its connection had received of it when its quality was last asked.
    received: Mutex<quality::Received>,
    /// Woken once ICE connects: the connect deadline's task then ends.
    connected_now: Arc<tokio::sync::Notify>,
    removed: AtomicBool,
    /// Since when the participant publishes and subscribes nothing (None: it does).
    idle_since: Mutex<Option<Instant>>,
    /// Join time, for the join-to-first-media histogram.
    pub(crate) join_clock: Arc<JoinClock>,
    /// The subscriber's bandwidth estimates (send-side GCC and REMB).
    pub(crate) estimates: Arc<sluice_media::estimates::Estimates>,
}

impl Participant {
    /// Builds the participant's connection, answers its offer, and makes it visible in the
    /// conference (reserved by the caller). Returns the answer; candidates go to `sink`.
    pub(crate) async fn create(
        inner: &Arc<Inner>,
        conf: &Arc<Conference>,
        id: &str,
        offer_sdp: &str,
        sink: EventSink,
        options: JoinOptions,
    ) -> Result<String, SfuError> {
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
            dcs: Mutex::new(Vec::new()),
            data: options.data,
            allowance: Mutex::new(Allowance::new(&inner.config)),
            tasks: Mutex::new(Vec::new()),
            sink,
            offers: options.offers,
            first_mid: Mutex::new(None),
            connected: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            received: Mutex::new(quality::Received::default()),
            connected_now: Arc::new(tokio::sync::Notify::new()),
            removed: AtomicBool::new(false),
            idle_since: Mutex::new(Some(Instant::now())),
            estimates,
            join_clock: Arc::new(JoinClock::start()),
        });
        let _ = handler.me.set(Arc::downgrade(&p));

        // The answer's sections mirror the offer's: its first mid is known now, before
        // the local candidates that setting the answer starts gathering.
        *p.first_mid.lock().unwrap() = first_mid(offer_sdp);
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
            Ok(sdp::tidy_answer(&local.sdp))
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
        conf.activate(id, p.clone());
        info!(conference = %conf.id, participant = %id, "joined");

        let weak = Arc::downgrade(&p);
        let timeout = inner.config.ice_connect_timeout();
        let connected = p.connected_now.clone();
        let timer = tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {}
                _ = connected.notified() => return,
            }
            if let Some(p) = weak.upgrade()
                && !p.connected.load(Ordering::Acquire)
            {
                warn!(conference = %p.conference_id, participant = %p.id, "ICE did not connect in time");
                // Removal aborts this task: run it on its own.
                tokio::spawn(async move { p.remove(HangupReason::InviteTimeout).await });
            }
        });
        p.track_task(timer);
        Ok(answer)
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

    /// Hands an event to the participant's sink (a closed sink drops it: its front end
    /// is gone).
    pub(crate) fn emit(&self, kind: SfuEventKind) {
        let _ = self.sink.send(SfuEvent {
            conference: self.conference_id.clone(),
            participant: self.id.clone(),
            kind,
        });
    }

    fn local_candidate(&self, c: Option<IceCandidate>) {
        self.emit(SfuEventKind::LocalCandidate(c));
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
        let dcs = std::mem::take(&mut *self.dcs.lock().unwrap());
        for (_, dc) in dcs {
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
