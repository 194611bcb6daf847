//! The HTTP server (axum): metrics, health, readiness, discovery, and the admin API.
//!
//! | route | |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when Matrix sync is up (answered within 15 s; or Matrix is off) and not draining; 503 with the reason |
//! | `GET /.well-known/sluice` | `{"transports": [...]}` (docs/protocol.md §1) |
//! | `GET /admin/conferences` | conferences, participants, tracks |
//! | `DELETE /admin/conferences/{conference}/participants/{participant}` | kick |
//! | `GET/POST/DELETE /admin/drain` | drain status / start / cancel |
//! | `GET /web-client.json` | the web client's settings: homeserver, transport, demo users (`[web]` on) |
//! | `POST /livekit/jwt/sfu/get`, `…/get_token` | the LiveKit front door's authorization service (`[livekit]` on; `livekit.auth_path`) |
//! | `GET /…` | the built web client's files (`[web] dir`) |
//!
//! Admin calls need `Authorization: Bearer <http.admin_token>`; with no token configured
//! every admin call is refused (403).

use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::sfu::{HangupReason, Sfu};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the handlers need.
#[derive(Clone)]
pub struct AppState {
    /// The media core.
    pub sfu: Sfu,
    /// The metric registry.
    pub metrics: Arc<Metrics>,
    /// Drain control.
    pub ops: Arc<Ops>,
    /// Matrix sync state, when Matrix is configured.
    pub sync_up: Option<Arc<AtomicBool>>,
    /// Admin bearer token; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// This instance's transport object (docs/protocol.md §1), when Matrix is configured.
    pub transport: Option<Value>,
    /// The reference web client, when served.
    pub web: Option<WebClient>,
    /// Routes other front ends serve on this port (the LiveKit front door's), merged in.
    pub front_doors: Vec<Router>,
}

/// The reference web client: where its built files are and what the page is told.
#[derive(Clone, Debug)]
pub struct WebClient {
    /// Directory of the built client (contains `index.html`).
    pub dir: std::path::PathBuf,
    /// The body of `GET /web-client.json`.
    pub settings: Value,
}

impl WebClient {
    /// The web client described by `[web]`, or `None` when it is off.
    pub fn from_config(cfg: &crate::config::Config) -> Option<WebClient> {
        if !cfg.web.enabled() {
            return None;
        }
        let homeserver = if cfg.web.homeserver_url.trim().is_empty() {
            cfg.matrix.homeserver_url.trim()
        } else {
            cfg.web.homeserver_url.trim()
        };
        Some(WebClient {
            dir: cfg.web.dir.trim().into(),
            settings: json!({
                "homeserver": homeserver,
                "transport": {"type": "sluice", "user_id": cfg.matrix.user_id, "device_id": cfg.matrix.device_id},
                "room": cfg.web.default_room,
                "demo_users": cfg.web.demo_users,
            }),
        })
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// Constant-time comparison of the presented token.
fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

/// The refusal for an unauthorized admin call, or `None` when the call may proceed.
fn deny(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.admin_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is disabled: set http.admin_token",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if presented.is_empty() || !token_matches(presented, expected) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ));
    }
    None
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ops.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n").into_response();
    }
    if let Some(up) = &s.sync_up
        && !up.load(Ordering::Relaxed)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Matrix sync is down\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn well_known(State(s): State<AppState>) -> Response {
    match &s.transport {
        Some(t) => axum::Json(json!({"transports": [t]})).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no_transport",
            "Matrix signaling is not configured on this instance",
        ),
    }
}

async fn list_conferences(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&s, &headers) {
        return r;
    }
    axum::Json(json!({"conferences": s.sfu.conferences(), "totals": s.sfu.snapshot()}))
        .into_response()
}

async fn kick(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((conference, participant)): Path<(String, String)>,
) -> Response {
    if let Some(r) = deny(&s, &headers) {
        return r;
    }
    match s
        .sfu
        .leave(&conference, &participant, HangupReason::UserHangup)
        .await
    {
        Ok(()) => {
            tracing::info!(%conference, %participant, "kicked by the admin API");
            axum::Json(json!({"kicked": participant})).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, e.code(), &e.to_string()),
    }
}

fn drain_status(s: &AppState) -> Value {
    json!({
        "draining": s.ops.draining(),
        "remaining_secs": s.ops.remaining().map(|d| d.as_secs()),
        "conferences": s.sfu.snapshot().conferences,
    })
}

async fn drain_get(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&s, &headers) {
        return r;
    }
    axum::Json(drain_status(&s)).into_response()
}

async fn drain_start(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&s, &headers) {
        return r;
    }
    let started = s.ops.start_drain();
    let mut body = drain_status(&s);
    body["started"] = json!(started);
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

async fn drain_cancel(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&s, &headers) {
        return r;
    }
    if !s.ops.cancel_drain() {
        return error(StatusCode::CONFLICT, "not_draining", "no drain is running");
    }
    axum::Json(drain_status(&s)).into_response()
}

async fn web_settings(State(s): State<AppState>) -> Response {
    match &s.web {
        Some(w) => (
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(w.settings.clone()),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "web_client_disabled",
            "the web client is not served: set [web] dir",
        ),
    }
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let web_dir = state.web.as_ref().map(|w| w.dir.clone());
    let front_doors = state.front_doors.clone();
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/sluice", get(well_known))
        .route("/admin/conferences", get(list_conferences))
        .route(
            "/admin/conferences/{conference}/participants/{participant}",
            axum::routing::delete(kick),
        )
        .route(
            "/admin/drain",
            get(drain_get).post(drain_start).delete(drain_cancel),
        )
        .route("/web-client.json", get(web_settings))
        .with_state(state);
    for r in front_doors {
        router = router.merge(r);
    }
    match web_dir {
        Some(dir) => router.fallback_service(tower_http::services::ServeDir::new(dir)),
        None => router,
    }
}

/// Serves the router on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("abcdefghijklmnop", "abcdefghijklmnop"));
        assert!(!token_matches("abcdefghijklmnoq", "abcdefghijklmnop"));
        assert!(!token_matches("abc", "abcdefghijklmnop"));
        assert!(!token_matches("", "abcdefghijklmnop"));
    }
}
