#![recursion_limit = "256"]
//! Data-channel limits of the media core, with a real webrtc-rs peer on loopback: one
//! participant's messages are bounded in rate and in backlog (messages emitted and not yet
//! handled by the signaling layer), refused with one `rate_limited` notice per flood and
//! counted. The signaling layer here is the test: it holds on to the messages it receives
//! (a consumer stuck on slow work) or drops them at once.

mod support;

use sluice::sfu::{Sfu, SfuEvent, SfuEventKind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(20);

/// The events the media core sent the peer, kept (not handled) until the test drops them.
#[derive(Default)]
struct Held {
    events: Mutex<Vec<SfuEvent>>,
}

impl Held {
    fn messages(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e.kind, SfuEventKind::DataChannelMessage(_)))
            .count()
    }

    fn refusals(&self) -> Vec<&'static str> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.kind {
                SfuEventKind::DataChannelRefused { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// The signaling layer gets through its backlog: the held messages are handled.
    fn release(&self) {
        self.events.lock().unwrap().clear();
    }
}

/// A peer joined to `sfu` whose events go to the returned [`Held`] (its candidates to the
/// peer); returns once its data channel is open.
async fn joined(sfu: &Sfu) -> (Arc<TestPeer>, Arc<Held>) {
    let peer = TestPeer::new(sfu, 0, false).await;
    let held = Arc::new(Held::default());
    let (sink, mut events) = tokio::sync::mpsc::unbounded_channel::<SfuEvent>();
    {
        let (peer, held) = (peer.clone(), held.clone());
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let SfuEventKind::LocalCandidate(Some(c)) = &ev.kind {
                    peer.add_sluice_candidate(c.clone()).await;
                }
                held.events.lock().unwrap().push(ev);
            }
        });
    }
    *peer.sink.lock().unwrap() = Some(sink);
    peer.join(sfu).await.unwrap();
    peer.wait_for("connected", LONG, |s| s.connected).await;
    let mut dc = peer.dc_rx.lock().unwrap().take().unwrap();
    tokio::time::timeout(LONG, async {
        while !matches!(dc.recv().await, Some(DcEvent::Open) | None) {}
    })
    .await
    .expect("the data channel never opened");
    (peer, held)
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_to_be_handled_are_bounded() {
    let sfu = Sfu::new(sluice::config::SfuConfig {
        data_channel_rate_per_sec: 100_000,
        data_channel_burst: 100_000,
        data_channel_queue: 8,
        ..test_config()
    });
    let (peer, held) = joined(&sfu).await;
    let limited = || {
        sfu.stats()
            .data_channel_messages_limited
            .load(Ordering::Relaxed)
    };

    // 30 messages while the consumer holds every one: 8 wait, 22 are dropped, and the
    // client is told once.
    for i in 0..30 {
        peer.dc.send_text(&format!("{{\"n\": {i}}}")).await.unwrap();
    }
    wait_until("30 messages accounted for", || {
        held.messages() as u64 + limited() >= 30
    })
    .await;
    assert_eq!(held.messages(), 8);
    assert_eq!(limited(), 22);
    assert_eq!(held.refusals(), ["rate_limited"]);

    // Handled: the next ones go through again.
    held.release();
    for i in 0..5 {
        peer.dc.send_text(&format!("{{\"m\": {i}}}")).await.unwrap();
    }
    wait_until("5 more messages", || held.messages() == 5).await;
    assert_eq!(limited(), 22);
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_to_the_rate_with_one_notice() {
    let sfu = Sfu::new(sluice::config::SfuConfig {
        data_channel_rate_per_sec: 20,
        data_channel_burst: 50,
        data_channel_queue: 100_000,
        ..test_config()
    });
    let (peer, held) = joined(&sfu).await;
    let limited = || {
        sfu.stats()
            .data_channel_messages_limited
            .load(Ordering::Relaxed)
    };
    let started = tokio::time::Instant::now();
    let n = 500;
    for i in 0..n {
        peer.dc.send_text(&format!("{{\"n\": {i}}}")).await.unwrap();
    }
    wait_until("the flood accounted for", || {
        held.messages() as u64 + limited() >= n
    })
    .await;
    // At most the burst and what the rate refilled while the flood lasted went through.
    let secs = started.elapsed().as_secs_f64();
    let passed = held.messages();
    eprintln!(
        "{passed} of {n} passed in {secs:.2} s; {} dropped",
        limited()
    );
    assert!(passed >= 50, "only {passed} passed");
    assert!(
        (passed as f64) <= 50.0 + 20.0 * secs + 1.0,
        "{passed} passed in {secs:.2} s"
    );
    assert_eq!(held.refusals(), ["rate_limited"]);

    // The allowance recovers: after a quiet second and a half, messages pass again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    held.release();
    let before = limited();
    for i in 0..10 {
        peer.dc.send_text(&format!("{{\"m\": {i}}}")).await.unwrap();
    }
    wait_until("10 more messages", || held.messages() == 10).await;
    assert_eq!(limited(), before);
    peer.close().await;
}
