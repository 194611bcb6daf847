//! LiveKit's signaling endpoint on the HTTP port: `GET <path>/rtc/v1` (a WebSocket of
//! protobuf `SignalRequest`/`SignalResponse` frames: the single-peer-connection protocol
//! livekit-client ≥ 2.17 and the Rust/Python SDKs speak) and `GET <path>/rtc/v1/validate`
//! (what a client asks when the WebSocket failed). `<path>` is `livekit.public_url`'s.

use super::signal::{Signal, decode_join};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::info;

impl Signal {
    /// The endpoint's routes.
    pub fn routes(self: &Arc<Self>) -> Router {
        let p = &self.path;
        Router::new()
            .route(&format!("{p}/rtc/v1"), get(rtc_v1))
            .route(&format!("{p}/rtc/v1/validate"), get(validate))
            .with_state(self.clone())
    }
}

async fn rtc_v1(
    State(s): State<Arc<Signal>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let grant = match s.authorize(&q, &headers) {
        Ok(g) => g,
        Err(why) => {
            s.stats.count(1);
            info!(error = %why, "LiveKit connection refused");
            return (StatusCode::UNAUTHORIZED, why).into_response();
        }
    };
    let join = match decode_join(q.get("join_request")) {
        Ok(j) => j,
        Err(why) => {
            s.stats.count(2);
            info!(identity = %grant.identity, error = %why, "LiveKit connection refused");
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let Ok(ws) = ws else {
        s.stats.count(2);
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    ws.max_message_size(1 << 20)
        .on_upgrade(move |socket| super::session::run(s, socket, grant, join))
}

async fn validate(
    State(s): State<Arc<Signal>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match s.authorize(&q, &headers) {
        Err(why) => (StatusCode::UNAUTHORIZED, why).into_response(),
        Ok(_) => match decode_join(q.get("join_request")) {
            Ok(_) => (StatusCode::OK, "success").into_response(),
            Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
        },
    }
}
