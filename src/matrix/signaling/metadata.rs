//! Stream metadata as each client sees it (docs/protocol.md §5) and the active speaker
//! announcements.

use super::*;

impl Signaling {
    /// Tells the media core which of the session's streams are screenshares (the
    /// `purpose` of its stream metadata, docs/protocol.md §5), for the bandwidth allocator.
    pub(super) fn apply_purposes(&self, s: &Session) {
        let streams: Vec<String> = s
            .metadata
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.get("purpose").and_then(Value::as_str) == Some("m.screenshare"))
            .map(|(id, _)| id.clone())
            .collect();
        if let Err(e) = self
            .sfu
            .set_screenshare_streams(&s.conference, &s.participant, streams)
        {
            debug!(participant = %s.participant, error = %e, "stream purposes not applied");
        }
    }

    /// Stream metadata of everyone but `viewer` in its conference: the streams their
    /// clients declared, restricted to tracks actually published.
    pub(super) fn metadata_for(&self, viewer: &Session) -> Value {
        let tracks = self.sfu.published_tracks(&viewer.conference);
        let sessions: Vec<Arc<Session>> = self.sessions.lock().unwrap().values().cloned().collect();
        let mut out = Map::new();
        for t in tracks {
            if t.publisher == viewer.participant {
                continue;
            }
            let Some(owner) = sessions.iter().find(|s| s.participant == t.publisher) else {
                continue;
            };
            let declared = owner
                .metadata
                .lock()
                .unwrap()
                .get(&t.track.stream_id)
                .cloned()
                .unwrap_or_else(|| json!({}));
            let entry = out.entry(t.track.stream_id.clone()).or_insert_with(|| {
                json!({
                    "user_id": owner.user_id.as_str(),
                    "device_id": owner.device_id,
                    "purpose": declared.get("purpose").cloned().unwrap_or(json!("m.usermedia")),
                    "audio_muted": declared.get("audio_muted").cloned().unwrap_or(json!(false)),
                    "video_muted": declared.get("video_muted").cloned().unwrap_or(json!(false)),
                    "tracks": {},
                })
            });
            let kind = match t.kind {
                MediaKind::Audio => "audio",
                MediaKind::Video => "video",
            };
            let mut track = json!({"kind": kind});
            if let Some(d) = declared
                .get("tracks")
                .and_then(|ts| ts.get(&t.track.track_id))
            {
                for k in ["width", "height"] {
                    if let Some(v) = d.get(k) {
                        track[k] = v.clone();
                    }
                }
            }
            entry["tracks"][t.track.track_id.clone()] = track;
        }
        Value::Object(out)
    }

    /// Sends `sluice.active_speakers` to `s` once its channel is open.
    pub(super) async fn announce_speakers(&self, s: &Session, list: &[crate::sfu::Speaker]) {
        if !s.dc_open.load(Ordering::Relaxed) {
            return;
        }
        let speakers: Vec<Value> = {
            let sessions = self.sessions.lock().unwrap();
            list.iter()
                .filter_map(|sp| {
                    let owner = sessions.get(&sp.participant)?;
                    Some(json!({
                        "user_id": owner.user_id.as_str(),
                        "device_id": owner.device_id,
                        "stream_id": sp.stream_id,
                        "level": sp.level,
                    }))
                })
                .collect()
        };
        self.send_dc(s, "sluice.active_speakers", json!({"speakers": speakers}))
            .await;
    }

    pub(super) async fn broadcast_metadata(&self, conference: &str) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.conference == conference && s.dc_open.load(Ordering::Relaxed))
            .cloned()
            .collect();
        for s in sessions {
            self.send_metadata(&s).await;
        }
    }

    /// Sends `s` the stream metadata it sees now.
    pub(super) async fn send_metadata(&self, s: &Session) {
        let md = self.metadata_for(s);
        self.send_dc(
            s,
            "m.call.sdp_stream_metadata_changed",
            json!({"sdp_stream_metadata": md}),
        )
        .await;
    }
}
