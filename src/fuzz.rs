//! Entry points for the fuzz targets (crate `sluice-fuzz`, `fuzz/`): each feeds arbitrary
//! bytes to one parser of untrusted input the way Sluice receives it, and checks what the
//! parser promises beyond not panicking. A panic or a failed check is a finding; each
//! returns whether the parser accepted the input (the engine reports the share).
//! docs/fuzzing.md says how they are run.

use crate::livekit::{auth, data, session, signal};
use crate::matrix::{dc_message, membership, protocol, stream_metadata};
use crate::sfu::rtcp::{KeyframeRequestInterceptor, NackBudgetInterceptor};
use crate::sfu::{IceCandidate, Stats, sdp};
use livekit_protocol as proto;
use prost::Message;
use rtc::interceptor::{AttributedPacket, Packet};
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage};
use serde_json::Value;
use sluice_media::estimates::Estimates;
use std::sync::Arc;
use std::time::Instant;

/// `<first line>\n<rest>`, the form of the targets whose input has a name and a body.
fn head_body(data: &[u8]) -> (&str, &[u8]) {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    (std::str::from_utf8(head).unwrap_or(""), body)
}

/// A to-device event as the inbox receives it: the event type on the first line, its
/// content (JSON) after it (docs/protocol.md §3).
pub fn to_device(data: &[u8]) -> bool {
    let (event_type, body) = head_body(data);
    let Ok(content) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let Ok(msg) = protocol::parse(event_type, &content, body.len()) else {
        return false;
    };
    // Whatever is accepted is within the wire limits.
    assert!(body.len() <= protocol::MAX_TO_DEVICE_BYTES, "{msg:?}");
    true
}

/// A call membership state event's content, its sender on the first line; then focus
/// selection over what it declares.
pub fn membership(data: &[u8]) -> bool {
    let (sender, body) = head_body(data);
    let Ok(content) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let now = 1_800_000_000_000;
    let mut ms = membership::parse(sender, &content, now - 1_000);
    let mut first = membership::FirstSeen::default();
    first.bound("!room:fuzz", &mut ms, now);
    for m in &ms {
        let _ = membership::active_focus(&ms, &m.conf_id, now);
    }
    first.bound("!room:fuzz", &mut [], now);
    assert!(
        first.is_empty(),
        "memberships remembered for a room with none"
    );
    !ms.is_empty()
}

/// Stream metadata (`sdp_stream_metadata`) as a client declares it.
pub fn stream_metadata(data: &[u8]) -> bool {
    let Ok(Value::Object(md)) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    let Ok(out) = stream_metadata::sanitize(&md) else {
        return false;
    };
    // What is relayed is what was checked: sanitizing again changes nothing.
    assert_eq!(stream_metadata::sanitize(&out).as_ref(), Ok(&out));
    true
}

/// An SDP offer (invite, renegotiation or LiveKit offer) through the checks made before a
/// peer connection is allocated.
pub fn sdp_offer(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(summary) = sdp::check_offer(text) else {
        return false;
    };
    assert!(summary.audio_sections + summary.video_sections > 0 || summary.data_channel);
    true
}

/// A data-channel text message (docs/protocol.md §4).
pub fn dc_message(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match dc_message::parse(text) {
        Ok(dc_message::DcMessage::Unknown(kind)) => {
            assert!(kind.len() <= 64);
            false
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

/// The `join_request` query parameter of LiveKit's `/rtc/v1` (Base64 of a possibly gzipped
/// `WrappedJoinRequest`) on the first line, then the connection's frames, each a
/// `SignalRequest` in URL-safe Base64 on a line of its own, taken apart as the connection
/// does; or the whole input as one raw frame.
pub fn livekit_signal(data: &[u8]) -> bool {
    use base64::Engine;
    let (param, frames) = head_body(data);
    let mut accepted = signal::decode_join(Some(&param.to_owned())).is_ok();
    accepted |= signal::decode_join(Some(&String::from_utf8_lossy(data).into_owned())).is_ok();
    let b64 = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded: Vec<Vec<u8>> = frames
        .split(|b| *b == b'\n')
        .filter_map(|l| b64.decode(l.trim_ascii()).ok())
        .collect();
    for frame in std::iter::once(data).chain(decoded.iter().map(Vec::as_slice)) {
        let Ok(req) = proto::SignalRequest::decode(frame) else {
            continue;
        };
        accepted |= req.message.is_some();
        use proto::signal_request::Message as Req;
        match req.message {
            Some(Req::Trickle(t)) => {
                let _ = serde_json::from_str::<IceCandidate>(&t.candidate_init);
            }
            Some(Req::TrackSetting(ts)) => {
                let _ = session::wanted_size(&ts, None);
                // livekit-client still sends the deprecated `layers`, which the size reads.
                #[allow(deprecated)]
                let info = proto::TrackInfo {
                    layers: (0..3)
                        .map(|q| proto::VideoLayer {
                            quality: q,
                            width: 320 << q,
                            height: 180 << q,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                let (w, h) = session::wanted_size(&ts, Some(&info));
                assert!(w <= 1 << 16 && h <= 1 << 16, "{w}x{h}");
            }
            Some(Req::Offer(o)) => {
                sdp_offer(o.sdp.as_bytes());
            }
            _ => {}
        }
    }
    accepted
}

/// A LiveKit access token (JWT) as the signaling endpoint verifies it.
pub fn livekit_token(data: &[u8]) -> bool {
    let Ok(token) = std::str::from_utf8(data) else {
        return false;
    };
    let v = livekit_api::access_token::TokenVerifier::with_api_key("fuzz-key", "fuzz-secret");
    // A token not signed with the secret never verifies (no signature in the corpus is).
    if let Ok(claims) = v.verify(token) {
        panic!("an unsigned token verified: {claims:?}");
    }
    // Accepted as far as the signature: three dot-separated Base64 parts.
    token.split('.').count() == 3
}

/// A LiveKit data packet as a client sends it: the data channel's label on the first line,
/// the `DataPacket` after it. What is relayed decodes, names Sluice's sender and no
/// destinations; a refusal has its code.
pub fn livekit_data(data: &[u8]) -> bool {
    let (label, body) = head_body(data);
    match data::relay(label, body, "@fuzz:example.org:DEVICE", "PA_fuzz") {
        Ok(r) => {
            let out = proto::DataPacket::decode(&r.bytes[..])
                .unwrap_or_else(|e| panic!("a relayed packet does not decode: {e}"));
            assert_eq!(
                (
                    out.participant_identity.as_str(),
                    out.participant_sid.as_str()
                ),
                ("@fuzz:example.org:DEVICE", "PA_fuzz")
            );
            assert!(out.destination_identities.is_empty());
            assert!(r.identities.len() + r.sids.len() <= data::MAX_DESTINATIONS);
            assert_eq!(
                r.reaches("someone-unnamed", "PA_unnamed"),
                r.identities.is_empty() && r.sids.is_empty()
            );
            true
        }
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            false
        }
    }
}

/// A request body of the authorization service (`/sfu/get` on the first line's choice:
/// `legacy`, else `/get_token`).
pub fn livekit_auth(data: &[u8]) -> bool {
    let (which, body) = head_body(data);
    match which {
        "legacy" => auth::legacy_ask(body).is_ok(),
        _ => auth::token_ask(body, which == "delegate").is_ok(),
    }
}

/// A compound RTCP packet from a subscriber through Sluice's interceptors' read paths.
pub fn rtcp(data: &[u8]) -> bool {
    let mut buf = data;
    let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut buf) else {
        return false;
    };
    let stats = Arc::new(Stats::default());
    let estimates = Arc::new(Estimates::new(0));
    let now = Instant::now();
    let msg = |packets| TransportMessage {
        now,
        transport: TransportContext::default(),
        message: AttributedPacket::new(Packet::Rtcp(packets)),
    };
    let mut kf = KeyframeRequestInterceptor::counted(stats.clone(), estimates.clone());
    let mut nb = NackBudgetInterceptor::new(estimates, stats);
    let cloned: Vec<Box<dyn rtc::rtcp::Packet>> = packets.iter().map(|p| p.cloned()).collect();
    if kf.handle_read(msg(packets)).is_ok() {
        assert!(kf.poll_read().is_some(), "a packet read was not passed on");
    }
    if nb.handle_read(msg(cloned)).is_ok() {
        while nb.poll_read().is_some() {}
    }
    true
}
