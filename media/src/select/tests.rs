//! Unit tests of per-leg re-targeting.

use super::*;
use crate::layers::Layer;
use crate::source::{LegOutput, SourceNegotiation, Written};
use crate::stats::Stats;
use crate::{JoinClock, TrackInfo, TrackRef};
use std::sync::Arc;
use std::time::Duration;

struct Nowhere;

impl LegOutput for Nowhere {
    fn write(&self, _pkt: rtp::Packet) -> Written {
        Written::Sent
    }
}

const Q: u32 = 11;
const H: u32 = 22;

/// A VP8 track with layers q and h, and one leg of it.
fn simulcast() -> (Source, LegSink) {
    let info = TrackInfo {
        publisher: "pub".into(),
        track: TrackRef {
            stream_id: "s".into(),
            track_id: "t".into(),
        },
        kind: MediaKind::Video,
        mime_type: "video/VP8".into(),
    };
    let layer = |rid: &str, ssrc| Layer {
        rid: Some(rid.into()),
        ssrc,
    };
    let source = Source::new(
        info,
        90_000,
        SourceNegotiation::default(),
        layer("q", Q),
        Duration::from_secs(1),
        Arc::new(Stats::default()),
    );
    source.add_layer(layer("h", H));
    let sink = LegSink::new(&source, Arc::new(Nowhere), Arc::new(JoinClock::start()));
    (source, sink)
}

#[test]
fn a_pending_switch_asks_for_its_keyframe_again_until_the_leg_switches() {
    let (source, sink) = simulcast();
    let now = Instant::now();
    // The leg receives h; its tile shrinks to 160x90: q, and q's keyframe.
    sink.selected_ssrc.store(H, Ordering::Relaxed);
    sink.want.store(160 << 16 | 90, Ordering::Relaxed);
    let (changed, asks) = retarget(&source, &sink, now);
    assert!(changed);
    assert_eq!(asks.ssrcs().collect::<Vec<_>>(), vec![Q]);
    // No keyframe yet (the request may have been coalesced into an earlier one): asked
    // again, though the target is unchanged.
    let (changed, asks) = retarget(&source, &sink, now);
    assert!(!changed);
    assert_eq!(asks.ssrcs().collect::<Vec<_>>(), vec![Q]);
    // Switched: nothing more to ask.
    sink.selected_ssrc.store(Q, Ordering::Relaxed);
    let (changed, asks) = retarget(&source, &sink, now);
    assert!(!changed);
    assert_eq!(asks.ssrcs().count(), 0);
}
