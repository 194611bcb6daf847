//! The LiveKit-compatible front door: what stock MatrixRTC clients (Element Call, Element
//! X) and LiveKit SDKs need from "a LiveKit deployment".
//!
//! Built so far: the MatrixRTC authorization service ([`auth`]), which verifies a Matrix
//! OpenID token with the user's homeserver ([`openid`]) and mints a standard LiveKit
//! access token for the room and identity lk-jwt-service would derive ([`identity`]).
//! LiveKit's signaling (`/rtc/v1`) is the next part (issue 16).

pub mod auth;
pub mod identity;
pub mod metrics;
pub mod openid;

pub use crate::config::LiveKitConfig;
pub use auth::AuthService;
