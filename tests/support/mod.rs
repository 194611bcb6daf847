//! Test participants: real webrtc-rs peer connections on loopback, signaled through the
//! SFU's command/event API by an in-process router (no Matrix).
#![allow(dead_code)]

use bytes::Bytes;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use sluice::sfu::rtcp::{is_keyframe_request, with_keyframe_requests};
use sluice::sfu::{EventSink, IceCandidate, Sfu, SfuEventKind, TrackRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

pub const AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const CONF: &str = "!room:test|main";

/// One received packet, as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// RTP sequence number as received on the leg.
    pub rtp_seq: u16,
    pub ssrc: u32,
    pub pt: u8,
    pub sender: u8,
    pub kind: u8,
    pub seq: u32,
    /// RTP timestamp as received on the leg.
    pub ts: u32,
    /// The RTP marker bit.
    pub marker: bool,
    pub payload: Bytes,
    pub extensions: Vec<(u8, Bytes)>,
}

/// A remote track as the test peer sees it.
pub struct RemoteInfo {
    pub stream_id: String,
    pub track_id: String,
    pub kind: RtpCodecKind,
    pub track: Arc<dyn TrackRemote>,
    pub packets: Vec<Received>,
    /// Packets without the test marker (real media from a browser).
    pub other_packets: usize,
    pub ended: bool,
    pub ssrc: u32,
    pub task: Option<tokio::task::AbortHandle>,
    /// Sequence numbers received, to tell duplicates (RTX probes repaired by webrtc) from
    /// new packets, as a real receiver's jitter buffer does.
    pub seen: std::collections::HashSet<u16>,
    /// For each duplicate received: how many packets had arrived before it.
    pub duplicates: Vec<usize>,
}

pub struct SendTrack {
    pub stream_id: String,
    pub track_id: String,
    pub kind: RtpCodecKind,
    pub ssrc: u32,
    pub pt: u8,
    pub local: Arc<TrackLocalStaticRTP>,
    pub sender: Arc<dyn RtpSender>,
}

#[derive(Default)]
pub struct PeerState {
    pub remotes: HashMap<String, RemoteInfo>,
    pub local_candidates: Vec<IceCandidate>,
    pub candidates_flow: bool,
    /// Sluice's answer is applied: its candidates can be added.
    pub answered: bool,
    /// Sluice's candidates that arrived before its answer was applied.
    pub early_remote: Vec<IceCandidate>,
    pub connected: bool,
    pub failed: bool,
}

pub struct TestPeer {
    pub idx: u8,
    pub id: String,
    pub pc: Arc<dyn PeerConnection>,
    pub sends: Vec<SendTrack>,
    pub dc: Arc<dyn DataChannel>,
    pub state: Arc<Mutex<PeerState>>,
    pub changed: Arc<Notify>,
    pub plis: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
    pub sent: Arc<Mutex<HashMap<u8, u32>>>,
    /// The RFC 6464 level (−dBov, 0 loudest … 127 silent) the audio stream carries.
    pub audio_level: Arc<std::sync::atomic::AtomicU8>,
    /// Keyframe requests received, by media SSRC.
    pub pli_ssrcs: Arc<Mutex<Vec<u32>>>,
    /// Per simulcast layer: stop sending it.
    pub layer_stopped: Arc<[AtomicBool; 3]>,
    /// Do not answer keyframe requests (keyframes only on the periodic schedule).
    pub ignore_plis: Arc<AtomicBool>,
    /// The peer's own tasks, ended by `close` so task counts only reflect the SFU.
    pub tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Data-channel events, taken by whoever drives the peer's signaling.
    pub dc_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<DcEvent>>>,
    /// Send the audio as Opus DTX does in silence (see `start_sending`).
    pub dtx: Arc<AtomicBool>,
    /// Send the audio in RED as [`red_frame`] says (a peer built with `new_red`).
    pub red_send: Arc<AtomicBool>,
    /// Where Sluice sends the peer's events ([`Router::add`] sets it).
    pub sink: Mutex<Option<EventSink>>,
}

/// A sink whose events nobody reads (a join refused or not followed).
pub fn no_sink() -> EventSink {
    tokio::sync::mpsc::unbounded_channel().0
}

/// What the test peer's data channel delivered.
#[derive(Debug, Clone)]
pub enum DcEvent {
    /// The channel opened.
    Open,
    /// A text message.
    Text(String),
}

/// Where a test peer's local ICE candidates go once its answer is applied.
pub type CandidateSink = Arc<dyn Fn(IceCandidate) + Send + Sync>;

struct PeerHandler {
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    state: Arc<Mutex<PeerState>>,
    changed: Arc<Notify>,
    sink: CandidateSink,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Ok(init) = event.candidate.to_json() else {
            return;
        };
        let c = IceCandidate {
            candidate: init.candidate,
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        };
        let flow = {
            let mut st = self.state.lock().unwrap();
            if !st.candidates_flow {
                st.local_candidates.push(c.clone());
            }
            st.candidates_flow
        };
        if flow {
            (self.sink)(c);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let mut st = self.state.lock().unwrap();
        match state {
            RTCPeerConnectionState::Connected => st.connected = true,
            RTCPeerConnectionState::Failed => st.failed = true,
            _ => {}
        }
        drop(st);
        self.changed.notify_waiters();
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let state = self.state.clone();
        let changed = self.changed.clone();
        let track_id = track.track_id().await;
        let stream_id = track.stream_id().await;
        let kind = track.kind().await;
        state.lock().unwrap().remotes.insert(
            track_id.clone(),
            RemoteInfo {
                stream_id,
                track_id: track_id.clone(),
                kind,
                track: track.clone(),
                packets: Vec::new(),
                other_packets: 0,
                ended: false,
                ssrc: 0,
                task: None,
                seen: Default::default(),
                duplicates: Vec::new(),
            },
        );
        let tid = track_id.clone();
        let task = tokio::spawn(async move {
            while let Some(evt) = track.poll().await {
                match evt {
                    TrackRemoteEvent::OnOpen(init) => {
                        if let Some(r) = state.lock().unwrap().remotes.get_mut(&track_id) {
                            r.ssrc = init.ssrc;
                        }
                    }
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        // A RED packet's test payload is its primary block (its redundant
                        // block is the previous one).
                        let parsed = sluice::sfu::codec::red_primary(&p.payload)
                            .and_then(|(at, _)| parse_payload(&p.payload[at..]))
                            .or_else(|| parse_payload(&p.payload));
                        let Some((sender, kind, seq)) = parsed else {
                            // Real media (from a browser): counted, not recorded.
                            if let Some(r) = state.lock().unwrap().remotes.get_mut(&track_id) {
                                r.other_packets += 1;
                            }
                            continue;
                        };
                        let rec = Received {
                            rtp_seq: p.header.sequence_number,
                            ssrc: p.header.ssrc,
                            pt: p.header.payload_type,
                            sender,
                            kind,
                            seq,
                            ts: p.header.timestamp,
                            marker: p.header.marker,
                            payload: p.payload.clone(),
                            extensions: p
                                .header
                                .extensions
                                .iter()
                                .map(|e| (e.id, e.payload.clone()))
                                .collect(),
                        };
                        if let Some(r) = state.lock().unwrap().remotes.get_mut(&track_id) {
                            if r.seen.insert(rec.rtp_seq) {
                                r.packets.push(rec);
                            } else {
                                let n = r.packets.len();
                                r.duplicates.push(n);
                            }
                        }
                        changed.notify_waiters();
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
            if let Some(r) = state.lock().unwrap().remotes.get_mut(&track_id) {
                r.ended = true;
            }
            changed.notify_waiters();
        });
        if let Some(r) = self.state.lock().unwrap().remotes.get_mut(&tid) {
            r.task = Some(task.abort_handle());
        }
        self.tasks.lock().unwrap().push(task);
    }
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

/// A sink handing candidates straight to the SFU, as the in-process signaling does.
/// Hands a test peer's candidates to Sluice, on the runtime this is called on.
pub fn sfu_sink(sfu: &Sfu, id: &str) -> CandidateSink {
    let sfu = sfu.clone();
    let pid = id.to_owned();
    let rt = tokio::runtime::Handle::current();
    Arc::new(move |c| {
        let sfu = sfu.clone();
        let pid = pid.clone();
        rt.spawn(async move {
            let _ = sfu.add_remote_candidate(CONF, &pid, c).await;
        });
    })
}

impl TestPeer {
    /// A peer publishing one Opus and one VP8 track. Each peer uses its own payload type
    /// numbers, so forwarding between peers must rewrite them.
    pub async fn new(sfu: &Sfu, idx: u8, publish: bool) -> Arc<TestPeer> {
        let id = format!("@user{idx}:test|DEV{idx}");
        let sink = sfu_sink(sfu, &id);
        Self::with_sink(id, idx, publish, sink).await
    }

    /// A peer publishing one VP8 video track in three simulcast layers (q, h, f).
    pub async fn new_simulcast(sfu: &Sfu, idx: u8) -> Arc<TestPeer> {
        Self::new_at(sfu, idx, true, true, "127.0.0.1").await
    }

    /// A peer bound to `ip` (a loopback peer when `ip` is loopback): publishing nothing,
    /// the Opus+VP8 pair, or (`simulcast`) three VP8 layers.
    pub async fn new_at(
        sfu: &Sfu,
        idx: u8,
        publish: bool,
        simulcast: bool,
        ip: &str,
    ) -> Arc<TestPeer> {
        let id = format!("@user{idx}:test|DEV{idx}");
        let sink = sfu_sink(sfu, &id);
        Self::build_at(id, idx, publish, simulcast, sink, ip).await
    }

    /// A peer whose candidates go to `sink` (a signaling layer of the test's choice).
    pub async fn with_sink(
        id: String,
        idx: u8,
        publish: bool,
        sink: CandidateSink,
    ) -> Arc<TestPeer> {
        Self::build(id, idx, publish, false, sink).await
    }

    async fn build(
        id: String,
        idx: u8,
        publish: bool,
        simulcast: bool,
        sink: CandidateSink,
    ) -> Arc<TestPeer> {
        Self::build_at(id, idx, publish, simulcast, sink, "127.0.0.1").await
    }

    /// A peer bound to `ip` whose candidates go to `sink`.
    pub async fn build_at(
        id: String,
        idx: u8,
        publish: bool,
        simulcast: bool,
        sink: CandidateSink,
        ip: &str,
    ) -> Arc<TestPeer> {
        Self::build_full(
            id,
            idx,
            publish,
            simulcast,
            TestVideo::Vp8,
            false,
            false,
            sink,
            ip,
        )
        .await
    }

    /// A receiving VP8 peer that negotiates NACK and RTX, as browsers do: Sluice then
    /// retransmits, and probes, on its legs' RTX streams.
    pub async fn new_with_rtx(sfu: &Sfu, idx: u8) -> Arc<TestPeer> {
        let id = format!("@user{idx}:test|DEV{idx}");
        let sink = sfu_sink(sfu, &id);
        Self::build_rtx_at(id, idx, sink, "127.0.0.1").await
    }

    /// Such a receiving peer bound to `ip`, whose candidates go to `sink`.
    pub async fn build_rtx_at(id: String, idx: u8, sink: CandidateSink, ip: &str) -> Arc<TestPeer> {
        Self::build_full(id, idx, false, false, TestVideo::Vp8, true, false, sink, ip).await
    }

    /// A peer whose video codec is `video` (VP9 or AV1) instead of VP8: publishing (with
    /// `publish`) one stream with three temporal layers (see
    /// [`TestPeer::start_svc_sending`]) and its microphone, or only receiving.
    pub async fn new_svc(sfu: &Sfu, idx: u8, publish: bool, video: TestVideo) -> Arc<TestPeer> {
        let id = format!("@user{idx}:test|DEV{idx}");
        let sink = sfu_sink(sfu, &id);
        Self::build_full(
            id,
            idx,
            publish,
            false,
            video,
            false,
            false,
            sink,
            "127.0.0.1",
        )
        .await
    }

    /// A peer that negotiates RFC 2198 RED for its Opus, preferred (first in its offer),
    /// as a browser set up for redundant audio does; publishing the Opus+VP8 pair (sent in
    /// RED once `red_send` is set) or only receiving.
    pub async fn new_red(sfu: &Sfu, idx: u8, publish: bool) -> Arc<TestPeer> {
        let id = format!("@user{idx}:test|DEV{idx}");
        let sink = sfu_sink(sfu, &id);
        Self::build_full(
            id,
            idx,
            publish,
            false,
            TestVideo::Vp8,
            false,
            true,
            sink,
            "127.0.0.1",
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_full(
        id: String,
        idx: u8,
        publish: bool,
        simulcast: bool,
        video: TestVideo,
        rtx: bool,
        red: bool,
        sink: CandidateSink,
        ip: &str,
    ) -> Arc<TestPeer> {
        let loopback = ip.parse::<std::net::IpAddr>().unwrap().is_loopback();
        let mut media = MediaEngine::default();
        let pt_idx = if idx < 16 { idx } else { 2 + idx % 14 }; // 7-bit payload types
        let opus_pt = 111 - pt_idx;
        let vp8_pt = 96 + 2 * pt_idx;
        let (video_mime, video_fmtp) = match video {
            TestVideo::Vp8 => ("video/VP8", ""),
            TestVideo::Vp9 => ("video/VP9", "profile-id=0"),
            TestVideo::Av1 => ("video/AV1", ""),
        };
        if video == TestVideo::Av1 {
            media
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: DEPENDENCY_DESCRIPTOR.to_owned(),
                    },
                    RtpCodecKind::Video,
                    None,
                )
                .unwrap();
        }
        if red {
            media
                .register_codec(
                    codec(
                        "audio/red",
                        48000,
                        2,
                        &format!("{opus_pt}/{opus_pt}"),
                        RED_PT,
                    ),
                    RtpCodecKind::Audio,
                )
                .unwrap();
        }
        media
            .register_codec(
                codec(
                    "audio/opus",
                    48000,
                    2,
                    "minptime=10;useinbandfec=1",
                    opus_pt,
                ),
                RtpCodecKind::Audio,
            )
            .unwrap();
        let mut video_codec = codec(video_mime, 90000, 0, video_fmtp, vp8_pt);
        if rtx {
            video_codec.rtp_codec.rtcp_feedback = vec![RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: String::new(),
            }];
        }
        media
            .register_codec(video_codec, RtpCodecKind::Video)
            .unwrap();
        if rtx {
            media
                .register_codec(
                    codec("video/rtx", 90000, 0, &format!("apt={vp8_pt}"), vp8_pt + 1),
                    RtpCodecKind::Video,
                )
                .unwrap();
        }
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .unwrap();
        let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
        let registry = with_keyframe_requests(registry);
        let state = Arc::new(Mutex::new(PeerState::default()));
        let changed = Arc::new(Notify::new());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(PeerHandler {
            tasks: tasks.clone(),
            state: state.clone(),
            changed: changed.clone(),
            sink,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_include_loopback_candidate(loopback)
                    .build(),
            )
            .with_interceptor_registry(registry)
            .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![format!("{ip}:0")])
            .build()
            .await
            .unwrap();
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let mut sends = Vec::new();
        let stream_id = format!("stream-{idx}");
        let opus = || {
            codec(
                "audio/opus",
                48000,
                2,
                "minptime=10;useinbandfec=1",
                opus_pt,
            )
        };
        let vp8 = || codec(video_mime, 90000, 0, video_fmtp, vp8_pt);
        let one = |ssrc: u32, c: RTCRtpCodecParameters| {
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: c.rtp_codec,
                ..Default::default()
            }]
        };
        if simulcast {
            let codings = LAYERS
                .iter()
                .enumerate()
                .map(|(l, (rid, _, _))| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        rid: (*rid).to_owned(),
                        ssrc: Some(0x2000_0000 + (idx as u32) * 16 + l as u32),
                        ..Default::default()
                    },
                    codec: vp8().rtp_codec,
                    ..Default::default()
                })
                .collect();
            let video = format!("video-{idx}");
            sends.push(
                add_send(
                    &pc,
                    &stream_id,
                    &video,
                    RtpCodecKind::Video,
                    codings,
                    vp8_pt,
                )
                .await,
            );
            // A microphone in the same stream, sent only on `start_audio_sending`.
            let ssrc = 0x1000_0000 + (idx as u32) * 16;
            let audio = format!("audio-{idx}");
            sends.push(
                add_send(
                    &pc,
                    &stream_id,
                    &audio,
                    RtpCodecKind::Audio,
                    one(ssrc, opus()),
                    opus_pt,
                )
                .await,
            );
        } else if publish {
            for (kind, c, pt, name) in [
                (RtpCodecKind::Audio, opus(), opus_pt, "audio"),
                (RtpCodecKind::Video, vp8(), vp8_pt, "video"),
            ] {
                let ssrc = 0x1000_0000 + (idx as u32) * 16 + kind as u32;
                let track_id = format!("{name}-{idx}");
                sends.push(add_send(&pc, &stream_id, &track_id, kind, one(ssrc, c), pt).await);
            }
        }
        let dc = pc.create_data_channel("datachannel", None).await.unwrap();
        let (dc_tx, dc_rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let dc = dc.clone();
            tasks.lock().unwrap().push(tokio::spawn(async move {
                while let Some(evt) = dc.poll().await {
                    match evt {
                        webrtc::data_channel::DataChannelEvent::OnOpen => {
                            let _ = dc_tx.send(DcEvent::Open);
                        }
                        webrtc::data_channel::DataChannelEvent::OnMessage(m) => {
                            let _ = dc_tx
                                .send(DcEvent::Text(String::from_utf8_lossy(&m.data).into_owned()));
                        }
                        webrtc::data_channel::DataChannelEvent::OnClose => break,
                        _ => {}
                    }
                }
            }));
        }
        let plis = Arc::new(AtomicUsize::new(0));
        let pli_ssrcs: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(Vec::new()));
        for s in &sends {
            let local = s.local.clone();
            let plis = plis.clone();
            let pli_ssrcs = pli_ssrcs.clone();
            tasks.lock().unwrap().push(tokio::spawn(async move {
                while let Some(TrackLocalEvent::OnRtcpPacket(pkts)) = local.poll().await {
                    let n = pkts
                        .iter()
                        .filter(|p| is_keyframe_request(p.as_ref()))
                        .count();
                    for p in &pkts {
                        if let Some(pli) = p.as_any().downcast_ref::<PictureLossIndication>() {
                            pli_ssrcs.lock().unwrap().push(pli.media_ssrc);
                        }
                    }
                    plis.fetch_add(n, Ordering::SeqCst);
                }
            }));
        }
        Arc::new(TestPeer {
            idx,
            id,
            pc,
            sends,
            dc,
            state,
            changed,
            plis,
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(Mutex::new(HashMap::new())),
            audio_level: Arc::new(std::sync::atomic::AtomicU8::new(idx)),
            pli_ssrcs,
            layer_stopped: Arc::new(Default::default()),
            ignore_plis: Arc::new(AtomicBool::new(false)),
            tasks,
            dc_rx: Mutex::new(Some(dc_rx)),
            dtx: Arc::new(AtomicBool::new(false)),
            red_send: Arc::new(AtomicBool::new(false)),
            sink: Mutex::new(None),
        })
    }

    /// Creates the offer and joins the conference through the SFU.
    pub async fn join(self: &Arc<Self>, sfu: &Sfu) -> Result<(), sluice::sfu::SfuError> {
        self.join_with(sfu, sluice::sfu::JoinOptions::default())
            .await
    }

    /// [`TestPeer::join`] with options.
    pub async fn join_with(
        self: &Arc<Self>,
        sfu: &Sfu,
        options: sluice::sfu::JoinOptions,
    ) -> Result<(), sluice::sfu::SfuError> {
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer).await.unwrap();
        let sdp = self.pc.local_description().await.unwrap().sdp;
        let sink = self.sink.lock().unwrap().clone().unwrap_or_else(no_sink);
        let answer = sfu.join_with(CONF, &self.id, &sdp, sink, options).await?;
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        for c in self.open_candidates() {
            let _ = sfu.add_remote_candidate(CONF, &self.id, c).await;
        }
        let early = {
            let mut st = self.state.lock().unwrap();
            st.answered = true;
            std::mem::take(&mut st.early_remote)
        };
        for c in early {
            self.add_sluice_candidate(c).await;
        }
        Ok(())
    }

    /// Adds one of Sluice's candidates, or keeps it until Sluice's answer is applied.
    pub async fn add_sluice_candidate(&self, c: IceCandidate) {
        {
            let mut st = self.state.lock().unwrap();
            if !st.answered {
                st.early_remote.push(c);
                return;
            }
        }
        let _ = self
            .pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                ..Default::default()
            })
            .await;
    }

    /// Lets candidates flow to the sink from now on; returns the ones gathered so far.
    pub fn open_candidates(&self) -> Vec<IceCandidate> {
        let mut st = self.state.lock().unwrap();
        st.candidates_flow = true;
        std::mem::take(&mut st.local_candidates)
    }

    pub fn connected(&self) -> bool {
        self.state.lock().unwrap().connected
    }

    /// Sends every send track's stream continuously (audio 50 pps, video 60 pps) until
    /// `stop`.
    pub fn start_sending(self: &Arc<Self>) {
        self.start_streams(false);
    }

    /// Sends only the audio (with its level) of a simulcast peer, whose video goes with
    /// [`TestPeer::start_simulcast_sending`].
    pub fn start_audio_sending(self: &Arc<Self>) {
        self.start_streams(true);
    }

    fn start_streams(self: &Arc<Self>, only_audio: bool) {
        for (i, s) in self.sends.iter().enumerate() {
            if only_audio && s.kind != RtpCodecKind::Audio {
                continue;
            }
            let local = s.local.clone();
            let stop = self.stop.clone();
            let sent = self.sent.clone();
            let (ssrc, pt, kind) = (s.ssrc, s.pt, s.kind);
            let sender = s.sender.clone();
            let idx = self.idx;
            let level = self.audio_level.clone();
            let dtx = self.dtx.clone();
            let red_send = self.red_send.clone();
            let task = tokio::spawn(async move {
                let params = sender.get_parameters().await.ok();
                let ext_id = params.as_ref().and_then(|p| {
                    p.rtp_parameters
                        .header_extensions
                        .iter()
                        .find(|e| e.uri == AUDIO_LEVEL)
                        .map(|e| e.id as u8)
                });
                let red_pt = params.as_ref().and_then(|p| {
                    p.rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("audio/red"))
                        .map(|c| c.payload_type)
                });
                let (interval, len, kind_byte, clock_step) = match kind {
                    RtpCodecKind::Audio => (Duration::from_millis(20), 120, 0u8, 960u32),
                    _ => (Duration::from_millis(16), 1000, 1u8, 1500u32),
                };
                let mut tick = tokio::time::interval(interval);
                let mut seq: u32 = 0;
                // Timestamps follow the frames (20 ms of audio each) whether sent or not.
                let mut frame: u32 = 0;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    frame += 1;
                    // Opus DTX: in silence, one frame in 20 (every 400 ms) is sent; the
                    // sequence numbers stay contiguous and the timestamps jump.
                    if kind == RtpCodecKind::Audio
                        && dtx.load(Ordering::Relaxed)
                        && !frame.is_multiple_of(20)
                    {
                        continue;
                    }
                    let mut p = rtp::Packet::default();
                    p.header.version = 2;
                    p.header.payload_type = pt;
                    p.header.ssrc = ssrc;
                    p.header.sequence_number = (seq as u16).wrapping_add(1000 * i as u16);
                    p.header.timestamp = frame.wrapping_mul(clock_step);
                    p.header.marker = true;
                    if kind == RtpCodecKind::Audio
                        && let Some(id) = ext_id
                    {
                        p.header.extension = true;
                        p.header.extension_profile = 0xBEDE;
                        p.header.extensions.push(rtp::header::Extension {
                            id,
                            payload: Bytes::from(vec![0x80 | level.load(Ordering::Relaxed)]),
                        });
                    }
                    p.payload = payload(idx, kind_byte, seq, len);
                    if kind == RtpCodecKind::Audio
                        && let Some(red_pt) = red_pt
                        && red_send.load(Ordering::Relaxed)
                    {
                        if red_lost(seq) {
                            seq += 1;
                            continue;
                        }
                        let (is_red, body) = red_frame(idx, seq, pt);
                        p.payload = body;
                        if is_red {
                            p.header.payload_type = red_pt;
                        }
                    }
                    if local.write_rtp(p).await.is_err() {
                        break;
                    }
                    sent.lock().unwrap().insert(kind_byte, seq);
                    seq += 1;
                }
            });
            self.tasks.lock().unwrap().push(task);
        }
    }

    /// Sends the three simulcast layers at 30 frames/s, one packet per frame, a keyframe
    /// every 2 s per layer and on each keyframe request for that layer.
    pub fn start_simulcast_sending(self: &Arc<Self>) {
        let s = &self.sends[0];
        let (local, sender, pt) = (s.local.clone(), s.sender.clone(), s.pt);
        let base_ssrc = s.ssrc;
        let pc = self.pc.clone();
        let stop = self.stop.clone();
        let stopped = self.layer_stopped.clone();
        let plis = self.pli_ssrcs.clone();
        let ignore_plis = self.ignore_plis.clone();
        let idx = self.idx;
        let task = tokio::spawn(async move {
            let params = sender.get_parameters().await.unwrap();
            let ext = |uri: &str| {
                params
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|e| e.uri == uri)
                    .map(|e| e.id as u8)
            };
            let mid_id = ext("urn:ietf:params:rtp-hdrext:sdes:mid");
            let rid_id = ext("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id");
            let mut mid = String::new();
            for t in pc.get_transceivers().await {
                if let Ok(Some(snd)) = t.sender().await
                    && snd.id() == sender.id()
                {
                    mid = t.mid().await.ok().flatten().unwrap_or_default();
                }
            }
            let mut tick = tokio::time::interval(Duration::from_millis(33));
            let mut frame: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut requested: Vec<u32> = std::mem::take(&mut *plis.lock().unwrap());
                if ignore_plis.load(Ordering::Relaxed) {
                    requested.clear();
                }
                for (l, (rid, _, _)) in LAYERS.iter().enumerate() {
                    if stopped[l].load(Ordering::Relaxed) {
                        continue;
                    }
                    let ssrc = base_ssrc + l as u32;
                    let key = frame.is_multiple_of(60) || requested.contains(&ssrc);
                    let mut p = rtp::Packet::default();
                    p.header.version = 2;
                    p.header.payload_type = pt;
                    p.header.ssrc = ssrc;
                    p.header.sequence_number = frame as u16;
                    p.header.timestamp = frame.wrapping_mul(3000);
                    p.header.marker = true;
                    if let Some(id) = mid_id {
                        p.header.extensions.push(rtp::header::Extension {
                            id,
                            payload: Bytes::from(mid.clone().into_bytes()),
                        });
                    }
                    if let Some(id) = rid_id {
                        p.header.extensions.push(rtp::header::Extension {
                            id,
                            payload: Bytes::from_static(rid.as_bytes()),
                        });
                    }
                    p.header.extension = !p.header.extensions.is_empty();
                    p.header.extension_profile = 0xBEDE;
                    p.payload = vp8_payload(idx, l, frame, key);
                    if local.write_rtp(p).await.is_err() {
                        return;
                    }
                }
                frame += 1;
            }
        });
        self.tasks.lock().unwrap().push(task);
    }

    /// Sends the video track as one stream with three temporal layers at 30 frames/s, in
    /// the L1T3 pattern T0 T2 T1 T2. VP8: picture id = frame number, TL0PICIDX and TID in
    /// every packet's descriptor. VP9: picture id = frame number, the layer indices and
    /// TL0PICIDX in every packet (non-flexible mode). AV1:
    /// an aggregation header, and a dependency descriptor in every packet
    /// ([`svc_dependency_descriptor`]). A T0 frame is 3 packets, T1 2 and T2 1, of about
    /// 1000 bytes: about 180, 120 and 120 kbit/s. A keyframe every 2 s and at the next T0
    /// frame after a keyframe request. The test marker's kind byte is 20 + the temporal
    /// layer id, its sequence the frame number.
    pub fn start_svc_sending(self: &Arc<Self>, video: TestVideo) {
        let s = self
            .sends
            .iter()
            .find(|s| s.kind == RtpCodecKind::Video)
            .expect("a video track");
        let (local, pt, ssrc) = (s.local.clone(), s.pt, s.ssrc);
        let sender = s.sender.clone();
        let stop = self.stop.clone();
        let plis = self.pli_ssrcs.clone();
        let idx = self.idx;
        let task = tokio::spawn(async move {
            let dd_id = dependency_descriptor_id(&sender, video).await;
            let mut tick = tokio::time::interval(Duration::from_millis(33));
            let mut frame: u32 = 0;
            let mut seq: u16 = 0;
            let mut key_asked = false;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                key_asked |= !std::mem::take(&mut *plis.lock().unwrap()).is_empty();
                let tid = SVC_PATTERN[frame as usize % 4];
                let key = tid == 0 && (frame.is_multiple_of(60) || key_asked);
                if key {
                    key_asked = false;
                }
                let n = SVC_PACKETS[tid as usize];
                for i in 0..n {
                    let (first, last) = (i == 0, i + 1 == n);
                    let mut v = if video == TestVideo::Vp8 {
                        // X, S on the first packet (partition 0); I, L, T; 15-bit picture
                        // id; TL0PICIDX; TID (and Y, a layer sync, on T1 frames); then on
                        // a frame's first packet the frame header (P=0 on a keyframe).
                        let pic = ((frame & 0x7FFF) as u16 | 0x8000).to_be_bytes();
                        let tl0 = (frame / 4) as u8;
                        let sync = if tid == 1 { 0x20 } else { 0 };
                        let mut d = vec![
                            if first { 0x90 } else { 0x80 },
                            0xE0,
                            pic[0],
                            pic[1],
                            tl0,
                            (tid << 6) | sync,
                        ];
                        if first && key {
                            d.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
                            d.extend_from_slice(&640u16.to_le_bytes());
                            d.extend_from_slice(&360u16.to_le_bytes());
                        } else if first {
                            d.extend_from_slice(&[0x01, 0x00, 0x00]);
                        }
                        d
                    } else if video == TestVideo::Av1 {
                        vec![av1_aggregation_header(first, last, key && first)]
                    } else {
                        // I, P (unless a keyframe), L, B on the first, E on the last.
                        let mut b0 = 0xA0u8;
                        if !key {
                            b0 |= 0x40;
                        }
                        if first {
                            b0 |= 0x08;
                        }
                        if last {
                            b0 |= 0x04;
                        }
                        let pic = ((frame & 0x7FFF) as u16 | 0x8000).to_be_bytes();
                        let tl0 = (frame / 4) as u8;
                        vec![b0, pic[0], pic[1], tid << 5, tl0]
                    };
                    v.extend_from_slice(&payload(idx, 20 + tid, frame, 1000));
                    let mut p = rtp::Packet::default();
                    if let Some(id) = dd_id
                        && video == TestVideo::Av1
                    {
                        p.header.extension = true;
                        p.header.extension_profile = 0xBEDE;
                        p.header.extensions.push(rtp::header::Extension {
                            id,
                            payload: svc_dependency_descriptor(first, last, tid, key, frame),
                        });
                    }
                    p.header.version = 2;
                    p.header.payload_type = pt;
                    p.header.ssrc = ssrc;
                    p.header.sequence_number = seq;
                    p.header.timestamp = frame.wrapping_mul(3000);
                    p.header.marker = i + 1 == n;
                    p.payload = Bytes::from(v);
                    if local.write_rtp(p).await.is_err() {
                        return;
                    }
                    seq = seq.wrapping_add(1);
                }
                frame += 1;
            }
        });
        self.tasks.lock().unwrap().push(task);
    }

    /// Sends spatial SVC as Chrome's K-SVC does (L3T3_KEY): 30 pictures/s in the
    /// temporal pattern of [`SVC_PATTERN`], each with three spatial layer frames of
    /// [`SPATIAL_PACKETS`] packets (320×180, 640×360, 1280×720), a keyframe every 2 s and
    /// on request. Upper spatial frames reference their own layer's earlier frames, and
    /// the lower layer only in a keyframe picture. VP9: layers in the payload descriptor,
    /// sizes in every keyframe's scalability structure. AV1: layers in the dependency
    /// descriptor (see [`spatial_dependency_descriptor`]), no sizes. Payload kind bytes:
    /// see [`spatial_kind`].
    pub fn start_spatial_sending(self: &Arc<Self>, video: TestVideo) {
        let s = self
            .sends
            .iter()
            .find(|s| s.kind == RtpCodecKind::Video)
            .expect("a video track");
        let (local, pt, ssrc) = (s.local.clone(), s.pt, s.ssrc);
        let stop = self.stop.clone();
        let plis = self.pli_ssrcs.clone();
        let ignore_plis = self.ignore_plis.clone();
        let idx = self.idx;
        let sender = s.sender.clone();
        let task = tokio::spawn(async move {
            let dd_id = dependency_descriptor_id(&sender, video).await;
            let mut tick = tokio::time::interval(Duration::from_millis(33));
            let mut frame: u32 = 0;
            let mut seq: u16 = 0;
            let mut key_asked = false;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                key_asked |= !std::mem::take(&mut *plis.lock().unwrap()).is_empty()
                    && !ignore_plis.load(Ordering::Relaxed);
                let tid = SVC_PATTERN[frame as usize % 4];
                let key = tid == 0 && (frame.is_multiple_of(60) || key_asked);
                if key {
                    key_asked = false;
                }
                for sid in 0..3u8 {
                    let n = SPATIAL_PACKETS[sid as usize];
                    for i in 0..n {
                        let (first, last) = (i == 0, i + 1 == n);
                        // I, P (not in a keyframe picture), L, B on a layer frame's first
                        // packet, E on its last, V on the keyframe's first.
                        let mut b0 = 0xA0u8;
                        if !key {
                            b0 |= 0x40;
                        }
                        if first {
                            b0 |= 0x08;
                        }
                        if last {
                            b0 |= 0x04;
                        }
                        let ss = key && sid == 0 && first;
                        if ss {
                            b0 |= 0x02;
                        }
                        let pic = ((frame & 0x7FFF) as u16 | 0x8000).to_be_bytes();
                        // TID, SID, D (inter-layer dependency: in a keyframe picture).
                        let layer = (tid << 5) | (sid << 1) | u8::from(key && sid > 0);
                        let mut v = if video == TestVideo::Av1 {
                            vec![av1_aggregation_header(first, last, ss)]
                        } else {
                            vec![b0, pic[0], pic[1], layer, (frame / 4) as u8]
                        };
                        if ss && video != TestVideo::Av1 {
                            // N_S = 2 (three layers), Y: their sizes follow.
                            v.push((2 << 5) | 0x10);
                            for (w, h) in [(320u16, 180u16), (640, 360), (1280, 720)] {
                                v.extend_from_slice(&w.to_be_bytes());
                                v.extend_from_slice(&h.to_be_bytes());
                            }
                        }
                        v.extend_from_slice(&payload(idx, spatial_kind(sid, tid, key), frame, 600));
                        let mut p = rtp::Packet::default();
                        if let Some(id) = dd_id
                            && video == TestVideo::Av1
                        {
                            let dd =
                                spatial_dependency_descriptor(first, last, sid, tid, ss, frame);
                            p.header.extension = true;
                            // A descriptor with its structure is longer than the one-byte
                            // form allows (16 bytes).
                            p.header.extension_profile =
                                if dd.len() > 16 { 0x1000 } else { 0xBEDE };
                            p.header
                                .extensions
                                .push(rtp::header::Extension { id, payload: dd });
                        }
                        p.header.version = 2;
                        p.header.payload_type = pt;
                        p.header.ssrc = ssrc;
                        p.header.sequence_number = seq;
                        p.header.timestamp = frame.wrapping_mul(3000);
                        // The end of the picture: the top spatial layer's last packet.
                        p.header.marker = sid == 2 && last;
                        p.payload = Bytes::from(v);
                        if local.write_rtp(p).await.is_err() {
                            return;
                        }
                        seq = seq.wrapping_add(1);
                    }
                }
                frame += 1;
            }
        });
        self.tasks.lock().unwrap().push(task);
    }

    /// Highest sequence sent on the `kind` stream (0 audio, 1 video).
    pub fn last_sent(&self, kind: u8) -> u32 {
        self.sent.lock().unwrap().get(&kind).copied().unwrap_or(0)
    }

    pub fn track_refs(&self) -> Vec<TrackRef> {
        self.sends
            .iter()
            .map(|s| TrackRef {
                stream_id: s.stream_id.clone(),
                track_id: s.track_id.clone(),
            })
            .collect()
    }

    /// Waits until `f` holds for the peer state, or panics after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&PeerState) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if f(&self.state.lock().unwrap()) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("peer {}: timed out waiting for {what}", self.id);
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    /// Sends a REMB (receiver estimated maximum bitrate) for the forwarded `track_id`.
    pub async fn send_remb(&self, track_id: &str, bitrate: f32) {
        let (track, ssrc) = {
            let st = self.state.lock().unwrap();
            let r = st.remotes.get(track_id).expect("remote track");
            (r.track.clone(), r.ssrc)
        };
        track
            .write_rtcp(vec![Box::new(
                rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate {
                    sender_ssrc: 1,
                    bitrate,
                    ssrcs: vec![ssrc],
                },
            )])
            .await
            .unwrap();
    }

    /// Sends `n` PLIs for the forwarded track `track_id` within about `within`.
    pub async fn send_plis(&self, track_id: &str, n: usize, within: Duration) {
        let (track, ssrc) = {
            let st = self.state.lock().unwrap();
            let r = st.remotes.get(track_id).expect("remote track");
            (r.track.clone(), r.ssrc)
        };
        let gap = within / n as u32;
        for _ in 0..n {
            track
                .write_rtcp(vec![Box::new(PictureLossIndication {
                    sender_ssrc: 1,
                    media_ssrc: ssrc,
                })])
                .await
                .unwrap();
            tokio::time::sleep(gap).await;
        }
    }

    pub async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let _ = self.pc.close().await;
    }
}

/// Generous timeout for anything a test waits on.
pub const LONG: Duration = Duration::from_secs(20);

/// Joins `n` publishing peers and waits until every one is connected and its two tracks
/// are published.
pub async fn join_peers(sfu: &Sfu, router: &Arc<Router>, idxs: &[u8]) -> Vec<Arc<TestPeer>> {
    let mut peers = Vec::new();
    for &i in idxs {
        let p = TestPeer::new(sfu, i, true).await;
        router.add(&p);
        p.join(sfu).await.expect("join");
        p.wait_for("connected", LONG, |s| s.connected).await;
        p.start_sending();
        peers.push(p);
    }
    for p in &peers {
        wait_published(router, p, 2).await;
    }
    peers
}

/// Waits until Sluice has announced `n` tracks published by `peer`.
pub async fn wait_published(router: &Router, peer: &TestPeer, n: usize) {
    router
        .wait_for("tracks published", LONG, |log| {
            log.iter()
                .filter(|e| {
                    e.participant == peer.id && matches!(e.kind, SfuEventKind::TrackPublished(_))
                })
                .count()
                == n
        })
        .await;
}

/// Subscribes every peer in `subs` to every track of every peer in `pubs` (other than its
/// own) and waits until packets of each arrive.
pub async fn subscribe_all(sfu: &Sfu, subs: &[Arc<TestPeer>], pubs: &[Arc<TestPeer>]) {
    for s in subs {
        let refs: Vec<TrackRef> = pubs
            .iter()
            .filter(|p| p.id != s.id)
            .flat_map(|p| p.track_refs())
            .collect();
        sfu.subscribe(CONF, &s.id, &refs).await.expect("subscribe");
    }
    for s in subs {
        let want: Vec<String> = pubs
            .iter()
            .filter(|p| p.id != s.id)
            .flat_map(|p| p.track_refs().into_iter().map(|t| t.track_id))
            .collect();
        s.wait_for("first packets of every subscribed track", LONG, |st| {
            want.iter()
                .all(|t| st.remotes.get(t).is_some_and(|r| !r.packets.is_empty()))
        })
        .await;
    }
}

/// Number of tasks alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

pub mod browser;
mod setup;
pub use setup::*;
mod payloads;
pub use payloads::*;
use payloads::{av1_aggregation_header, dependency_descriptor_id};
pub mod livekit;
pub mod matrix;
mod router;
pub use router::{Router, mark_ended_tracks};

/// Adds a send track (`codings`: its encodings, the first one's SSRC is the track's) to
/// `pc`.
async fn add_send(
    pc: &Arc<dyn PeerConnection>,
    stream_id: &str,
    track_id: &str,
    kind: RtpCodecKind,
    codings: Vec<RTCRtpEncodingParameters>,
    pt: u8,
) -> SendTrack {
    let ssrc = codings[0].rtp_coding_parameters.ssrc.unwrap_or(0);
    let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        track_id.to_owned(),
        kind,
        codings,
    )));
    let sender = pc
        .add_track(local.clone() as Arc<dyn TrackLocal>)
        .await
        .unwrap();
    SendTrack {
        stream_id: stream_id.to_owned(),
        track_id: track_id.to_owned(),
        kind,
        ssrc,
        pt,
        local,
        sender,
    }
}
