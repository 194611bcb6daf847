#![recursion_limit = "256"]
//! Media core tests with real webrtc-rs peers on loopback (no Matrix, no mocks).

mod support;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use sluice::sfu::{HangupReason, Sfu, SfuEventKind, SfuSnapshot, TrackRef};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_exchange_audio_and_video_intact_and_in_order() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1, 2]).await;
    subscribe_all(&sfu, &peers, &peers).await;

    // Everything a receiver gets from here on is measured.
    let start: HashMap<(String, String), usize> = peers
        .iter()
        .flat_map(|p| {
            let st = p.state.lock().unwrap();
            st.remotes
                .iter()
                .map(|(t, r)| ((p.id.clone(), t.clone()), r.packets.len()))
                .collect::<Vec<_>>()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in &peers {
        p.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let snap = sfu.snapshot();
    assert_eq!(
        snap,
        SfuSnapshot {
            conferences: 1,
            participants: 3,
            published_tracks: 6,
            subscriptions: 12
        }
    );

    for rx in &peers {
        // The receiver's negotiated payload types, by MIME type.
        let mut pts: HashMap<u8, String> = HashMap::new();
        let mut level_ids: Vec<u8> = Vec::new();
        for r in rx.pc.get_receivers().await {
            let params = r.get_parameters().await.unwrap();
            for c in params.rtp_parameters.codecs {
                pts.insert(c.payload_type, c.rtp_codec.mime_type.to_lowercase());
            }
            for e in params.rtp_parameters.header_extensions {
                if e.uri == AUDIO_LEVEL {
                    level_ids.push(e.id as u8);
                }
            }
        }
        let st = rx.state.lock().unwrap();
        for tx in peers.iter().filter(|p| p.id != rx.id) {
            for s in &tx.sends {
                let r = st
                    .remotes
                    .get(&s.track_id)
                    .unwrap_or_else(|| panic!("{} has no track {}", rx.id, s.track_id));
                // Stream and track ids are the publisher's.
                assert_eq!(r.stream_id, s.stream_id);
                assert_eq!(r.kind, s.kind);
                let kind_byte = if s.kind == RtpCodecKind::Audio { 0 } else { 1 };
                let skip = start[&(rx.id.clone(), s.track_id.clone())];
                let got = &r.packets[skip..];
                assert!(!got.is_empty(), "{} got nothing of {}", rx.id, s.track_id);
                let first = got[0].seq;
                let last = tx.last_sent(kind_byte);
                let expected = (last - first + 1) as usize;
                let ratio = got.len() as f64 / expected as f64;
                assert!(
                    ratio >= 0.99,
                    "{} received {}/{} of {} ({ratio:.3})",
                    rx.id,
                    got.len(),
                    expected,
                    s.track_id
                );
                let want_mime = if s.kind == RtpCodecKind::Audio {
                    "audio/opus"
                } else {
                    "video/vp8"
                };
                let mut prev = None;
                for pkt in got {
                    assert_eq!((pkt.sender, pkt.kind), (tx.idx, kind_byte));
                    if let Some(p) = prev {
                        assert!(pkt.seq > p, "out of order: {} after {p}", pkt.seq);
                    }
                    prev = Some(pkt.seq);
                    let len = if kind_byte == 0 { 120 } else { 1000 };
                    assert_eq!(pkt.payload, payload(tx.idx, kind_byte, pkt.seq, len));
                    assert_eq!(pkt.ssrc, r.ssrc, "SSRC is the leg's");
                    assert_ne!(pkt.ssrc, s.ssrc, "SSRC was rewritten");
                    assert_eq!(
                        pts.get(&pkt.pt).map(String::as_str),
                        Some(want_mime),
                        "payload type {} is negotiated for {want_mime} on the leg",
                        pkt.pt
                    );
                    if kind_byte == 0 {
                        // The audio level reached the subscriber under its own id.
                        assert!(
                            pkt.extensions
                                .iter()
                                .any(|(id, v)| level_ids.contains(id) && v[..] == [0x80 | tx.idx]),
                            "audio level missing: {:?}",
                            pkt.extensions
                        );
                    }
                }
                // The leg's RTP sequence numbers follow the publisher's without gaps.
                let _ = first;
            }
        }
    }
    let stats = sfu.stats();
    assert_eq!(stats.dropped(sluice::sfu::DropReason::QueueFull), 0);
    for p in &peers {
        p.close().await;
    }
}

/// Polls `f` until it holds or `timeout` passes; returns the last value seen.
async fn settle<T: PartialEq + std::fmt::Debug>(
    timeout: Duration,
    want: T,
    mut f: impl FnMut() -> T,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = f();
        if v == want || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_peer_is_removed_everywhere_and_releases_everything() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let pair = join_peers(&sfu, &router, &[0, 1]).await;
    subscribe_all(&sfu, &pair, &pair).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_snap = sfu.snapshot();
    let before_tasks = alive_tasks();
    assert_eq!(before_snap.participants, 2);
    assert_eq!(before_snap.subscriptions, 4);

    // A third peer joins, publishes, subscribes and is subscribed to.
    let third = join_peers(&sfu, &router, &[2]).await;
    let all: Vec<Arc<TestPeer>> = pair.iter().chain(third.iter()).cloned().collect();
    subscribe_all(&sfu, &all, &all).await;
    assert_eq!(sfu.snapshot().subscriptions, 12);
    let offers_before = router.count(|e| matches!(e.kind, SfuEventKind::Offer(_)));

    // It leaves.
    let c = &third[0];
    sfu.leave(CONF, &c.id, HangupReason::UserHangup)
        .await
        .unwrap();
    c.close().await;
    router
        .wait_for("Left event", LONG, |log| {
            log.iter().any(|e| {
                e.participant == c.id && e.kind == SfuEventKind::Left(HangupReason::UserHangup)
            })
        })
        .await;
    // Both remaining peers were offered a renegotiation without the departed tracks, and
    // the departed tracks ended on their side.
    router
        .wait_for("renegotiation offers", LONG, |log| {
            log.iter()
                .filter(|e| matches!(e.kind, SfuEventKind::Offer(_)))
                .count()
                >= offers_before + 2
        })
        .await;
    for p in &pair {
        p.wait_for("departed tracks ended", LONG, |st| {
            ["audio-2", "video-2"]
                .iter()
                .all(|t| st.remotes.get(*t).is_some_and(|r| r.ended))
        })
        .await;
    }
    assert_eq!(
        router.count(|e| e.participant == c.id && matches!(e.kind, SfuEventKind::TrackUnpublished(_))),
        2
    );
    let snap = settle(LONG, before_snap.clone(), || sfu.snapshot()).await;
    assert_eq!(snap, before_snap);
    assert!(sfu.participants(CONF).iter().all(|p| *p != c.id));
    // Every task of the departed participant (and of its closed test peer) is gone. The
    // remaining peers' renegotiated connections hold what they held before.
    let tasks = settle(LONG, before_tasks, alive_tasks).await;
    assert_eq!(
        tasks, before_tasks,
        "tasks alive after the third peer left vs before it joined"
    );

    // Media between the remaining two keeps flowing.
    let n0 = pair[1].state.lock().unwrap().remotes["video-0"]
        .packets
        .len();
    pair[1]
        .wait_for("media still flowing", LONG, |st| {
            st.remotes["video-0"].packets.len() > n0 + 20
        })
        .await;

    for p in &pair {
        sfu.leave(CONF, &p.id, HangupReason::UserHangup)
            .await
            .unwrap();
        p.close().await;
    }
    let snap = settle(LONG, SfuSnapshot::default(), || sfu.snapshot()).await;
    assert_eq!(snap, SfuSnapshot::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_plis_reaches_the_publisher_once() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    let (a, b) = (&peers[0], &peers[1]);
    subscribe_all(&sfu, std::slice::from_ref(a), &peers).await;
    // The subscription asked B for a keyframe at its start.
    let deadline = std::time::Instant::now() + LONG;
    while b.plis.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no keyframe request at subscription start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the throttle window of that request pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = b.plis.load(std::sync::atomic::Ordering::SeqCst);
    let suppressed_before = sfu
        .stats()
        .keyframe_requests_suppressed
        .load(std::sync::atomic::Ordering::Relaxed);

    a.send_plis("video-1", 20, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let relayed = b.plis.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(
        relayed, 1,
        "20 PLIs in 100 ms must reach the publisher as one"
    );
    let stats = sfu.stats();
    let suppressed = stats
        .keyframe_requests_suppressed
        .load(std::sync::atomic::Ordering::Relaxed)
        - suppressed_before;
    assert_eq!(suppressed, 19);
    assert!(
        stats
            .keyframe_requests_received
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 20
    );

    // After the interval, the next request goes through again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.send_plis("video-1", 1, Duration::from_millis(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.plis.load(std::sync::atomic::Ordering::SeqCst) - before, 2);
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

fn hand_offer(media: &str) -> String {
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n{media}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_specific_error_and_leaves_no_state() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let empty = SfuSnapshot::default();
    let tasks_before = alive_tasks();

    let e = sfu
        .join(CONF, "a", "garbage, not SDP", no_sink())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "bad_sdp", "{e}");
    assert_eq!(sfu.snapshot(), empty);

    let e = sfu
        .join(CONF, "a", &hand_offer(""), no_sink())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "no_media", "{e}");
    assert_eq!(sfu.snapshot(), empty);

    let isac_only = hand_offer(
        "m=audio 9 UDP/TLS/RTP/SAVPF 103 104\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
         a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
         a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
         a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:103 ISAC/16000\r\na=rtpmap:104 ISAC/32000\r\n",
    );
    let e = sfu
        .join(CONF, "a", &isac_only, no_sink())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unsupported_codec", "{e}");
    assert!(e.to_string().contains("isac"), "{e}");
    assert_eq!(sfu.snapshot(), empty);

    let e = sfu
        .add_remote_candidate(
            CONF,
            "nobody",
            sluice::sfu::IceCandidate {
                candidate: "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unknown_participant", "{e}");
    let e = sfu
        .subscribe(
            CONF,
            "nobody",
            &[TrackRef {
                stream_id: "s".into(),
                track_id: "t".into(),
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unknown_participant", "{e}");
    assert_eq!(sfu.snapshot(), empty);

    // A second join with the same participant id is refused; the first stays intact.
    let peer = TestPeer::new(&sfu, 0, true).await;
    router.add(&peer);
    peer.join(&sfu).await.unwrap();
    peer.wait_for("connected", LONG, |s| s.connected).await;
    let twin = TestPeer::new(&sfu, 0, true).await;
    let e = twin.join(&sfu).await.unwrap_err();
    assert_eq!(e.code(), "participant_exists", "{e}");
    twin.close().await;
    assert_eq!(sfu.snapshot().participants, 1);

    // Subscribing to a track nobody publishes, or to one's own, is refused.
    peer.start_sending();
    router
        .wait_for("published", LONG, |log| {
            log.iter()
                .filter(|e| matches!(e.kind, SfuEventKind::TrackPublished(_)))
                .count()
                == 2
        })
        .await;
    let e = sfu
        .subscribe(
            CONF,
            &peer.id,
            &[TrackRef {
                stream_id: "none".into(),
                track_id: "none".into(),
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unknown_track", "{e}");
    let e = sfu
        .subscribe(CONF, &peer.id, &peer.track_refs())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "own_track", "{e}");
    // A malformed candidate for a known participant.
    let e = sfu
        .add_remote_candidate(
            CONF,
            &peer.id,
            sluice::sfu::IceCandidate {
                candidate: "candidate:garbage".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "bad_candidate", "{e}");
    // An answer when no offer is outstanding.
    let e = sfu
        .remote_description(
            CONF,
            &peer.id,
            sluice::sfu::SessionDescription {
                kind: sluice::sfu::SdpKind::Answer,
                sdp: hand_offer(""),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_state", "{e}");
    assert_eq!(sfu.snapshot().subscriptions, 0);
    assert_eq!(sfu.snapshot().participants, 1);

    sfu.leave(CONF, &peer.id, HangupReason::UserHangup)
        .await
        .unwrap();
    peer.close().await;
    assert_eq!(settle(LONG, empty.clone(), || sfu.snapshot()).await, empty);
    // Nothing refused above left a task behind.
    let tasks = settle(LONG, tasks_before, alive_tasks).await;
    assert!(
        tasks <= tasks_before,
        "tasks alive: {tasks}, at start: {tasks_before}"
    );
    // Only the one real participant ever left. (`Left` is emitted at the end of the
    // removal, after the snapshot is already empty: wait for it.)
    let left = || router.count(|e| matches!(e.kind, SfuEventKind::Left(_)));
    assert_eq!(settle(LONG, 1, left).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_that_never_connects_is_removed_with_invite_timeout() {
    let cfg = sluice::config::SfuConfig {
        ice_connect_timeout_secs: 1,
        ..test_config()
    };
    let sfu = Sfu::new(cfg);
    // The peer never applies the answer, so ICE never connects.
    let router = Router::start(&sfu);
    let peer = TestPeer::new(&sfu, 0, true).await;
    let offer = peer.pc.create_offer(None).await.unwrap();
    peer.pc.set_local_description(offer).await.unwrap();
    let sdp = peer.pc.local_description().await.unwrap().sdp;
    let _answer = sfu.join(CONF, &peer.id, &sdp, router.sink()).await.unwrap();
    assert_eq!(sfu.snapshot().participants, 1);
    router
        .wait_for("invite timeout", LONG, |log| {
            log.iter()
                .any(|e| e.kind == SfuEventKind::Left(HangupReason::InviteTimeout))
        })
        .await;
    assert_eq!(sfu.snapshot(), SfuSnapshot::default());
    peer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_sockets_use_the_configured_port_range() {
    // A free range: probe for three consecutive free UDP ports.
    let base = (20_000u16..60_000)
        .step_by(7)
        .find(|p| (0..3).all(|i| std::net::UdpSocket::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("free ports");
    let cfg = sluice::config::SfuConfig {
        udp_port_min: base,
        udp_port_max: base + 1,
        ..test_config()
    };
    let sfu = Sfu::new(cfg);
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    let ports: Vec<u16> = router
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.kind {
            SfuEventKind::LocalCandidate(Some(c)) => c
                .candidate
                .split_whitespace()
                .nth(5)
                .and_then(|p| p.parse().ok()),
            _ => None,
        })
        .collect();
    assert!(!ports.is_empty());
    assert!(
        ports.iter().all(|p| (base..=base + 1).contains(p)),
        "candidate ports {ports:?} outside {base}..={}",
        base + 1
    );
    // The range is used up: a third participant is refused, and nothing is left of it.
    let third = TestPeer::new(&sfu, 2, true).await;
    let e = third.join(&sfu).await.unwrap_err();
    assert_eq!(e.code(), "webrtc", "{e}");
    assert!(e.to_string().contains("ports exhausted"), "{e}");
    assert_eq!(sfu.snapshot().participants, 2);
    third.close().await;
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_speakers_are_ranked_by_audio_level_and_follow_changes() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1, 2]).await;
    // Levels in -dBov: 0 is the loudest.
    for (p, level) in peers.iter().zip([10u8, 30, 45]) {
        p.audio_level
            .store(level, std::sync::atomic::Ordering::Relaxed);
    }
    // Every participant gets each announcement; follow the first one's.
    let first = peers[0].id.clone();
    let last_of = |log: &[sluice::sfu::SfuEvent], id: &str| -> Option<Vec<String>> {
        log.iter()
            .rev()
            .filter(|e| e.participant == id)
            .find_map(|e| match &e.kind {
                SfuEventKind::ActiveSpeakers(list) => {
                    Some(list.iter().map(|s| s.participant.clone()).collect())
                }
                _ => None,
            })
    };
    let order = |log: &[sluice::sfu::SfuEvent]| last_of(log, &first);
    let ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
    let want = ids.clone();
    router
        .wait_for("speakers ranked loudest first", LONG, |log| {
            order(log) == Some(want.clone())
        })
        .await;
    // The loudest falls silent, the quietest becomes the loudest.
    peers[0]
        .audio_level
        .store(127, std::sync::atomic::Ordering::Relaxed);
    peers[2]
        .audio_level
        .store(5, std::sync::atomic::Ordering::Relaxed);
    let want = vec![ids[2].clone(), ids[1].clone()];
    router
        .wait_for("ranking follows the change", LONG, |log| {
            order(log) == Some(want.clone())
        })
        .await;
    // Announcements are rate limited: consecutive ones at least one detector period apart
    // is implied by the 250 ms tick; count them to be sure none repeat an order.
    // Every participant is told, not only the first.
    router
        .wait_for("every participant told the new ranking", LONG, |log| {
            ids.iter().all(|id| last_of(log, id) == Some(want.clone()))
        })
        .await;
    let log = router.log.lock().unwrap().clone();
    let orders: Vec<Vec<String>> = log
        .iter()
        .filter(|e| e.participant == first)
        .filter_map(|e| match &e.kind {
            SfuEventKind::ActiveSpeakers(l) => {
                Some(l.iter().map(|s| s.participant.clone()).collect())
            }
            _ => None,
        })
        .collect();
    assert!(orders.windows(2).all(|w| w[0] != w[1]), "{orders:?}");
    let last = log
        .iter()
        .rev()
        .filter(|e| e.participant == first)
        .find_map(|e| match &e.kind {
            SfuEventKind::ActiveSpeakers(l) => Some(l.clone()),
            _ => None,
        })
        .unwrap();
    assert!(last[0].level > last[1].level);
    assert!(
        (last[0].level - (127.0 - 5.0) / 127.0).abs() < 0.05,
        "{:?}",
        last[0]
    );
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_dtx_passes_through_untouched() {
    // In silence, Opus DTX sends one frame every 400 ms: contiguous sequence numbers with
    // timestamps 400 ms apart. A subscriber must get exactly that: no gap filled, no
    // timestamp changed, and the payloads byte for byte (end-to-end encrypted media
    // included: the SFU never looks inside).
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    subscribe_all(&sfu, &peers[1..], &peers[..1]).await;
    let (talker, listener) = (&peers[0], &peers[1]);
    talker.dtx.store(true, std::sync::atomic::Ordering::Relaxed);
    let audio = |p: &TestPeer| -> Vec<Received> {
        p.state.lock().unwrap().remotes["audio-0"].packets.clone()
    };
    let from = audio(listener).len();
    listener
        .wait_for("eight more audio packets", LONG, |st| {
            st.remotes["audio-0"].packets.len() >= from + 8
        })
        .await;
    let got = audio(listener);
    // The first packets after the switch may still be the last continuous ones.
    let dtx: Vec<&Received> = got[from..]
        .windows(2)
        .filter(|w| w[1].ts.wrapping_sub(w[0].ts) == 20 * 960)
        .map(|w| &w[1])
        .collect();
    assert!(dtx.len() >= 5, "no DTX spacing seen: {:?}", &got[from..]);
    for w in got[from..].windows(2) {
        assert_eq!(
            w[1].rtp_seq,
            w[0].rtp_seq.wrapping_add(1),
            "the leg's sequence numbers have a gap"
        );
        let d = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            d > 0 && d % 960 == 0 && d <= 20 * 960,
            "timestamps {d} apart: not the publisher's 20 ms frames"
        );
    }
    for r in &dtx {
        assert_eq!(
            r.payload,
            support::payload(0, 0, r.seq, 120),
            "payload changed on the way"
        );
    }
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

/// The payload types `peer` receives audio at: (Opus, RED if negotiated).
async fn audio_payload_types(peer: &TestPeer) -> (u8, Option<u8>) {
    let mut opus = None;
    let mut red = None;
    for r in peer.pc.get_receivers().await {
        let Ok(params) = r.get_parameters().await else {
            continue;
        };
        for c in &params.rtp_parameters.codecs {
            let mime = c.rtp_codec.mime_type.to_ascii_lowercase();
            if mime == "audio/opus" {
                opus.get_or_insert(c.payload_type);
            } else if mime == "audio/red" {
                red.get_or_insert(c.payload_type);
            }
        }
    }
    (opus.expect("no Opus negotiated"), red)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_passes_through_untouched_and_is_unwrapped_for_legs_without_it() {
    // A publisher that prefers RED (RFC 2198) sends its audio in RED, with plain Opus
    // between (as Chrome does when RED would not fit) and, now and then, RED whose block
    // headers do not parse (as an end-to-end encrypted payload's need not); one packet in
    // 25 is lost on its way to Sluice.
    // - A subscriber that negotiated RED over the same Opus payload type gets every
    //   packet untouched: RED as RED, Opus as Opus, the unparsable ones too, and the
    //   losses as gaps (its own RED recovers them).
    // - One without RED, and one whose RED wraps another Opus payload type, get the
    //   primary blocks as plain Opus, byte for byte, and the lost packets rebuilt from
    //   the next packet's redundancy; the unparsable ones are left out, counted, with no
    //   gap in their sequence numbers.
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let publisher = TestPeer::new_red(&sfu, 0, true).await;
    let with_red = TestPeer::new_red(&sfu, 1, false).await;
    let without_red = TestPeer::new(&sfu, 2, false).await;
    // Publishes too, so its own offer sets its Opus at 108 (and RED over 108).
    let other_red = TestPeer::new_red(&sfu, 3, true).await;
    let subs = [with_red.clone(), without_red.clone(), other_red.clone()];
    for p in std::iter::once(&publisher).chain(subs.iter()) {
        router.add(p);
        p.join(&sfu).await.expect("join");
        p.wait_for("connected", LONG, |s| s.connected).await;
    }
    publisher.red_send.store(true, Ordering::Relaxed);
    publisher.start_sending();
    wait_published(&router, &publisher, 2).await;
    subscribe_all(&sfu, &subs, std::slice::from_ref(&publisher)).await;
    for s in &subs {
        s.wait_for("100 audio packets", LONG, |st| {
            st.remotes["audio-0"].packets.len() >= 100
        })
        .await;
    }
    let audio = |p: &TestPeer| -> Vec<Received> {
        p.state.lock().unwrap().remotes["audio-0"].packets.clone()
    };
    let contiguous = |got: &[Received], who: &str| {
        for w in got.windows(2) {
            assert_eq!(
                w[1].rtp_seq,
                w[0].rtp_seq.wrapping_add(1),
                "{who}: gap in the leg's sequence numbers between frames {} and {}",
                w[0].seq,
                w[1].seq
            );
        }
    };

    // Untouched for the subscriber that takes RED.
    let (opus_pt, red_pt) = audio_payload_types(&with_red).await;
    let red_pt = red_pt.expect("the RED subscriber negotiated no RED");
    let got = audio(&with_red);
    for w in got.windows(2) {
        assert_eq!(
            w[1].rtp_seq.wrapping_sub(w[0].rtp_seq) as u32,
            w[1].seq - w[0].seq,
            "RED subscriber: the publisher's numbering changed between frames {} and {}",
            w[0].seq,
            w[1].seq
        );
        assert!(
            w[1].seq == w[0].seq + 1 || (w[1].seq == w[0].seq + 2 && red_lost(w[0].seq + 1)),
            "RED subscriber: frames missing between {} and {}",
            w[0].seq,
            w[1].seq
        );
    }
    let (mut red, mut plain, mut opaque) = (0, 0, 0);
    for r in &got {
        let (is_red, body) = red_frame(0, r.seq, 111);
        assert_eq!(r.payload, body, "frame {} changed on the way", r.seq);
        assert_eq!(
            r.pt,
            if is_red { red_pt } else { opus_pt },
            "frame {}",
            r.seq
        );
        match (is_red, r.seq % 25 == 12) {
            (true, true) => opaque += 1,
            (true, false) => red += 1,
            (false, _) => plain += 1,
        }
    }
    assert!(
        red > 50 && plain > 10 && opaque >= 2,
        "{red} RED, {plain} plain, {opaque} unparsable RED packets"
    );

    // Unwrapped for the others.
    for (who, sub) in [
        ("subscriber without RED", &without_red),
        (
            "subscriber with RED over another Opus payload type",
            &other_red,
        ),
    ] {
        let (opus_pt, _) = audio_payload_types(sub).await;
        let got = audio(sub);
        contiguous(&got, who);
        for r in &got {
            assert_eq!(r.pt, opus_pt, "{who}: frame {} not sent as Opus", r.seq);
            assert_eq!(
                r.payload,
                payload(0, 0, r.seq, 120),
                "{who}: frame {} is not the primary block",
                r.seq
            );
            assert_ne!(r.seq % 25, 12, "{who}: got an unparsable RED packet");
        }
        let seqs: Vec<u32> = got.iter().map(|r| r.seq).collect();
        assert!(
            seqs.windows(2)
                .all(|w| w[1] == w[0] + 1 || (w[1] == w[0] + 2 && w[0] % 25 == 11)),
            "{who}: frames missing besides the unparsable ones: {seqs:?}"
        );
        let rebuilt: Vec<&Received> = got.iter().filter(|r| red_lost(r.seq)).collect();
        assert!(
            rebuilt.len() >= 3,
            "{who}: {} lost frames rebuilt",
            rebuilt.len()
        );
        for r in rebuilt {
            let next = got.iter().find(|n| n.seq == r.seq + 1).unwrap();
            assert_eq!(
                next.ts.wrapping_sub(r.ts),
                960,
                "{who}: rebuilt frame {} not 20 ms before the next",
                r.seq
            );
        }
    }
    let other_opus = audio_payload_types(&other_red).await.0;
    assert_ne!(
        other_opus, 111,
        "the test needs another Opus payload type here"
    );

    let info = |p: &TestPeer| {
        sfu.conferences()
            .into_iter()
            .flat_map(|c| c.participants)
            .find(|i| i.id == p.id)
            .unwrap()
            .subscriptions
            .into_iter()
            .find(|s| s.track.track_id == "audio-0")
            .unwrap()
            .red
    };
    use sluice::sfu::RedDelivery;
    assert_eq!(info(&with_red), Some(RedDelivery::Passthrough));
    assert_eq!(info(&without_red), Some(RedDelivery::Unwrapped));
    assert_eq!(info(&other_red), Some(RedDelivery::Unwrapped));
    let stats = sfu.stats();
    assert!(stats.red_unwrapped.load(Ordering::Relaxed) > 100);
    assert!(stats.red_recovered.load(Ordering::Relaxed) >= 3);
    assert!(stats.dropped(sluice::sfu::stats::DropReason::RedUnusable) >= 4);

    for p in std::iter::once(&publisher).chain(subs.iter()) {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}
