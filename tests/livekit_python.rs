#![recursion_limit = "256"]
//! The stock Python `livekit` SDK (PyPI; its native WebRTC library, LiveKit's Rust SDK,
//! inside the wheel) as a second, non-browser LiveKit client through Sluice's front door:
//! two Python clients publish a synthetic camera and microphone
//! (tests/livekit-py/client.py) beside a livekit-client page in headless Chromium, and
//! each side must receive the others' frames.
//!
//! Needs the venv scripts/test makes (`~/.cache/sluice-livekit-py`, or
//! SLUICE_LIVEKIT_PYTHON naming its python), Debian's chromium + chromium-driver and
//! tests/livekit-web's `npm ci`.

mod support;

use serde_json::{Value, json};
use sluice::sfu::{HangupReason, SfuSnapshot};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use support::browser::ChromeDriver;
use support::livekit::{LONG, front_door, settle, token};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn python() -> PathBuf {
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
struct PyClient {
    name: &'static str,
    child: Child,
    last: Arc<Mutex<Value>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl PyClient {
    fn start(url: &str, name: &'static str, room: &str) -> PyClient {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/livekit-py/client.py");
        let mut child = Command::new(python())
            .arg("-u")
            .arg(script)
            .arg(url)
            .arg(token(name, room))
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
                let mut a = all.lock().unwrap();
                if a.len() < 200 {
                    a.push(line);
                }
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
    async fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) {
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
    fn frames(&self, kind: &str, from: &str) -> u64 {
        self.last.lock().unwrap()[kind][from].as_u64().unwrap_or(0)
    }

    /// Closes its stdin and waits for it to leave and exit.
    async fn leave(mut self) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(LONG, self.child.wait())
            .await
            .expect("client.py did not exit")
            .unwrap();
        assert!(status.success(), "[{}] exited with {status}", self.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_clients_and_a_browser_receive_each_other_through_sluice() {
    let door = front_door().await;
    let py1 = PyClient::start(&door.url, "py1", "room-py");
    let py2 = PyClient::start(&door.url, "py2", "room-py");
    let driver = ChromeDriver::start().await;
    let web = driver.browser("web").await;
    web.goto(&door.page).await;
    web.wait_until(
        "livekit-client loaded",
        LONG,
        "return typeof window.lkConnect === 'function';",
    )
    .await;
    web.eval(
        "window.lkConnect(arguments[0], arguments[1]); return true;",
        json!([door.url, token("web", "room-py")]),
    )
    .await;

    // Each Python client receives the other's and the page's video and audio, frames
    // still rising after the first 30.
    for (me, others) in [(&py1, ["py2", "web"]), (&py2, ["py1", "web"])] {
        for other in others {
            for (kind, n) in [("video", 30), ("audio", 100)] {
                me.wait(&format!("{other}'s {kind}"), |v| {
                    v[kind][other].as_u64().unwrap_or(0) > n
                })
                .await;
                let seen = me.frames(kind, other);
                me.wait(&format!("{other}'s {kind} still coming"), |v| {
                    v[kind][other].as_u64().unwrap_or(0) > seen + n
                })
                .await;
            }
        }
    }
    // The page decodes both Python cameras (the SDK's VP8 through Sluice).
    for other in ["py1", "py2"] {
        web.wait_until(
            &format!("{other}'s video decoding in the page"),
            LONG,
            &format!("return window.lkFrames().then(f => (f['{other}'] || 0) > 30);"),
        )
        .await;
    }
    assert_eq!(door.signal.counts(), (1, 3));

    // py2 leaves: Sluice holds two participants, then none once everyone is gone.
    py2.leave().await;
    settle(&door, |snap, rooms| {
        snap.participants == 2 && rooms == (1, 2)
    })
    .await;
    web.wait_until(
        "py2 gone from the page",
        LONG,
        "return window.lk.events.includes('left py2');",
    )
    .await;
    py1.leave().await;
    web.eval(
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
