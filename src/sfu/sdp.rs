//! Checks on a client's SDP before any peer connection is allocated for it.

use super::SfuError;
use rtc::sdp::description::session::SessionDescription;
use std::io::Cursor;

/// Largest SDP accepted (docs/protocol.md §8).
pub const MAX_SDP_BYTES: usize = 32 * 1024;

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
}
