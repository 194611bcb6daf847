//! The peer-SFU baseline: the same simulated participants through Janus's VideoRoom plugin,
//! driven over Janus's plain HTTP API (one session per participant, a publisher handle for
//! those who publish, and one multistream subscriber handle for everyone else's feeds).
//!
//! Janus answers with its candidates in the SDP (half-trickle); the participants trickle
//! theirs. Subscribers ask for the highest simulcast substream, the layer Sluice's
//! subscribers get in the video profile. Participants bind to the machine's addresses
//! (`0.0.0.0`; `SLUICE_LOADTEST_JANUS_BIND` overrides): Janus gathers its candidates on
//! interface addresses, not on loopback, and cannot reach a participant bound to it.

use crate::peer::{Profile, Send, Shared, build_pc, start_sending};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};

/// Janus's HTTP API at one base URL (`http://127.0.0.1:8088/janus`).
#[derive(Clone)]
pub struct Janus {
    http: reqwest::Client,
    base: String,
}

/// A participant's publishing connection, answered by Janus, not yet sending.
pub struct Published {
    pc: Arc<dyn PeerConnection>,
    sends: Vec<Send>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// One participant: its Janus session, and its publisher and subscriber connections.
pub struct JanusPeer {
    janus: Janus,
    session: u64,
    publisher: Option<Arc<dyn PeerConnection>>,
    subscriber: Arc<dyn PeerConnection>,
    stop: Arc<AtomicBool>,
    tasks: Vec<Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>>,
    poller: tokio::task::JoinHandle<()>,
}

impl Janus {
    /// A client of the Janus HTTP API at `base`.
    pub fn new(base: &str) -> Janus {
        Janus {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn post(&self, path: &str, mut body: Value) -> Result<Value, String> {
        body["transaction"] = json!(format!("t{}", rand_u64()));
        let url = format!("{}{path}", self.base);
        let v: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("janus {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("janus {url}: {e}"))?;
        if v["janus"] == "error" {
            return Err(format!("janus {url}: {}", v["error"]));
        }
        Ok(v)
    }

    async fn create_session(&self) -> Result<u64, String> {
        let v = self.post("", json!({"janus": "create"})).await?;
        v["data"]["id"].as_u64().ok_or(format!("janus create: {v}"))
    }

    async fn attach(&self, session: u64) -> Result<u64, String> {
        let v = self
            .post(
                &format!("/{session}"),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        v["data"]["id"].as_u64().ok_or(format!("janus attach: {v}"))
    }

    async fn message(
        &self,
        session: u64,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, String> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        self.post(&format!("/{session}/{handle}"), m).await
    }

    async fn trickle(&self, session: u64, handle: u64, candidate: Value) -> Result<(), String> {
        self.post(
            &format!("/{session}/{handle}"),
            json!({"janus": "trickle", "candidate": candidate}),
        )
        .await
        .map(|_| ())
    }

    /// Long-polls the session's events (at most 30 s).
    async fn events(&self, session: u64) -> Result<Vec<Value>, String> {
        let url = format!("{}/{session}?maxev=10", self.base);
        let v: Value = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("janus {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("janus {url}: {e}"))?;
        Ok(match v {
            Value::Array(a) => a,
            other => vec![other],
        })
    }

    /// Polls until an event from `handle` carries a JSEP, or `timeout` passes.
    async fn wait_jsep(
        &self,
        session: u64,
        handle: u64,
        timeout: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for e in self.events(session).await? {
                if e["sender"].as_u64() == Some(handle) && e.get("jsep").is_some() {
                    return Ok(e);
                }
                if e["sender"].as_u64() == Some(handle)
                    && e["plugindata"]["data"]["error"].is_string()
                {
                    return Err(format!("janus: {}", e["plugindata"]["data"]["error"]));
                }
            }
        }
        Err(format!(
            "janus: no SDP from handle {handle} within {timeout:?}"
        ))
    }

    /// Creates VideoRoom `room` for up to `publishers` publishers (VP8, Opus).
    pub async fn create_room(&self, room: u64, publishers: usize) -> Result<(), String> {
        let s = self.create_session().await?;
        let h = self.attach(s).await?;
        self.message(
            s,
            h,
            json!({"request": "create", "room": room, "publishers": publishers,
                "videocodec": "vp8", "audiocodec": "opus", "bitrate": 0,
                "fir_freq": 0, "notify_joining": false}),
            None,
        )
        .await?;
        let _ = self
            .post(&format!("/{s}"), json!({"janus": "destroy"}))
            .await;
        Ok(())
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    h.finish()
}

/// Sets `desc` as `pc`'s local description and returns the SDP it ended up with.
async fn apply_local(
    pc: &Arc<dyn PeerConnection>,
    desc: RTCSessionDescription,
) -> Result<String, String> {
    pc.set_local_description(desc)
        .await
        .map_err(|e| e.to_string())?;
    Ok(pc
        .local_description()
        .await
        .ok_or("no local description")?
        .sdp)
}

/// Sends `pc`'s local candidates to `handle` as they are gathered.
fn trickle_candidates(
    janus: &Janus,
    session: u64,
    handle: u64,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    tasks: &Mutex<Vec<tokio::task::JoinHandle<()>>>,
) {
    let janus = janus.clone();
    tasks.lock().unwrap().push(tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            let _ = janus.trickle(session, handle, c).await;
        }
    }));
}

impl JanusPeer {
    /// Joins room `room` as feed `feed`: publishes (when `publish`) with an offer, and
    /// returns once Janus answered. Subscribing comes later ([`JanusPeer::subscribe`]),
    /// when every publisher of the room is in.
    pub(crate) async fn publish_phase(
        janus: &Janus,
        room: u64,
        feed: u64,
        idx: u32,
        publish: bool,
        profile: Profile,
        shared: Arc<Shared>,
    ) -> Result<(u64, Option<Published>), String> {
        let session = janus.create_session().await?;
        if !publish {
            return Ok((session, None));
        }
        let (pc, sends, cand_rx, tasks, invite_at) =
            build_pc(idx, true, profile, shared, &bind_ip()).await?;
        let handle = janus.attach(session).await?;
        let offer = pc.create_offer(None).await.map_err(|e| e.to_string())?;
        let sdp = apply_local(&pc, offer).await?;
        *invite_at.lock().unwrap() = Some(Instant::now());
        janus
            .message(
                session,
                handle,
                json!({"request": "joinandconfigure", "room": room, "ptype": "publisher",
                    "id": feed, "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": sdp})),
            )
            .await?;
        trickle_candidates(janus, session, handle, cand_rx, &tasks);
        let e = janus
            .wait_jsep(session, handle, Duration::from_secs(20))
            .await?;
        let answer = e["jsep"]["sdp"]
            .as_str()
            .ok_or("janus answer without sdp")?;
        pc.set_remote_description(
            RTCSessionDescription::answer(answer.to_owned()).map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok((session, Some(Published { pc, sends, tasks })))
    }

    /// Subscribes to `feeds` on a new handle (Janus offers, the participant answers), and
    /// starts publishing media.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn subscribe(
        janus: &Janus,
        session: u64,
        published: Option<Published>,
        room: u64,
        feeds: &[u64],
        idx: u32,
        profile: Profile,
        shared: Arc<Shared>,
    ) -> Result<Arc<JanusPeer>, String> {
        let (pc, _, cand_rx, tasks, invite_at) =
            build_pc(idx, false, profile, shared.clone(), &bind_ip()).await?;
        // A lone publisher (the only one in its room) has no feeds to subscribe to; Janus
        // refuses a subscriber join without streams.
        if !feeds.is_empty() {
            let handle = janus.attach(session).await?;
            *invite_at.lock().unwrap() = Some(Instant::now());
            // The 720p layer, which Sluice's subscribers get in the video profile. Janus
            // numbers the substreams of this offer (rids listed q;h;f) from f: substream 0
            // is f (measured: 2, its default, forwards q).
            let streams: Vec<Value> = feeds
                .iter()
                .map(|f| json!({"feed": f, "substream": 0, "temporal": 2}))
                .collect();
            // A feed exists once its publisher's connection is up: retry until then.
            let deadline = Instant::now() + Duration::from_secs(30);
            let e = loop {
                janus
                    .message(
                        session,
                        handle,
                        json!({"request": "join", "room": room, "ptype": "subscriber",
                            "streams": streams}),
                        None,
                    )
                    .await?;
                match janus
                    .wait_jsep(session, handle, Duration::from_secs(20))
                    .await
                {
                    Ok(e) => break e,
                    Err(err) if err.contains("No such feed") && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(err) => return Err(err),
                }
            };
            let offer = e["jsep"]["sdp"].as_str().ok_or("janus offer without sdp")?;
            pc.set_remote_description(
                RTCSessionDescription::offer(offer.to_owned()).map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| e.to_string())?;
            let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
            let sdp = apply_local(&pc, answer).await?;
            janus
                .message(
                    session,
                    handle,
                    json!({"request": "start"}),
                    Some(json!({"type": "answer", "sdp": sdp})),
                )
                .await?;
            trickle_candidates(janus, session, handle, cand_rx, &tasks);
            shared.invite_to_answer_ms.lock().unwrap().push(
                invite_at
                    .lock()
                    .unwrap()
                    .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut all_tasks = vec![tasks];
        let mut publisher = None;
        if let Some(p) = published {
            start_sending(&p.pc, &p.sends, &stop, &p.tasks, shared, idx * 16);
            publisher = Some(p.pc);
            all_tasks.push(p.tasks);
        }
        // Keep the session alive (Janus drops sessions without a poll for 60 s).
        let poller = {
            let janus = janus.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if janus.events(session).await.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            })
        };
        Ok(Arc::new(JanusPeer {
            janus: janus.clone(),
            session,
            publisher,
            subscriber: pc,
            stop,
            tasks: all_tasks,
            poller,
        }))
    }

    /// Stops sending, closes both connections and the Janus session.
    pub async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.poller.abort();
        if let Some(p) = &self.publisher {
            let _ = p.close().await;
        }
        let _ = self.subscriber.close().await;
        for t in &self.tasks {
            for h in t.lock().unwrap().drain(..) {
                h.abort();
            }
        }
        let _ = self
            .janus
            .post(&format!("/{}", self.session), json!({"janus": "destroy"}))
            .await;
    }
}

/// The address participants bind to for Janus: Janus gathers candidates on the machine's
/// interface addresses, not loopback.
fn bind_ip() -> String {
    std::env::var("SLUICE_LOADTEST_JANUS_BIND").unwrap_or_else(|_| "0.0.0.0".into())
}
