//! LiveKit rooms as the front door sees them: who is in each, what they publish, and how
//! to reach each one's connection task. The media itself is the SFU's conference
//! `lk|<room>`; this is the LiveKit-protocol view beside it.

use crate::sfu::TrackRef;
use livekit_protocol as proto;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// What one connection task is told by the others.
#[derive(Debug)]
pub(super) enum Notice {
    /// Send this to the client.
    Signal(Box<proto::signal_response::Message>),
    /// Subscribe to these tracks: (the SFU's track, the msid it is seen by, its `TR_` sid).
    Subscribe(Vec<(TrackRef, TrackRef, String)>),
    /// Leave: another connection took this identity.
    Replaced,
    /// Go on on this new socket: the client resumed the session.
    Resume(Box<Resumption>),
}

/// A new socket for a live session, handed to its task.
pub(super) struct Resumption {
    /// The new socket.
    pub ws: axum::extract::ws::WebSocket,
    /// What its token grants.
    pub grant: super::grant::Grant,
    /// The offer it resumed with (its ICE restart), if the join request carried one.
    pub offer: Option<proto::SessionDescription>,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("identity", &self.grant.identity)
            .field("offer", &self.offer.is_some())
            .finish()
    }
}

/// One published track, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTrack {
    /// The LiveKit room.
    pub room: String,
    /// The publisher's identity.
    pub identity: String,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// The negotiated codec, e.g. `video/VP8`.
    pub mime_type: String,
    /// The end-to-end encryption the publisher declared (`NONE`, `GCM`, `CUSTOM`).
    pub encryption: &'static str,
}

/// One participant of a room.
pub(super) struct Member {
    /// Its LiveKit view (tracks included).
    pub info: proto::ParticipantInfo,
    /// Its SFU participant id.
    pub participant: String,
    /// Its connection task.
    pub notices: mpsc::UnboundedSender<Notice>,
    /// Its published tracks that carry media: `TR_` sid → the SFU's track.
    pub media: HashMap<String, TrackRef>,
    /// Its connection quality, as its connection task last measured it.
    pub quality: Option<proto::ConnectionQualityInfo>,
}

/// One room.
pub(super) struct Room {
    /// `RM_…`.
    pub sid: String,
    /// Unix seconds.
    pub created: i64,
    /// Members by `PA_` sid.
    pub members: HashMap<String, Member>,
}

/// Every room of the front door.
#[derive(Default)]
pub(super) struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
}

/// A random id with LiveKit's prefix (`PA_`, `TR_`, `RM_`).
pub(super) fn sid(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::with_capacity(prefix.len() + 12);
    s.push_str(prefix);
    for _ in 0..12 {
        s.push(ALPHABET[rand::random_range(0..ALPHABET.len())] as char);
    }
    s
}

pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Rooms {
    /// Adds `member` to `room` (created when new); returns the room's sid and creation
    /// time, the others' infos, and the connection the same identity had (replaced).
    pub(super) fn join(
        &self,
        room: &str,
        member: Member,
    ) -> (proto::Room, Vec<proto::ParticipantInfo>, Option<Member>) {
        let mut rooms = self.rooms.lock().unwrap();
        let r = rooms.entry(room.to_owned()).or_insert_with(|| Room {
            sid: sid("RM_"),
            created: now_secs(),
            members: HashMap::new(),
        });
        let old_sid = r
            .members
            .iter()
            .find(|(_, m)| m.info.identity == member.info.identity)
            .map(|(s, _)| s.clone());
        let replaced = old_sid.and_then(|s| r.members.remove(&s));
        let others: Vec<proto::ParticipantInfo> =
            r.members.values().map(|m| m.info.clone()).collect();
        let update = proto::signal_response::Message::Update(proto::ParticipantUpdate {
            participants: vec![member.info.clone()],
        });
        for m in r.members.values() {
            let _ = m.notices.send(Notice::Signal(Box::new(update.clone())));
        }
        r.members.insert(member.info.sid.clone(), member);
        let info = proto::Room {
            sid: r.sid.clone(),
            name: room.to_owned(),
            creation_time: r.created,
            num_participants: r.members.len() as u32,
            ..Default::default()
        };
        (info, others, replaced)
    }

    /// Removes `sid` from `room` and tells the others it left.
    pub(super) fn leave(&self, room: &str, sid: &str) {
        let mut rooms = self.rooms.lock().unwrap();
        let Some(r) = rooms.get_mut(room) else {
            return;
        };
        let Some(mut gone) = r.members.remove(sid) else {
            return;
        };
        gone.info.state = proto::participant_info::State::Disconnected as i32;
        gone.info.version += 1;
        gone.info.tracks.clear();
        let update = proto::signal_response::Message::Update(proto::ParticipantUpdate {
            participants: vec![gone.info],
        });
        for m in r.members.values() {
            let _ = m.notices.send(Notice::Signal(Box::new(update.clone())));
        }
        if r.members.is_empty() {
            rooms.remove(room);
        }
    }

    /// Changes `sid`'s info with `f` and, when it returns true, tells the others.
    pub(super) fn update(
        &self,
        room: &str,
        sid: &str,
        f: impl FnOnce(&mut Member) -> bool,
    ) -> Option<proto::ParticipantInfo> {
        let mut rooms = self.rooms.lock().unwrap();
        let r = rooms.get_mut(room)?;
        let m = r.members.get_mut(sid)?;
        if !f(m) {
            return None;
        }
        m.info.version += 1;
        let info = m.info.clone();
        let update = proto::signal_response::Message::Update(proto::ParticipantUpdate {
            participants: vec![info.clone()],
        });
        for (s, other) in &r.members {
            if s != sid {
                let _ = other.notices.send(Notice::Signal(Box::new(update.clone())));
            }
        }
        Some(info)
    }

    /// Tells every member of `room` but `except` to subscribe to `tracks`.
    pub(super) fn offer_tracks(
        &self,
        room: &str,
        except: &str,
        tracks: &[(TrackRef, TrackRef, String)],
    ) {
        let rooms = self.rooms.lock().unwrap();
        if let Some(r) = rooms.get(room) {
            for (s, m) in &r.members {
                if s != except {
                    let _ = m.notices.send(Notice::Subscribe(tracks.to_vec()));
                }
            }
        }
    }

    /// Every track carrying media in `room` but `except`'s: (the SFU's track, the msid it
    /// is seen by, its sid).
    pub(super) fn media_tracks(
        &self,
        room: &str,
        except: &str,
    ) -> Vec<(TrackRef, TrackRef, String)> {
        let rooms = self.rooms.lock().unwrap();
        let Some(r) = rooms.get(room) else {
            return Vec::new();
        };
        r.members
            .iter()
            .filter(|(s, _)| s.as_str() != except)
            .flat_map(|(s, m)| {
                m.media
                    .iter()
                    .map(move |(tr, t)| (t.clone(), seen_as(s, tr), tr.clone()))
            })
            .collect()
    }

    /// The `PA_` sid of SFU participant `participant` in `room`.
    pub(super) fn sid_of(&self, room: &str, participant: &str) -> Option<String> {
        let rooms = self.rooms.lock().unwrap();
        rooms
            .get(room)?
            .members
            .iter()
            .find(|(_, m)| m.participant == participant)
            .map(|(s, _)| s.clone())
    }

    /// The published `TrackInfo` of track `track_sid` in `room`.
    pub(super) fn track_info(&self, room: &str, track_sid: &str) -> Option<proto::TrackInfo> {
        let rooms = self.rooms.lock().unwrap();
        rooms
            .get(room)?
            .members
            .values()
            .flat_map(|m| m.info.tracks.iter())
            .find(|t| t.sid == track_sid)
            .cloned()
    }

    /// Member `sid`'s track `track` of the SFU: its `TR_` sid and codec.
    pub(super) fn own_track(
        &self,
        room: &str,
        sid: &str,
        track: &TrackRef,
    ) -> Option<(String, String)> {
        let rooms = self.rooms.lock().unwrap();
        let m = rooms.get(room)?.members.get(sid)?;
        let (tsid, _) = m.media.iter().find(|(_, t)| *t == track)?;
        let info = m.info.tracks.iter().find(|t| &t.sid == tsid)?;
        Some((tsid.clone(), info.mime_type.clone()))
    }

    /// Whether a member of `room` has `identity`.
    pub(super) fn has_identity(&self, room: &str, identity: &str) -> bool {
        let rooms = self.rooms.lock().unwrap();
        rooms
            .get(room)
            .is_some_and(|r| r.members.values().any(|m| m.info.identity == identity))
    }

    /// Every published track.
    pub(super) fn tracks(&self) -> Vec<PublishedTrack> {
        let rooms = self.rooms.lock().unwrap();
        let mut out = Vec::new();
        for (name, r) in rooms.iter() {
            for m in r.members.values() {
                for t in &m.info.tracks {
                    let audio = t.r#type == proto::TrackType::Audio as i32;
                    let encryption = proto::encryption::Type::try_from(t.encryption)
                        .map_or("UNKNOWN", |e| e.as_str_name());
                    out.push(PublishedTrack {
                        room: name.clone(),
                        identity: m.info.identity.clone(),
                        kind: if audio { "audio" } else { "video" },
                        mime_type: t.mime_type.clone(),
                        encryption,
                    });
                }
            }
        }
        out
    }

    /// The SFU participants of `room` that `relay` reaches, its sender (`from`, a `PA_`
    /// sid) aside.
    pub(super) fn data_recipients(
        &self,
        room: &str,
        from: &str,
        relay: &super::data::Relay,
    ) -> Vec<String> {
        let rooms = self.rooms.lock().unwrap();
        let Some(r) = rooms.get(room) else {
            return Vec::new();
        };
        r.members
            .iter()
            .filter(|(sid, m)| *sid != from && relay.reaches(&m.info.identity, sid))
            .map(|(_, m)| m.participant.clone())
            .collect()
    }

    /// Keeps member `sid`'s connection quality and returns every measured member's.
    pub(super) fn qualities(
        &self,
        room: &str,
        sid: &str,
        own: Option<proto::ConnectionQualityInfo>,
    ) -> Vec<proto::ConnectionQualityInfo> {
        let mut rooms = self.rooms.lock().unwrap();
        let Some(r) = rooms.get_mut(room) else {
            return Vec::new();
        };
        if let Some(m) = r.members.get_mut(sid) {
            m.quality = own;
        }
        let mut all: Vec<proto::ConnectionQualityInfo> = r
            .members
            .values()
            .filter_map(|m| m.quality.clone())
            .collect();
        all.sort_by(|a, b| a.participant_sid.cmp(&b.participant_sid));
        all
    }

    /// The notice channel of member `sid` of `room`, when it has `identity`.
    pub(super) fn notices_of(
        &self,
        room: &str,
        sid: &str,
        identity: &str,
    ) -> Option<mpsc::UnboundedSender<Notice>> {
        let rooms = self.rooms.lock().unwrap();
        let m = rooms.get(room)?.members.get(sid)?;
        (m.info.identity == identity).then(|| m.notices.clone())
    }

    /// Every member of `room` but `except` (a `PA_` sid).
    pub(super) fn infos(&self, room: &str, except: &str) -> Vec<proto::ParticipantInfo> {
        let rooms = self.rooms.lock().unwrap();
        rooms.get(room).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .filter(|(sid, _)| *sid != except)
                .map(|(_, m)| m.info.clone())
                .collect()
        })
    }

    /// Rooms and members, for tests and metrics.
    pub(super) fn counts(&self) -> (usize, usize) {
        let rooms = self.rooms.lock().unwrap();
        (rooms.len(), rooms.values().map(|r| r.members.len()).sum())
    }
}

/// The msid a LiveKit subscriber sees a track by: stream `PA_…|TR_…`, track `TR_…`
/// (livekit-client finds the participant and the track from them).
pub(super) fn seen_as(participant_sid: &str, track_sid: &str) -> TrackRef {
    TrackRef {
        stream_id: format!("{participant_sid}|{track_sid}"),
        track_id: track_sid.to_owned(),
    }
}
