//! LiveKit room names and participant identities, derived from Matrix ids exactly as the
//! MatrixRTC authorization service (lk-jwt-service, MSC4195) derives them: Element Call
//! computes the same values on its own to route end-to-end-encryption keys, so any other
//! derivation leaves remote media undecryptable.

use base64::Engine;
use sha2::{Digest, Sha256};

/// The MatrixRTC slot of a room's call, which `/sfu/get` requests imply.
pub const LEGACY_SLOT: &str = "m.call#ROOM";

/// The LiveKit room name of a MatrixRTC slot: unpadded standard Base64 of
/// SHA-256(JSON `[room_id, slot_id]`).
pub fn room_alias(room_id: &str, slot_id: &str) -> String {
    hash_strings(&[room_id, slot_id])
}

/// The identity `/sfu/get` gives: `<user id>:<device id>`.
pub fn legacy_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

/// The identity `/get_token` gives: unpadded standard Base64 of
/// SHA-256(JSON `[user_id, device_id, member_id]`).
pub fn member_identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    hash_strings(&[user_id, device_id, member_id])
}

/// Hashes the JSON array of `parts` as Go's `encoding/json` writes it (the reference
/// implementation's): like serde_json, but `<`, `>`, `&`, U+2028 and U+2029 escaped.
fn hash_strings(parts: &[&str]) -> String {
    let json = serde_json::to_string(parts).unwrap_or_default();
    let mut go = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => go.push_str("\\u003c"),
            '>' => go.push_str("\\u003e"),
            '&' => go.push_str("\\u0026"),
            '\u{2028}' => go.push_str("\\u2028"),
            '\u{2029}' => go.push_str("\\u2029"),
            c => go.push(c),
        }
    }
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(go.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vectors of MSC4195's appendix ("hash derivation test vectors").
    #[test]
    fn room_alias_matches_the_msc_test_vector() {
        assert_eq!(
            room_alias("!roomid:example.com", "slot1234"),
            "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
        );
    }

    #[test]
    fn member_identity_matches_the_msc_test_vector() {
        assert_eq!(
            member_identity("@alice:example.com", "DEVICE123", "memberABC"),
            "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
        );
    }

    #[test]
    fn html_characters_are_escaped_as_go_does() {
        // `<` written raw would hash differently.
        let escaped = hash_strings(&["a<b"]);
        let raw =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(br#"["a<b"]"#));
        let go = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(Sha256::digest(br#"["a\u003cb"]"#));
        assert_ne!(escaped, raw);
        assert_eq!(escaped, go);
    }

    #[test]
    fn legacy_identity_is_the_plain_concatenation() {
        assert_eq!(
            legacy_identity("@alice:example.com", "DEV"),
            "@alice:example.com:DEV"
        );
    }
}
