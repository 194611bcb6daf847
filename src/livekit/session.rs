//! One LiveKit connection, from the join to the end: the client's requests in, the SFU's
//! events and the room's notices out, in one task. The connection joins the SFU in
//! client-offer mode (LiveKit's single peer connection: only the client offers).

use super::room::{Member, Notice, Resumption, seen_as, sid};
use super::signal::{Grant, Signal};
use super::{data, dynacast, quality};

mod codecs;
mod resume;
use crate::sfu::{
    DataChannelPacket, DataChannels, HangupReason, IceCandidate, JoinOptions, MediaKind, OfferMode,
    SdpKind, SessionDescription, SfuError, SfuEvent, SfuEventKind, TrackRef,
};
use axum::extract::ws::{CloseFrame, Message as Ws, WebSocket};
use livekit_protocol as proto;
use prost::Message;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Seconds between the client's pings, and without one before Sluice hangs up.
const PING_INTERVAL: i32 = 5;
const PING_TIMEOUT: i32 = 15;

/// Why a connection ends.
enum End {
    /// The client sent `leave`.
    ClientLeave,
    /// The socket closed.
    ClientGone,
    /// Another connection took the identity.
    Replaced,
    /// No ping within the timeout.
    PingTimeout,
    /// The client broke the protocol.
    Protocol(&'static str),
    /// The SFU removed the participant.
    SfuLeft(HangupReason),
}

struct Conn {
    s: Arc<Signal>,
    ws: WebSocket,
    grant: Grant,
    conference: String,
    participant: String,
    sid: String,
    /// Announced with `add_track`, no media yet: by the client's track id (`cid`).
    pending: HashMap<String, proto::TrackInfo>,
    /// Forwarded to this client: the SFU's track → its `TR_` sid.
    subscribed: HashMap<TrackRef, String>,
    /// Its `TR_` sids → the SFU's track, for `track_setting` and `subscription`.
    by_sid: HashMap<String, TrackRef>,
    offer_id: u32,
    last_ping: Instant,
    speakers: Vec<String>,
    codecs: codecs::CodecPrefs,
}

/// The LiveKit server version Sluice answers as: clients turn features on by it
/// (livekit-client: RPC from 1.8.0; rid-based simulcast of VP9 and AV1, which Sluice does
/// not take, only above 1.13.6). Sluice's own version is in `ServerInfo.node_id`.
pub(crate) const LIVEKIT_COMPAT_VERSION: &str = "1.9.0";

/// What Sluice tells a client about itself.
fn server_info() -> proto::ServerInfo {
    proto::ServerInfo {
        version: LIVEKIT_COMPAT_VERSION.to_owned(),
        protocol: 16,
        node_id: concat!("sluice-", env!("CARGO_PKG_VERSION")).to_owned(),
        ..Default::default()
    }
}

/// The size a subscriber's `track_setting` asks for (LiveKit's adaptive stream): (0, 0)
/// pauses; an element size as given; a quality as the size of the publisher's layer of that
/// quality (from its `add_track` layers), else of LiveKit's usual 1/4, 1/2, 1 ladder.
pub(crate) fn wanted_size(
    ts: &proto::UpdateTrackSettings,
    info: Option<&proto::TrackInfo>,
) -> (u32, u32) {
    if ts.disabled {
        return (0, 0);
    }
    if ts.width > 0 && ts.height > 0 {
        return (ts.width, ts.height);
    }
    let quality = ts.quality;
    #[allow(deprecated)]
    let layer = info.and_then(|i| {
        i.layers
            .iter()
            .filter(|l| l.quality <= quality && l.width > 0)
            .max_by_key(|l| l.quality)
    });
    match (layer, proto::VideoQuality::try_from(quality)) {
        (Some(l), _) => (l.width, l.height),
        (None, Ok(proto::VideoQuality::Low)) => (320, 180),
        (None, Ok(proto::VideoQuality::Medium)) => (640, 360),
        _ => (1920, 1080),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs one connection to its end and releases everything it held.
pub(super) async fn run(s: Arc<Signal>, ws: WebSocket, grant: Grant, join: proto::JoinRequest) {
    if join.reconnect {
        return resume::hand_over(s, ws, grant, join).await;
    }
    let n = s.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = Conn {
        conference: format!("lk|{}", grant.room),
        participant: format!("lk|{}|{n}", grant.identity),
        sid: sid("PA_"),
        s,
        ws,
        grant,
        pending: HashMap::new(),
        subscribed: HashMap::new(),
        by_sid: HashMap::new(),
        offer_id: 0,
        last_ping: Instant::now(),
        speakers: Vec::new(),
        codecs: Default::default(),
    };
    let offer = match join.publisher_offer {
        Some(o) => Ok(o),
        None => c.first_offer().await,
    };
    let offer = match offer {
        Ok(o) => o,
        Err(why) => {
            c.s.stats.count(5);
            info!(room = %c.grant.room, identity = %c.grant.identity, reason = why, "LiveKit connection ended before its offer");
            return c.close(why).await;
        }
    };
    c.offer_id = offer.id;
    c.codecs.offered(&offer.sdp);
    let (sink, mut events) = mpsc::unbounded_channel::<SfuEvent>();
    let options = JoinOptions {
        offers: OfferMode::Client,
        data: DataChannels::Packets,
    };
    let answer = match c
        .s
        .sfu
        .join_with(&c.conference, &c.participant, &offer.sdp, sink, options)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            c.s.stats.count(3);
            info!(room = %c.grant.room, identity = %c.grant.identity, error = %e, "LiveKit join refused");
            c.send(Resp::Leave(proto::LeaveRequest {
                reason: proto::DisconnectReason::JoinFailure as i32,
                action: proto::leave_request::Action::Disconnect as i32,
                ..Default::default()
            }))
            .await;
            return c.close(&e.to_string()).await;
        }
    };
    let (notices_tx, mut notices) = mpsc::unbounded_channel();
    let info = c.info();
    let member = Member {
        info: info.clone(),
        participant: c.participant.clone(),
        notices: notices_tx,
        media: HashMap::new(),
        quality: None,
    };
    let (room, others, replaced) = c.s.rooms.join(&c.grant.room, member);
    if let Some(old) = replaced {
        let _ = old.notices.send(Notice::Replaced);
    }
    c.s.stats.count(0);
    info!(room = %c.grant.room, identity = %c.grant.identity, participant = %c.participant, sid = %c.sid, "LiveKit participant joined");
    c.send(Resp::Join(proto::JoinResponse {
        room: Some(room),
        participant: Some(info),
        other_participants: others,
        server_version: LIVEKIT_COMPAT_VERSION.to_owned(),
        server_info: Some(server_info()),
        ping_interval: PING_INTERVAL,
        ping_timeout: PING_TIMEOUT,
        ..Default::default()
    }))
    .await;
    c.send_answer(answer).await;
    for req in join.add_track_requests {
        c.add_track(req).await;
    }
    let auto = join
        .connection_settings
        .as_ref()
        .is_none_or(|cs| cs.auto_subscribe);
    if auto {
        let tracks = c.s.rooms.media_tracks(&c.grant.room, &c.sid);
        c.subscribe(tracks).await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(PING_INTERVAL as u64));
    let mut quality_tick = tokio::time::interval(quality::INTERVAL);
    // Since when the socket is gone (without a leave): the session waits for a resume.
    let mut away: Option<tokio::time::Instant> = None;
    let end = loop {
        tokio::select! {
            frame = c.ws.recv(), if away.is_none() => match frame {
                Some(Ok(Ws::Binary(b))) => {
                    if let Some(end) = c.on_request(&b).await {
                        break end;
                    }
                }
                Some(Ok(Ws::Text(_))) => break End::Protocol("text frames are not supported: send protobuf"),
                Some(Ok(Ws::Close(_))) | Some(Err(_)) | None => {
                    // A client resumes only a session whose media connected; one dropped
                    // before that (Element Call trying one token, then another) is gone.
                    if !c.s.sfu.has_connected(&c.conference, &c.participant) {
                        break End::ClientGone;
                    }
                    info!(room = %c.grant.room, identity = %c.grant.identity, participant = %c.participant, "LiveKit signaling connection lost; waiting for the client to resume");
                    away = Some(tokio::time::Instant::now() + resume::WINDOW);
                }
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep_until(away.unwrap_or_else(tokio::time::Instant::now)), if away.is_some() => {
                break End::ClientGone;
            }
            ev = events.recv() => match ev {
                Some(ev) => {
                    if let Some(end) = c.on_event(ev).await {
                        break end;
                    }
                }
                None => break End::SfuLeft(HangupReason::UnknownError),
            },
            n = notices.recv() => match n {
                Some(Notice::Signal(m)) => c.send(*m).await,
                Some(Notice::Subscribe(t)) => c.subscribe(t).await,
                Some(Notice::Resume(r)) => {
                    away = None;
                    if let Some(end) = c.resume(*r).await {
                        break end;
                    }
                }
                Some(Notice::Replaced) | None => break End::Replaced,
            },
            _ = tick.tick() => {
                if away.is_none() && c.last_ping.elapsed() > Duration::from_secs(PING_TIMEOUT as u64) {
                    break End::PingTimeout;
                }
            }
            _ = quality_tick.tick() => c.send_qualities().await,
        }
    };
    c.finish(end).await;
}

impl Conn {
    /// Measures this connection's quality, keeps it in the room, and sends the client the
    /// room's qualities (each interval, so a client that missed one converges).
    async fn send_qualities(&mut self) {
        let own = match self
            .s
            .sfu
            .connection_quality(&self.conference, &self.participant)
            .await
        {
            Ok(q) => q.map(|q| quality::info(&self.sid, &q)),
            Err(_) => None,
        };
        let updates = self.s.rooms.qualities(&self.grant.room, &self.sid, own);
        if !updates.is_empty() {
            self.send(Resp::ConnectionQuality(proto::ConnectionQualityUpdate {
                updates,
            }))
            .await;
        }
    }

    fn info(&self) -> proto::ParticipantInfo {
        let now = now_ms();
        proto::ParticipantInfo {
            sid: self.sid.clone(),
            identity: self.grant.identity.clone(),
            name: self.grant.name.clone(),
            state: proto::participant_info::State::Joined as i32,
            joined_at: now / 1000,
            joined_at_ms: now,
            version: 1,
            permission: Some(proto::ParticipantPermission {
                can_subscribe: self.grant.can_subscribe,
                can_publish: self.grant.can_publish,
                can_publish_data: self.grant.can_publish_data,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn send(&mut self, m: Resp) {
        let frame = proto::SignalResponse { message: Some(m) }.encode_to_vec();
        if let Err(e) = self.ws.send(Ws::Binary(frame.into())).await {
            debug!(participant = %self.participant, error = %e, "LiveKit send failed");
        }
    }

    async fn close(&mut self, reason: &str) {
        let frame = CloseFrame {
            code: 1000,
            reason: reason.chars().take(120).collect::<String>().into(),
        };
        let _ = self.ws.send(Ws::Close(Some(frame))).await;
    }

    /// Waits for the client's first offer (a join request without one); the error is the
    /// close reason.
    async fn first_offer(&mut self) -> Result<proto::SessionDescription, &'static str> {
        let deadline = tokio::time::sleep(Duration::from_secs(PING_TIMEOUT as u64));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                frame = self.ws.recv() => match frame {
                    Some(Ok(Ws::Binary(b))) => match proto::SignalRequest::decode(b.as_ref()) {
                        Ok(proto::SignalRequest { message: Some(Req::Offer(o)) }) => return Ok(o),
                        Ok(_) => {}
                        Err(_) => return Err("a frame is not a SignalRequest"),
                    },
                    Some(Ok(Ws::Text(_))) => return Err("text frames are not supported: send protobuf"),
                    Some(Ok(Ws::Close(_))) | Some(Err(_)) | None => return Err("closed before the offer"),
                    Some(Ok(_)) => {}
                },
                _ = &mut deadline => return Err("no offer within the ping timeout"),
            }
        }
    }

    async fn send_answer(&mut self, sdp: String) {
        debug!(participant = %self.participant, id = self.offer_id, "LiveKit answer");
        let sdp = self.codecs.apply(sdp);
        let mids = self
            .s
            .sfu
            .leg_mids(&self.conference, &self.participant)
            .unwrap_or_default();
        let mid_to_track_id = mids
            .into_iter()
            .filter_map(|(t, mid)| Some((mid, self.subscribed.get(&t)?.clone())))
            .collect();
        self.send(Resp::Answer(proto::SessionDescription {
            r#type: "answer".into(),
            sdp,
            id: self.offer_id,
            mid_to_track_id,
        }))
        .await;
    }

    /// The client's (re)negotiation offer; Sluice's answer follows as an SFU event.
    async fn on_offer(&mut self, o: proto::SessionDescription) -> Option<End> {
        debug!(participant = %self.participant, id = o.id, "LiveKit offer");
        self.offer_id = o.id;
        self.codecs.offered(&o.sdp);
        let desc = SessionDescription {
            kind: SdpKind::Offer,
            sdp: o.sdp,
        };
        if let Err(e) = self
            .s
            .sfu
            .remote_description(&self.conference, &self.participant, desc)
            .await
        {
            warn!(participant = %self.participant, error = %e, "LiveKit offer refused");
            return Some(End::Protocol("the offer was refused"));
        }
        None
    }

    async fn on_request(&mut self, bytes: &[u8]) -> Option<End> {
        let Ok(req) = proto::SignalRequest::decode(bytes) else {
            return Some(End::Protocol("a frame is not a SignalRequest"));
        };
        let (conf, pid) = (self.conference.clone(), self.participant.clone());
        match req.message? {
            Req::Offer(o) => return self.on_offer(o).await,
            Req::Trickle(t) => match serde_json::from_str::<IceCandidate>(&t.candidate_init) {
                Ok(cand) => {
                    if let Err(e) = self.s.sfu.add_remote_candidate(&conf, &pid, cand).await {
                        debug!(participant = %pid, error = %e, "LiveKit candidate refused");
                    }
                }
                Err(_) => {
                    return Some(End::Protocol(
                        "a trickle candidate is not RTCIceCandidateInit JSON",
                    ));
                }
            },
            Req::AddTrack(a) => {
                debug!(participant = %pid, cid = %a.cid, kind = a.r#type, "LiveKit add_track");
                self.add_track(a).await
            }
            Req::Mute(m) => {
                let sid = self.sid.clone();
                self.s.rooms.update(&self.grant.room, &sid, |mb| {
                    let t = mb.info.tracks.iter_mut().find(|t| t.sid == m.sid);
                    t.map(|t| t.muted = m.muted).is_some()
                });
            }
            Req::Subscription(u) => {
                let wanted: Vec<TrackRef> = u
                    .track_sids
                    .iter()
                    .chain(
                        u.participant_tracks
                            .iter()
                            .flat_map(|p| p.track_sids.iter()),
                    )
                    .filter_map(|s| self.by_sid.get(s).cloned())
                    .collect();
                if !u.subscribe && !wanted.is_empty() {
                    for t in &wanted {
                        self.subscribed.remove(t);
                    }
                    let _ = self.s.sfu.unsubscribe(&conf, &pid, &wanted).await;
                }
            }
            Req::TrackSetting(ts) => {
                for sid in &ts.track_sids {
                    let Some(t) = self.by_sid.get(sid).cloned() else {
                        debug!(participant = %pid, track = %sid, "LiveKit track setting for a track not subscribed");
                        continue;
                    };
                    let info = self.s.rooms.track_info(&self.grant.room, sid);
                    let (w, h) = wanted_size(&ts, info.as_ref());
                    let r = self.s.sfu.set_track_size(&conf, &pid, &t, w, h).await;
                    debug!(participant = %pid, track = %sid, w, h, ok = r.is_ok(), "LiveKit track setting");
                }
            }
            Req::Leave(_) => return Some(End::ClientLeave),
            Req::Ping(_) => {
                self.last_ping = Instant::now();
                self.send(Resp::Pong(now_ms())).await;
            }
            Req::PingReq(p) => {
                self.last_ping = Instant::now();
                self.send(Resp::PongResp(proto::Pong {
                    last_ping_timestamp: p.timestamp,
                    timestamp: now_ms(),
                }))
                .await;
            }
            other => {
                debug!(participant = %pid, request = ?std::mem::discriminant(&other), "LiveKit request ignored")
            }
        }
        None
    }

    async fn add_track(&mut self, req: proto::AddTrackRequest) {
        if !self.grant.can_publish {
            info!(participant = %self.participant, "LiveKit add_track without publish permission ignored");
            return;
        }
        let audio = req.r#type == proto::TrackType::Audio as i32;
        let codec = req
            .simulcast_codecs
            .first()
            .map(|c| c.codec.to_ascii_lowercase())
            .filter(|c| !c.is_empty());
        let mime_type = match (audio, codec.as_deref()) {
            (true, _) => "audio/opus".to_owned(),
            (false, Some(c)) => format!("video/{}", c.to_ascii_uppercase()),
            (false, None) => "video/VP8".to_owned(),
        };
        if let (false, Some(c)) = (audio, &codec) {
            self.codecs.asked(&req.cid, c);
        }
        let codecs = req
            .simulcast_codecs
            .iter()
            .map(|c| proto::SimulcastCodecInfo {
                mime_type: format!("video/{}", c.codec.to_ascii_uppercase()),
                cid: c.cid.clone(),
                layers: if c.layers.is_empty() {
                    req.layers.clone()
                } else {
                    c.layers.clone()
                },
                video_layer_mode: c.video_layer_mode,
                ..Default::default()
            })
            .collect();
        // livekit-client 2.23 still reads the deprecated `layers` (adaptive stream's
        // quality-to-size table); newer clients read `codecs`.
        #[allow(deprecated)]
        let info = proto::TrackInfo {
            sid: sid("TR_"),
            r#type: req.r#type,
            name: req.name.clone(),
            muted: req.muted,
            width: req.width,
            height: req.height,
            source: req.source,
            mime_type,
            simulcast: req.layers.len() > 1,
            layers: req.layers.clone(),
            codecs,
            disable_red: req.disable_red,
            encryption: req.encryption,
            stream: req.stream.clone(),
            ..Default::default()
        };
        self.pending.insert(req.cid.clone(), info.clone());
        let sid = self.sid.clone();
        let published = info.clone();
        self.s.rooms.update(&self.grant.room, &sid, move |m| {
            m.info.tracks.push(published);
            m.info.is_publisher = true;
            true
        });
        self.send(Resp::TrackPublished(proto::TrackPublishedResponse {
            cid: req.cid,
            track: Some(info),
        }))
        .await;
    }

    async fn subscribe(&mut self, tracks: Vec<(TrackRef, TrackRef, String)>) {
        if !self.grant.can_subscribe {
            return;
        }
        let fresh: Vec<(TrackRef, TrackRef, String)> = tracks
            .into_iter()
            .filter(|(t, _, _)| !self.subscribed.contains_key(t))
            .collect();
        if fresh.is_empty() {
            return;
        }
        for (t, _, tsid) in &fresh {
            self.subscribed.insert(t.clone(), tsid.clone());
            self.by_sid.insert(tsid.clone(), t.clone());
        }
        let pairs: Vec<(TrackRef, TrackRef)> =
            fresh.into_iter().map(|(t, seen, _)| (t, seen)).collect();
        if let Err(e) = self
            .s
            .sfu
            .subscribe_as(&self.conference, &self.participant, &pairs)
            .await
        {
            debug!(participant = %self.participant, error = %e, "LiveKit subscription failed");
        }
    }

    async fn on_event(&mut self, ev: SfuEvent) -> Option<End> {
        match ev.kind {
            SfuEventKind::LocalCandidate(Some(cand)) => {
                // LiveKit's SDKs read sdpMid as a string (the Rust SDK's parser fails on
                // null); with BUNDLE any section names the one transport.
                let init = serde_json::json!({
                    "candidate": cand.candidate,
                    "sdpMid": cand.sdp_mid.unwrap_or_else(|| "0".to_owned()),
                    "sdpMLineIndex": cand.sdp_mline_index.unwrap_or(0),
                });
                self.send(Resp::Trickle(proto::TrickleRequest {
                    candidate_init: init.to_string(),
                    target: proto::SignalTarget::Publisher as i32,
                    r#final: false,
                }))
                .await;
            }
            SfuEventKind::Answer(sdp) => self.send_answer(sdp).await,
            SfuEventKind::NeedOffer { audio, video } => {
                self.send(Resp::MediaSectionsRequirement(
                    proto::MediaSectionsRequirement {
                        num_audios: audio,
                        num_videos: video,
                    },
                ))
                .await;
            }
            SfuEventKind::TrackPublished(t) => self.on_media(t.track, t.kind, t.mime_type),
            SfuEventKind::TrackUnpublished(t) => {
                let sid = self.sid.clone();
                self.s.rooms.update(&self.grant.room, &sid, |m| {
                    let gone: Vec<String> = m
                        .media
                        .iter()
                        .filter(|(_, r)| **r == t.track)
                        .map(|(s, _)| s.clone())
                        .collect();
                    for s in &gone {
                        m.media.remove(s);
                        m.info.tracks.retain(|ti| &ti.sid != s);
                    }
                    !gone.is_empty()
                });
            }
            SfuEventKind::ActiveSpeakers(list) => {
                let mut speakers: Vec<proto::SpeakerInfo> = Vec::new();
                let mut now = Vec::new();
                for sp in &list {
                    if let Some(psid) = self.s.rooms.sid_of(&self.grant.room, &sp.participant) {
                        speakers.push(proto::SpeakerInfo {
                            sid: psid.clone(),
                            level: sp.level,
                            active: true,
                        });
                        now.push(psid);
                    }
                }
                for gone in self.speakers.iter().filter(|s| !now.contains(s)) {
                    speakers.push(proto::SpeakerInfo {
                        sid: gone.clone(),
                        level: 0.0,
                        active: false,
                    });
                }
                self.speakers = now;
                self.send(Resp::SpeakersChanged(proto::SpeakersChanged { speakers }))
                    .await;
            }
            SfuEventKind::LayersNeeded(n) => {
                if let Some((sid, mime)) =
                    self.s
                        .rooms
                        .own_track(&self.grant.room, &self.sid, &n.track)
                {
                    let update = dynacast::update(&sid, &mime, &n);
                    self.s.stats.dynacast[dynacast::enabled_count(&update)]
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.send(Resp::SubscribedQualityUpdate(update)).await;
                }
            }
            SfuEventKind::Left(reason) => return Some(End::SfuLeft(reason)),
            SfuEventKind::DataPacket(p) => self.on_data(p).await,
            SfuEventKind::LocalCandidate(None)
            | SfuEventKind::Offer(_)
            | SfuEventKind::Connected
            | SfuEventKind::DataChannelOpen
            | SfuEventKind::DataChannelMessage(_)
            | SfuEventKind::DataChannelRefused { .. } => {}
        }
        None
    }

    /// Relays a data packet this client sent to the room members it names (all others
    /// when it names none), on the channel it came on.
    async fn on_data(&mut self, p: DataChannelPacket) {
        let stats = &self.s.stats;
        if !self.grant.can_publish_data {
            stats.count_data(2);
            debug!(participant = %self.participant, "LiveKit data packet without the grant to publish data dropped");
            return;
        }
        let relay = match data::relay(p.label(), p.data(), &self.grant.identity, &self.sid) {
            Ok(r) => r,
            Err(e) => {
                stats.count_data(1);
                info!(room = %self.grant.room, participant = %self.participant, label = p.label(), reason = e.code(), error = %e, "LiveKit data packet refused");
                return;
            }
        };
        stats.count_data(0);
        let to = self
            .s
            .rooms
            .data_recipients(&self.grant.room, &self.sid, &relay);
        // To every recipient at once: one whose channel is slow to take it does not hold
        // up the others (each recipient still gets this client's packets in order).
        let sfu = &self.s.sfu;
        let sends = to.iter().map(|participant| {
            sfu.send_data_packet(&self.conference, participant, p.label(), &relay.bytes)
        });
        let results = futures_util::future::join_all(sends).await;
        for (participant, r) in to.iter().zip(results) {
            match r {
                Ok(()) => {}
                Err(SfuError::DataChannelBacklog(queued)) => {
                    stats.count_data(3);
                    debug!(room = %self.grant.room, %participant, queued, "LiveKit data packet dropped for a recipient that is not reading");
                }
                Err(e) => {
                    debug!(room = %self.grant.room, %participant, error = %e, "LiveKit data packet not delivered")
                }
            }
        }
    }

    /// The first media of one of this client's tracks arrived: pair it with its
    /// `add_track` announcement and offer it to the room.
    fn on_media(&mut self, track: TrackRef, kind: MediaKind, mime_type: String) {
        let want = match kind {
            MediaKind::Audio => proto::TrackType::Audio as i32,
            MediaKind::Video => proto::TrackType::Video as i32,
        };
        let cid = if self.pending.contains_key(&track.track_id) {
            Some(track.track_id.clone())
        } else {
            self.pending
                .iter()
                .find(|(_, t)| t.r#type == want)
                .map(|(c, _)| c.clone())
        };
        let Some(info) = cid.and_then(|c| self.pending.remove(&c)) else {
            debug!(participant = %self.participant, track = %track.track_id, "media without an add_track");
            return;
        };
        let tsid = info.sid.clone();
        let (sid, room) = (self.sid.clone(), self.grant.room.clone());
        let media_ref = track.clone();
        let negotiated = tsid.clone();
        self.s.rooms.update(&room, &sid, move |m| {
            m.media.insert(negotiated.clone(), media_ref);
            if let Some(t) = m.info.tracks.iter_mut().find(|t| t.sid == negotiated)
                && !mime_type.is_empty()
            {
                t.mime_type = mime_type;
            }
            true
        });
        let seen = seen_as(&sid, &tsid);
        self.s
            .rooms
            .offer_tracks(&room, &sid, &[(track, seen, tsid)]);
    }

    async fn finish(mut self, end: End) {
        let (hangup, told, outcome) = match &end {
            End::ClientLeave | End::ClientGone => (Some(HangupReason::UserHangup), None, None),
            End::Replaced => (
                Some(HangupReason::UserHangup),
                Some(proto::DisconnectReason::DuplicateIdentity),
                Some(4),
            ),
            End::PingTimeout => (
                Some(HangupReason::KeepAliveTimeout),
                Some(proto::DisconnectReason::SignalClose),
                None,
            ),
            End::Protocol(_) => (
                Some(HangupReason::UnknownError),
                Some(proto::DisconnectReason::StateMismatch),
                Some(5),
            ),
            End::SfuLeft(r) => (
                None,
                Some(match r {
                    HangupReason::Draining => proto::DisconnectReason::ServerShutdown,
                    HangupReason::KeepAliveTimeout
                    | HangupReason::InviteTimeout
                    | HangupReason::IceFailed => proto::DisconnectReason::ConnectionTimeout,
                    _ => proto::DisconnectReason::ParticipantRemoved,
                }),
                None,
            ),
        };
        if let Some(o) = outcome {
            self.s.stats.count(o);
        }
        if let Some(r) = hangup {
            let _ = self
                .s
                .sfu
                .leave(&self.conference, &self.participant, r)
                .await;
        }
        self.s.rooms.leave(&self.grant.room, &self.sid);
        let why = match &end {
            End::ClientLeave => "client left",
            End::ClientGone => "connection closed",
            End::Replaced => "replaced by a newer connection of the same identity",
            End::PingTimeout => "no ping within the ping timeout",
            End::Protocol(why) => why,
            End::SfuLeft(r) => r.as_str(),
        };
        info!(room = %self.grant.room, identity = %self.grant.identity, participant = %self.participant, reason = why, "LiveKit participant left");
        if let Some(reason) = told {
            self.send(Resp::Leave(proto::LeaveRequest {
                reason: reason as i32,
                action: proto::leave_request::Action::Disconnect as i32,
                ..Default::default()
            }))
            .await;
        }
        self.close(why).await;
    }
}
