//! Sessions between clients and the media core: authorization (docs/protocol.md §6), the
//! to-device flow (§3), the data-channel protocol (§4) and stream metadata (§5).
//!
//! Every to-device message from one sender is handled in order by that sender's worker;
//! every media-core event is handled in order by [`Signaling::run_sfu_events`].

use super::membership::{self, CALL_MEMBER_EVENT, Membership};
use super::protocol::{self, Body, CallMessage, Rejection, Reply};
use crate::config::MatrixConfig;
use crate::sfu::{
    HangupReason, IceCandidate, MediaKind, SdpKind, SessionDescription, Sfu, SfuError, SfuEvent,
    SfuEventKind, TrackRef,
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
    answered: AtomicBool,
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

    /// Token bucket per sender; false when the event must be dropped.
    fn admit(&self, sender: &UserId) -> bool {
        let rate = self.cfg.signaling_rate_per_sec as f64;
        let burst = self.cfg.signaling_burst as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
        }
        let b = buckets.entry(sender.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Entry point from the sync loop's to-device handler: cheap, never blocks the sync.
    pub fn on_to_device(self: &Arc<Self>, raw: Raw<AnyToDeviceEvent>, enc: Option<EncryptionInfo>) {
        let text = raw.json().get();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Some(event_type) = v.get("type").and_then(Value::as_str) else {
            return;
        };
        if !event_type.starts_with("m.call.") {
            return;
        }
        let Some(sender) = v
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| UserId::parse(s).ok())
        else {
            return;
        };
        if !self.admit(&sender) {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            self.stats.record(event_type, RATE_LIMITED);
            debug!(%sender, event_type, "signaling rate limit: dropped");
            return;
        }
        let job = Job {
            event_type: event_type.to_owned(),
            sender: sender.clone(),
            content: v.get("content").cloned().unwrap_or(Value::Null),
            raw_len: text.len(),
            encryption: enc,
        };
        // Jobs are sent under the workers lock, so a worker retiring under the same lock
        // never strands one.
        let mut workers = self.workers.lock().unwrap();
        let job = match workers.get(&sender) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        workers.insert(sender.clone(), tx);
        tokio::spawn(self.clone().worker(sender, rx));
    }

    async fn worker(self: Arc<Self>, sender: OwnedUserId, mut rx: mpsc::UnboundedReceiver<Job>) {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(job)) => self.handle(job).await,
                Ok(None) => return,
                Err(_) => {
                    // Idle: retire, unless a job raced in.
                    let mut workers = self.workers.lock().unwrap();
                    if rx.is_empty() {
                        workers.remove(&sender);
                        return;
                    }
                }
            }
        }
    }

    async fn handle(&self, job: Job) {
        let msg = match protocol::parse(&job.event_type, &job.content, job.raw_len) {
            Ok(m) => m,
            Err(Rejection::Ignore(why)) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                self.stats.record(&job.event_type, IGNORED);
                debug!(sender = %job.sender, event_type = %job.event_type, why, "ignored");
                return;
            }
            Err(Rejection::BadRequest(why)) => {
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                self.stats.record(&job.event_type, BAD_REQUEST);
                warn!(sender = %job.sender, event_type = %job.event_type, error = %why, "malformed signaling message");
                self.reply_bad_request(&job, &why).await;
                return;
            }
        };
        let encrypted = job.encryption.is_some();
        match &msg.body {
            Body::Invite { .. } => self.on_invite(&job, msg, encrypted).await,
            Body::Candidates(list) => {
                let Some(s) = self.session_of(&job.sender, &msg.device_id) else {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                };
                if s.call_id != msg.call_id || !self.olm_sender_ok(&job, &msg) {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                }
                self.stats.record(&job.event_type, ACCEPTED);
                s.encrypted.store(encrypted, Ordering::Relaxed);
                for c in list {
                    if c.candidate.is_empty() {
                        continue;
                    }
                    if let Err(e) = self
                        .sfu
                        .add_remote_candidate(&s.conference, &s.participant, c.clone())
                        .await
                    {
                        debug!(participant = %s.participant, error = %e, "remote candidate refused");
                    }
                }
            }
            Body::SelectAnswer { selected_party_id } => {
                let Some(s) = self.session_of(&job.sender, &msg.device_id) else {
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                };
                self.stats.record(&job.event_type, ACCEPTED);
                if s.call_id == msg.call_id && selected_party_id != &self.own_device {
                    info!(participant = %s.participant, "client selected another party; dropping the session");
                    s.client_ended.store(true, Ordering::Relaxed);
                    let _ = self
                        .sfu
                        .leave(&s.conference, &s.participant, HangupReason::UserHangup)
                        .await;
                }
            }
            Body::Hangup { reason } => {
                let Some(s) = self.session_of(&job.sender, &msg.device_id) else {
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                };
                let ok = s.call_id == msg.call_id && self.olm_sender_ok(&job, &msg);
                self.stats
                    .record(&job.event_type, if ok { ACCEPTED } else { IGNORED });
                if ok {
                    info!(participant = %s.participant, reason = reason.as_deref().unwrap_or(""), "client hung up");
                    s.client_ended.store(true, Ordering::Relaxed);
                    let _ = self
                        .sfu
                        .leave(&s.conference, &s.participant, HangupReason::UserHangup)
                        .await;
                }
            }
        }
    }

    fn olm_sender_ok(&self, job: &Job, msg: &CallMessage) -> bool {
        match &job.encryption {
            None => true,
            Some(enc) => {
                enc.sender == job.sender
                    && enc.sender_device.as_ref().map(|d| d.as_str())
                        == Some(msg.device_id.as_str())
            }
        }
    }

    async fn reply_bad_request(&self, job: &Job, why: &str) {
        // Reply only when the message names enough to address it.
        let c = &job.content;
        let (Some(call_id), Some(device)) = (
            c.get("call_id").and_then(Value::as_str),
            c.get("device_id")
                .or_else(|| c.get("party_id"))
                .and_then(Value::as_str),
        ) else {
            return;
        };
        if job.event_type != "m.call.invite" {
            return;
        }
        let reply = ReplyOwned {
            call_id: call_id.to_owned(),
            conf_id: c
                .get("conf_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            room_id: c.get("room_id").and_then(Value::as_str).map(str::to_owned),
            own_device_id: self.own_device.clone(),
            dest_session_id: c
                .get("sender_session_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
        let content = reply.borrow().hangup("sluice.bad_request", Some(why));
        self.send(
            &job.sender,
            device,
            "m.call.hangup",
            content,
            job.encryption.is_some(),
        )
        .await;
        self.stats.hangups_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the call memberships of a room from the client's state store.
    async fn memberships(&self, room_id: &RoomId) -> Vec<Membership> {
        let Some(room) = self.client.get_room(room_id) else {
            return Vec::new();
        };
        let Ok(states) = room
            .get_state_events(StateEventType::from(CALL_MEMBER_EVENT))
            .await
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for st in states {
            let RawAnySyncOrStrippedState::Sync(raw) = st else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(raw.json().get()) else {
                continue;
            };
            let sender = v.get("sender").and_then(Value::as_str).unwrap_or("");
            let ts = v
                .get("origin_server_ts")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let content = v.get("content").cloned().unwrap_or(Value::Null);
            out.extend(membership::parse(sender, &content, ts));
        }
        out
    }

    /// Authorizes an invite per docs/protocol.md §6; returns the room of the call.
    async fn authorize(
        &self,
        sender: &UserId,
        msg: &CallMessage,
        job: &Job,
    ) -> Result<OwnedRoomId, Refusal> {
        let server = sender.server_name().as_str();
        if !self.cfg.allowed_homeservers.is_empty()
            && !self.cfg.allowed_homeservers.iter().any(|h| h == server)
        {
            return Err(Refusal::unauthorized(format!(
                "homeserver {server} is not allowed"
            )));
        }
        if !self.olm_sender_ok(job, msg) {
            return Err(Refusal::unauthorized(
                "the Olm sender does not match the message's sender and device_id",
            ));
        }
        let now = now_ms();
        let room_id = match &msg.room_id {
            Some(r) => RoomId::parse(r).map_err(|_| Refusal {
                reason: "sluice.bad_request",
                error: "`room_id` is not a room id".into(),
            })?,
            None => {
                let mut found = None;
                for room in self.client.joined_rooms() {
                    let ms = self.memberships(room.room_id()).await;
                    if ms.iter().any(|m| {
                        m.user_id == sender.as_str()
                            && m.device_id == msg.device_id
                            && m.conf_id == msg.conf_id
                            && m.is_valid(now)
                    }) {
                        found = Some(room.room_id().to_owned());
                        break;
                    }
                }
                found.ok_or_else(|| {
                    Refusal::unauthorized("no room has a call membership for this device")
                })?
            }
        };
        let Some(room) = self.client.get_room(&room_id) else {
            return Err(Refusal::unauthorized("Sluice is not in that room"));
        };
        let joined = matches!(
            room.get_member_no_sync(sender).await,
            Ok(Some(m)) if *m.membership() == MembershipState::Join
        );
        if !joined {
            return Err(Refusal::unauthorized(
                "the sender is not joined to the room",
            ));
        }
        let ms = self.memberships(&room_id).await;
        if !ms.iter().any(|m| {
            m.user_id == sender.as_str()
                && m.device_id == msg.device_id
                && m.conf_id == msg.conf_id
                && m.is_valid(now)
        }) {
            return Err(Refusal::unauthorized(
                "no valid call membership for this device and call",
            ));
        }
        match membership::active_focus(&ms, &msg.conf_id, now) {
            Some(f) if f.is(&self.own_user, &self.own_device) => {}
            _ => {
                return Err(Refusal::unauthorized(
                    "the call's focus is not this Sluice instance",
                ));
            }
        }
        Ok(room_id)
    }

    async fn on_invite(&self, job: &Job, msg: CallMessage, encrypted: bool) {
        let Body::Invite { sdp, metadata, .. } = &msg.body else {
            return;
        };
        let room_id = match self.authorize(&job.sender, &msg, job).await {
            Ok(r) => r,
            Err(r) => return self.refuse_invite(job, &msg, encrypted, r).await,
        };
        let conference = format!("{}|{}", room_id, msg.conf_id);
        // Replace an earlier session of the same device (no ghosts).
        if let Some(old) = self.session_of(&job.sender, &msg.device_id) {
            if old.sender_session_id == msg.sender_session_id && old.call_id == msg.call_id {
                debug!(participant = %old.participant, "duplicate invite ignored");
                return;
            }
            info!(participant = %old.participant, "new invite replaces the session");
            old.client_ended.store(true, Ordering::Relaxed);
            self.forget(&old);
            let _ = self
                .sfu
                .leave(&old.conference, &old.participant, HangupReason::UserHangup)
                .await;
        }
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let participant = format!("{}|{}|{n}", job.sender, msg.device_id);
        let session = Arc::new(Session {
            participant: participant.clone(),
            conference: conference.clone(),
            user_id: job.sender.clone(),
            device_id: msg.device_id.clone(),
            room_id,
            conf_id: msg.conf_id.clone(),
            call_id: msg.call_id.clone(),
            sender_session_id: msg.sender_session_id.clone(),
            encrypted: AtomicBool::new(encrypted),
            answered: AtomicBool::new(false),
            client_ended: AtomicBool::new(false),
            dc_open: AtomicBool::new(false),
            last_pong: Mutex::new(Instant::now()),
            metadata: Mutex::new(metadata.clone()),
            candidates: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
            keepalive: Mutex::new(None),
            outbox: Mutex::new(None),
            closed: AtomicBool::new(false),
            hangup_error: Mutex::new(None),
        });
        self.sessions
            .lock()
            .unwrap()
            .insert(participant.clone(), session.clone());
        self.by_device.lock().unwrap().insert(
            (job.sender.clone(), msg.device_id.clone()),
            participant.clone(),
        );
        if let Err(e) = self.sfu.join(&conference, &participant, sdp).await {
            self.forget(&session);
            return self
                .refuse_invite(job, &msg, encrypted, refusal_for(&e))
                .await;
        }
        self.apply_purposes(&session);
        // The watch learns the new session's membership expiry (and catches a kick that
        // raced the invite).
        self.room_changed(session.room_id.clone());
        self.stats.invites_accepted.fetch_add(1, Ordering::Relaxed);
        self.stats.record("m.call.invite", ACCEPTED);
        info!(conference = %conference, participant = %participant, encrypted, "invite accepted");
    }

    async fn refuse_invite(&self, job: &Job, msg: &CallMessage, encrypted: bool, r: Refusal) {
        self.stats.invites_refused.fetch_add(1, Ordering::Relaxed);
        self.stats.record("m.call.invite", REFUSED);
        info!(sender = %job.sender, device = %msg.device_id, reason = r.reason, error = %r.error, "invite refused");
        let reply = ReplyOwned {
            call_id: msg.call_id.clone(),
            conf_id: msg.conf_id.clone(),
            room_id: msg.room_id.clone(),
            own_device_id: self.own_device.clone(),
            dest_session_id: msg.sender_session_id.clone(),
        };
        let content = reply.borrow().hangup(r.reason, Some(&r.error));
        // An encrypted refusal goes to the device that really sent the invite, which may
        // not be the one the content claims.
        let device = job
            .encryption
            .as_ref()
            .and_then(|e| e.sender_device.as_ref())
            .map(|d| d.to_string())
            .unwrap_or_else(|| msg.device_id.clone());
        self.send(&job.sender, &device, "m.call.hangup", content, encrypted)
            .await;
        self.stats.hangups_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a to-device event, Olm-encrypted when `encrypted`.
    async fn send(
        &self,
        user: &UserId,
        device: &str,
        event_type: &str,
        content: Value,
        encrypted: bool,
    ) {
        let raw: Raw<AnyToDeviceEventContent> = match Raw::new(&content) {
            Ok(r) => r.cast_unchecked(),
            Err(e) => {
                warn!(error = %e, "cannot serialize to-device content");
                return;
            }
        };
        if encrypted {
            let enc = self.client.encryption();
            let device_id: matrix_sdk::ruma::OwnedDeviceId = device.into();
            let mut found = enc.get_device(user, &device_id).await.ok().flatten();
            if found.is_none() {
                let _ = enc.request_user_identity(user).await;
                found = enc.get_device(user, &device_id).await.ok().flatten();
            }
            let Some(d) = found else {
                warn!(%user, device, event_type, "cannot encrypt: recipient device unknown");
                return;
            };
            if let Err(e) = enc
                .encrypt_and_send_raw_to_device(vec![&d], event_type, raw, Default::default())
                .await
            {
                warn!(%user, device, event_type, error = %e, "encrypted to-device send failed");
            }
            return;
        }
        let mut per_device = BTreeMap::new();
        per_device.insert(DeviceIdOrAllDevices::DeviceId(device.into()), raw);
        let mut messages = BTreeMap::new();
        messages.insert(user.to_owned(), per_device);
        let req = send_event_to_device::v3::Request::new_raw(
            event_type.into(),
            TransactionId::new(),
            messages,
        );
        if let Err(e) = self.client.send(req).await {
            warn!(%user, device, event_type, error = %e, "to-device send failed");
        }
    }

    /// Queues a to-device event for the session; sent in order by the session's task,
    /// encrypted when the client's last message was.
    fn send_to_session(
        self: &Arc<Self>,
        s: &Arc<Session>,
        event_type: &'static str,
        content: Value,
    ) {
        if s.closed.load(Ordering::Acquire) && event_type != "m.call.hangup" {
            return;
        }
        let mut outbox = s.outbox.lock().unwrap();
        let tx = outbox.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Value)>();
            let this = self.clone();
            let s = s.clone();
            tokio::spawn(async move {
                while let Some((t, c)) = rx.recv().await {
                    let enc = s.encrypted.load(Ordering::Relaxed);
                    this.send(&s.user_id, &s.device_id, t, c, enc).await;
                }
            });
            tx
        });
        let _ = tx.send((event_type, content));
    }

    async fn send_dc(&self, s: &Session, kind: &str, content: Value) {
        let text = json!({"type": kind, "content": content}).to_string();
        if let Err(e) = self
            .sfu
            .send_data(&s.conference, &s.participant, &text)
            .await
        {
            debug!(participant = %s.participant, error = %e, kind, "data-channel send failed");
        }
    }

    /// `m.call.negotiate` on the data channel, with the metadata the client should see.
    async fn send_negotiate(&self, s: &Session, kind: &str, sdp: &str) {
        let content = json!({"description": {"type": kind, "sdp": sdp},
                             "sdp_stream_metadata": self.metadata_for(s)});
        self.send_dc(s, "m.call.negotiate", content).await;
    }

    async fn send_error(&self, s: &Session, code: &str, message: &str, request_type: Option<&str>) {
        let mut c = json!({"code": code, "message": message});
        if let Some(t) = request_type {
            c["request_type"] = json!(t);
        }
        self.send_dc(s, "sluice.error", c).await;
    }

    /// Tells the media core which of the session's streams are screenshares (the
    /// `purpose` of its stream metadata, docs/protocol.md §5), for the bandwidth allocator.
    fn apply_purposes(&self, s: &Session) {
        let streams: Vec<String> = s
            .metadata
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.get("purpose").and_then(Value::as_str) == Some("m.screenshare"))
            .map(|(id, _)| id.clone())
            .collect();
        if let Err(e) = self
            .sfu
            .set_screenshare_streams(&s.conference, &s.participant, streams)
        {
            debug!(participant = %s.participant, error = %e, "stream purposes not applied");
        }
    }

    /// Stream metadata of everyone but `viewer` in its conference: the streams their
    /// clients declared, restricted to tracks actually published.
    fn metadata_for(&self, viewer: &Session) -> Value {
        let tracks = self.sfu.published_tracks(&viewer.conference);
        let sessions: Vec<Arc<Session>> = self.sessions.lock().unwrap().values().cloned().collect();
        let mut out = Map::new();
        for t in tracks {
            if t.publisher == viewer.participant {
                continue;
            }
            let Some(owner) = sessions.iter().find(|s| s.participant == t.publisher) else {
                continue;
            };
            let declared = owner
                .metadata
                .lock()
                .unwrap()
                .get(&t.track.stream_id)
                .cloned()
                .unwrap_or_else(|| json!({}));
            let entry = out.entry(t.track.stream_id.clone()).or_insert_with(|| {
                json!({
                    "user_id": owner.user_id.as_str(),
                    "device_id": owner.device_id,
                    "purpose": declared.get("purpose").cloned().unwrap_or(json!("m.usermedia")),
                    "audio_muted": declared.get("audio_muted").cloned().unwrap_or(json!(false)),
                    "video_muted": declared.get("video_muted").cloned().unwrap_or(json!(false)),
                    "tracks": {},
                })
            });
            let kind = match t.kind {
                MediaKind::Audio => "audio",
                MediaKind::Video => "video",
            };
            let mut track = json!({"kind": kind});
            if let Some(d) = declared
                .get("tracks")
                .and_then(|ts| ts.get(&t.track.track_id))
            {
                for k in ["width", "height"] {
                    if let Some(v) = d.get(k) {
                        track[k] = v.clone();
                    }
                }
            }
            entry["tracks"][t.track.track_id.clone()] = track;
        }
        Value::Object(out)
    }

    /// Sends `sluice.active_speakers` to everyone in the conference with an open channel.
    async fn announce_speakers(&self, conference: &str, list: &[crate::sfu::Speaker]) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.conference == conference)
            .cloned()
            .collect();
        let speakers: Vec<Value> = list
            .iter()
            .filter_map(|sp| {
                let owner = sessions.iter().find(|s| s.participant == sp.participant)?;
                Some(json!({
                    "user_id": owner.user_id.as_str(),
                    "device_id": owner.device_id,
                    "stream_id": sp.stream_id,
                    "level": sp.level,
                }))
            })
            .collect();
        for s in sessions
            .iter()
            .filter(|s| s.dc_open.load(Ordering::Relaxed))
        {
            self.send_dc(s, "sluice.active_speakers", json!({"speakers": speakers}))
                .await;
        }
    }

    async fn broadcast_metadata(&self, conference: &str) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.conference == conference && s.dc_open.load(Ordering::Relaxed))
            .cloned()
            .collect();
        for s in sessions {
            let md = self.metadata_for(&s);
            self.send_dc(
                &s,
                "m.call.sdp_stream_metadata_changed",
                json!({"sdp_stream_metadata": md}),
            )
            .await;
        }
    }

    /// Consumes the media core's events, in order, for as long as the core runs.
    pub async fn run_sfu_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<SfuEvent>) {
        while let Some(ev) = events.recv().await {
            self.on_sfu_event(ev).await;
        }
    }

    async fn on_sfu_event(self: &Arc<Self>, ev: SfuEvent) {
        match ev.kind {
            SfuEventKind::TrackPublished(_) | SfuEventKind::TrackUnpublished(_) => {
                self.broadcast_metadata(&ev.conference).await;
                return;
            }
            SfuEventKind::ActiveSpeakers(list) => {
                self.announce_speakers(&ev.conference, &list).await;
                return;
            }
            _ => {}
        }
        let Some(s) = self.session(&ev.participant) else {
            return;
        };
        let own = self.own_device.clone();
        match ev.kind {
            SfuEventKind::Answer(sdp) => {
                if !s.answered.swap(true, Ordering::AcqRel) {
                    let content = s.reply(&own).borrow().answer(&sdp, self.metadata_for(&s));
                    self.send_to_session(&s, "m.call.answer", content);
                } else {
                    self.send_negotiate(&s, "answer", &sdp).await;
                }
            }
            SfuEventKind::Offer(sdp) => self.send_negotiate(&s, "offer", &sdp).await,
            SfuEventKind::LocalCandidate(c) => {
                s.candidates.lock().unwrap().push(c);
                if !s.flush_scheduled.swap(true, Ordering::AcqRel) {
                    let this = self.clone();
                    let s = s.clone();
                    tokio::spawn(async move {
                        // Batch what is gathered within ~50 ms into one message.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        s.flush_scheduled.store(false, Ordering::Release);
                        let batch = std::mem::take(&mut *s.candidates.lock().unwrap());
                        if batch.is_empty() {
                            return;
                        }
                        let content = s.reply(&this.own_device).borrow().candidates(&batch);
                        this.send_to_session(&s, "m.call.candidates", content);
                    });
                }
            }
            SfuEventKind::Connected => {}
            SfuEventKind::DataChannelOpen => {
                s.dc_open.store(true, Ordering::Relaxed);
                *s.last_pong.lock().unwrap() = Instant::now();
                self.send_dc(
                    &s,
                    "sluice.hello",
                    json!({"version": protocol::PROTOCOL_VERSION, "features": FEATURES}),
                )
                .await;
                let md = self.metadata_for(&s);
                self.send_dc(
                    &s,
                    "m.call.sdp_stream_metadata_changed",
                    json!({"sdp_stream_metadata": md}),
                )
                .await;
                let task = tokio::spawn(self.clone().keepalive(s.clone()));
                if let Some(old) = s.keepalive.lock().unwrap().replace(task) {
                    old.abort();
                }
            }
            SfuEventKind::DataChannelMessage(text) => self.on_dc_message(&s, &text).await,
            SfuEventKind::DataChannelRefused(reason) => {
                self.send_error(&s, "message_refused", &reason, None).await;
            }
            SfuEventKind::Left(reason) => {
                self.forget(&s);
                if let Some(k) = s.keepalive.lock().unwrap().take() {
                    k.abort();
                }
                s.closed.store(true, Ordering::Release);
                if !s.client_ended.load(Ordering::Relaxed) {
                    let error = *s.hangup_error.lock().unwrap();
                    let content = s.reply(&own).borrow().hangup(reason.as_str(), error);
                    self.send_to_session(&s, "m.call.hangup", content);
                    self.stats.hangups_sent.fetch_add(1, Ordering::Relaxed);
                }
                // Its send task ends once the queue (hangup included) is drained.
                s.outbox.lock().unwrap().take();
                info!(participant = %s.participant, reason = reason.as_str(), "session ended");
                if self.cfg.leave_idle_rooms {
                    self.leave_if_idle(&s.room_id).await;
                }
            }
            SfuEventKind::TrackPublished(_)
            | SfuEventKind::TrackUnpublished(_)
            | SfuEventKind::ActiveSpeakers(_) => {}
        }
    }

    /// Leaves `room_id` when no session is in it and no valid membership names this focus.
    async fn leave_if_idle(&self, room_id: &RoomId) {
        let busy = self
            .sessions
            .lock()
            .unwrap()
            .values()
            .any(|s| s.room_id == room_id);
        if busy {
            return;
        }
        let now = now_ms();
        let wanted = self.memberships(room_id).await.iter().any(|m| {
            m.is_valid(now)
                && m.preferred_focus
                    .as_ref()
                    .is_some_and(|f| f.is(&self.own_user, &self.own_device))
        });
        if wanted {
            return;
        }
        if let Some(room) = self.client.get_room(room_id) {
            match room.leave().await {
                Ok(()) => info!(room = %room_id, "left idle room"),
                Err(e) => warn!(room = %room_id, error = %e, "cannot leave idle room"),
            }
        }
    }

    async fn keepalive(self: Arc<Self>, s: Arc<Session>) {
        let interval = Duration::from_secs(self.cfg.keepalive_interval_secs);
        let timeout = Duration::from_secs(self.cfg.keepalive_timeout_secs);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if s.last_pong.lock().unwrap().elapsed() > timeout {
                info!(participant = %s.participant, "no pong within the keepalive timeout");
                let _ = self
                    .sfu
                    .leave(
                        &s.conference,
                        &s.participant,
                        HangupReason::KeepAliveTimeout,
                    )
                    .await;
                return;
            }
            self.send_dc(&s, "m.call.ping", json!({})).await;
        }
    }

    async fn on_dc_message(&self, s: &Session, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return self
                .send_error(s, "malformed", "data-channel message is not JSON", None)
                .await;
        };
        let Some(kind) = v.get("type").and_then(Value::as_str) else {
            return self
                .send_error(s, "malformed", "data-channel message has no `type`", None)
                .await;
        };
        let content = v.get("content").cloned().unwrap_or_else(|| json!({}));
        match kind {
            "m.call.pong" => *s.last_pong.lock().unwrap() = Instant::now(),
            "m.call.track_subscription" => {
                let parse = |key: &str| -> Result<Vec<TrackRef>, String> {
                    match content.get(key) {
                        None | Some(Value::Null) => Ok(Vec::new()),
                        Some(v) => serde_json::from_value::<Vec<TrackRef>>(v.clone())
                            .map_err(|e| format!("`{key}`: {e}")),
                    }
                };
                let (unsub, sub) = match (parse("unsubscribe"), parse("subscribe")) {
                    (Ok(u), Ok(s)) => (u, s),
                    (Err(e), _) | (_, Err(e)) => {
                        return self.send_error(s, "malformed", &e, Some(kind)).await;
                    }
                };
                if !unsub.is_empty()
                    && let Err(e) = self
                        .sfu
                        .unsubscribe(&s.conference, &s.participant, &unsub)
                        .await
                {
                    return self
                        .send_error(s, e.code(), &e.to_string(), Some(kind))
                        .await;
                }
                if !sub.is_empty()
                    && let Err(e) = self
                        .sfu
                        .subscribe(&s.conference, &s.participant, &sub)
                        .await
                {
                    return self
                        .send_error(s, e.code(), &e.to_string(), Some(kind))
                        .await;
                }
                // Sizes steer the simulcast layer; repeating a subscription with a new
                // size re-selects without renegotiation.
                for entry in content
                    .get("subscribe")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (Some(w), Some(h)) = (
                        entry.get("width").and_then(Value::as_u64),
                        entry.get("height").and_then(Value::as_u64),
                    ) else {
                        continue;
                    };
                    let Ok(t) = serde_json::from_value::<TrackRef>(entry.clone()) else {
                        continue;
                    };
                    let (w, h) = (w.min(16_384) as u32, h.min(16_384) as u32);
                    if let Err(e) = self
                        .sfu
                        .set_track_size(&s.conference, &s.participant, &t, w, h)
                        .await
                    {
                        self.send_error(s, e.code(), &e.to_string(), Some(kind))
                            .await;
                    }
                }
            }
            "m.call.negotiate" => {
                if let Some(md) = content
                    .get("sdp_stream_metadata")
                    .and_then(Value::as_object)
                {
                    *s.metadata.lock().unwrap() = md.clone();
                    self.apply_purposes(s);
                }
                let desc = content
                    .get("description")
                    .cloned()
                    .and_then(|d| serde_json::from_value::<SessionDescription>(d).ok());
                let Some(desc) = desc else {
                    return self
                        .send_error(
                            s,
                            "malformed",
                            "`description` must be {type, sdp}",
                            Some(kind),
                        )
                        .await;
                };
                let is_offer = desc.kind == SdpKind::Offer;
                if let Err(e) = self
                    .sfu
                    .remote_description(&s.conference, &s.participant, desc)
                    .await
                {
                    return self
                        .send_error(s, e.code(), &e.to_string(), Some(kind))
                        .await;
                }
                if is_offer {
                    self.broadcast_metadata(&s.conference).await;
                }
            }
            "m.call.sdp_stream_metadata_changed" => {
                if let Some(md) = content
                    .get("sdp_stream_metadata")
                    .and_then(Value::as_object)
                {
                    *s.metadata.lock().unwrap() = md.clone();
                    self.apply_purposes(s);
                    self.broadcast_metadata(&s.conference).await;
                } else {
                    self.send_error(
                        s,
                        "malformed",
                        "`sdp_stream_metadata` must be an object",
                        Some(kind),
                    )
                    .await;
                }
            }
            other => {
                debug!(participant = %s.participant, kind = other, "unknown data-channel message")
            }
        }
    }
}
