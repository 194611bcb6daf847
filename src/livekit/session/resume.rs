//! Resuming a LiveKit session on a new WebSocket. livekit-client, when its signaling
//! socket drops while its peer connection may live on, reconnects with `reconnect=1` and
//! its `PA_` sid and expects a `ReconnectResponse`, then restarts ICE with a new offer. The
//! session's task outlives its socket by [`WINDOW`] for that (when its media had connected:
//! a session dropped before then ends at once, as nothing resumes it); a resuming socket of the same
//! identity is handed to it ([`hand_over`]) and the session goes on with its media, legs
//! and room state untouched. A resume Sluice cannot honour (no such session, another
//! identity, or it already ended) gets a leave asking for a full reconnect.

use super::*;

/// How long a session whose socket dropped waits for the client to resume it.
pub(super) const WINDOW: Duration = Duration::from_secs(15);

/// Hands a resuming connection's socket to its session, or asks the client to join
/// afresh.
pub(super) async fn hand_over(
    s: Arc<Signal>,
    mut ws: WebSocket,
    grant: Grant,
    join: proto::JoinRequest,
) {
    let sid = join.participant_sid.clone();
    let mut r = Box::new(Resumption {
        ws,
        grant,
        offer: join.publisher_offer,
    });
    if let Some(tx) = s.rooms.notices_of(&r.grant.room, &sid, &r.grant.identity) {
        match tx.send(Notice::Resume(r)) {
            Ok(()) => {
                s.stats.count(6);
                return;
            }
            Err(mpsc::error::SendError(Notice::Resume(back))) => r = back,
            Err(_) => return,
        }
    }
    s.stats.count(7);
    info!(room = %r.grant.room, identity = %r.grant.identity, %sid, "LiveKit resume of an unknown session: asking for a full reconnect");
    ws = r.ws;
    let leave = proto::SignalResponse {
        message: Some(Resp::Leave(proto::LeaveRequest {
            can_reconnect: true,
            reason: proto::DisconnectReason::StateMismatch as i32,
            action: proto::leave_request::Action::Reconnect as i32,
            ..Default::default()
        })),
    };
    let _ = ws.send(Ws::Binary(leave.encode_to_vec().into())).await;
    let _ = ws
        .send(Ws::Close(Some(CloseFrame {
            code: 1000,
            reason: "no session to resume: join again".into(),
        })))
        .await;
}

impl Conn {
    /// Goes on with the session on the resumed socket: tells the client it resumed, who is
    /// in the room now (updates sent while it was away were lost), answers the offer it
    /// resumed with, if any, and asks again for the media sections still pending.
    pub(super) async fn resume(&mut self, r: Resumption) -> Option<End> {
        info!(room = %self.grant.room, identity = %self.grant.identity, participant = %self.participant, "LiveKit session resumed on a new connection");
        let old = std::mem::replace(&mut self.ws, r.ws);
        drop(old);
        self.grant = r.grant;
        self.last_ping = Instant::now();
        self.send(Resp::Reconnect(proto::ReconnectResponse {
            server_info: Some(server_info()),
            ..Default::default()
        }))
        .await;
        let others = self.s.rooms.infos(&self.grant.room, &self.sid);
        if !others.is_empty() {
            self.send(Resp::Update(proto::ParticipantUpdate {
                participants: others,
            }))
            .await;
        }
        if let Some(o) = r.offer
            && let Some(end) = self.on_offer(o).await
        {
            return Some(end);
        }
        // A media-sections requirement sent while the socket was gone was lost, and the
        // resume offer (an ICE restart) brings no new sections: ask again, or the legs
        // added meanwhile wait for the next change of subscriptions.
        if let Err(e) = self
            .s
            .sfu
            .ask_again(&self.conference, &self.participant)
            .await
        {
            debug!(participant = %self.participant, error = %e, "asking again after a resume failed");
        }
        None
    }
}
