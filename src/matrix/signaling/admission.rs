//! Admission: authorizing an invite against room and call membership (docs/protocol.md
//! §6), joining the media core, and the hangup of a refused invite.

use super::*;

/// An invite without `room_id` (the legacy form) is looked for in at most this many of
/// the rooms its sender shares with Sluice.
const LEGACY_ROOMS: usize = 16;

impl Signaling {
    /// Reads the call memberships of a room from the client's state store, their ages
    /// bounded by when Sluice first saw them ([`FirstSeen`]).
    pub(super) async fn memberships(&self, room_id: &RoomId) -> Vec<Membership> {
        let Some(room) = self.client.get_room(room_id) else {
            return Vec::new();
        };
        let Ok(states) = room
            .get_state_events(StateEventType::from(CALL_MEMBER_EVENT))
            .await
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for st in states {
            let RawAnySyncOrStrippedState::Sync(raw) = st else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(raw.json().get()) else {
                continue;
            };
            let sender = v.get("sender").and_then(Value::as_str).unwrap_or("");
            let ts = v
                .get("origin_server_ts")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let content = v.get("content").cloned().unwrap_or(Value::Null);
            out.extend(membership::parse(sender, &content, ts));
        }
        self.first_seen
            .lock()
            .unwrap()
            .bound(room_id.as_str(), &mut out, now_ms());
        out
    }

    /// Authorizes an invite per docs/protocol.md §6; returns the room of the call.
    pub(super) async fn authorize(
        &self,
        sender: &UserId,
        msg: &CallMessage,
        job: &Job,
    ) -> Result<OwnedRoomId, Refusal> {
        let server = sender.server_name().as_str();
        if !self.cfg.allowed_homeservers.is_empty()
            && !self.cfg.allowed_homeservers.iter().any(|h| h == server)
        {
            return Err(Refusal::unauthorized(format!(
                "homeserver {server} is not allowed"
            )));
        }
        if !self.olm_sender_ok(job, msg) {
            return Err(Refusal::unauthorized(
                "the Olm sender does not match the message's sender and device_id",
            ));
        }
        let now = now_ms();
        let room_id = match &msg.room_id {
            Some(r) => RoomId::parse(r).map_err(|_| Refusal {
                reason: "sluice.bad_request",
                error: "`room_id` is not a room id".into(),
            })?,
            None => {
                // The legacy form names no room: look in the rooms the sender is joined
                // to (a cheap member lookup first), at most LEGACY_ROOMS of them.
                let mut found = None;
                let mut shared = 0;
                for room in self.client.joined_rooms() {
                    let joined = matches!(
                        room.get_member_no_sync(sender).await,
                        Ok(Some(m)) if *m.membership() == MembershipState::Join
                    );
                    if !joined {
                        continue;
                    }
                    shared += 1;
                    if shared > LEGACY_ROOMS {
                        return Err(Refusal {
                            reason: "sluice.bad_request",
                            error: format!(
                                "no `room_id`, and the sender shares more than {LEGACY_ROOMS} rooms with Sluice: send `room_id`"
                            ),
                        });
                    }
                    let ms = self.memberships(room.room_id()).await;
                    if ms.iter().any(|m| {
                        m.user_id == sender.as_str()
                            && m.device_id == msg.device_id
                            && m.conf_id == msg.conf_id
                            && m.is_valid(now)
                    }) {
                        found = Some(room.room_id().to_owned());
                        break;
                    }
                }
                found.ok_or_else(|| {
                    Refusal::unauthorized("no room has a call membership for this device")
                })?
            }
        };
        let Some(room) = self.client.get_room(&room_id) else {
            return Err(Refusal::unauthorized("Sluice is not in that room"));
        };
        let joined = matches!(
            room.get_member_no_sync(sender).await,
            Ok(Some(m)) if *m.membership() == MembershipState::Join
        );
        if !joined {
            return Err(Refusal::unauthorized(
                "the sender is not joined to the room",
            ));
        }
        let ms = self.memberships(&room_id).await;
        if !ms.iter().any(|m| {
            m.user_id == sender.as_str()
                && m.device_id == msg.device_id
                && m.conf_id == msg.conf_id
                && m.is_valid(now)
        }) {
            return Err(Refusal::unauthorized(
                "no valid call membership for this device and call",
            ));
        }
        match membership::active_focus(&ms, &msg.conf_id, now) {
            Some(f) if f.is(&self.own_user, &self.own_device) => {}
            _ => {
                return Err(Refusal::unauthorized(
                    "the call's focus is not this Sluice instance",
                ));
            }
        }
        Ok(room_id)
    }

    pub(super) async fn on_invite(self: &Arc<Self>, job: &Job, msg: CallMessage, encrypted: bool) {
        let Body::Invite { sdp, metadata, .. } = &msg.body else {
            return;
        };
        let room_id = match self.authorize(&job.sender, &msg, job).await {
            Ok(r) => r,
            Err(r) => return self.refuse_invite(job, &msg, encrypted, r).await,
        };
        let conference = format!("{}|{}", room_id, msg.conf_id);
        // Replace an earlier session of the same device (no ghosts).
        if let Some(old) = self.session_of(&job.sender, &msg.device_id) {
            if old.sender_session_id == msg.sender_session_id && old.call_id == msg.call_id {
                debug!(participant = %old.participant, "duplicate invite ignored");
                return;
            }
            info!(participant = %old.participant, "new invite replaces the session");
            old.client_ended.store(true, Ordering::Relaxed);
            self.forget(&old);
            let _ = self
                .sfu
                .leave(&old.conference, &old.participant, HangupReason::UserHangup)
                .await;
        }
        // One account, a bounded number of devices in one call (the session this invite
        // replaces is gone by now).
        let held = self
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.user_id == job.sender && s.conference == conference)
            .count();
        if held >= self.cfg.max_sessions_per_account {
            let r = Refusal {
                reason: "sluice.too_many_sessions",
                error: format!(
                    "this account already has {held} sessions in this call, the most allowed (matrix.max_sessions_per_account)"
                ),
            };
            return self.refuse_invite(job, &msg, encrypted, r).await;
        }
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let participant = format!("{}|{}|{n}", job.sender, msg.device_id);
        let session = Arc::new(Session {
            participant: participant.clone(),
            conference: conference.clone(),
            user_id: job.sender.clone(),
            device_id: msg.device_id.clone(),
            room_id,
            conf_id: msg.conf_id.clone(),
            call_id: msg.call_id.clone(),
            sender_session_id: msg.sender_session_id.clone(),
            encrypted: AtomicBool::new(encrypted),
            client_ended: AtomicBool::new(false),
            dc_open: AtomicBool::new(false),
            last_pong: Mutex::new(Instant::now()),
            metadata: Mutex::new(metadata.clone()),
            candidates: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
            keepalive: Mutex::new(None),
            outbox: Mutex::new(None),
            closed: AtomicBool::new(false),
            hangup_error: Mutex::new(None),
        });
        self.sessions
            .lock()
            .unwrap()
            .insert(participant.clone(), session.clone());
        self.by_device.lock().unwrap().insert(
            (job.sender.clone(), msg.device_id.clone()),
            participant.clone(),
        );
        let (sink, events) = mpsc::unbounded_channel();
        let answer = match self.sfu.join(&conference, &participant, sdp, sink).await {
            Ok(answer) => answer,
            Err(e) => {
                self.forget(&session);
                return self
                    .refuse_invite(job, &msg, encrypted, refusal_for(&e))
                    .await;
            }
        };
        // The answer goes out first; the session's events (its candidates first) after it.
        let budget = if encrypted {
            protocol::ANSWER_BUDGET_OLM
        } else {
            protocol::ANSWER_BUDGET
        };
        let content = session.reply(&self.own_device).borrow().answer_within(
            &answer,
            self.metadata_for(&session),
            budget,
        );
        if content.get("sluice_metadata_partial").is_some() {
            info!(participant = %participant, "answer carries part of the call's stream metadata; the rest follows on the data channel");
        }
        self.send_to_session(&session, "m.call.answer", content);
        tokio::spawn(self.clone().run_session_events(session.clone(), events));
        self.apply_purposes(&session);
        // The watch learns the new session's membership expiry (and catches a kick that
        // raced the invite).
        self.room_changed(session.room_id.clone());
        self.stats.invites_accepted.fetch_add(1, Ordering::Relaxed);
        self.stats.record("m.call.invite", ACCEPTED);
        info!(conference = %conference, participant = %participant, encrypted, "invite accepted");
    }

    pub(super) async fn refuse_invite(
        &self,
        job: &Job,
        msg: &CallMessage,
        encrypted: bool,
        r: Refusal,
    ) {
        self.stats.invites_refused.fetch_add(1, Ordering::Relaxed);
        self.stats.record("m.call.invite", REFUSED);
        info!(sender = %job.sender, device = %msg.device_id, reason = r.reason, error = %r.error, "invite refused");
        let reply = ReplyOwned {
            call_id: msg.call_id.clone(),
            conf_id: msg.conf_id.clone(),
            room_id: msg.room_id.clone(),
            own_device_id: self.own_device.clone(),
            dest_session_id: msg.sender_session_id.clone(),
        };
        let content = reply.borrow().hangup(r.reason, Some(&r.error));
        // An encrypted refusal goes to the device that really sent the invite, which may
        // not be the one the content claims.
        let device = job
            .encryption
            .as_ref()
            .and_then(|e| e.sender_device.as_ref())
            .map(|d| d.to_string())
            .unwrap_or_else(|| msg.device_id.clone());
        self.send(&job.sender, &device, "m.call.hangup", content, encrypted)
            .await;
        self.stats.hangups_sent.fetch_add(1, Ordering::Relaxed);
    }
}
