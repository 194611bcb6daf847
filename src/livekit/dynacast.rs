//! Dynacast for LiveKit publishers: the SFU's [`NeededLayers`] of a track as the
//! `subscribed_quality_update` livekit-client acts on (with `dynacast` on, it turns off the
//! encodings of the qualities not enabled, and the whole track when none is).
//!
//! LiveKit names simulcast layers by quality, and livekit-client gives its encodings the
//! RIDs `q`, `h` and `f` for low, medium and high (a single stream counts as low, and an SVC
//! stream is on when any quality is). Every quality up to the highest needed one is
//! enabled, as LiveKit does: the lower layers are what the bandwidth allocator falls back to.

use crate::sfu::NeededLayers;
use livekit_protocol as proto;

/// The quality of the layer with `rid` (livekit-client's names; anything else: high).
fn quality_of(rid: Option<&str>) -> proto::VideoQuality {
    match rid {
        Some("q") => proto::VideoQuality::Low,
        Some("h") => proto::VideoQuality::Medium,
        _ => proto::VideoQuality::High,
    }
}

/// The update for track `track_sid` (codec `mime_type`, e.g. `video/VP8`) when `needed`.
pub(super) fn update(
    track_sid: &str,
    mime_type: &str,
    needed: &NeededLayers,
) -> proto::SubscribedQualityUpdate {
    let top = needed
        .rids
        .iter()
        .map(|r| quality_of(r.as_deref()))
        .max_by_key(|q| *q as i32);
    let qualities: Vec<proto::SubscribedQuality> = [
        proto::VideoQuality::Low,
        proto::VideoQuality::Medium,
        proto::VideoQuality::High,
    ]
    .into_iter()
    .map(|q| proto::SubscribedQuality {
        quality: q as i32,
        enabled: top.is_some_and(|t| q as i32 <= t as i32),
    })
    .collect();
    // livekit-client matches the codec by its short name ("vp8"); another name would make
    // it publish that codec as a backup.
    let codec = mime_type
        .rsplit('/')
        .next()
        .unwrap_or(mime_type)
        .to_ascii_lowercase();
    #[allow(deprecated)]
    proto::SubscribedQualityUpdate {
        track_sid: track_sid.to_owned(),
        subscribed_qualities: qualities.clone(),
        subscribed_codecs: vec![proto::SubscribedCodec { codec, qualities }],
    }
}

/// How many qualities `update` enables (they are always the lowest ones): its index in
/// [`super::signal::DYNACAST_TOPS`].
pub(super) fn enabled_count(update: &proto::SubscribedQualityUpdate) -> usize {
    update
        .subscribed_codecs
        .first()
        .map_or(0, |c| c.qualities.iter().filter(|q| q.enabled).count())
        .min(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::TrackRef;

    fn enabled(rids: &[Option<&str>]) -> (String, Vec<bool>) {
        let needed = NeededLayers {
            track: TrackRef {
                stream_id: "s".into(),
                track_id: "t".into(),
            },
            rids: rids.iter().map(|r| r.map(str::to_owned)).collect(),
        };
        let u = update("TR_x", "video/VP8", &needed);
        assert_eq!(u.track_sid, "TR_x");
        let c = &u.subscribed_codecs[0];
        assert_eq!(
            enabled_count(&u),
            c.qualities.iter().filter(|q| q.enabled).count()
        );
        (
            c.codec.clone(),
            c.qualities.iter().map(|q| q.enabled).collect(),
        )
    }

    #[test]
    fn qualities_up_to_the_highest_needed_layer_are_enabled() {
        assert_eq!(
            enabled(&[Some("q")]),
            ("vp8".into(), vec![true, false, false])
        );
        assert_eq!(enabled(&[Some("q"), Some("h")]).1, vec![true, true, false]);
        assert_eq!(
            enabled(&[Some("q"), Some("h"), Some("f")]).1,
            vec![true, true, true]
        );
        // Nothing needed: every quality off (livekit-client then pauses the track).
        assert_eq!(enabled(&[]).1, vec![false, false, false]);
        // A stream without a RID (one encoding, or SVC): on.
        assert_eq!(enabled(&[None]).1, vec![true, true, true]);
    }
}
