//! The data-channel messages a client sends (docs/protocol.md §4), parsed into values before
//! anything acts on them. Pure: no I/O and no session state, so every refusal is decided
//! here (and fuzzed: `sluice-fuzz`'s `dc_message` target).

use super::protocol::MAX_SDP_BYTES;
use super::stream_metadata;
use crate::sfu::{SessionDescription, TrackRef};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest unknown message type kept (for the debug log); longer ones are cut.
const MAX_UNKNOWN_TYPE: usize = 64;
/// Largest width or height a subscription may ask for.
const MAX_DIMENSION: u64 = 16_384;

/// One data-channel message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum DcMessage {
    /// `m.call.pong`: the client answers a keepalive.
    Pong,
    /// `m.call.track_subscription`: tracks to stop and start receiving, and the sizes
    /// wanted for some of them (they steer the simulcast layer).
    TrackSubscription {
        /// Tracks to stop receiving.
        unsubscribe: Vec<TrackRef>,
        /// Tracks to start receiving (or keep: a repeat only changes the size).
        subscribe: Vec<TrackRef>,
        /// `(track, width, height)` for the subscribed entries that name a size.
        sizes: Vec<(TrackRef, u32, u32)>,
    },
    /// `m.call.negotiate`: a renegotiation offer or answer, with the sender's stream
    /// metadata when it changed (already checked and reduced, see [`stream_metadata`]).
    Negotiate {
        /// The new metadata, if the message carried it.
        metadata: Option<Map<String, Value>>,
        /// The offer or answer.
        description: SessionDescription,
    },
    /// `m.call.sdp_stream_metadata_changed`: new stream metadata (checked and reduced).
    MetadataChanged(Map<String, Value>),
    /// A message type Sluice does not act on (cut to 64 bytes), ignored.
    Unknown(String),
}

impl DcMessage {
    /// The message's `type` when Sluice acts on it (refusals name the request by it).
    pub fn request_type(&self) -> Option<&'static str> {
        Some(match self {
            DcMessage::Pong => "m.call.pong",
            DcMessage::TrackSubscription { .. } => "m.call.track_subscription",
            DcMessage::Negotiate { .. } => "m.call.negotiate",
            DcMessage::MetadataChanged(_) => "m.call.sdp_stream_metadata_changed",
            DcMessage::Unknown(_) => return None,
        })
    }
}

/// Why a data-channel message was refused: what the client gets as `sluice.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcRefusal {
    /// The error code (`malformed`, `bad_metadata`, `bad_sdp`).
    pub code: &'static str,
    /// What was wrong, for the client and the log.
    pub message: String,
    /// The refused message's `type`, when it had one.
    pub request_type: Option<&'static str>,
}

fn refuse(code: &'static str, message: impl Into<String>, kind: Option<&'static str>) -> DcRefusal {
    DcRefusal {
        code,
        message: message.into(),
        request_type: kind,
    }
}

/// Parses one data-channel text message.
pub fn parse(text: &str) -> Result<DcMessage, DcRefusal> {
    let v: Value = serde_json::from_str(text)
        .map_err(|_| refuse("malformed", "data-channel message is not JSON", None))?;
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return Err(refuse(
            "malformed",
            "data-channel message has no `type`",
            None,
        ));
    };
    let empty = Value::Object(Map::new());
    let content = v.get("content").unwrap_or(&empty);
    match kind {
        "m.call.pong" => Ok(DcMessage::Pong),
        "m.call.track_subscription" => track_subscription(content),
        "m.call.negotiate" => negotiate(content),
        "m.call.sdp_stream_metadata_changed" => {
            const KIND: &str = "m.call.sdp_stream_metadata_changed";
            let Some(md) = content
                .get("sdp_stream_metadata")
                .and_then(Value::as_object)
            else {
                return Err(refuse(
                    "malformed",
                    "`sdp_stream_metadata` must be an object",
                    Some(KIND),
                ));
            };
            let md =
                stream_metadata::sanitize(md).map_err(|e| refuse("bad_metadata", e, Some(KIND)))?;
            Ok(DcMessage::MetadataChanged(md))
        }
        other => {
            let mut end = other.len().min(MAX_UNKNOWN_TYPE);
            while !other.is_char_boundary(end) {
                end -= 1;
            }
            Ok(DcMessage::Unknown(other[..end].to_owned()))
        }
    }
}

fn track_subscription(content: &Value) -> Result<DcMessage, DcRefusal> {
    const KIND: &str = "m.call.track_subscription";
    let list = |key: &str| -> Result<Vec<TrackRef>, DcRefusal> {
        match content.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => Vec::<TrackRef>::deserialize(v)
                .map_err(|e| refuse("malformed", format!("`{key}`: {e}"), Some(KIND))),
        }
    };
    let unsubscribe = list("unsubscribe")?;
    let subscribe = list("subscribe")?;
    let sizes = content
        .get("subscribe")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let w = entry.get("width").and_then(Value::as_u64)?;
            let h = entry.get("height").and_then(Value::as_u64)?;
            let t = TrackRef::deserialize(entry).ok()?;
            Some((t, w.min(MAX_DIMENSION) as u32, h.min(MAX_DIMENSION) as u32))
        })
        .collect();
    Ok(DcMessage::TrackSubscription {
        unsubscribe,
        subscribe,
        sizes,
    })
}

fn negotiate(content: &Value) -> Result<DcMessage, DcRefusal> {
    const KIND: &str = "m.call.negotiate";
    let metadata = match content
        .get("sdp_stream_metadata")
        .and_then(Value::as_object)
    {
        Some(md) => {
            Some(stream_metadata::sanitize(md).map_err(|e| refuse("bad_metadata", e, Some(KIND)))?)
        }
        None => None,
    };
    let description = content
        .get("description")
        .and_then(|d| SessionDescription::deserialize(d).ok())
        .ok_or_else(|| refuse("malformed", "`description` must be {type, sdp}", Some(KIND)))?;
    if description.sdp.len() > MAX_SDP_BYTES {
        let why = format!(
            "SDP is {} bytes, above the limit of {MAX_SDP_BYTES}",
            description.sdp.len()
        );
        return Err(refuse("bad_sdp", why, Some(KIND)));
    }
    Ok(DcMessage::Negotiate {
        metadata,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        parse(text).unwrap_err().code
    }

    #[test]
    fn messages_parse_into_values() {
        assert_eq!(parse(r#"{"type":"m.call.pong"}"#).unwrap(), DcMessage::Pong);
        let t = r#"{"type":"m.call.track_subscription","content":{"subscribe":[
            {"stream_id":"s","track_id":"t","width":640,"height":99999},
            {"stream_id":"s","track_id":"u"}],"unsubscribe":null}}"#;
        let DcMessage::TrackSubscription {
            unsubscribe,
            subscribe,
            sizes,
        } = parse(t).unwrap()
        else {
            panic!("not a subscription")
        };
        assert!(unsubscribe.is_empty());
        assert_eq!(subscribe.len(), 2);
        assert_eq!(sizes.len(), 1);
        assert_eq!((sizes[0].1, sizes[0].2), (640, 16_384));
        let n =
            r#"{"type":"m.call.negotiate","content":{"description":{"type":"offer","sdp":"v=0"}}}"#;
        assert!(matches!(
            parse(n).unwrap(),
            DcMessage::Negotiate { metadata: None, .. }
        ));
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
        let DcMessage::Unknown(k) = parse(&long).unwrap() else {
            panic!("not unknown")
        };
        assert!(k.len() <= MAX_UNKNOWN_TYPE && k.starts_with('é'));
    }

    #[test]
    fn bad_messages_are_refused_by_name() {
        assert_eq!(code("not json"), "malformed");
        assert_eq!(code(r#"{"content":{}}"#), "malformed");
        assert_eq!(
            code(r#"{"type":"m.call.track_subscription","content":{"subscribe":[1]}}"#),
            "malformed"
        );
        assert_eq!(
            code(r#"{"type":"m.call.negotiate","content":{"description":{"sdp":"v=0"}}}"#),
            "malformed"
        );
        let big = format!(
            r#"{{"type":"m.call.negotiate","content":{{"description":{{"type":"offer","sdp":"{}"}}}}}}"#,
            "a".repeat(MAX_SDP_BYTES + 1)
        );
        assert_eq!(code(&big), "bad_sdp");
        assert_eq!(
            code(r#"{"type":"m.call.sdp_stream_metadata_changed","content":{}}"#),
            "malformed"
        );
        let bad_md = r#"{"type":"m.call.sdp_stream_metadata_changed","content":{"sdp_stream_metadata":{"s":{"purpose":7}}}}"#;
        assert_eq!(code(bad_md), "bad_metadata");
        assert_eq!(
            parse(bad_md).unwrap_err().request_type,
            Some("m.call.sdp_stream_metadata_changed")
        );
    }
}
