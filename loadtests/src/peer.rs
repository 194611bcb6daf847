//! One simulated participant's media side, shared by the Matrix and Janus drivers: the
//! send profiles, the webrtc-rs peer connection (`build_pc`), the synthetic media it sends
//! (`start_sending`: payloads carry a magic, a send time and a sequence number), and what
//! it measures of the streams it receives (`Shared`).

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
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCPeerConnectionIceEvent, SettingEngineBuilder,
    register_default_interceptors,
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

pub(crate) const MAGIC: &[u8; 4] = b"SLLT";

/// Per received stream: what arrived.
#[derive(Default)]
pub(crate) struct StreamRx {
    pub(crate) received: u64,
    pub(crate) max_seq: Option<u32>,
    pub(crate) first_seq: Option<u32>,
    pub(crate) reordered: u64,
    /// Latency samples (µs) inside the window.
    pub(crate) latencies_us: Vec<u32>,
    /// Received inside the window.
    pub(crate) in_window: u64,
    /// First and highest sequence number of the current run inside the window: a run is
    /// what arrived since this stream (one publisher layer) last became the layer of the
    /// subscriber's leg. The gap while the leg carried another layer is not loss.
    pub(crate) run_start: Option<u32>,
    pub(crate) run_max: Option<u32>,
    /// Packets expected in the finished runs inside the window.
    pub(crate) expected_done: u64,
}

impl StreamRx {
    /// Packets expected inside the window: each run from its first to its highest
    /// sequence number.
    pub(crate) fn expected(&self) -> u64 {
        let run = match (self.run_start, self.run_max) {
            (Some(a), Some(b)) if b >= a => (b - a + 1) as u64,
            _ => 0,
        };
        self.expected_done + run
    }

    /// Counts a packet received inside the window; `switched`: the leg carried another
    /// layer before it, so a new run starts.
    pub(crate) fn count_in_window(&mut self, seq: u32, switched: bool) {
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
    pub(crate) epoch: Instant,
    pub(crate) window_open: AtomicBool,
    pub(crate) window_closed: AtomicBool,
    /// Per (subscriber index, publisher stream number).
    pub(crate) streams: Mutex<HashMap<(u32, u32), StreamRx>>,
    pub(crate) invite_to_answer_ms: Mutex<Vec<f64>>,
    pub(crate) invite_to_media_ms: Mutex<Vec<f64>>,
    pub(crate) joined: AtomicU64,
    /// Latency samples (µs) since the last timeline tick.
    pub(crate) recent: Mutex<Vec<u32>>,
    pub(crate) failed: Mutex<Vec<String>>,
    pub(crate) sent: AtomicU64,
}

impl Shared {
    pub(crate) fn now_us(&self) -> u64 {
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
}
