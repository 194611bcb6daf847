//! Matrix test participants against a real Synapse: matrix-sdk clients (own stores) with
//! webrtc-rs peers, signaling exactly as docs/protocol.md says.
#![allow(dead_code)]

use super::{CandidateSink, DcEvent, TestPeer};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::ruma::api::client::account::register::v3::Request as RegistrationRequest;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::api::client::to_device::send_event_to_device;
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::events::{AnyToDeviceEvent, AnyToDeviceEventContent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::to_device::DeviceIdOrAllDevices;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, TransactionId, UserId};
use matrix_sdk::{Client, Room};
use serde_json::{Value, json};
use sluice::config::{MatrixConfig, Secret, SfuConfig};
use sluice::matrix::Focus;
use sluice::sfu::{IceCandidate, Sfu};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSessionDescription};

pub const MEMBER_EVENT: &str = "org.matrix.msc3401.call.member";

/// The homeserver under test: started by `scripts/test` (or `scripts/synapse start`).
pub fn homeserver() -> String {
    std::env::var("SLUICE_TEST_HOMESERVER").unwrap_or_else(|_| {
        panic!(
            "SLUICE_TEST_HOMESERVER is not set: run the suite with scripts/test, which starts a \
             local Synapse, or start one with `scripts/synapse start DIR PORT` and export \
             SLUICE_TEST_HOMESERVER=http://127.0.0.1:PORT"
        )
    })
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name for this test process.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{prefix}{}{t}{n}", std::process::id())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(&format!("sluice-test-{name}-")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Registers a fresh user on `hs` and returns a logged-in client with its own store.
pub async fn register(hs: &str, username: &str, password: &str, device: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(hs)
        .sqlite_store(temp_dir(username), None)
        .build()
        .await
        .unwrap();
    let mut req = RegistrationRequest::new();
    req.username = Some(username.to_owned());
    req.password = Some(password.to_owned());
    req.device_id = Some(device.into());
    req.auth = Some(uiaa::AuthData::Dummy(uiaa::Dummy::new()));
    client.matrix_auth().register(req).await.unwrap();
    client
}

/// A Sluice instance (media core + Matrix focus) logged in as a fresh account.
pub struct SluiceUnderTest {
    pub sfu: Sfu,
    pub focus: Option<Focus>,
    pub user_id: String,
    pub device_id: String,
    pub cfg: MatrixConfig,
    pub sfu_cfg: SfuConfig,
}

impl SluiceUnderTest {
    pub async fn start(tune: impl FnOnce(&mut MatrixConfig)) -> SluiceUnderTest {
        Self::start_on(&homeserver(), tune).await
    }

    /// A Sluice on the homeserver at `hs`.
    pub async fn start_on(hs: &str, tune: impl FnOnce(&mut MatrixConfig)) -> SluiceUnderTest {
        let name = unique("sfu");
        let password = "sfu-password";
        // Register the account; Sluice logs in itself with its own device id.
        let reg = register(hs, &name, password, "REGDEV").await;
        let user_id = reg.user_id().unwrap().to_string();
        drop(reg);
        let mut cfg = MatrixConfig {
            homeserver_url: hs.to_owned(),
            user_id: user_id.clone(),
            password: Secret(password.to_owned()),
            device_id: "SLUICETEST".to_owned(),
            store_path: temp_dir("sluice-store"),
            keepalive_interval_secs: 10,
            keepalive_timeout_secs: 30,
            ..MatrixConfig::default()
        };
        tune(&mut cfg);
        let sfu_cfg = super::test_config();
        let mut s = SluiceUnderTest {
            sfu: Sfu::new(sfu_cfg.clone()),
            focus: None,
            user_id,
            device_id: cfg.device_id.clone(),
            cfg,
            sfu_cfg,
        };
        s.restart().await;
        s
    }

    /// (Re)starts the focus with the same store; a new media core.
    pub async fn restart(&mut self) {
        if let Some(f) = self.focus.take() {
            self.sfu.shutdown(sluice::sfu::HangupReason::Draining).await;
            f.stop().await;
        }
        let sfu = Sfu::new(self.sfu_cfg.clone());
        let focus = Focus::start(&self.cfg, sfu.clone()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !focus.is_synced() {
            assert!(Instant::now() < deadline, "Sluice never synced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.sfu = sfu;
        self.focus = Some(focus);
    }

    pub fn signaling(&self) -> &sluice::matrix::signaling::Signaling {
        &self.focus.as_ref().unwrap().signaling
    }

    pub fn transport(&self) -> Value {
        json!({"type": "sluice", "user_id": self.user_id, "device_id": self.device_id})
    }

    /// Waits until Sluice has joined `room`.
    pub async fn wait_joined(&self, room: &OwnedRoomId) {
        let client = &self.focus.as_ref().unwrap().client;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = client.get_room(room)
                && r.state() == matrix_sdk::RoomState::Joined
            {
                return;
            }
            assert!(Instant::now() < deadline, "Sluice did not join {room}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A received to-device event.
#[derive(Debug, Clone)]
pub struct Received {
    pub event_type: String,
    pub content: Value,
    pub encrypted: bool,
}

/// A call participant: Matrix client + webrtc-rs peer.
pub struct Participant {
    pub client: Client,
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub peer: Arc<TestPeer>,
    pub call_id: String,
    pub session_id: String,
    pub conf_id: String,
    pub room_id: Mutex<Option<OwnedRoomId>>,
    pub sfu_user: String,
    pub sfu_device: String,
    pub encrypted: AtomicBool,
    pub inbox: Mutex<Vec<Received>>,
    pub dc_log: Mutex<Vec<Value>>,
    pub dc_open: AtomicBool,
    pub answer_pings: AtomicBool,
    pub changed: Notify,
    sync_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Participant {
    /// Registers a user and builds its peer; `publish` adds Opus + VP8 send tracks.
    pub async fn new(idx: u8, sluice: &SluiceUnderTest, publish: bool) -> Arc<Participant> {
        let name = unique(&format!("user{idx}x"));
        let device_id = format!("DEV{idx}");
        let client = register(&sluice.cfg.homeserver_url, &name, "pw", &device_id).await;
        Self::with_client(client, idx, sluice, publish).await
    }

    /// A participant on an existing client (a new call from the same device).
    pub async fn with_client(
        client: Client,
        idx: u8,
        sluice: &SluiceUnderTest,
        publish: bool,
    ) -> Arc<Participant> {
        let device_id = client.device_id().unwrap().to_string();
        let user_id = client.user_id().unwrap().to_owned();
        let (cand_tx, mut cand_rx) = tokio::sync::mpsc::unbounded_channel::<IceCandidate>();
        let sink: CandidateSink = Arc::new(move |c| {
            let _ = cand_tx.send(c);
        });
        let peer = TestPeer::with_sink(format!("{user_id}|{device_id}"), idx, publish, sink).await;
        let p = Arc::new(Participant {
            client: client.clone(),
            user_id,
            device_id,
            peer,
            call_id: unique("call"),
            session_id: unique("sess"),
            conf_id: String::new(),
            room_id: Mutex::new(None),
            sfu_user: sluice.user_id.clone(),
            sfu_device: sluice.device_id.clone(),
            encrypted: AtomicBool::new(false),
            inbox: Mutex::new(Vec::new()),
            dc_log: Mutex::new(Vec::new()),
            dc_open: AtomicBool::new(false),
            answer_pings: AtomicBool::new(true),
            changed: Notify::new(),
            sync_task: Mutex::new(None),
        });
        // To-device handler: records everything, applies answers and candidates.
        let weak = Arc::downgrade(&p);
        client.add_event_handler(
            move |raw: Raw<AnyToDeviceEvent>, enc: Option<EncryptionInfo>| {
                let weak = weak.clone();
                async move {
                    let Some(p) = weak.upgrade() else { return };
                    let Ok(v) = serde_json::from_str::<Value>(raw.json().get()) else {
                        return;
                    };
                    let event_type = v["type"].as_str().unwrap_or("").to_owned();
                    if !event_type.starts_with("m.call.") {
                        return;
                    }
                    let content = v["content"].clone();
                    p.inbox.lock().unwrap().push(Received {
                        event_type: event_type.clone(),
                        content: content.clone(),
                        encrypted: enc.is_some(),
                    });
                    p.changed.notify_waiters();
                    tokio::spawn(async move { p.on_signal(&event_type, &content).await });
                }
            },
        );
        // Outgoing candidates: one to-device message each.
        let weak = Arc::downgrade(&p);
        tokio::spawn(async move {
            while let Some(c) = cand_rx.recv().await {
                let Some(p) = weak.upgrade() else { return };
                let content = p.base_content(json!({"candidates": [c]}));
                p.send_to_sfu("m.call.candidates", content).await;
            }
        });
        // Data channel.
        let rx = p.peer.dc_rx.lock().unwrap().take().unwrap();
        tokio::spawn(Self::dc_loop(Arc::downgrade(&p), rx));
        // Sync.
        let c2 = client.clone();
        let task = tokio::spawn(async move {
            let _ = c2
                .sync(SyncSettings::default().timeout(Duration::from_secs(5)))
                .await;
        });
        *p.sync_task.lock().unwrap() = Some(task);
        p
    }

    async fn dc_loop(
        weak: std::sync::Weak<Participant>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<DcEvent>,
    ) {
        while let Some(ev) = rx.recv().await {
            let Some(p) = weak.upgrade() else { return };
            match ev {
                DcEvent::Open => p.dc_open.store(true, Ordering::Relaxed),
                DcEvent::Text(t) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        continue;
                    };
                    p.dc_log.lock().unwrap().push(v.clone());
                    match v["type"].as_str() {
                        Some("m.call.ping") if p.answer_pings.load(Ordering::Relaxed) => {
                            p.dc_send("m.call.pong", json!({})).await;
                        }
                        Some("m.call.negotiate")
                            if v["content"]["description"]["type"] == "offer" =>
                        {
                            let sdp = v["content"]["description"]["sdp"]
                                .as_str()
                                .unwrap()
                                .to_owned();
                            p.peer
                                .pc
                                .set_remote_description(RTCSessionDescription::offer(sdp).unwrap())
                                .await
                                .unwrap();
                            let answer = p.peer.pc.create_answer(None).await.unwrap();
                            p.peer.pc.set_local_description(answer).await.unwrap();
                            super::mark_ended_tracks(&p.peer).await;
                            let sdp = p.peer.pc.local_description().await.unwrap().sdp;
                            p.dc_send(
                                "m.call.negotiate",
                                json!({"description": {"type": "answer", "sdp": sdp}}),
                            )
                            .await;
                        }
                        _ => {}
                    }
                }
            }
            p.changed.notify_waiters();
        }
    }

    pub async fn dc_send(&self, kind: &str, content: Value) {
        let text = json!({"type": kind, "content": content}).to_string();
        let _ = self.peer.dc.send_text(&text).await;
    }

    async fn on_signal(&self, event_type: &str, content: &Value) {
        if content["call_id"] != self.call_id.as_str() {
            return;
        }
        match event_type {
            "m.call.answer" => {
                let sdp = content["answer"]["sdp"].as_str().unwrap_or("").to_owned();
                if self
                    .peer
                    .pc
                    .set_remote_description(RTCSessionDescription::answer(sdp).unwrap())
                    .await
                    .is_err()
                {
                    return;
                }
                let pending = self.peer.open_candidates();
                if !pending.is_empty() {
                    let content = self.base_content(json!({"candidates": pending}));
                    self.send_to_sfu("m.call.candidates", content).await;
                }
                let sel = self.base_content(json!({"selected_party_id": self.sfu_device}));
                self.send_to_sfu("m.call.select_answer", sel).await;
            }
            "m.call.candidates" => {
                for c in content["candidates"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let cand = c["candidate"].as_str().unwrap_or("");
                    if cand.is_empty() {
                        continue;
                    }
                    let _ = self
                        .peer
                        .pc
                        .add_ice_candidate(RTCIceCandidateInit {
                            candidate: cand.to_owned(),
                            sdp_mid: c["sdpMid"].as_str().map(str::to_owned),
                            sdp_mline_index: c["sdpMLineIndex"].as_u64().map(|v| v as u16),
                            ..Default::default()
                        })
                        .await;
                }
            }
            _ => {}
        }
    }

    /// The fields every message carries.
    pub fn base_content(&self, extra: Value) -> Value {
        let mut c = json!({
            "call_id": self.call_id, "conf_id": self.conf_id,
            "party_id": self.device_id, "device_id": self.device_id,
            "version": "1", "sender_session_id": self.session_id, "dest_session_id": "sfu",
        });
        if let Some(r) = self.room_id.lock().unwrap().as_ref() {
            c["room_id"] = json!(r.as_str());
        }
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// Sends to Sluice's device, Olm-encrypted when the participant is in encrypted mode.
    pub async fn send_to_sfu(&self, event_type: &str, content: Value) {
        let user = UserId::parse(self.sfu_user.as_str()).unwrap();
        send_to_device(
            &self.client,
            &user,
            &self.sfu_device,
            event_type,
            content,
            self.encrypted.load(Ordering::Relaxed),
        )
        .await;
    }

    /// Writes this device's call membership naming `focus` (Sluice's transport by default).
    pub async fn write_membership(&self, room: &Room, focus: Value, expires_ms: u64) {
        let content = json!({"application": "m.call", "call_id": self.conf_id, "scope": "m.room",
            "device_id": self.device_id, "expires": expires_ms, "created_ts": now_ms(),
            "focus_active": {"type": "sluice", "focus_selection": "oldest_membership"},
            "foci_preferred": [focus]});
        self.write_membership_content(room, content).await;
    }

    pub async fn write_membership_content(&self, room: &Room, content: Value) {
        let device = content["device_id"]
            .as_str()
            .unwrap_or(&self.device_id)
            .to_owned();
        let state_key = format!("_{}_{device}_m.call", self.user_id);
        let raw: Raw<matrix_sdk::ruma::events::AnyStateEventContent> =
            Raw::new(&content).unwrap().cast_unchecked();
        room.send_state_event_raw(MEMBER_EVENT, &state_key, raw)
            .await
            .unwrap();
    }

    /// Metadata of this participant's published streams.
    pub fn own_metadata(&self) -> Value {
        let mut md = serde_json::Map::new();
        for s in &self.peer.sends {
            let kind = if s.kind == rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio {
                "audio"
            } else {
                "video"
            };
            let e = md.entry(s.stream_id.clone()).or_insert_with(
                || json!({"purpose": "m.usermedia", "audio_muted": false, "video_muted": false, "tracks": {}}),
            );
            e["tracks"][s.track_id.clone()] = json!({"kind": kind});
        }
        Value::Object(md)
    }

    /// Sends `m.call.invite` with a fresh offer.
    pub async fn invite(&self) {
        let offer = self.peer.pc.create_offer(None).await.unwrap();
        self.peer.pc.set_local_description(offer).await.unwrap();
        let sdp = self.peer.pc.local_description().await.unwrap().sdp;
        let content = self.base_content(json!({
            "offer": {"type": "offer", "sdp": sdp}, "lifetime": 30000,
            "org.matrix.msc3077.sdp_stream_metadata": self.own_metadata(),
        }));
        self.send_to_sfu("m.call.invite", content).await;
    }

    pub async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Participant) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.changed.notified();
            if f(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let inbox: Vec<String> = self
                    .inbox
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {}",
                            r.event_type,
                            r.content.get("reason").cloned().unwrap_or_default()
                        )
                    })
                    .collect();
                panic!(
                    "{}: timed out waiting for {what}; to-device received: {inbox:?}",
                    self.user_id
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), n).await;
        }
    }

    /// The `reason` of the first hangup received, if any.
    pub fn hangup_reason(&self) -> Option<String> {
        self.inbox
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.event_type == "m.call.hangup")
            .and_then(|r| r.content["reason"].as_str().map(str::to_owned))
    }

    pub fn received(&self, event_type: &str) -> Vec<Received> {
        self.inbox
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.event_type == event_type)
            .cloned()
            .collect()
    }

    /// The last stream metadata Sluice sent on the data channel.
    pub fn last_metadata(&self) -> Option<Value> {
        self.dc_log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["type"] == "m.call.sdp_stream_metadata_changed")
            .map(|m| m["content"]["sdp_stream_metadata"].clone())
    }

    pub async fn close(&self) {
        if let Some(t) = self.sync_task.lock().unwrap().take() {
            t.abort();
        }
        self.peer.close().await;
    }
}

/// Sends one to-device event, plain or Olm-encrypted.
pub async fn send_to_device(
    client: &Client,
    user: &UserId,
    device: &str,
    event_type: &str,
    content: Value,
    encrypted: bool,
) {
    let raw: Raw<AnyToDeviceEventContent> = Raw::new(&content).unwrap().cast_unchecked();
    if encrypted {
        let enc = client.encryption();
        let dev: matrix_sdk::ruma::OwnedDeviceId = device.into();
        let mut d = enc.get_device(user, &dev).await.unwrap();
        if d.is_none() {
            enc.request_user_identity(user).await.unwrap();
            d = enc.get_device(user, &dev).await.unwrap();
        }
        let d = d.expect("Sluice's device keys");
        let failed = enc
            .encrypt_and_send_raw_to_device(vec![&d], event_type, raw, Default::default())
            .await
            .unwrap();
        assert!(failed.is_empty(), "encryption failed for {failed:?}");
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
    client.send(req).await.unwrap();
}

/// Creates a room owned by `owner` where everyone may write call memberships, invites
/// Sluice and `others`, and has the others join.
pub async fn call_room(
    owner: &Participant,
    others: &[&Arc<Participant>],
    sluice: &SluiceUnderTest,
) -> Room {
    let mut req = CreateRoomRequest::new();
    req.preset = Some(RoomPreset::PrivateChat);
    let pl = json!({"events": {MEMBER_EVENT: 0}});
    req.power_level_content_override = Some(Raw::new(&pl).unwrap().cast_unchecked());
    let room = owner.client.create_room(req).await.unwrap();
    room.invite_user_by_id(&UserId::parse(sluice.user_id.as_str()).unwrap())
        .await
        .unwrap();
    for o in others {
        room.invite_user_by_id(&o.user_id).await.unwrap();
    }
    let room_id = room.room_id().to_owned();
    for o in others {
        // The invite reaches the other client through its sync; join by id.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if o.client.join_room_by_id(&room_id).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "{} could not join", o.user_id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    sluice.wait_joined(&room_id).await;
    *owner.room_id.lock().unwrap() = Some(room_id.clone());
    for o in others {
        *o.room_id.lock().unwrap() = Some(room_id.clone());
    }
    room
}

/// The room as seen by `p`'s client.
pub async fn room_of(p: &Participant, room_id: &OwnedRoomId) -> Room {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = p.client.get_room(room_id) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no room {room_id} for {}",
            p.user_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Synapse of the test's own (for tests that stop and start the homeserver), managed
/// through scripts/synapse.
pub struct OwnSynapse {
    pub dir: PathBuf,
    pub port: u16,
}

impl OwnSynapse {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/synapse")
    }

    pub fn start_new() -> OwnSynapse {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = OwnSynapse {
            dir: temp_dir("own-synapse"),
            port,
        };
        s.start();
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&self) {
        let st = std::process::Command::new(Self::script())
            .arg("start")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "scripts/synapse start failed");
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the homeserver process: it keeps its
    /// sockets but answers nothing while frozen.
    pub fn freeze(&self, frozen: bool) {
        // scripts/synapse runs the homeserver in the foreground of its launcher process.
        let pid = std::fs::read_to_string(self.dir.join("launcher.pid")).unwrap();
        let st = std::process::Command::new("kill")
            .arg(if frozen { "-STOP" } else { "-CONT" })
            .arg(pid.trim())
            .status()
            .unwrap();
        assert!(st.success(), "cannot signal the homeserver");
    }

    pub fn stop(&self) {
        // A frozen homeserver would not act on the stop.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("launcher.pid")) {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(pid.trim())
                .status();
        }
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

impl Drop for OwnSynapse {
    fn drop(&mut self) {
        self.stop();
    }
}
