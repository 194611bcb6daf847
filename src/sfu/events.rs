//! The SFU's wire-neutral values: candidates and descriptions, the events a participant's
//! front end receives, and how a participant joins.

use super::{ConferenceId, HangupReason, ParticipantId, Speaker, TrackInfo, TrackRef};
use serde::Serialize;
use tokio::sync::mpsc;

/// An ICE candidate in the W3C `RTCIceCandidateInit` shape used on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IceCandidate {
    /// The `candidate:...` attribute; empty marks the end of candidates.
    pub candidate: String,
    /// The media section id the candidate belongs to.
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The media section index.
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

/// Offer or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpKind {
    /// An SDP offer.
    Offer,
    /// An SDP answer.
    Answer,
}

/// A session description from or to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SessionDescription {
    /// Offer or answer.
    #[serde(rename = "type")]
    pub kind: SdpKind,
    /// The SDP text.
    pub sdp: String,
}

/// Who offers after the join, when a participant's subscriptions change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OfferMode {
    /// Sluice offers ([`SfuEventKind::Offer`]); the client answers (docs/protocol.md).
    #[default]
    Sluice,
    /// Only the client offers (LiveKit's single peer connection): Sluice asks for an offer
    /// with [`SfuEventKind::NeedOffer`] and attaches new legs to the receive-only media
    /// sections the client adds.
    Client,
}

/// What a participant's data channels carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataChannels {
    /// Sluice's own protocol (docs/protocol.md §4): the first channel the client opens, of
    /// UTF-8 text messages ([`SfuEventKind::DataChannelMessage`]); binary ones are refused
    /// and later channels ignored.
    #[default]
    Text,
    /// Every channel the client opens, up to [`MAX_DATA_CHANNELS`], messages binary or
    /// text, handed to the front end with the channel's label
    /// ([`SfuEventKind::DataPacket`]): the LiveKit protocol's `_reliable` and `_lossy`.
    Packets,
}

/// The most data channels a [`DataChannels::Packets`] participant may open; later ones
/// are ignored.
pub const MAX_DATA_CHANNELS: usize = 4;

/// How a participant joins ([`super::Sfu::join_with`]).
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// Who offers after the join.
    pub offers: OfferMode,
    /// What its data channels carry.
    pub data: DataChannels,
}

/// Where a participant's events go: the front end that joined it supplies one at
/// [`super::Sfu::join`] and drains it in order. Several participants may share one.
pub type EventSink = mpsc::UnboundedSender<SfuEvent>;

/// What happened, for one participant of one conference.
#[derive(Debug, Clone, PartialEq)]
pub enum SfuEventKind {
    /// Sluice's answer to a renegotiation offer of the participant (the join's answer is
    /// [`super::Sfu::join`]'s result). It precedes any Sluice offer that follows it.
    Answer(String),
    /// A Sluice-initiated renegotiation offer (subscriptions changed). The client replies
    /// with [`super::Sfu::remote_description`] carrying its answer.
    Offer(String),
    /// ([`OfferMode::Client`]) Subscriptions changed: Sluice needs an offer from the client
    /// with `audio` and `video` more receive-only media sections than it has (0 and 0:
    /// just a new offer, to stop legs that ended).
    NeedOffer {
        /// Receive-only audio sections to add.
        audio: u32,
        /// Receive-only video sections to add.
        video: u32,
    },
    /// A local ICE candidate, `None` at the end of gathering.
    LocalCandidate(Option<IceCandidate>),
    /// ICE and DTLS connected.
    Connected,
    /// The participant's data channel opened.
    DataChannelOpen,
    /// A text message on the participant's data channel.
    DataChannelMessage(DataChannelText),
    /// ([`DataChannels::Packets`]) A message on one of the participant's data channels.
    DataPacket(DataChannelPacket),
    /// A data-channel message was refused: binary, not UTF-8 or above 64 KiB (code
    /// `message_refused`), or over the participant's rate or queue limit (`rate_limited`,
    /// once per run of refused messages). The reason is for the client (`sluice.error`).
    DataChannelRefused {
        /// The `sluice.error` code.
        code: &'static str,
        /// Why, for the client.
        reason: String,
    },
    /// The participant started publishing a track (its first packet arrived).
    TrackPublished(TrackInfo),
    /// The participant stopped publishing a track, or left.
    TrackUnpublished(TrackInfo),
    /// The participant was removed from the conference; every resource it held is released.
    Left(HangupReason),
    /// The conference's active speakers changed (loudest first; empty: nobody speaks).
    /// Sent to every participant of the conference.
    ActiveSpeakers(Vec<Speaker>),
    /// Dynacast ([`sluice_media::dynacast`]): the layers of one of the participant's video
    /// tracks that its subscribers need changed; it may stop sending the others.
    LayersNeeded(NeededLayers),
}

/// The layers of a published video track its subscribers need, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededLayers {
    /// The track.
    pub track: TrackRef,
    /// The RIDs of the layers to send (`None`: a stream without one); empty: none.
    pub rids: Vec<Option<String>>,
}

/// An event of the media core.
#[derive(Debug, Clone, PartialEq)]
pub struct SfuEvent {
    /// The conference.
    pub conference: ConferenceId,
    /// The participant whose sink the event goes to (for track events, the publisher).
    pub participant: ParticipantId,
    /// What happened.
    pub kind: SfuEventKind,
}

/// A data-channel text message on its way to the signaling layer. Until every copy is
/// dropped (the message handled) it counts against its participant's bound on messages
/// waiting to be handled (`sfu.data_channel_queue`), so a participant whose messages are
/// slow to handle cannot pile up an unbounded backlog.
#[derive(Debug, Clone)]
pub struct DataChannelText {
    text: String,
    _waiting: std::sync::Arc<()>,
}

impl DataChannelText {
    /// `text`, counted in `waiting` (whose strong count is the participant's backlog).
    pub(crate) fn new(text: String, waiting: &std::sync::Arc<()>) -> Self {
        Self {
            text,
            _waiting: waiting.clone(),
        }
    }

    /// The message.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A data-channel message of a [`DataChannels::Packets`] participant on its way to the
/// front end, counted against the participant's backlog like [`DataChannelText`].
#[derive(Debug, Clone)]
pub struct DataChannelPacket {
    label: std::sync::Arc<str>,
    data: bytes::Bytes,
    _waiting: std::sync::Arc<()>,
}

impl DataChannelPacket {
    /// `data` from the channel `label`, counted in `waiting`.
    pub(crate) fn new(
        label: std::sync::Arc<str>,
        data: bytes::Bytes,
        waiting: &std::sync::Arc<()>,
    ) -> Self {
        Self {
            label,
            data,
            _waiting: waiting.clone(),
        }
    }

    /// The label of the channel it came on.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The message.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl PartialEq for DataChannelPacket {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.data == other.data
    }
}

impl PartialEq for DataChannelText {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
