#![recursion_limit = "256"]
//! Simulcast layer choice with real webrtc-rs peers: a publisher sends three VP8 layers
//! (q 320x180, h 640x360, f 1280x720) with RIDs; subscribers steer by rendered size.

mod support;

use sluice::sfu::codec::vp8_keyframe_start;
use sluice::sfu::{HangupReason, Sfu, SfuEventKind, SubscriptionInfo, TrackRef};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

/// Layer index of a received packet (its marker's kind byte is 10 + layer).
fn layer(r: &Received) -> usize {
    (r.kind - 10) as usize
}

async fn setup() -> (Sfu, Arc<Router>, Arc<TestPeer>, Arc<TestPeer>, TrackRef) {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let publisher = TestPeer::new_simulcast(&sfu, 0).await;
    let subscriber = TestPeer::new(&sfu, 1, false).await;
    let track = connect_pair(&sfu, &router, &publisher, &subscriber, |p| {
        p.start_simulcast_sending()
    })
    .await;
    (sfu, router, publisher, subscriber, track)
}

/// A publisher of one `video` stream (started with `start`) and a receiving peer of the
/// same codec, connected as [`connect_pair`] does.
async fn svc_setup(
    video: TestVideo,
    start: impl FnOnce(&Arc<TestPeer>),
) -> (Sfu, Arc<Router>, Arc<TestPeer>, Arc<TestPeer>, TrackRef) {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let publisher = TestPeer::new_svc(&sfu, 0, true, video).await;
    let sub = TestPeer::new_svc(&sfu, 1, false, video).await;
    let track = connect_pair(&sfu, &router, &publisher, &sub, start).await;
    (sfu, router, publisher, sub, track)
}

/// `peer`'s first subscription as the admin API lists it.
fn first_subscription(sfu: &Sfu, peer: &TestPeer) -> SubscriptionInfo {
    sfu.conferences()
        .into_iter()
        .flat_map(|c| c.participants)
        .find(|p| p.id == peer.id)
        .unwrap()
        .subscriptions[0]
        .clone()
}

/// Joins `publisher` and starts its sending with `start`, then joins `sub`; waits until
/// both are connected and the publisher's `video-0` is published, and returns that track.
async fn connect_pair(
    sfu: &Sfu,
    router: &Arc<Router>,
    publisher: &Arc<TestPeer>,
    sub: &Arc<TestPeer>,
    start: impl FnOnce(&Arc<TestPeer>),
) -> TrackRef {
    router.add(publisher);
    publisher.join(sfu).await.unwrap();
    publisher.wait_for("connected", LONG, |s| s.connected).await;
    start(publisher);
    router.add(sub);
    sub.join(sfu).await.unwrap();
    sub.wait_for("connected", LONG, |s| s.connected).await;
    router
        .wait_for("video published", LONG, |log| {
            log.iter().any(|e| {
                matches!(&e.kind, SfuEventKind::TrackPublished(t) if t.track.track_id == "video-0")
            })
        })
        .await;
    publisher
        .track_refs()
        .into_iter()
        .find(|t| t.track_id == "video-0")
        .unwrap()
}

fn packets(p: &TestPeer) -> Vec<Received> {
    p.state
        .lock()
        .unwrap()
        .remotes
        .get("video-0")
        .map(|r| r.packets.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_gets_the_layer_for_its_size_and_switches_at_a_keyframe() {
    let (sfu, _router, publisher, sub, track) = setup().await;
    // A small tile: the q layer only.
    sfu.subscribe(CONF, &sub.id, std::slice::from_ref(&track))
        .await
        .unwrap();
    sfu.set_track_size(CONF, &sub.id, &track, 320, 180)
        .await
        .unwrap();
    sub.wait_for("q packets", LONG, |st| {
        st.remotes
            .get("video-0")
            .is_some_and(|r| r.packets.len() >= 45)
    })
    .await;
    let got = packets(&sub);
    assert!(
        got.iter().all(|r| layer(r) == 0),
        "non-q packets at 320x180"
    );
    assert!(
        vp8_keyframe_start(&got[0].payload),
        "the leg starts on a keyframe"
    );

    // A large tile: switch to f at its next keyframe. The publisher sends keyframes only
    // every 2 s from now on, so f interframes arrive before one: none may be forwarded.
    publisher.ignore_plis.store(true, Ordering::Relaxed);
    let before = got.len();
    sfu.set_track_size(CONF, &sub.id, &track, 1280, 720)
        .await
        .unwrap();
    sub.wait_for("f packets", LONG, |st| {
        st.remotes["video-0"]
            .packets
            .iter()
            .filter(|r| r.kind == 12)
            .count()
            >= 30
    })
    .await;
    let got = packets(&sub);
    let first_f = got.iter().position(|r| layer(r) == 2).unwrap();
    assert!(first_f >= before);
    assert!(
        vp8_keyframe_start(&got[first_f].payload),
        "the first f packet must be a keyframe"
    );
    assert!(
        got[first_f..].iter().all(|r| layer(r) == 2),
        "layers mixed after the switch"
    );
    // Packets of one leg keep one SSRC and contiguous sequence numbers across the switch.
    assert!(got.iter().all(|r| r.ssrc == got[0].ssrc));
    for w in got.windows(2) {
        assert_eq!(
            w[1].rtp_seq,
            w[0].rtp_seq.wrapping_add(1),
            "gap in the leg's sequence numbers"
        );
        // One frame per packet: the VP8 picture id runs on without a jump, though the
        // layers' own ids are 10000 apart.
        assert_eq!(
            vp8_picture_id(&w[1].payload),
            (vp8_picture_id(&w[0].payload) + 1) & 0x7FFF,
            "picture id jumps at the switch"
        );
    }
    // The switch asked the publisher for an f keyframe.
    let f_ssrc = publisher.sends[0].ssrc + 2;
    assert!(sfu.stats().keyframe_requests_sent.load(Ordering::Relaxed) >= 2);
    assert!(
        sfu.stats()
            .keyframe_requests_received
            .load(Ordering::Relaxed)
            == 0,
        "the subscriber sent no PLI: the requests were Sluice's own"
    );
    let _ = f_ssrc;

    // 0x0 pauses the leg.
    sfu.set_track_size(CONF, &sub.id, &track, 0, 0)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = packets(&sub).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(packets(&sub).len(), n, "a paused leg still receives");
    for p in [&publisher, &sub] {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_layer_moves_its_subscribers_down_within_three_seconds() {
    let (sfu, _router, publisher, sub, track) = setup().await;
    sfu.subscribe(CONF, &sub.id, std::slice::from_ref(&track))
        .await
        .unwrap();
    sfu.set_track_size(CONF, &sub.id, &track, 1280, 720)
        .await
        .unwrap();
    sub.wait_for("f packets", LONG, |st| {
        st.remotes
            .get("video-0")
            .is_some_and(|r| r.packets.iter().filter(|p| p.kind == 12).count() >= 15)
    })
    .await;
    let before = packets(&sub).len();
    let stopped_at = Instant::now();
    publisher.layer_stopped[2].store(true, Ordering::Relaxed);
    sub.wait_for("a lower layer after the stall", LONG, |st| {
        st.remotes["video-0"].packets[before..]
            .iter()
            .any(|p| p.kind != 12)
    })
    .await;
    let moved_after = stopped_at.elapsed();
    assert!(
        moved_after <= Duration::from_secs(3),
        "moved after {moved_after:?}"
    );
    let got = packets(&sub);
    let first = got[before..].iter().find(|p| p.kind != 12).unwrap();
    // The best live layer for a 1280x720 tile is h, entered at a keyframe.
    assert_eq!(layer(first), 1);
    assert!(vp8_keyframe_start(&first.payload));
    for w in got.windows(2) {
        assert_eq!(w[1].rtp_seq, w[0].rtp_seq.wrapping_add(1));
    }
    for p in [&publisher, &sub] {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

/// Arrival index and time of the first packet of `layer` at or after index `from`.
fn first_of(p: &TestPeer, layer_idx: usize, from: usize) -> Option<usize> {
    packets(p)[from..]
        .iter()
        .position(|r| layer(r) == layer_idx)
        .map(|i| i + from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_estimate_steps_the_layer_down_and_back_up_without_flapping() {
    let (sfu, _router, publisher, sub, track) = setup().await;
    sfu.subscribe(CONF, &sub.id, std::slice::from_ref(&track))
        .await
        .unwrap();
    sfu.set_track_size(CONF, &sub.id, &track, 1280, 720)
        .await
        .unwrap();
    sub.wait_for("f packets", LONG, |st| {
        st.remotes
            .get("video-0")
            .is_some_and(|r| r.packets.iter().filter(|p| p.kind == 12).count() >= 30)
    })
    .await;
    // Let the layer rates settle (about 50 / 150 / 270 kbit/s).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The subscriber's estimate drops to 100 kbit/s: only q fits.
    let before = packets(&sub).len();
    sub.send_remb("video-0", 100_000.0).await;
    sub.wait_for("q after the estimate dropped", LONG, |st| {
        st.remotes["video-0"].packets[before..]
            .iter()
            .any(|p| p.kind == 10)
    })
    .await;
    let got = packets(&sub);
    let q_at = first_of(&sub, 0, before).unwrap();
    assert!(
        got[before..q_at].iter().all(|r| layer(r) == 2),
        "stepped through h on the way down"
    );
    let list = sfu.conferences();
    let me = list[0]
        .participants
        .iter()
        .find(|p| p.id == sub.id)
        .unwrap();
    assert_eq!(me.estimate_bps, 100_000);
    // The admin view and the metrics show the layer the leg now receives.
    assert_eq!(me.subscriptions[0].layer.as_deref(), Some("q"));
    let alloc = sfu.allocation_detail();
    assert_eq!(alloc.estimates, vec![100_000]);
    assert_eq!(alloc.layers, [1, 0, 0, 0]);
    // The subscriber sends REMB and transport-wide feedback: the lower (REMB) counts.
    assert_eq!(me.estimate_source, "remb");
    assert_eq!(alloc.sources, [0, 1, 1]);

    // Below even the lowest layer: the track is dropped, then resumes on a keyframe.
    sub.send_remb("video-0", 20_000.0).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n = packets(&sub).len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        packets(&sub).len(),
        n,
        "still forwarded below the lowest layer's rate"
    );
    let paused = sfu.conferences()[0]
        .participants
        .iter()
        .find(|p| p.id == sub.id)
        .unwrap()
        .subscriptions[0]
        .paused;
    assert!(paused);
    sub.send_remb("video-0", 100_000.0).await;
    sub.wait_for("q resumes", LONG, |st| {
        st.remotes["video-0"].packets.len() > n
    })
    .await;
    let resumed = &packets(&sub)[n];
    assert_eq!(layer(resumed), 0);
    assert!(
        vp8_keyframe_start(&resumed.payload),
        "resumed without a keyframe"
    );

    // The estimate recovers: one step up once the hold since the last forced step down
    // has passed, the next one no sooner than the hold after that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = packets(&sub).len();
    let t0 = Instant::now();
    sub.send_remb("video-0", 10_000_000.0).await;
    sub.wait_for("h after the estimate recovered", LONG, |st| {
        st.remotes["video-0"].packets[from..]
            .iter()
            .any(|p| p.kind == 11)
    })
    .await;
    let t_h = t0.elapsed();
    sub.wait_for("f again", LONG, |st| {
        st.remotes["video-0"].packets[from..]
            .iter()
            .any(|p| p.kind == 12)
    })
    .await;
    let t_f = t0.elapsed();
    // The last forced step down (below q) was about 2 s before t0: the first step up
    // waits out the hold from then.
    assert!(t_h < Duration::from_secs(7), "first step up took {t_h:?}");
    assert!(
        t_f >= t_h + Duration::from_millis(4500),
        "second step up after {t_f:?}, first at {t_h:?}: faster than the hold"
    );
    let h_at = first_of(&sub, 1, from).unwrap();
    let f_at = first_of(&sub, 2, from).unwrap();
    assert!(h_at < f_at);
    let got = packets(&sub);
    assert!(got[from..h_at].iter().all(|r| layer(r) == 0));
    assert!(
        got[h_at..f_at].iter().all(|r| layer(r) == 1),
        "flapped between layers"
    );
    let _ = publisher;
    for p in [&publisher, &sub] {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

/// Layer of the last `n` packets the subscriber got on `track_id`, if they were all one.
fn steady_layer(p: &TestPeer, track_id: &str, n: usize) -> Option<usize> {
    let st = p.state.lock().unwrap();
    let got = &st.remotes.get(track_id)?.packets;
    let tail = got.get(got.len().checked_sub(n)?..)?;
    let l = layer(&tail[0]);
    tail.iter().all(|r| layer(r) == l).then_some(l)
}

/// Two simulcast cameras (idx 0 and 2, each with a microphone that is not sending yet) and
/// a subscriber to both videos at 1280x720 whose estimate (REMB 400 kbit/s) fits one f
/// (about 270 kbit/s) and one q (50), not f + h. Returns once the legs split f/q.
async fn two_cameras_under_400k() -> (Sfu, Arc<Router>, [Arc<TestPeer>; 2], Arc<TestPeer>) {
    let (sfu, router, cam_a, sub, track_a) = setup().await;
    let cam_b = TestPeer::new_simulcast(&sfu, 2).await;
    router.add(&cam_b);
    cam_b.join(&sfu).await.unwrap();
    cam_b.wait_for("connected", LONG, |s| s.connected).await;
    cam_b.start_simulcast_sending();
    let track_b = cam_b.track_refs()[0].clone();
    router
        .wait_for("second video published", LONG, |log| {
            log.iter()
                .filter(|e| matches!(e.kind, SfuEventKind::TrackPublished(_)))
                .count()
                >= 2
        })
        .await;
    let tracks = [track_a, track_b];
    sfu.subscribe(CONF, &sub.id, &tracks).await.unwrap();
    for t in &tracks {
        sfu.set_track_size(CONF, &sub.id, t, 1280, 720)
            .await
            .unwrap();
    }
    sub.wait_for("both tracks arrive", LONG, |st| {
        ["video-0", "video-2"]
            .iter()
            .all(|t| st.remotes.get(*t).is_some_and(|r| r.packets.len() >= 30))
    })
    .await;
    // Let the layer rates settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_for_split(&sub, "video-0", "video-2", Duration::from_secs(30), true).await;
    (sfu, router, [cam_a, cam_b], sub)
}

/// Keeps the subscriber's estimate at 400 kbit/s until `first` receives only f and
/// `second` only q (or, with `either`, one f and the other q); panics after `timeout`.
/// Returns the track that got f.
async fn wait_for_split(
    sub: &TestPeer,
    first: &str,
    second: &str,
    timeout: Duration,
    either: bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        sub.send_remb("video-0", 400_000.0).await;
        let (a, b) = (steady_layer(sub, first, 15), steady_layer(sub, second, 15));
        match (a, b) {
            (Some(2), Some(0)) => return first.to_owned(),
            (Some(0), Some(2)) if either => return second.to_owned(),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{first} on {a:?} and {second} on {b:?}, not f and q"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screenshare_gets_the_bandwidth_before_a_camera() {
    let (sfu, _router, cams, sub) = two_cameras_under_400k().await;
    // Both are cameras of the same tile size: which one got f is arbitrary. Declare the
    // other one a screenshare: it must end up on f and the camera on q.
    let winner = steady_layer(&sub, "video-0", 15)
        .filter(|l| *l == 2)
        .map_or("video-2", |_| "video-0");
    let (loser, loser_peer) = if winner == "video-0" {
        ("video-2", &cams[1])
    } else {
        ("video-0", &cams[0])
    };
    let stream = loser_peer.track_refs()[0].stream_id.clone();
    sfu.set_screenshare_streams(CONF, &loser_peer.id, [stream])
        .unwrap();
    wait_for_split(&sub, loser, winner, Duration::from_secs(40), false).await;
    // An unknown participant is refused with a specific error.
    let e = sfu
        .set_screenshare_streams(CONF, "@nobody:test|X", ["s".to_string()])
        .unwrap_err();
    assert_eq!(e.code(), "unknown_participant", "{e}");
    for p in cams.iter().chain([&sub]) {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_speakers_video_gets_the_bandwidth_first() {
    let (sfu, _router, cams, sub) = two_cameras_under_400k().await;
    // Camera b speaks (level 10 −dBov), a is silent (127): b's video gets f. Then the
    // other way round. Whichever got f before speech, one of the two phases moves it.
    let [a, b] = &cams;
    a.audio_level.store(127, Ordering::Relaxed);
    b.audio_level.store(10, Ordering::Relaxed);
    a.start_audio_sending();
    b.start_audio_sending();
    wait_for_split(&sub, "video-2", "video-0", Duration::from_secs(40), false).await;
    a.audio_level.store(10, Ordering::Relaxed);
    b.audio_level.store(127, Ordering::Relaxed);
    wait_for_split(&sub, "video-0", "video-2", Duration::from_secs(40), false).await;
    for p in cams.iter().chain([&sub]) {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

/// Temporal layer id of a packet of [`TestPeer::start_svc_sending`]'s stream.
fn tid(r: &Received) -> u8 {
    r.kind - 20
}

/// The 15-bit VP9 picture id of such a packet.
fn vp9_picture_id(p: &[u8]) -> u32 {
    u16::from_be_bytes([p[1] & 0x7F, p[2]]) as u32
}

/// Frames (by number) whose every packet arrived, and whether a frame arrived in part.
fn frames(got: &[Received]) -> (std::collections::BTreeMap<u32, u8>, Vec<u32>) {
    let mut count: std::collections::BTreeMap<u32, (u8, usize)> = Default::default();
    for r in got {
        count.entry(r.seq).or_insert((tid(r), 0)).1 += 1;
    }
    let mut whole = std::collections::BTreeMap::new();
    let mut partial = vec![];
    for (f, (t, n)) in count {
        if n == SVC_PACKETS[t as usize] {
            whole.insert(f, t);
        } else {
            partial.push(f);
        }
    }
    (whole, partial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp9_leg_drops_temporal_layers_to_fit_and_takes_them_back() {
    temporal_layers_step_down_and_back_up(TestVideo::Vp9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_av1_leg_drops_temporal_layers_by_its_dependency_descriptor() {
    temporal_layers_step_down_and_back_up(TestVideo::Av1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp8_leg_drops_temporal_layers_with_consecutive_picture_ids() {
    temporal_layers_step_down_and_back_up(TestVideo::Vp8).await;
}

async fn temporal_layers_step_down_and_back_up(video: TestVideo) {
    // One stream (no simulcast) with three temporal layers: about 180 kbit/s for T0, 300
    // with T1, 420 with T2. Behind 250 kbit/s the leg can only have T0.
    let (sfu, _router, publisher, sub, track) =
        svc_setup(video, |p| p.start_svc_sending(video)).await;
    sfu.subscribe(CONF, &sub.id, std::slice::from_ref(&track))
        .await
        .unwrap();
    sub.wait_for("all three temporal layers", LONG, |st| {
        st.remotes
            .get("video-0")
            .is_some_and(|r| r.packets.iter().any(|p| p.kind == 22))
    })
    .await;
    // Let the per-layer rates settle, then squeeze the leg until it gets only T0.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sub.send_remb("video-0", 250_000.0).await;
        let got = packets(&sub);
        if got.len() > 60 && got[got.len() - 60..].iter().all(|r| tid(r) == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leg still gets temporal layers above 0 behind 250 kbit/s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let squeezed = packets(&sub).len();
    let info = first_subscription(&sfu, &sub);
    assert_eq!(info.temporal_layer, Some(0), "{info:?}");
    assert_eq!(sfu.allocation_detail().temporal_layers, [1, 0, 0]);
    assert!(sfu.stats().temporal_layer_skipped.load(Ordering::Relaxed) > 0);

    // The limit lifts: the leg takes every temporal layer back in one step (one layer of
    // the ladder: its temporal rungs come along), at a T0 picture.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        sub.send_remb("video-0", 5_000_000.0).await;
        let got = packets(&sub);
        if got[squeezed..].iter().filter(|r| tid(r) == 2).count() >= 15 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leg did not get T2 back once the limit lifted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = packets(&sub);
    let back = squeezed + got[squeezed..].iter().position(|r| tid(r) != 0).unwrap();
    let first_up = got[back].seq;
    assert_eq!(
        first_up % 4,
        1,
        "frame {first_up} came first: not a T0 switch"
    );
    let from_then: std::collections::BTreeSet<u32> = got[back..].iter().map(|r| r.seq).collect();
    let last = *from_then.iter().last().unwrap();
    assert_eq!(
        from_then.len() as u32,
        last - first_up + 1,
        "frames missing after the step back up: all temporal layers came back at once"
    );

    // One leg, one SSRC, sequence numbers without a gap though packets were left out.
    assert!(got.iter().all(|r| r.ssrc == got[0].ssrc));
    for w in got.windows(2) {
        assert_eq!(
            w[1].rtp_seq,
            w[0].rtp_seq.wrapping_add(1),
            "gap in the leg's sequence numbers"
        );
        if video == TestVideo::Vp9 {
            // The picture ids are the publisher's (non-flexible mode: receivers place
            // the missing pictures by them).
            assert_eq!(vp9_picture_id(&w[1].payload), w[1].seq & 0x7FFF);
        }
        if video == TestVideo::Vp8 {
            // Consecutive picture ids over the frames forwarded (a VP8 receiver waits
            // for every id it has not seen), TL0PICIDX as sent.
            let (a, b) = (vp8_picture_id(&w[0].payload), vp8_picture_id(&w[1].payload));
            let step = if w[1].seq == w[0].seq { 0 } else { 1 };
            assert_eq!(
                b,
                (a + step) & 0x7FFF,
                "picture id of frame {} after frame {}",
                w[1].seq,
                w[0].seq
            );
            assert_eq!(w[1].payload[4], (w[1].seq / 4) as u8);
        }
    }
    if video == TestVideo::Av1 {
        // The dependency descriptor reaches the subscriber (remapped to its id), the
        // same bytes the publisher sent.
        let key = got.iter().position(|r| r.payload[0] & 0x08 != 0).unwrap();
        let r = &got[key];
        let dd = svc_dependency_descriptor(true, false, 0, true, r.seq);
        assert!(
            r.extensions.iter().any(|(_, v)| *v == dd),
            "no dependency descriptor on the keyframe: {:?}",
            r.extensions
        );
    }
    // Only whole frames, and every frame's references arrived (a T0 frame refers to the
    // previous T0; T2 after T0 and T1 after T0 to that T0; T2 after T1 to that T1).
    let (whole, partial) = frames(&got);
    let first = *whole.keys().next().unwrap();
    let last = *whole.keys().last().unwrap();
    // The publisher may be mid-frame when the capture ends.
    assert!(
        partial.iter().all(|f| *f == first || *f >= last),
        "frames forwarded in part: {partial:?}"
    );
    for (&f, &t) in &whole {
        let reference = match (f % 4, t) {
            (0, _) => f.checked_sub(4),
            (1, _) | (2, _) => Some(f - (f % 4)),
            (3, _) => Some(f - 1),
            _ => unreachable!(),
        };
        if let Some(r) = reference
            && r >= first
        {
            assert!(
                whole.contains_key(&r),
                "frame {f} (T{t}) arrived without its reference {r}"
            );
        }
    }
    for p in [&publisher, &sub] {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upward_step_is_probed_for_on_the_rtx_stream_first() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let publisher = TestPeer::new_simulcast(&sfu, 0).await;
    // A subscriber that negotiates NACK and RTX, as browsers do.
    let sub = TestPeer::new_with_rtx(&sfu, 1).await;
    let track = connect_pair(&sfu, &router, &publisher, &sub, |p| {
        p.start_simulcast_sending()
    })
    .await;
    sfu.subscribe(CONF, &sub.id, std::slice::from_ref(&track))
        .await
        .unwrap();
    sfu.set_track_size(CONF, &sub.id, &track, 1280, 720)
        .await
        .unwrap();
    sub.wait_for("f packets", LONG, |st| {
        st.remotes
            .get("video-0")
            .is_some_and(|r| r.packets.iter().filter(|p| p.kind == 12).count() >= 15)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 200 kbit/s fits h (about 150) but not f (about 270).
    let deadline = Instant::now() + Duration::from_secs(30);
    while steady_layer(&sub, "video-0", 15) != Some(1) {
        sub.send_remb("video-0", 200_000.0).await;
        assert!(Instant::now() < deadline, "the leg did not step down to h");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let squeezed = packets(&sub).len();
    let probes_before = sfu.stats().probe_packets.load(Ordering::Relaxed);
    // The limit lifts: the leg probes for f on its RTX stream, then steps up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first_f = loop {
        sub.send_remb("video-0", 5_000_000.0).await;
        if let Some(i) = first_of(&sub, 2, squeezed) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "the leg did not step back up to f"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stats = sfu.stats();
    assert!(
        stats.probe_packets.load(Ordering::Relaxed) > probes_before,
        "no probe before the upward step"
    );
    assert!(
        stats.probes[0].load(Ordering::Relaxed) >= 1,
        "no probe passed"
    );
    // The probes reached the subscriber as RTX retransmissions of packets it already had
    // (repaired into duplicates), before the first f packet.
    let dups: Vec<usize> = sub.state.lock().unwrap().remotes["video-0"]
        .duplicates
        .clone();
    let probes_seen = dups
        .iter()
        .filter(|at| **at >= squeezed && **at <= first_f)
        .count();
    assert!(
        probes_seen >= 10,
        "{probes_seen} probe packets reached the subscriber before f ({dups:?})"
    );
    // The prober's NACKs are not counted as the subscriber's.
    assert_eq!(stats.nacks_received.load(Ordering::Relaxed), 0);
    for p in [&publisher, &sub] {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

/// One packet of a spatial SVC picture as received: `(sid, tid, key, marker)`.
type SvcPacket = (u8, u8, bool, bool);

/// One picture as received: its frame number and its packets in arrival order.
type Picture = (u32, Vec<SvcPacket>);

/// The packets `got` grouped by picture (frame number), in arrival order.
fn pictures(got: &[Received]) -> Vec<Picture> {
    let mut out: Vec<Picture> = Vec::new();
    for r in got {
        let (sid, tid, key) = spatial_of(r);
        match out.last_mut() {
            Some((f, v)) if *f == r.seq => v.push((sid, tid, key, r.marker)),
            _ => out.push((r.seq, vec![(sid, tid, key, r.marker)])),
        }
    }
    out
}

/// Asserts that every picture in `pics` has spatial layers 0..=`top` complete (their
/// packets in order), nothing above, and the marker on its last packet only.
fn assert_pictures_end_at(pics: &[Picture], top: u8) {
    for (frame, pkts) in pics {
        let want: Vec<u8> = (0..=top)
            .flat_map(|s| std::iter::repeat_n(s, SPATIAL_PACKETS[s as usize]))
            .collect();
        let sids: Vec<u8> = pkts.iter().map(|p| p.0).collect();
        assert_eq!(sids, want, "picture {frame}: spatial layers {sids:?}");
        let markers: Vec<bool> = pkts.iter().map(|p| p.3).collect();
        assert!(
            markers[..markers.len() - 1].iter().all(|m| !m) && markers[markers.len() - 1],
            "picture {frame}: markers {markers:?} (the leg's picture ends at layer {top})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp9_svc_leg_gets_the_spatial_layers_its_tile_needs() {
    spatial_layers_follow_the_tile(TestVideo::Vp9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_av1_svc_leg_gets_the_spatial_layers_its_tile_needs() {
    // The sizes come from the dependency descriptor's render resolutions.
    spatial_layers_follow_the_tile(TestVideo::Av1).await;
}

async fn spatial_layers_follow_the_tile(video: TestVideo) {
    // One stream with three spatial layers (K-SVC, 320×180 to 1280×720). A subscriber
    // rendering 320×180 gets only the base layer, each picture ending there (marker);
    // at 1280×720 it gets all three from the next keyframe picture on (asked for), never
    // an upper layer frame before; at 640×360 two, from the next picture. The leg's
    // sequence numbers stay contiguous throughout.
    let (sfu, _router, publisher, sub, track) =
        svc_setup(video, |p| p.start_spatial_sending(video)).await;
    // The first keyframe has announced the layers' sizes by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sfu.subscribe(CONF, &sub.id, std::slice::from_ref(&track))
        .await
        .unwrap();
    sfu.set_track_size(CONF, &sub.id, &track, 320, 180)
        .await
        .unwrap();
    sub.wait_for("40 base-layer pictures", LONG, |st| {
        st.remotes.get("video-0").is_some_and(|r| {
            r.packets.len() >= 40
                && r.packets[r.packets.len() - 40..]
                    .iter()
                    .all(|p| spatial_of(p).0 == 0)
        })
    })
    .await;
    let got = packets(&sub);
    for w in got.windows(2) {
        assert_eq!(w[1].rtp_seq, w[0].rtp_seq.wrapping_add(1), "gap in the leg");
    }
    // From the first picture after the size arrived (the leg starts with every layer):
    // the base layer only.
    let pics = pictures(&got);
    let down = 1 + pics[1..]
        .iter()
        .position(|(_, p)| p.iter().all(|x| x.0 == 0))
        .unwrap();
    assert!(
        pics.len() - down >= 30,
        "{} base-layer pictures",
        pics.len() - down
    );
    assert_pictures_end_at(&pics[down..], 0);
    assert_eq!(first_subscription(&sfu, &sub).spatial_layer, Some(0));
    assert!(sfu.stats().spatial_layer_skipped.load(Ordering::Relaxed) > 0);

    // Larger tile: all three layers, from a keyframe picture on. The publisher sends
    // keyframes only every 2 s meanwhile, so the next picture is most likely not one.
    publisher.ignore_plis.store(true, Ordering::SeqCst);
    let plis_before = publisher.plis.load(Ordering::SeqCst);
    let from = packets(&sub).len();
    sfu.set_track_size(CONF, &sub.id, &track, 1280, 720)
        .await
        .unwrap();
    sub.wait_for("the top spatial layer", LONG, |st| {
        st.remotes.get("video-0").is_some_and(|r| {
            r.packets[from..]
                .iter()
                .filter(|p| spatial_of(p).0 == 2)
                .count()
                >= 40
        })
    })
    .await;
    assert!(
        publisher.plis.load(Ordering::SeqCst) > plis_before,
        "no keyframe asked for to add spatial layers"
    );
    let got = packets(&sub);
    for w in got.windows(2) {
        assert_eq!(w[1].rtp_seq, w[0].rtp_seq.wrapping_add(1), "gap in the leg");
    }
    let pics = pictures(&got[from..]);
    let up = pics
        .iter()
        .position(|(_, p)| p.iter().any(|x| x.0 > 0))
        .unwrap();
    assert!(
        pics[up].1[0].2,
        "upper spatial layers began at picture {}, not a keyframe",
        pics[up].0
    );
    assert_pictures_end_at(&pics[..up], 0);
    assert_pictures_end_at(&pics[up..pics.len() - 1], 2);
    assert_eq!(first_subscription(&sfu, &sub).spatial_layer, None);
    publisher.ignore_plis.store(false, Ordering::SeqCst);

    // Medium tile: two layers, from the next picture (no keyframe needed).
    let from = packets(&sub).len();
    sfu.set_track_size(CONF, &sub.id, &track, 640, 360)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = packets(&sub);
    let pics = pictures(&got[from..]);
    let down = pics
        .iter()
        .position(|(_, p)| !p.iter().any(|x| x.0 == 2))
        .unwrap();
    assert!(
        pics.len() - down >= 20,
        "{} pictures after the switch",
        pics.len() - down
    );
    assert_pictures_end_at(&pics[down..pics.len() - 1], 1);
    assert_eq!(first_subscription(&sfu, &sub).spatial_layer, Some(1));
    publisher.close().await;
    sub.close().await;
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp9_svc_leg_steps_down_spatial_layers_to_fit_its_bandwidth() {
    spatial_layers_step_down_and_back_up(TestVideo::Vp9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_av1_svc_leg_steps_down_spatial_layers_to_fit_its_bandwidth() {
    // The layers come from the dependency descriptor's templates.
    spatial_layers_step_down_and_back_up(TestVideo::Av1).await;
}

async fn spatial_layers_step_down_and_back_up(video: TestVideo) {
    // The same K-SVC stream, for a 1280×720 tile. Its ladder (kbit/s): base layer 36 /
    // 72 / 144 for T0 / +T1 / +T2, with the middle layer 108 / 216 / 432, all three 252 /
    // 504 / 1008. Behind 250 kbit/s the best rung that fits is the middle layer at T0+T1;
    // the leg's pictures end there. When the limit lifts, all layers come back, at a
    // keyframe picture.
    let (sfu, _router, publisher, sub, track) =
        svc_setup(video, |p| p.start_spatial_sending(video)).await;
    sfu.subscribe(CONF, &sub.id, std::slice::from_ref(&track))
        .await
        .unwrap();
    sfu.set_track_size(CONF, &sub.id, &track, 1280, 720)
        .await
        .unwrap();
    sub.wait_for("the top spatial layer", LONG, |st| {
        st.remotes
            .get("video-0")
            .is_some_and(|r| r.packets.iter().filter(|p| spatial_of(p).0 == 2).count() >= 40)
    })
    .await;
    // Let the per-layer rates settle, then squeeze the leg.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let squeezed = loop {
        sub.send_remb("video-0", 250_000.0).await;
        let got = packets(&sub);
        let pics = pictures(&got);
        if pics.len() > 30
            && pics[pics.len() - 30..]
                .iter()
                .all(|(_, p)| p.iter().all(|x| x.0 <= 1))
        {
            break got.len();
        }
        assert!(
            Instant::now() < deadline,
            "the leg still gets the top spatial layer behind 250 kbit/s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let sub_info = first_subscription(&sfu, &sub);
    assert_eq!(
        (sub_info.spatial_layer, sub_info.temporal_layer),
        (Some(1), Some(1)),
        "{sub_info:?}"
    );
    let got = packets(&sub);
    let pics = pictures(&got);
    let last: Vec<_> = pics[pics.len() - 30..pics.len() - 1].to_vec();
    assert!(last.iter().all(|(_, p)| p.iter().all(|x| x.1 <= 1)));
    assert_pictures_end_at(&last, 1);

    // The limit lifts: every layer back, at a keyframe picture.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        sub.send_remb("video-0", 5_000_000.0).await;
        let got = packets(&sub);
        if got[squeezed..]
            .iter()
            .filter(|r| spatial_of(r).0 == 2)
            .count()
            >= 40
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leg did not get the top spatial layer back once the limit lifted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = packets(&sub);
    let pics = pictures(&got[squeezed..]);
    let up = pics
        .iter()
        .position(|(_, p)| p.iter().any(|x| x.0 == 2))
        .unwrap();
    assert!(
        pics[up].1[0].2,
        "the top layer came back at picture {}, not a keyframe",
        pics[up].0
    );
    for w in got.windows(2) {
        assert_eq!(w[1].rtp_seq, w[0].rtp_seq.wrapping_add(1), "gap in the leg");
    }
    publisher.close().await;
    sub.close().await;
    sfu.shutdown(HangupReason::UserHangup).await;
}
