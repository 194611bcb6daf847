//! The in-process router: delivers the SFU's events to test peers the way a signaling
//! layer would, and records them.

use super::{CONF, TestPeer};
use sluice::sfu::{EventSink, SdpKind, SessionDescription, Sfu, SfuEvent, SfuEventKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use webrtc::peer_connection::RTCSessionDescription;

/// Routes SFU events to test peers the way a signaling layer would, and records them.
/// Every peer added shares the router's sink, so the log keeps one order.
pub struct Router {
    sink: EventSink,
    pub peers: Mutex<HashMap<String, Arc<TestPeer>>>,
    pub log: Mutex<Vec<SfuEvent>>,
    pub changed: Notify,
    /// Offers for these participants are held, not answered (glare tests).
    pub hold_offers: Mutex<Vec<String>>,
    pub held: Mutex<Vec<(String, String)>>,
}

impl Router {
    pub fn start(sfu: &Sfu) -> Arc<Router> {
        let (sink, mut events) = tokio::sync::mpsc::unbounded_channel::<SfuEvent>();
        let router = Arc::new(Router {
            sink,
            peers: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            changed: Notify::new(),
            hold_offers: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
        });
        let r = router.clone();
        let sfu = sfu.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let peer = r.peers.lock().unwrap().get(&ev.participant).cloned();
                if let Some(peer) = peer {
                    r.deliver(&sfu, &peer, &ev).await;
                }
                r.log.lock().unwrap().push(ev);
                r.changed.notify_waiters();
            }
        });
        router
    }

    /// The sink the router reads (for joins made by hand).
    pub fn sink(&self) -> EventSink {
        self.sink.clone()
    }

    /// Forgets a peer that left, and its events (long runs keep the log short).
    pub fn remove(&self, id: &str) {
        self.peers.lock().unwrap().remove(id);
        self.log.lock().unwrap().retain(|e| e.participant != id);
    }

    pub fn add(&self, peer: &Arc<TestPeer>) {
        *peer.sink.lock().unwrap() = Some(self.sink.clone());
        self.peers
            .lock()
            .unwrap()
            .insert(peer.id.clone(), peer.clone());
    }

    async fn deliver(&self, sfu: &Sfu, peer: &Arc<TestPeer>, ev: &SfuEvent) {
        match &ev.kind {
            SfuEventKind::Answer(sdp) => {
                peer.pc
                    .set_remote_description(RTCSessionDescription::answer(sdp.clone()).unwrap())
                    .await
                    .unwrap();
                for c in peer.open_candidates() {
                    let _ = sfu.add_remote_candidate(CONF, &peer.id, c).await;
                }
            }
            SfuEventKind::Offer(sdp) => {
                if self.hold_offers.lock().unwrap().contains(&peer.id) {
                    self.held
                        .lock()
                        .unwrap()
                        .push((peer.id.clone(), sdp.clone()));
                    return;
                }
                answer_offer(sfu, peer, sdp).await;
            }
            SfuEventKind::NeedOffer { audio, video } => {
                // What a LiveKit client does on media_sections_requirement: add the
                // receive-only sections asked for, then offer.
                use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
                use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
                for (kind, n) in [(RtpCodecKind::Audio, *audio), (RtpCodecKind::Video, *video)] {
                    for _ in 0..n {
                        let init = RTCRtpTransceiverInit {
                            direction: RTCRtpTransceiverDirection::Recvonly,
                            streams: vec![],
                            send_encodings: vec![],
                        };
                        peer.pc
                            .add_transceiver_from_kind(kind, Some(init))
                            .await
                            .unwrap();
                    }
                }
                let offer = peer.pc.create_offer(None).await.unwrap();
                peer.pc.set_local_description(offer).await.unwrap();
                let sdp = peer.pc.local_description().await.unwrap().sdp;
                let desc = SessionDescription {
                    kind: SdpKind::Offer,
                    sdp,
                };
                match sfu.remote_description(CONF, &peer.id, desc).await {
                    Ok(()) => {}
                    Err(e) if e.code() == "unknown_participant" => {}
                    Err(e) => panic!("client offer refused: {e}"),
                }
            }
            SfuEventKind::LocalCandidate(Some(c)) => peer.add_sluice_candidate(c.clone()).await,
            _ => {}
        }
    }

    /// Waits until `f` holds for the event log.
    pub async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&[SfuEvent]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if f(&self.log.lock().unwrap()) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let log = self.log.lock().unwrap();
                let kinds: Vec<String> = log
                    .iter()
                    .map(|e| format!("{}:{:?}", e.participant, short(&e.kind)))
                    .collect();
                panic!("timed out waiting for {what}; events: {kinds:?}");
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    pub fn count(&self, f: impl Fn(&SfuEvent) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|e| f(e)).count()
    }
}

fn short(k: &SfuEventKind) -> String {
    match k {
        SfuEventKind::Answer(_) => "Answer".into(),
        SfuEventKind::Offer(_) => "Offer".into(),
        SfuEventKind::NeedOffer { .. } => "NeedOffer".into(),
        SfuEventKind::LocalCandidate(_) => "Candidate".into(),
        other => format!("{other:?}"),
    }
}

/// Answers a Sluice offer on the peer and hands the answer back to the SFU.
pub async fn answer_offer(sfu: &Sfu, peer: &Arc<TestPeer>, sdp: &str) {
    peer.pc
        .set_remote_description(RTCSessionDescription::offer(sdp.to_owned()).unwrap())
        .await
        .unwrap();
    let answer = peer.pc.create_answer(None).await.unwrap();
    peer.pc.set_local_description(answer).await.unwrap();
    let sdp = peer.pc.local_description().await.unwrap().sdp;
    mark_ended_tracks(peer).await;
    let answered = sfu
        .remote_description(
            CONF,
            &peer.id,
            SessionDescription {
                kind: SdpKind::Answer,
                sdp,
            },
        )
        .await;
    match answered {
        Ok(()) => {}
        // The participant left (a test's shutdown) while its offer was being answered.
        Err(e) if e.code() == "unknown_participant" => {}
        Err(e) => panic!("answer refused: {e}"),
    }
}

/// webrtc-rs does not end a remote track when renegotiation stops it (a browser fires
/// `ended`); the test peer derives it from its transceivers' negotiated direction instead.
pub async fn mark_ended_tracks(peer: &Arc<TestPeer>) {
    use rtc::rtp_transceiver::RTCRtpTransceiverDirection as D;
    for t in peer.pc.get_transceivers().await {
        let Ok(Some(r)) = t.receiver().await else {
            continue;
        };
        let track_id = r.track().track_id().await;
        let dir = t.current_direction().await.unwrap_or(D::Unspecified);
        if !matches!(dir, D::Recvonly | D::Sendrecv)
            && let Some(rem) = peer.state.lock().unwrap().remotes.get_mut(&track_id)
        {
            rem.ended = true;
            // Its reader would wait forever (see above): end it, it is the client's.
            if let Some(t) = rem.task.take() {
                t.abort();
            }
        }
    }
    peer.changed.notify_waiters();
}
