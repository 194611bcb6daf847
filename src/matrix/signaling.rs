//! Sessions between clients and the media core: authorization (docs/protocol.md §6), the
//! to-device flow (§3), the data-channel protocol (§4) and stream metadata (§5).
//!
//! Every to-device message from one sender is handled in order by that sender's worker;
//! each session's media-core events are handled in order by its own event loop.

use super::membership::{self, CALL_MEMBER_EVENT, FirstSeen, Membership};
use super::protocol::{self, Body, CallMessage, Rejection, Reply};
use crate::config::MatrixConfig;
use crate::sfu::{
    HangupReason, IceCandidate, MediaKind, SdpKind, Sfu, SfuError, SfuEvent, SfuEventKind,
};
use matrix_sdk::Client;
use matrix_sdk::deserialized_responses::{EncryptionInfo, RawAnySyncOrStrippedState};
use matrix_sdk::ruma::api::client::to_device::send_event_to_device;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::{AnyToDeviceEvent, AnyToDeviceEventContent, StateEventType};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::to_device::DeviceIdOrAllDevices;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, TransactionId, UserId};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

mod admission;
mod datachannel;
mod events;
mod inbox;
mod metadata;
mod outbox;
use outbox::ALL_DEVICES;
mod watch;
pub use watch::{RoomMembership, Verdict, changed_rooms, verdict};

/// Features announced in `sluice.hello`.
pub const FEATURES: &[&str] = &[
    "track_subscription",
    "negotiate",
    "keepalive",
    "active_speaker",
    "simulcast",
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Event types counted in [`SignalingStats::events`].
pub const EVENT_TYPES: [&str; 5] = ["invite", "candidates", "select_answer", "hangup", "other"];
/// Results counted in [`SignalingStats::events`].
pub const EVENT_RESULTS: [&str; 5] = [
    "accepted",
    "refused",
    "bad_request",
    "ignored",
    "rate_limited",
];

fn type_index(event_type: &str) -> usize {
    match event_type {
        "m.call.invite" => 0,
        "m.call.candidates" => 1,
        "m.call.select_answer" => 2,
        "m.call.hangup" | "m.call.reject" => 3,
        _ => 4,
    }
}

/// Counters of the signaling layer.
#[derive(Debug, Default)]
pub struct SignalingStats {
    /// Events by [`EVENT_TYPES`] × [`EVENT_RESULTS`].
    pub events: [[AtomicU64; 5]; 5],
    /// Invites accepted (answered).
    pub invites_accepted: AtomicU64,
    /// Invites refused with a hangup.
    pub invites_refused: AtomicU64,
    /// Messages refused as malformed.
    pub bad_requests: AtomicU64,
    /// Messages dropped: not for Sluice, stale, or unknown.
    pub ignored: AtomicU64,
    /// Messages dropped by the per-sender rate limit.
    pub rate_limited: AtomicU64,
    /// Hangups sent to clients.
    pub hangups_sent: AtomicU64,
    /// Data-channel requests refused with `sluice.error`.
    pub dc_errors: AtomicU64,
}

impl SignalingStats {
    fn record(&self, event_type: &str, result: usize) {
        self.events[type_index(event_type)][result].fetch_add(1, Ordering::Relaxed);
    }
}

const ACCEPTED: usize = 0;
const REFUSED: usize = 1;
const BAD_REQUEST: usize = 2;
const IGNORED: usize = 3;
const RATE_LIMITED: usize = 4;

/// One client device's session with Sluice.
pub struct Session {
    /// Media-core participant id (unique per session).
    pub participant: String,
    /// Media-core conference id: room id + `|` + conf id.
    pub conference: String,
    /// The member.
    pub user_id: OwnedUserId,
    /// The member's device.
    pub device_id: String,
    /// The room of the call.
    pub room_id: OwnedRoomId,
    /// The membership's call id.
    pub conf_id: String,
    /// The client's `call_id` for this peer connection.
    pub call_id: String,
    /// The client's session id.
    pub sender_session_id: String,
    /// Reply encrypted: the client's last message was Olm-encrypted.
    pub encrypted: AtomicBool,
    /// The client ended the session itself: no hangup is sent back.
    client_ended: AtomicBool,
    dc_open: AtomicBool,
    last_pong: Mutex<Instant>,
    /// The client's own stream metadata, by stream id.
    metadata: Mutex<Map<String, Value>>,
    candidates: Mutex<Vec<Option<IceCandidate>>>,
    flush_scheduled: AtomicBool,
    keepalive: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Ordered to-device sends of this session, drained by its own task so a slow
    /// homeserver round trip never holds up other sessions' events.
    outbox: Mutex<Option<mpsc::UnboundedSender<(&'static str, Value)>>>,
    /// The session ended: nothing more is queued after its hangup.
    closed: AtomicBool,
    /// The `error` text of the hangup Sluice sends, when the watch ended the session.
    hangup_error: Mutex<Option<&'static str>>,
}

impl Session {
    fn reply(&self, own_device: &str) -> ReplyOwned {
        ReplyOwned {
            call_id: self.call_id.clone(),
            conf_id: self.conf_id.clone(),
            room_id: Some(self.room_id.to_string()),
            own_device_id: own_device.to_owned(),
            dest_session_id: self.sender_session_id.clone(),
        }
    }
}

/// An owned [`Reply`], for sending from tasks.
#[derive(Debug, Clone)]
struct ReplyOwned {
    call_id: String,
    conf_id: String,
    room_id: Option<String>,
    own_device_id: String,
    dest_session_id: String,
}

impl ReplyOwned {
    fn borrow(&self) -> Reply<'_> {
        Reply {
            call_id: &self.call_id,
            conf_id: &self.conf_id,
            room_id: self.room_id.as_deref(),
            own_device_id: &self.own_device_id,
            dest_session_id: &self.dest_session_id,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Job {
    event_type: String,
    sender: OwnedUserId,
    content: Value,
    raw_len: usize,
    encryption: Option<EncryptionInfo>,
}

/// A refused invite: the hangup reason and the error text for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `reason` of the hangup.
    pub reason: &'static str,
    /// What was wrong, for the `error` field and the log.
    pub error: String,
}

impl Refusal {
    fn unauthorized(error: impl Into<String>) -> Self {
        Refusal {
            reason: "sluice.unauthorized",
            error: error.into(),
        }
    }
}

/// Maps a media-core refusal to a hangup.
pub fn refusal_for(e: &SfuError) -> Refusal {
    let reason = match e {
        SfuError::ConferenceFull => "sluice.conference_full",
        SfuError::ServerFull => "sluice.server_full",
        SfuError::Draining => "sluice.draining",
        SfuError::BadSdp(_) | SfuError::NoMedia | SfuError::UnsupportedCodec(_) => {
            "sluice.bad_request"
        }
        _ => "unknown_error",
    };
    Refusal {
        reason,
        error: e.to_string(),
    }
}

/// The signaling state of one Sluice instance.
pub struct Signaling {
    client: Client,
    sfu: Sfu,
    cfg: MatrixConfig,
    own_user: String,
    own_device: String,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    by_device: Mutex<HashMap<(OwnedUserId, String), String>>,
    workers: Mutex<HashMap<OwnedUserId, mpsc::UnboundedSender<Job>>>,
    buckets: Mutex<HashMap<OwnedUserId, Bucket>>,
    next_session: AtomicU64,
    room_changes: mpsc::UnboundedSender<OwnedRoomId>,
    room_changes_rx: Mutex<Option<mpsc::UnboundedReceiver<OwnedRoomId>>>,
    /// When each call membership was first seen, which bounds its age for focus selection.
    first_seen: Mutex<FirstSeen>,
    /// Counters.
    pub stats: SignalingStats,
}

impl Signaling {
    /// Creates the signaling state for a logged-in client.
    pub fn new(client: Client, sfu: Sfu, cfg: MatrixConfig) -> Arc<Signaling> {
        let (room_changes, rx) = mpsc::unbounded_channel();
        Arc::new(Signaling {
            room_changes,
            room_changes_rx: Mutex::new(Some(rx)),
            first_seen: Mutex::new(FirstSeen::default()),
            own_user: cfg.user_id.clone(),
            own_device: cfg.device_id.clone(),
            client,
            sfu,
            cfg,
            sessions: Mutex::new(HashMap::new()),
            by_device: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            stats: SignalingStats::default(),
        })
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    fn session(&self, participant: &str) -> Option<Arc<Session>> {
        self.sessions.lock().unwrap().get(participant).cloned()
    }

    fn session_of(&self, user: &UserId, device: &str) -> Option<Arc<Session>> {
        let pid = self
            .by_device
            .lock()
            .unwrap()
            .get(&(user.to_owned(), device.to_owned()))
            .cloned()?;
        self.session(&pid)
    }

    fn forget(&self, s: &Session) {
        self.sessions.lock().unwrap().remove(&s.participant);
        let mut by = self.by_device.lock().unwrap();
        let key = (s.user_id.clone(), s.device_id.clone());
        if by.get(&key) == Some(&s.participant) {
            by.remove(&key);
        }
    }
}
