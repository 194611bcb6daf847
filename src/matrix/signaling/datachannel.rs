//! Acting on data-channel messages from clients (docs/protocol.md §4), parsed first by
//! [`crate::matrix::dc_message`].

use super::*;
use crate::matrix::dc_message::{self, DcMessage};

impl Signaling {
    pub(super) async fn on_dc_message(&self, s: &Session, text: &str) {
        let msg = match dc_message::parse(text) {
            Ok(m) => m,
            Err(r) => return self.send_error(s, r.code, &r.message, r.request_type).await,
        };
        let kind = msg.request_type();
        match msg {
            DcMessage::Pong => *s.last_pong.lock().unwrap() = Instant::now(),
            DcMessage::TrackSubscription {
                unsubscribe,
                subscribe,
                sizes,
            } => {
                if !unsubscribe.is_empty()
                    && let Err(e) = self
                        .sfu
                        .unsubscribe(&s.conference, &s.participant, &unsubscribe)
                        .await
                {
                    return self.send_error(s, e.code(), &e.to_string(), kind).await;
                }
                if !subscribe.is_empty()
                    && let Err(e) = self
                        .sfu
                        .subscribe(&s.conference, &s.participant, &subscribe)
                        .await
                {
                    return self.send_error(s, e.code(), &e.to_string(), kind).await;
                }
                // Sizes steer the simulcast layer; repeating a subscription with a new
                // size re-selects without renegotiation.
                for (t, w, h) in sizes {
                    if let Err(e) = self
                        .sfu
                        .set_track_size(&s.conference, &s.participant, &t, w, h)
                        .await
                    {
                        self.send_error(s, e.code(), &e.to_string(), kind).await;
                    }
                }
            }
            DcMessage::Negotiate {
                metadata,
                description,
            } => {
                if let Some(md) = metadata {
                    *s.metadata.lock().unwrap() = md;
                    self.apply_purposes(s);
                }
                let is_offer = description.kind == SdpKind::Offer;
                if let Err(e) = self
                    .sfu
                    .remote_description(&s.conference, &s.participant, description)
                    .await
                {
                    return self.send_error(s, e.code(), &e.to_string(), kind).await;
                }
                if is_offer {
                    self.broadcast_metadata(&s.conference).await;
                }
            }
            DcMessage::MetadataChanged(md) => {
                *s.metadata.lock().unwrap() = md;
                self.apply_purposes(s);
                self.broadcast_metadata(&s.conference).await;
            }
            DcMessage::Unknown(other) => {
                debug!(participant = %s.participant, kind = %other, "unknown data-channel message")
            }
        }
    }
}
