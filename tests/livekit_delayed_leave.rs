#![recursion_limit = "256"]
//! Delegated delayed leave (MSC4140 through the authorization service's `delay_id`) against
//! the real Synapse with delayed events on: a member schedules its call-membership "leave"
//! as a delayed state event (ten minutes), hands the delay id to `/get_token` and joins the
//! LiveKit room with the token (the stock Python SDK). While it is connected Sluice
//! restarts the delayed event (its `running_since` moves on); when it disconnects Sluice
//! sends it at once: the membership is empty long before the ten minutes.

mod support;

use serde_json::{Value, json};
use sluice::config::{LiveKitConfig, Secret};
use sluice::livekit::delayed_leave::DelayedLeaves;
use sluice::livekit::{AuthService, Signal};
use sluice::sfu::{HangupReason, Sfu, SfuSnapshot};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::livekit::{LONG, PyClient};
use support::matrix::{homeserver, register, unique};
use support::test_config;

const DELAY_MS: i64 = 600_000;
const MEMBER: &str = "org.matrix.msc3401.call.member";

/// `base` with `segments` appended, each percent-encoded.
fn url(base: &str, segments: &[&str]) -> reqwest::Url {
    let mut u = reqwest::Url::parse(base).unwrap();
    u.path_segments_mut()
        .unwrap()
        .pop_if_empty()
        .extend(segments);
    u
}

/// GET `url` with `access`'s token, as JSON (None on any failure: the caller polls).
async fn get_json(http: &reqwest::Client, url: &reqwest::Url, access: &str) -> Option<Value> {
    let r = http
        .get(url.clone())
        .bearer_auth(access)
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Polls `f` until it returns `Some`; panics with `what` after [`LONG`].
async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, f: impl Fn() -> F) -> T {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_restarts_a_delegated_delayed_leave_while_connected_and_sends_it_on_leaving() {
    let hs = homeserver();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let urls = BTreeMap::from([("localhost".to_owned(), hs.clone())]);
    let cfg = LiveKitConfig {
        api_key: "sluice-dl-key".into(),
        api_secret: Secret("a-delayed-leave-test-secret-of-32-chars".into()),
        public_url: format!("ws://{addr}/livekit/sfu"),
        full_access_homeservers: vec!["localhost".into()],
        homeserver_urls: urls.clone(),
        ..LiveKitConfig::default()
    };
    cfg.validate().unwrap();
    let sfu = Sfu::new(test_config());
    let signal = Signal::new(sfu.clone(), &cfg, &cfg.api_secret);
    let auth = AuthService::new(&cfg).unwrap();
    let delayed = DelayedLeaves::new(signal.clone(), urls, Duration::from_secs(10)).unwrap();
    auth.delegate_to(delayed.clone());
    let app = auth.routes().merge(signal.routes());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A member with a joined call membership and its delayed leave.
    let client = register(&hs, &unique("dl"), "pw-delayed-leave", "DEV1").await;
    let uid = client.user_id().unwrap().to_string();
    let room = client
        .create_room(matrix_sdk::ruma::api::client::room::create_room::v3::Request::new())
        .await
        .unwrap();
    let room_id = room.room_id().to_string();
    let access = client.access_token().unwrap();
    let http = reqwest::Client::new();
    let state_key = format!("_{uid}_DEV1_m.call");
    let state = url(
        &hs,
        &[
            "_matrix", "client", "v3", "rooms", &room_id, "state", MEMBER, &state_key,
        ],
    );
    let joined =
        json!({"application": "m.call", "call_id": "", "device_id": "DEV1", "scope": "m.room"});
    let r = http
        .put(state.clone())
        .bearer_auth(&access)
        .json(&joined)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let mut delayed_put = state.clone();
    delayed_put
        .query_pairs_mut()
        .append_pair("org.matrix.msc4140.delay", &DELAY_MS.to_string());
    let r: Value = http
        .put(delayed_put)
        .bearer_auth(&access)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let delay_id = r["delay_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();

    // Its token request hands the delayed leave to Sluice.
    let req = matrix_sdk::ruma::api::client::account::request_openid_token::v3::Request::new(
        client.user_id().unwrap().to_owned(),
    );
    let t = client.send(req).await.unwrap();
    let body = json!({
        "room_id": room_id,
        "slot_id": "m.call#ROOM",
        "openid_token": {
            "access_token": t.access_token,
            "token_type": "Bearer",
            "matrix_server_name": t.matrix_server_name.as_str(),
            "expires_in": t.expires_in.as_secs(),
        },
        "member": {"id": "member-1", "claimed_user_id": uid, "claimed_device_id": "DEV1"},
        "delay_id": delay_id,
        "delay_timeout": DELAY_MS,
    });
    let resp = http
        .post(format!("http://{addr}/livekit/jwt/get_token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sfu_config: Value = resp.json().await.unwrap();
    assert_eq!(delayed.len(), 1);

    let member = PyClient::start_with_token(
        sfu_config["url"].as_str().unwrap(),
        "member",
        sfu_config["jwt"].as_str().unwrap(),
    );
    member
        .wait("connected", |v| v["state"] == "connected")
        .await;

    // Connected: Sluice restarts the delayed event.
    let list = url(
        &hs,
        &[
            "_matrix",
            "client",
            "unstable",
            "org.matrix.msc4140",
            "delayed_events",
        ],
    );
    let running_since = || {
        let (http, list, access, delay_id) =
            (http.clone(), list.clone(), access.clone(), delay_id.clone());
        async move {
            let v = get_json(&http, &list, &access).await?;
            v["delayed_events"]
                .as_array()?
                .iter()
                .find(|e| e["delay_id"] == delay_id.as_str())
                .and_then(|e| e["running_since"].as_u64())
        }
    };
    let first = until("the delayed event listed", &running_since).await;
    until("Sluice restarting the delayed event", || {
        let f = running_since();
        async move { f.await.filter(|r| *r > first) }
    })
    .await;
    assert!(delayed.stats.restarts.load(Ordering::Relaxed) >= 1);
    let r = get_json(&http, &state, &access).await;
    assert_eq!(
        r,
        Some(joined.clone()),
        "the membership is still joined while connected"
    );

    // The member disconnects: Sluice sends the leave, minutes before the delay would.
    member.leave().await;
    until("the membership emptied by the delegated leave", || {
        let (http, state, access) = (http.clone(), state.clone(), access.clone());
        async move { (get_json(&http, &state, &access).await? == json!({})).then_some(()) }
    })
    .await;
    assert_eq!(delayed.stats.sent.load(Ordering::Relaxed), 1);
    until("the job gone", || {
        let n = delayed.len();
        async move { (n == 0).then_some(()) }
    })
    .await;
    until("the SFU empty", || {
        let (snap, counts) = (sfu.snapshot(), signal.counts());
        async move { (snap == SfuSnapshot::default() && counts == (0, 0)).then_some(()) }
    })
    .await;
    sfu.shutdown(HangupReason::UserHangup).await;
}
