#![recursion_limit = "256"]
//! Bounds on what one member can make Sluice hold or relay, against a real Synapse:
//! sessions per account, and stream metadata.

mod support;

use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::matrix::*;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_holds_at_most_its_share_of_sessions_in_a_call() {
    let sluice = SluiceUnderTest::start(|m| m.max_sessions_per_account = 2).await;
    let owner = Participant::new(0, &sluice, true).await;
    let greedy = Participant::new(1, &sluice, true).await;
    let room = call_room(&owner, &[&greedy], &sluice).await;
    let room_id = room.room_id().to_owned();
    let r = room_of(&greedy, &room_id).await;

    // Plaintext signaling trusts the claimed device: two made-up devices, each with a
    // membership of its own, take the account's two sessions.
    for (i, fake) in ["FAKE1", "FAKE2"].into_iter().enumerate() {
        let content = json!({"application": "m.call", "call_id": "", "scope": "m.room",
            "device_id": fake, "expires": 3_600_000, "created_ts": now_ms(),
            "foci_preferred": [sluice.transport()]});
        greedy.write_membership_content(&r, content).await;
        let offer = greedy.peer.pc.create_offer(None).await.unwrap();
        greedy.peer.pc.set_local_description(offer).await.unwrap();
        let sdp = greedy.peer.pc.local_description().await.unwrap().sdp;
        let mut c = greedy.base_content(json!({"offer": {"type": "offer", "sdp": sdp}}));
        c["device_id"] = json!(fake);
        c["party_id"] = json!(fake);
        c["call_id"] = json!(format!("fake-call-{i}"));
        greedy.send_to_sfu("m.call.invite", c).await;
    }
    let deadline = tokio::time::Instant::now() + LONG;
    while sluice.signaling().session_count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the made-up devices got {} sessions",
            sluice.signaling().session_count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The account's real device is the third: refused, with the reason, and nothing held.
    greedy
        .write_membership(&r, sluice.transport(), 3_600_000)
        .await;
    greedy.invite().await;
    greedy
        .wait_for("hangup", LONG, |p| p.hangup_reason().is_some())
        .await;
    assert_eq!(
        greedy.hangup_reason().as_deref(),
        Some("sluice.too_many_sessions")
    );
    let h = &greedy.received("m.call.hangup")[0];
    assert!(
        h.content["error"]
            .as_str()
            .unwrap_or("")
            .contains("matrix.max_sessions_per_account"),
        "{}",
        h.content["error"]
    );
    assert_eq!(sluice.signaling().session_count(), 2);

    // Another account in the same call is not affected.
    owner
        .write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    owner.invite().await;
    owner
        .wait_for("owner's answer", LONG, |p| {
            !p.received("m.call.answer").is_empty()
        })
        .await;
    assert_eq!(sluice.signaling().session_count(), 3);
    for p in [&owner, &greedy] {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_metadata_out_of_bounds_is_refused_by_field() {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let alice = Participant::new(0, &sluice, true).await;
    let room = call_room(&alice, &[], &sluice).await;
    alice
        .write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    // An invite whose metadata carries markup as a purpose (and 40 KB of it).
    let offer = alice.peer.pc.create_offer(None).await.unwrap();
    alice.peer.pc.set_local_description(offer).await.unwrap();
    let sdp = alice.peer.pc.local_description().await.unwrap().sdp;
    let mut md = alice.own_metadata();
    for (_, s) in md.as_object_mut().unwrap().iter_mut() {
        s["purpose"] = json!(format!(
            "<img src=x onerror=alert(1)>{}",
            "x".repeat(40_000)
        ));
    }
    let c = alice.base_content(json!({"offer": {"type": "offer", "sdp": sdp},
        "org.matrix.msc3077.sdp_stream_metadata": md}));
    alice.send_to_sfu("m.call.invite", c).await;
    alice
        .wait_for("hangup", LONG, |p| p.hangup_reason().is_some())
        .await;
    assert_eq!(alice.hangup_reason().as_deref(), Some("sluice.bad_request"));
    let h = &alice.received("m.call.hangup")[0];
    assert!(
        h.content["error"]
            .as_str()
            .unwrap_or("")
            .contains("`purpose` must be"),
        "{}",
        h.content["error"]
    );
    assert_eq!(sluice.signaling().session_count(), 0);
    assert!(
        sluice
            .signaling()
            .stats
            .bad_requests
            .load(Ordering::Relaxed)
            >= 1
    );
    alice.close().await;
}
