//! The participant's data channel: messages in (bounded in size, rate and backlog) and
//! out.

use super::*;

/// A participant's data-channel allowance: a token bucket of messages per second, and a
/// bound on messages waiting to be handled (see [`crate::sfu::DataChannelText`]).
struct Allowance {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    queue: usize,
    /// Its strong count less one is the messages emitted and not yet handled.
    waiting: Arc<()>,
    /// The client was told of the current run of dropped messages.
    told: bool,
}

impl Allowance {
    fn new(cfg: &crate::config::SfuConfig) -> Self {
        let burst = f64::from(cfg.data_channel_burst);
        Self {
            rate: f64::from(cfg.data_channel_rate_per_sec),
            burst,
            tokens: burst,
            at: Instant::now(),
            queue: cfg.data_channel_queue,
            waiting: Arc::new(()),
            told: false,
        }
    }

    /// Whether one more message may go in now; if not, why, and whether to tell the
    /// client (once per run of dropped messages: a run ends when the allowance has
    /// recovered to half its burst).
    fn admit(&mut self, now: Instant) -> Result<(), (&'static str, bool)> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        // One reference is the allowance's own.
        let refusal = if Arc::strong_count(&self.waiting) > self.queue {
            "too many data-channel messages are waiting to be handled"
        } else if self.tokens < 1.0 {
            "data-channel messages above the rate limit are dropped"
        } else {
            self.tokens -= 1.0;
            if self.tokens >= self.burst / 2.0 {
                self.told = false;
            }
            return Ok(());
        };
        Err((refusal, !std::mem::replace(&mut self.told, true)))
    }
}

/// Reads the participant's data channel and turns its messages into events, within the
/// participant's allowance (`sfu.data_channel_*`).
pub(super) async fn data_channel_loop(p: Weak<Participant>, dc: Arc<dyn DataChannel>) {
    let mut allowance = match p.upgrade().and_then(|p| p.inner.upgrade()) {
        Some(inner) => Allowance::new(&inner.config),
        None => return,
    };
    while let Some(evt) = dc.poll().await {
        let Some(part) = p.upgrade() else { return };
        match evt {
            DataChannelEvent::OnOpen => part.emit(SfuEventKind::DataChannelOpen),
            DataChannelEvent::OnMessage(msg) => {
                if let Err((reason, tell)) = allowance.admit(Instant::now()) {
                    if let Some(inner) = part.inner.upgrade() {
                        inner
                            .stats
                            .data_channel_messages_limited
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // A flood gets one reply and one log line.
                    if tell {
                        warn!(participant = %part.id, conference = %part.conference_id, reason, "dropping data-channel messages");
                        part.emit(SfuEventKind::DataChannelRefused {
                            code: "rate_limited",
                            reason: reason.to_owned(),
                        });
                    }
                    continue;
                }
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
                    Ok(text) => part.emit(SfuEventKind::DataChannelMessage(
                        crate::sfu::DataChannelText::new(text, &allowance.waiting),
                    )),
                    Err(reason) => {
                        warn!(participant = %part.id, conference = %part.conference_id, bytes = msg.data.len(), %reason, "refusing a data-channel message");
                        if let Some(inner) = part.inner.upgrade() {
                            inner
                                .stats
                                .data_channel_messages_refused
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        part.emit(SfuEventKind::DataChannelRefused {
                            code: "message_refused",
                            reason,
                        });
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
