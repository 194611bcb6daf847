//! The in-process router: delivers the SFU's events to test peers the way a signaling
//! layer would, and records them.

use super::{CONF, TestPeer, answer_offer};
use sluice::sfu::{EventSink, Sfu, SfuEvent, SfuEventKind};
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
        SfuEventKind::LocalCandidate(_) => "Candidate".into(),
        other => format!("{other:?}"),
    }
}
