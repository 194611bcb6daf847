//! The bandwidth allocator's per-leg decisions, free of webrtc and of the async work
//! that carries them out (keyframe requests, resuming a leg): the upward-step hold, the
//! order in which a subscriber's video legs are served, and one leg's layer choice
//! ([`plan_leg`]). `track::allocate` runs them every 250 ms per subscriber; being pure
//! (atomics in, a [`Decision`] out), they are unit-tested here and benchmarked by
//! `sluice-loadtest micro`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Upward layer steps of one leg are at least this far apart (no flapping).
pub const UPGRADE_HOLD: Duration = Duration::from_secs(5);

/// A leg keeps at least its lowest layer this long after an upward step or a resume.
pub const MIN_KEPT_AFTER_UP: Duration = Duration::from_secs(3);

/// The longest the hold between upward steps grows to after failed upward steps.
pub const MAX_UPGRADE_HOLD: Duration = Duration::from_secs(30);

/// How long a leg probes for the extra rate of its next step before taking it.
pub const PROBE_DURATION: Duration = Duration::from_secs(1);

/// One leg's upward-step decision, from its step history (ms on the SFU clock, 0 never):
/// `Some(new_hold_ms)` when the leg may step up now, `None` while held.
///
/// Upward steps are at least a hold after the previous upward step and after the last
/// time the estimate forced the leg down. The hold starts at [`UPGRADE_HOLD`]; it
/// doubles (up to [`MAX_UPGRADE_HOLD`]) each time the estimate forces the leg back down
/// within two holds of an upward step (see [`note_forced_down`]), and returns to
/// [`UPGRADE_HOLD`] once an upward step was not followed by a forced one down. Where the
/// subscriber cannot be probed (no RTX), the upward step is what tests a grown estimate;
/// the growing hold bounds how often a path that cannot carry the layer is tried. Where
/// it can, a failed probe doubles the hold the same way (see [`plan_leg`]).
pub fn may_step_up(
    clock_ms: u64,
    last_up: u64,
    last_forced_down: u64,
    hold_ms: u64,
) -> Option<u64> {
    let hold = if hold_ms == 0 {
        UPGRADE_HOLD.as_millis() as u64
    } else {
        hold_ms
    };
    let since = last_up.max(last_forced_down);
    if since != 0 && clock_ms.saturating_sub(since) < hold {
        return None;
    }
    // The previous upward step held (no forced step down since): back to the base hold.
    Some(if last_forced_down < last_up {
        UPGRADE_HOLD.as_millis() as u64
    } else {
        hold
    })
}

/// The order in which the allocator serves video legs (smallest key first): screenshares
/// (`screenshare`), then the video of active speakers by their rank (`speaker`, 0 the
/// loudest), then the rest; within each, larger rendered tiles (`want`) first, and a leg
/// with no stated size as if it were the largest.
pub fn video_priority(
    screenshare: bool,
    speaker: Option<usize>,
    want: Option<(u32, u32)>,
) -> (bool, usize, std::cmp::Reverse<u64>) {
    (
        !screenshare,
        speaker.unwrap_or(usize::MAX),
        std::cmp::Reverse(want.map_or(u64::MAX, |(w, h)| w as u64 * h as u64)),
    )
}

/// The hold after the estimate forced a leg below its preferred layer at `clock_ms`:
/// doubled when that came within two holds of the last upward step (a failed step up).
pub fn note_forced_down(clock_ms: u64, last_up: u64, hold_ms: u64) -> u64 {
    let hold = if hold_ms == 0 {
        UPGRADE_HOLD.as_millis() as u64
    } else {
        hold_ms
    };
    if last_up != 0 && clock_ms.saturating_sub(last_up) < 2 * hold {
        (2 * hold).min(MAX_UPGRADE_HOLD.as_millis() as u64)
    } else {
        hold
    }
}

/// A leg's allocation state: what the allocator decided and when it last stepped.
/// Atomics, because the forwarder reads `bw_paused` per packet and the admin API reads
/// it too; only the allocator writes.
#[derive(Debug)]
pub struct StepState {
    /// Forward nothing: not even the lowest layer fits the subscriber's bandwidth.
    pub bw_paused: AtomicBool,
    /// Highest layer rank (0 = lowest) the allocator allows; `u32::MAX`: no cap.
    pub cap_rank: AtomicU32,
    /// When the allocator last stepped this leg up (ms since the subscriber's clock
    /// origin; 0 never).
    pub last_up_ms: AtomicU64,
    /// When the estimate last forced this leg below its preferred layer (same clock).
    pub last_forced_down_ms: AtomicU64,
    /// The current hold between upward steps, ms (0: [`UPGRADE_HOLD`]).
    pub up_hold_ms: AtomicU64,
    /// While the leg probes before an upward step: when the probe ends (same clock; 0:
    /// not probing).
    pub probe_until_ms: AtomicU64,
    /// The layer rank the leg last stayed on before trying a higher one ([`NO_RANK`]:
    /// none yet): where it falls back to after a failed try, and what it may climb back
    /// to at the base hold (see [`plan_leg`]).
    pub sustained_rank: AtomicU32,
}

/// [`StepState::sustained_rank`] before the leg has tried an upward step.
pub const NO_RANK: u32 = u32::MAX;

impl Default for StepState {
    fn default() -> Self {
        Self {
            bw_paused: AtomicBool::new(false),
            cap_rank: AtomicU32::new(u32::MAX),
            last_up_ms: AtomicU64::new(0),
            last_forced_down_ms: AtomicU64::new(0),
            up_hold_ms: AtomicU64::new(0),
            probe_until_ms: AtomicU64::new(0),
            sustained_rank: AtomicU32::new(NO_RANK),
        }
    }
}

impl StepState {
    /// Takes an upward step at `clock_ms` if the hold allows (see [`may_step_up`]),
    /// recording it; false while held.
    pub fn try_step_up(&self, clock_ms: u64) -> bool {
        match may_step_up(
            clock_ms,
            self.last_up_ms.load(Ordering::Relaxed),
            self.last_forced_down_ms.load(Ordering::Relaxed),
            self.up_hold_ms.load(Ordering::Relaxed),
        ) {
            Some(hold) => {
                self.up_hold_ms.store(hold, Ordering::Relaxed);
                self.last_up_ms.store(clock_ms.max(1), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Takes a step back up to a layer the leg already sustained, at `clock_ms`: a
    /// [`UPGRADE_HOLD`] after the last step either way, whatever the grown hold (that
    /// one spaces the tries above the sustained layer). The grown hold is left as it is.
    fn try_recover(&self, clock_ms: u64) -> bool {
        if !self.may_recover(clock_ms) {
            return false;
        }
        self.last_up_ms.store(clock_ms.max(1), Ordering::Relaxed);
        true
    }

    /// Whether [`StepState::try_recover`] would step now.
    fn may_recover(&self, clock_ms: u64) -> bool {
        let since = self
            .last_up_ms
            .load(Ordering::Relaxed)
            .max(self.last_forced_down_ms.load(Ordering::Relaxed));
        since == 0 || clock_ms.saturating_sub(since) >= UPGRADE_HOLD.as_millis() as u64
    }

    /// The sustained rank, if any.
    fn sustained(&self) -> Option<usize> {
        match self.sustained_rank.load(Ordering::Relaxed) {
            NO_RANK => None,
            r => Some(r as usize),
        }
    }
}

/// What a leg receives after one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: not even its lowest layer fits (the track is dropped).
    Dropped,
    /// It was dropped and comes back now, at its lowest layer.
    Resumed,
    /// The layer of this rank (0 = lowest) at most.
    Layer(usize),
}

impl Step {
    /// The layer rank the leg may receive, if any.
    pub fn rank(self) -> Option<usize> {
        match self {
            Step::Dropped => None,
            Step::Resumed => Some(0),
            Step::Layer(r) => Some(r),
        }
    }
}

/// What one leg may use, as [`plan_leg`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The estimate left after the legs served before it, bits/s (may be negative).
    pub remaining: i64,
    /// What the subscriber acknowledged receiving over the last second, less what the
    /// legs served before it were given, bits/s (None: unknown). Probes pass only when
    /// it shows the path carried them.
    pub delivered: Option<i64>,
    /// No feedback for a while: with nothing sent, a send-side estimate cannot recover
    /// on its own, so a dropped track comes back whatever it says.
    pub stale: bool,
}

impl Budget {
    /// `remaining` bits/s of a fresh estimate, with no delivery figure.
    pub fn of(remaining: i64) -> Self {
        Self {
            remaining,
            delivered: None,
            stale: false,
        }
    }
}

/// One leg's allocation, with what the caller logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What the leg receives now.
    pub step: Step,
    /// Set when the estimate forced the leg below where it was (or dropped it): the
    /// hold before its next upward step, ms.
    pub forced_down_hold_ms: Option<u64>,
    /// Set when the leg stepped up one layer: the rank it came from.
    pub stepped_up_from: Option<usize>,
    /// Extra traffic to send the subscriber now to probe for the next step, bits/s (0:
    /// none): the step's added rate, for [`PROBE_DURATION`] before it is taken.
    pub probe_bps: u64,
    /// Set when a probe ended: whether the estimate still covered the step (then it is
    /// taken) or not (then the leg stays, and the hold before the next try doubles).
    pub probe_passed: Option<bool>,
}

/// Chooses one simulcast leg's layer and records the choice in `st`.
///
/// `rates` are the live layers' bitrates (bits/s), lowest layer first; `pref` the rank
/// the subscriber's tile size asks for; `cur` the rank of the layer it is switching to
/// or receives (None: none yet); `remaining` the estimate left after the legs served
/// before it (may be negative). The leg gets the highest layer up to `pref` that fits
/// `remaining`, stepping down at once and dropping the track only when even the lowest
/// layer does not fit; upward steps go one layer at a time, a hold apart
/// ([`may_step_up`]); a dropped track comes back like an upward step and only with a 20 %
/// margin over its lowest layer, or whatever the estimate says when it is `stale` (no
/// feedback: with nothing sent, a send-side estimate cannot recover on its own). After
/// an upward step or a resume the leg keeps at least its lowest layer for
/// [`MIN_KEPT_AFTER_UP`], so the feedback on it can move the estimate; after a try above
/// the layer it sustained before ([`StepState::sustained_rank`]) it keeps that layer
/// instead, so a failed try falls back to where it came from, not below. Steps back up
/// to the sustained layer wait only [`UPGRADE_HOLD`]; the grown hold spaces the tries
/// above it.
///
/// With `can_probe` (the subscriber's connection can send probes), an upward step is
/// first probed for: once the hold allows it, the leg stays where it is for
/// [`PROBE_DURATION`] and asks for the step's added rate as probe traffic
/// ([`Decision::probe_bps`]); the step is taken when the estimate still covers it
/// afterwards. When it no longer does (the path queued or lost the probe), the probe
/// failed: no step, and the hold doubles as after a failed upward step.
///
/// `layer_of` gives each rung's layer (rungs of one layer are its temporal steps); empty,
/// each rung is a layer of its own. An upward step goes up at most one layer, to the
/// highest rung of it that fits.
#[allow(clippy::too_many_arguments)]
pub fn plan_leg(
    st: &StepState,
    rates: &[u64],
    layer_of: &[usize],
    pref: usize,
    cur: Option<usize>,
    budget: Budget,
    clock_ms: u64,
    can_probe: bool,
) -> Decision {
    let Budget {
        remaining,
        delivered,
        stale,
    } = budget;
    let pref = pref.min(rates.len().saturating_sub(1));
    let mut fits = (0..=pref)
        .rev()
        .find(|i| rates.get(*i).is_some_and(|r| *r as i64 <= remaining));
    let was_paused = st.bw_paused.load(Ordering::Relaxed);
    // A track that just came back (or stepped up) keeps at least its lowest layer for a
    // while: the feedback on it is what can move the estimate, and an estimate near that
    // layer's rate would otherwise drop and resume it every tick, which left the estimate
    // at its floor with no clean feedback at all.
    // After a try above the sustained layer, that is the floor instead: a step the path
    // cannot carry collapses the estimate below the layer it came from for a moment (the
    // queue it built), and following the collapse down left legs a layer below the one
    // that fits, held there by the grown hold.
    if !was_paused {
        let last_up = st.last_up_ms.load(Ordering::Relaxed);
        if last_up != 0 && clock_ms.saturating_sub(last_up) < MIN_KEPT_AFTER_UP.as_millis() as u64 {
            // (Only to fall back to: a leg below it climbs by steps, as any.)
            let floor = st
                .sustained()
                .filter(|s| cur.is_some_and(|c| c >= *s))
                .unwrap_or(0)
                .min(pref);
            if fits.is_none_or(|f| f < floor) {
                fits = Some(floor);
            }
        }
    }
    // Step down first; drop the track only when even its lowest layer does not fit.
    let forced_down = match (fits, cur) {
        (None, _) => !was_paused,
        (Some(f), Some(c)) => f < pref && f < c,
        (Some(_), None) => false,
    };
    let mut forced_down_hold_ms = None;
    if forced_down {
        let hold = note_forced_down(
            clock_ms,
            st.last_up_ms.load(Ordering::Relaxed),
            st.up_hold_ms.load(Ordering::Relaxed),
        );
        st.up_hold_ms.store(hold, Ordering::Relaxed);
        st.last_forced_down_ms
            .store(clock_ms.max(1), Ordering::Relaxed);
        forced_down_hold_ms = Some(hold);
    }
    // A dropped track comes back like any upward step (a hold after it was dropped), and
    // only with a margin over its lowest layer, so a budget close to that layer's rate
    // does not toggle it every tick.
    if was_paused && (fits.is_some() || stale) {
        let margin_ok = stale
            || rates
                .first()
                .is_some_and(|r| *r as i64 * 6 / 5 <= remaining);
        fits = (margin_ok && st.try_step_up(clock_ms)).then_some(0);
    }
    let dropped = fits.is_none();
    let step = if st.bw_paused.swap(dropped, Ordering::Relaxed) && !dropped {
        st.cap_rank.store(0, Ordering::Relaxed);
        Step::Resumed
    } else if dropped {
        Step::Dropped
    } else {
        let mut fit = fits.unwrap_or(0);
        let mut stepped_up_from = None;
        let mut probe_bps = 0;
        let mut probe_passed = None;
        let probing = st.probe_until_ms.load(Ordering::Relaxed);
        match cur {
            Some(cur) if fit > cur => {
                // One step: up to one layer higher, with as many of its temporal layers
                // as fit (a rung at a time would make a climb through three layers of
                // three temporal layers eight holds long).
                let layer = |r: usize| layer_of.get(r).copied().unwrap_or(r);
                let up = (cur + 1..=fit)
                    .rev()
                    .find(|&r| layer(r) <= layer(cur) + 1)
                    .unwrap_or(cur + 1);
                let step_rate = rates[up].saturating_sub(rates[cur]);
                // Back up to the layer the leg sustained before a failed try: at the base
                // hold (the grown one spaces tries above it, not the way back).
                let recovering = st.sustained().is_some_and(|s| layer(up) <= layer(s));
                let allowed = || {
                    if recovering {
                        st.may_recover(clock_ms)
                    } else {
                        may_step_up(
                            clock_ms,
                            st.last_up_ms.load(Ordering::Relaxed),
                            st.last_forced_down_ms.load(Ordering::Relaxed),
                            st.up_hold_ms.load(Ordering::Relaxed),
                        )
                        .is_some()
                    }
                };
                if can_probe && probing == 0 {
                    // The hold allows a step: probe for it first.
                    if allowed() {
                        st.probe_until_ms.store(
                            clock_ms.max(1) + PROBE_DURATION.as_millis() as u64,
                            Ordering::Relaxed,
                        );
                        // A try above the layer it stayed on through the hold: that
                        // layer is the sustained one, as for an unprobed step. (A leg
                        // forced down from f stays on h with no upward step of its own;
                        // when a failed probe for f then collapsed the estimate below h,
                        // the way back to h waited for the grown hold, 10 s and more on
                        // q under a 200 kbit/s limit in CI.)
                        if !recovering {
                            st.sustained_rank.store(cur as u32, Ordering::Relaxed);
                        }
                        probe_bps = step_rate;
                    }
                    fit = cur;
                } else if can_probe && clock_ms < probing {
                    probe_bps = step_rate;
                    fit = cur;
                } else {
                    // The probe is over. The estimate alone does not pass it: under a
                    // limit with a deep queue it can keep growing while the probe is
                    // only queued. The feedback must also show the path delivered at
                    // least half the probe's added rate on top of the current layer.
                    let carried = probing == 0
                        || delivered.is_none_or(|d| d >= rates[cur] as i64 + step_rate as i64 / 2);
                    if probing != 0 {
                        st.probe_until_ms.store(0, Ordering::Relaxed);
                        probe_passed = Some(carried);
                        if !carried && forced_down_hold_ms.is_none() {
                            fail_upward_step(st, clock_ms);
                        }
                    }
                    let stepped = if !carried {
                        false
                    } else if recovering {
                        st.try_recover(clock_ms)
                    } else {
                        let tried = st.try_step_up(clock_ms);
                        if tried {
                            st.sustained_rank.store(cur as u32, Ordering::Relaxed);
                        }
                        tried
                    };
                    if stepped {
                        fit = up;
                        stepped_up_from = Some(cur);
                    } else {
                        fit = cur;
                    }
                }
            }
            _ if probing != 0 => {
                // The estimate no longer covers the step it probed for.
                st.probe_until_ms.store(0, Ordering::Relaxed);
                probe_passed = Some(false);
                // A forced step down has already lengthened the hold.
                if forced_down_hold_ms.is_none() {
                    fail_upward_step(st, clock_ms);
                }
            }
            _ => {}
        }
        st.cap_rank.store(fit as u32, Ordering::Relaxed);
        return Decision {
            step: Step::Layer(fit),
            forced_down_hold_ms,
            stepped_up_from,
            probe_bps,
            probe_passed,
        };
    };
    let probe_passed = (st.probe_until_ms.swap(0, Ordering::Relaxed) != 0).then(|| {
        if forced_down_hold_ms.is_none() {
            fail_upward_step(st, clock_ms);
        }
        false
    });
    Decision {
        step,
        forced_down_hold_ms,
        stepped_up_from: None,
        probe_bps: 0,
        probe_passed,
    }
}

/// Records an upward step that did not hold (a failed probe): the hold before the next
/// try doubles, up to [`MAX_UPGRADE_HOLD`], counted from now.
fn fail_upward_step(st: &StepState, clock_ms: u64) {
    let hold = match st.up_hold_ms.load(Ordering::Relaxed) {
        0 => UPGRADE_HOLD.as_millis() as u64,
        h => h,
    };
    st.up_hold_ms.store(
        (2 * hold).min(MAX_UPGRADE_HOLD.as_millis() as u64),
        Ordering::Relaxed,
    );
    st.last_forced_down_ms
        .store(clock_ms.max(1), Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
