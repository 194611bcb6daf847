//! The call-level load test: simulated participants (webrtc-rs) that join calls through
//! Sluice's real signaling (Matrix to-device over plain HTTP, then the data channel),
//! publish synthetic media whose payloads carry a send time and sequence number, subscribe
//! to everyone, and measure loss, reordering and forwarding latency; Sluice's CPU time and
//! RSS are read from `/proc` over the steady-state window.

use crate::matrix::Account;
use bytes::Bytes;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCSessionDescription,
    SettingEngineBuilder, register_default_interceptors,
};

/// What the participants send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Opus-like audio: 20 ms packets (50/s), ~32 kbit/s.
    Audio,
    /// Audio plus three-layer simulcast video (180p/360p/720p at ~150/500/1700 kbit/s,
    /// 1,200-byte packets, a keyframe every 2 s); subscribers ask for 1280×720.
    Video,
    /// Audio plus a screenshare: one VP8 stream (no simulcast) of 1920×1080 at 5 frames/s
    /// sent in bursts, 8 packets a frame and a 60-packet keyframe every 10 s (about
    /// 440 kbit/s, 1,200-byte packets), in a stream of its own declared
    /// `purpose: m.screenshare`; subscribers ask for 1920×1080.
    Screenshare,
}

/// The screenshare profile's stream: frames per second, packets per frame and per
/// keyframe, frames between keyframes, and the size its keyframes announce.
pub(crate) const SCREEN: (u32, u32, u32, u32, (u16, u16)) = (5, 8, 60, 50, (1920, 1080));

/// Average packets per second of the screenshare stream.
pub(crate) fn screen_pps() -> f64 {
    let (fps, delta, key, every, _) = SCREEN;
    fps as f64 * ((every - 1) * delta + key) as f64 / every as f64
}

/// Whether a track id is a load participant's screenshare.
pub(crate) fn is_screen_track(track_id: &str) -> bool {
    track_id.starts_with("lt-screen-")
}

impl Profile {
    /// Parses `audio`, `video` or `screenshare`.
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "audio" => Some(Profile::Audio),
            "video" => Some(Profile::Video),
            "screenshare" => Some(Profile::Screenshare),
            _ => None,
        }
    }
}

/// A load-test run.
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// Homeserver base URL (loopback only).
    pub homeserver: String,
    /// Sluice's user id and device id (its transport).
    pub sluice_user: String,
    /// Sluice's device id.
    pub sluice_device: String,
    /// Rooms (one call each).
    pub rooms: usize,
    /// Participants per room.
    pub participants: usize,
    /// Publishers per room (the first K participants); the rest only listen.
    pub publishers: usize,
    /// Media profile.
    pub profile: Profile,
    /// Participants started per second.
    pub ramp_per_sec: f64,
    /// Steady-state measuring window, after everyone joined and a warm-up.
    pub duration: Duration,
    /// Time between the last join and the start of the window.
    pub warmup: Duration,
    /// Sluice's process id, for its CPU time and RSS (`None`: not measured).
    pub sluice_pid: Option<u32>,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// Drive Janus's VideoRoom at this HTTP API URL (the peer-SFU baseline) instead of
    /// Sluice through Matrix; `sluice_pid` is then Janus's process.
    pub janus: Option<String>,
}

/// Refuses a target that is not on loopback: the tool generates heavy traffic.
pub fn check_loopback(url: &str) -> Result<(), String> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .unwrap_or("");
    let host = host
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "refusing target {url:?}: the load test only runs against loopback addresses"
        ))
    }
}

const MAGIC: &[u8; 4] = b"SLLT";

/// Per received stream: what arrived.
#[derive(Default)]
struct StreamRx {
    received: u64,
    max_seq: Option<u32>,
    first_seq: Option<u32>,
    reordered: u64,
    /// Latency samples (µs) inside the window.
    latencies_us: Vec<u32>,
    /// Received inside the window.
    in_window: u64,
    /// First and highest sequence number of the current run inside the window: a run is
    /// what arrived since this stream (one publisher layer) last became the layer of the
    /// subscriber's leg. The gap while the leg carried another layer is not loss.
    run_start: Option<u32>,
    run_max: Option<u32>,
    /// Packets expected in the finished runs inside the window.
    expected_done: u64,
}

impl StreamRx {
    /// Packets expected inside the window: each run from its first to its highest
    /// sequence number.
    fn expected(&self) -> u64 {
        let run = match (self.run_start, self.run_max) {
            (Some(a), Some(b)) if b >= a => (b - a + 1) as u64,
            _ => 0,
        };
        self.expected_done + run
    }

    /// Counts a packet received inside the window; `switched`: the leg carried another
    /// layer before it, so a new run starts.
    fn count_in_window(&mut self, seq: u32, switched: bool) {
        if switched && self.run_start.is_some() {
            self.expected_done = self.expected();
            self.run_start = None;
            self.run_max = None;
        }
        self.run_start.get_or_insert(seq);
        self.run_max = Some(self.run_max.map_or(seq, |m| m.max(seq)));
    }
}

pub(crate) struct Shared {
    epoch: Instant,
    window_open: AtomicBool,
    window_closed: AtomicBool,
    /// Per (subscriber index, publisher stream number).
    streams: Mutex<HashMap<(u32, u32), StreamRx>>,
    pub(crate) invite_to_answer_ms: Mutex<Vec<f64>>,
    invite_to_media_ms: Mutex<Vec<f64>>,
    joined: AtomicU64,
    /// Latency samples (µs) since the last timeline tick.
    recent: Mutex<Vec<u32>>,
    failed: Mutex<Vec<String>>,
    sent: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

fn opus() -> RTCRtpCodecParameters {
    codec("audio/opus", 48000, 2, "minptime=10;useinbandfec=1", 111)
}

fn vp8() -> RTCRtpCodecParameters {
    codec("video/VP8", 90000, 0, "", 96)
}

fn codec(mime: &str, clock: u32, channels: u16, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: clock,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

struct Handler {
    /// Index of the participant that receives.
    subscriber: u32,
    cand_tx: mpsc::UnboundedSender<Value>,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    invite_at: Arc<Mutex<Option<Instant>>>,
    first_media: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.cand_tx.send(json!({"candidate": init.candidate, "sdpMid": init.sdp_mid, "sdpMLineIndex": init.sdp_mline_index}));
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        let subscriber = self.subscriber;
        let invite_at = self.invite_at.clone();
        let first_media = self.first_media.clone();
        self.tasks.lock().unwrap().push(tokio::spawn(async move {
            // The publisher layer this leg carried last.
            let mut leg_stream: Option<u32> = None;
            while let Some(evt) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(p) = evt else {
                    if matches!(evt, TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError) {
                        break;
                    }
                    continue;
                };
                let Some(at) =
                    (0..=24).find(|i| p.payload.len() >= i + 20 && &p.payload[*i..i + 4] == MAGIC)
                else {
                    continue;
                };
                let b = &p.payload[at..];
                let stream = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                let seq = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                let sent_us =
                    u64::from_be_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]);
                let now = shared.now_us();
                if !first_media.swap(true, Ordering::Relaxed)
                    && let Some(t) = *invite_at.lock().unwrap()
                {
                    shared
                        .invite_to_media_ms
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1000.0);
                }
                let open = shared.window_open.load(Ordering::Relaxed)
                    && !shared.window_closed.load(Ordering::Relaxed);
                let mut streams = shared.streams.lock().unwrap();
                let s = streams.entry((subscriber, stream)).or_default();
                let switched = leg_stream.replace(stream) != Some(stream);
                s.received += 1;
                s.first_seq.get_or_insert(seq);
                match s.max_seq {
                    Some(m) if seq < m => s.reordered += 1,
                    _ => s.max_seq = Some(seq),
                }
                if open {
                    let us = now.saturating_sub(sent_us).min(u32::MAX as u64) as u32;
                    s.count_in_window(seq, switched);
                    s.in_window += 1;
                    s.latencies_us.push(us);
                    drop(streams);
                    shared.recent.lock().unwrap().push(us);
                }
            }
        }));
    }
}

/// One published track: (local track, kind, SSRCs, payload type, track id, sender).
pub(crate) type Send = (
    Arc<TrackLocalStaticRTP>,
    RtpCodecKind,
    Vec<u32>,
    u8,
    String,
    Arc<dyn webrtc::rtp_transceiver::RtpSender>,
);

/// One simulated participant.
struct Participant {
    account: Account,
    pc: Arc<dyn PeerConnection>,
    dc: Arc<dyn DataChannel>,
    sends: Vec<Send>,
    call_id: String,
    session_id: String,
    room_id: String,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    stop: Arc<AtomicBool>,
    /// Sluice's user and device.
    sfu: (String, String),
    /// The stream id of what it publishes.
    stream_id: String,
}

/// Video layers: (rid, width, height, packets per second).
const LAYERS: [(&str, u16, u16, u32); 3] = [
    ("q", 320, 180, 16),
    ("h", 640, 360, 52),
    ("f", 1280, 720, 177),
];

/// The stream id of participant `idx`'s screenshare (a stream of its own, as browsers do).
pub(crate) fn screen_stream_id(idx: u32) -> String {
    format!("lt-screen-stream-{idx}")
}

/// What [`build_pc`] returns: the connection, its send tracks, its local candidates (as
/// `{candidate, sdpMid, sdpMLineIndex}`), its tasks, and when its invite went out.
pub(crate) type BuiltPc = (
    Arc<dyn PeerConnection>,
    Vec<Send>,
    mpsc::UnboundedReceiver<Value>,
    Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    Arc<Mutex<Option<Instant>>>,
);

/// A webrtc-rs peer connection on loopback whose received media is counted in `shared`
/// as subscriber `idx`; with `publish`, it carries audio (and, for the video profile,
/// three-layer simulcast VP8) send tracks.
pub(crate) async fn build_pc(
    idx: u32,
    publish: bool,
    profile: Profile,
    shared: Arc<Shared>,
    bind: &str,
) -> Result<BuiltPc, String> {
    let mut media = MediaEngine::default();
    media
        .register_codec(opus(), RtpCodecKind::Audio)
        .map_err(|e| e.to_string())?;
    media
        .register_codec(vp8(), RtpCodecKind::Video)
        .map_err(|e| e.to_string())?;
    let registry =
        register_default_interceptors(Registry::new(), &mut media).map_err(|e| e.to_string())?;
    let (cand_tx, cand_rx) = mpsc::unbounded_channel();
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let invite_at = Arc::new(Mutex::new(None));
    let handler = Arc::new(Handler {
        subscriber: idx,
        cand_tx,
        shared,
        tasks: tasks.clone(),
        invite_at: invite_at.clone(),
        first_media: Arc::new(AtomicBool::new(false)),
    });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_include_loopback_candidate(bind.starts_with("127."))
                .build(),
        )
        .with_interceptor_registry(registry)
        .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec![format!("{bind}:0")])
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let mut sends = Vec::new();
    if publish {
        let stream_id = format!("lt-stream-{idx}");
        // (kind, stream id, track id, (rid, ssrc) per encoding, codec).
        let mut tracks = vec![(
            RtpCodecKind::Audio,
            stream_id.clone(),
            format!("lt-audio-{idx}"),
            vec![(String::new(), 0x4000_0000 + idx * 16)],
            opus(),
        )];
        if profile == Profile::Screenshare {
            tracks.push((
                RtpCodecKind::Video,
                screen_stream_id(idx),
                format!("lt-screen-{idx}"),
                vec![(String::new(), 0x5000_0000 + idx * 16 + 8)],
                vp8(),
            ));
        }
        if profile == Profile::Video {
            tracks.push((
                RtpCodecKind::Video,
                stream_id.clone(),
                format!("lt-video-{idx}"),
                LAYERS
                    .iter()
                    .enumerate()
                    .map(|(l, (rid, ..))| ((*rid).to_owned(), 0x5000_0000 + idx * 16 + l as u32))
                    .collect(),
                vp8(),
            ));
        }
        for (kind, stream_id, track_id, encodings, c) in tracks {
            let codings = encodings
                .iter()
                .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        rid: rid.clone(),
                        ssrc: Some(*ssrc),
                        ..Default::default()
                    },
                    codec: c.rtp_codec.clone(),
                    ..Default::default()
                })
                .collect();
            let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                stream_id.clone(),
                track_id.clone(),
                track_id.clone(),
                kind,
                codings,
            )));
            let sender = pc
                .add_track(local.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(|e| e.to_string())?;
            let ssrcs = encodings.iter().map(|(_, ssrc)| *ssrc).collect();
            sends.push((local, kind, ssrcs, c.payload_type, track_id, sender));
        }
    }
    Ok((pc, sends, cand_rx, tasks, invite_at))
}

async fn build_participant(
    account: Account,
    room_id: String,
    idx: u32,
    publish: bool,
    profile: Profile,
    shared: Arc<Shared>,
    sfu: (String, String),
) -> Result<
    (
        Arc<Participant>,
        mpsc::UnboundedReceiver<Value>,
        Arc<Mutex<Option<Instant>>>,
    ),
    String,
> {
    let (pc, sends, cand_rx, tasks, invite_at) =
        build_pc(idx, publish, profile, shared, "127.0.0.1").await?;
    let dc = pc
        .create_data_channel("datachannel", None)
        .await
        .map_err(|e| e.to_string())?;
    let p = Arc::new(Participant {
        account,
        pc,
        dc,
        sends,
        call_id: format!("ltcall{idx}"),
        session_id: format!("ltsess{idx}-{}", std::process::id()),
        room_id,
        tasks,
        stop: Arc::new(AtomicBool::new(false)),
        sfu,
        stream_id: format!("lt-stream-{idx}"),
    });
    Ok((p, cand_rx, invite_at))
}

impl Participant {
    fn base(&self, extra: Value) -> Value {
        let mut c = json!({"call_id": self.call_id, "conf_id": "", "room_id": self.room_id,
            "party_id": self.account.device_id, "device_id": self.account.device_id, "version": "1",
            "sender_session_id": self.session_id, "dest_session_id": "sfu"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    }

    fn metadata(&self) -> Value {
        let mut md = serde_json::Map::new();
        for (_, kind, _, _, id, _) in &self.sends {
            let k = if *kind == RtpCodecKind::Audio {
                "audio"
            } else {
                "video"
            };
            let (stream, purpose) = if is_screen_track(id) {
                (
                    id.replacen("lt-screen-", "lt-screen-stream-", 1),
                    "m.screenshare",
                )
            } else {
                (self.stream_id.clone(), "m.usermedia")
            };
            let e = md.entry(stream).or_insert_with(|| {
                json!({"user_id": self.account.user_id, "device_id": self.account.device_id,
                    "purpose": purpose, "audio_muted": false, "video_muted": false, "tracks": {}})
            });
            e["tracks"][id.as_str()] = json!({"kind": k});
        }
        Value::Object(md)
    }

    /// Adds the candidates of an `m.call.candidates` message (end-of-candidates skipped).
    async fn apply_candidates(&self, c: &Value) {
        for cand in c["candidates"].as_array().into_iter().flatten() {
            let Some(s) = cand["candidate"].as_str().filter(|s| !s.is_empty()) else {
                continue;
            };
            let _ = self
                .pc
                .add_ice_candidate(RTCIceCandidateInit {
                    candidate: s.to_owned(),
                    sdp_mid: cand["sdpMid"].as_str().map(str::to_owned),
                    sdp_mline_index: cand["sdpMLineIndex"].as_u64().map(|x| x as u16),
                    ..Default::default()
                })
                .await;
        }
    }

    async fn dc_send(&self, kind: &str, content: Value) {
        let text = json!({"type": kind, "content": content}).to_string();
        let _ = self.dc.send_text(&text).await;
    }

    /// Sends the synthetic media until `stop`.
    fn start_sending(self: &Arc<Self>, shared: Arc<Shared>, stream_base: u32) {
        start_sending(
            &self.pc,
            &self.sends,
            &self.stop,
            &self.tasks,
            shared,
            stream_base,
        );
    }

    async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self
            .account
            .send_to_device(
                "m.call.hangup",
                &self.sfu.0,
                &self.sfu.1,
                self.base(json!({"reason": "user_hangup"})),
            )
            .await;
        let _ = self.pc.close().await;
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Joins one participant: membership, invite, answer, candidates, data channel.
/// Sends the synthetic media of `sends` (from [`build_pc`]) until `stop`; stream numbers
/// start at `stream_base`.
pub(crate) fn start_sending(
    pc: &Arc<dyn PeerConnection>,
    sends: &[Send],
    stop: &Arc<AtomicBool>,
    tasks: &Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shared: Arc<Shared>,
    stream_base: u32,
) {
    for (i, (local, kind, ssrcs, pt, track_id, sender)) in sends.iter().enumerate() {
        let screen = is_screen_track(track_id);
        let streams: Vec<(u32, u32, Duration, usize)> = if *kind == RtpCodecKind::Audio {
            vec![(
                ssrcs[0],
                stream_base + i as u32 * 4,
                Duration::from_millis(20),
                80,
            )]
        } else if screen {
            vec![(
                ssrcs[0],
                stream_base + i as u32 * 4,
                Duration::from_micros(1_000_000 / SCREEN.0 as u64),
                1200,
            )]
        } else {
            LAYERS
                .iter()
                .zip(ssrcs)
                .enumerate()
                .map(|(l, ((_, _, _, pps), ssrc))| {
                    (
                        *ssrc,
                        stream_base + i as u32 * 4 + l as u32,
                        Duration::from_micros(1_000_000 / *pps as u64),
                        1200,
                    )
                })
                .collect()
        };
        for (layer, (ssrc, stream, interval, len)) in streams.into_iter().enumerate() {
            let local = local.clone();
            let stop = stop.clone();
            let shared = shared.clone();
            let (pt, video) = (*pt, *kind == RtpCodecKind::Video);
            let sender = sender.clone();
            let pc = pc.clone();
            let task = tokio::spawn(async move {
                // Simulcast layers carry mid and rid (webrtc-rs does not add them).
                let mut exts: Vec<rtp::header::Extension> = vec![];
                if video && let Ok(params) = sender.get_parameters().await {
                    let id = |uri: &str| {
                        params
                            .rtp_parameters
                            .header_extensions
                            .iter()
                            .find(|e| e.uri == uri)
                            .map(|e| e.id as u8)
                    };
                    let mut mid = String::new();
                    for t in pc.get_transceivers().await {
                        if let Ok(Some(snd)) = t.sender().await
                            && snd.id() == sender.id()
                        {
                            mid = t.mid().await.ok().flatten().unwrap_or_default();
                        }
                    }
                    if let Some(id) = id("urn:ietf:params:rtp-hdrext:sdes:mid") {
                        exts.push(rtp::header::Extension {
                            id,
                            payload: Bytes::from(mid.into_bytes()),
                        });
                    }
                    if let Some(id) = id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id")
                        && !screen
                    {
                        exts.push(rtp::header::Extension {
                            id,
                            payload: Bytes::from_static(LAYERS[layer].0.as_bytes()),
                        });
                    }
                }
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut seq: u32 = 0;
                let mut frame: u32 = 0;
                let per_frame = (interval.as_micros() as u32 * 90 / 1000).max(1);
                let mut buf = vec![0u8; len];
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    // One packet per frame, except a screenshare: a burst per frame.
                    let key = if screen {
                        frame.is_multiple_of(SCREEN.3)
                    } else {
                        frame.is_multiple_of((2_000_000 / interval.as_micros() as u32).max(1))
                    };
                    let burst = match (screen, key) {
                        (false, _) => 1,
                        (true, true) => SCREEN.2,
                        (true, false) => SCREEN.1,
                    };
                    for part in 0..burst {
                        let mut p = rtp::Packet::default();
                        p.header.version = 2;
                        p.header.payload_type = pt;
                        p.header.ssrc = ssrc;
                        p.header.sequence_number = seq as u16;
                        p.header.marker = part + 1 == burst;
                        if !exts.is_empty() {
                            p.header.extension = true;
                            p.header.extension_profile = 0xBEDE;
                            p.header.extensions = exts.clone();
                        }
                        let mut at = 0;
                        if video {
                            p.header.timestamp = frame.wrapping_mul(per_frame);
                            // VP8: descriptor (S on a frame's first packet, picture id), then
                            // on a keyframe's first packet a header carrying the size, else an
                            // interframe byte.
                            let (w, h) = if screen {
                                SCREEN.4
                            } else {
                                (LAYERS[layer].1, LAYERS[layer].2)
                            };
                            let pic = (frame & 0x7FFF) as u16 | 0x8000;
                            let s_bit = if part == 0 { 0x10 } else { 0 };
                            buf[..4].copy_from_slice(&[
                                0x80 | s_bit,
                                0x80,
                                (pic >> 8) as u8,
                                pic as u8,
                            ]);
                            if key && part == 0 {
                                buf[4..10].copy_from_slice(&[0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a]);
                                buf[10..12].copy_from_slice(&w.to_le_bytes());
                                buf[12..14].copy_from_slice(&h.to_le_bytes());
                                at = 14;
                            } else {
                                buf[4] = 0x51;
                                at = 5;
                            }
                        } else {
                            p.header.timestamp = seq.wrapping_mul(960);
                        }
                        buf[at..at + 4].copy_from_slice(MAGIC);
                        buf[at + 4..at + 8].copy_from_slice(&stream.to_be_bytes());
                        buf[at + 8..at + 12].copy_from_slice(&seq.to_be_bytes());
                        buf[at + 12..at + 20].copy_from_slice(&shared.now_us().to_be_bytes());
                        p.payload = Bytes::copy_from_slice(&buf);
                        // Fails until the track is bound (the first negotiation done).
                        if local.write_rtp(p).await.is_ok() {
                            shared.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        seq = seq.wrapping_add(1);
                    }
                    frame = frame.wrapping_add(1);
                }
            });
            tasks.lock().unwrap().push(task);
        }
    }
}

async fn join(
    p: Arc<Participant>,
    opts: &CallOptions,
    shared: Arc<Shared>,
    mut cand_rx: mpsc::UnboundedReceiver<Value>,
    invite_at: Arc<Mutex<Option<Instant>>>,
) -> Result<(), String> {
    let (su, sd) = (opts.sluice_user.clone(), opts.sluice_device.clone());
    let key = format!("_{}_{}_m.call", p.account.user_id, p.account.device_id);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    p.account
        .put_state(
            &p.room_id,
            "org.matrix.msc3401.call.member",
            &key,
            json!({"application": "m.call", "call_id": "", "scope": "m.room",
            "device_id": p.account.device_id, "expires": 3_600_000, "created_ts": now_ms,
            "focus_active": {"type": "sluice", "focus_selection": "oldest_membership"},
            "foci_preferred": [{"type": "sluice", "user_id": su, "device_id": sd}]}),
        )
        .await?;
    let (td_tx, mut td_rx) = mpsc::unbounded_channel();
    let sync = p.account.sync_to_device(td_tx);
    p.tasks.lock().unwrap().push(sync);
    // Data channel: subscribe to everything announced, answer Sluice's offers, pong.
    {
        let p2 = p.clone();
        let task = tokio::spawn(async move {
            let mut subscribed: std::collections::HashSet<String> = Default::default();
            while let Some(evt) = p2.dc.poll().await {
                let DataChannelEvent::OnMessage(m) = evt else {
                    if matches!(evt, DataChannelEvent::OnClose) {
                        break;
                    }
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<Value>(&m.data) else {
                    continue;
                };
                match v["type"].as_str().unwrap_or("") {
                    "m.call.ping" => p2.dc_send("m.call.pong", json!({})).await,
                    "m.call.sdp_stream_metadata_changed" => {
                        let mut subscribe = vec![];
                        for (sid, s) in v["content"]["sdp_stream_metadata"]
                            .as_object()
                            .into_iter()
                            .flatten()
                        {
                            for (tid, t) in s["tracks"].as_object().into_iter().flatten() {
                                if subscribed.insert(tid.clone()) {
                                    let mut e = json!({"stream_id": sid, "track_id": tid});
                                    if is_screen_track(tid) {
                                        e["width"] = json!(SCREEN.4.0);
                                        e["height"] = json!(SCREEN.4.1);
                                    } else if t["kind"] == "video" {
                                        e["width"] = json!(1280);
                                        e["height"] = json!(720);
                                    }
                                    subscribe.push(e);
                                }
                            }
                        }
                        if !subscribe.is_empty() {
                            p2.dc_send(
                                "m.call.track_subscription",
                                json!({"subscribe": subscribe}),
                            )
                            .await;
                        }
                    }
                    "m.call.negotiate" if v["content"]["description"]["type"] == "offer" => {
                        let sdp = v["content"]["description"]["sdp"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        let Ok(offer) = RTCSessionDescription::offer(sdp) else {
                            continue;
                        };
                        if p2.pc.set_remote_description(offer).await.is_err() {
                            continue;
                        }
                        let Ok(answer) = p2.pc.create_answer(None).await else {
                            continue;
                        };
                        if p2.pc.set_local_description(answer).await.is_err() {
                            continue;
                        }
                        if let Some(d) = p2.pc.local_description().await {
                            p2.dc_send(
                                "m.call.negotiate",
                                json!({"description": {"type": "answer", "sdp": d.sdp}}),
                            )
                            .await;
                        }
                    }
                    _ => {}
                }
            }
        });
        p.tasks.lock().unwrap().push(task);
    }
    let offer = p.pc.create_offer(None).await.map_err(|e| e.to_string())?;
    p.pc.set_local_description(offer)
        .await
        .map_err(|e| e.to_string())?;
    let sdp =
        p.pc.local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default();
    *invite_at.lock().unwrap() = Some(Instant::now());
    p.account
        .send_to_device(
            "m.call.invite",
            &su,
            &sd,
            p.base(
                json!({"offer": {"type": "offer", "sdp": sdp}, "lifetime": 30000,
            "org.matrix.msc3077.sdp_stream_metadata": p.metadata()}),
            ),
        )
        .await?;
    // Candidates trickle after the invite.
    {
        let p2 = p.clone();
        let (su, sd) = (su.clone(), sd.clone());
        let task = tokio::spawn(async move {
            while let Some(c) = cand_rx.recv().await {
                let mut batch = vec![c];
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Ok(c) = cand_rx.try_recv() {
                    batch.push(c);
                }
                let _ = p2
                    .account
                    .send_to_device(
                        "m.call.candidates",
                        &su,
                        &sd,
                        p2.base(json!({"candidates": batch})),
                    )
                    .await;
            }
        });
        p.tasks.lock().unwrap().push(task);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut answered = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{}: no answer within 40 s", p.account.user_id));
        }
        let Ok(Some((kind, c))) = tokio::time::timeout(left, td_rx.recv()).await else {
            return Err(format!("{}: signaling stopped", p.account.user_id));
        };
        if c["call_id"] != p.call_id.as_str() {
            continue;
        }
        match kind.as_str() {
            "m.call.answer" if !answered => {
                let sdp = c["answer"]["sdp"].as_str().unwrap_or("").to_owned();
                let answer = RTCSessionDescription::answer(sdp).map_err(|e| e.to_string())?;
                p.pc.set_remote_description(answer)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(t) = *invite_at.lock().unwrap() {
                    shared
                        .invite_to_answer_ms
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1000.0);
                }
                p.account
                    .send_to_device(
                        "m.call.select_answer",
                        &su,
                        &sd,
                        p.base(json!({"selected_party_id": c["party_id"]})),
                    )
                    .await?;
                answered = true;
            }
            "m.call.candidates" => {
                p.apply_candidates(&c).await;
                if answered {
                    break;
                }
            }
            "m.call.hangup" => {
                return Err(format!(
                    "{}: Sluice hung up: {} {}",
                    p.account.user_id, c["reason"], c["error"]
                ));
            }
            _ => {}
        }
    }
    // Later to-device messages (more candidates, a hangup) keep being applied.
    let p2 = p.clone();
    let task = tokio::spawn(async move {
        while let Some((kind, c)) = td_rx.recv().await {
            if kind == "m.call.candidates" && c["call_id"] == p2.call_id.as_str() {
                p2.apply_candidates(&c).await;
            }
        }
    });
    p.tasks.lock().unwrap().push(task);
    Ok(())
}

/// Sluice's CPU seconds (user + system) and RSS bytes, from /proc.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, rss_kb * 1024))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Joins every participant through Janus: per room, a VideoRoom, its publishers, then
/// every participant subscribing to the others' feeds.
async fn join_janus(
    opts: &CallOptions,
    url: &str,
    shared: Arc<Shared>,
) -> Result<Vec<Arc<crate::janus::JanusPeer>>, String> {
    use crate::janus::{Janus, JanusPeer};
    let janus = Janus::new(url);
    let gap = Duration::from_secs_f64(1.0 / opts.ramp_per_sec.max(0.1));
    let total = opts.rooms * opts.participants;
    let base_room = 40_000 + (std::process::id() as u64 % 10_000) * 100;
    let mut peers = Vec::new();
    for r in 0..opts.rooms {
        let room = base_room + r as u64;
        janus.create_room(room, opts.participants).await?;
        let feed = |i: usize| room * 1000 + i as u64 + 1;
        let mut phase = Vec::new();
        for i in 0..opts.participants {
            let idx = (r * opts.participants + i) as u32;
            let publish = i < opts.publishers;
            phase.push(
                JanusPeer::publish_phase(
                    &janus,
                    room,
                    feed(i),
                    idx,
                    publish,
                    opts.profile,
                    shared.clone(),
                )
                .await?,
            );
        }
        for (i, (session, published)) in phase.into_iter().enumerate() {
            let idx = (r * opts.participants + i) as u32;
            let feeds: Vec<u64> = (0..opts.publishers).filter(|j| *j != i).map(feed).collect();
            match JanusPeer::subscribe(
                &janus,
                session,
                published,
                room,
                &feeds,
                idx,
                opts.profile,
                shared.clone(),
            )
            .await
            {
                Ok(p) => {
                    shared.joined.fetch_add(1, Ordering::Relaxed);
                    peers.push(p);
                }
                Err(e) => shared.failed.lock().unwrap().push(e),
            }
            if opts.progress {
                eprintln!(
                    "joined {}/{} participants (Janus)",
                    shared.joined.load(Ordering::Relaxed),
                    total
                );
            }
            tokio::time::sleep(gap).await;
        }
    }
    Ok(peers)
}

/// Runs the load test and returns the report (JSON).
pub async fn run(opts: CallOptions) -> Result<Value, String> {
    check_loopback(opts.janus.as_deref().unwrap_or(&opts.homeserver))?;
    if opts.rooms == 0
        || opts.participants < 2
        || opts.publishers == 0
        || opts.publishers > opts.participants
    {
        return Err(
            "need rooms >= 1, participants >= 2 and 1 <= publishers <= participants".into(),
        );
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        window_open: AtomicBool::new(false),
        window_closed: AtomicBool::new(false),
        streams: Mutex::new(HashMap::new()),
        invite_to_answer_ms: Mutex::new(vec![]),
        invite_to_media_ms: Mutex::new(vec![]),
        joined: AtomicU64::new(0),
        recent: Mutex::new(vec![]),
        failed: Mutex::new(vec![]),
        sent: AtomicU64::new(0),
    });
    let tag = format!(
        "lt{}x{}",
        std::process::id(),
        shared.epoch.elapsed().as_nanos() % 1_000_000
    );
    let mut all: Vec<Arc<Participant>> = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / opts.ramp_per_sec.max(0.1));
    let total = opts.rooms * opts.participants;
    let mut idx = 0u32;
    let mut janus_peers = Vec::new();
    if let Some(url) = opts.janus.clone() {
        janus_peers = join_janus(&opts, &url, shared.clone()).await?;
    } else {
        for r in 0..opts.rooms {
            let mut accounts = Vec::new();
            for i in 0..opts.participants {
                accounts.push(
                    Account::register(&opts.homeserver, &format!("{tag}r{r}p{i}"), "loadtest-pw")
                        .await?,
                );
            }
            let mut invite: Vec<String> =
                accounts.iter().skip(1).map(|a| a.user_id.clone()).collect();
            invite.push(opts.sluice_user.clone());
            let room = accounts[0].create_call_room(&invite).await?;
            for a in accounts.iter().skip(1) {
                a.join(&room).await?;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while !accounts[0].is_joined(&room, &opts.sluice_user).await {
                if Instant::now() > deadline {
                    return Err(format!(
                        "Sluice ({}) did not join {room} within 30 s",
                        opts.sluice_user
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for (i, a) in accounts.into_iter().enumerate() {
                let publish = i < opts.publishers;
                let (p, cand_rx, invite_at) = build_participant(
                    a,
                    room.clone(),
                    idx,
                    publish,
                    opts.profile,
                    shared.clone(),
                    (opts.sluice_user.clone(), opts.sluice_device.clone()),
                )
                .await?;
                match join(p.clone(), &opts, shared.clone(), cand_rx, invite_at).await {
                    Ok(()) => {
                        shared.joined.fetch_add(1, Ordering::Relaxed);
                        if publish {
                            p.start_sending(shared.clone(), idx * 16);
                        }
                    }
                    Err(e) => shared.failed.lock().unwrap().push(e),
                }
                all.push(p);
                idx += 1;
                if opts.progress {
                    eprintln!(
                        "joined {}/{} participants",
                        shared.joined.load(Ordering::Relaxed),
                        total
                    );
                }
                tokio::time::sleep(gap).await;
            }
        }
    }
    tokio::time::sleep(opts.warmup).await;
    let usage_start = opts.sluice_pid.and_then(proc_usage);
    let t0 = Instant::now();
    shared.window_open.store(true, Ordering::Relaxed);
    let mut timeline = vec![];
    let mut last_rx: u64 = 0;
    let mut last_t = Instant::now();
    while t0.elapsed() < opts.duration {
        tokio::time::sleep(Duration::from_secs(1).min(opts.duration.saturating_sub(t0.elapsed())))
            .await;
        let rx: u64 = shared
            .streams
            .lock()
            .unwrap()
            .values()
            .map(|s| s.in_window)
            .sum();
        let dt = last_t.elapsed().as_secs_f64().max(1e-6);
        let pps = (rx - last_rx) as f64 / dt;
        let mut recent: Vec<f64> = std::mem::take(&mut *shared.recent.lock().unwrap())
            .into_iter()
            .map(|u| u as f64 / 1000.0)
            .collect();
        recent.sort_by(|a, b| a.total_cmp(b));
        timeline.push(json!({"t": t0.elapsed().as_secs_f64(), "received_pps": pps,
            "latency_p50_ms": percentile(&recent, 0.5), "latency_p99_ms": percentile(&recent, 0.99)}));
        if opts.progress {
            eprintln!(
                "t={:>5.1}s  received {:>9.0} packets/s",
                t0.elapsed().as_secs_f64(),
                pps
            );
        }
        last_rx = rx;
        last_t = Instant::now();
    }
    shared.window_closed.store(true, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let usage_end = opts.sluice_pid.and_then(proc_usage);
    for p in &all {
        p.close().await;
    }
    for p in &janus_peers {
        p.close().await;
    }
    // Figures.
    let streams = shared.streams.lock().unwrap();
    let mut lat: Vec<f64> = streams
        .values()
        .flat_map(|s| s.latencies_us.iter().map(|&u| u as f64 / 1000.0))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let received: u64 = streams.values().map(|s| s.in_window).sum();
    let expected: u64 = streams
        .values()
        .map(|s| s.expected().max(s.in_window))
        .sum();
    let lost = expected.saturating_sub(received);
    let reordered: u64 = streams.values().map(|s| s.reordered).sum();
    let sorted = |v: &Mutex<Vec<f64>>| {
        let mut v = v.lock().unwrap().clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let ans = sorted(&shared.invite_to_answer_ms);
    let media = sorted(&shared.invite_to_media_ms);
    let pps = received as f64 / window;
    // Streams that delivered in the window (a subscriber that switched simulcast layers
    // during it counts both layers).
    let subscribed_tracks = streams.values().filter(|s| s.in_window > 0).count();
    let sluice = match (usage_start, usage_end) {
        (Some((c0, _)), Some((c1, rss))) => {
            let cpu = c1 - c0;
            json!({"cpu_seconds": cpu,
                   "cpu_cores_used": cpu / window,
                   "cpu_seconds_per_million_packets": if received > 0 { cpu / received as f64 * 1e6 } else { 0.0 },
                   "packets_per_sec_per_core": if cpu > 0.0 { received as f64 / cpu } else { 0.0 },
                   "rss_bytes": rss,
                   "rss_bytes_per_participant": rss / (shared.joined.load(Ordering::Relaxed).max(1)),
                   "rss_bytes_per_subscribed_track": rss / (subscribed_tracks.max(1) as u64)})
        }
        _ => Value::Null,
    };
    Ok(json!({
        "profile": format!("{:?}", opts.profile).to_lowercase(),
        "rooms": opts.rooms, "participants_per_room": opts.participants, "publishers_per_room": opts.publishers,
        "participants_joined": shared.joined.load(Ordering::Relaxed),
        "join_failures": *shared.failed.lock().unwrap(),
        "window_seconds": window,
        "packets_sent_total": shared.sent.load(Ordering::Relaxed),
        "received_streams": subscribed_tracks,
        "received_packets": received,
        "received_packets_per_sec": pps,
        "lost_packets": lost,
        "loss_ratio": if expected > 0 { lost as f64 / expected as f64 } else { 0.0 },
        "reordered_packets": reordered,
        "latency_ms": {"p50": percentile(&lat, 0.5), "p95": percentile(&lat, 0.95), "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0.0)},
        "join_ms": {"invite_to_answer_p50": percentile(&ans, 0.5), "invite_to_answer_p95": percentile(&ans, 0.95),
                    "invite_to_first_media_p50": percentile(&media, 0.5), "invite_to_first_media_p95": percentile(&media, 0.95)},
        "target": if opts.janus.is_some() { "janus" } else { "sluice" },
        "sluice": sluice,
        "timeline": timeline,
    }))
}

/// The report as a human-readable table.
pub fn table(r: &Value) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<42} {v}\n"));
    row("profile", r["profile"].to_string());
    row(
        "participants joined",
        format!(
            "{} ({} rooms × {}, {} publishers each)",
            r["participants_joined"],
            r["rooms"],
            r["participants_per_room"],
            r["publishers_per_room"]
        ),
    );
    row(
        "window (s)",
        format!("{:.1}", r["window_seconds"].as_f64().unwrap_or(0.0)),
    );
    row(
        "received packets/s (all subscribers)",
        format!(
            "{:.0}",
            r["received_packets_per_sec"].as_f64().unwrap_or(0.0)
        ),
    );
    row(
        "loss",
        format!(
            "{} packets ({:.4} %)",
            r["lost_packets"],
            r["loss_ratio"].as_f64().unwrap_or(0.0) * 100.0
        ),
    );
    row("reordered packets", r["reordered_packets"].to_string());
    let l = &r["latency_ms"];
    row(
        "end-to-end latency ms p50/p95/p99/max",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}",
            l["p50"].as_f64().unwrap_or(0.0),
            l["p95"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0)
        ),
    );
    let j = &r["join_ms"];
    row(
        "invite→answer ms p50/p95",
        format!(
            "{:.0} / {:.0}",
            j["invite_to_answer_p50"].as_f64().unwrap_or(0.0),
            j["invite_to_answer_p95"].as_f64().unwrap_or(0.0)
        ),
    );
    row(
        "invite→first media ms p50/p95",
        format!(
            "{:.0} / {:.0}",
            j["invite_to_first_media_p50"].as_f64().unwrap_or(0.0),
            j["invite_to_first_media_p95"].as_f64().unwrap_or(0.0)
        ),
    );
    let s = &r["sluice"];
    if s.is_object() {
        row(
            "Sluice CPU (cores used)",
            format!("{:.3}", s["cpu_cores_used"].as_f64().unwrap_or(0.0)),
        );
        row(
            "Sluice CPU s per million packets",
            format!(
                "{:.3}",
                s["cpu_seconds_per_million_packets"].as_f64().unwrap_or(0.0)
            ),
        );
        row(
            "packets/s per core of Sluice CPU",
            format!(
                "{:.0}",
                s["packets_per_sec_per_core"].as_f64().unwrap_or(0.0)
            ),
        );
        row(
            "Sluice RSS MiB (per subscribed track KiB)",
            format!(
                "{:.1} ({:.0})",
                s["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                s["rss_bytes_per_subscribed_track"].as_f64().unwrap_or(0.0) / 1024.0
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_the_leg_left_and_came_back_to_is_not_loss() {
        let mut s = StreamRx::default();
        // Seq 10..=19 on this layer, one lost (15).
        for q in (10..20).filter(|q| *q != 15) {
            s.count_in_window(q, q == 10);
        }
        assert_eq!(s.expected(), 10);
        // The leg carried another layer meanwhile; back at 50..=54.
        for q in 50..55 {
            s.count_in_window(q, q == 50);
        }
        assert_eq!(s.expected(), 15, "the gap 20..50 counted as loss");
    }

    #[test]
    fn only_loopback_targets() {
        assert!(check_loopback("http://127.0.0.1:8008").is_ok());
        assert!(check_loopback("http://localhost:8008/").is_ok());
        assert!(check_loopback("http://[::1]:8008").is_ok());
        assert!(check_loopback("https://matrix.org").is_err());
        assert!(check_loopback("http://10.0.0.5:8008").is_err());
    }

    #[test]
    fn own_process_usage_is_readable() {
        let (cpu, rss) = proc_usage(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
    }
}
