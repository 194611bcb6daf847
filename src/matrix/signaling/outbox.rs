//! The outbox: to-device sends (plain or Olm), each session's ordered queue, and the
//! data-channel messages Sluice sends.

use super::*;

/// The `device` of [`Signaling::send`] that means every device of the user (plaintext only).
pub(super) const ALL_DEVICES: &str = "*";

impl Signaling {
    /// Sends a to-device event, Olm-encrypted when `encrypted`.
    pub(super) async fn send(
        &self,
        user: &UserId,
        device: &str,
        event_type: &str,
        content: Value,
        encrypted: bool,
    ) {
        let raw: Raw<AnyToDeviceEventContent> = match Raw::new(&content) {
            Ok(r) => r.cast_unchecked(),
            Err(e) => {
                warn!(error = %e, "cannot serialize to-device content");
                return;
            }
        };
        if encrypted {
            let enc = self.client.encryption();
            let device_id: matrix_sdk::ruma::OwnedDeviceId = device.into();
            let mut found = enc.get_device(user, &device_id).await.ok().flatten();
            if found.is_none() {
                let _ = enc.request_user_identity(user).await;
                found = enc.get_device(user, &device_id).await.ok().flatten();
            }
            let Some(d) = found else {
                warn!(%user, device, event_type, "cannot encrypt: recipient device unknown");
                return;
            };
            if let Err(e) = enc
                .encrypt_and_send_raw_to_device(vec![&d], event_type, raw, Default::default())
                .await
            {
                warn!(%user, device, event_type, error = %e, "encrypted to-device send failed");
            }
            return;
        }
        let mut per_device = BTreeMap::new();
        let to = if device == ALL_DEVICES {
            DeviceIdOrAllDevices::AllDevices
        } else {
            DeviceIdOrAllDevices::DeviceId(device.into())
        };
        per_device.insert(to, raw);
        let mut messages = BTreeMap::new();
        messages.insert(user.to_owned(), per_device);
        let req = send_event_to_device::v3::Request::new_raw(
            event_type.into(),
            TransactionId::new(),
            messages,
        );
        if let Err(e) = self.client.send(req).await {
            warn!(%user, device, event_type, error = %e, "to-device send failed");
        }
    }

    /// Queues a to-device event for the session; sent in order by the session's task,
    /// encrypted when the client's last message was.
    pub(super) fn send_to_session(
        self: &Arc<Self>,
        s: &Arc<Session>,
        event_type: &'static str,
        content: Value,
    ) {
        if s.closed.load(Ordering::Acquire) && event_type != "m.call.hangup" {
            return;
        }
        let mut outbox = s.outbox.lock().unwrap();
        let tx = outbox.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Value)>();
            let this = self.clone();
            let s = s.clone();
            tokio::spawn(async move {
                while let Some((t, c)) = rx.recv().await {
                    let enc = s.encrypted.load(Ordering::Relaxed);
                    this.send(&s.user_id, &s.device_id, t, c, enc).await;
                }
            });
            tx
        });
        let _ = tx.send((event_type, content));
    }

    pub(super) async fn send_dc(&self, s: &Session, kind: &str, content: Value) {
        let text = json!({"type": kind, "content": content}).to_string();
        if let Err(e) = self
            .sfu
            .send_data(&s.conference, &s.participant, &text)
            .await
        {
            debug!(participant = %s.participant, error = %e, kind, "data-channel send failed");
        }
    }

    /// `m.call.negotiate` on the data channel, with the metadata the client should see.
    pub(super) async fn send_negotiate(&self, s: &Session, kind: &str, sdp: &str) {
        let content = json!({"description": {"type": kind, "sdp": sdp},
                             "sdp_stream_metadata": self.metadata_for(s)});
        self.send_dc(s, "m.call.negotiate", content).await;
    }

    pub(super) async fn send_error(
        &self,
        s: &Session,
        code: &str,
        message: &str,
        request_type: Option<&str>,
    ) {
        self.stats.dc_errors.fetch_add(1, Ordering::Relaxed);
        info!(participant = %s.participant, code, request_type = request_type.unwrap_or(""), error = message, "data-channel request refused");
        let mut c = json!({"code": code, "message": message});
        if let Some(t) = request_type {
            c["request_type"] = json!(t);
        }
        self.send_dc(s, "sluice.error", c).await;
    }
}
