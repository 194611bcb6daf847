#![recursion_limit = "256"]
//! Stock Element Call against Sluice: the embedded build from npm
//! (`@element-hq/element-call-embedded`, tests/element-call's lockfile), served as it is in
//! its standalone mode with a `config.json` naming the suite's Synapse. That Synapse lists
//! Sluice's authorization service as its MatrixRTC transport (MSC4143, written by
//! scripts/synapse from SLUICE_SYNAPSE_RTC_URL) and has delayed events (MSC4140) and sticky
//! events (MSC4354) on. Two headless Chromium users register through Element Call, join one
//! call, and each must play the other's camera; Element Call's E2EE keys go over Matrix and
//! Sluice forwards frames it cannot read.
//!
//! Needs scripts/test's Synapse (SLUICE_TEST_HOMESERVER) and front-door port
//! (SLUICE_TEST_LIVEKIT_PORT, the port Synapse's transport names), Debian's chromium +
//! chromium-driver and tests/element-call's `npm ci`.

mod support;

use serde_json::{Value, json};
use sluice::config::{LiveKitConfig, Secret};
use sluice::livekit::delayed_leave::DelayedLeaves;
use sluice::livekit::{AuthService, Signal};
use sluice::sfu::{HangupReason, Sfu, SfuSnapshot};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::browser::{Browser, ChromeDriver};
use support::matrix::{homeserver, unique};
use support::test_config;
use tower_http::services::{ServeDir, ServeFile};

const LONG: Duration = Duration::from_secs(120);

fn dist() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/element-call/node_modules/@element-hq/element-call-embedded/dist");
    assert!(
        d.join("index.html").is_file(),
        "Element Call is not installed: run `npm ci` in tests/element-call (scripts/test does)"
    );
    d
}

struct Stack {
    sfu: Sfu,
    signal: std::sync::Arc<Signal>,
    /// Element Call's home page.
    app: String,
}

/// Sluice's LiveKit front door (authorization service and signaling) on the port the
/// suite's Synapse lists as its MatrixRTC transport, and Element Call on a port of its own.
async fn stack() -> Stack {
    support::log_if_asked();
    let port: u16 = std::env::var("SLUICE_TEST_LIVEKIT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect(
            "SLUICE_TEST_LIVEKIT_PORT: the port of the MatrixRTC transport the test Synapse \
             lists (scripts/test sets it and starts Synapse with SLUICE_SYNAPSE_RTC_URL)",
        );
    let hs = homeserver();
    let cfg = LiveKitConfig {
        api_key: "sluice-ec-key".into(),
        api_secret: Secret("an-element-call-test-secret-of-32-chars".into()),
        public_url: format!("ws://127.0.0.1:{port}/livekit/sfu"),
        full_access_homeservers: vec!["localhost".into()],
        homeserver_urls: BTreeMap::from([("localhost".to_owned(), hs.clone())]),
        ..LiveKitConfig::default()
    };
    cfg.validate().unwrap();
    let sfu = Sfu::new(test_config());
    let signal = Signal::new(sfu.clone(), &cfg, &cfg.api_secret);
    let auth = AuthService::new(&cfg).unwrap();
    // As `sluice serve` runs it: Element Call hands its delayed leave events over.
    let delayed = DelayedLeaves::new(signal.clone(), cfg.homeserver_urls.clone(), LONG).unwrap();
    auth.delegate_to(delayed);
    let config = json!({
        "default_server_config": {
            "m.homeserver": { "base_url": hs, "server_name": "localhost" }
        },
        "matrix_rtc_session": {
            "wait_for_key_rotation_ms": 3000,
            "delayed_leave_event_delay_ms": 18000,
            "delayed_leave_event_restart_ms": 4000,
            "network_error_retry_ms": 100
        }
    });
    let serve_config = move || {
        let c = config.clone();
        async move { axum::Json(c) }
    };
    let door = auth.routes().merge(signal.routes());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("cannot bind the front door's port {port}: {e}"));
    tokio::spawn(async move { axum::serve(listener, door).await });
    // Element Call on an origin of its own, as deployments host it (and scripts/run does):
    // its requests to the authorization service are cross-origin.
    let spa = || ServeDir::new(dist()).fallback(ServeFile::new(dist().join("index.html")));
    let app = axum::Router::new()
        .route("/config.json", axum::routing::get(serve_config.clone()))
        .route("/room/config.json", axum::routing::get(serve_config))
        .nest_service("/room", spa())
        .fallback_service(spa());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Stack {
        sfu,
        signal,
        app: format!("http://{app_addr}/"),
    }
}

/// Polls `script` (a function body returning a boolean) until true; panics with the
/// page's visible text.
async fn wait(b: &Browser, what: &str, script: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        if b.eval(script, json!([])).await == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = b
                .eval(
                    "return [location.href, document.body.innerText.slice(0, 1500), JSON.stringify(tiles())];"
                        .replace("tiles()", TILES)
                        .as_str(),
                    json!([]),
                )
                .await;
            panic!("[{}] timed out waiting for {what}; page: {text:#}", b.name);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Element Call's video tiles: each one's name tag and its video's frames and width.
const TILES: &str = "Array.from(document.querySelectorAll('[data-testid=videoTile]')).map(t => {
    const v = t.querySelector('video');
    const n = t.querySelector('[data-testid=name_tag]');
    const q = v && v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    return { name: n ? n.textContent : '', frames: q ? q.totalVideoFrames : 0, width: v ? v.videoWidth : 0 };
  })";

/// Frames the tile named `name` has played.
async fn frames_of(b: &Browser, name: &str) -> u64 {
    let script = format!(
        "return ({TILES}).filter(t => t.name.includes(arguments[0])).map(t => t.frames)[0] || 0;"
    );
    b.eval(&script, json!([name])).await.as_u64().unwrap_or(0)
}

/// Waits until `b` plays `name`'s camera: 30 frames, then 30 more.
async fn plays(b: &Browser, name: &str) {
    let script = |n: u64| {
        format!(
            "return ({TILES}).some(t => t.name.includes('{name}') && t.width > 0 && t.frames > {n});"
        )
    };
    wait(b, &format!("{name}'s camera playing"), &script(30)).await;
    let n = frames_of(b, name).await;
    wait(
        b,
        &format!("{name}'s camera still playing"),
        &script(n + 30),
    )
    .await;
}

fn testid(id: &str) -> String {
    format!("[data-testid={id}]")
}

async fn visible(b: &Browser, id: &str) {
    wait(
        b,
        id,
        &format!("return !!document.querySelector('{}');", testid(id)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_element_call_users_see_each_other_through_sluice() {
    let s = stack().await;
    let driver = ChromeDriver::start().await;

    // Alice starts a call from Element Call's home page (registering on the way).
    let alice = driver.browser("alice").await;
    alice.goto(&s.app).await;
    visible(&alice, "home_callName").await;
    alice
        .fill(&testid("home_callName"), &unique("sluice-call"))
        .await;
    alice.fill(&testid("home_displayName"), "Alice").await;
    alice.click(&testid("home_go")).await;
    visible(&alice, "lobby_joinCall").await;
    alice.click(&testid("lobby_joinCall")).await;
    let link = alice
        .eval("return location.href;", json!([]))
        .await
        .as_str()
        .unwrap()
        .to_owned();

    // Bob opens the call's link, registers and joins.
    let bob = driver.browser("bob").await;
    bob.goto(&link).await;
    visible(&bob, "joincall_displayName").await;
    bob.fill(&testid("joincall_displayName"), "Bob").await;
    bob.click(&testid("joincall_joincall")).await;
    visible(&bob, "lobby_joinCall").await;
    bob.click(&testid("lobby_joinCall")).await;

    // Each plays the other's camera, through Sluice.
    plays(&alice, "Bob").await;
    plays(&bob, "Alice").await;
    assert_eq!(s.signal.counts(), (1, 2), "one LiveKit room with both");
    let snap = s.sfu.snapshot();
    assert_eq!(snap.participants, 2, "{snap:?}");
    // Element Call encrypts its media end to end (keys over Matrix): both cameras are
    // published with encryption declared, so Sluice forwarded frames it cannot read.
    let tracks = s.signal.tracks();
    let videos: Vec<_> = tracks.iter().filter(|t| t.kind == "video").collect();
    assert_eq!(videos.len(), 2, "{tracks:?}");
    assert!(
        videos.iter().all(|t| t.encryption != "NONE"),
        "Element Call's cameras should be end-to-end encrypted: {tracks:?}"
    );

    // Bob hangs up: Alice's call goes on alone; then Alice leaves and nothing is left.
    bob.click(&testid("incall_leave")).await;
    wait(
        &alice,
        "Bob's tile gone",
        &format!("return !({TILES}).some(t => t.name.includes('Bob'));"),
    )
    .await;
    alice.click(&testid("incall_leave")).await;
    support::livekit::settle_on(&s.sfu, &s.signal, |snap, rooms| {
        snap == SfuSnapshot::default() && rooms == (0, 0)
    })
    .await;
    s.sfu.shutdown(HangupReason::UserHangup).await;
}
