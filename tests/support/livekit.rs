//! Sluice's LiveKit front door in-process for the tests that drive it with stock LiveKit
//! clients (tests/livekit_client.rs, tests/livekit_python.rs): its signaling on a loopback
//! port, tokens minted with the test key, and the test page served beside it.

use super::test_config;
use livekit_api::access_token::{AccessToken, VideoGrants};
use sluice::config::{LiveKitConfig, Secret};
use sluice::sfu::{Sfu, SfuSnapshot};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test API key and secret.
pub const KEY: &str = "sluice-test-key";
pub const SECRET: &str = "a-test-secret-of-at-least-32-characters";
/// How long a test waits for anything.
pub const LONG: Duration = Duration::from_secs(90);

/// tests/livekit-web, with livekit-client installed.
pub fn page_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/livekit-web");
    assert!(
        d.join("node_modules/livekit-client/dist/livekit-client.umd.js")
            .is_file(),
        "livekit-client is not installed: run `npm ci` in tests/livekit-web (scripts/test does)"
    );
    d
}

/// A running front door.
pub struct FrontDoor {
    /// Its SFU.
    pub sfu: Sfu,
    /// Its signaling.
    pub signal: Arc<sluice::livekit::Signal>,
    /// The signaling URL clients get (`ws://…/livekit/sfu`).
    pub url: String,
    /// The test page.
    pub page: String,
}

/// Starts a front door on a loopback port, serving tests/livekit-web beside it.
pub async fn front_door() -> FrontDoor {
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

/// A token for `identity` in `room` that may publish and subscribe.
pub fn token(identity: &str, room: &str) -> String {
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

/// Waits until the SFU's snapshot and the front door's (rooms, members) satisfy `f`.
pub async fn settle(door: &FrontDoor, f: impl Fn(SfuSnapshot, (usize, usize)) -> bool) {
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
