//! The inbox: to-device events from the sync loop, rate-limited per sender and handled in
//! order by a worker per sender (docs/protocol.md §3).

use super::*;

impl Signaling {
    /// Token bucket per sender; false when the event must be dropped.
    pub(super) fn admit(&self, sender: &UserId) -> bool {
        let rate = self.cfg.signaling_rate_per_sec as f64;
        let burst = self.cfg.signaling_burst as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
        }
        let b = buckets.entry(sender.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Entry point from the sync loop's to-device handler: cheap, never blocks the sync.
    pub fn on_to_device(self: &Arc<Self>, raw: Raw<AnyToDeviceEvent>, enc: Option<EncryptionInfo>) {
        let text = raw.json().get();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Some(event_type) = v.get("type").and_then(Value::as_str) else {
            return;
        };
        if !event_type.starts_with("m.call.") {
            return;
        }
        let Some(sender) = v
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| UserId::parse(s).ok())
        else {
            return;
        };
        if !self.admit(&sender) {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            self.stats.record(event_type, RATE_LIMITED);
            debug!(%sender, event_type, "signaling rate limit: dropped");
            return;
        }
        let job = Job {
            event_type: event_type.to_owned(),
            sender: sender.clone(),
            content: v.get("content").cloned().unwrap_or(Value::Null),
            raw_len: text.len(),
            encryption: enc,
        };
        // Jobs are sent under the workers lock, so a worker retiring under the same lock
        // never strands one.
        let mut workers = self.workers.lock().unwrap();
        let job = match workers.get(&sender) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        workers.insert(sender.clone(), tx);
        tokio::spawn(self.clone().worker(sender, rx));
    }

    pub(super) async fn worker(
        self: Arc<Self>,
        sender: OwnedUserId,
        mut rx: mpsc::UnboundedReceiver<Job>,
    ) {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(job)) => self.handle(job).await,
                Ok(None) => return,
                Err(_) => {
                    // Idle: retire, unless a job raced in.
                    let mut workers = self.workers.lock().unwrap();
                    if rx.is_empty() {
                        workers.remove(&sender);
                        return;
                    }
                }
            }
        }
    }

    pub(super) async fn handle(self: &Arc<Self>, job: Job) {
        let msg = match protocol::parse(&job.event_type, &job.content, job.raw_len) {
            Ok(m) => m,
            Err(Rejection::Ignore(why)) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                self.stats.record(&job.event_type, IGNORED);
                debug!(sender = %job.sender, event_type = %job.event_type, why, "ignored");
                return;
            }
            Err(Rejection::BadRequest(why)) => {
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                self.stats.record(&job.event_type, BAD_REQUEST);
                warn!(sender = %job.sender, event_type = %job.event_type, error = %why, "malformed signaling message");
                self.reply_bad_request(&job, &why).await;
                return;
            }
        };
        let encrypted = job.encryption.is_some();
        match &msg.body {
            Body::Invite { .. } => self.on_invite(&job, msg, encrypted).await,
            Body::Candidates(list) => {
                let Some(s) = self.session_of(&job.sender, &msg.device_id) else {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                };
                if s.call_id != msg.call_id || !self.olm_sender_ok(&job, &msg) {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                }
                self.stats.record(&job.event_type, ACCEPTED);
                s.encrypted.store(encrypted, Ordering::Relaxed);
                for c in list {
                    if c.candidate.is_empty() {
                        continue;
                    }
                    if let Err(e) = self
                        .sfu
                        .add_remote_candidate(&s.conference, &s.participant, c.clone())
                        .await
                    {
                        debug!(participant = %s.participant, error = %e, "remote candidate refused");
                    }
                }
            }
            Body::SelectAnswer { selected_party_id } => {
                let Some(s) = self.session_of(&job.sender, &msg.device_id) else {
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                };
                self.stats.record(&job.event_type, ACCEPTED);
                if s.call_id == msg.call_id && selected_party_id != &self.own_device {
                    info!(participant = %s.participant, "client selected another party; dropping the session");
                    s.client_ended.store(true, Ordering::Relaxed);
                    let _ = self
                        .sfu
                        .leave(&s.conference, &s.participant, HangupReason::UserHangup)
                        .await;
                }
            }
            Body::Hangup { reason } => {
                let Some(s) = self.session_of(&job.sender, &msg.device_id) else {
                    self.stats.record(&job.event_type, IGNORED);
                    return;
                };
                let ok = s.call_id == msg.call_id && self.olm_sender_ok(&job, &msg);
                self.stats
                    .record(&job.event_type, if ok { ACCEPTED } else { IGNORED });
                if ok {
                    info!(participant = %s.participant, reason = reason.as_deref().unwrap_or(""), "client hung up");
                    s.client_ended.store(true, Ordering::Relaxed);
                    let _ = self
                        .sfu
                        .leave(&s.conference, &s.participant, HangupReason::UserHangup)
                        .await;
                }
            }
        }
    }

    pub(super) fn olm_sender_ok(&self, job: &Job, msg: &CallMessage) -> bool {
        match &job.encryption {
            None => true,
            Some(enc) => {
                enc.sender == job.sender
                    && enc.sender_device.as_ref().map(|d| d.as_str())
                        == Some(msg.device_id.as_str())
            }
        }
    }

    pub(super) async fn reply_bad_request(&self, job: &Job, why: &str) {
        // Reply only when the message names enough to address it: its call, and the
        // device it came from (Olm names it; a plaintext invite without one, or with an
        // empty one, is answered on all the sender's devices: only the client with that
        // call acts on the hangup).
        let c = &job.content;
        let Some(call_id) = c.get("call_id").and_then(Value::as_str) else {
            return;
        };
        if job.event_type != "m.call.invite" {
            return;
        }
        let olm_device = job
            .encryption
            .as_ref()
            .and_then(|e| e.sender_device.as_ref())
            .map(|d| d.to_string());
        let claimed = c
            .get("device_id")
            .or_else(|| c.get("party_id"))
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty());
        let device = match (&olm_device, claimed) {
            (Some(d), _) => d.as_str(),
            (None, Some(d)) => d,
            (None, None) if job.encryption.is_none() => ALL_DEVICES,
            (None, None) => return,
        };
        let reply = ReplyOwned {
            call_id: call_id.to_owned(),
            conf_id: c
                .get("conf_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            room_id: c.get("room_id").and_then(Value::as_str).map(str::to_owned),
            own_device_id: self.own_device.clone(),
            dest_session_id: c
                .get("sender_session_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
        let content = reply.borrow().hangup("sluice.bad_request", Some(why));
        self.send(
            &job.sender,
            device,
            "m.call.hangup",
            content,
            job.encryption.is_some(),
        )
        .await;
        self.stats.hangups_sent.fetch_add(1, Ordering::Relaxed);
    }
}
