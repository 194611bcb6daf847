//! The participant's data channel: messages in (bounded in size, rate and backlog) and
//! out.

use super::*;

/// A participant's data-channel allowance: a token bucket of messages per second, and a
/// bound on messages waiting to be handled (see [`crate::sfu::DataChannelText`]).
pub(super) struct Allowance {
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
    pub(super) fn new(cfg: &crate::config::SfuConfig) -> Self {
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

/// Reads one of the participant's data channels and turns its messages into events, within
/// the participant's allowance (`sfu.data_channel_*`, shared by all its channels).
pub(super) async fn data_channel_loop(
    p: Weak<Participant>,
    dc: Arc<dyn DataChannel>,
    label: Arc<str>,
) {
    while let Some(evt) = dc.poll().await {
        let Some(part) = p.upgrade() else { return };
        match evt {
            DataChannelEvent::OnOpen => part.emit(SfuEventKind::DataChannelOpen),
            DataChannelEvent::OnMessage(msg) => {
                let admitted = {
                    let mut allowance = part.allowance.lock().unwrap();
                    allowance
                        .admit(Instant::now())
                        .map(|()| allowance.waiting.clone())
                };
                let waiting = match admitted {
                    Ok(w) => w,
                    Err((reason, tell)) => {
                        part.count(|s| &s.data_channel_messages_limited);
                        // A flood gets one reply and one log line.
                        if tell {
                            warn!(participant = %part.id, conference = %part.conference_id, %label, reason, "dropping data-channel messages");
                            part.emit(SfuEventKind::DataChannelRefused {
                                code: "rate_limited",
                                reason: reason.to_owned(),
                            });
                        }
                        continue;
                    }
                };
                let refusal = if msg.data.len() > MAX_DATA_CHANNEL_MESSAGE {
                    Some(format!(
                        "message of {} bytes is above the {MAX_DATA_CHANNEL_MESSAGE}-byte limit",
                        msg.data.len()
                    ))
                } else if part.data == DataChannels::Text && !msg.is_string {
                    Some("binary data-channel messages are not accepted".to_owned())
                } else {
                    None
                };
                let bytes = msg.data.len();
                let event = match (refusal, part.data) {
                    (Some(r), _) => Err(r),
                    (None, DataChannels::Packets) => Ok(SfuEventKind::DataPacket(
                        crate::sfu::DataChannelPacket::new(
                            label.clone(),
                            msg.data.freeze(),
                            &waiting,
                        ),
                    )),
                    (None, DataChannels::Text) => String::from_utf8(msg.data.to_vec())
                        .map(|text| {
                            SfuEventKind::DataChannelMessage(crate::sfu::DataChannelText::new(
                                text, &waiting,
                            ))
                        })
                        .map_err(|_| "data-channel text is not UTF-8".to_owned()),
                };
                match event {
                    Ok(event) => part.emit(event),
                    Err(reason) => {
                        warn!(participant = %part.id, conference = %part.conference_id, %label, bytes, %reason, "refusing a data-channel message");
                        part.count(|s| &s.data_channel_messages_refused);
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
    /// Adds one to a counter of the instance's statistics.
    fn count(&self, which: impl Fn(&crate::sfu::Stats) -> &std::sync::atomic::AtomicU64) {
        if let Some(inner) = self.inner.upgrade() {
            which(&inner.stats).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The data channel labelled `label` (None: the first one).
    fn data_channel(&self, label: Option<&str>) -> Result<Arc<dyn DataChannel>, SfuError> {
        let dcs = self.dcs.lock().unwrap();
        match label {
            None => dcs.first(),
            Some(l) => dcs.iter().find(|(have, _)| &**have == l),
        }
        .map(|(_, dc)| dc.clone())
        .ok_or_else(|| match label {
            None => SfuError::DataChannel("no data channel yet".into()),
            Some(l) => SfuError::DataChannel(format!("no data channel labelled {l:?}")),
        })
    }

    pub(crate) async fn send_data(&self, text: &str) -> Result<(), SfuError> {
        if text.len() > MAX_DATA_CHANNEL_MESSAGE {
            return Err(SfuError::DataChannel(format!(
                "message of {} bytes is above the {MAX_DATA_CHANNEL_MESSAGE}-byte limit",
                text.len()
            )));
        }
        self.data_channel(None)?
            .send_text(text)
            .await
            .map_err(|e| SfuError::DataChannel(e.to_string()))
    }

    pub(crate) async fn send_data_packet(&self, label: &str, data: &[u8]) -> Result<(), SfuError> {
        if data.len() > MAX_DATA_CHANNEL_MESSAGE {
            return Err(SfuError::DataChannel(format!(
                "message of {} bytes is above the {MAX_DATA_CHANNEL_MESSAGE}-byte limit",
                data.len()
            )));
        }
        let dc = self.data_channel(Some(label))?;
        let queued = dc.outstanding_bytes().await.unwrap_or(0);
        if queued + data.len() > MAX_DATA_CHANNEL_BACKLOG {
            return Err(SfuError::DataChannelBacklog(queued));
        }
        dc.send(bytes::BytesMut::from(data))
            .await
            .map_err(|e| SfuError::DataChannel(e.to_string()))
    }
}
