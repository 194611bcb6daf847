//! The call-level load test: simulated participants (webrtc-rs) that join calls through
//! Sluice's real signaling (Matrix to-device over plain HTTP, then the data channel),
//! publish synthetic media whose payloads carry a send time and sequence number, subscribe
//! to everyone, and measure loss, reordering and forwarding latency; Sluice's CPU time and
//! RSS are read from `/proc` over the steady-state window.

use crate::matrix::Account;
use crate::peer::{Profile, SCREEN, Send, Shared, build_pc, is_screen_track, start_sending};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

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
