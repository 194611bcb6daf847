//! Active speaker detection from the RFC 6464 audio level each publisher's audio carries,
//! and the periodic housekeeping task that runs it (it also re-balances simulcast legs).
//!
//! The forwarder keeps a smoothed loudness per audio track (no work beyond one extension
//! lookup per packet). Every 250 ms a detector ranks, per conference, the tracks that were
//! above the threshold within the hold time, loudest first, and announces the ranking
//! when it changed: at most 4 announcements a second.

use super::conference::Conference;
use super::{Inner, MediaKind, ParticipantId, SfuEventKind};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// Detector period: announcements are at most this frequent.
pub const PERIOD: Duration = Duration::from_millis(250);

/// One announced speaker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Speaker {
    /// The publishing participant.
    pub participant: ParticipantId,
    /// The audio track's stream id.
    pub stream_id: String,
    /// The audio track's id.
    pub track_id: String,
    /// Smoothed level 0..1 (1 = 0 dBov, 0 = −127 dBov or silent).
    pub level: f32,
}

/// Per-conference detector state.
#[derive(Default)]
pub(crate) struct SpeakerState {
    /// When each track was last above the threshold.
    last_loud: HashMap<(ParticipantId, String), Instant>,
    /// The last announced order.
    announced: Vec<(ParticipantId, String)>,
}

/// Ranks the conference's speakers at `now`; `Some` when the ranking changed.
pub(crate) fn detect(
    conf: &Conference,
    now: Instant,
    threshold: f32,
    hold: Duration,
    max: usize,
) -> Option<Vec<Speaker>> {
    let tracks = conf.tracks();
    let mut state = conf.speakers.lock().unwrap();
    let mut current = Vec::new();
    for t in tracks.iter().filter(|t| t.info.kind == MediaKind::Audio) {
        let key = (t.info.publisher.clone(), t.info.track.track_id.clone());
        let loudness = t.loudness(now);
        if loudness >= threshold {
            state.last_loud.insert(key.clone(), now);
        }
        if state
            .last_loud
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) <= hold)
        {
            current.push(Speaker {
                participant: t.info.publisher.clone(),
                stream_id: t.info.track.stream_id.clone(),
                track_id: t.info.track.track_id.clone(),
                level: (loudness / 127.0).clamp(0.0, 1.0),
            });
        }
    }
    // Forget tracks that are gone or long quiet.
    state
        .last_loud
        .retain(|_, at| now.duration_since(*at) <= hold);
    current.sort_by(|a, b| {
        b.level
            .total_cmp(&a.level)
            .then_with(|| a.participant.cmp(&b.participant))
    });
    current.truncate(max);
    let order: Vec<(ParticipantId, String)> = current
        .iter()
        .map(|s| (s.participant.clone(), s.track_id.clone()))
        .collect();
    if order == state.announced {
        return None;
    }
    state.announced = order;
    Some(current)
}

impl SpeakerState {
    /// The participants among the current speakers, loudest first, each once.
    pub(crate) fn participants(&self) -> Vec<ParticipantId> {
        let mut out: Vec<ParticipantId> = Vec::with_capacity(self.announced.len());
        for (p, _) in &self.announced {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// Runs the detector for every conference until the SFU is dropped.
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
            if let Some(list) = detect(&c, now, threshold, hold, cfg.max_active_speakers) {
                inner.emit(&c.id, "", SfuEventKind::ActiveSpeakers(list));
            }
            // Simulcast: layer rates, then each subscriber's allocation (sizes learned
            // from keyframes, stalled layers, bandwidth estimates).
            for t in c.tracks() {
                t.update_rates(PERIOD);
            }
            let speakers = c.speaker_order();
            for p in c.participants() {
                p.allocate(now, &speakers).await;
            }
        }
    }
}
