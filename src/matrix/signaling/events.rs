//! One session's media-core events, handled in order: renegotiation answers and offers,
//! candidates, the data channel's opening, track changes, speakers, the session's end;
//! and each session's keepalive.

use super::*;

impl Signaling {
    /// Consumes one session's media-core events, in order, until the session has left.
    /// Started after the session's answer was queued, so its candidates follow the answer.
    pub(super) async fn run_session_events(
        self: Arc<Self>,
        s: Arc<Session>,
        mut events: mpsc::UnboundedReceiver<SfuEvent>,
    ) {
        while let Some(ev) = events.recv().await {
            let left = matches!(ev.kind, SfuEventKind::Left(_));
            self.on_sfu_event(&s, ev).await;
            if left {
                return;
            }
        }
    }

    pub(super) async fn on_sfu_event(self: &Arc<Self>, s: &Arc<Session>, ev: SfuEvent) {
        let s = s.clone();
        let own = self.own_device.clone();
        match ev.kind {
            SfuEventKind::TrackPublished(_) | SfuEventKind::TrackUnpublished(_) => {
                self.broadcast_metadata(&ev.conference).await;
            }
            SfuEventKind::ActiveSpeakers(list) => self.announce_speakers(&s, &list).await,
            SfuEventKind::Answer(sdp) => self.send_negotiate(&s, "answer", &sdp).await,
            SfuEventKind::Offer(sdp) => self.send_negotiate(&s, "offer", &sdp).await,
            // Matrix sessions join with Sluice offering (OfferMode::Sluice) and text data
            // channels (DataChannels::Text).
            SfuEventKind::NeedOffer { .. }
            | SfuEventKind::DataPacket(_)
            | SfuEventKind::LayersNeeded(_) => {}
            SfuEventKind::LocalCandidate(c) => {
                s.candidates.lock().unwrap().push(c);
                if !s.flush_scheduled.swap(true, Ordering::AcqRel) {
                    let this = self.clone();
                    let s = s.clone();
                    tokio::spawn(async move {
                        // Batch what is gathered within ~50 ms into one message.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        s.flush_scheduled.store(false, Ordering::Release);
                        let batch = std::mem::take(&mut *s.candidates.lock().unwrap());
                        if batch.is_empty() {
                            return;
                        }
                        let content = s.reply(&this.own_device).borrow().candidates(&batch);
                        this.send_to_session(&s, "m.call.candidates", content);
                    });
                }
            }
            SfuEventKind::Connected => {}
            SfuEventKind::DataChannelOpen => {
                s.dc_open.store(true, Ordering::Relaxed);
                *s.last_pong.lock().unwrap() = Instant::now();
                self.send_dc(
                    &s,
                    "sluice.hello",
                    json!({"version": protocol::PROTOCOL_VERSION, "features": FEATURES}),
                )
                .await;
                self.send_metadata(&s).await;
                let task = tokio::spawn(self.clone().keepalive(s.clone()));
                if let Some(old) = s.keepalive.lock().unwrap().replace(task) {
                    old.abort();
                }
            }
            SfuEventKind::DataChannelMessage(text) => self.on_dc_message(&s, text.as_str()).await,
            SfuEventKind::DataChannelRefused { code, reason } => {
                self.send_error(&s, code, &reason, None).await;
            }
            SfuEventKind::Left(reason) => {
                self.forget(&s);
                if let Some(k) = s.keepalive.lock().unwrap().take() {
                    k.abort();
                }
                s.closed.store(true, Ordering::Release);
                if !s.client_ended.load(Ordering::Relaxed) {
                    let error = *s.hangup_error.lock().unwrap();
                    let content = s.reply(&own).borrow().hangup(reason.as_str(), error);
                    self.send_to_session(&s, "m.call.hangup", content);
                    self.stats.hangups_sent.fetch_add(1, Ordering::Relaxed);
                }
                // Its send task ends once the queue (hangup included) is drained.
                s.outbox.lock().unwrap().take();
                info!(participant = %s.participant, reason = reason.as_str(), "session ended");
                if self.cfg.leave_idle_rooms {
                    self.leave_if_idle(&s.room_id).await;
                }
            }
        }
    }

    /// Leaves `room_id` when no session is in it and no valid membership names this focus.
    pub(super) async fn leave_if_idle(&self, room_id: &RoomId) {
        let busy = self
            .sessions
            .lock()
            .unwrap()
            .values()
            .any(|s| s.room_id == room_id);
        if busy {
            return;
        }
        let now = now_ms();
        let wanted = self.memberships(room_id).await.iter().any(|m| {
            m.is_valid(now)
                && m.preferred_focus
                    .as_ref()
                    .is_some_and(|f| f.is(&self.own_user, &self.own_device))
        });
        if wanted {
            return;
        }
        if let Some(room) = self.client.get_room(room_id) {
            match room.leave().await {
                Ok(()) => info!(room = %room_id, "left idle room"),
                Err(e) => warn!(room = %room_id, error = %e, "cannot leave idle room"),
            }
        }
    }

    pub(super) async fn keepalive(self: Arc<Self>, s: Arc<Session>) {
        let interval = Duration::from_secs(self.cfg.keepalive_interval_secs);
        let timeout = Duration::from_secs(self.cfg.keepalive_timeout_secs);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if s.last_pong.lock().unwrap().elapsed() > timeout {
                info!(participant = %s.participant, "no pong within the keepalive timeout");
                let _ = self
                    .sfu
                    .leave(
                        &s.conference,
                        &s.participant,
                        HangupReason::KeepAliveTimeout,
                    )
                    .await;
                return;
            }
            self.send_dc(&s, "m.call.ping", json!({})).await;
        }
    }
}
