//! The membership watch: ends a session as soon as its member may no longer be in the call
//! (docs/protocol.md §6). A session lasts while the member's room membership is `join`, its
//! device's call membership is valid, and Sluice itself is still in the room.
//!
//! Woken by the sync loop with the rooms whose `m.room.member` or call-membership state
//! changed (or that Sluice left), by a newly admitted session, and at the earliest
//! membership expiry among the sessions it watches. A slow sweep of every session's room
//! backs these up; nothing polls each room every second.

use super::{Session, Signaling, now_ms};
use crate::matrix::membership::{CALL_MEMBER_EVENT, Membership};
use crate::sfu::HangupReason;
use matrix_sdk::RoomState;
use matrix_sdk::deserialized_responses::MemberEvent;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::sync::{State, SyncResponse, Timeline};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::info;

/// How often every watched room is checked even without a change: a backstop for a missed
/// sync update, not the mechanism.
const SWEEP: Duration = Duration::from_secs(30);

/// Why a session must end, or until when it may last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The session may go on; its call membership expires at this time (ms since epoch).
    Keep {
        /// When the membership expires.
        expires_at_ms: u64,
    },
    /// The session ends with this reason and, for the hangup's `error`, this text.
    End(HangupReason, Option<&'static str>),
}

/// What the watch knows of one session's member in one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomMembership {
    /// Joined.
    Join,
    /// Left on their own.
    Left,
    /// Removed by someone else (a kick).
    Kicked,
    /// Banned.
    Banned,
    /// Invited, knocking or unknown to the room.
    Other,
}

/// Decides one session's fate from its member's room membership, whether Sluice is still
/// joined, and the room's call memberships.
pub fn verdict(
    sluice_joined: bool,
    member: RoomMembership,
    memberships: &[Membership],
    session: (&str, &str, &str),
    now_ms: u64,
) -> Verdict {
    if !sluice_joined {
        return Verdict::End(
            HangupReason::Unauthorized,
            Some("Sluice is no longer in the room"),
        );
    }
    let why = match member {
        RoomMembership::Join => None,
        RoomMembership::Left => Some("the member left the room"),
        RoomMembership::Kicked => Some("the member was removed from the room"),
        RoomMembership::Banned => Some("the member was banned from the room"),
        RoomMembership::Other => Some("the member is not joined to the room"),
    };
    if let Some(why) = why {
        return Verdict::End(HangupReason::Unauthorized, Some(why));
    }
    let (user, device, conf) = session;
    memberships
        .iter()
        .filter(|m| m.user_id == user && m.device_id == device && m.conf_id == conf)
        .filter(|m| m.is_valid(now_ms))
        .map(|m| m.expires_at_ms)
        .max()
        .map_or(
            Verdict::End(HangupReason::UserHangup, None),
            |expires_at_ms| Verdict::Keep { expires_at_ms },
        )
}

/// The rooms of a sync response whose member or call-membership state changed, and the
/// rooms Sluice left or was removed from.
pub fn changed_rooms(response: &SyncResponse) -> Vec<OwnedRoomId> {
    let mut out: Vec<OwnedRoomId> = response.rooms.left.keys().cloned().collect();
    for (id, update) in &response.rooms.joined {
        if touches_membership(&update.state, &update.timeline) {
            out.push(id.clone());
        }
    }
    out
}

fn touches_membership(state: &State, timeline: &Timeline) -> bool {
    let relevant = |t: Option<String>| {
        t.as_deref()
            .is_some_and(|t| t == "m.room.member" || t == CALL_MEMBER_EVENT)
    };
    let in_state = match state {
        State::Before(list) | State::After(list) => list
            .iter()
            .any(|e| relevant(e.get_field::<String>("type").ok().flatten())),
    };
    in_state
        || timeline.events.iter().any(|e| {
            let raw = e.raw();
            raw.get_field::<String>("state_key")
                .ok()
                .flatten()
                .is_some()
                && relevant(raw.get_field::<String>("type").ok().flatten())
        })
}

impl Signaling {
    /// Tells the watch that `room`'s membership state may have changed.
    pub fn room_changed(&self, room: OwnedRoomId) {
        let _ = self.room_changes.send(room);
    }

    /// A sender for [`Signaling::room_changed`], for the sync loop.
    pub fn room_changes(&self) -> mpsc::UnboundedSender<OwnedRoomId> {
        self.room_changes.clone()
    }

    /// Runs the membership watch until the signaling state is dropped.
    pub async fn watch_memberships(self: Arc<Self>) {
        let Some(mut changes) = self.room_changes_rx.lock().unwrap().take() else {
            return;
        };
        // Earliest membership expiry of the sessions in each watched room.
        let mut expiries: HashMap<OwnedRoomId, u64> = HashMap::new();
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.tick().await;
        loop {
            let next_expiry = expiries.values().min().copied();
            let until_expiry = next_expiry
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(SWEEP);
            let rooms: HashSet<OwnedRoomId> = tokio::select! {
                room = changes.recv() => {
                    let Some(room) = room else { return };
                    let mut set = HashSet::from([room]);
                    while let Ok(more) = changes.try_recv() {
                        set.insert(more);
                    }
                    set
                }
                _ = tokio::time::sleep(until_expiry), if next_expiry.is_some() => {
                    let now = now_ms();
                    expiries.iter().filter(|(_, at)| **at <= now).map(|(r, _)| r.clone()).collect()
                }
                _ = sweep.tick() => self.watched_rooms(),
            };
            for room in rooms {
                match self.check_room(&room).await {
                    Some(at) => expiries.insert(room, at),
                    None => expiries.remove(&room),
                };
            }
        }
    }

    fn watched_rooms(&self) -> HashSet<OwnedRoomId> {
        let sessions = self.sessions.lock().unwrap();
        sessions.values().map(|s| s.room_id.clone()).collect()
    }

    /// Ends the sessions of `room_id` that may no longer be in their call; returns the
    /// earliest membership expiry of those that go on.
    async fn check_room(&self, room_id: &RoomId) -> Option<u64> {
        let sessions: Vec<Arc<Session>> = {
            let all = self.sessions.lock().unwrap();
            all.values()
                .filter(|s| s.room_id == room_id)
                .cloned()
                .collect()
        };
        // Read even with no session here: that records when each membership was first
        // seen, for focus selection.
        let memberships = self.memberships(room_id).await;
        if sessions.is_empty() {
            return None;
        }
        let room = self.client.get_room(room_id);
        let sluice_joined = room
            .as_ref()
            .is_some_and(|r| r.state() == RoomState::Joined);
        let now = now_ms();
        let mut earliest = None::<u64>;
        for s in sessions {
            let member = match &room {
                Some(r) if sluice_joined => room_membership(r, &s).await,
                _ => RoomMembership::Other,
            };
            let session = (s.user_id.as_str(), s.device_id.as_str(), s.conf_id.as_str());
            match verdict(sluice_joined, member, &memberships, session, now) {
                Verdict::Keep { expires_at_ms } => {
                    earliest = Some(earliest.map_or(expires_at_ms, |e| e.min(expires_at_ms)));
                }
                Verdict::End(reason, error) => {
                    info!(
                        room = %room_id,
                        conference = %s.conference,
                        participant = %s.participant,
                        reason = reason.as_str(),
                        why = error.unwrap_or("call membership gone or expired"),
                        "membership watch: hanging up"
                    );
                    *s.hangup_error.lock().unwrap() = error;
                    let _ = self.sfu.leave(&s.conference, &s.participant, reason).await;
                }
            }
        }
        earliest
    }
}

async fn room_membership(room: &matrix_sdk::Room, s: &Session) -> RoomMembership {
    let Ok(Some(member)) = room.get_member_no_sync(&s.user_id).await else {
        return RoomMembership::Other;
    };
    match member.membership() {
        MembershipState::Join => RoomMembership::Join,
        MembershipState::Ban => RoomMembership::Banned,
        MembershipState::Leave => {
            let event: &MemberEvent = member.event();
            if event.sender() == s.user_id {
                RoomMembership::Left
            } else {
                RoomMembership::Kicked
            }
        }
        _ => RoomMembership::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::membership::parse;
    use serde_json::json;

    fn ms() -> Vec<Membership> {
        let c = json!({"application": "m.call", "call_id": "", "device_id": "D",
            "expires": 10_000, "created_ts": 1_000});
        parse("@a:hs", &c, 1_000)
    }

    const S: (&str, &str, &str) = ("@a:hs", "D", "");

    #[test]
    fn a_joined_member_with_a_valid_membership_stays_until_it_expires() {
        assert_eq!(
            verdict(true, RoomMembership::Join, &ms(), S, 5_000),
            Verdict::Keep {
                expires_at_ms: 11_000
            }
        );
    }

    #[test]
    fn kick_ban_and_leave_end_the_session_whatever_the_call_membership() {
        for (m, why) in [
            (RoomMembership::Kicked, "removed"),
            (RoomMembership::Banned, "banned"),
            (RoomMembership::Left, "left"),
            (RoomMembership::Other, "not joined"),
        ] {
            let Verdict::End(reason, Some(text)) = verdict(true, m, &ms(), S, 5_000) else {
                panic!("{m:?} kept the session");
            };
            assert_eq!(reason, HangupReason::Unauthorized);
            assert!(text.contains(why), "{m:?}: {text}");
        }
    }

    #[test]
    fn sluice_removed_from_the_room_ends_every_session() {
        assert_eq!(
            verdict(false, RoomMembership::Join, &ms(), S, 5_000),
            Verdict::End(
                HangupReason::Unauthorized,
                Some("Sluice is no longer in the room")
            )
        );
    }

    #[test]
    fn an_expired_or_missing_membership_is_a_normal_end() {
        let end = Verdict::End(HangupReason::UserHangup, None);
        assert_eq!(verdict(true, RoomMembership::Join, &ms(), S, 11_000), end);
        let other_device = ("@a:hs", "E", "");
        assert_eq!(
            verdict(true, RoomMembership::Join, &ms(), other_device, 5_000),
            end
        );
        let other_call = ("@a:hs", "D", "x");
        assert_eq!(
            verdict(true, RoomMembership::Join, &ms(), other_call, 5_000),
            end
        );
    }
}
