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

use serde_json::json;
use sluice::sfu::{HangupReason, SfuSnapshot};
use support::browser::ChromeDriver;
use support::livekit::{LONG, PyClient, front_door, settle, token};

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
