#![recursion_limit = "256"]
//! The LiveKit front door's authorization service against the real Synapse: OpenID
//! tokens from real accounts, verified over Synapse's federation `openid` listener, traded
//! for LiveKit tokens that LiveKit's own token crate accepts.

mod support;

use livekit_api::access_token::{Claims, TokenVerifier};
use serde_json::{Value, json};
use sluice::config::Secret;
use sluice::livekit::identity::{LEGACY_SLOT, member_identity, room_alias};
use sluice::livekit::{AuthService, LiveKitConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use support::matrix::*;

const KEY: &str = "sluice-test-key";
const SECRET: &str = "a-test-secret-of-at-least-32-characters";
const PUBLIC_URL: &str = "ws://127.0.0.1:9/livekit/sfu";

/// The service for `full_access`, with the test homeserver (and `also`) reached at the
/// suite's Synapse; serves it on a free port and returns its base URL.
async fn serve(full_access: &[&str], also: &[&str]) -> (Arc<AuthService>, String) {
    let hs = homeserver();
    let mut urls = BTreeMap::new();
    for name in std::iter::once("localhost").chain(also.iter().copied()) {
        urls.insert(name.to_owned(), hs.clone());
    }
    let cfg = LiveKitConfig {
        api_key: KEY.into(),
        api_secret: Secret(SECRET.into()),
        public_url: PUBLIC_URL.into(),
        full_access_homeservers: full_access.iter().map(|s| s.to_string()).collect(),
        homeserver_urls: urls,
        ..LiveKitConfig::default()
    };
    cfg.validate().unwrap();
    let svc = AuthService::new(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}{}", listener.local_addr().unwrap(), cfg.auth_path);
    let app = svc.routes();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (svc, base)
}

/// A fresh account and an OpenID token of it, in the request's shape.
async fn account(name: &str) -> (String, Value) {
    let user = unique(name);
    let client = register(&homeserver(), &user, "pw-openid-test", "DEV1").await;
    let uid = client.user_id().unwrap().to_owned();
    let req =
        matrix_sdk::ruma::api::client::account::request_openid_token::v3::Request::new(uid.clone());
    let t = client.send(req).await.unwrap();
    let token = json!({
        "access_token": t.access_token,
        "token_type": "Bearer",
        "matrix_server_name": t.matrix_server_name.as_str(),
        "expires_in": t.expires_in.as_secs(),
    });
    (uid.to_string(), token)
}

async fn post(url: &str, body: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn verified(body: &Value) -> Claims {
    assert_eq!(body["url"], PUBLIC_URL, "{body}");
    let jwt = body["jwt"]
        .as_str()
        .unwrap_or_else(|| panic!("no jwt in {body}"));
    TokenVerifier::with_api_key(KEY, SECRET)
        .verify(jwt)
        .expect("a LiveKit token signed with the configured key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_tokens_are_traded_for_livekit_tokens_on_both_endpoints() {
    let (svc, base) = serve(&["localhost"], &[]).await;
    let (uid, token) = account("lk-alice").await;
    let room = "!someroom:localhost";

    // Legacy /sfu/get: identity `<user>:<device>`, the room of the default slot.
    let (status, headers, body) = post(
        &format!("{base}/sfu/get"),
        &json!({"room": room, "openid_token": token, "device_id": "DEV1"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let c = verified(&body);
    assert_eq!(c.iss, KEY);
    assert_eq!(c.sub, format!("{uid}:DEV1"));
    assert_eq!(c.video.room, room_alias(room, LEGACY_SLOT));
    assert!(c.video.room_join);
    assert_eq!(c.video.can_publish, Some(true));
    assert_eq!(c.video.can_subscribe, Some(true));
    assert_eq!(c.exp - c.nbf, 3600);

    // /get_token: the hashed identity of (user, device, member).
    let member = json!({"id": "member-1", "claimed_user_id": uid, "claimed_device_id": "DEV1"});
    let (status, _, body) = post(
        &format!("{base}/get_token"),
        &json!({"room_id": room, "slot_id": "m.call#ROOM", "openid_token": token, "member": member})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let c = verified(&body);
    assert_eq!(c.sub, member_identity(&uid, "DEV1", "member-1"));
    assert_eq!(c.video.room, room_alias(room, "m.call#ROOM"));

    let issued = |e: usize| svc.stats.requests[e][0].load(Ordering::Relaxed);
    assert_eq!((issued(0), issued(1)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_misclaimed_tokens_are_unauthorized() {
    // `evil.example` is reached at the same Synapse, which vouches only for its own users.
    let (svc, base) = serve(&["localhost"], &["evil.example"]).await;
    let (uid, token) = account("lk-bob").await;
    let (other, _) = account("lk-carol").await;
    let url = format!("{base}/get_token");
    let request = |token: &Value, claimed: &str| {
        json!({
            "room_id": "!r:localhost", "slot_id": "m.call#ROOM", "openid_token": token,
            "member": {"id": "m", "claimed_user_id": claimed, "claimed_device_id": "DEV1"},
        })
        .to_string()
    };
    let mut forged = token.clone();
    forged["access_token"] = json!(format!("{}x", token["access_token"].as_str().unwrap()));
    let mut foreign = token.clone();
    foreign["matrix_server_name"] = json!("evil.example");
    for (what, body) in [
        ("a forged token", request(&forged, &uid)),
        ("a token claimed for another user", request(&token, &other)),
        (
            "a server vouching for another server's user",
            request(&foreign, &uid),
        ),
    ] {
        let (status, headers, body) = post(&url, &body).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{what}");
        assert_eq!(headers["access-control-allow-origin"], "*", "{what}");
        assert!(body.get("jwt").is_none(), "{what}");
    }
    assert_eq!(svc.stats.requests[1][3].load(Ordering::Relaxed), 3);
    assert_eq!(svc.stats.requests[1][0].load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_other_homeservers_get_subscribe_only_tokens() {
    let (_svc, base) = serve(&["elsewhere.example"], &[]).await;
    let (_uid, token) = account("lk-dave").await;
    let (status, _, body) = post(
        &format!("{base}/sfu/get"),
        &json!({"room": "!r:localhost", "openid_token": token, "device_id": "DEV1"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let c = verified(&body);
    assert_eq!(c.video.can_publish, Some(false));
    assert_eq!(c.video.can_publish_data, Some(false));
    assert_eq!(c.video.can_subscribe, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_matrix_errors_and_preflights_cors() {
    let (svc, base) = serve(&["localhost"], &[]).await;
    let (_, token) = account("lk-erin").await;
    let cases = [
        ("sfu/get", "{not json".to_owned(), 400, "M_NOT_JSON"),
        (
            "sfu/get",
            json!({"room": "!r:localhost", "openid_token": token, "device_id": "D", "surprise": 1})
                .to_string(),
            400,
            "M_NOT_JSON",
        ),
        (
            "sfu/get",
            json!({"openid_token": token, "device_id": "D"}).to_string(),
            400,
            "M_BAD_JSON",
        ),
        (
            "get_token",
            json!({"room_id": "!r:localhost", "slot_id": "s", "openid_token": token}).to_string(),
            400,
            "M_BAD_JSON",
        ),
        (
            "sfu/get",
            json!({"room": "!r:localhost", "openid_token": token, "device_id": "D",
                   "delay_id": "syd_x", "delay_timeout": 18000})
            .to_string(),
            400,
            "M_BAD_JSON",
        ),
    ];
    for (path, body, want_status, want_code) in &cases {
        let (status, headers, got) = post(&format!("{base}/{path}"), body).await;
        assert_eq!(status, *want_status, "{path} {body}: {got}");
        assert_eq!(got["errcode"], *want_code, "{path} {body}");
        assert!(got["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(headers["access-control-allow-origin"], "*");
    }
    assert_eq!(svc.stats.requests[0][1].load(Ordering::Relaxed), 2);
    assert_eq!(svc.stats.requests[0][2].load(Ordering::Relaxed), 2);
    assert_eq!(svc.stats.requests[1][2].load(Ordering::Relaxed), 1);

    // A browser's preflight, and the health check under the same path.
    let http = reqwest::Client::new();
    let pre = http
        .request(reqwest::Method::OPTIONS, format!("{base}/get_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status().as_u16(), 200);
    assert_eq!(pre.headers()["access-control-allow-methods"], "POST");
    assert!(
        pre.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Content-Type")
    );
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}
