#![recursion_limit = "256"]
//! Browser interop: the reference web client (web/dist) in headless Chromium, calling through
//! a real Sluice on a real Synapse. Chromium's own WebRTC stack (libwebrtc) encodes its fake
//! camera and microphone, Sluice forwards, and the other Chromium decodes: every assertion
//! reads the receiving page's `RTCPeerConnection.getStats()` or DOM.
//!
//! Needs Debian's chromium + chromium-driver, a built web client and SLUICE_TEST_HOMESERVER
//! (scripts/test provides all three). On failure each page's screenshot is saved (path in
//! the test output).

mod support;

use serde_json::{Value, json};
use sluice::http::{AppState, WebClient};
use sluice::metrics::{LoadEstimator, Metrics};
use sluice::ops::Ops;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::browser::{Browser, ChromeDriver};
use support::matrix::{Participant, SluiceUnderTest, call_room, register, room_of, unique};

/// Chromium instances are heavy on two cores: one browser test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LONG: Duration = Duration::from_secs(60);

struct Stack {
    sluice: SluiceUnderTest,
    web: String,
    driver: ChromeDriver,
    server_name: String,
}

fn web_dist() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    assert!(
        d.join("index.html").is_file(),
        "the web client is not built: run `npm ci && npm run build` in web/ (scripts/test does)"
    );
    d
}

async fn stack() -> Stack {
    support::log_if_asked();
    let dir = web_dist();
    let sluice = SluiceUnderTest::start(|_| {}).await;
    let load = LoadEstimator::new(sluice.sfu.stats(), 10_000);
    let state = AppState {
        sfu: sluice.sfu.clone(),
        metrics: Arc::new(Metrics::new(sluice.sfu.clone(), load)),
        ops: Ops::new(sluice.sfu.clone(), Duration::from_secs(60)),
        sync_up: None,
        admin_token: None,
        transport: Some(sluice.transport()),
        web: Some(WebClient {
            dir,
            settings: json!({
                "homeserver": sluice.cfg.homeserver_url,
                "transport": sluice.transport(),
                "room": "",
                "demo_users": [],
            }),
        }),
        front_doors: Vec::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(sluice::http::serve(listener, state));
    let server_name = sluice.user_id.split_once(':').unwrap().1.to_owned();
    Stack {
        sluice,
        web,
        driver: ChromeDriver::start().await,
        server_name,
    }
}

/// A fresh account on the test homeserver: (user name, password).
async fn account(prefix: &str) -> (String, String) {
    let name = unique(prefix);
    drop(register(&support::matrix::homeserver(), &name, "pw", "REG").await);
    (name, "pw".to_owned())
}

#[derive(Default)]
struct JoinOptions<'a> {
    e2ee_key: Option<&'a str>,
    plain_signaling: bool,
    /// Publish video as VP9 SVC (L3T3) instead of simulcast.
    svc: bool,
}

/// Opens the web client in a new browser and logs in as `user`.
async fn login(stack: &Stack, name: &str, user: &str, password: &str) -> Browser {
    let b = stack.driver.browser(name).await;
    b.goto(&stack.web).await;
    b.wait_until(
        "web-client.json",
        LONG,
        "return document.getElementById('homeserver').value !== '';",
    )
    .await;
    b.fill("#user", user).await;
    b.fill("#password", password).await;
    b.click("#login-button").await;
    b.wait_until(
        "login",
        LONG,
        "return !document.getElementById('lobby').hidden;",
    )
    .await;
    b
}

/// Joins the call in `room` from the lobby and waits for the connection.
async fn join_call(b: &Browser, room: &str, opts: JoinOptions<'_>) {
    b.fill("#room", room).await;
    if let Some(k) = opts.e2ee_key {
        b.fill("#e2ee-key", k).await;
    }
    if opts.plain_signaling {
        b.click("#olm").await;
    }
    if opts.svc {
        b.click("#svc").await;
    }
    b.click("#join-button").await;
    b.wait_until(
        "the call to connect",
        LONG,
        "return window.sluice.call?.pc?.connectionState === 'connected';",
    )
    .await;
}

/// Opens the web client, logs in as a fresh user and joins the call in `room`.
async fn join(stack: &Stack, name: &str, room: &str, opts: JoinOptions<'_>) -> (Browser, String) {
    let (user, password) = account(name).await;
    let b = login(stack, name, &user, &password).await;
    join_call(&b, room, opts).await;
    (b, format!("@{user}:{}", stack.server_name))
}

/// Per inbound stream: (kind, track id, framesDecoded, packetsReceived, frameWidth).
async fn inbound(b: &Browser) -> Vec<Value> {
    b.eval("return window.sluice.call.inboundStats();", json!([]))
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn total(stats: &[Value], kind: &str, field: &str) -> u64 {
    stats
        .iter()
        .filter(|s| s["kind"] == kind)
        .map(|s| s[field].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until `b` decodes video and receives audio from `n` other participants.
async fn wait_media(b: &Browser, n: usize) {
    b.wait_until(
        &format!("audio and decoded video from {n} participants"),
        LONG,
        &format!(
            "return window.sluice.call.inboundStats().then(s =>
               s.filter(x => x.kind === 'video' && x.framesDecoded > 0).length >= {n} &&
               s.filter(x => x.kind === 'audio' && x.packetsReceived > 0).length >= {n});"
        ),
    )
    .await;
}

/// Asserts that media keeps arriving: decoded frames and audio packets grow over 3 s.
async fn assert_media_flows(b: &Browser) {
    let before = inbound(b).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = inbound(b).await;
    let frames = total(&after, "video", "framesDecoded") - total(&before, "video", "framesDecoded");
    let audio =
        total(&after, "audio", "packetsReceived") - total(&before, "audio", "packetsReceived");
    assert!(
        frames >= 15,
        "[{}] only {frames} video frames decoded in 3 s: {after:?}",
        b.name
    );
    assert!(
        audio >= 60,
        "[{}] only {audio} audio packets in 3 s: {after:?}",
        b.name
    );
}

/// Asserts that the browsers' audio went through Sluice as RED, untouched: Sluice received
/// RED (the web client prefers it), every browser's audio subscription passes it through
/// (browsers take RED over the same Opus payload type), and nothing was unwrapped.
/// (Chromium's getStats names the decoder's codec, Opus, for a RED stream.)
fn assert_audio_passed_in_red(stack: &Stack) {
    let stats = stack.sluice.sfu.stats();
    let received = stats.red_received.load(Ordering::Relaxed);
    assert!(received > 100, "{received} RED packets from the browsers");
    assert_eq!(stats.red_unwrapped.load(Ordering::Relaxed), 0);
    for p in stack
        .sluice
        .sfu
        .conferences()
        .into_iter()
        .flat_map(|c| c.participants)
    {
        let audio: Vec<_> = p.subscriptions.iter().filter(|s| s.red.is_some()).collect();
        assert!(
            !audio.is_empty()
                && audio
                    .iter()
                    .all(|s| s.red == Some(sluice::sfu::RedDelivery::Passthrough)),
            "{}: {:?}",
            p.id,
            p.subscriptions
        );
    }
}

async fn wait_empty(stack: &Stack) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let snap = stack.sluice.sfu.snapshot();
        if snap == sluice::sfu::SfuSnapshot::default()
            && stack.sluice.signaling().session_count() == 0
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Sluice still holds {snap:?}, {} sessions",
            stack.sluice.signaling().session_count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn room_alias(stack: &Stack) -> String {
    format!("#{}:{}", unique("call"), stack.server_name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_see_and_hear_each_other_through_sluice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let room = room_alias(&stack);
    let (a, _) = join(&stack, "alice", &room, JoinOptions::default()).await;
    let (b, _) = join(&stack, "bob", &room, JoinOptions::default()).await;
    for p in [&a, &b] {
        wait_media(p, 1).await;
        assert_media_flows(p).await;
        // The other participant's tile renders its video.
        let size = p
            .eval(
                "const v = document.querySelector('.tile[data-user] video');
                 const r = v.getBoundingClientRect();
                 return [v.videoWidth, v.videoHeight, r.width, r.height];",
                json!([]),
            )
            .await;
        let size: Vec<f64> = serde_json::from_value(size).unwrap();
        assert!(
            size.iter().all(|&x| x > 0.0),
            "[{}] video size {size:?}",
            p.name
        );
        assert_eq!(
            p.eval("return window.sluice.call.toDevice.encrypted;", json!([]))
                .await,
            json!(true),
            "[{}] signaling is Olm-encrypted",
            p.name
        );
        assert_eq!(p.banner().await, "");
    }
    let snap = stack.sluice.sfu.snapshot();
    assert_eq!((snap.conferences, snap.participants), (1, 2));
    assert_audio_passed_in_red(&stack);
    for p in [&a, &b] {
        p.click("#leave").await;
    }
    wait_empty(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_leaves_disappears_and_its_tracks_end() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let room = room_alias(&stack);
    let (a, _) = join(
        &stack,
        "alice",
        &room,
        JoinOptions {
            plain_signaling: true,
            ..Default::default()
        },
    )
    .await;
    let (b, b_user) = join(&stack, "bob", &room, JoinOptions::default()).await;
    wait_media(&a, 1).await;
    // B's track ids as A receives them.
    let b_tracks = a
        .eval(
            "return window.sluice.call.pc.getTransceivers()
               .filter(t => t.currentDirection === 'recvonly').map(t => t.receiver.track.id);",
            json!([]),
        )
        .await;
    assert_eq!(b_tracks.as_array().unwrap().len(), 2, "{b_tracks}");
    b.click("#leave").await;
    a.wait_until(
        "bob's tile to disappear",
        LONG,
        "return document.querySelectorAll('.tile[data-user]').length === 0;",
    )
    .await;
    a.wait_until_with(
        "bob's tracks to end",
        LONG,
        "return window.sluice.call.pc.getTransceivers()
           .filter(t => arguments[0].includes(t.receiver.track.id))
           .every(t => t.currentDirection !== 'recvonly' || t.receiver.track.readyState === 'ended');",
        b_tracks.clone(),
    )
    .await;
    // Bob's page is back in the lobby and his membership is gone from the room.
    assert_eq!(
        b.eval(
            "return !document.getElementById('lobby').hidden;",
            json!([])
        )
        .await,
        json!(true)
    );
    let members = a
        .eval(
            "const room = window.sluice.client.getRoom(window.sluice.call.roomId);
             return room.currentState.getStateEvents('org.matrix.msc3401.call.member')
               .filter(e => e.getSender() === arguments[0] && Object.keys(e.getContent()).length > 0).length;",
            json!([b_user]),
        )
        .await;
    assert_eq!(members, json!(0), "bob's call membership was removed");
    let deadline = tokio::time::Instant::now() + LONG;
    while stack.sluice.sfu.snapshot().participants != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob still in Sluice"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stack.sluice.signaling().session_count(), 1);
    a.click("#leave").await;
    wait_empty(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layer_follows_each_browsers_tile_size() {
    layer_follows_each_browsers_tile_size(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_svc_spatial_layer_follows_each_browsers_tile_size() {
    // Every page publishes one VP9 stream with three spatial layers (L3T3_KEY) instead:
    // Sluice leaves the upper ones out for the small tiles and ends each picture at the
    // base layer's last packet, and the small page's decoder keeps decoding.
    layer_follows_each_browsers_tile_size(true).await;
}

/// Three pages publish (simulcast, or with `svc` VP9 SVC); the small-tile page gets only
/// the lowest layer of each (width <= 320), the large-tile page a higher one, and both
/// keep decoding.
async fn layer_follows_each_browsers_tile_size(svc: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let room = room_alias(&stack);
    let opts = || JoinOptions {
        svc,
        ..Default::default()
    };
    let (a, _) = join(&stack, "alice", &room, opts()).await;
    let (small, _) = join(&stack, "small", &room, opts()).await;
    let (large, _) = join(&stack, "large", &room, opts()).await;
    small.click("#compact").await;
    for p in [&a, &small, &large] {
        wait_media(p, 2).await;
    }
    if svc {
        let published: Vec<String> = stack
            .sluice
            .sfu
            .conferences()
            .into_iter()
            .flat_map(|c| c.participants)
            .flat_map(|p| p.published)
            .filter(|t| t.kind == sluice::sfu::MediaKind::Video)
            .map(|t| t.mime_type)
            .collect();
        assert_eq!(published, vec!["video/VP9"; 3], "the pages publish VP9");
    }
    // The small-tile page gets only the low layer of both publishers …
    small
        .wait_until(
            "only low-layer video (width <= 320)",
            LONG,
            "return window.sluice.call.inboundStats().then(s => {
               const v = s.filter(x => x.kind === 'video');
               return v.length === 2 && v.every(x => x.frameWidth > 0 && x.frameWidth <= 320);
             });",
        )
        .await;
    // … and the large-tile page a higher one.
    large
        .wait_until(
            "higher-layer video (width > 320)",
            LONG,
            "return window.sluice.call.inboundStats().then(s =>
               s.filter(x => x.kind === 'video' && x.frameWidth > 320).length === 2);",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = inbound(&small).await;
    assert!(
        s.iter()
            .filter(|x| x["kind"] == "video")
            .all(|x| x["frameWidth"].as_u64().unwrap() <= 320),
        "small tiles stay on the low layer: {s:?}"
    );
    assert_media_flows(&small).await;
    assert_media_flows(&large).await;
    if svc {
        let stats = stack.sluice.sfu.stats();
        assert!(stats.spatial_layer_skipped.load(Ordering::Relaxed) > 0);
    }
    for p in [&a, &small, &large] {
        p.click("#leave").await;
    }
    wait_empty(&stack).await;
}

async fn e2ee_counters(b: &Browser) -> (u64, u64, u64) {
    let c = b
        .eval("return window.sluice.e2ee.counters;", json!([]))
        .await;
    (
        c["encrypted"].as_u64().unwrap(),
        c["decrypted"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insertable_streams_e2ee_media_passes_through_sluice_untouched() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let room = room_alias(&stack);
    let key = JoinOptions {
        e2ee_key: Some("correct horse battery staple"),
        ..Default::default()
    };
    let (a, _) = join(&stack, "alice", &room, key).await;
    let (b, _) = join(
        &stack,
        "bob",
        &room,
        JoinOptions {
            e2ee_key: Some("correct horse battery staple"),
            ..Default::default()
        },
    )
    .await;
    for p in [&a, &b] {
        wait_media(p, 1).await;
        assert_media_flows(p).await;
        let (enc, dec, failed) = e2ee_counters(p).await;
        assert!(enc > 100 && dec > 100, "[{}] e2ee {enc}/{dec}", p.name);
        // AES-GCM authenticates every frame, header bytes included: any change on the way
        // would fail here.
        assert_eq!(failed, 0, "[{}] frames that failed to decrypt", p.name);
    }
    // The audio frames decrypted above were RED, end-to-end encrypted, passed through.
    assert_audio_passed_in_red(&stack);
    // Control: a participant with another key receives the frames but cannot decode them.
    let (c, _) = join(
        &stack,
        "eve",
        &room,
        JoinOptions {
            e2ee_key: Some("wrong key"),
            ..Default::default()
        },
    )
    .await;
    c.wait_until(
        "packets from both others",
        LONG,
        "return window.sluice.call.inboundStats().then(s =>
           s.filter(x => x.kind === 'video' && x.packetsReceived > 50).length === 2);",
    )
    .await;
    // Frames reach the decryptor once complete (from a keyframe on, and after each layer
    // switch the bandwidth allocator makes): wait for enough of them rather than reading
    // the counter at one instant.
    let deadline = std::time::Instant::now() + LONG;
    let (dec, failed) = loop {
        let (_, dec, failed) = e2ee_counters(&c).await;
        if failed > 20 || std::time::Instant::now() > deadline {
            break (dec, failed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(dec, 0);
    assert!(failed > 20, "wrong-key frames counted as failed: {failed}");
    assert_eq!(total(&inbound(&c).await, "video", "framesDecoded"), 0);
    for p in [&a, &b, &c] {
        p.click("#leave").await;
    }
    wait_empty(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_webrtc_rs_participant_exchange_media() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let rs = Participant::new(0, &stack.sluice, true).await;
    let room = call_room(&rs, &[], &stack.sluice).await;
    let room_id = room.room_id().to_owned();
    // The browser user is invited and joins the room by id from the page.
    let (user, password) = account("browser").await;
    let user_id =
        matrix_sdk::ruma::UserId::parse(format!("@{user}:{}", stack.server_name)).unwrap();
    room.invite_user_by_id(&user_id).await.unwrap();
    let r = room_of(&rs, &room_id).await;
    rs.write_membership(&r, stack.sluice.transport(), 3_600_000)
        .await;
    rs.invite().await;
    rs.peer.wait_for("connected", LONG, |s| s.connected).await;
    rs.peer.start_sending();

    let b = login(&stack, "browser", &user, &password).await;
    join_call(&b, room_id.as_str(), JoinOptions::default()).await;

    // webrtc-rs → Chromium: the synthetic VP8 is not decodable, so count RTP packets.
    // (And Chromium → webrtc-rs below counts real media packets, not test payloads.)
    b.wait_until(
        "audio and video packets from the webrtc-rs participant",
        LONG,
        "return window.sluice.call.inboundStats().then(s =>
           s.filter(x => x.packetsReceived > 50).length === 2);",
    )
    .await;

    // Chromium → webrtc-rs: subscribe to the browser's tracks as announced, then count.
    rs.wait_for("the browser's streams announced", LONG, |p| {
        p.last_metadata()
            .is_some_and(|m| m.as_object().is_some_and(|o| o.len() == 1))
    })
    .await;
    let md = rs.last_metadata().unwrap();
    let (stream_id, s) = md.as_object().unwrap().iter().next().unwrap();
    assert_eq!(s["user_id"], user_id.as_str());
    let tracks: Vec<Value> = s["tracks"]
        .as_object()
        .unwrap()
        .keys()
        .map(|t| json!({"stream_id": stream_id, "track_id": t}))
        .collect();
    assert_eq!(tracks.len(), 2);
    rs.dc_send(
        "m.call.track_subscription",
        json!({"subscribe": tracks.clone()}),
    )
    .await;
    let ids: Vec<String> = tracks
        .iter()
        .map(|t| t["track_id"].as_str().unwrap().to_owned())
        .collect();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let got: Vec<(String, usize)> = rs
            .peer
            .state
            .lock()
            .unwrap()
            .remotes
            .iter()
            .map(|(t, r)| (t.clone(), r.other_packets))
            .collect();
        if ids
            .iter()
            .all(|t| got.iter().any(|(g, n)| g == t && *n > 50))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webrtc-rs participant did not get Chromium's {ids:?}: has {got:?}; DC log {:?}",
            rs.dc_log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rs.peer
            .state
            .lock()
            .unwrap()
            .remotes
            .values()
            .all(|r| r.stream_id == *stream_id)
    );
    assert!(!rs.encrypted.load(Ordering::Relaxed));
    // The browser sends its audio in RED; the webrtc-rs participant negotiated none and
    // got the primary blocks as plain Opus.
    let unwrapped = stack
        .sluice
        .sfu
        .stats()
        .red_unwrapped
        .load(Ordering::Relaxed);
    assert!(unwrapped > 50, "{unwrapped} RED packets unwrapped");

    b.click("#leave").await;
    rs.close().await;
    wait_empty(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_answers_ends_with_a_clear_message() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let (user, password) = account("unanswered").await;
    let b = login(&stack, "unanswered", &user, &password).await;
    // The transport names a device of Sluice's account that does not exist: the invite
    // reaches nobody, as when Sluice is not running.
    b.eval(
        "const c = window.sluice.config; c.transport = {...c.transport, device_id: 'NOSUCHDEVICE'}; return true;",
        json!([]),
    )
    .await;
    b.fill("#room", &room_alias(&stack)).await;
    b.click("#join-button").await;
    b.wait_until(
        "the page to call Sluice",
        LONG,
        "return document.getElementById('status').textContent.includes('calling Sluice');",
    )
    .await;
    // The invite's lifetime is 30 s.
    b.wait_until(
        "the call to give up",
        Duration::from_secs(60),
        "return !document.getElementById('lobby').hidden;",
    )
    .await;
    let banner = b.banner().await;
    assert!(
        banner.contains("did not answer") && banner.contains("may not be running"),
        "{banner}"
    );
    let status = b
        .eval(
            "return document.getElementById('status').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(status, json!("logged in"));
    wait_empty(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_room_whose_creator_is_still_setting_it_up_succeeds() {
    use matrix_sdk::ruma::api::client::room::create_room::v3::{Request, RoomPreset};
    use matrix_sdk::ruma::events::room::join_rules::{JoinRule, RoomJoinRulesEventContent};
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = stack().await;
    let (user, password) = account("second").await;
    let b = login(&stack, "second", &user, &password).await;
    // Someone else pressed "Join call" on the new room a moment earlier: the room exists,
    // but until their client has made it public (here: 2 s) a join is refused with 403.
    let creator = register(
        &support::matrix::homeserver(),
        &unique("creator"),
        "pw",
        "C",
    )
    .await;
    let localpart = unique("race");
    let mut req = Request::new();
    req.room_alias_name = Some(localpart.clone());
    req.preset = Some(RoomPreset::PrivateChat);
    let pl = json!({"events": {support::matrix::MEMBER_EVENT: 0}});
    req.power_level_content_override = Some(
        matrix_sdk::ruma::serde::Raw::new(&pl)
            .unwrap()
            .cast_unchecked(),
    );
    let room = creator.create_room(req).await.unwrap();
    let opening = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        room.send_state_event(RoomJoinRulesEventContent::new(JoinRule::Public))
            .await
            .unwrap();
    });
    join_call(
        &b,
        &format!("#{localpart}:{}", stack.server_name),
        JoinOptions::default(),
    )
    .await;
    opening.await.unwrap();
    assert_eq!(b.banner().await, "");
    b.click("#leave").await;
    wait_empty(&stack).await;
}
