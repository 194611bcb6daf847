//! Sluice's LiveKit front door in-process for the tests that drive it with stock LiveKit
//! clients (tests/livekit_client.rs, tests/livekit_python.rs, ...): its signaling on a
//! loopback port, tokens minted with the test key, the test page served beside it, and the
//! Python SDK client (tests/livekit-py/client.py) as a child process.

use super::test_config;
use livekit_api::access_token::{AccessToken, VideoGrants};
use serde_json::Value;
use sluice::config::{LiveKitConfig, Secret};
use sluice::sfu::{Sfu, SfuSnapshot};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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
    front_door_with(test_config()).await
}

/// [`front_door`] over an SFU with `sfu_config`.
pub async fn front_door_with(sfu_config: sluice::config::SfuConfig) -> FrontDoor {
    super::log_if_asked();
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
    let sfu = Sfu::new(sfu_config);
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
    settle_on(&door.sfu, &door.signal, f).await
}

/// [`settle`] for an SFU and signaling set up by the test itself.
pub async fn settle_on(
    sfu: &Sfu,
    signal: &sluice::livekit::Signal,
    f: impl Fn(SfuSnapshot, (usize, usize)) -> bool,
) {
    let deadline = Instant::now() + LONG;
    while !f(sfu.snapshot(), signal.counts()) {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            sfu.snapshot(),
            signal.counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The venv python with the livekit SDK.
pub fn python() -> PathBuf {
    let p = std::env::var_os("SLUICE_LIVEKIT_PYTHON").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sluice-livekit-py/bin/python")
        },
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "{} not found: scripts/test makes the venv with the Python livekit SDK \
         (tests/livekit-py/requirements.txt), or set SLUICE_LIVEKIT_PYTHON",
        p.display()
    );
    p
}

/// One running client.py: its last report, and its stdin (closing it makes it leave).
pub struct PyClient {
    /// Its label.
    pub name: &'static str,
    child: Child,
    last: Arc<Mutex<Value>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl PyClient {
    /// Starts client.py as `name` in `room`, with a token of the test key.
    pub fn start(url: &str, name: &'static str, room: &str) -> PyClient {
        PyClient::start_with_token(url, name, &token(name, room))
    }

    /// Starts client.py with `jwt` (`name` labels its output).
    pub fn start_with_token(url: &str, name: &'static str, jwt: &str) -> PyClient {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/livekit-py/client.py");
        let mut child = Command::new(python())
            .arg("-u")
            .arg(script)
            .arg(url)
            .arg(jwt)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start client.py");
        let last = Arc::new(Mutex::new(Value::Null));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = last.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    *l.lock().unwrap() = v;
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let all = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(line)) = r.next_line().await {
                // The last 200 lines: a crash at the end is what a failure needs.
                let mut a = all.lock().unwrap();
                if a.len() == 200 {
                    a.remove(0);
                }
                a.push(line);
            }
        });
        PyClient {
            name,
            child,
            last,
            lines,
        }
    }

    /// Waits until the last report satisfies `f`; panics with it and the client's stderr.
    pub async fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + LONG;
        loop {
            let v = self.last.lock().unwrap().clone();
            assert_ne!(
                v["state"], "failed",
                "[{}] could not connect: {v}",
                self.name
            );
            if f(&v) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "[{}] timed out waiting for {what}; last report {v}; stderr:\n{}",
                    self.name,
                    self.lines.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Frames of `kind` ("video", "audio") received from `from` so far.
    pub fn frames(&self, kind: &str, from: &str) -> u64 {
        self.last.lock().unwrap()[kind][from].as_u64().unwrap_or(0)
    }

    /// Closes its stdin and waits for it to leave and exit.
    pub async fn leave(mut self) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(LONG, self.child.wait())
            .await
            .expect("client.py did not exit")
            .unwrap();
        assert!(
            status.success(),
            "[{}] exited with {status}; last report {}; stderr:\n{}",
            self.name,
            self.last.lock().unwrap(),
            self.lines.lock().unwrap().join("\n")
        );
    }
}
