//! The LiveKit-compatible front door: what stock MatrixRTC clients (Element Call, Element
//! X) and LiveKit SDKs need from "a LiveKit deployment".
//!
//! Built so far: the MatrixRTC authorization service ([`auth`]), which verifies a Matrix
//! OpenID token with the user's homeserver ([`openid`]) and mints a standard LiveKit
//! access token for the room and identity lk-jwt-service would derive ([`identity`]).
//! LiveKit's signaling (`/rtc/v1`, the single-peer-connection protocol: the endpoint in
//! `ws`, token and join-request checks in [`signal`]) runs each connection as one task
//! (`session`) over the SFU in client-offer mode, beside a LiveKit-protocol view of each
//! room (`room`). Data packets on the client's `_reliable` and `_lossy` channels are
//! relayed to the room as `data` decides; `quality` sends each client the room's
//! connection qualities; `dynacast` tells publishers which of their layers anyone needs.

pub mod auth;
pub(crate) mod data;
pub mod delayed_leave;
mod dynacast;
mod grant;
pub mod identity;
pub mod metrics;
pub mod openid;
mod quality;
mod room;
pub(crate) mod session;
pub mod signal;
mod ws;

pub use crate::config::LiveKitConfig;
pub use auth::AuthService;
pub use room::PublishedTrack;
pub use signal::{DYNACAST_TOPS, Signal};
