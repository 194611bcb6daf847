#![recursion_limit = "256"]
//! Matrix signaling against a real Synapse (started by scripts/test): Sluice as a
//! MatrixRTC focus, participants as matrix-sdk clients with webrtc-rs peers.

mod support;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::matrix::*;

const LONG: Duration = Duration::from_secs(30);

/// Track refs of everyone else's streams as announced in `p`'s last stream metadata.
fn announced_tracks(p: &Participant) -> Vec<Value> {
    let Some(md) = p.last_metadata() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (stream_id, s) in md.as_object().unwrap() {
        for track_id in s["tracks"]
            .as_object()
            .map(|t| t.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            out.push(json!({"stream_id": stream_id, "track_id": track_id}));
        }
    }
    out
}

/// Joins participants to a call in `room`, waits until each is connected, publishing, and
/// receiving every other participant's media through a data-channel subscription.
async fn run_call(parts: &[Arc<Participant>], encrypted: bool) {
    for p in parts {
        p.encrypted.store(encrypted, Ordering::Relaxed);
        p.invite().await;
        p.wait_for("answer", LONG, |p| !p.received("m.call.answer").is_empty())
            .await;
        let answer = &p.received("m.call.answer")[0];
        assert_eq!(
            answer.encrypted, encrypted,
            "Sluice replies the way the client wrote"
        );
        assert_eq!(answer.content["sender_session_id"], "sfu");
        assert_eq!(answer.content["dest_session_id"], p.session_id.as_str());
        p.peer.wait_for("connected", LONG, |s| s.connected).await;
        p.peer.start_sending();
    }
    let n = parts.len();
    for p in parts {
        p.wait_for("hello and metadata of every other participant", LONG, |p| {
            let hello = p
                .dc_log
                .lock()
                .unwrap()
                .iter()
                .any(|m| m["type"] == "sluice.hello");
            hello && announced_tracks(p).len() == 2 * (n - 1)
        })
        .await;
        let md = p.last_metadata().unwrap();
        for (_, s) in md.as_object().unwrap() {
            assert_ne!(
                s["user_id"],
                p.user_id.as_str(),
                "a client never sees its own streams"
            );
            assert_eq!(s["purpose"], "m.usermedia");
        }
        p.dc_send(
            "m.call.track_subscription",
            json!({"subscribe": announced_tracks(p)}),
        )
        .await;
    }
    for p in parts {
        let others: Vec<String> = parts
            .iter()
            .filter(|o| o.user_id != p.user_id)
            .flat_map(|o| o.peer.sends.iter().map(|s| s.track_id.clone()))
            .collect();
        p.peer
            .wait_for("media from every other participant", LONG, |st| {
                others
                    .iter()
                    .all(|t| st.remotes.get(t).is_some_and(|r| r.packets.len() > 20))
            })
            .await;
    }
    // Payloads are intact and in order per stream.
    for p in parts {
        let st = p.peer.state.lock().unwrap();
        for o in parts.iter().filter(|o| o.user_id != p.user_id) {
            for s in &o.peer.sends {
                let r = &st.remotes[&s.track_id];
                assert_eq!(r.stream_id, s.stream_id);
                let mut prev = None;
                for pkt in &r.packets {
                    assert_eq!(pkt.sender, o.peer.idx);
                    let len = if pkt.kind == 0 { 120 } else { 1000 };
                    assert_eq!(
                        pkt.payload,
                        support::payload(o.peer.idx, pkt.kind, pkt.seq, len)
                    );
                    if let Some(prev) = prev {
                        assert!(pkt.seq > prev);
                    }
                    prev = Some(pkt.seq);
                }
            }
        }
    }
}

async fn setup(n: u8) -> (SluiceUnderTest, Vec<Arc<Participant>>, matrix_sdk::Room) {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let mut parts = Vec::new();
    for i in 0..n {
        parts.push(Participant::new(i, &sluice, true).await);
    }
    let others: Vec<&Arc<Participant>> = parts.iter().skip(1).collect();
    let room = call_room(&parts[0], &others, &sluice).await;
    for p in &parts {
        let r = room_of(p, &room.room_id().to_owned()).await;
        p.write_membership(&r, sluice.transport(), 3_600_000).await;
    }
    (sluice, parts, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_call_through_sluice_with_plaintext_signaling() {
    let (sluice, parts, _room) = setup(2).await;
    run_call(&parts, false).await;
    assert_eq!(sluice.signaling().session_count(), 2);
    assert_eq!(sluice.sfu.snapshot().participants, 2);
    for p in &parts {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_call_through_sluice_with_olm_encrypted_signaling() {
    let (sluice, parts, _room) = setup(3).await;
    run_call(&parts, true).await;
    assert_eq!(sluice.sfu.snapshot().subscriptions, 12);
    // Every candidate message Sluice sent was encrypted too.
    for p in &parts {
        let c = p.received("m.call.candidates");
        assert!(!c.is_empty());
        assert!(c.iter().all(|r| r.encrypted));
    }
    for p in &parts {
        p.close().await;
    }
}
