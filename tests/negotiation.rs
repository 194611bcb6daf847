#![recursion_limit = "256"]
//! Renegotiation with real webrtc-rs peers on loopback: glare, unsubscribing, a publisher
//! stopping a track.

mod support;

use sluice::sfu::{HangupReason, Sfu, SfuEventKind, TrackRef};
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_offer_during_a_sluice_offer_wins_and_the_change_is_offered_again() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    let (a, b) = (&peers[0], &peers[1]);
    // Hold Sluice's offers to A so A's own offer collides with one.
    router.hold_offers.lock().unwrap().push(a.id.clone());
    sfu.subscribe(CONF, &a.id, &b.track_refs()).await.unwrap();
    router
        .wait_for("held offer", LONG, |_| {
            !router.held.lock().unwrap().is_empty()
        })
        .await;
    // A renegotiates on its own (as when it starts a screenshare): glare.
    let offer = a.pc.create_offer(None).await.unwrap();
    a.pc.set_local_description(offer).await.unwrap();
    let sdp = a.pc.local_description().await.unwrap().sdp;
    let answers_before =
        router.count(|e| e.participant == a.id && matches!(e.kind, SfuEventKind::Answer(_)));
    router.hold_offers.lock().unwrap().clear();
    sfu.remote_description(
        CONF,
        &a.id,
        sluice::sfu::SessionDescription {
            kind: sluice::sfu::SdpKind::Offer,
            sdp,
        },
    )
    .await
    .expect("client offer wins the glare");
    // Sluice answered A's offer, then offered its subscription change again; the router
    // answers that one, and B's media reaches A.
    router
        .wait_for("answer to the client offer", LONG, |log| {
            log.iter()
                .filter(|e| e.participant == a.id && matches!(e.kind, SfuEventKind::Answer(_)))
                .count()
                > answers_before
        })
        .await;
    a.wait_for("B's media after glare", LONG, |st| {
        ["audio-1", "video-1"]
            .iter()
            .all(|t| st.remotes.get(*t).is_some_and(|r| r.packets.len() > 10))
    })
    .await;
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_forwarding_and_renegotiates() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    let (a, b) = (&peers[0], &peers[1]);
    subscribe_all(&sfu, std::slice::from_ref(a), &peers).await;
    assert_eq!(sfu.snapshot().subscriptions, 2);
    let video = TrackRef {
        stream_id: b.sends[1].stream_id.clone(),
        track_id: b.sends[1].track_id.clone(),
    };
    sfu.unsubscribe(CONF, &a.id, std::slice::from_ref(&video))
        .await
        .unwrap();
    assert_eq!(sfu.snapshot().subscriptions, 1);
    a.wait_for("unsubscribed track ended", LONG, |st| {
        st.remotes["video-1"].ended
    })
    .await;
    let n = a.state.lock().unwrap().remotes["video-1"].packets.len();
    let audio = a.state.lock().unwrap().remotes["audio-1"].packets.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (video_now, audio_now) = {
        let st = a.state.lock().unwrap();
        (
            st.remotes["video-1"].packets.len(),
            st.remotes["audio-1"].packets.len(),
        )
    };
    assert_eq!(video_now, n, "video still forwarded");
    assert!(audio_now > audio, "audio stopped too");
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_stopping_a_track_by_renegotiation_unpublishes_it() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    let (a, b) = (&peers[0], &peers[1]);
    subscribe_all(&sfu, std::slice::from_ref(a), &peers).await;
    assert_eq!(sfu.snapshot().subscriptions, 2);
    // B stops its video (as when a camera is turned off) and offers.
    b.pc.remove_track(&b.sends[1].sender).await.unwrap();
    let offer = b.pc.create_offer(None).await.unwrap();
    b.pc.set_local_description(offer).await.unwrap();
    let sdp = b.pc.local_description().await.unwrap().sdp;
    sfu.remote_description(
        CONF,
        &b.id,
        sluice::sfu::SessionDescription {
            kind: sluice::sfu::SdpKind::Offer,
            sdp,
        },
    )
    .await
    .unwrap();
    router
        .wait_for("video unpublished", LONG, |log| {
            log.iter().any(|e| {
                matches!(&e.kind, SfuEventKind::TrackUnpublished(t) if t.track.track_id == "video-1")
            })
        })
        .await;
    a.wait_for("A's video leg ended", LONG, |st| {
        st.remotes["video-1"].ended
    })
    .await;
    let snap = sfu.snapshot();
    assert_eq!((snap.published_tracks, snap.subscriptions), (3, 1));
    assert!(
        sfu.published_tracks(CONF)
            .iter()
            .all(|t| t.track.track_id != "video-1")
    );
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_client_offer_mode_legs_ride_the_receive_sections_the_client_adds() {
    // LiveKit's single peer connection: only the client offers. Sluice asks for an offer
    // with as many new receive-only sections as it has new legs, and forwards each track
    // under the msid the front end chose.
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let publisher = join_peers(&sfu, &router, &[0]).await.remove(0);
    let sub = TestPeer::new(&sfu, 1, false).await;
    router.add(&sub);
    let client = sluice::sfu::JoinOptions {
        offers: sluice::sfu::OfferMode::Client,
        ..Default::default()
    };
    sub.join_with(&sfu, client).await.expect("join");
    sub.wait_for("connected", LONG, |s| s.connected).await;
    let seen: Vec<(TrackRef, TrackRef)> = publisher
        .track_refs()
        .into_iter()
        .map(|t| {
            let label = TrackRef {
                stream_id: format!("PA_pub|TR_{}", t.track_id),
                track_id: format!("TR_{}", t.track_id),
            };
            (t, label)
        })
        .collect();
    sfu.subscribe_as(CONF, &sub.id, &seen).await.unwrap();
    router
        .wait_for("an offer asked for", LONG, |log| {
            log.iter().any(|e| {
                e.participant == sub.id && e.kind == SfuEventKind::NeedOffer { audio: 1, video: 1 }
            })
        })
        .await;
    assert_eq!(
        router.count(|e| e.participant == sub.id && matches!(e.kind, SfuEventKind::Offer(_))),
        0,
        "Sluice offered to a client-offer participant"
    );
    sub.wait_for("the publisher's media under the chosen ids", LONG, |st| {
        seen.iter().all(|(_, l)| {
            st.remotes
                .get(&l.track_id)
                .is_some_and(|r| r.stream_id == l.stream_id && r.packets.len() > 10)
        })
    })
    .await;
    // Each leg reports the media section it rides: the subscriber's own receive sections.
    let mids = sfu.leg_mids(CONF, &sub.id).unwrap();
    assert_eq!(mids.len(), 2, "{mids:?}");
    let local = sub.pc.local_description().await.unwrap().sdp;
    for (_, mid) in &mids {
        let section = local
            .split("\r\nm=")
            .find(|m| m.contains(&format!("\r\na=mid:{mid}\r\n")))
            .unwrap_or_else(|| panic!("mid {mid} not in the client's offer"));
        assert!(section.contains("a=recvonly"), "mid {mid}: {section}");
    }

    // Unsubscribing asks for a plain new offer, which ends the leg.
    let video = seen[1].0.clone();
    sfu.unsubscribe(CONF, &sub.id, std::slice::from_ref(&video))
        .await
        .unwrap();
    router
        .wait_for("a plain offer asked for", LONG, |log| {
            log.iter().any(|e| {
                e.participant == sub.id && e.kind == SfuEventKind::NeedOffer { audio: 0, video: 0 }
            })
        })
        .await;
    assert_eq!(sfu.leg_mids(CONF, &sub.id).unwrap().len(), 1);
    sub.close().await;
    publisher.close().await;
    sfu.shutdown(HangupReason::UserHangup).await;
}
