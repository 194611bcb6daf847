//! MatrixRTC call membership, read from raw `org.matrix.msc3401.call.member` state
//! (docs/protocol.md §2). ruma's typed content reads a non-LiveKit focus as "left", so this
//! parses the JSON itself.

use serde_json::Value;
use std::collections::HashMap;

/// The state event type of call memberships.
pub const CALL_MEMBER_EVENT: &str = "org.matrix.msc3401.call.member";
/// Default membership lifetime when `expires` is absent: 4 hours.
pub const DEFAULT_EXPIRES_MS: u64 = 4 * 60 * 60 * 1000;

/// A transport (focus) a membership prefers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// `type`, e.g. `sluice` or `livekit`.
    pub kind: String,
    /// The focus's Matrix user, for `sluice` transports.
    pub user_id: Option<String>,
    /// The focus's device, for `sluice` transports.
    pub device_id: Option<String>,
}

impl Transport {
    fn from_json(v: &Value) -> Option<Transport> {
        Some(Transport {
            kind: v.get("type")?.as_str()?.to_owned(),
            user_id: v.get("user_id").and_then(Value::as_str).map(str::to_owned),
            device_id: v
                .get("device_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Whether this transport names the focus `user_id`/`device_id`.
    pub fn is(&self, user_id: &str, device_id: &str) -> bool {
        self.kind == "sluice"
            && self.user_id.as_deref() == Some(user_id)
            && self.device_id.as_deref() == Some(device_id)
    }
}

/// One device's membership of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The member (the state event's sender).
    pub user_id: String,
    /// The member's device.
    pub device_id: String,
    /// The call: `call_id` of the membership (`""` is the room's main call), or the legacy
    /// `m.call_id`.
    pub conf_id: String,
    /// When the membership was created (ms since epoch), as the client wrote it: what its
    /// expiry counts from.
    pub created_ms: u64,
    /// The server's timestamp of the state event it was read from.
    pub origin_ms: u64,
    /// Its age for `oldest_membership`: `created_ms`, but never earlier than the server's
    /// timestamp of the first event Sluice saw declaring it ([`FirstSeen::bound`]).
    pub rank_ms: u64,
    /// When it expires (ms since epoch).
    pub expires_at_ms: u64,
    /// The focus the member prefers first.
    pub preferred_focus: Option<Transport>,
}

impl Membership {
    /// Whether the membership is still valid at `now_ms`.
    pub fn is_valid(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// Parses one `org.matrix.msc3401.call.member` state event (its sender, content and
/// `origin_server_ts`) into the memberships it declares. Empty content means left: none.
/// Returns an empty list for content it cannot read.
pub fn parse(sender: &str, content: &Value, origin_server_ts: u64) -> Vec<Membership> {
    let Some(obj) = content.as_object() else {
        return Vec::new();
    };
    if obj.is_empty() {
        return Vec::new();
    }
    // Legacy MSC3401: {"m.calls": [{"m.call_id", "m.devices": [...]}]}
    if let Some(calls) = obj.get("m.calls").and_then(Value::as_array) {
        let mut out = Vec::new();
        for call in calls {
            let Some(conf_id) = call.get("m.call_id").and_then(Value::as_str) else {
                continue;
            };
            let Some(devices) = call.get("m.devices").and_then(Value::as_array) else {
                continue;
            };
            for d in devices {
                let Some(device_id) = d.get("device_id").and_then(Value::as_str) else {
                    continue;
                };
                let expires_at_ms = d
                    .get("expires_ts")
                    .and_then(Value::as_u64)
                    .unwrap_or(origin_server_ts + DEFAULT_EXPIRES_MS);
                let preferred_focus = d
                    .get("org.matrix.msc3898.foci.active")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(|f| {
                        Some(Transport {
                            kind: "sluice".to_owned(),
                            user_id: Some(f.get("user_id")?.as_str()?.to_owned()),
                            device_id: Some(f.get("device_id")?.as_str()?.to_owned()),
                        })
                    });
                out.push(Membership {
                    user_id: sender.to_owned(),
                    device_id: device_id.to_owned(),
                    conf_id: conf_id.to_owned(),
                    created_ms: origin_server_ts,
                    origin_ms: origin_server_ts,
                    rank_ms: origin_server_ts,
                    expires_at_ms,
                    preferred_focus,
                });
            }
        }
        return out;
    }
    // Per-device form (what current matrix-js-sdk writes).
    if obj.get("application").and_then(Value::as_str) != Some("m.call") {
        return Vec::new();
    }
    let Some(device_id) = obj.get("device_id").and_then(Value::as_str) else {
        return Vec::new();
    };
    let conf_id = obj
        .get("call_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let created_ms = obj
        .get("created_ts")
        .and_then(Value::as_u64)
        .unwrap_or(origin_server_ts);
    let expires = obj
        .get("expires")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_EXPIRES_MS);
    let preferred_focus = obj
        .get("foci_preferred")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Transport::from_json);
    vec![Membership {
        user_id: sender.to_owned(),
        device_id: device_id.to_owned(),
        conf_id,
        created_ms,
        origin_ms: origin_server_ts,
        rank_ms: created_ms,
        expires_at_ms: created_ms.saturating_add(expires),
        preferred_focus,
    }]
}

/// The focus serving a call under `oldest_membership`: the preferred focus of the oldest
/// valid membership of that call.
pub fn active_focus<'a>(
    memberships: impl IntoIterator<Item = &'a Membership>,
    conf_id: &str,
    now_ms: u64,
) -> Option<&'a Transport> {
    memberships
        .into_iter()
        .filter(|m| m.conf_id == conf_id && m.is_valid(now_ms))
        .min_by_key(|m| (m.rank_ms, m.user_id.as_str(), m.device_id.as_str()))
        .and_then(|m| m.preferred_focus.as_ref())
}

/// The server's timestamp of the first state event Sluice saw declaring each membership
/// (user, device, call) of each room, while it lasts; see [`FirstSeen::bound`].
///
/// `created_ts` is whatever the client wrote: a member who writes `created_ts: 1` would
/// otherwise be the oldest member of every call and choose its focus for everyone. The
/// server's `origin_server_ts` cannot be back-dated, but a refresh of a membership (a new
/// event with a later `expires`) carries a later one than the membership's real start;
/// so the first one seen counts.
#[derive(Debug, Default)]
pub struct FirstSeen {
    rooms: HashMap<String, HashMap<(String, String, String), u64>>,
}

impl FirstSeen {
    /// Bounds the `rank_ms` of `room`'s current memberships `ms` (all of its valid ones,
    /// as read from its state at `now_ms`) by when each was first seen, and forgets the
    /// memberships of the room that ended (so a later one starts afresh).
    pub fn bound(&mut self, room: &str, ms: &mut [Membership], now_ms: u64) {
        let seen = self.rooms.remove(room).unwrap_or_default();
        let mut next = HashMap::with_capacity(ms.len());
        for m in ms.iter_mut().filter(|m| m.is_valid(now_ms)) {
            let key = (m.user_id.clone(), m.device_id.clone(), m.conf_id.clone());
            let first = seen
                .get(&key)
                .copied()
                .unwrap_or(m.origin_ms)
                .min(m.origin_ms);
            m.rank_ms = m.created_ms.max(first);
            next.insert(key, first);
        }
        if !next.is_empty() {
            self.rooms.insert(room.to_owned(), next);
        }
    }

    /// Memberships remembered, over all rooms (for tests and leak checks).
    pub fn len(&self) -> usize {
        self.rooms.values().map(HashMap::len).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn current(device: &str, call: &str, created: u64, expires: u64, focus_dev: &str) -> Value {
        json!({"application": "m.call", "call_id": call, "scope": "m.room",
            "device_id": device, "expires": expires, "created_ts": created,
            "focus_active": {"type": "sluice", "focus_selection": "oldest_membership"},
            "foci_preferred": [{"type": "sluice", "user_id": "@sfu:hs", "device_id": focus_dev}]})
    }

    #[test]
    fn parses_the_current_form() {
        let m = parse("@a:hs", &current("ADEV", "", 1000, 5000, "SFU1"), 99);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].device_id, "ADEV");
        assert_eq!(m[0].conf_id, "");
        assert_eq!(m[0].created_ms, 1000);
        assert_eq!(m[0].expires_at_ms, 6000);
        assert!(m[0].preferred_focus.as_ref().unwrap().is("@sfu:hs", "SFU1"));
        assert!(m[0].is_valid(5999));
        assert!(!m[0].is_valid(6000));
    }

    #[test]
    fn empty_content_means_left() {
        assert!(parse("@a:hs", &json!({}), 1).is_empty());
        assert!(parse("@a:hs", &json!(null), 1).is_empty());
    }

    #[test]
    fn missing_created_ts_and_expires_use_origin_ts_and_four_hours() {
        let m = parse(
            "@a:hs",
            &json!({"application": "m.call", "call_id": "c", "device_id": "D"}),
            500,
        );
        assert_eq!(m[0].created_ms, 500);
        assert_eq!(m[0].expires_at_ms, 500 + DEFAULT_EXPIRES_MS);
        assert_eq!(m[0].preferred_focus, None);
    }

    #[test]
    fn parses_the_legacy_form() {
        let content = json!({"m.calls": [{"m.call_id": "conf1", "m.devices": [
            {"device_id": "D1", "session_id": "s", "expires_ts": 9000,
             "org.matrix.msc3898.foci.active": [{"user_id": "@sfu:hs", "device_id": "SFU1"}]},
            {"device_id": "D2", "session_id": "t"}]}]});
        let m = parse("@a:hs", &content, 100);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].conf_id, "conf1");
        assert_eq!(m[0].expires_at_ms, 9000);
        assert!(m[0].preferred_focus.as_ref().unwrap().is("@sfu:hs", "SFU1"));
        assert_eq!(m[1].expires_at_ms, 100 + DEFAULT_EXPIRES_MS);
        assert_eq!(m[1].preferred_focus, None);
    }

    #[test]
    fn other_applications_are_ignored() {
        let mut c = current("D", "", 1, 10, "S");
        c["application"] = json!("m.game");
        assert!(parse("@a:hs", &c, 1).is_empty());
    }

    #[test]
    fn oldest_valid_membership_picks_the_focus() {
        let a = parse("@a:hs", &current("A", "", 2000, 100_000, "NEWER"), 0);
        let b = parse("@b:hs", &current("B", "", 1000, 100_000, "OLDEST"), 0);
        let expired = parse("@c:hs", &current("C", "", 10, 20, "EXPIRED"), 0);
        let other_call = parse("@d:hs", &current("D", "x", 1, 100_000, "OTHER"), 0);
        let all: Vec<Membership> = [a, b, expired, other_call].concat();
        let f = active_focus(&all, "", 5000).unwrap();
        assert_eq!(f.device_id.as_deref(), Some("OLDEST"));
        assert_eq!(
            active_focus(&all, "x", 5000).unwrap().device_id.as_deref(),
            Some("OTHER")
        );
        assert!(active_focus(&all, "nope", 5000).is_none());
    }

    #[test]
    fn a_back_dated_created_ts_does_not_outrank_the_server_clock() {
        let day = 86_400_000;
        let mut seen = FirstSeen::default();
        // Alice joined at 1000 (server time) naming this Sluice.
        let mut ms = parse("@a:hs", &current("A", "", 1000, day, "SLUICE"), 1000);
        seen.bound("!r", &mut ms, 2000);
        // Mallory joins at 50 000 claiming `created_ts: 1` and names another focus.
        ms.extend(parse(
            "@m:hs",
            &current("M", "", 1, day, "ELSEWHERE"),
            50_000,
        ));
        // Without the bound Mallory is the oldest member.
        assert_eq!(
            active_focus(&ms, "", 60_000).unwrap().device_id.as_deref(),
            Some("ELSEWHERE")
        );
        seen.bound("!r", &mut ms, 60_000);
        assert_eq!(ms[1].rank_ms, 50_000);
        assert_eq!(
            active_focus(&ms, "", 60_000).unwrap().device_id.as_deref(),
            Some("SLUICE")
        );
        // Alice refreshes her membership at 70 000 (same created_ts, later event): she
        // stays the oldest, her first event counts.
        let mut ms = parse("@a:hs", &current("A", "", 1000, 2 * day, "SLUICE"), 70_000);
        ms.extend(parse(
            "@m:hs",
            &current("M", "", 1, day, "ELSEWHERE"),
            50_000,
        ));
        seen.bound("!r", &mut ms, 71_000);
        assert_eq!((ms[0].rank_ms, ms[1].rank_ms), (1000, 50_000));
        // Memberships that ended are forgotten; a room with none leaves nothing behind.
        assert_eq!(seen.len(), 2);
        seen.bound("!r", &mut [], 72_000);
        assert!(seen.is_empty());
    }
}
