//! LiveKit data packets: the `DataPacket`s a client sends on its `_reliable` and `_lossy`
//! data channels (user data, chat, RPC, data streams, end-to-end encrypted packets), what
//! Sluice relays of them, to whom, and what it refuses. Pure: the connection task
//! (`session`) sends what [`relay`] returns.

// The user packet's own sender and destination fields are deprecated in favour of the
// packet's, and older clients still write and read them: Sluice keeps both true.
#![allow(deprecated)]

use livekit_protocol as proto;
use prost::Message;

/// The data channels that carry `DataPacket`s, each relayed on the channel of the same
/// label. (`_data_track`, LiveKit's data tracks, is not relayed.)
pub(crate) const LABELS: [&str; 2] = ["_reliable", "_lossy"];

/// Most destinations one packet may name (identities and sids together).
pub(crate) const MAX_DESTINATIONS: usize = 256;

/// A packet to relay.
#[derive(Debug, PartialEq)]
pub(crate) struct Relay {
    /// The packet as its recipients get it: the sender's identity and sid are Sluice's,
    /// whatever the client wrote, and the destination lists are gone.
    pub bytes: Vec<u8>,
    /// Recipients named by identity; with `sids` empty too, everyone else in the room.
    pub identities: Vec<String>,
    /// Recipients named by `PA_` sid (a user packet's legacy `destination_sids`).
    pub sids: Vec<String>,
}

impl Relay {
    /// Whether the member with `identity` and `sid` gets the packet.
    pub(crate) fn reaches(&self, identity: &str, sid: &str) -> bool {
        (self.identities.is_empty() && self.sids.is_empty())
            || self.identities.iter().any(|i| i == identity)
            || self.sids.iter().any(|s| s == sid)
    }
}

/// Why a packet is not relayed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// It came on a channel that carries no `DataPacket`s.
    #[error("data channel {0:?} does not carry data packets")]
    Channel(String),
    /// It does not decode.
    #[error("not a LiveKit DataPacket: {0}")]
    Malformed(String),
    /// It carries nothing.
    #[error("a DataPacket without a value")]
    Empty,
    /// Only the server sends this kind.
    #[error("{0} packets come only from the server")]
    ServerOnly(&'static str),
    /// It names too many recipients.
    #[error("{0} destinations, above the limit of {MAX_DESTINATIONS}")]
    TooManyDestinations(usize),
}

impl Refusal {
    /// A stable label for logs and metrics.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::Channel(_) => "channel",
            Refusal::Malformed(_) => "malformed",
            Refusal::Empty => "empty",
            Refusal::ServerOnly(_) => "server_only",
            Refusal::TooManyDestinations(_) => "too_many_destinations",
        }
    }
}

/// What to relay of `bytes`, which the participant `identity` (`PA_` sid `sid`) sent on
/// its data channel `label`.
pub(crate) fn relay(
    label: &str,
    bytes: &[u8],
    identity: &str,
    sid: &str,
) -> Result<Relay, Refusal> {
    if !LABELS.contains(&label) {
        return Err(Refusal::Channel(label.to_owned()));
    }
    let mut dp = proto::DataPacket::decode(bytes).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let mut identities = std::mem::take(&mut dp.destination_identities);
    let mut sids = Vec::new();
    match dp.value.as_mut() {
        None => return Err(Refusal::Empty),
        Some(proto::data_packet::Value::Speaker(_)) => {
            return Err(Refusal::ServerOnly("active speaker"));
        }
        Some(proto::data_packet::Value::User(u)) => {
            identities.append(&mut u.destination_identities);
            sids = std::mem::take(&mut u.destination_sids);
            u.participant_identity = identity.to_owned();
            u.participant_sid = sid.to_owned();
        }
        Some(_) => {}
    }
    let named = identities.len() + sids.len();
    if named > MAX_DESTINATIONS {
        return Err(Refusal::TooManyDestinations(named));
    }
    identities.sort_unstable();
    identities.dedup();
    dp.participant_identity = identity.to_owned();
    dp.participant_sid = sid.to_owned();
    Ok(Relay {
        bytes: dp.encode_to_vec(),
        identities,
        sids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(payload: &[u8], to: &[&str]) -> proto::DataPacket {
        proto::DataPacket {
            participant_identity: "mallory".into(),
            participant_sid: "PA_forged".into(),
            destination_identities: to.iter().map(|s| s.to_string()).collect(),
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                participant_identity: "mallory".into(),
                payload: payload.to_vec(),
                topic: Some("chat".into()),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn the_sender_is_who_sluice_says_whatever_the_client_wrote() {
        let r = relay(
            "_reliable",
            &user(b"hi", &[]).encode_to_vec(),
            "@a:x:D",
            "PA_a",
        )
        .unwrap();
        let out = proto::DataPacket::decode(&r.bytes[..]).unwrap();
        assert_eq!(out.participant_identity, "@a:x:D");
        assert_eq!(out.participant_sid, "PA_a");
        let Some(proto::data_packet::Value::User(u)) = out.value else {
            panic!("{out:?}")
        };
        assert_eq!(
            (u.participant_identity.as_str(), u.participant_sid.as_str()),
            ("@a:x:D", "PA_a")
        );
        assert_eq!(
            (u.payload.as_slice(), u.topic.as_deref()),
            (&b"hi"[..], Some("chat"))
        );
        assert!(r.reaches("anyone", "PA_x"));
    }

    #[test]
    fn destinations_name_the_recipients_and_leave_the_packet() {
        let mut dp = user(b"psst", &["bob"]);
        if let Some(proto::data_packet::Value::User(u)) = dp.value.as_mut() {
            u.destination_sids = vec!["PA_c".into()];
        }
        let r = relay("_lossy", &dp.encode_to_vec(), "alice", "PA_a").unwrap();
        assert!(r.reaches("bob", "PA_b") && r.reaches("carol", "PA_c"));
        assert!(!r.reaches("dave", "PA_d"));
        let out = proto::DataPacket::decode(&r.bytes[..]).unwrap();
        assert!(out.destination_identities.is_empty(), "{out:?}");
    }

    #[test]
    fn bad_packets_are_refused_with_their_reason() {
        let ok = user(b"x", &[]).encode_to_vec();
        assert_eq!(
            relay("_data_track", &ok, "a", "PA_a").unwrap_err().code(),
            "channel"
        );
        assert_eq!(
            relay("_reliable", &[0xff, 0xff, 0xff], "a", "PA_a")
                .unwrap_err()
                .code(),
            "malformed"
        );
        let empty = proto::DataPacket::default().encode_to_vec();
        assert_eq!(relay("_reliable", &empty, "a", "PA_a"), Err(Refusal::Empty));
        let speaker = proto::DataPacket {
            value: Some(proto::data_packet::Value::Speaker(Default::default())),
            ..Default::default()
        };
        assert_eq!(
            relay("_reliable", &speaker.encode_to_vec(), "a", "PA_a")
                .unwrap_err()
                .code(),
            "server_only"
        );
        let many: Vec<String> = (0..=MAX_DESTINATIONS).map(|i| format!("u{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            relay("_reliable", &user(b"x", &many).encode_to_vec(), "a", "PA_a"),
            Err(Refusal::TooManyDestinations(MAX_DESTINATIONS + 1))
        );
    }
}
