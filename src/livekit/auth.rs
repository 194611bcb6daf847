//! The MatrixRTC authorization service (what lk-jwt-service serves): a client trades a
//! Matrix OpenID token for a LiveKit access token to Sluice's LiveKit front door.
//!
//! | route (under `livekit.auth_path`) | |
//! |---|---|
//! | `POST /sfu/get` | legacy request `{room, openid_token, device_id}`; identity `<user>:<device>` |
//! | `POST /get_token` | MSC4195 request `{room_id, slot_id, openid_token, member}`; hashed identity |
//! | `POST /delegate_delayed_leave` | `/get_token`'s request with `delay_id` and `delay_timeout`: Sluice takes over the member's delayed leave event (`delayed_leave`); answers `{}` |
//! | `OPTIONS` all | CORS preflight |
//! | `GET /healthz` | 200 |
//!
//! The token endpoints answer `{"url", "jwt"}`; with `delay_id` and `delay_timeout` they also
//! take over the delayed leave, as `/delegate_delayed_leave` does. Errors are Matrix errors
//! `{"errcode", "error"}`: `M_NOT_JSON` (body unreadable, or an unknown field), `M_BAD_JSON`
//! (a field missing or out of bounds; delegation for a subscribe-only user or with
//! delegation off), `M_UNAUTHORIZED` (the homeserver did not vouch for the token, or the
//! claimed user is someone else), `M_UNKNOWN` (a token could not be minted, or too many
//! delegations).

use super::delayed_leave::{DelayedLeaves, Delegation, DelegationError};
use super::identity::{LEGACY_SLOT, legacy_identity, member_identity, room_alias};
use super::openid::{OpenIdError, OpenIdVerifier};
use crate::config::{LiveKitConfig, Secret};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use livekit_api::access_token::{AccessToken, VideoGrants};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{info, warn};

/// The token endpoints, as metric labels.
pub const ENDPOINTS: [&str; 3] = ["sfu_get", "get_token", "delegate_delayed_leave"];
/// Outcomes of a token request, as metric labels.
pub const RESULTS: [&str; 5] = ["issued", "not_json", "bad_json", "unauthorized", "error"];

/// Counters of the authorization service.
#[derive(Default)]
pub struct AuthStats {
    /// Requests by endpoint and result ([`ENDPOINTS`] × [`RESULTS`]).
    pub requests: [[AtomicU64; RESULTS.len()]; ENDPOINTS.len()],
}

/// The authorization service's state.
pub struct AuthService {
    cfg: LiveKitConfig,
    secret: Secret,
    openid: OpenIdVerifier,
    delegation: OnceLock<Arc<DelayedLeaves>>,
    /// Its counters.
    pub stats: AuthStats,
}

/// An OpenID token as Matrix's `/openid/request_token` returns it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenIdToken {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    #[allow(dead_code)]
    token_type: String,
    #[serde(default)]
    matrix_server_name: String,
    #[serde(default)]
    #[allow(dead_code)]
    expires_in: i64,
}

/// `POST /sfu/get`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyRequest {
    #[serde(default)]
    room: String,
    openid_token: OpenIdToken,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    delay_id: String,
    #[serde(default)]
    delay_timeout: i64,
    #[serde(default)]
    #[allow(dead_code)]
    delay_cs_api_url: String,
}

/// The MatrixRTC member a `/get_token` request is for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    #[serde(default)]
    id: String,
    #[serde(default)]
    claimed_user_id: String,
    #[serde(default)]
    claimed_device_id: String,
}

/// `POST /get_token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    slot_id: String,
    openid_token: OpenIdToken,
    #[serde(default)]
    member: Member,
    #[serde(default)]
    delay_id: String,
    #[serde(default)]
    delay_timeout: i64,
    #[serde(default)]
    #[allow(dead_code)]
    delay_cs_api_url: String,
}

/// A refused request: status, Matrix errcode, message, and the metric result.
pub(crate) struct Refusal {
    status: StatusCode,
    errcode: &'static str,
    error: String,
    result: usize,
}

impl Refusal {
    fn bad_json(error: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            errcode: "M_BAD_JSON",
            error: error.into(),
            result: 2,
        }
    }

    fn unauthorized() -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            errcode: "M_UNAUTHORIZED",
            error: "The request could not be authorised.".into(),
            result: 3,
        }
    }
}

/// A validated request: who asks (unverified yet), for which room, as whom.
pub(crate) struct Ask {
    server_name: String,
    access_token: String,
    claimed_user_id: Option<String>,
    room: String,
    /// Builds the identity from the verified user id.
    identity: Box<dyn FnOnce(&str) -> String + Send>,
    matrix_room: String,
    /// A delayed leave to take over: (delay id, delay in ms).
    delay: Option<(String, i64)>,
    /// False for `/delegate_delayed_leave`, which mints no token.
    mint: bool,
}

impl AuthService {
    /// The service for `cfg` (an enabled, validated `[livekit]` section).
    pub fn new(cfg: &LiveKitConfig) -> Result<Arc<Self>, String> {
        let secret = cfg.resolve_secret().map_err(|e| e.to_string())?;
        let openid = OpenIdVerifier::new(
            cfg.homeserver_urls.clone(),
            Duration::from_secs(cfg.openid_timeout_secs),
        )
        .map_err(|e| format!("cannot build the OpenID HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            secret,
            openid,
            delegation: OnceLock::new(),
            stats: AuthStats::default(),
        }))
    }

    /// What takes over delayed leave events, when set.
    pub fn delegation(&self) -> Option<&Arc<DelayedLeaves>> {
        self.delegation.get()
    }

    /// Takes over delayed leave events with `d` (without it, delegations are refused).
    pub fn delegate_to(&self, d: Arc<DelayedLeaves>) {
        let _ = self.delegation.set(d);
    }

    /// The service's routes, under `livekit.auth_path`.
    pub fn routes(self: &Arc<Self>) -> Router {
        let p = &self.cfg.auth_path;
        let mut r = Router::new()
            .route(&format!("{p}/sfu/get"), post(sfu_get).options(preflight))
            .route(
                &format!("{p}/get_token"),
                post(get_token).options(preflight),
            )
            .route(
                &format!("{p}/delegate_delayed_leave"),
                post(delegate_delayed_leave).options(preflight),
            );
        if !p.is_empty() {
            // At the root, the HTTP server's own /healthz answers.
            r = r.route(&format!("{p}/healthz"), get(|| async { StatusCode::OK }));
        }
        r.layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
            .layer(axum::middleware::map_response(cors))
            .with_state(self.clone())
    }

    async fn issue(&self, endpoint: usize, ask: Result<Ask, Refusal>) -> Response {
        let outcome = match ask {
            Ok(ask) => self.verify_and_mint(ask).await,
            Err(r) => Err(r),
        };
        match outcome {
            Ok(body) => {
                self.stats.requests[endpoint][0].fetch_add(1, Ordering::Relaxed);
                (StatusCode::OK, axum::Json(body)).into_response()
            }
            Err(r) => {
                self.stats.requests[endpoint][r.result].fetch_add(1, Ordering::Relaxed);
                (
                    r.status,
                    axum::Json(json!({"errcode": r.errcode, "error": r.error})),
                )
                    .into_response()
            }
        }
    }

    async fn verify_and_mint(&self, ask: Ask) -> Result<serde_json::Value, Refusal> {
        let user_id = match self
            .openid
            .user_id(&ask.server_name, &ask.access_token)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                match &e {
                    OpenIdError::Unreachable { .. } | OpenIdError::Malformed { .. } => {
                        warn!(server = %ask.server_name, error = %e, "OpenID verification failed")
                    }
                    _ => info!(server = %ask.server_name, error = %e, "OpenID token refused"),
                }
                return Err(Refusal::unauthorized());
            }
        };
        if let Some(claimed) = &ask.claimed_user_id
            && *claimed != user_id
        {
            warn!(user = %user_id, claimed = %claimed, "token request claims another user");
            return Err(Refusal::unauthorized());
        }
        let full = self.cfg.full_access(&ask.server_name);
        let identity = (ask.identity)(&user_id);
        if let Some((delay_id, delay_ms)) = ask.delay {
            if !full {
                return Err(Refusal::bad_json(
                    "Delegation of delayed events is only supported for full access users",
                ));
            }
            let Some(delayed) = self.delegation.get() else {
                return Err(Refusal::bad_json(NO_DELEGATION));
            };
            let d = Delegation {
                server_name: ask.server_name.clone(),
                delay_id,
                delay_ms,
                room: ask.room.clone(),
                identity: identity.clone(),
            };
            delayed.delegate(d).map_err(|e| match e {
                DelegationError::Invalid(why) => Refusal::bad_json(why),
                DelegationError::Full => {
                    warn!(error = %e, "delayed leave delegation refused");
                    Refusal {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        errcode: "M_UNKNOWN",
                        error: e.to_string(),
                        result: 4,
                    }
                }
            })?;
        }
        if !ask.mint {
            info!(user = %user_id, room = %ask.room, identity = %identity, "delayed leave delegated");
            return Ok(json!({}));
        }
        let grants = VideoGrants {
            room_join: true,
            room: ask.room.clone(),
            can_publish: Some(full),
            can_publish_data: Some(full),
            can_subscribe: Some(true),
            can_update_own_metadata: Some(true),
            ..VideoGrants::default()
        };
        let jwt = AccessToken::with_api_key(&self.cfg.api_key, &self.secret.0)
            .with_identity(&identity)
            .with_ttl(Duration::from_secs(self.cfg.token_ttl_secs))
            .with_grants(grants)
            .to_jwt()
            .map_err(|e| {
                warn!(error = %e, "cannot mint a LiveKit token");
                Refusal {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    errcode: "M_UNKNOWN",
                    error: "Internal Server Error".into(),
                    result: 4,
                }
            })?;
        info!(
            user = %user_id,
            matrix_room = %ask.matrix_room,
            room = %ask.room,
            identity = %identity,
            access = if full { "full" } else { "subscribe-only" },
            "LiveKit token issued"
        );
        Ok(json!({"url": self.cfg.public_url, "jwt": jwt}))
    }
}

/// Parses a request body, refusing what lk-jwt-service refuses with `M_NOT_JSON`.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        // The serde message may quote a value (a token): log only where it failed.
        info!(category = ?e.classify(), line = e.line(), column = e.column(), "unreadable token request");
        Refusal {
            status: StatusCode::BAD_REQUEST,
            errcode: "M_NOT_JSON",
            error: "Error reading request".into(),
            result: 1,
        }
    })
}

/// Both endpoints' check of the OpenID token's fields.
fn check_token(t: &OpenIdToken) -> Result<(), Refusal> {
    if t.access_token.is_empty() || t.matrix_server_name.is_empty() {
        return Err(Refusal::bad_json(
            "The request body `openid_token` is missing a `access_token` or `matrix_server_name`",
        ));
    }
    Ok(())
}

const NO_DELEGATION: &str = "This Sluice does not take over delayed leave events (MSC4140 \
     delegation): send the request without delay_id and delay_timeout";

/// The delayed leave a request hands over: none, or both fields within bounds.
fn delay_of(id: &str, timeout: i64, required: bool) -> Result<Option<(String, i64)>, Refusal> {
    if id.is_empty() && timeout == 0 && !required {
        return Ok(None);
    }
    if id.is_empty() || timeout <= 0 {
        return Err(Refusal::bad_json(
            "The request body is missing `delay_id` or `delay_timeout`",
        ));
    }
    DelayedLeaves::check(id, timeout).map_err(|e| Refusal::bad_json(e.to_string()))?;
    Ok(Some((id.to_owned(), timeout)))
}

pub(crate) fn legacy_ask(body: &[u8]) -> Result<Ask, Refusal> {
    let req: LegacyRequest = parse(body)?;
    if req.room.is_empty() {
        return Err(Refusal::bad_json("Missing room parameter"));
    }
    check_token(&req.openid_token)?;
    if req.device_id.is_empty() {
        return Err(Refusal::bad_json("Missing device_id parameter"));
    }
    let delay = delay_of(&req.delay_id, req.delay_timeout, false)?;
    let device = req.device_id.clone();
    Ok(Ask {
        server_name: req.openid_token.matrix_server_name,
        access_token: req.openid_token.access_token,
        claimed_user_id: None,
        room: room_alias(&req.room, LEGACY_SLOT),
        identity: Box::new(move |user| legacy_identity(user, &device)),
        matrix_room: req.room,
        delay,
        mint: true,
    })
}

/// `/get_token` (`delegate: false`) and `/delegate_delayed_leave` (`true`: the delay is
/// required and no token is minted).
pub(crate) fn token_ask(body: &[u8], delegate: bool) -> Result<Ask, Refusal> {
    let req: TokenRequest = parse(body)?;
    if req.room_id.is_empty() || req.slot_id.is_empty() {
        return Err(Refusal::bad_json(
            "The request body is missing `room_id` or `slot_id`",
        ));
    }
    let m = &req.member;
    if m.id.is_empty() || m.claimed_user_id.is_empty() || m.claimed_device_id.is_empty() {
        return Err(Refusal::bad_json(
            "The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`",
        ));
    }
    check_token(&req.openid_token)?;
    let delay = delay_of(&req.delay_id, req.delay_timeout, delegate)?;
    let (device, member) = (m.claimed_device_id.clone(), m.id.clone());
    Ok(Ask {
        server_name: req.openid_token.matrix_server_name,
        access_token: req.openid_token.access_token,
        claimed_user_id: Some(req.member.claimed_user_id),
        room: room_alias(&req.room_id, &req.slot_id),
        identity: Box::new(move |user| member_identity(user, &device, &member)),
        matrix_room: req.room_id,
        delay,
        mint: !delegate,
    })
}

async fn sfu_get(State(svc): State<Arc<AuthService>>, body: Bytes) -> Response {
    svc.issue(0, legacy_ask(&body)).await
}

async fn get_token(State(svc): State<Arc<AuthService>>, body: Bytes) -> Response {
    svc.issue(1, token_ask(&body, false)).await
}

async fn delegate_delayed_leave(State(svc): State<Arc<AuthService>>, body: Bytes) -> Response {
    svc.issue(2, token_ask(&body, true)).await
}

async fn preflight() -> StatusCode {
    StatusCode::OK
}

/// The CORS headers lk-jwt-service sends on every response of these routes.
async fn cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> serde_json::Value {
        json!({"access_token": "t", "token_type": "Bearer", "matrix_server_name": "hs", "expires_in": 3600})
    }

    fn refusal(r: Result<Ask, Refusal>) -> (&'static str, String) {
        match r {
            Ok(_) => panic!("expected a refusal"),
            Err(r) => (r.errcode, r.error),
        }
    }

    #[test]
    fn legacy_requests_are_checked_field_by_field() {
        assert_eq!(refusal(legacy_ask(b"not json")).0, "M_NOT_JSON");
        let unknown =
            json!({"room": "!r:hs", "openid_token": token(), "device_id": "D", "extra": 1});
        assert_eq!(
            refusal(legacy_ask(unknown.to_string().as_bytes())).0,
            "M_NOT_JSON"
        );
        let no_room = json!({"openid_token": token(), "device_id": "D"});
        assert_eq!(
            refusal(legacy_ask(no_room.to_string().as_bytes())),
            ("M_BAD_JSON", "Missing room parameter".into())
        );
        let half =
            json!({"room": "!r:hs", "openid_token": token(), "device_id": "D", "delay_id": "x"});
        assert_eq!(
            refusal(legacy_ask(half.to_string().as_bytes())).0,
            "M_BAD_JSON"
        );
        let bad_id = json!({"room": "!r:hs", "openid_token": token(), "device_id": "D", "delay_id": "../x", "delay_timeout": 18000});
        assert_eq!(
            refusal(legacy_ask(bad_id.to_string().as_bytes())).0,
            "M_BAD_JSON"
        );
        let delayed = json!({"room": "!r:hs", "openid_token": token(), "device_id": "D", "delay_id": "x", "delay_timeout": 18000});
        let ask =
            legacy_ask(delayed.to_string().as_bytes()).unwrap_or_else(|r| panic!("{}", r.error));
        assert_eq!(ask.delay, Some(("x".to_owned(), 18000)));
        let ok = json!({"room": "!r:hs", "openid_token": token(), "device_id": "D", "delay_cs_api_url": "https://hs"});
        let ask = legacy_ask(ok.to_string().as_bytes()).unwrap_or_else(|r| panic!("{}", r.error));
        assert_eq!(ask.room, room_alias("!r:hs", LEGACY_SLOT));
        assert_eq!((ask.identity)("@u:hs"), "@u:hs:D");
    }

    #[test]
    fn token_requests_are_checked_field_by_field() {
        let member = json!({"id": "m", "claimed_user_id": "@u:hs", "claimed_device_id": "D"});
        let no_slot = json!({"room_id": "!r:hs", "openid_token": token(), "member": member});
        assert_eq!(
            refusal(token_ask(no_slot.to_string().as_bytes(), false)).0,
            "M_BAD_JSON"
        );
        let no_member =
            json!({"room_id": "!r:hs", "slot_id": "m.call#ROOM", "openid_token": token()});
        assert_eq!(
            refusal(token_ask(no_member.to_string().as_bytes(), false)).0,
            "M_BAD_JSON"
        );
        let ok =
            json!({"room_id": "!r:hs", "slot_id": "s", "openid_token": token(), "member": member});
        let ask =
            token_ask(ok.to_string().as_bytes(), false).unwrap_or_else(|r| panic!("{}", r.error));
        assert!(ask.mint && ask.delay.is_none());
        // The delegation endpoint requires the delay and mints nothing.
        assert_eq!(
            refusal(token_ask(ok.to_string().as_bytes(), true)).0,
            "M_BAD_JSON"
        );
        let mut delegate = ok.clone();
        delegate["delay_id"] = json!("syd_1");
        delegate["delay_timeout"] = json!(10000);
        let d = token_ask(delegate.to_string().as_bytes(), true)
            .unwrap_or_else(|r| panic!("{}", r.error));
        assert!(!d.mint && d.delay == Some(("syd_1".to_owned(), 10000)));
        assert_eq!(ask.claimed_user_id.as_deref(), Some("@u:hs"));
        assert_eq!(ask.room, room_alias("!r:hs", "s"));
        assert_eq!((ask.identity)("@u:hs"), member_identity("@u:hs", "D", "m"));
    }
}
