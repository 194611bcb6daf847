//! The participant's data channel: messages in (bounded) and out.

use super::*;

/// Reads the participant's data channel and turns its messages into events.
pub(super) async fn data_channel_loop(p: Weak<Participant>, dc: Arc<dyn DataChannel>) {
    while let Some(evt) = dc.poll().await {
        let Some(part) = p.upgrade() else { return };
        match evt {
            DataChannelEvent::OnOpen => part.emit(SfuEventKind::DataChannelOpen),
            DataChannelEvent::OnMessage(msg) => {
                let refusal = if !msg.is_string {
                    Some("binary data-channel messages are not accepted".to_owned())
                } else if msg.data.len() > MAX_DATA_CHANNEL_MESSAGE {
                    Some(format!(
                        "message of {} bytes is above the {MAX_DATA_CHANNEL_MESSAGE}-byte limit",
                        msg.data.len()
                    ))
                } else {
                    None
                };
                let text = match refusal {
                    Some(r) => Err(r),
                    None => String::from_utf8(msg.data.to_vec())
                        .map_err(|_| "data-channel text is not UTF-8".to_owned()),
                };
                match text {
                    Ok(text) => part.emit(SfuEventKind::DataChannelMessage(text)),
                    Err(reason) => {
                        warn!(participant = %part.id, bytes = msg.data.len(), %reason, "refusing a data-channel message");
                        if let Some(inner) = part.inner.upgrade() {
                            inner
                                .stats
                                .data_channel_messages_refused
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        part.emit(SfuEventKind::DataChannelRefused(reason));
                    }
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
}

impl Participant {
    pub(crate) async fn send_data(&self, text: &str) -> Result<(), SfuError> {
        if text.len() > MAX_DATA_CHANNEL_MESSAGE {
            return Err(SfuError::DataChannel(format!(
                "message of {} bytes is above the {MAX_DATA_CHANNEL_MESSAGE}-byte limit",
                text.len()
            )));
        }
        let dc = self
            .dc
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| SfuError::DataChannel("no data channel yet".into()))?;
        dc.send_text(text)
            .await
            .map_err(|e| SfuError::DataChannel(e.to_string()))
    }
}
