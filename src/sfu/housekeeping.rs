//! The housekeeping tick: every [`PERIOD`], per conference, the layer rates, then the
//! active speaker ranking (announced when it changed, so at most 4 times a second), then
//! the layers each video track's subscribers need (dynacast, told its publisher when that
//! changed), then each subscriber's bandwidth allocation (sizes learned from keyframes, stalled layers,
//! bandwidth estimates). One task for the whole instance.

use super::{Inner, NeededLayers, SfuEventKind};
use sluice_media::speakers;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// The tick: speaker announcements are at most this frequent.
pub const PERIOD: Duration = Duration::from_millis(250);

/// Runs the tick until the SFU is dropped.
pub(crate) async fn run(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let cfg = &inner.config;
        let threshold = 127.0 - cfg.speaker_threshold_dbov as f32;
        let hold = Duration::from_millis(cfg.speaker_hold_ms);
        let confs = inner.all_conferences();
        let now = Instant::now();
        for c in confs {
            let tracks = c.tracks();
            for t in &tracks {
                t.update_rates(PERIOD);
            }
            let ranking = {
                let mut state = c.speakers.lock().unwrap();
                let sources = tracks.iter().map(|t| t.source().as_ref());
                speakers::detect(
                    &mut state,
                    sources,
                    now,
                    threshold,
                    hold,
                    cfg.max_active_speakers,
                )
            };
            let participants = c.participants();
            if let Some(list) = ranking {
                for p in &participants {
                    p.emit(SfuEventKind::ActiveSpeakers(list.clone()));
                }
            }
            // Dynacast: tell publishers which layers of their tracks anyone needs.
            for t in &tracks {
                let source = t.source();
                if let Some(rids) = source.dynacast(now)
                    && let Some(p) = participants.iter().find(|p| p.id == source.info.publisher)
                {
                    p.emit(SfuEventKind::LayersNeeded(NeededLayers {
                        track: source.info.track.clone(),
                        rids,
                    }));
                }
            }
            let speakers = c.speaker_order();
            for p in participants {
                p.allocate(now, &speakers).await;
            }
        }
    }
}
