#![recursion_limit = "256"]
//! Stock livekit-client (npm, `tests/livekit-web/`'s lockfile) in headless Chromium against
//! Sluice's LiveKit front door: each page connects with a LiveKit token, publishes its fake
//! camera (two simulcast layers) and microphone, and must decode the others' video, read
//! from the receivers' own `getStats()`: at the layer its tiles ask for (adaptive stream),
//! and through livekit's end-to-end encryption; their data packets, text streams and RPC
//! calls; the connection quality Sluice reports; the layers a publisher with dynacast
//! sends (only those a tile needs); and a session resumed after its signaling socket
//! dropped. Nothing here is written for Sluice but the page that calls the library.
//!
//! Needs Debian's chromium + chromium-driver and `npm ci` in tests/livekit-web (scripts/test
//! does both). On failure each page's state is printed.

mod support;

use serde_json::{Value, json};
use sluice::sfu::{HangupReason, SfuSnapshot};
use std::time::{Duration, Instant};
use support::browser::{Browser, ChromeDriver};
use support::livekit::{FrontDoor, LONG, front_door, front_door_with, settle, token};

/// One browser test at a time: each runs three Chromiums.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Polls `script` (an expression) until it is true; panics with the page's state.
async fn wait(b: &Browser, what: &str, script: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let v = b
            .eval(
                &format!("return Promise.resolve({script}).then(v => v === true);"),
                json!([]),
            )
            .await;
        if v == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let state = b
                .eval(
                    "return window.lkFrames().then(f => ({lk: window.lk, frames: f, offer: window.room?.engine?.pcManager?.publisher?.pc?.localDescription?.sdp}));",
                    json!([]),
                )
                .await;
            panic!(
                "[{}] timed out waiting for {what}; page state: {state:#}",
                b.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Opens one page per `(name, options)` and connects each to `room` (the options are
/// `lkConnect`'s); returns once every page publishes.
async fn join(
    door: &FrontDoor,
    driver: &ChromeDriver,
    room: &str,
    who: &[(&str, Value)],
) -> Vec<Browser> {
    let mut pages = Vec::new();
    for (name, opts) in who {
        let b = driver.browser(name).await;
        b.goto(&door.page).await;
        wait(
            &b,
            "livekit-client loaded",
            "typeof window.lkConnect === 'function'",
        )
        .await;
        b.eval(
            "window.lkConnect(arguments[0], arguments[1], arguments[2]); return true;",
            json!([door.url, token(name, room), opts]),
        )
        .await;
        pages.push(b);
    }
    for b in &pages {
        wait(
            b,
            "connected and publishing",
            "window.lk.state === 'publishing'",
        )
        .await;
    }
    pages
}

/// What `b` decodes of `other`'s video now: (frames decoded, decoded width).
async fn video_of(b: &Browser, other: &str) -> (u64, u64) {
    let v = b
        .eval(
            "return window.lkVideo().then(v => v[arguments[0]] || {});",
            json!([other]),
        )
        .await;
    (
        v["frames"].as_u64().unwrap_or(0),
        v["width"].as_u64().unwrap_or(0),
    )
}

/// Waits until `b` has decoded 30 frames of `other`'s video, and 30 more after that.
async fn decodes(b: &Browser, other: &str) {
    let first = format!("window.lkFrames().then(f => (f['{other}'] || 0) > 30)");
    wait(b, &format!("{other}'s video decoding"), &first).await;
    let (n, _) = video_of(b, other).await;
    let more = format!(
        "window.lkFrames().then(f => (f['{other}'] || 0) > {})",
        n + 30
    );
    wait(b, &format!("{other}'s video still decoding"), &more).await;
}

/// Every page leaves; the SFU and the front door then hold nothing.
async fn leave_all(door: &FrontDoor, pages: &[Browser]) {
    for b in pages {
        disconnect(b).await;
    }
    settle(door, |snap, rooms| {
        snap == SfuSnapshot::default() && rooms == (0, 0)
    })
    .await;
    door.sfu.shutdown(HangupReason::UserHangup).await;
}

async fn disconnect(b: &Browser) {
    b.eval(
        "return window.room.disconnect().then(() => true);",
        json!([]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_pages_publish_simulcast_and_decode_each_other_through_sluice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = front_door().await;
    let driver = ChromeDriver::start().await;
    // Alice and Bob show each remote camera in a 640x360 tile, Carol in a 160x90 one; all
    // three use livekit's adaptive stream, which asks Sluice for the tile's size.
    let large = json!({"adaptive": true, "tile": [640, 360]});
    let small = json!({"adaptive": true, "tile": [160, 90]});
    let names = ["alice", "bob", "carol"];
    let pages = join(
        &door,
        &driver,
        "room-1",
        &[("alice", large.clone()), ("bob", large), ("carol", small)],
    )
    .await;
    // Each decodes both others' cameras, frames rising, and gets both others' audio.
    for (b, me) in pages.iter().zip(names) {
        for other in names.iter().filter(|n| **n != me) {
            decodes(b, other).await;
            wait(
                b,
                &format!("{other}'s audio subscribed"),
                &format!("window.lk.subscribed['{other}/audio'] === true"),
            )
            .await;
        }
    }
    assert_eq!(door.signal.counts(), (1, 3));

    // Adaptive stream: once Bob's large tile gets Alice's upper layer, Carol's small tile
    // gets her lower one (Sluice picks the layer per subscriber from the tile size), and
    // keeps it. Chrome pauses or shrinks a layer when short of CPU (a busy machine), and
    // Sluice then rightly forwards a layer that is live; so a sample counts only while
    // Alice's lower layer has been sending, at most 320 wide, for the two seconds before it.
    wait(
        &pages[1],
        "alice's upper layer in bob's large tile",
        "window.lkVideo().then(v => (v.alice?.width || 0) > 320)",
    )
    .await;
    let deadline = Instant::now() + LONG;
    loop {
        let (_, width) = video_of(&pages[2], "alice").await;
        if width > 0 && width <= 320 {
            break;
        }
        if Instant::now() > deadline {
            let sent = pages[0].eval("return window.lkSent();", json!([])).await;
            panic!(
                "carol's small tile never got alice's lower layer (width {width}); alice sends \
                 {sent}; Sluice forwards: {:#?}",
                door.sfu.conferences()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + LONG;
    let mut sent_frames: Vec<u64> = Vec::new();
    let mut checked = 0;
    while checked < 5 {
        let sent = pages[0].eval("return window.lkSent();", json!([])).await;
        let (_, small_width) = video_of(&pages[2], "alice").await;
        let q_width = sent["q"]["width"].as_u64().unwrap_or(0);
        sent_frames.push(sent["q"]["frames"].as_u64().unwrap_or(0));
        let n = sent_frames.len();
        let live = n >= 3
            && sent_frames[n - 1] > sent_frames[n - 2]
            && sent_frames[n - 2] > sent_frames[n - 3]
            && q_width > 0
            && q_width <= 320;
        if live {
            assert!(
                small_width > 0 && small_width <= 320,
                "carol's 160x90 tile decodes alice at width {small_width} while alice's lower \
                 layer is live ({sent}); Sluice forwards: {:#?}",
                door.sfu.conferences()
            );
            checked += 1;
        } else if n >= 3 {
            eprintln!("sample skipped: alice's lower layer was not live: {sent}");
        }
        assert!(
            Instant::now() < deadline,
            "alice's lower layer did not send for two seconds running often enough: {sent}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    decodes(&pages[2], "alice").await;

    // Alice turns her camera off and on again: Bob is told both (LiveKit's mute request,
    // relayed as participant updates).
    let camera = |on: bool| {
        format!("return window.room.localParticipant.setCameraEnabled({on}).then(() => true);")
    };
    pages[0].eval(&camera(false), json!([])).await;
    wait(
        &pages[1],
        "alice's camera muted",
        "window.lk.events.includes('muted alice video')",
    )
    .await;
    pages[0].eval(&camera(true), json!([])).await;
    wait(
        &pages[1],
        "alice's camera unmuted",
        "window.lk.events.includes('unmuted alice video')",
    )
    .await;

    // Bob leaves: Alice and Carol see him go and lose his tracks; Sluice holds only them.
    disconnect(&pages[1]).await;
    for b in [&pages[0], &pages[2]] {
        wait(b, "bob gone", "window.lk.events.includes('left bob')").await;
        wait(
            b,
            "bob's tracks gone",
            "!window.lk.subscribed['bob/video'] && !window.lk.subscribed['bob/audio']",
        )
        .await;
    }
    settle(&door, |snap, rooms| {
        snap.participants == 2 && rooms == (1, 2)
    })
    .await;
    disconnect(&pages[0]).await;
    disconnect(&pages[2]).await;
    settle(&door, |snap, rooms| {
        snap == SfuSnapshot::default() && rooms == (0, 0)
    })
    .await;
    door.sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_e2ee_frames_pass_sluice_untouched() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = front_door().await;
    let driver = ChromeDriver::start().await;
    // Alice and Bob share a key; Carol has another one.
    let pages = join(
        &door,
        &driver,
        "room-e2ee",
        &[
            ("alice", json!({"e2eeKey": "a shared passphrase"})),
            ("bob", json!({"e2eeKey": "a shared passphrase"})),
            ("carol", json!({"e2eeKey": "another passphrase"})),
        ],
    )
    .await;
    // With the shared key each decrypts and decodes the other's camera, which livekit
    // marks encrypted (Sluice relays the encryption each publisher declared).
    decodes(&pages[0], "bob").await;
    decodes(&pages[1], "alice").await;
    let seen = pages[1].eval("return window.lkVideo();", json!([])).await;
    assert_eq!(seen["alice"]["encrypted"], json!(true), "{seen:#}");
    // Carol receives the same frames and cannot decode a single one: they are encrypted
    // end to end, and Sluice forwarded them without needing to read them.
    wait(
        &pages[2],
        "alice's video packets reaching carol",
        "window.lkVideo().then(v => (v.alice?.packets || 0) > 200)",
    )
    .await;
    let (carol_frames, _) = video_of(&pages[2], "alice").await;
    assert_eq!(
        carol_frames, 0,
        "carol decoded alice's video without her key"
    );
    leave_all(&door, &pages).await;
}

/// What `b` received as data packets: (from, text, topic, kind) in arrival order.
async fn data_of(b: &Browser) -> Vec<(String, String, String, u64)> {
    let v = b.eval("return window.lk.data;", json!([])).await;
    v.as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
            (
                s("from"),
                s("text"),
                s("topic"),
                d["kind"].as_u64().unwrap_or(9),
            )
        })
        .collect()
}

async fn publish(b: &Browser, text: &str, options: Value) {
    b.eval(
        "return window.room.localParticipant.publishData(new TextEncoder().encode(arguments[0]), arguments[1]).then(() => true);",
        json!([text, options]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_data_packets_streams_and_rpc_reach_the_room_from_their_sender() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = front_door().await;
    let driver = ChromeDriver::start().await;
    let pages = join(
        &door,
        &driver,
        "room-data",
        &[
            ("alice", json!({})),
            ("bob", json!({})),
            ("carol", json!({})),
        ],
    )
    .await;
    let (alice, bob, carol) = (&pages[0], &pages[1], &pages[2]);
    let has =
        |text: &str| format!("window.lk.data.some(d => d.from === 'alice' && d.text === '{text}')");

    // A reliable packet to the room reaches both others, from Alice, with its topic.
    publish(
        alice,
        "hello all",
        json!({"reliable": true, "topic": "chat"}),
    )
    .await;
    for b in [bob, carol] {
        wait(b, "alice's packet to the room", &has("hello all")).await;
    }
    let got = data_of(bob).await;
    assert_eq!(
        got[0],
        ("alice".into(), "hello all".into(), "chat".into(), 0),
        "{got:?}"
    );

    // A packet for Bob reaches only Bob: Carol gets the next one to the room, and the
    // reliable channel is ordered, so she would have had it by then.
    publish(
        alice,
        "for bob",
        json!({"reliable": true, "destinationIdentities": ["bob"]}),
    )
    .await;
    publish(alice, "after", json!({"reliable": true})).await;
    wait(bob, "alice's packet for bob", &has("for bob")).await;
    wait(carol, "alice's next packet", &has("after")).await;
    let got = data_of(carol).await;
    assert!(
        !got.iter().any(|d| d.1 == "for bob"),
        "carol got bob's packet: {got:?}"
    );

    // Lossy packets ride the lossy channel (sent until one arrives: it may drop).
    let deadline = Instant::now() + LONG;
    loop {
        publish(alice, "lossy", json!({"reliable": false})).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(d) = data_of(bob).await.into_iter().find(|d| d.1 == "lossy") {
            assert_eq!(d.3, 1, "the lossy packet arrived as kind {}", d.3);
            break;
        }
        assert!(Instant::now() < deadline, "no lossy packet reached bob");
    }

    // A text stream (header, chunks, trailer) and an RPC call with its response.
    alice
        .eval(
            "return window.room.localParticipant.sendText('a streamed text', {topic: 'lk.test'}).then(() => true);",
            json!([]),
        )
        .await;
    wait(
        bob,
        "alice's text stream",
        "window.lk.texts.some(t => t.from === 'alice' && t.text === 'a streamed text')",
    )
    .await;
    let answer = alice
        .eval(
            "return window.room.localParticipant.performRpc({destinationIdentity: 'bob', method: 'greet', payload: 'there'});",
            json!([]),
        )
        .await;
    assert_eq!(answer, json!("hello there from alice"));

    // A packet whose sender fields claim someone else arrives as Alice's; bytes that are
    // no DataPacket are refused and counted, and nothing of them reaches anyone.
    let refused = || door.signal.stats.data_packets[1].load(std::sync::atomic::Ordering::Relaxed);
    let refused_before = refused();
    alice
        .eval(
            "return window.lkRawData(window.lkForgedPacket('mallory', 'forged'));",
            json!([]),
        )
        .await;
    wait(bob, "the forged packet, as alice's", &has("forged")).await;
    let before = data_of(bob).await.len();
    alice
        .eval("return window.lkRawData([255, 255, 255]);", json!([]))
        .await;
    publish(alice, "after garbage", json!({"reliable": true})).await;
    wait(
        bob,
        "alice's packet after the garbage",
        &has("after garbage"),
    )
    .await;
    assert_eq!(
        data_of(bob).await.len(),
        before + 1,
        "{:?}",
        data_of(bob).await
    );
    assert_eq!(refused(), refused_before + 1);
    let relayed = door.signal.stats.data_packets[0].load(std::sync::atomic::Ordering::Relaxed);
    assert!(relayed >= 6, "{relayed} packets relayed");

    leave_all(&door, &pages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_connection_quality_is_excellent_on_a_clean_path_and_lost_when_cut() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A cut connection stays a participant for a minute (not the default 15 s), so the
    // test sees it reported lost before Sluice removes it.
    let door = front_door_with(sluice::config::SfuConfig {
        ice_lost_timeout_secs: 60,
        ..support::test_config()
    })
    .await;
    let driver = ChromeDriver::start().await;
    let names = ["alice", "bob", "carol"];
    let pages = join(
        &door,
        &driver,
        "room-quality",
        &[
            ("alice", json!({})),
            ("bob", json!({})),
            ("carol", json!({})),
        ],
    )
    .await;
    // On loopback every page sees every participant, itself included, excellent.
    for b in &pages {
        for who in names {
            wait(
                b,
                &format!("{who}'s connection excellent"),
                &format!("window.lkQuality()['{who}'] === 'excellent'"),
            )
            .await;
        }
    }
    // What the scores rest on: each browser's receiver reports give Sluice a round trip
    // (from Sluice's sender reports) and a jitter in seconds, both small on loopback, and
    // the sequence numbers of each page's media show next to no loss.
    let ids: Vec<String> = door.sfu.conferences()[0]
        .participants
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(ids.len(), 3);
    let deadline = Instant::now() + LONG;
    for id in &ids {
        loop {
            let q = door
                .sfu
                .connection_quality("lk|room-quality", id)
                .await
                .unwrap()
                .expect("connected");
            let l = q.link;
            assert!(l.jitter < 0.1 && l.loss < 0.05, "{id}: {q:?}");
            if l.rtt > 0.0 && l.rtt < 0.1 {
                break;
            }
            assert!(Instant::now() < deadline, "{id}: no round trip: {q:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Alice's peer connection goes (her signaling stays): once its ICE consent lapses,
    // the others see her connection lost.
    pages[0]
        .eval(
            "window.room.engine.pcManager.publisher.pc.close(); return true;",
            json!([]),
        )
        .await;
    for b in &pages[1..] {
        wait(
            b,
            "alice's connection lost",
            "window.lkQuality()['alice'] === 'lost'",
        )
        .await;
    }
    let seen = pages[1].eval("return window.lkQuality();", json!([])).await;
    assert_eq!(seen["carol"], json!("excellent"), "{seen:#}");
    leave_all(&door, &pages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynacast_turns_off_the_layers_no_tile_needs_and_back_on_when_one_does() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = front_door().await;
    let driver = ChromeDriver::start().await;
    // Alice publishes with livekit's dynacast on (her encodings follow Sluice's
    // subscribed-quality updates); Bob shows her in a 160x90 tile, which her lower layer
    // serves.
    let pages = join(
        &door,
        &driver,
        "room-dynacast",
        &[
            ("alice", json!({"dynacast": true})),
            ("bob", json!({"adaptive": true, "tile": [160, 90]})),
        ],
    )
    .await;
    decodes(&pages[1], "alice").await;
    // Nobody needs her upper layer: Chrome stops encoding it, and Bob still decodes her.
    let sending = |q: bool, h: bool| {
        format!("window.lkSent().then(s => s.q?.active === {q} && s.h?.active === {h})")
    };
    wait(&pages[0], "alice's upper layer off", &sending(true, false)).await;
    decodes(&pages[1], "alice").await;
    // Bob's tile grows: her upper layer is asked back at once, and Bob gets it.
    pages[1]
        .eval("return window.lkTile(640, 360);", json!([]))
        .await;
    wait(
        &pages[0],
        "alice's upper layer back on",
        &sending(true, true),
    )
    .await;
    wait(
        &pages[1],
        "alice's upper layer in bob's grown tile",
        "window.lkVideo().then(v => (v.alice?.width || 0) > 320)",
    )
    .await;
    // Bob leaves: nobody receives her camera, and it stops altogether.
    disconnect(&pages[1]).await;
    wait(&pages[0], "alice's camera off", &sending(false, false)).await;
    // Each of those updates was counted by the highest quality it enabled.
    let sent = |top: &str| {
        let i = sluice::livekit::DYNACAST_TOPS
            .iter()
            .position(|t| *t == top);
        door.signal.stats.dynacast[i.unwrap()].load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(
        sent("low") >= 1 && sent("medium") >= 1 && sent("off") >= 1,
        "dynacast updates by top quality: {:?}",
        ["off", "low", "medium", "high"].map(sent)
    );
    leave_all(&door, &pages[..1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_signaling_socket_resumes_the_session() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = front_door().await;
    let driver = ChromeDriver::start().await;
    let pages = join(
        &door,
        &driver,
        "room-resume",
        &[("alice", json!({})), ("bob", json!({}))],
    )
    .await;
    decodes(&pages[0], "bob").await;
    decodes(&pages[1], "alice").await;
    let resumed = || {
        let i = sluice::livekit::signal::OUTCOMES
            .iter()
            .position(|o| *o == "resumed")
            .unwrap();
        door.signal.stats.connections[i].load(std::sync::atomic::Ordering::Relaxed)
    };
    // livekit-client's own test hook drops Alice's signaling socket; she reconnects with
    // her session id and Sluice hands the new socket to her session: she stays in the
    // room with her media, and Bob never sees her leave.
    pages[0]
        .eval(
            "window.lk.resumes = []; window.room.on('reconnected', () => lk.resumes.push('reconnected')); return window.room.simulateScenario('signal-reconnect').then(() => true);",
            json!([]),
        )
        .await;
    wait(
        &pages[0],
        "alice's session resumed",
        "window.lk.resumes.includes('reconnected')",
    )
    .await;
    assert_eq!(resumed(), 1);
    decodes(&pages[1], "alice").await;
    decodes(&pages[0], "bob").await;
    let events = pages[1].eval("return window.lk.events;", json!([])).await;
    assert!(
        !events.as_array().unwrap().iter().any(|e| e == "left alice"),
        "bob saw alice leave: {events}"
    );
    assert_eq!(door.signal.counts(), (1, 2));
    assert_eq!(door.sfu.snapshot().participants, 2);

    // Again, and this time Alice cannot come straight back: while the page holds her
    // resuming sockets (they go to a closed port, a fault injected in the page, and
    // livekit-client retries on its back-off), Bob shares his screen. Alice's session
    // subscribes her and asks her client for a receive section, and the ask is lost with
    // the socket; her resume offer (an ICE restart) brings no new section. Sluice asks
    // again once she is back, and she decodes the share.
    pages[0]
        .eval(
            "window.lk.holdResume = true; window.lk.resumes = []; return window.room.simulateScenario('signal-reconnect').then(() => true);",
            json!([]),
        )
        .await;
    wait(
        &pages[0],
        "alice's resume held",
        "window.lk.resumesHeld > 0",
    )
    .await;
    pages[1]
        .eval("return window.lkPublishScreen();", json!([]))
        .await;
    let deadline = Instant::now() + LONG;
    while !door
        .sfu
        .conferences()
        .iter()
        .flat_map(|c| &c.participants)
        .any(|p| p.subscriptions.len() == 3)
    {
        assert!(
            Instant::now() < deadline,
            "alice never subscribed to bob's share"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(resumed(), 1, "alice came back while held");
    pages[0]
        .eval("window.lk.holdResume = false; return true;", json!([]))
        .await;
    wait(
        &pages[0],
        "alice's session resumed again",
        "window.lk.resumes.includes('reconnected')",
    )
    .await;
    assert_eq!(resumed(), 2);
    decodes(&pages[0], "bob/screen").await;
    decodes(&pages[0], "bob").await;
    assert_eq!(door.signal.counts(), (1, 2));
    // Browsers that close take everything their sessions held with them.
    drop(pages);
    settle(&door, |snap, rooms| {
        snap == SfuSnapshot::default() && rooms == (0, 0)
    })
    .await;
    door.sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_simulcast_is_forwarded_and_switched_at_its_keyframes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = front_door().await;
    let driver = ChromeDriver::start().await;
    // Alice's camera is H.264 simulcast (Chromium's OpenH264); Bob watches it in a large
    // tile with adaptive stream, so Sluice picks the layer from his tile's size.
    let pages = join(
        &door,
        &driver,
        "room-h264",
        &[
            ("alice", json!({"codec": "h264"})),
            ("bob", json!({"adaptive": true, "tile": [640, 360]})),
        ],
    )
    .await;
    decodes(&pages[1], "alice").await;
    let seen = pages[1]
        .eval("return window.lkVideo().then(v => v.alice);", json!([]))
        .await;
    assert_eq!(seen["codec"], json!("video/H264"), "bob decodes {seen}");
    let published = door.sfu.conferences()[0]
        .participants
        .iter()
        .find(|p| p.id.contains("alice"))
        .map(|p| p.published.clone())
        .unwrap();
    assert!(
        published
            .iter()
            .any(|t| t.mime_type.eq_ignore_ascii_case("video/h264")),
        "{published:?}"
    );
    // A layer switch completes only at the new layer's keyframe, so each of these needs
    // Sluice to find H.264 keyframes (IDR, SPS/PPS in STAP-A or FU-A) in the stream: the
    // large tile gets the upper layer, the small one the lower, then the upper again.
    let width = |op: &'static str, w: u64| {
        format!("window.lkVideo().then(v => (v.alice?.width || 0) {op} {w})")
    };
    wait(
        &pages[1],
        "alice's upper layer (large tile)",
        &width(">", 320),
    )
    .await;
    pages[1]
        .eval("return window.lkTile(160, 90);", json!([]))
        .await;
    wait(
        &pages[1],
        "alice's lower layer (small tile)",
        &width("<=", 320),
    )
    .await;
    decodes(&pages[1], "alice").await;
    pages[1]
        .eval("return window.lkTile(640, 360);", json!([]))
        .await;
    wait(&pages[1], "alice's upper layer again", &width(">", 320)).await;
    decodes(&pages[1], "alice").await;
    leave_all(&door, &pages).await;
}
