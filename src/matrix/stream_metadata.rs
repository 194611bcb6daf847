//! Bounds on the stream metadata a client declares (`org.matrix.msc3077.sdp_stream_metadata`,
//! docs/protocol.md §5), which Sluice stores per session and relays to everyone else in the
//! call. Pure functions over JSON.
//!
//! What others see of it is only what Sluice reads: per stream `purpose`, `audio_muted`,
//! `video_muted`, and per track `width` and `height`. So [`sanitize`] keeps exactly those,
//! checks their types and values, and refuses the declaration as a whole when anything in
//! it is out of bounds (a client sending HTML as a `purpose` or 60 KB of it learns why).

use serde_json::{Map, Value};

/// Most streams one participant declares.
pub const MAX_STREAMS: usize = 16;
/// Most tracks one declared stream lists.
pub const MAX_TRACKS_PER_STREAM: usize = 8;
/// Longest stream or track id: an `msid` id is 1 to 64 characters (RFC 8830).
pub const MAX_ID_LEN: usize = 64;
/// Largest `width` or `height`.
pub const MAX_DIMENSION: u64 = 16_384;
/// The purposes a stream may declare.
pub const PURPOSES: [&str; 2] = ["m.usermedia", "m.screenshare"];

/// Checks a declaration and returns the part of it Sluice keeps and relays; the error
/// names the first field out of bounds.
pub fn sanitize(md: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    if md.len() > MAX_STREAMS {
        return Err(format!(
            "stream metadata declares {} streams, more than {MAX_STREAMS}",
            md.len()
        ));
    }
    let mut out = Map::new();
    for (stream_id, stream) in md {
        check_id("stream id", stream_id)?;
        let Some(stream) = stream.as_object() else {
            return Err(format!("stream {stream_id:?}: metadata must be an object"));
        };
        let mut kept = Map::new();
        if let Some(p) = stream.get("purpose").filter(|p| !p.is_null()) {
            match p.as_str() {
                Some(p) if PURPOSES.contains(&p) => {
                    kept.insert("purpose".into(), Value::from(p));
                }
                _ => {
                    return Err(format!(
                        "stream {stream_id:?}: `purpose` must be \"m.usermedia\" or \"m.screenshare\""
                    ));
                }
            }
        }
        for key in ["audio_muted", "video_muted"] {
            match stream.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => {
                    kept.insert(key.into(), Value::Bool(*b));
                }
                Some(_) => {
                    return Err(format!(
                        "stream {stream_id:?}: `{key}` must be true or false"
                    ));
                }
            }
        }
        match stream.get("tracks") {
            None | Some(Value::Null) => {}
            Some(Value::Object(tracks)) => {
                kept.insert(
                    "tracks".into(),
                    Value::Object(sanitize_tracks(stream_id, tracks)?),
                );
            }
            Some(_) => return Err(format!("stream {stream_id:?}: `tracks` must be an object")),
        }
        out.insert(stream_id.clone(), Value::Object(kept));
    }
    Ok(out)
}

fn sanitize_tracks(
    stream_id: &str,
    tracks: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    if tracks.len() > MAX_TRACKS_PER_STREAM {
        return Err(format!(
            "stream {stream_id:?} lists {} tracks, more than {MAX_TRACKS_PER_STREAM}",
            tracks.len()
        ));
    }
    let mut out = Map::new();
    for (track_id, track) in tracks {
        check_id("track id", track_id)?;
        let Some(track) = track.as_object() else {
            return Err(format!("track {track_id:?}: metadata must be an object"));
        };
        let mut kept = Map::new();
        for key in ["width", "height"] {
            match track.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_u64() {
                    Some(n) if n <= MAX_DIMENSION => {
                        kept.insert(key.into(), Value::from(n));
                    }
                    _ => {
                        return Err(format!(
                            "track {track_id:?}: `{key}` must be a whole number from 0 to {MAX_DIMENSION}"
                        ));
                    }
                },
            }
        }
        out.insert(track_id.clone(), Value::Object(kept));
    }
    Ok(out)
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_ID_LEN {
        return Err(format!(
            "a {what} must be 1 to {MAX_ID_LEN} characters (got {})",
            id.chars().count()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("a {what} must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn keeps_what_is_relayed_and_drops_the_rest() {
        let md = obj(
            json!({"s1": {"purpose": "m.screenshare", "audio_muted": true,
            "extra": "x".repeat(1000), "tracks": {"t1": {"width": 1280, "height": 720,
            "kind": "video", "junk": [1, 2, 3]}}}}),
        );
        let out = sanitize(&md).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"s1": {"purpose": "m.screenshare", "audio_muted": true,
                "tracks": {"t1": {"width": 1280, "height": 720}}}})
        );
        assert!(sanitize(&Map::new()).unwrap().is_empty());
    }

    #[test]
    fn out_of_bounds_values_are_refused_by_name() {
        let cases = [
            (json!({"s": {"purpose": "<b>hi</b>"}}), "`purpose` must be"),
            (json!({"s": {"purpose": 7}}), "`purpose` must be"),
            (
                json!({"s": {"audio_muted": "yes"}}),
                "`audio_muted` must be true or false",
            ),
            (json!({"s": {"tracks": []}}), "`tracks` must be an object"),
            (json!({"s": "x"}), "metadata must be an object"),
            (
                json!({"s": {"tracks": {"t": {"width": -1}}}}),
                "`width` must be a whole number",
            ),
            (
                json!({"s": {"tracks": {"t": {"height": 99_999}}}}),
                "`height` must be a whole number",
            ),
            (
                json!({"s": {"tracks": {"t": 1}}}),
                "metadata must be an object",
            ),
            (json!({"": {}}), "stream id must be 1 to 64"),
            (json!({"a\nb": {}}), "control characters"),
        ];
        for (md, want) in cases {
            let err = sanitize(&obj(md.clone())).unwrap_err();
            assert!(err.contains(want), "{md}: {err}");
        }
        let long = "x".repeat(65);
        let err = sanitize(&obj(json!({"s": {"tracks": {long: {}}}}))).unwrap_err();
        assert!(
            err.contains("track id must be 1 to 64 characters (got 65)"),
            "{err}"
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("s{i}"), json!({}))).collect();
        assert!(sanitize(&many).unwrap_err().contains("17 streams"));
        let tracks: Map<String, Value> = (0..9).map(|i| (format!("t{i}"), json!({}))).collect();
        let err = sanitize(&obj(json!({"s": {"tracks": tracks}}))).unwrap_err();
        assert!(err.contains("9 tracks"), "{err}");
    }
}
