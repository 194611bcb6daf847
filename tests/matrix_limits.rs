#![recursion_limit = "256"]
//! Bounds on what one member can make Sluice hold or relay, against a real Synapse:
//! sessions per account, stream metadata, and a member flooding the data channel and
//! to-device signaling.

mod support;

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Joins `p` to a call of its own and returns how long the invite took to a connected
/// peer with an open data channel.
async fn join_alone(p: &Arc<Participant>, sluice: &SluiceUnderTest) -> Duration {
    let room = call_room(p, &[], sluice).await;
    p.write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    let t = std::time::Instant::now();
    p.invite().await;
    p.wait_for("connected with the data channel open", LONG, |p| {
        p.dc_open.load(Ordering::Relaxed)
    })
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_member_is_cut_to_its_rate_and_other_calls_still_join() {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let quiet = Participant::new(2, &sluice, true).await;
    let quiet_join = join_alone(&quiet, &sluice).await;
    let flooder = Participant::new(0, &sluice, true).await;
    join_alone(&flooder, &sluice).await;

    // The flooder sends data-channel messages far faster than the limit (each one
    // is work for Sluice: a metadata update, merged and rebroadcast), and to-device events
    // from eight tasks at once.
    let stop = Arc::new(AtomicBool::new(false));
    let dc_flood = {
        let (p, stop) = (flooder.clone(), stop.clone());
        tokio::spawn(async move {
            let msg = json!({"type": "m.call.sdp_stream_metadata_changed",
                "content": {"sdp_stream_metadata": {}}})
            .to_string();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if p.peer.dc.send_text(&msg).await.is_err() {
                    break;
                }
                sent += 1;
                // About 3,000 a second: far above the limit, not a memory test.
                if sent.is_multiple_of(16) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            sent
        })
    };
    let to_device: Vec<_> = (0..8)
        .map(|_| {
            let p = flooder.clone();
            tokio::spawn(async move {
                for _ in 0..30 {
                    let c = p.base_content(json!({"candidates": []}));
                    p.send_to_sfu("m.call.candidates", c).await;
                }
            })
        })
        .collect();

    // Meanwhile a member of another call joins.
    let other = Participant::new(3, &sluice, true).await;
    let flood_join = join_alone(&other, &sluice).await;
    for t in to_device {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let sent = dc_flood.await.unwrap();
    let stats = sluice.sfu.stats();
    let limited = stats.data_channel_messages_limited.load(Ordering::Relaxed);
    let to_device_limited = sluice
        .signaling()
        .stats
        .rate_limited
        .load(Ordering::Relaxed);
    eprintln!(
        "join: {quiet_join:?} on a quiet instance, {flood_join:?} under the flood \
         ({sent} data-channel messages, {limited} dropped; 240 to-device events, \
         {to_device_limited} dropped)"
    );
    assert!(
        limited > 0,
        "none of {sent} data-channel messages was dropped"
    );
    assert!(to_device_limited > 0, "no to-device event was dropped");
    // The flooder was told once, and its call goes on.
    flooder
        .wait_for("the rate_limited notice", LONG, |p| {
            p.dc_log
                .lock()
                .unwrap()
                .iter()
                .any(|m| m["type"] == "sluice.error" && m["content"]["code"] == "rate_limited")
        })
        .await;
    let notices = flooder
        .dc_log
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["content"]["code"] == "rate_limited")
        .count();
    assert!(notices <= 2, "{notices} rate_limited notices for one flood");
    assert!(flooder.hangup_reason().is_none());
    assert_eq!(sluice.signaling().session_count(), 3);
    for p in [&quiet, &flooder, &other] {
        p.close().await;
    }
}

/// Sends `m.call.invite` in the legacy form, without `room_id`.
async fn legacy_invite(p: &Participant) {
    let offer = p.peer.pc.create_offer(None).await.unwrap();
    p.peer.pc.set_local_description(offer).await.unwrap();
    let sdp = p.peer.pc.local_description().await.unwrap().sdp;
    let mut content = p.base_content(json!({
        "offer": {"type": "offer", "sdp": sdp}, "lifetime": 30000,
    }));
    content.as_object_mut().unwrap().remove("room_id");
    p.send_to_sfu("m.call.invite", content).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_invite_is_looked_up_in_a_bounded_number_of_rooms() {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    // A member with a call membership: its invite without room_id is answered.
    let member = Participant::new(0, &sluice, true).await;
    let room = call_room(&member, &[], &sluice).await;
    member
        .write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    legacy_invite(&member).await;
    member
        .wait_for("the answer", LONG, |p| {
            !p.received("m.call.answer").is_empty()
        })
        .await;
    // A sender joined to more rooms with Sluice than it scans, with no membership in any:
    // told to name the room, after at most 16 rooms' memberships were read.
    let roamer = Participant::new(1, &sluice, false).await;
    futures_util::future::join_all((0..17).map(|_| call_room(&roamer, &[], &sluice))).await;
    legacy_invite(&roamer).await;
    roamer
        .wait_for("hangup", LONG, |p| p.hangup_reason().is_some())
        .await;
    assert_eq!(
        roamer.hangup_reason().as_deref(),
        Some("sluice.bad_request")
    );
    let h = &roamer.received("m.call.hangup")[0];
    assert!(
        h.content["error"]
            .as_str()
            .unwrap_or("")
            .contains("send `room_id`"),
        "{}",
        h.content["error"]
    );
    assert_eq!(sluice.signaling().session_count(), 1);
    for p in [&member, &roamer] {
        p.close().await;
    }
}
