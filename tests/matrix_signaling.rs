#![recursion_limit = "256"]
//! Matrix signaling against a real Synapse (started by scripts/test): Sluice as a
//! MatrixRTC focus, participants as matrix-sdk clients with webrtc-rs peers.

mod support;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
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

    // A stream whose metadata says `m.screenshare` is one for the bandwidth allocator
    // (and only while it says so).
    let stream = parts[0].peer.sends[0].stream_id.clone();
    let screenshares = || {
        sluice.sfu.conferences()[0]
            .participants
            .iter()
            .find(|p| p.published.iter().any(|t| t.track.stream_id == stream))
            .map(|p| p.screenshare_streams.clone())
    };
    assert_eq!(screenshares(), Some(vec![]));
    for (purpose, want) in [
        ("m.screenshare", vec![stream.clone()]),
        ("m.usermedia", vec![]),
    ] {
        let mut md = parts[0].own_metadata();
        md[&stream]["purpose"] = json!(purpose);
        parts[0]
            .dc_send(
                "m.call.sdp_stream_metadata_changed",
                json!({"sdp_stream_metadata": md}),
            )
            .await;
        let deadline = Instant::now() + LONG;
        while screenshares().as_ref() != Some(&want) {
            assert!(Instant::now() < deadline, "{purpose}: {:?}", screenshares());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for p in &parts {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_call_through_sluice_with_olm_encrypted_signaling() {
    let (sluice, parts, _room) = setup(3).await;
    run_call(&parts, true).await;
    assert_eq!(sluice.sfu.snapshot().subscriptions, 12);
    // Everyone hears the active speakers, loudest first (levels 0, 1, 2 dBov by index).
    for p in &parts {
        p.wait_for("active speakers", LONG, |p| {
            p.dc_log.lock().unwrap().iter().any(|m| {
                m["type"] == "sluice.active_speakers"
                    && m["content"]["speakers"]
                        .as_array()
                        .is_some_and(|a| a.len() == 3)
            })
        })
        .await;
        let log = p.dc_log.lock().unwrap();
        let m = log
            .iter()
            .rev()
            .find(|m| m["type"] == "sluice.active_speakers")
            .unwrap();
        let users: Vec<&str> = m["content"]["speakers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["user_id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = parts.iter().map(|q| q.user_id.as_str()).collect();
        assert_eq!(users, want);
    }
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

/// Asserts that Sluice holds nothing for any participant.
fn assert_nothing_allocated(sluice: &SluiceUnderTest) {
    assert_eq!(sluice.signaling().session_count(), 0);
    assert_eq!(sluice.sfu.snapshot(), sluice::sfu::SfuSnapshot::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_invites_get_the_specific_hangup_and_allocate_nothing() {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let owner = Participant::new(0, &sluice, true).await;
    let no_membership = Participant::new(1, &sluice, true).await;
    let other_focus = Participant::new(2, &sluice, true).await;
    let spoofer = Participant::new(3, &sluice, true).await;
    let outsider = Participant::new(4, &sluice, true).await;
    let room = call_room(&owner, &[&no_membership, &other_focus, &spoofer], &sluice).await;
    let room_id = room.room_id().to_owned();
    *outsider.room_id.lock().unwrap() = Some(room_id.clone());

    // A membership naming another focus instance.
    let r = room_of(&other_focus, &room_id).await;
    other_focus
        .write_membership(
            &r,
            json!({"type": "sluice", "user_id": sluice.user_id, "device_id": "ANOTHER"}),
            3_600_000,
        )
        .await;
    // The spoofer writes a membership for a device it does not own and claims it.
    let r = room_of(&spoofer, &room_id).await;
    let content = json!({"application": "m.call", "call_id": "", "scope": "m.room",
        "device_id": "NOTMINE", "expires": 3_600_000, "created_ts": now_ms(),
        "foci_preferred": [sluice.transport()]});
    spoofer.write_membership_content(&r, content).await;

    // The outsider (not in the room) and the member without a membership, plaintext.
    for p in [&outsider, &no_membership, &other_focus] {
        p.invite().await;
    }
    // The spoofer signs with its real device but claims NOTMINE, encrypted.
    spoofer.encrypted.store(true, Ordering::Relaxed);
    let offer = spoofer.peer.pc.create_offer(None).await.unwrap();
    spoofer.peer.pc.set_local_description(offer).await.unwrap();
    let sdp = spoofer.peer.pc.local_description().await.unwrap().sdp;
    let mut content = spoofer.base_content(json!({"offer": {"type": "offer", "sdp": sdp}}));
    content["device_id"] = json!("NOTMINE");
    content["party_id"] = json!("NOTMINE");
    spoofer.send_to_sfu("m.call.invite", content).await;

    for (p, why) in [
        (&outsider, "not joined"),
        (&no_membership, "no valid call membership"),
        (&other_focus, "focus is not this"),
        (&spoofer, "Olm sender"),
    ] {
        p.wait_for("hangup", LONG, |p| p.hangup_reason().is_some())
            .await;
        assert_eq!(p.hangup_reason().as_deref(), Some("sluice.unauthorized"));
        let h = &p.received("m.call.hangup")[0];
        assert!(
            h.content["error"].as_str().unwrap_or("").contains(why),
            "{}: {}",
            p.user_id,
            h.content["error"]
        );
        assert!(p.received("m.call.answer").is_empty());
    }
    assert_eq!(
        sluice
            .signaling()
            .stats
            .invites_refused
            .load(Ordering::Relaxed),
        4
    );
    assert_nothing_allocated(&sluice);
    for p in [&owner, &no_membership, &other_focus, &spoofer, &outsider] {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_cleared_membership_and_expiry_each_end_a_session() {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let mut parts = Vec::new();
    for i in 0..4 {
        parts.push(Participant::new(i, &sluice, true).await);
    }
    let others: Vec<&Arc<Participant>> = parts.iter().skip(1).collect();
    let room = call_room(&parts[0], &others, &sluice).await;
    let room_id = room.room_id().to_owned();
    let (a, hanger, clearer, expirer) = (&parts[0], &parts[1], &parts[2], &parts[3]);
    for p in [a, hanger, clearer] {
        let r = room_of(p, &room_id).await;
        p.write_membership(&r, sluice.transport(), 3_600_000).await;
    }
    // Created almost an hour ago: expires about 12 s from now.
    let r = room_of(expirer, &room_id).await;
    let content = json!({"application": "m.call", "call_id": "", "scope": "m.room",
        "device_id": expirer.device_id, "expires": 3_600_000,
        "created_ts": now_ms() - 3_600_000 + 12_000,
        "foci_preferred": [sluice.transport()]});
    expirer.write_membership_content(&r, content).await;
    run_call(&parts, false).await;
    assert_eq!(sluice.signaling().session_count(), 4);

    let streams_of = |p: &Participant| p.peer.sends[0].stream_id.clone();
    let offers = |p: &Participant| {
        p.dc_log
            .lock()
            .unwrap()
            .iter()
            .filter(|m| {
                m["type"] == "m.call.negotiate" && m["content"]["description"]["type"] == "offer"
            })
            .count()
    };

    // 1. m.call.hangup from the client.
    let before = offers(a);
    hanger
        .send_to_sfu(
            "m.call.hangup",
            hanger.base_content(json!({"reason": "user_hangup"})),
        )
        .await;
    let gone = streams_of(hanger);
    a.wait_for("metadata without the hung-up participant", LONG, |a| {
        a.last_metadata().is_some_and(|m| m.get(&gone).is_none())
    })
    .await;
    a.wait_for("renegotiation after the hangup", LONG, |a| {
        offers(a) > before
    })
    .await;
    assert!(
        hanger.hangup_reason().is_none(),
        "no hangup is echoed to a client that hung up"
    );

    // 2. Membership cleared to {}.
    let r = room_of(clearer, &room_id).await;
    clearer.write_membership_content(&r, json!({})).await;
    clearer
        .wait_for(
            "hangup after membership cleared",
            Duration::from_secs(5),
            |p| p.hangup_reason().is_some(),
        )
        .await;
    assert_eq!(clearer.hangup_reason().as_deref(), Some("user_hangup"));
    let gone = streams_of(clearer);
    a.wait_for("metadata without the cleared participant", LONG, |a| {
        a.last_metadata().is_some_and(|m| m.get(&gone).is_none())
    })
    .await;

    // 3. Membership expiry.
    expirer
        .wait_for("hangup after expiry", LONG, |p| p.hangup_reason().is_some())
        .await;
    assert_eq!(expirer.hangup_reason().as_deref(), Some("user_hangup"));
    assert_eq!(sluice.signaling().session_count(), 1);
    let snap = sluice.sfu.snapshot();
    assert_eq!(
        (snap.participants, snap.published_tracks, snap.subscriptions),
        (1, 2, 0)
    );
    for p in &parts {
        p.close().await;
    }
}

/// A member who is kicked, banned or leaves the room loses the call within seconds, even
/// though their call-membership state event stays (they can no longer change it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_banned_and_departed_room_members_are_hung_up() {
    let (sluice, parts, room) = setup(4).await;
    run_call(&parts, false).await;
    assert_eq!(sluice.signaling().session_count(), 4);
    let (owner, kicked, banned, leaver) = (&parts[0], &parts[1], &parts[2], &parts[3]);
    room.kick_user(&kicked.user_id, Some("test kick"))
        .await
        .unwrap();
    room.ban_user(&banned.user_id, Some("test ban"))
        .await
        .unwrap();
    room_of(leaver, &room.room_id().to_owned())
        .await
        .leave()
        .await
        .unwrap();
    for (p, why) in [
        (kicked, "removed from the room"),
        (banned, "banned from the room"),
        (leaver, "left the room"),
    ] {
        // Generous: the homeserver delivers the state change on Sluice's next sync.
        p.wait_for(
            "hangup after losing the room",
            Duration::from_secs(10),
            |p| p.hangup_reason().is_some(),
        )
        .await;
        assert_eq!(p.hangup_reason().as_deref(), Some("sluice.unauthorized"));
        let hangup = &p.received("m.call.hangup")[0];
        let error = hangup.content["error"].as_str().unwrap_or("");
        assert!(error.contains(why), "{}: error {error:?}", p.user_id);
        let gone = p.peer.sends[0].stream_id.clone();
        owner
            .wait_for("metadata without the removed member", LONG, |o| {
                o.last_metadata().is_some_and(|m| m.get(&gone).is_none())
            })
            .await;
    }
    // Their call.member events are still in the room state, valid for an hour.
    let state = room
        .get_state_events("org.matrix.msc3401.call.member".into())
        .await
        .unwrap();
    assert_eq!(state.len(), 4, "the removed members' memberships remain");
    assert_eq!(sluice.signaling().session_count(), 1);
    let snap = sluice.sfu.snapshot();
    assert_eq!((snap.participants, snap.subscriptions), (1, 0));
    // A removed member cannot call again.
    kicked.invite().await;
    kicked
        .wait_for("the refusal of a new invite", LONG, |p| {
            p.received("m.call.hangup").len() >= 2
        })
        .await;
    let refusal = &kicked.received("m.call.hangup")[1];
    assert_eq!(refusal.content["reason"], "sluice.unauthorized");
    assert_eq!(sluice.signaling().session_count(), 1);
    for p in &parts {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_answering_pings_is_hung_up() {
    let sluice = SluiceUnderTest::start(|c| {
        c.keepalive_interval_secs = 1;
        c.keepalive_timeout_secs = 3;
    })
    .await;
    let p = Participant::new(0, &sluice, true).await;
    let room = call_room(&p, &[], &sluice).await;
    p.write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    p.invite().await;
    p.peer.wait_for("connected", LONG, |s| s.connected).await;
    p.wait_for("pings", LONG, |p| {
        p.dc_log
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "m.call.ping")
            .count()
            >= 2
    })
    .await;
    // Still up while it answers.
    assert!(p.hangup_reason().is_none());
    // Bad data-channel messages get sluice.error and do not end the session.
    p.peer
        .dc
        .send(bytes::BytesMut::from(&b"\x00\x01binary"[..]))
        .await
        .unwrap();
    p.peer.dc.send_text("{not json").await.unwrap();
    p.peer.dc.send_text(r#"{"content": {}}"#).await.unwrap();
    p.wait_for("three sluice.error replies", LONG, |p| {
        p.dc_log
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "sluice.error")
            .count()
            >= 3
    })
    .await;
    {
        let log = p.dc_log.lock().unwrap();
        let codes: Vec<&str> = log
            .iter()
            .filter(|m| m["type"] == "sluice.error")
            .map(|m| m["content"]["code"].as_str().unwrap())
            .collect();
        assert!(codes.contains(&"message_refused"), "{codes:?}");
        assert_eq!(
            codes.iter().filter(|c| **c == "malformed").count(),
            2,
            "{codes:?}"
        );
    }
    assert!(p.hangup_reason().is_none());
    p.answer_pings.store(false, Ordering::Relaxed);
    p.wait_for("keepalive hangup", Duration::from_secs(10), |p| {
        p.hangup_reason().is_some()
    })
    .await;
    assert_eq!(p.hangup_reason().as_deref(), Some("keep_alive_timeout"));
    assert_nothing_allocated(&sluice);
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_sluice_with_the_same_store_still_decrypts_olm_invites() {
    let mut sluice = SluiceUnderTest::start(|_| {}).await;
    let first = Participant::new(0, &sluice, true).await;
    let room = call_room(&first, &[], &sluice).await;
    let room_id = room.room_id().to_owned();
    first
        .write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    first.encrypted.store(true, Ordering::Relaxed);
    first.invite().await;
    first
        .wait_for("answer", LONG, |p| !p.received("m.call.answer").is_empty())
        .await;
    let client = first.client.clone();
    first.close().await;

    sluice.restart().await;

    // Same device, same Olm session with Sluice, a new call.
    let again = Participant::with_client(client, 0, &sluice, true).await;
    *again.room_id.lock().unwrap() = Some(room_id);
    again.encrypted.store(true, Ordering::Relaxed);
    again.invite().await;
    again
        .wait_for("answer after restart", LONG, |p| {
            !p.received("m.call.answer").is_empty()
        })
        .await;
    let answer = &again.received("m.call.answer")[0];
    assert!(answer.encrypted);
    again
        .peer
        .wait_for("connected", LONG, |s| s.connected)
        .await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_to_device_messages_are_refused_without_leftovers() {
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let p = Participant::new(0, &sluice, true).await;
    let room = call_room(&p, &[], &sluice).await;
    p.write_membership(&room, sluice.transport(), 3_600_000)
        .await;
    let offer = p.peer.pc.create_offer(None).await.unwrap();
    p.peer.pc.set_local_description(offer).await.unwrap();
    let sdp = p.peer.pc.local_description().await.unwrap().sdp;
    let stats = &sluice.signaling().stats;

    // Unaddressable: no call_id, or one of the wrong type. Counted, nothing sent.
    let mut c = p.base_content(json!({"offer": {"type": "offer", "sdp": sdp}}));
    c.as_object_mut().unwrap().remove("call_id");
    p.send_to_sfu("m.call.invite", c).await;
    let mut c = p.base_content(json!({"offer": {"type": "offer", "sdp": sdp}}));
    c["call_id"] = json!(42);
    p.send_to_sfu("m.call.invite", c).await;
    // Wrong dest_session_id: silently ignored.
    let mut c = p.base_content(json!({"offer": {"type": "offer", "sdp": sdp}}));
    c["dest_session_id"] = json!("not-sluice");
    p.send_to_sfu("m.call.invite", c).await;
    let deadline = std::time::Instant::now() + LONG;
    while stats.bad_requests.load(Ordering::Relaxed) < 2
        || stats.ignored.load(Ordering::Relaxed) < 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "malformed messages not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.received("m.call.hangup").is_empty());

    // Addressable: wrong types, huge SDP, garbage SDP → sluice.bad_request naming the fault.
    let cases = [
        (json!({"offer": {"type": "offer", "sdp": 7}}), "offer.sdp"),
        (
            json!({"offer": {"type": "offer", "sdp": "x".repeat(33 * 1024)}}),
            "SDP",
        ),
        (
            json!({"offer": {"type": "offer", "sdp": sdp}, "lifetime": "soon"}),
            "lifetime",
        ),
        (json!({"offer": {"type": "offer", "sdp": "garbage"}}), "SDP"),
        // No device to reply to: the refusal goes to all the sender's devices.
        (
            json!({"offer": {"type": "offer", "sdp": sdp}, "device_id": "", "party_id": ""}),
            "`device_id` is empty",
        ),
    ];
    for (i, (extra, field)) in cases.iter().enumerate() {
        let before = p.received("m.call.hangup").len();
        p.send_to_sfu("m.call.invite", p.base_content(extra.clone()))
            .await;
        p.wait_for("bad_request hangup", LONG, |p| {
            p.received("m.call.hangup").len() > before
        })
        .await;
        let h = &p.received("m.call.hangup")[before];
        assert_eq!(h.content["reason"], "sluice.bad_request", "case {i}");
        assert!(
            h.content["error"].as_str().unwrap_or("").contains(field),
            "case {i}: {}",
            h.content["error"]
        );
        assert_nothing_allocated(&sluice);
    }

    // An unknown version is treated as "1": this well-formed invite is answered.
    let mut c = p.base_content(json!({"offer": {"type": "offer", "sdp": sdp}}));
    c["version"] = json!("99");
    p.send_to_sfu("m.call.invite", c).await;
    p.wait_for("answer", LONG, |p| !p.received("m.call.answer").is_empty())
        .await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn homeserver_outage_does_not_disturb_media_and_sync_recovers() {
    let hs = OwnSynapse::start_new();
    let sluice = SluiceUnderTest::start_on(&hs.url(), |_| {}).await;
    let a = Participant::new(0, &sluice, true).await;
    let b = Participant::new(1, &sluice, true).await;
    let room = call_room(&a, &[&b], &sluice).await;
    for p in [&a, &b] {
        let r = room_of(p, &room.room_id().to_owned()).await;
        p.write_membership(&r, sluice.transport(), 3_600_000).await;
    }
    run_call(&[a.clone(), b.clone()], false).await;
    let focus = sluice.focus.as_ref().unwrap();

    // Frozen (accepting connections, answering nothing): readiness notices within 20 s,
    // and comes back once it thaws.
    hs.freeze(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while focus.is_synced() {
        if std::time::Instant::now() > deadline {
            hs.freeze(false);
            panic!("sync still counted as up 20 s into a frozen homeserver");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hs.freeze(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !focus.is_synced() {
        assert!(
            std::time::Instant::now() < deadline,
            "sync did not recover after the homeserver thawed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    hs.stop();
    let deadline = std::time::Instant::now() + LONG;
    while focus.is_synced() {
        assert!(
            std::time::Instant::now() < deadline,
            "sync never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Media keeps flowing while the homeserver is gone.
    let count = |p: &Participant, t: &str| p.peer.state.lock().unwrap().remotes[t].packets.len();
    let before = count(&b, "video-0");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        count(&b, "video-0") > before + 100,
        "media stalled during the outage"
    );
    assert_eq!(sluice.signaling().session_count(), 2);

    hs.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !focus.is_synced() {
        assert!(std::time::Instant::now() < deadline, "sync did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Signaling works again: a hangup is processed.
    a.send_to_sfu(
        "m.call.hangup",
        a.base_content(json!({"reason": "user_hangup"})),
    )
    .await;
    let deadline = std::time::Instant::now() + LONG;
    while sluice.signaling().session_count() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "hangup after recovery not processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a new call does: a member of a room created after the restart is answered,
    // connects and sends media.
    let c = Participant::new(2, &sluice, true).await;
    let r = call_room(&c, &[], &sluice).await;
    c.write_membership(&r, sluice.transport(), 3_600_000).await;
    c.invite().await;
    c.wait_for("answer", LONG, |p| !p.received("m.call.answer").is_empty())
        .await;
    c.peer.wait_for("connected", LONG, |s| s.connected).await;
    c.peer.start_sending();
    let deadline = std::time::Instant::now() + LONG;
    while !sluice.sfu.conferences().iter().any(|conf| {
        conf.participants
            .iter()
            .any(|p| p.id.starts_with(c.user_id.as_str()) && p.published.len() == 2)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new call's media never reached Sluice: {:#?}",
            sluice.sfu.conferences()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sluice.signaling().session_count(), 2);
    a.close().await;
    b.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_room_is_left_only_when_configured() {
    for leave in [false, true] {
        let sluice = SluiceUnderTest::start(|c| c.leave_idle_rooms = leave).await;
        let p = Participant::new(0, &sluice, true).await;
        let room = call_room(&p, &[], &sluice).await;
        p.write_membership(&room, sluice.transport(), 3_600_000)
            .await;
        p.invite().await;
        p.peer.wait_for("connected", LONG, |s| s.connected).await;
        p.write_membership_content(&room, json!({})).await;
        p.wait_for("hangup", LONG, |p| p.hangup_reason().is_some())
            .await;
        let client = &sluice.focus.as_ref().unwrap().client;
        let state = || client.get_room(room.room_id()).map(|r| r.state());
        if leave {
            let deadline = std::time::Instant::now() + LONG;
            while state() != Some(matrix_sdk::RoomState::Left) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "Sluice stayed in the idle room"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(state(), Some(matrix_sdk::RoomState::Joined));
        }
        p.close().await;
    }
}
