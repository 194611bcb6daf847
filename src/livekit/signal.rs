//! LiveKit signaling's state and checks: the token a connection presents (the
//! `access_token` query parameter or an `Authorization: Bearer` header) and its join
//! request (`join_request`, with the client's first offer). The HTTP side is `ws`,
//! one connection `session`.

use super::room::Rooms;
use crate::config::{LiveKitConfig, Secret};
use crate::sfu::Sfu;
use axum::http::{HeaderMap, header};
use base64::Engine;
use livekit_api::access_token::TokenVerifier;
use livekit_protocol as proto;
use prost::Message;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest `join_request` accepted, encoded, and after decompression.
const MAX_JOIN_REQUEST: usize = 128 * 1024;

/// Why connections were refused or ended, as metric labels (and resumes: a socket handed
/// to its live session, or refused with a request to join afresh).
pub const OUTCOMES: [&str; 8] = [
    "joined",
    "unauthorized",
    "bad_request",
    "refused",
    "replaced",
    "protocol_error",
    "resumed",
    "resume_refused",
];

/// What became of the data packets clients sent: relayed, refused (a channel without
/// packets, undecodable, empty, server-only or too many destinations), not permitted (the
/// token grants no data publishing); and copies dropped because a recipient's data
/// channel had 1 MiB waiting.
pub const DATA_RESULTS: [&str; 4] = ["relayed", "refused", "not_permitted", "recipient_backlog"];

/// The `subscribed_quality_update`s sent to publishers, by the highest quality they
/// enable (off: none, the publisher may stop the track).
pub const DYNACAST_TOPS: [&str; 4] = ["off", "low", "medium", "high"];

/// Counters of the signaling endpoint.
#[derive(Default)]
pub struct SignalStats {
    /// Connections by outcome ([`OUTCOMES`]).
    pub connections: [AtomicU64; OUTCOMES.len()],
    /// Data packets by result ([`DATA_RESULTS`]).
    pub data_packets: [AtomicU64; DATA_RESULTS.len()],
    /// Dynacast updates by the highest quality enabled ([`DYNACAST_TOPS`]).
    pub dynacast: [AtomicU64; DYNACAST_TOPS.len()],
}

impl SignalStats {
    pub(super) fn count(&self, outcome: usize) {
        self.connections[outcome].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_data(&self, result: usize) {
        self.data_packets[result].fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) use super::grant::Grant;

/// The signaling endpoint's state: the SFU, the token check, the rooms.
pub struct Signal {
    pub(super) sfu: Sfu,
    verifier: TokenVerifier,
    pub(super) rooms: Rooms,
    pub(super) next: AtomicU64,
    /// Its counters.
    pub stats: SignalStats,
    pub(super) path: String,
}

impl Signal {
    /// The endpoint for `cfg` (enabled, validated) on `sfu`.
    pub fn new(sfu: Sfu, cfg: &LiveKitConfig, secret: &Secret) -> Arc<Self> {
        Arc::new(Self {
            sfu,
            verifier: TokenVerifier::with_api_key(&cfg.api_key, &secret.0),
            rooms: Rooms::default(),
            next: AtomicU64::new(0),
            stats: SignalStats::default(),
            path: url_path(&cfg.public_url),
        })
    }

    /// Rooms and members connected now.
    pub fn counts(&self) -> (usize, usize) {
        self.rooms.counts()
    }

    /// Whether `identity` is connected to LiveKit room `room` now.
    pub fn has_identity(&self, room: &str, identity: &str) -> bool {
        self.rooms.has_identity(room, identity)
    }

    /// Every track published now, as the room's members see it.
    pub fn tracks(&self) -> Vec<super::PublishedTrack> {
        self.rooms.tracks()
    }

    pub(super) fn authorize(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Grant, String> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = query
            .get("access_token")
            .map(String::as_str)
            .or(bearer)
            .filter(|t| !t.is_empty())
            .ok_or("no access token (access_token or Authorization: Bearer)")?;
        let claims = self
            .verifier
            .verify(token)
            .map_err(|e| format!("invalid access token: {e}"))?;
        if !claims.video.room_join || claims.video.room.is_empty() || claims.sub.is_empty() {
            return Err("the token grants no room join".into());
        }
        Ok(Grant {
            can_publish: claims.video.can_publish(),
            can_subscribe: claims.video.can_subscribe(),
            can_publish_data: claims.video.can_publish_data(),
            identity: claims.sub,
            name: claims.name,
            room: claims.video.room,
        })
    }
}

/// The path of a `ws://host[:port]/path` URL, without a trailing `/`.
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map(|i| rest[i..].trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

/// Decodes `join_request`: URL-safe Base64 of a `WrappedJoinRequest`, gzip or not.
pub(crate) fn decode_join(param: Option<&String>) -> Result<proto::JoinRequest, String> {
    let Some(param) = param else {
        return Ok(proto::JoinRequest::default());
    };
    if param.len() > MAX_JOIN_REQUEST * 4 / 3 + 4 {
        return Err("join_request too large".into());
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(param.trim())
        .map_err(|e| format!("join_request is not URL-safe Base64: {e}"))?;
    let wrapped = proto::WrappedJoinRequest::decode(bytes.as_slice())
        .map_err(|e| format!("join_request is not a WrappedJoinRequest: {e}"))?;
    let raw = match wrapped.compression {
        0 => wrapped.join_request,
        1 => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(wrapped.join_request.as_slice())
                .take(MAX_JOIN_REQUEST as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("join_request does not gunzip: {e}"))?;
            if out.len() > MAX_JOIN_REQUEST {
                return Err("join_request too large once decompressed".into());
            }
            out
        }
        c => return Err(format!("join_request compression {c} is unknown")),
    };
    proto::JoinRequest::decode(raw.as_slice())
        .map_err(|e| format!("join_request is not a JoinRequest: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signaling_path_is_the_public_urls() {
        assert_eq!(
            url_path("wss://sfu.example.org/livekit/sfu/"),
            "/livekit/sfu"
        );
        assert_eq!(url_path("ws://127.0.0.1:8090"), "");
    }

    #[test]
    fn join_requests_decode_plain_and_gzipped() {
        use std::io::Write;
        let join = proto::JoinRequest {
            publisher_offer: Some(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0".into(),
                id: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let b64 = base64::engine::general_purpose::URL_SAFE;
        for gzip in [false, true] {
            let raw = join.encode_to_vec();
            let body = if gzip {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&raw).unwrap();
                e.finish().unwrap()
            } else {
                raw
            };
            let wrapped = proto::WrappedJoinRequest {
                compression: gzip as i32,
                join_request: body,
            };
            let param = b64.encode(wrapped.encode_to_vec());
            let got = decode_join(Some(&param)).unwrap();
            assert_eq!(got.publisher_offer.unwrap().id, 7);
        }
        assert!(decode_join(Some(&"!!".to_owned())).is_err());
        assert!(decode_join(Some(&b64.encode(b"\xff\xff"))).is_err());
    }
}
