//! Active speaker ranking from the RFC 6464 audio level each publisher's audio carries.
//!
//! The forwarder keeps a smoothed loudness per audio source (no work beyond one extension
//! lookup per packet). Every housekeeping tick, [`detect`] ranks a conference's sources
//! that were above the threshold within the hold time, loudest first, and reports the
//! ranking when it changed.

use crate::ParticipantId;
use crate::source::Source;
use crate::stats::MediaKind;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
#[derive(Debug, Default)]
pub struct SpeakerState {
    /// When each track was last above the threshold.
    last_loud: HashMap<(ParticipantId, String), Instant>,
    /// The last announced order.
    announced: Vec<(ParticipantId, String)>,
}

/// Ranks the speakers among `sources` at `now` (a loudness ≥ `threshold`, 0..127, within
/// `hold`; at most `max`); `Some` when the ranking changed since the last call.
pub fn detect<'a>(
    state: &mut SpeakerState,
    sources: impl IntoIterator<Item = &'a Source>,
    now: Instant,
    threshold: f32,
    hold: Duration,
    max: usize,
) -> Option<Vec<Speaker>> {
    let mut current = Vec::new();
    for t in sources
        .into_iter()
        .filter(|t| t.info.kind == MediaKind::Audio)
    {
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
    pub fn participants(&self) -> Vec<ParticipantId> {
        let mut out: Vec<ParticipantId> = Vec::with_capacity(self.announced.len());
        for (p, _) in &self.announced {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}
