//! The publisher's codec choice. A LiveKit client names the codec of each video track in
//! its `add_track` (`simulcast_codecs`) but offers every codec its browser has, in the
//! browser's order (livekit-client 2.23 sets no codec preferences on its transceivers);
//! the browser then sends the first codec of the answer's section. LiveKit's server puts
//! the requested codec first; so does Sluice, in the answer it sends the client: the
//! sections whose offered track (`a=msid`) asked for a codec list that codec's payload
//! types first. The answer Sluice applied itself is unchanged (it receives every
//! negotiated payload type either way).

use std::collections::HashMap;

/// The codecs a connection's video tracks asked for, and the offer sections they are in.
#[derive(Debug, Default)]
pub(super) struct CodecPrefs {
    /// Track id (`cid`, the browser's track id) → codec (lower case, e.g. `h264`).
    by_track: HashMap<String, String>,
    /// The latest offer's section mid → its track's codec.
    by_mid: HashMap<String, String>,
}

impl CodecPrefs {
    /// An `add_track` for track `cid` asked for `codec`.
    pub(super) fn asked(&mut self, cid: &str, codec: &str) {
        self.by_track
            .insert(cid.to_owned(), codec.to_ascii_lowercase());
    }

    /// Reads which section of `offer` carries which asking track; tracks no longer in the
    /// offer are forgotten (so the map is no larger than the offer).
    pub(super) fn offered(&mut self, offer: &str) {
        self.by_mid.clear();
        let mut present = Vec::new();
        for section in offer.split("\r\nm=").skip(1) {
            if !section.starts_with("video ") {
                continue;
            }
            let attr = |name: &str| {
                section
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            let (Some(mid), Some(msid)) = (attr("a=mid:"), attr("a=msid:")) else {
                continue;
            };
            let Some(track) = msid.split(' ').nth(1) else {
                continue;
            };
            if let Some(codec) = self.by_track.get(track) {
                self.by_mid.insert(mid.to_owned(), codec.clone());
                present.push(track.to_owned());
            }
        }
        self.by_track.retain(|t, _| present.contains(t));
    }

    /// `answer` with each asking section's codec listed first.
    pub(super) fn apply(&self, answer: String) -> String {
        if self.by_mid.is_empty() {
            return answer;
        }
        let mut sections = answer.split("\r\nm=");
        let mut out = String::with_capacity(answer.len());
        out.push_str(sections.next().unwrap_or_default());
        for section in sections {
            out.push_str("\r\nm=");
            let mid = section
                .split("\r\n")
                .find_map(|l| l.strip_prefix("a=mid:"))
                .map(str::trim);
            match mid.and_then(|m| self.by_mid.get(m)) {
                Some(codec) => out.push_str(&first(section, codec)),
                None => out.push_str(section),
            }
        }
        out
    }
}

/// One section (without its `m=`) with `codec`'s payload types moved to the front of its
/// media line, the others in their order; unchanged when it has none of them.
fn first(section: &str, codec: &str) -> String {
    let (m_line, rest) = section.split_once("\r\n").unwrap_or((section, ""));
    let fields: Vec<&str> = m_line.split(' ').collect();
    if fields.len() < 4 {
        return section.to_owned();
    }
    let is_codec = |pt: &str| {
        let want = format!("a=rtpmap:{pt} ");
        rest.split("\r\n").any(|l| {
            l.strip_prefix(&want).is_some_and(|enc| {
                enc.split('/')
                    .next()
                    .is_some_and(|name| name.eq_ignore_ascii_case(codec))
            })
        })
    };
    let (mut pts, others): (Vec<&str>, Vec<&str>) = fields[3..].iter().partition(|pt| is_codec(pt));
    if pts.is_empty() {
        return section.to_owned();
    }
    pts.extend(others);
    let mut line = fields[..3].join(" ");
    for pt in pts {
        line.push(' ');
        line.push_str(pt);
    }
    if rest.is_empty() {
        line
    } else {
        format!("{line}\r\n{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
        a=msid:s a1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\na=mid:1\r\n\
        a=msid:s v1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\na=mid:2\r\n\
        a=msid:s v2\r\n";
    const ANSWER: &str = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n\
        a=rtpmap:97 rtx/90000\r\na=rtpmap:102 H264/90000\r\na=rtpmap:103 rtx/90000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\na=mid:2\r\na=rtpmap:96 VP8/90000\r\n\
        a=rtpmap:97 rtx/90000\r\na=rtpmap:102 H264/90000\r\na=rtpmap:103 rtx/90000\r\n";

    #[test]
    fn the_asked_codec_goes_first_in_its_section_only() {
        let mut p = CodecPrefs::default();
        p.asked("v1", "H264");
        p.offered(OFFER);
        let a = p.apply(ANSWER.to_owned());
        let m_lines: Vec<&str> = a.split("\r\n").filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            [
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "m=video 9 UDP/TLS/RTP/SAVPF 102 96 97 103",
                "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
            ]
        );
        // Everything but the reordered media line is as it was.
        assert_eq!(a.len(), ANSWER.len());
    }

    #[test]
    fn without_the_codec_or_the_track_the_answer_is_unchanged_and_gone_tracks_are_forgotten() {
        let mut p = CodecPrefs::default();
        p.asked("v1", "av1");
        p.asked("gone", "h264");
        p.offered(OFFER);
        assert_eq!(p.apply(ANSWER.to_owned()), ANSWER);
        assert_eq!(p.by_track.len(), 1);
        assert!(p.by_track.contains_key("v1"));
    }
}
