//! Data-channel messages from clients (docs/protocol.md §4).

use super::*;
use crate::matrix::stream_metadata;

impl Signaling {
    pub(super) async fn on_dc_message(&self, s: &Session, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return self
                .send_error(s, "malformed", "data-channel message is not JSON", None)
                .await;
        };
        let Some(kind) = v.get("type").and_then(Value::as_str) else {
            return self
                .send_error(s, "malformed", "data-channel message has no `type`", None)
                .await;
        };
        let content = v.get("content").cloned().unwrap_or_else(|| json!({}));
        match kind {
            "m.call.pong" => *s.last_pong.lock().unwrap() = Instant::now(),
            "m.call.track_subscription" => {
                let parse = |key: &str| -> Result<Vec<TrackRef>, String> {
                    match content.get(key) {
                        None | Some(Value::Null) => Ok(Vec::new()),
                        Some(v) => serde_json::from_value::<Vec<TrackRef>>(v.clone())
                            .map_err(|e| format!("`{key}`: {e}")),
                    }
                };
                let (unsub, sub) = match (parse("unsubscribe"), parse("subscribe")) {
                    (Ok(u), Ok(s)) => (u, s),
                    (Err(e), _) | (_, Err(e)) => {
                        return self.send_error(s, "malformed", &e, Some(kind)).await;
                    }
                };
                if !unsub.is_empty()
                    && let Err(e) = self
                        .sfu
                        .unsubscribe(&s.conference, &s.participant, &unsub)
                        .await
                {
                    return self
                        .send_error(s, e.code(), &e.to_string(), Some(kind))
                        .await;
                }
                if !sub.is_empty()
                    && let Err(e) = self
                        .sfu
                        .subscribe(&s.conference, &s.participant, &sub)
                        .await
                {
                    return self
                        .send_error(s, e.code(), &e.to_string(), Some(kind))
                        .await;
                }
                // Sizes steer the simulcast layer; repeating a subscription with a new
                // size re-selects without renegotiation.
                for entry in content
                    .get("subscribe")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (Some(w), Some(h)) = (
                        entry.get("width").and_then(Value::as_u64),
                        entry.get("height").and_then(Value::as_u64),
                    ) else {
                        continue;
                    };
                    let Ok(t) = serde_json::from_value::<TrackRef>(entry.clone()) else {
                        continue;
                    };
                    let (w, h) = (w.min(16_384) as u32, h.min(16_384) as u32);
                    if let Err(e) = self
                        .sfu
                        .set_track_size(&s.conference, &s.participant, &t, w, h)
                        .await
                    {
                        self.send_error(s, e.code(), &e.to_string(), Some(kind))
                            .await;
                    }
                }
            }
            "m.call.negotiate" => {
                if let Some(md) = content
                    .get("sdp_stream_metadata")
                    .and_then(Value::as_object)
                {
                    match stream_metadata::sanitize(md) {
                        Ok(md) => *s.metadata.lock().unwrap() = md,
                        Err(e) => return self.send_error(s, "bad_metadata", &e, Some(kind)).await,
                    }
                    self.apply_purposes(s);
                }
                let desc = content
                    .get("description")
                    .cloned()
                    .and_then(|d| serde_json::from_value::<SessionDescription>(d).ok());
                let Some(desc) = desc else {
                    return self
                        .send_error(
                            s,
                            "malformed",
                            "`description` must be {type, sdp}",
                            Some(kind),
                        )
                        .await;
                };
                if desc.sdp.len() > protocol::MAX_SDP_BYTES {
                    let why = format!(
                        "SDP is {} bytes, above the limit of {}",
                        desc.sdp.len(),
                        protocol::MAX_SDP_BYTES
                    );
                    return self.send_error(s, "bad_sdp", &why, Some(kind)).await;
                }
                let is_offer = desc.kind == SdpKind::Offer;
                if let Err(e) = self
                    .sfu
                    .remote_description(&s.conference, &s.participant, desc)
                    .await
                {
                    return self
                        .send_error(s, e.code(), &e.to_string(), Some(kind))
                        .await;
                }
                if is_offer {
                    self.broadcast_metadata(&s.conference).await;
                }
            }
            "m.call.sdp_stream_metadata_changed" => {
                if let Some(md) = content
                    .get("sdp_stream_metadata")
                    .and_then(Value::as_object)
                {
                    match stream_metadata::sanitize(md) {
                        Ok(md) => *s.metadata.lock().unwrap() = md,
                        Err(e) => return self.send_error(s, "bad_metadata", &e, Some(kind)).await,
                    }
                    self.apply_purposes(s);
                    self.broadcast_metadata(&s.conference).await;
                } else {
                    self.send_error(
                        s,
                        "malformed",
                        "`sdp_stream_metadata` must be an object",
                        Some(kind),
                    )
                    .await;
                }
            }
            other => {
                debug!(participant = %s.participant, kind = other, "unknown data-channel message")
            }
        }
    }
}
