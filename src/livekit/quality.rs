//! `connection_quality` for LiveKit clients: each connection task asks the SFU for its own
//! participant's quality every [`INTERVAL`], keeps it in the room, and sends its client
//! the room's qualities (its own and the others'), as a LiveKit server does each interval.

use crate::sfu::{ConnectionQuality, Quality};
use livekit_protocol as proto;

/// How often each connection measures its quality and sends the room's.
pub(super) const INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

/// The LiveKit form of a participant's quality.
pub(super) fn info(participant_sid: &str, q: &ConnectionQuality) -> proto::ConnectionQualityInfo {
    let quality = match q.quality {
        Quality::Excellent => proto::ConnectionQuality::Excellent,
        Quality::Good => proto::ConnectionQuality::Good,
        Quality::Poor => proto::ConnectionQuality::Poor,
        Quality::Lost => proto::ConnectionQuality::Lost,
    };
    proto::ConnectionQualityInfo {
        participant_sid: participant_sid.to_owned(),
        quality: quality as i32,
        score: q.score as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::LinkSample;

    #[test]
    fn classes_map_to_livekit() {
        for (q, want) in [
            (Quality::Excellent, proto::ConnectionQuality::Excellent),
            (Quality::Good, proto::ConnectionQuality::Good),
            (Quality::Poor, proto::ConnectionQuality::Poor),
            (Quality::Lost, proto::ConnectionQuality::Lost),
        ] {
            let c = ConnectionQuality {
                quality: q,
                score: 3.0,
                link: LinkSample::default(),
            };
            let i = info("PA_a", &c);
            assert_eq!(
                (i.participant_sid.as_str(), i.quality, i.score),
                ("PA_a", want as i32, 3.0)
            );
        }
    }
}
