//! The to-device wire format (docs/protocol.md §3): parsing what clients send and building
//! what Sluice replies. Pure functions over JSON; no Matrix client here.

use crate::sfu::IceCandidate;
use serde_json::{Map, Value, json};

/// Largest to-device event accepted (docs/protocol.md §8).
pub const MAX_TO_DEVICE_BYTES: usize = 60 * 1024;
/// Largest `m.call.answer` content Sluice sends in the clear: the to-device limit less the
/// request's envelope.
pub const ANSWER_BUDGET: usize = 56 * 1024;
/// Largest `m.call.answer` content Sluice Olm-encrypts: the ciphertext is base64 of the
/// content with its envelope, a third larger.
pub const ANSWER_BUDGET_OLM: usize = 42 * 1024;
/// Largest SDP accepted (docs/protocol.md §8).
pub const MAX_SDP_BYTES: usize = 32 * 1024;
/// Sluice's session id on the wire.
pub const SFU_SESSION_ID: &str = "sfu";
/// Protocol version Sluice speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest `conf_id`, `device_id`, `sender_session_id` and `room_id` accepted: they become
/// keys, log fields and fields relayed to others.
pub const MAX_ID_BYTES: usize = 255;
/// Stream metadata key in to-device content.
pub const METADATA_KEY: &str = "org.matrix.msc3077.sdp_stream_metadata";

/// A call signaling message from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct CallMessage {
    /// Per peer connection, chosen by the client.
    pub call_id: String,
    /// The membership's call id (`""` for the room call).
    pub conf_id: String,
    /// The room, when the client says (v1 clients do).
    pub room_id: Option<String>,
    /// The sender's device id (`device_id`, else `party_id`).
    pub device_id: String,
    /// The client's session id.
    pub sender_session_id: String,
    /// What the message carries.
    pub body: Body,
}

/// The type-specific part of a [`CallMessage`].
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `m.call.invite`.
    Invite {
        /// The offer SDP.
        sdp: String,
        /// `lifetime` in ms, if given.
        lifetime_ms: Option<u64>,
        /// The client's own published streams.
        metadata: Map<String, Value>,
    },
    /// `m.call.candidates`.
    Candidates(Vec<IceCandidate>),
    /// `m.call.select_answer`.
    SelectAnswer {
        /// The party the client picked.
        selected_party_id: String,
    },
    /// `m.call.hangup` or `m.call.reject`.
    Hangup {
        /// The client's reason, if any.
        reason: Option<String>,
    },
}

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not for Sluice or not a type Sluice handles: drop silently (counted).
    Ignore(&'static str),
    /// Malformed: answer with `m.call.hangup` reason `sluice.bad_request` when the message
    /// carries enough to address a reply (`call_id` …), else drop.
    BadRequest(String),
}

fn str_field<'a>(c: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Rejection> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::BadRequest(format!("`{key}` must be a string"))),
    }
}

fn required<'a>(c: &'a Map<String, Value>, key: &str) -> Result<&'a str, Rejection> {
    str_field(c, key)?.ok_or_else(|| Rejection::BadRequest(format!("`{key}` is missing")))
}

/// `value` of field `key` if it is at most [`MAX_ID_BYTES`] long and free of control
/// characters.
fn bounded<'a>(key: &str, value: &'a str) -> Result<&'a str, Rejection> {
    if value.len() > MAX_ID_BYTES {
        return Err(Rejection::BadRequest(format!(
            "`{key}` is {} bytes, above the {MAX_ID_BYTES}-byte limit",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::BadRequest(format!(
            "`{key}` must not contain control characters"
        )));
    }
    Ok(value)
}

/// Parses a to-device event's content. `raw_len` is the event's size on the wire.
pub fn parse(event_type: &str, content: &Value, raw_len: usize) -> Result<CallMessage, Rejection> {
    let kind = match event_type {
        "m.call.invite"
        | "m.call.candidates"
        | "m.call.select_answer"
        | "m.call.hangup"
        | "m.call.reject" => event_type,
        _ => return Err(Rejection::Ignore("not a call event Sluice handles")),
    };
    if raw_len > MAX_TO_DEVICE_BYTES {
        return Err(Rejection::BadRequest(format!(
            "event is {raw_len} bytes, above the {MAX_TO_DEVICE_BYTES}-byte limit"
        )));
    }
    let c = content
        .as_object()
        .ok_or_else(|| Rejection::BadRequest("content must be an object".into()))?;
    match str_field(c, "dest_session_id") {
        Ok(Some(SFU_SESSION_ID)) => {}
        _ => return Err(Rejection::Ignore("dest_session_id is not \"sfu\"")),
    }
    let call_id = required(c, "call_id")?;
    if call_id.is_empty() || call_id.len() > 255 {
        return Err(Rejection::BadRequest(
            "`call_id` must be 1-255 characters".into(),
        ));
    }
    let conf_id = bounded("conf_id", required(c, "conf_id")?)?;
    let room_id = str_field(c, "room_id")?
        .map(|r| bounded("room_id", r))
        .transpose()?
        .map(str::to_owned);
    let device_id = match str_field(c, "device_id")? {
        Some(d) => d,
        None => required(c, "party_id")?,
    };
    if device_id.is_empty() {
        return Err(Rejection::BadRequest("`device_id` is empty".into()));
    }
    let device_id = bounded("device_id", device_id)?;
    let sender_session_id = bounded("sender_session_id", required(c, "sender_session_id")?)?;
    // `version`: 1, "1" and 0 are accepted; anything else is treated as "1".
    let body = match kind {
        "m.call.invite" => {
            let offer = c
                .get("offer")
                .and_then(Value::as_object)
                .ok_or_else(|| Rejection::BadRequest("`offer` is missing".into()))?;
            if offer.get("type").and_then(Value::as_str) != Some("offer") {
                return Err(Rejection::BadRequest(
                    "`offer.type` must be \"offer\"".into(),
                ));
            }
            let sdp = offer
                .get("sdp")
                .and_then(Value::as_str)
                .ok_or_else(|| Rejection::BadRequest("`offer.sdp` must be a string".into()))?;
            if sdp.len() > MAX_SDP_BYTES {
                return Err(Rejection::BadRequest(format!(
                    "SDP is {} bytes, above the {MAX_SDP_BYTES}-byte limit",
                    sdp.len()
                )));
            }
            let lifetime_ms = match c.get("lifetime") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    Rejection::BadRequest("`lifetime` must be a non-negative number".into())
                })?),
            };
            let metadata = match c.get(METADATA_KEY) {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(m)) => {
                    super::stream_metadata::sanitize(m).map_err(Rejection::BadRequest)?
                }
                Some(_) => {
                    return Err(Rejection::BadRequest(format!(
                        "`{METADATA_KEY}` must be an object"
                    )));
                }
            };
            Body::Invite {
                sdp: sdp.to_owned(),
                lifetime_ms,
                metadata,
            }
        }
        "m.call.candidates" => {
            let list = c
                .get("candidates")
                .and_then(Value::as_array)
                .ok_or_else(|| Rejection::BadRequest("`candidates` must be a list".into()))?;
            if list.len() > 100 {
                return Err(Rejection::BadRequest("more than 100 candidates".into()));
            }
            let mut out = Vec::with_capacity(list.len());
            for v in list {
                let cand: IceCandidate = serde_json::from_value(v.clone())
                    .map_err(|e| Rejection::BadRequest(format!("malformed candidate: {e}")))?;
                out.push(cand);
            }
            Body::Candidates(out)
        }
        "m.call.select_answer" => Body::SelectAnswer {
            selected_party_id: required(c, "selected_party_id")?.to_owned(),
        },
        _ => Body::Hangup {
            reason: str_field(c, "reason").ok().flatten().map(str::to_owned),
        },
    };
    Ok(CallMessage {
        call_id: call_id.to_owned(),
        conf_id: conf_id.to_owned(),
        room_id,
        device_id: device_id.to_owned(),
        sender_session_id: sender_session_id.to_owned(),
        body,
    })
}

/// Addressing of a reply: the fields every message carries.
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    /// The client's `call_id`.
    pub call_id: &'a str,
    /// The client's `conf_id`.
    pub conf_id: &'a str,
    /// The room, when known.
    pub room_id: Option<&'a str>,
    /// Sluice's own device id.
    pub own_device_id: &'a str,
    /// The client's session id (becomes `dest_session_id`).
    pub dest_session_id: &'a str,
}

impl Reply<'_> {
    fn base(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("call_id".into(), json!(self.call_id));
        m.insert("conf_id".into(), json!(self.conf_id));
        if let Some(r) = self.room_id {
            m.insert("room_id".into(), json!(r));
        }
        m.insert("party_id".into(), json!(self.own_device_id));
        m.insert("device_id".into(), json!(self.own_device_id));
        m.insert("version".into(), json!("1"));
        m.insert("sender_session_id".into(), json!(SFU_SESSION_ID));
        m.insert("dest_session_id".into(), json!(self.dest_session_id));
        m
    }

    /// `m.call.answer` content.
    pub fn answer(&self, sdp: &str, metadata: Value) -> Value {
        let mut m = self.base();
        m.insert("answer".into(), json!({"type": "answer", "sdp": sdp}));
        m.insert(METADATA_KEY.into(), metadata);
        m.insert("sluice_version".into(), json!(PROTOCOL_VERSION));
        Value::Object(m)
    }

    /// `m.call.answer` content of at most `budget` bytes of JSON whatever the call's size:
    /// as many of `metadata`'s streams as fit (all, usually), with
    /// `"sluice_metadata_partial": true` when some were left out. The client gets the whole
    /// metadata over the data channel once it opens (docs/protocol.md §5), so a large call
    /// never makes an answer the homeserver refuses.
    pub fn answer_within(&self, sdp: &str, metadata: Value, budget: usize) -> Value {
        let full = self.answer(sdp, metadata);
        let size = |v: &Value| serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
        if size(&full) <= budget {
            return full;
        }
        let mut out = full;
        let streams = match out.get_mut(METADATA_KEY).map(Value::take) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        out[METADATA_KEY] = json!({});
        out["sluice_metadata_partial"] = json!(true);
        let mut used = size(&out);
        let mut kept = Map::new();
        for (id, stream) in streams {
            // `"id":{...},` inside the object.
            let add = size(&json!(id)) + 1 + size(&stream) + 1;
            if used + add > budget {
                continue;
            }
            used += add;
            kept.insert(id, stream);
        }
        out[METADATA_KEY] = Value::Object(kept);
        out
    }

    /// `m.call.candidates` content; `None` entries are end-of-candidates markers.
    pub fn candidates(&self, candidates: &[Option<IceCandidate>]) -> Value {
        let list: Vec<Value> = candidates
            .iter()
            .map(|c| match c {
                Some(c) => serde_json::to_value(c).unwrap_or(Value::Null),
                None => json!({"candidate": ""}),
            })
            .collect();
        let mut m = self.base();
        m.insert("candidates".into(), Value::Array(list));
        Value::Object(m)
    }

    /// `m.call.hangup` content.
    pub fn hangup(&self, reason: &str, error: Option<&str>) -> Value {
        let mut m = self.base();
        m.insert("reason".into(), json!(reason));
        if let Some(e) = error {
            m.insert("error".into(), json!(e));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Value {
        json!({"call_id": "c1", "conf_id": "", "room_id": "!r:hs", "party_id": "DEV",
            "device_id": "DEV", "version": "1", "sender_session_id": "s1",
            "dest_session_id": "sfu", "lifetime": 30000,
            "offer": {"type": "offer", "sdp": "v=0\r\n"},
            METADATA_KEY: {"stream": {"purpose": "m.usermedia"}}})
    }

    #[test]
    fn parses_an_invite() {
        let m = parse("m.call.invite", &invite(), 100).unwrap();
        assert_eq!(m.call_id, "c1");
        assert_eq!(m.room_id.as_deref(), Some("!r:hs"));
        assert_eq!(m.device_id, "DEV");
        match m.body {
            Body::Invite {
                sdp,
                lifetime_ms,
                metadata,
            } => {
                assert_eq!(sdp, "v=0\r\n");
                assert_eq!(lifetime_ms, Some(30000));
                assert!(metadata.contains_key("stream"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_forms_are_all_accepted() {
        for v in [json!(1), json!("1"), json!(0), json!("7"), json!(null)] {
            let mut c = invite();
            c["version"] = v;
            assert!(parse("m.call.invite", &c, 10).is_ok());
        }
    }

    #[test]
    fn wrong_or_missing_dest_session_is_ignored() {
        let mut c = invite();
        c["dest_session_id"] = json!("someone-else");
        assert!(matches!(
            parse("m.call.invite", &c, 10),
            Err(Rejection::Ignore(_))
        ));
        c.as_object_mut().unwrap().remove("dest_session_id");
        assert!(matches!(
            parse("m.call.invite", &c, 10),
            Err(Rejection::Ignore(_))
        ));
    }

    #[test]
    fn malformed_shapes_are_bad_requests_naming_the_field() {
        type Mutation = fn(&mut Value);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |c| drop(c.as_object_mut().unwrap().remove("call_id")),
                "call_id",
            ),
            (|c| c["call_id"] = json!(5), "call_id"),
            (|c| c["conf_id"] = json!([]), "conf_id"),
            (
                |c| drop(c.as_object_mut().unwrap().remove("offer")),
                "offer",
            ),
            (|c| c["offer"]["type"] = json!("answer"), "offer.type"),
            (|c| c["offer"]["sdp"] = json!(1), "offer.sdp"),
            (|c| c["lifetime"] = json!("long"), "lifetime"),
            (|c| c[METADATA_KEY] = json!("x"), METADATA_KEY),
            (
                |c| drop(c.as_object_mut().unwrap().remove("sender_session_id")),
                "sender_session_id",
            ),
            (
                |c| c["conf_id"] = json!("c".repeat(256)),
                "`conf_id` is 256 bytes",
            ),
            (
                |c| c["device_id"] = json!("d".repeat(300)),
                "`device_id` is 300",
            ),
            (
                |c| c["sender_session_id"] = json!("s".repeat(256)),
                "`sender_session_id` is 256",
            ),
            (
                |c| c["room_id"] = json!("r".repeat(256)),
                "`room_id` is 256",
            ),
            (
                |c| c["device_id"] = json!("D\u{1b}[31m"),
                "control characters",
            ),
            (
                |c| c[METADATA_KEY] = json!({"s": {"purpose": "<script>"}}),
                "`purpose` must be",
            ),
        ];
        for (mutate, field) in cases {
            let mut c = invite();
            mutate(&mut c);
            match parse("m.call.invite", &c, 10) {
                Err(Rejection::BadRequest(m)) => assert!(m.contains(field), "{m} / {field}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_answer_stays_within_its_budget_whatever_the_call_size() {
        let reply = Reply {
            call_id: "c",
            conf_id: "",
            room_id: Some("!r:hs"),
            own_device_id: "SFU",
            dest_session_id: "s",
        };
        let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
        // A call of 100 with the longest user and device ids and ids allowed.
        let long = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
        let mut md = Map::new();
        for i in 0..100 {
            md.insert(
                format!("{i:02}{}", long('s', 62)),
                json!({"user_id": format!("@{}:{}", long('u', 120), long('h', 120)),
                    "device_id": long('D', 255), "purpose": "m.usermedia",
                    "audio_muted": false, "video_muted": false,
                    "tracks": {long('a', 64): {"kind": "audio"},
                        long('v', 64): {"kind": "video", "width": 1280, "height": 720}}}),
            );
        }
        let sdp = "v=0\r\n".repeat(2000);
        let full = reply.answer(&sdp, Value::Object(md.clone()));
        assert!(size(&full) > MAX_TO_DEVICE_BYTES, "{}", size(&full));
        let fitted = reply.answer_within(&sdp, Value::Object(md.clone()), MAX_TO_DEVICE_BYTES);
        assert!(size(&fitted) <= MAX_TO_DEVICE_BYTES, "{}", size(&fitted));
        assert_eq!(fitted["sluice_metadata_partial"], json!(true));
        let kept = fitted[METADATA_KEY].as_object().unwrap();
        assert!(!kept.is_empty() && kept.len() < 100, "{}", kept.len());
        assert_eq!(fitted["answer"]["sdp"], json!(sdp));
        // A small call's answer is the whole one.
        let small: Map<String, Value> = md.into_iter().take(3).collect();
        let a = reply.answer_within(&sdp, Value::Object(small.clone()), MAX_TO_DEVICE_BYTES);
        assert_eq!(a, reply.answer(&sdp, Value::Object(small)));
        assert!(a.get("sluice_metadata_partial").is_none());
    }

    #[test]
    fn size_limits_are_enforced() {
        assert!(matches!(
            parse("m.call.invite", &invite(), MAX_TO_DEVICE_BYTES + 1),
            Err(Rejection::BadRequest(_))
        ));
        let mut c = invite();
        c["offer"]["sdp"] = json!("a".repeat(MAX_SDP_BYTES + 1));
        match parse("m.call.invite", &c, 100) {
            Err(Rejection::BadRequest(m)) => assert!(m.contains("SDP")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_candidates_including_end_marker() {
        let mut c = invite();
        c.as_object_mut().unwrap().remove("offer");
        c["candidates"] = json!([
            {"candidate": "candidate:1 1 udp 1 127.0.0.1 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
            {"candidate": ""}
        ]);
        let m = parse("m.call.candidates", &c, 10).unwrap();
        match m.body {
            Body::Candidates(list) => {
                assert_eq!(list.len(), 2);
                assert_eq!(list[0].sdp_mid.as_deref(), Some("0"));
                assert!(list[1].candidate.is_empty());
            }
            other => panic!("{other:?}"),
        }
        c["candidates"] = json!([{"sdpMid": "0"}]);
        assert!(matches!(
            parse("m.call.candidates", &c, 10),
            Err(Rejection::BadRequest(_))
        ));
    }

    #[test]
    fn reject_is_a_hangup_and_unknown_types_are_ignored() {
        let mut c = invite();
        c["reason"] = json!("user_hangup");
        assert!(matches!(
            parse("m.call.reject", &c, 10).unwrap().body,
            Body::Hangup { reason: Some(_) }
        ));
        assert!(matches!(
            parse("m.room_key", &c, 10),
            Err(Rejection::Ignore(_))
        ));
    }

    #[test]
    fn replies_carry_the_addressing_fields() {
        let r = Reply {
            call_id: "c1",
            conf_id: "",
            room_id: Some("!r:hs"),
            own_device_id: "SFU",
            dest_session_id: "s1",
        };
        let a = r.answer("v=0", json!({}));
        assert_eq!(a["answer"]["type"], "answer");
        assert_eq!(a["sender_session_id"], "sfu");
        assert_eq!(a["dest_session_id"], "s1");
        assert_eq!(a["party_id"], "SFU");
        let h = r.hangup("sluice.bad_request", Some("`call_id` is missing"));
        assert_eq!(h["reason"], "sluice.bad_request");
        assert_eq!(h["error"], "`call_id` is missing");
        let cands = r.candidates(&[None]);
        assert_eq!(cands["candidates"][0]["candidate"], "");
    }
}
