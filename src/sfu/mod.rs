//! The media core: conferences, participants, forwarding, RTCP.
//!
//! Nothing here knows Matrix. The seam to the signaling world is small:
//! commands in ([`Sfu::join`], which returns the answer, [`Sfu::add_remote_candidate`],
//! [`Sfu::remote_description`], [`Sfu::subscribe`], [`Sfu::unsubscribe`], [`Sfu::send_data`],
//! [`Sfu::leave`]) and events out ([`SfuEvent`]), each participant's in order to the
//! [`EventSink`] its front end gave at the join.
//!
//! Each participant has exactly one peer connection that both publishes and subscribes.
//! A publisher track's packets are fanned out by one forwarder task to per-subscriber
//! *legs*: for each, the forwarder rewrites a copy of the packet for what that leg
//! negotiated (see [`rewrite`]) and hands it to the subscriber's connection without
//! waiting.

pub mod bwe;
mod conference;
mod events;
mod housekeeping;
mod participant;
pub mod probe;
pub mod rtcp;
pub mod sdp;
mod track;

pub use sluice_media::{
    ConferenceId, HangupReason, ParticipantId, RedDelivery, TrackInfo, TrackRef,
};
pub use sluice_media::{
    alloc, codec, estimates, keyframe, layers, rewrite, select, source, speakers, stats,
};

use crate::config::SfuConfig;
use conference::Conference;
use participant::Participant;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

pub use events::{
    DataChannelPacket, DataChannelText, DataChannels, EventSink, IceCandidate, JoinOptions,
    MAX_DATA_CHANNELS, NeededLayers, OfferMode, SdpKind, SessionDescription, SfuEvent,
    SfuEventKind,
};
pub use participant::ConnectionQuality;
pub use sluice_media::layers::{Layer, LayerState, choose_layer};
pub use sluice_media::quality::{LinkSample, Quality};
pub use speakers::Speaker;
pub use stats::{DropReason, MediaKind, Stats};

/// A refused command. [`SfuError::code`] is stable and suitable for clients and metrics.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// The SDP is malformed, empty or too large.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// The offer has no media or data channel section.
    #[error("the offer has no media sections")]
    NoMedia,
    /// No media section offers a codec Sluice forwards.
    #[error("no supported codec in the offer ({0})")]
    UnsupportedCodec(String),
    /// A participant with this id is already in the conference.
    #[error("participant {0} is already in the conference")]
    ParticipantExists(ParticipantId),
    /// No such participant in the conference.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// No such track is published in the conference.
    #[error("unknown track {stream_id}/{track_id}")]
    UnknownTrack {
        /// Stream id asked for.
        stream_id: String,
        /// Track id asked for.
        track_id: String,
    },
    /// The subscription would put two tracks with one id on one connection.
    #[error("track id {0} is already used on this connection")]
    TrackIdConflict(String),
    /// A participant asked for its own track.
    #[error("cannot subscribe to one's own track {0}")]
    OwnTrack(String),
    /// The conference has reached its participant limit.
    #[error("the conference is full")]
    ConferenceFull,
    /// The instance has reached its conference limit.
    #[error("the server is full")]
    ServerFull,
    /// The instance is draining: no new conferences.
    #[error("the server is draining")]
    Draining,
    /// Too many subscriptions for one participant.
    #[error("too many subscriptions (limit {0})")]
    TooManySubscriptions(usize),
    /// A description arrived in a state that does not expect it.
    #[error("invalid signaling state: {0}")]
    InvalidState(String),
    /// A malformed ICE candidate.
    #[error("bad ICE candidate: {0}")]
    BadCandidate(String),
    /// A data-channel message over the size limit, or the channel is not open.
    #[error("data channel: {0}")]
    DataChannel(String),
    /// The data channel's send buffer holds more than it may: the message is dropped.
    #[error("the data channel's send buffer holds {0} bytes; message dropped")]
    DataChannelBacklog(usize),
    /// webrtc reported an error.
    #[error("webrtc: {0}")]
    WebRtc(String),
}

impl SfuError {
    /// A stable, short code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            SfuError::BadSdp(_) => "bad_sdp",
            SfuError::NoMedia => "no_media",
            SfuError::UnsupportedCodec(_) => "unsupported_codec",
            SfuError::ParticipantExists(_) => "participant_exists",
            SfuError::UnknownParticipant(_) => "unknown_participant",
            SfuError::UnknownTrack { .. } => "unknown_track",
            SfuError::TrackIdConflict(_) => "track_id_conflict",
            SfuError::OwnTrack(_) => "own_track",
            SfuError::ConferenceFull => "conference_full",
            SfuError::ServerFull => "server_full",
            SfuError::Draining => "draining",
            SfuError::TooManySubscriptions(_) => "too_many_subscriptions",
            SfuError::InvalidState(_) => "invalid_state",
            SfuError::BadCandidate(_) => "bad_candidate",
            SfuError::DataChannel(_) => "data_channel",
            SfuError::DataChannelBacklog(_) => "data_channel_backlog",
            SfuError::WebRtc(_) => "webrtc",
        }
    }
}

impl From<webrtc::error::Error> for SfuError {
    fn from(e: webrtc::error::Error) -> Self {
        SfuError::WebRtc(e.to_string())
    }
}

/// Counts of what the instance holds, for tests, metrics and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SfuSnapshot {
    /// Live conferences.
    pub conferences: usize,
    /// Participants across all conferences.
    pub participants: usize,
    /// Published tracks across all conferences.
    pub published_tracks: usize,
    /// Subscriber legs across all conferences.
    pub subscriptions: usize,
}

/// Per-kind counts and conference sizes, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SfuDetail {
    /// Published tracks by kind (audio, video).
    pub published: [usize; 2],
    /// Subscriber legs by kind (audio, video).
    pub subscribed: [usize; 2],
    /// Participants per conference.
    pub conference_sizes: Vec<usize>,
}

/// Bandwidth allocation across the instance, for metrics.
#[derive(Debug, Clone, Default)]
pub struct AllocationDetail {
    /// Effective estimates (bits/s) of participants that have one.
    pub estimates: Vec<u64>,
    /// Participants by estimate source: send-side (TWCC), REMB, none.
    pub sources: [usize; 3],
    /// Legs receiving each simulcast layer, by RID class (q/h/f/other).
    pub layers: [usize; 4],
    /// Legs receiving fewer temporal layers than the publisher sends, by the highest
    /// temporal layer they receive (0, 1, 2).
    pub temporal_layers: [usize; 3],
}

/// A participant as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantInfo {
    /// Participant id.
    pub id: ParticipantId,
    /// Whether ICE/DTLS connected.
    pub connected: bool,
    /// Its effective bandwidth estimate in bits/s (the lower of the send-side GCC estimate
    /// and its REMB); 0 while unknown.
    pub estimate_bps: u64,
    /// Where the estimate comes from: `twcc`, `remb` or `none`.
    pub estimate_source: &'static str,
    /// Tracks it publishes.
    pub published: Vec<TrackInfo>,
    /// Stream ids it declared as screenshares (see [`Sfu::set_screenshare_streams`]),
    /// sorted.
    pub screenshare_streams: Vec<String>,
    /// Tracks it receives.
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// One subscription as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionInfo {
    /// The forwarded track.
    pub track: TrackRef,
    /// The RID of the simulcast layer the subscriber receives now (None: the only stream,
    /// or nothing received yet).
    pub layer: Option<String>,
    /// The RID of the layer it switches to at that layer's next keyframe (None: no switch
    /// pending).
    pub switching_to: Option<String>,
    /// The highest temporal layer id the subscriber receives when that is fewer than
    /// the publisher sends (a lower frame rate: the allocator's step below a layer's full
    /// rate); None: all of them.
    pub temporal_layer: Option<u8>,
    /// The highest spatial layer id of an SVC stream the subscriber receives when that is
    /// fewer than the publisher sends (a lower resolution); None: all of them.
    pub spatial_layer: Option<u8>,
    /// Paused: the subscriber's tile is 0x0, or not even the lowest layer fits its
    /// bandwidth estimate.
    pub paused: bool,
    /// How the subscriber receives the publisher's RED (redundant audio); None: the
    /// publisher's track is not sent in RED (video, or plain Opus).
    pub red: Option<RedDelivery>,
}

/// A conference as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConferenceInfo {
    /// Conference id.
    pub id: ConferenceId,
    /// Its participants.
    pub participants: Vec<ParticipantInfo>,
}

/// Hands out UDP ports from the configured range, round robin; the seam where a
/// single-port mode will plug in.
#[derive(Debug)]
pub(crate) struct PortAllocator {
    range: Option<(u16, u16)>,
    next: AtomicU32,
}

impl PortAllocator {
    fn new(range: Option<(u16, u16)>) -> Self {
        Self {
            range,
            next: AtomicU32::new(0),
        }
    }

    /// Ports to try, in order: the whole range starting at the next one, or just `0`.
    fn candidates(&self) -> Vec<u16> {
        match self.range {
            None => vec![0],
            Some((lo, hi)) => {
                let len = (hi - lo) as u32 + 1;
                let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
                (0..len).map(|i| lo + ((start + i) % len) as u16).collect()
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: SfuConfig,
    pub(crate) conferences: Mutex<HashMap<ConferenceId, Arc<Conference>>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) ports: PortAllocator,
    pub(crate) draining: std::sync::atomic::AtomicBool,
    speaker_task: std::sync::OnceLock<()>,
}

impl Inner {
    /// Every live conference (a snapshot of the registry).
    pub(crate) fn all_conferences(&self) -> Vec<Arc<Conference>> {
        self.conferences.lock().unwrap().values().cloned().collect()
    }

    fn conference(&self, id: &str) -> Option<Arc<Conference>> {
        self.conferences.lock().unwrap().get(id).cloned()
    }

    fn participant(&self, conf: &str, pid: &str) -> Result<Arc<Participant>, SfuError> {
        self.conference(conf)
            .and_then(|c| c.participant(pid))
            .ok_or_else(|| SfuError::UnknownParticipant(pid.to_owned()))
    }

    /// Drops an empty conference from the registry.
    pub(crate) fn drop_if_empty(&self, conf: &Arc<Conference>) {
        let mut map = self.conferences.lock().unwrap();
        if conf.is_empty()
            && let Some(existing) = map.get(&conf.id)
            && Arc::ptr_eq(existing, conf)
        {
            map.remove(&conf.id);
        }
    }
}

/// The selective forwarding unit: a registry of conferences. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

impl Sfu {
    /// Creates an SFU.
    pub fn new(config: SfuConfig) -> Sfu {
        let ports = PortAllocator::new(config.port_range());
        let sfu = Sfu {
            inner: Arc::new(Inner {
                config,
                conferences: Mutex::new(HashMap::new()),
                stats: Arc::new(Stats::default()),
                ports,
                draining: std::sync::atomic::AtomicBool::new(false),
                speaker_task: std::sync::OnceLock::new(),
            }),
        };
        // The housekeeping task (speakers, simulcast re-balancing) starts now when a
        // runtime is running, else at the first join.
        if tokio::runtime::Handle::try_current().is_ok() {
            sfu.start_housekeeping();
        }
        sfu
    }

    fn start_housekeeping(&self) {
        self.inner.speaker_task.get_or_init(|| {
            tokio::spawn(housekeeping::run(Arc::downgrade(&self.inner)));
        });
    }

    /// The instance's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.inner.stats.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &SfuConfig {
        &self.inner.config
    }

    /// A participant joins `conference` with an SDP offer; returns Sluice's answer. From
    /// then on the participant's events (local candidates first) go to `sink`: the front
    /// end sends the answer to the client before it hands the client anything from the
    /// sink. On refusal nothing is allocated and nothing is sent to `sink`.
    pub async fn join(
        &self,
        conference: &str,
        participant: &str,
        offer_sdp: &str,
        sink: EventSink,
    ) -> Result<String, SfuError> {
        self.join_with(
            conference,
            participant,
            offer_sdp,
            sink,
            JoinOptions::default(),
        )
        .await
    }

    /// [`Sfu::join`] with options.
    pub async fn join_with(
        &self,
        conference: &str,
        participant: &str,
        offer_sdp: &str,
        sink: EventSink,
        options: JoinOptions,
    ) -> Result<String, SfuError> {
        sdp::check_offer(offer_sdp)?;
        self.start_housekeeping();
        let conf = Conference::reserve(&self.inner, conference, participant)?;
        match Participant::create(&self.inner, &conf, participant, offer_sdp, sink, options).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                conf.release_reservation(participant);
                self.inner.drop_if_empty(&conf);
                Err(e)
            }
        }
    }

    /// A remote ICE candidate for a participant. An empty candidate (end of candidates) is
    /// accepted and ignored.
    pub async fn add_remote_candidate(
        &self,
        conference: &str,
        participant: &str,
        candidate: IceCandidate,
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.add_remote_candidate(candidate).await
    }

    /// A description from the client: its answer to a Sluice offer, or its own renegotiation
    /// offer (glare is resolved with Sluice as the polite side). An answer to a client offer
    /// follows as [`SfuEventKind::Answer`].
    pub async fn remote_description(
        &self,
        conference: &str,
        participant: &str,
        description: SessionDescription,
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.remote_description(description).await
    }

    /// Subscribes a participant to published tracks of the conference. Renegotiates once
    /// for the whole batch; tracks already subscribed are left as they are.
    pub async fn subscribe(
        &self,
        conference: &str,
        participant: &str,
        tracks: &[TrackRef],
    ) -> Result<(), SfuError> {
        let pairs: Vec<(TrackRef, TrackRef)> =
            tracks.iter().map(|t| (t.clone(), t.clone())).collect();
        self.subscribe_as(conference, participant, &pairs).await
    }

    /// [`Sfu::subscribe`], each track under the stream and track id (`msid`) the
    /// subscriber sees it by: `(track, seen as)`.
    pub async fn subscribe_as(
        &self,
        conference: &str,
        participant: &str,
        tracks: &[(TrackRef, TrackRef)],
    ) -> Result<(), SfuError> {
        let conf = self
            .inner
            .conference(conference)
            .ok_or_else(|| SfuError::UnknownParticipant(participant.to_owned()))?;
        let p = conf
            .participant(participant)
            .ok_or_else(|| SfuError::UnknownParticipant(participant.to_owned()))?;
        let mut sources = Vec::with_capacity(tracks.len());
        for (t, seen_as) in tracks {
            let source = conf.track(t).ok_or_else(|| SfuError::UnknownTrack {
                stream_id: t.stream_id.clone(),
                track_id: t.track_id.clone(),
            })?;
            if source.info.publisher == participant {
                return Err(SfuError::OwnTrack(t.track_id.clone()));
            }
            sources.push((source, seen_as.clone()));
        }
        p.subscribe(sources).await
    }

    /// The media section (`mid`) each of a participant's forwarding legs rides, by track.
    pub fn leg_mids(
        &self,
        conference: &str,
        participant: &str,
    ) -> Result<Vec<(TrackRef, String)>, SfuError> {
        Ok(self.inner.participant(conference, participant)?.leg_mids())
    }

    /// Ends subscriptions; unknown ones are ignored. Renegotiates once for the batch.
    pub async fn unsubscribe(
        &self,
        conference: &str,
        participant: &str,
        tracks: &[TrackRef],
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.unsubscribe(tracks).await
    }

    /// Sets the size at which a participant renders a track it subscribes to: the
    /// simulcast layer follows it (switching at the new layer's keyframe); 0x0 pauses
    /// forwarding of that track to it.
    pub async fn set_track_size(
        &self,
        conference: &str,
        participant: &str,
        track: &TrackRef,
        width: u32,
        height: u32,
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.set_track_size(track, width, height).await
    }

    /// Declares which of the participant's streams (by stream id, the SDP `msid` stream)
    /// are screenshares; the rest are cameras. Replaces the earlier set and applies to
    /// tracks published later too. The bandwidth allocator serves a subscriber's
    /// screenshare legs before its camera legs.
    pub fn set_screenshare_streams(
        &self,
        conference: &str,
        participant: &str,
        streams: impl IntoIterator<Item = String>,
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.set_screenshare_streams(streams.into_iter().collect());
        Ok(())
    }

    /// Sends a text message on the participant's data channel.
    pub async fn send_data(
        &self,
        conference: &str,
        participant: &str,
        text: &str,
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.send_data(text).await
    }

    /// Whether a participant's connection has connected (ICE and DTLS) at least once.
    pub fn has_connected(&self, conference: &str, participant: &str) -> bool {
        self.inner
            .participant(conference, participant)
            .is_ok_and(|p| p.is_connected())
    }

    /// Asks a participant's client again for what its negotiation waits on (the media
    /// sections of legs not yet sent, as [`SfuEventKind::NeedOffer`], or a Sluice offer),
    /// if anything: for a front end whose earlier ask may have been lost with a signaling
    /// connection the client then resumed. Nothing pending, nothing asked.
    pub async fn ask_again(&self, conference: &str, participant: &str) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.ask_again().await
    }

    /// A participant's connection quality since the last call for it: the worse way's loss
    /// over the interval, its round trip and jitter, scored and classed (lost while its
    /// connection is interrupted). None before it first connected.
    pub async fn connection_quality(
        &self,
        conference: &str,
        participant: &str,
    ) -> Result<Option<ConnectionQuality>, SfuError> {
        let p = self.inner.participant(conference, participant)?;
        Ok(p.connection_quality().await)
    }

    /// ([`DataChannels::Packets`]) Sends a binary message on the participant's data
    /// channel labelled `label`. Refused with [`SfuError::DataChannelBacklog`] when that
    /// channel's send buffer already holds 1 MiB (a recipient that does not read misses
    /// messages instead of growing Sluice's memory).
    pub async fn send_data_packet(
        &self,
        conference: &str,
        participant: &str,
        label: &str,
        data: &[u8],
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.send_data_packet(label, data).await
    }

    /// Removes a participant, releasing everything it held. [`SfuEventKind::Left`] follows.
    pub async fn leave(
        &self,
        conference: &str,
        participant: &str,
        reason: HangupReason,
    ) -> Result<(), SfuError> {
        let p = self.inner.participant(conference, participant)?;
        p.remove(reason).await;
        Ok(())
    }

    /// Tracks currently published in a conference.
    pub fn published_tracks(&self, conference: &str) -> Vec<TrackInfo> {
        self.inner
            .conference(conference)
            .map(|c| c.track_infos())
            .unwrap_or_default()
    }

    /// Participants of a conference.
    pub fn participants(&self, conference: &str) -> Vec<ParticipantId> {
        self.inner
            .conference(conference)
            .map(|c| c.participant_ids())
            .unwrap_or_default()
    }

    /// Counts of what the instance holds.
    pub fn snapshot(&self) -> SfuSnapshot {
        let confs: Vec<Arc<Conference>> = self.inner.all_conferences();
        let mut s = SfuSnapshot {
            conferences: confs.len(),
            ..Default::default()
        };
        for c in confs {
            let (participants, tracks, subs) = c.counts();
            s.participants += participants;
            s.published_tracks += tracks;
            s.subscriptions += subs;
        }
        s
    }

    /// Starts or stops draining: while draining, joins that would create a conference are
    /// refused ([`SfuError::Draining`]); existing conferences keep admitting members.
    pub fn set_draining(&self, on: bool) {
        self.inner.draining.store(on, Ordering::Relaxed);
    }

    /// Whether the instance is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Whether a conference exists.
    pub fn has_conference(&self, conference: &str) -> bool {
        self.inner.conference(conference).is_some()
    }

    fn conference_list(&self) -> Vec<Arc<Conference>> {
        self.inner.all_conferences()
    }

    /// Subscriber bandwidth estimates and how many legs receive each simulcast layer.
    pub fn allocation_detail(&self) -> AllocationDetail {
        let mut d = AllocationDetail::default();
        for c in self.conference_list() {
            for p in c.participants() {
                let e = p.estimate();
                if e > 0 {
                    d.estimates.push(e);
                }
                d.sources[match p.estimates.source() {
                    "twcc" => 0,
                    "remb" => 1,
                    _ => 2,
                }] += 1;
                for s in p.subscriptions() {
                    if let Some(t) = s.temporal_layer {
                        d.temporal_layers[(t as usize).min(2)] += 1;
                    }
                    let i = match s.layer.as_deref() {
                        Some("q" | "l" | "low" | "0") => 0,
                        Some("h" | "m" | "mid" | "1") => 1,
                        Some("f" | "high" | "hi" | "2") => 2,
                        Some(_) => 3,
                        None => continue,
                    };
                    d.layers[i] += 1;
                }
            }
        }
        d
    }

    /// Per-kind track counts and conference sizes.
    pub fn detail(&self) -> SfuDetail {
        let mut d = SfuDetail::default();
        for c in self.conference_list() {
            let parts = c.participants();
            d.conference_sizes.push(parts.len());
            for t in c.track_infos() {
                d.published[t.kind as usize] += 1;
            }
            for p in parts {
                for (k, n) in p.legs_by_kind().iter().enumerate() {
                    d.subscribed[k] += n;
                }
            }
        }
        d
    }

    /// Every conference with its participants and tracks (no secrets), for the admin API.
    pub fn conferences(&self) -> Vec<ConferenceInfo> {
        let mut out: Vec<ConferenceInfo> = self
            .conference_list()
            .into_iter()
            .map(|c| {
                let tracks = c.track_infos();
                let mut participants: Vec<ParticipantInfo> = c
                    .participants()
                    .into_iter()
                    .map(|p| ParticipantInfo {
                        id: p.id.clone(),
                        connected: p.is_connected(),
                        estimate_bps: p.estimate(),
                        estimate_source: p.estimates.source(),
                        published: tracks
                            .iter()
                            .filter(|t| t.publisher == p.id)
                            .cloned()
                            .collect(),
                        screenshare_streams: p.screenshare_streams(),
                        subscriptions: p.subscriptions(),
                    })
                    .collect();
                participants.sort_by(|a, b| a.id.cmp(&b.id));
                ConferenceInfo {
                    id: c.id.clone(),
                    participants,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Removes participants that have published and subscribed nothing for `idle`:
    /// open-but-idle clients must not hold a conference (or a drain) open.
    pub async fn evict_idle(&self, idle: std::time::Duration) -> usize {
        let mut n = 0;
        for c in self.conference_list() {
            for p in c.participants() {
                if p.idle_for().is_some_and(|d| d >= idle) {
                    p.remove(HangupReason::UserHangup).await;
                    n += 1;
                }
            }
        }
        n
    }

    /// Removes every participant of every conference with `reason`.
    pub async fn shutdown(&self, reason: HangupReason) {
        let confs: Vec<Arc<Conference>> = self.inner.all_conferences();
        for c in confs {
            for p in c.participants() {
                p.remove(reason).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_allocator_walks_the_whole_range_round_robin() {
        let a = PortAllocator::new(Some((40000, 40002)));
        assert_eq!(a.candidates(), vec![40000, 40001, 40002]);
        assert_eq!(a.candidates(), vec![40001, 40002, 40000]);
        let e = PortAllocator::new(None);
        assert_eq!(e.candidates(), vec![0]);
    }

    #[test]
    fn hangup_reasons_use_protocol_strings() {
        assert_eq!(HangupReason::InviteTimeout.as_str(), "invite_timeout");
        assert_eq!(HangupReason::Draining.as_str(), "sluice.draining");
    }
}
