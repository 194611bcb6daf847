//! Checks on a client's SDP before any peer connection is allocated for it.

use super::SfuError;
use rtc::sdp::description::session::SessionDescription;
use std::io::Cursor;

/// Largest SDP the SFU parses, whatever the front end. A LiveKit client's offer grows by
/// about 3 KB per receive-only section (two per other publisher), so a large room's is
/// hundreds of KB; each front end keeps its own wire limit below this (the Matrix one is
/// 32 KiB, docs/protocol.md §8; LiveKit's WebSocket frames are at most 1 MiB).
pub const MAX_SDP_BYTES: usize = 1024 * 1024;

/// Audio codecs the media engine can receive and forward.
const AUDIO_CODECS: &[&str] = &["opus", "g722", "pcmu", "pcma"];
/// Video codecs the media engine can receive and forward.
const VIDEO_CODECS: &[&str] = &["vp8", "vp9", "h264", "av1", "h265"];

/// What an accepted offer contains.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    /// Audio sections with a codec Sluice supports.
    pub audio_sections: usize,
    /// Video sections with a codec Sluice supports.
    pub video_sections: usize,
    /// Whether an SCTP data channel section is present.
    pub data_channel: bool,
}

/// Parses `sdp` and checks that it is an offer Sluice can answer: well formed, not too
/// large, with at least one media section, and with a supported codec in every audio or
/// video section that is not disabled. Sections whose codecs are all unknown are refused
/// as a whole (`unsupported_codec`) when no section is usable.
pub fn check_offer(sdp: &str) -> Result<OfferSummary, SfuError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(SfuError::BadSdp(format!(
            "SDP is {} bytes, above the limit of {MAX_SDP_BYTES}",
            sdp.len()
        )));
    }
    if sdp.trim().is_empty() {
        return Err(SfuError::BadSdp("SDP is empty".to_owned()));
    }
    let parsed = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|e| SfuError::BadSdp(format!("SDP does not parse: {e}")))?;
    if parsed.media_descriptions.is_empty() {
        return Err(SfuError::NoMedia);
    }
    let mut summary = OfferSummary::default();
    let mut unsupported: Vec<String> = Vec::new();
    for media in &parsed.media_descriptions {
        let kind = media.media_name.media.as_str();
        if media.media_name.port.value == 0 {
            continue;
        }
        // Stream and track ids become keys and are relayed to everyone in the call.
        if let Some(msid) = media.attribute("msid").flatten() {
            check_msid(msid)?;
        }
        match kind {
            "application"
                if media
                    .media_name
                    .protos
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case("SCTP")) =>
            {
                summary.data_channel = true;
            }
            "audio" | "video" => {
                // RTP payload types are 7 bits: a section offering 128 or more would carry
                // packets whose type no receiver can match (webrtc-rs then drops them
                // without ever opening the track).
                if let Some(pt) = media
                    .media_name
                    .formats
                    .iter()
                    .find(|f| f.parse::<u8>().map_or(true, |pt| pt > 127))
                {
                    return Err(SfuError::BadSdp(format!(
                        "payload type `{pt}` in a {kind} section is not 0 to 127"
                    )));
                }
                let supported = if kind == "audio" {
                    AUDIO_CODECS
                } else {
                    VIDEO_CODECS
                };
                let names: Vec<String> = media
                    .codecs()
                    .values()
                    .map(|c| c.name.to_ascii_lowercase())
                    .collect();
                if names.iter().any(|n| supported.contains(&n.as_str())) {
                    if kind == "audio" {
                        summary.audio_sections += 1;
                    } else {
                        summary.video_sections += 1;
                    }
                } else {
                    let mut names = names;
                    names.sort();
                    names.dedup();
                    unsupported.push(format!("{kind}: [{}]", names.join(", ")));
                }
            }
            _ => {}
        }
    }
    if summary.audio_sections == 0 && summary.video_sections == 0 && !summary.data_channel {
        if unsupported.is_empty() {
            return Err(SfuError::NoMedia);
        }
        return Err(SfuError::UnsupportedCodec(unsupported.join("; ")));
    }
    Ok(summary)
}

/// Longest `msid` stream or track id (RFC 8830: 1 to 64 characters).
pub const MAX_MSID_LEN: usize = 64;

/// Checks an `a=msid:<stream id> [<track id>]` value.
fn check_msid(msid: &str) -> Result<(), SfuError> {
    let ids: Vec<&str> = msid.split_ascii_whitespace().collect();
    if ids.is_empty() || ids.len() > 2 {
        return Err(SfuError::BadSdp(format!(
            "`a=msid` must be a stream id and a track id, got {} words",
            ids.len()
        )));
    }
    for id in ids {
        if id.len() > MAX_MSID_LEN || id.chars().any(|c| c.is_control()) {
            return Err(SfuError::BadSdp(format!(
                "an `a=msid` id is {} bytes; ids are 1 to {MAX_MSID_LEN} characters (RFC 8830)",
                id.len()
            )));
        }
    }
    Ok(())
}

/// Repairs what webrtc-rs 0.21 gets wrong in an answer when several media sections offer
/// the same codecs (LiveKit clients offer six receive-only sections besides what they
/// send): a payload type listed twice in one section, and RTX entries whose `apt` names a
/// payload type the section does not carry. Chromium refuses such an answer
/// ("Failed to set remote video description send parameters"). Repeated attribute lines
/// of a section are dropped, and so are the dangling RTX payload types with their lines.
pub fn tidy_answer(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut sections = sdp.split("\r\nm=");
    if let Some(head) = sections.next() {
        out.push_str(head);
    }
    for section in sections {
        out.push_str("\r\nm=");
        out.push_str(&tidy_section(section));
    }
    out
}

/// One media section without its leading `m=`.
fn tidy_section(section: &str) -> String {
    let mut lines: Vec<&str> = section.split("\r\n").collect();
    let Some(m_line) = lines.first().copied() else {
        return section.to_owned();
    };
    let mut fields: Vec<&str> = m_line.split(' ').collect();
    if fields.len() < 4 {
        return section.to_owned();
    }
    // Payload types in order, each once.
    let mut pts: Vec<&str> = Vec::new();
    for pt in &fields[3..] {
        if !pts.contains(pt) {
            pts.push(pt);
        }
    }
    // RTX whose primary is not in the section.
    let dangling: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("a=fmtp:")?;
            let (pt, params) = rest.split_once(' ')?;
            let apt = params.strip_prefix("apt=")?;
            (!pts.contains(&apt.trim())).then(|| pt.to_owned())
        })
        .collect();
    pts.retain(|pt| !dangling.iter().any(|d| d == pt));
    fields.truncate(3);
    fields.extend(pts.iter().copied());
    let m_line = fields.join(" ");
    let about_dangling = |l: &str| {
        ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|p| {
            l.strip_prefix(p)
                .and_then(|r| r.split([' ', ':']).next())
                .is_some_and(|pt| dangling.iter().any(|d| d == pt))
        })
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut kept: Vec<&str> = Vec::with_capacity(lines.len());
    for l in lines.drain(1..) {
        if l.is_empty() {
            kept.push(l);
            continue;
        }
        if about_dangling(l) || seen.contains(&l) {
            continue;
        }
        seen.push(l);
        kept.push(l);
    }
    let mut out = m_line;
    for l in kept {
        out.push_str("\r\n");
        out.push_str(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(media: &str) -> String {
        format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n{media}")
    }

    #[test]
    fn garbage_is_bad_sdp() {
        assert!(matches!(
            check_offer("this is not sdp"),
            Err(SfuError::BadSdp(_))
        ));
        assert!(matches!(check_offer(""), Err(SfuError::BadSdp(_))));
    }

    #[test]
    fn oversized_is_bad_sdp() {
        let big = "a".repeat(MAX_SDP_BYTES + 1);
        match check_offer(&big) {
            Err(SfuError::BadSdp(m)) => assert!(m.contains("limit")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payload_types_past_seven_bits_are_bad_sdp() {
        for pt in ["128", "300", "x"] {
            let sdp = offer(&format!(
                "m=video 9 UDP/TLS/RTP/SAVPF 96 {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n"
            ));
            match check_offer(&sdp) {
                Err(SfuError::BadSdp(m)) => assert!(m.contains(pt), "{m}"),
                other => panic!("{pt}: {other:?}"),
            }
        }
        let ok = offer(
            "m=video 9 UDP/TLS/RTP/SAVPF 96 127\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n",
        );
        assert!(check_offer(&ok).is_ok());
    }

    #[test]
    fn no_sections_is_no_media() {
        assert!(matches!(check_offer(&offer("")), Err(SfuError::NoMedia)));
    }

    #[test]
    fn unknown_codec_only_is_unsupported() {
        let sdp = offer(
            "m=audio 9 UDP/TLS/RTP/SAVPF 103\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:103 ISAC/16000\r\n",
        );
        match check_offer(&sdp) {
            Err(SfuError::UnsupportedCodec(m)) => assert!(m.contains("isac"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn opus_and_data_channel_are_accepted() {
        let sdp = offer(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n",
        );
        let s = check_offer(&sdp).unwrap();
        assert_eq!(s.audio_sections, 1);
        assert!(s.data_channel);
    }

    #[test]
    fn msid_ids_longer_than_64_characters_are_bad_sdp() {
        let with_msid = |msid: &str| {
            offer(&format!(
                "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=msid:{msid}\r\na=rtpmap:111 opus/48000/2\r\n"
            ))
        };
        let ok = format!("{} {}", "s".repeat(64), "t".repeat(64));
        assert!(check_offer(&with_msid(&ok)).is_ok());
        let long = format!("stream {}", "t".repeat(65));
        match check_offer(&with_msid(&long)) {
            Err(SfuError::BadSdp(m)) => assert!(m.contains("1 to 64"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_offer(&with_msid("a b c")),
            Err(SfuError::BadSdp(_))
        ));
    }

    #[test]
    fn answers_lose_repeated_payload_types_and_dangling_rtx() {
        let sdp = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 98 98 97 36\r\na=mid:0\r\n\
                   a=rtpmap:96 VP8/90000\r\na=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\n\
                   a=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\na=rtpmap:97 rtx/90000\r\n\
                   a=fmtp:97 apt=96\r\na=rtpmap:36 rtx/90000\r\na=fmtp:36 apt=35\r\n\
                   a=rtcp-fb:36 nack\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
                   a=rtpmap:111 opus/48000/2\r\n";
        let got = tidy_answer(sdp);
        assert!(
            got.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 98 97\r\n"),
            "{got}"
        );
        assert_eq!(got.matches("a=rtpmap:98 VP9/90000").count(), 1, "{got}");
        assert!(
            !got.contains("a=rtpmap:36") && !got.contains("apt=35") && !got.contains("rtcp-fb:36"),
            "{got}"
        );
        assert!(got.contains("a=fmtp:97 apt=96"));
        assert!(
            got.ends_with(
                "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n"
            ),
            "{got}"
        );
        // A clean answer is left as it is.
        assert_eq!(tidy_answer(&got), got);
    }
}
