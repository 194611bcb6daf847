#![recursion_limit = "256"]
//! Stock livekit-client (npm, `tests/livekit-web/`'s lockfile) in headless Chromium against
//! Sluice's LiveKit front door: each page connects with a LiveKit token, publishes its fake
//! camera and microphone, and must decode the others' video, read from the receivers' own
//! `getStats()`. Nothing here is written for Sluice but the page that calls the library.
//!
//! Needs Debian's chromium + chromium-driver and `npm ci` in tests/livekit-web (scripts/test
//! does both). On failure each page's state is printed.

mod support;

use livekit_api::access_token::{AccessToken, VideoGrants};
use serde_json::{Value, json};
use sluice::config::{LiveKitConfig, Secret};
use sluice::sfu::{HangupReason, Sfu, SfuSnapshot};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::browser::{Browser, ChromeDriver};
use support::test_config;

const KEY: &str = "sluice-test-key";
const SECRET: &str = "a-test-secret-of-at-least-32-characters";
const LONG: Duration = Duration::from_secs(90);

fn page_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/livekit-web");
    assert!(
        d.join("node_modules/livekit-client/dist/livekit-client.umd.js")
            .is_file(),
        "livekit-client is not installed: run `npm ci` in tests/livekit-web (scripts/test does)"
    );
    d
}

struct FrontDoor {
    sfu: Sfu,
    signal: Arc<sluice::livekit::Signal>,
    /// The signaling URL clients get (`ws://…/livekit/sfu`).
    url: String,
    /// The test page.
    page: String,
}

async fn front_door() -> FrontDoor {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = LiveKitConfig {
        api_key: KEY.into(),
        api_secret: Secret(SECRET.into()),
        public_url: format!("ws://{addr}/livekit/sfu"),
        full_access_homeservers: vec!["*".into()],
        ..LiveKitConfig::default()
    };
    cfg.validate().unwrap();
    let sfu = Sfu::new(test_config());
    let signal = sluice::livekit::Signal::new(sfu.clone(), &cfg, &cfg.api_secret);
    let app = signal
        .routes()
        .fallback_service(tower_http::services::ServeDir::new(page_dir()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    FrontDoor {
        sfu,
        signal,
        url: cfg.public_url.clone(),
        page: format!("http://{addr}/index.html"),
    }
}

fn token(identity: &str, room: &str) -> String {
    AccessToken::with_api_key(KEY, SECRET)
        .with_identity(identity)
        .with_name(identity)
        .with_grants(VideoGrants {
            room_join: true,
            room: room.into(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            ..VideoGrants::default()
        })
        .to_jwt()
        .unwrap()
}

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

/// Waits until the SFU's snapshot and the front door's (rooms, members) satisfy `f`.
async fn settle(door: &FrontDoor, f: impl Fn(SfuSnapshot, (usize, usize)) -> bool) {
    let deadline = Instant::now() + LONG;
    while !f(door.sfu.snapshot(), door.signal.counts()) {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            door.sfu.snapshot(),
            door.signal.counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_pages_publish_and_decode_each_other_through_sluice() {
    let door = front_door().await;
    let driver = ChromeDriver::start().await;
    let names = ["alice", "bob"];
    let mut pages = Vec::new();
    for name in names {
        let b = driver.browser(name).await;
        b.goto(&door.page).await;
        wait(
            &b,
            "livekit-client loaded",
            "typeof window.lkConnect === 'function'",
        )
        .await;
        b.eval(
            "window.lkConnect(arguments[0], arguments[1]); return true;",
            json!([door.url, token(name, "room-1")]),
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
    // Each decodes the other's camera: frames rising, read twice.
    for (b, other) in pages.iter().zip(names.iter().rev()) {
        let first = format!("window.lkFrames().then(f => (f['{other}'] || 0) > 30)");
        wait(b, &format!("{other}'s video decoding"), &first).await;
        let n: u64 = b
            .eval(
                &format!("return window.lkFrames().then(f => f['{other}'] || 0);"),
                json!([]),
            )
            .await
            .as_u64()
            .unwrap();
        let more = format!(
            "window.lkFrames().then(f => (f['{other}'] || 0) > {})",
            n + 30
        );
        wait(b, &format!("{other}'s video still decoding"), &more).await;
        wait(
            b,
            &format!("{other}'s audio subscribed"),
            &format!("window.lk.subscribed['{other}/audio'] === true"),
        )
        .await;
    }
    assert_eq!(door.signal.counts(), (1, 2));

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

    // Bob leaves: Alice sees him go and loses his tracks; Sluice holds only Alice.
    pages[1]
        .eval(
            "return window.room.disconnect().then(() => true);",
            json!([]),
        )
        .await;
    wait(
        &pages[0],
        "bob gone",
        "window.lk.events.includes('left bob')",
    )
    .await;
    wait(
        &pages[0],
        "bob's tracks gone",
        "!window.lk.subscribed['bob/video'] && !window.lk.subscribed['bob/audio']",
    )
    .await;
    settle(&door, |snap, rooms| {
        snap.participants == 1 && rooms == (1, 1)
    })
    .await;
    pages[0]
        .eval(
            "return window.room.disconnect().then(() => true);",
            json!([]),
        )
        .await;
    settle(&door, |snap, rooms| {
        snap == SfuSnapshot::default() && rooms == (0, 0)
    })
    .await;
    door.sfu.shutdown(HangupReason::UserHangup).await;
}
