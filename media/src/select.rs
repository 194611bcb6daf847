//! Per-leg targets as values: which layer (and spatial and temporal layers of it) each
//! subscriber leg should receive, from the subscriber's tile size, stalled layers and the
//! bandwidth allocation. Nothing here sends: the keyframe requests a new target needs are
//! returned to the caller, which asks the publisher (see [`crate::source::Source::keyframe_allowed`]).

use crate::ParticipantId;
use crate::alloc;
use crate::estimates::Estimates;
use crate::layers::{ALL_SPATIAL, ALL_TEMPORAL, LAYER_STALL};
use crate::source::{LegSink, Source};
use crate::stats::MediaKind;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Keyframe requests a decision needs: publisher stream SSRCs (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keyframes(pub [u32; 2]);

impl Keyframes {
    fn ask(&mut self, ssrc: u32) {
        if let Some(slot) = self.0.iter_mut().find(|s| **s == 0 || **s == ssrc) {
            *slot = ssrc;
        }
    }

    /// The streams to ask, each once.
    pub fn ssrcs(self) -> impl Iterator<Item = u32> {
        self.0.into_iter().filter(|s| *s != 0)
    }
}

/// Points `sink` at the layer it should receive now (preference among live layers). Returns
/// whether the target changed, and the keyframes to ask for: the target layer's while the
/// leg has not switched to it yet (every call, the caller's throttle spacing them), or the
/// one that lets the leg take more spatial layers.
pub fn retarget(source: &Source, sink: &LegSink, now: Instant) -> (bool, Keyframes) {
    let mut keyframes = Keyframes::default();
    let Some(mut want) = source.preferred_layer(sink.want(), now, LAYER_STALL) else {
        return (false, keyframes);
    };
    // The allocator's cap is a rung of the track's ladder: a layer, and the spatial and
    // temporal layers of it. Below the cap's layer, the leg gets every temporal layer;
    // of an SVC stream, the spatial layers its tile needs.
    let cap = sink.step.cap_rank.load(Ordering::Relaxed);
    let mut tid = ALL_TEMPORAL;
    let mut sid = source.preferred_sid(want, sink.want());
    if cap != u32::MAX {
        let (ranked, rungs) = source.ladder(now);
        if rungs.len() > 1
            && let Some(pos) = ranked.iter().position(|l| l.ssrc == want)
        {
            let r = rungs[(cap as usize).min(rungs.len() - 1)];
            if pos > r.layer || (pos == r.layer && r.sid <= sid) {
                want = ranked[r.layer].ssrc;
                (sid, tid) = (r.sid, r.tid);
            }
        }
    }
    sink.tid_target.store(tid, Ordering::Relaxed);
    sink.sid_target.store(sid, Ordering::Relaxed);
    // More spatial layers start at a keyframe.
    if sid > sink.sid_cur.load(Ordering::Relaxed) && source.info.kind == MediaKind::Video {
        let on = match sink.selected_ssrc.load(Ordering::Relaxed) {
            0 => want,
            s => s,
        };
        keyframes.ask(on);
    }
    let old = sink.target_ssrc.swap(want, Ordering::Relaxed);
    let selected = sink.selected_ssrc.load(Ordering::Relaxed);
    // A simulcast switch still pending asks again each time (the publisher stream's
    // throttle lets one request per interval through): the first ask may have been
    // coalesced into a request that another leg, or this one before, made less than an
    // interval earlier, whose keyframe came before the leg wanted this layer; browsers
    // send no periodic keyframes, so the leg stayed on the old layer for good (a 160x90
    // tile kept a 640-wide layer in CI).
    let pending = source.is_simulcast() && want != selected;
    if old == want && selected != 0 && !pending {
        return (false, keyframes);
    }
    if !source.is_simulcast() {
        // One stream: the forwarder adopts it at once; ask for a keyframe to start on.
        if selected == 0 && source.info.kind == MediaKind::Video {
            keyframes.ask(want);
        }
        return (old != want, keyframes);
    }
    if want != selected && source.info.kind == MediaKind::Video {
        keyframes.ask(want);
    }
    (old != want, keyframes)
}

/// Restarts a paused leg at the next keyframe of its target layer (a simulcast leg
/// forwards nothing until then); returns the stream whose keyframe to ask for (0: none).
pub fn resume(source: &Source, sink: &LegSink) -> u32 {
    if source.info.kind != MediaKind::Video {
        return 0;
    }
    if source.is_simulcast() {
        sink.selected_ssrc.store(0, Ordering::Relaxed);
    }
    match sink.target_ssrc.load(Ordering::Relaxed) {
        0 => sink.selected_ssrc.load(Ordering::Relaxed),
        t => t,
    }
}

/// Fits one subscriber's legs into its bandwidth estimate (`estimates`' effective one,
/// 0 = unknown: no cap): audio first, then video in [`alloc::video_priority`] order (screenshares, then the
/// active speakers' video, loudest first, then by rendered size), each simulcast
/// leg at the highest layer up to its size preference that fits what is left, stepping
/// down first and dropping the track (until it fits again) only when even its lowest
/// layer does not; upward steps one layer at a time, a hold apart (see
/// [`alloc::plan_leg`]).
/// A dropped track also comes back when the estimate is stale (no feedback: with
/// nothing sent, a send-side estimate cannot recover on its own).
/// When the subscriber's connection can send RTX probes (`estimates.can_probe`, see the
/// transport's prober), upward steps are probed for first, and a probe passes only when
/// the rate the subscriber acknowledged (`estimates.delivered`) shows the path carried it;
/// the probe rate the legs ask for is returned (bits/s, 0: none) for the prober.
/// Then re-targets every leg (sizes, stalls, caps). The keyframes the new targets need go
/// to `keyframes`, each with the index of its leg in `legs`.
#[allow(clippy::too_many_arguments)]
pub fn allocate(
    subscriber: &str,
    legs: &[(&Source, &LegSink)],
    estimates: &Estimates,
    now: Instant,
    clock_ms: u64,
    speakers: &[ParticipantId],
    keyframes: &mut Vec<(usize, u32)>,
) -> u64 {
    let budget_bps = estimates.effective();
    let stale = estimates.is_stale(now);
    let can_probe = estimates.can_probe.load(Ordering::Relaxed);
    let mut delivered = match estimates.delivered.load(Ordering::Relaxed) {
        0 => None,
        d => Some(d as i64),
    };
    let mut probe_bps = 0;
    let mut remaining = budget_bps as i64;
    // What the legs served so far take, from the estimate and from what was delivered.
    let take = |remaining: &mut i64, delivered: &mut Option<i64>, bps: u64| {
        *remaining -= bps as i64;
        if let Some(d) = delivered {
            *d -= bps as i64;
        }
    };
    let mut video: Vec<(usize, &Source, &LegSink)> = Vec::new();
    for (i, &(source, sink)) in legs.iter().enumerate() {
        if source.info.kind == MediaKind::Audio {
            take(&mut remaining, &mut delivered, source.rate_of(0));
        } else if !sink.paused.load(Ordering::Relaxed) {
            video.push((i, source, sink));
        }
    }
    video.sort_by_key(|&(_, source, sink)| {
        alloc::video_priority(
            source.screenshare.load(Ordering::Relaxed),
            speakers.iter().position(|p| *p == source.info.publisher),
            sink.want(),
        )
    });
    let retarget_into = |keyframes: &mut Vec<(usize, u32)>, i, source, sink| {
        let (_, asks) = retarget(source, sink, now);
        keyframes.extend(asks.ssrcs().map(|s| (i, s)));
    };
    for (i, source, sink) in video {
        let (ranked, rungs) = source.ladder(now);
        if !source.is_simulcast() && rungs.len() <= 1 {
            // One stream without temporal layers: nothing to choose.
            take(&mut remaining, &mut delivered, source.rate_of(0));
            sink.step.cap_rank.store(u32::MAX, Ordering::Relaxed);
            sink.step.bw_paused.store(false, Ordering::Relaxed);
        } else if budget_bps == 0 {
            sink.step.cap_rank.store(u32::MAX, Ordering::Relaxed);
            sink.step.bw_paused.store(false, Ordering::Relaxed);
        } else {
            // The preferred layer at its full frame rate is the top rung the leg wants.
            let pref_layer = source
                .preferred_layer(sink.want(), now, LAYER_STALL)
                .and_then(|p| ranked.iter().position(|l| l.ssrc == p))
                .unwrap_or(ranked.len().saturating_sub(1));
            // Of an SVC stream, the spatial layers the tile needs.
            let pref_sid = ranked
                .get(pref_layer)
                .map_or(ALL_SPATIAL, |l| l.preferred_sid(sink.want()));
            let pref = rungs
                .iter()
                .rposition(|r| r.layer < pref_layer || (r.layer == pref_layer && r.sid <= pref_sid))
                .unwrap_or(0);
            let rates: Vec<u64> = rungs.iter().map(|r| r.rate).collect();
            let layer_of: Vec<usize> = rungs.iter().map(|r| r.layer).collect();
            let target = sink.target_ssrc.load(Ordering::Relaxed);
            let target_tid = sink.tid_target.load(Ordering::Relaxed);
            let target_sid = sink.sid_target.load(Ordering::Relaxed);
            let cur = ranked.iter().position(|l| l.ssrc == target).and_then(|lp| {
                rungs.iter().position(|r| {
                    r.layer == lp
                        && (r.sid > target_sid || (r.sid == target_sid && r.tid >= target_tid))
                })
            });
            let budget = alloc::Budget {
                remaining,
                delivered,
                stale,
            };
            let d = alloc::plan_leg(
                &sink.step, &rates, &layer_of, pref, cur, budget, clock_ms, can_probe,
            );
            probe_bps += d.probe_bps;
            // A probe still going is in what was delivered: not for the legs after it.
            if let Some(left) = &mut delivered {
                *left -= d.probe_bps as i64;
            }
            if let Some(passed) = d.probe_passed {
                source.stats().probes[usize::from(!passed)].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    participant = subscriber,
                    track = %source.info.track.track_id,
                    from_rank = ?cur,
                    estimate_bps = budget_bps,
                    passed,
                    "bandwidth: probe for an upward step ended"
                );
            }
            if let Some(hold) = d.forced_down_hold_ms {
                tracing::debug!(
                    participant = subscriber,
                    track = %source.info.track.track_id,
                    from_rank = ?cur,
                    to_rank = ?d.step.rank(),
                    estimate_bps = budget_bps,
                    upgrade_hold_ms = hold,
                    "bandwidth: leg stepped down (none: track dropped)"
                );
            }
            match d.step {
                alloc::Step::Dropped => continue,
                alloc::Step::Resumed => {
                    tracing::debug!(
                        participant = subscriber,
                        track = %source.info.track.track_id,
                        estimate_bps = budget_bps,
                        stale,
                        "bandwidth: dropped track resumed at its lowest layer"
                    );
                    // Resumed at the lowest layer: the next step up waits for the hold.
                    retarget_into(keyframes, i, source, sink);
                    let ask = resume(source, sink);
                    if ask != 0 {
                        keyframes.push((i, ask));
                    }
                    take(
                        &mut remaining,
                        &mut delivered,
                        rates.first().copied().unwrap_or(0),
                    );
                    continue;
                }
                alloc::Step::Layer(fit) => {
                    if let Some(from) = d.stepped_up_from {
                        tracing::debug!(
                            participant = subscriber,
                            track = %source.info.track.track_id,
                            from_rank = from,
                            to_rank = fit,
                            estimate_bps = budget_bps,
                            "bandwidth: leg stepped up"
                        );
                    }
                    take(
                        &mut remaining,
                        &mut delivered,
                        rates.get(fit).copied().unwrap_or(0),
                    );
                }
            }
        }
        retarget_into(keyframes, i, source, sink);
    }
    probe_bps
}

#[cfg(test)]
mod tests;
