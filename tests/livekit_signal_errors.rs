#![recursion_limit = "256"]
//! Bad input at the LiveKit front door's signaling endpoint gets a specific refusal or close
//! reason, is counted, and leaves nothing behind: tokens missing, malformed, signed with
//! another secret or granting no room join (HTTP 401 on `/rtc/v1` and `/rtc/v1/validate`),
//! an unreadable join request (400), and on an open WebSocket a garbage frame or a text
//! frame instead of the first offer (closed with the reason, counted as protocol errors), and
//! a resume of a session Sluice does not have (a leave asking for a full reconnect).

mod support;

use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, VideoGrants};
use sluice::sfu::SfuSnapshot;
use std::sync::atomic::Ordering;
use support::livekit::{KEY, SECRET, front_door, token};
use tokio_tungstenite::tungstenite::Message;

fn outcome(door: &support::livekit::FrontDoor, name: &str) -> u64 {
    let i = sluice::livekit::signal::OUTCOMES
        .iter()
        .position(|o| *o == name)
        .unwrap();
    door.signal.stats.connections[i].load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_join_requests_are_refused_and_counted() {
    let door = front_door().await;
    let http_base = door.url.replacen("ws://", "http://", 1);
    let http = reqwest::Client::new();
    let forged = AccessToken::with_api_key(KEY, "another-secret-of-at-least-32-characters")
        .with_identity("mallory")
        .with_grants(VideoGrants {
            room_join: true,
            room: "r".into(),
            ..VideoGrants::default()
        })
        .to_jwt()
        .unwrap();
    let no_join = AccessToken::with_api_key(KEY, SECRET)
        .with_identity("eve")
        .with_grants(VideoGrants::default())
        .to_jwt()
        .unwrap();
    for (what, tok, reason) in [
        ("no token", "", "no access token"),
        ("a malformed token", "not-a-jwt", "invalid access token"),
        (
            "a token of another secret",
            forged.as_str(),
            "invalid access token",
        ),
        (
            "a token without a room join",
            no_join.as_str(),
            "grants no room join",
        ),
    ] {
        for path in ["rtc/v1", "rtc/v1/validate"] {
            let r = http
                .get(format!("{http_base}/{path}"))
                .query(&[("access_token", tok)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{what} on {path}");
            let body = r.text().await.unwrap();
            assert!(body.contains(reason), "{what} on {path}: {body:?}");
        }
    }
    // Only the WebSocket endpoint counts (validate is the client's diagnosis).
    assert_eq!(outcome(&door, "unauthorized"), 4);

    let good = token("alice", "room-e");
    for path in ["rtc/v1", "rtc/v1/validate"] {
        let r = http
            .get(format!("{http_base}/{path}"))
            .query(&[("access_token", good.as_str()), ("join_request", "%%%")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "a garbage join request on {path}");
    }
    assert_eq!(outcome(&door, "bad_request"), 1);
    let ok = http
        .get(format!("{http_base}/rtc/v1/validate"))
        .query(&[("access_token", good.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(door.sfu.snapshot(), SfuSnapshot::default());
    assert_eq!(door.signal.counts(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_before_the_offer_close_the_socket_with_the_reason() {
    let door = front_door().await;
    for (frame, reason) in [
        (
            Message::Binary(vec![0xff, 0xff, 0xff, 0x0f].into()),
            "a frame is not a SignalRequest",
        ),
        (
            Message::Text("{\"offer\": {}}".into()),
            "text frames are not supported",
        ),
    ] {
        let url = format!(
            "{}/rtc/v1?access_token={}",
            door.url,
            token("bob", "room-g")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(frame).await.unwrap();
        let closed = loop {
            match tokio::time::timeout(support::livekit::LONG, ws.next()).await {
                Ok(Some(Ok(Message::Close(c)))) => break c,
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        let c = closed.expect("a close frame with a reason");
        assert!(
            c.reason.contains(reason),
            "close reason {:?}, expected {reason:?}",
            c.reason
        );
    }
    assert_eq!(outcome(&door, "protocol_error"), 2);
    assert_eq!(outcome(&door, "joined"), 0);
    assert_eq!(door.sfu.snapshot(), SfuSnapshot::default());
    assert_eq!(door.signal.counts(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_of_an_unknown_session_is_told_to_join_again() {
    use base64::Engine;
    use livekit_protocol as proto;
    use prost::Message as _;
    let door = front_door().await;
    let join = proto::JoinRequest {
        reconnect: true,
        participant_sid: "PA_nobody".into(),
        ..Default::default()
    };
    let wrapped = proto::WrappedJoinRequest {
        join_request: join.encode_to_vec(),
        ..Default::default()
    };
    let param = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wrapped.encode_to_vec());
    let url = format!(
        "{}/rtc/v1?access_token={}&join_request={param}",
        door.url,
        token("bob", "room-r")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = match tokio::time::timeout(support::livekit::LONG, ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => proto::SignalResponse::decode(b.as_ref()).unwrap(),
        other => panic!("expected a leave, got {other:?}"),
    };
    let Some(proto::signal_response::Message::Leave(leave)) = first.message else {
        panic!("expected a leave, got {first:?}");
    };
    assert_eq!(
        leave.action,
        proto::leave_request::Action::Reconnect as i32,
        "{leave:?}"
    );
    match tokio::time::timeout(support::livekit::LONG, ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(c))))) => {
            assert!(c.reason.contains("join again"), "{:?}", c.reason)
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(outcome(&door, "resume_refused"), 1);
    assert_eq!(outcome(&door, "resumed"), 0);
    assert_eq!(door.sfu.snapshot(), SfuSnapshot::default());
    assert_eq!(door.signal.counts(), (0, 0));
}
