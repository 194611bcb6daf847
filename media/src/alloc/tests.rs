//! Unit tests of the allocator's per-leg decisions.

use super::*;

#[test]
fn failed_upward_steps_lengthen_the_hold_and_a_lasting_one_resets_it() {
    let base = UPGRADE_HOLD.as_millis() as u64;
    // Never stepped up: may step now, at the base hold.
    assert_eq!(may_step_up(1_000, 0, 0, 0), Some(base));
    // Stepped up at 10 s: held until 15 s.
    assert_eq!(may_step_up(14_000, 10_000, 0, base), None);
    assert_eq!(may_step_up(15_000, 10_000, 0, base), Some(base));
    // Forced down 3 s after the step up: the hold doubles, then doubles again, capped.
    let hold = note_forced_down(13_000, 10_000, base);
    assert_eq!(hold, 2 * base);
    assert_eq!(may_step_up(22_000, 10_000, 13_000, hold), None);
    assert_eq!(may_step_up(23_000, 10_000, 13_000, hold), Some(2 * base));
    // Forced down without a step up before: held for one hold from then.
    assert_eq!(may_step_up(3_000, 0, 1_000, base), None);
    assert_eq!(may_step_up(6_000, 0, 1_000, base), Some(base));
    let mut h = hold;
    for _ in 0..5 {
        h = note_forced_down(20_500, 20_000, h);
    }
    assert_eq!(h, MAX_UPGRADE_HOLD.as_millis() as u64);
    // A forced step down long after the last step up is not a failed step up.
    assert_eq!(note_forced_down(60_000, 20_000, base), base);
    // An upward step that was not followed by a forced one: back to the base hold.
    assert_eq!(may_step_up(80_000, 40_000, 30_000, h), Some(base));
}

#[test]
fn screenshares_then_speakers_then_larger_tiles_get_the_bandwidth_first() {
    let big = Some((1280, 720));
    let small = Some((320, 180));
    let mut legs = [
        ("small camera", video_priority(false, None, small)),
        ("big camera", video_priority(false, None, big)),
        (
            "second speaker, small",
            video_priority(false, Some(1), small),
        ),
        (
            "loudest speaker, small",
            video_priority(false, Some(0), small),
        ),
        ("camera of unknown size", video_priority(false, None, None)),
        ("small screenshare", video_priority(true, None, small)),
        (
            "speaker's big screenshare",
            video_priority(true, Some(0), big),
        ),
    ];
    legs.sort_by_key(|(_, k)| *k);
    let order: Vec<&str> = legs.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        order,
        [
            "speaker's big screenshare",
            "small screenshare",
            "loudest speaker, small",
            "second speaker, small",
            "camera of unknown size",
            "big camera",
            "small camera",
        ]
    );
}

const RATES: [u64; 3] = [50_000, 150_000, 270_000];

fn plan(st: &StepState, cur: Option<usize>, remaining: i64, stale: bool, t: u64) -> Decision {
    plan_leg(
        st,
        &RATES,
        &[],
        2,
        cur,
        Budget {
            stale,
            ..Budget::of(remaining)
        },
        t,
        false,
    )
}

#[test]
fn steps_down_at_once_and_up_one_layer_a_hold_later() {
    let st = StepState::default();
    let d = plan(&st, Some(2), 1_000_000, false, 1_000);
    assert_eq!(d.step, Step::Layer(2));
    assert_eq!(d.forced_down_hold_ms, None);
    // Only h fits: straight down to it, and the hold starts.
    let d = plan(&st, Some(2), 200_000, false, 2_000);
    assert_eq!(d.step, Step::Layer(1));
    assert_eq!(d.forced_down_hold_ms, Some(UPGRADE_HOLD.as_millis() as u64));
    assert_eq!(st.cap_rank.load(Ordering::Relaxed), 1);
    // Room again, but within the hold: stays.
    let d = plan(&st, Some(1), 1_000_000, false, 6_999);
    assert_eq!((d.step, d.stepped_up_from), (Step::Layer(1), None));
    // After it: one layer up.
    let d = plan(&st, Some(1), 1_000_000, false, 7_000);
    assert_eq!((d.step, d.stepped_up_from), (Step::Layer(2), Some(1)));
    assert_eq!(st.cap_rank.load(Ordering::Relaxed), 2);
}

fn probed(st: &StepState, cur: usize, remaining: i64, t: u64) -> Decision {
    plan_leg(
        st,
        &RATES,
        &[],
        2,
        Some(cur),
        Budget::of(remaining),
        t,
        true,
    )
}

#[test]
fn an_upward_step_is_probed_for_before_it_is_taken() {
    let st = StepState::default();
    // Forced down to h at 2 s.
    assert_eq!(probed(&st, 2, 200_000, 2_000).step, Step::Layer(1));
    // Room again after the hold: a probe at f's added rate, no step yet.
    let d = probed(&st, 1, 1_000_000, 7_000);
    assert_eq!((d.step, d.stepped_up_from), (Step::Layer(1), None));
    assert_eq!(d.probe_bps, 120_000);
    // Still probing: the probe goes on.
    let d = probed(&st, 1, 1_000_000, 7_500);
    assert_eq!(
        (d.step, d.probe_bps, d.probe_passed),
        (Step::Layer(1), 120_000, None)
    );
    // The probe is over and the estimate still covers f: the step.
    let d = probed(&st, 1, 1_000_000, 8_000);
    assert_eq!((d.step, d.stepped_up_from), (Step::Layer(2), Some(1)));
    assert_eq!((d.probe_bps, d.probe_passed), (0, Some(true)));
    assert_eq!(st.probe_until_ms.load(Ordering::Relaxed), 0);
}

#[test]
fn a_failed_probe_takes_no_step_and_doubles_the_hold() {
    let st = StepState::default();
    assert_eq!(probed(&st, 2, 200_000, 2_000).step, Step::Layer(1));
    assert_eq!(probed(&st, 1, 1_000_000, 7_000).probe_bps, 120_000);
    // The probe made the estimate fall below f (still above h): no step, no probe.
    let d = probed(&st, 1, 200_000, 7_600);
    assert_eq!(d.step, Step::Layer(1));
    assert_eq!((d.probe_bps, d.probe_passed), (0, Some(false)));
    let base = UPGRADE_HOLD.as_millis() as u64;
    assert_eq!(st.up_hold_ms.load(Ordering::Relaxed), 2 * base);
    // Room again: the next probe waits for the doubled hold from the failure.
    assert_eq!(probed(&st, 1, 1_000_000, 7_600 + 2 * base - 1).probe_bps, 0);
    assert_eq!(
        probed(&st, 1, 1_000_000, 7_600 + 2 * base).probe_bps,
        120_000
    );
    // Without probing, the same leg steps straight up.
    let st = StepState::default();
    assert_eq!(
        plan(&st, Some(2), 200_000, false, 2_000).step,
        Step::Layer(1)
    );
    let d = plan(&st, Some(1), 1_000_000, false, 7_000);
    assert_eq!((d.step, d.probe_bps), (Step::Layer(2), 0));
}

#[test]
fn a_leg_a_failed_probe_took_below_the_layer_it_probed_from_climbs_back_at_the_base_hold() {
    let base = UPGRADE_HOLD.as_millis() as u64;
    let st = StepState::default();
    // Forced down from f to h (no upward step of its own); a first probe for f fails
    // and doubles the hold.
    assert_eq!(probed(&st, 2, 200_000, 2_000).step, Step::Layer(1));
    assert_eq!(probed(&st, 1, 1_000_000, 7_000).probe_bps, 120_000);
    assert_eq!(probed(&st, 1, 200_000, 7_600).probe_passed, Some(false));
    assert_eq!(st.sustained_rank.load(Ordering::Relaxed), 1);
    // The next probe, a doubled hold later: the queue it builds collapses the estimate
    // below h, and the leg goes down to q.
    let t = 7_600 + 2 * base;
    assert_eq!(probed(&st, 1, 1_000_000, t).probe_bps, 120_000);
    let d = probed(&st, 1, 100_000, t + 600);
    assert_eq!((d.step, d.probe_passed), (Step::Layer(0), Some(false)));
    assert!(st.up_hold_ms.load(Ordering::Relaxed) > base);
    // The estimate is back: the way back to h waits only the base hold, then probes.
    let t = t + 600;
    assert_eq!(probed(&st, 0, 1_000_000, t + base - 1).probe_bps, 0);
    let d = probed(&st, 0, 1_000_000, t + base);
    assert_eq!((d.step, d.probe_bps), (Step::Layer(0), 100_000));
    // The recovery probe leaves h the sustained layer, and passes.
    assert_eq!(st.sustained_rank.load(Ordering::Relaxed), 1);
    let d = probed(&st, 0, 1_000_000, t + base + 1_000);
    assert_eq!(
        (d.step, d.probe_passed, d.stepped_up_from),
        (Step::Layer(1), Some(true), Some(0))
    );
    // The next try at f still waits for the grown hold.
    assert_eq!(probed(&st, 1, 1_000_000, t + 2 * base + 1_000).probe_bps, 0);
}

#[test]
fn a_probe_the_path_did_not_deliver_fails_though_the_estimate_covers_the_step() {
    let base = UPGRADE_HOLD.as_millis() as u64;
    let at = |st: &StepState, delivered: Option<i64>, t| {
        let budget = Budget {
            delivered,
            ..Budget::of(1_000_000)
        };
        plan_leg(st, &RATES, &[], 2, Some(1), budget, t, true)
    };
    let st = StepState::default();
    assert_eq!(probed(&st, 2, 200_000, 2_000).step, Step::Layer(1));
    assert_eq!(at(&st, Some(150_000), 7_000).probe_bps, 120_000);
    // The estimate grew, but only h's rate and a fifth of the probe came back.
    let d = at(&st, Some(175_000), 8_000);
    assert_eq!((d.step, d.probe_passed), (Step::Layer(1), Some(false)));
    assert_eq!(st.up_hold_ms.load(Ordering::Relaxed), 2 * base);
    // The next try after the doubled hold: this time the probe came back.
    let t = 8_000 + 2 * base;
    assert_eq!(at(&st, Some(150_000), t).probe_bps, 120_000);
    let d = at(&st, Some(260_000), t + 1_000);
    assert_eq!(
        (d.step, d.probe_passed, d.stepped_up_from),
        (Step::Layer(2), Some(true), Some(1))
    );
}

#[test]
fn a_failed_try_falls_back_to_the_sustained_layer_and_climbs_back_at_the_base_hold() {
    let base = UPGRADE_HOLD.as_millis() as u64;
    let st = StepState::default();
    // On h (forced down at 2 s), then a step to f at 7 s.
    assert_eq!(
        plan(&st, Some(2), 200_000, false, 2_000).step,
        Step::Layer(1)
    );
    let d = plan(&st, Some(1), 1_000_000, false, 7_000);
    assert_eq!(d.stepped_up_from, Some(1));
    assert_eq!(st.sustained_rank.load(Ordering::Relaxed), 1);
    // The step collapses the estimate below h: the leg falls back to h, not q, and
    // the failed try doubles the hold.
    let d = plan(&st, Some(2), 100_000, false, 8_000);
    assert_eq!(d.step, Step::Layer(1));
    assert_eq!(d.forced_down_hold_ms, Some(2 * base));
    // Still below h once the kept time is over: down to q (hold doubled again).
    let d = plan(&st, Some(1), 100_000, false, 10_500);
    assert_eq!(d.step, Step::Layer(0));
    assert_eq!(d.forced_down_hold_ms, Some(4 * base));
    // The estimate is back: h again at the base hold after the fall, not the grown.
    assert_eq!(
        plan(&st, Some(0), 1_000_000, false, 10_500 + base - 1).step,
        Step::Layer(0)
    );
    let d = plan(&st, Some(0), 1_000_000, false, 10_500 + base);
    assert_eq!((d.step, d.stepped_up_from), (Step::Layer(1), Some(0)));
    assert_eq!(st.sustained_rank.load(Ordering::Relaxed), 1);
    // The next try at f waits for the grown hold.
    let t = 10_500 + base;
    assert_eq!(
        plan(&st, Some(1), 1_000_000, false, t + base).step,
        Step::Layer(1)
    );
    assert_eq!(
        plan(&st, Some(1), 1_000_000, false, t + 4 * base - 1).step,
        Step::Layer(1)
    );
    let d = plan(&st, Some(1), 1_000_000, false, t + 4 * base);
    assert_eq!((d.step, d.stepped_up_from), (Step::Layer(2), Some(1)));
}

#[test]
fn a_resumed_leg_climbs_from_its_lowest_layer_even_with_a_sustained_one() {
    let st = StepState::default();
    assert_eq!(
        plan(&st, Some(2), 200_000, false, 2_000).step,
        Step::Layer(1)
    );
    assert_eq!(
        plan(&st, Some(1), 1_000_000, false, 7_000).step,
        Step::Layer(2)
    );
    // Dropped, then resumed: at q, and the sustained h is no floor below it.
    assert_eq!(
        plan(&st, Some(2), 10_000, false, 20_000).step,
        Step::Dropped
    );
    assert_eq!(
        plan(&st, None, 1_000_000, false, 40_000).step,
        Step::Resumed
    );
    assert_eq!(
        plan(&st, Some(0), 10_000, false, 41_000).step,
        Step::Layer(0)
    );
}

#[test]
fn an_upward_step_takes_the_next_layer_with_the_temporal_layers_that_fit() {
    // q, h, f with three temporal rungs each (T0, T0+T1, all).
    let rates = [
        25_000u64, 40_000, 50_000, 75_000, 120_000, 150_000, 135_000, 215_000, 270_000,
    ];
    let layer_of = [0, 0, 0, 1, 1, 1, 2, 2, 2];
    let st = StepState::default();
    let at = |cur, remaining, t| {
        plan_leg(
            &st,
            &rates,
            &layer_of,
            8,
            Some(cur),
            Budget::of(remaining),
            t,
            false,
        )
    };
    // Forced down to q at T0.
    assert_eq!(at(8, 30_000, 1_000).step, Step::Layer(0));
    // Room for everything: one step to all of h (not q+T1, nor f).
    let d = at(0, 10_000_000, 6_000);
    assert_eq!((d.step, d.stepped_up_from), (Step::Layer(5), Some(0)));
    // Room for h's T0+T1 only: the step stops there.
    let st2 = StepState::default();
    assert_eq!(
        plan_leg(
            &st2,
            &rates,
            &layer_of,
            8,
            Some(0),
            Budget::of(125_000),
            6_000,
            false
        )
        .step,
        Step::Layer(4)
    );
    // A tile that wants h: from h at T0, the rest of h's temporal layers are one step.
    let st3 = StepState::default();
    assert_eq!(
        plan_leg(
            &st3,
            &rates,
            &layer_of,
            5,
            Some(3),
            Budget::of(10_000_000),
            6_000,
            false
        )
        .step,
        Step::Layer(5)
    );
}

#[test]
fn a_dropped_track_resumes_only_with_a_margin_or_a_stale_estimate() {
    let st = StepState::default();
    let d = plan(&st, Some(0), 30_000, false, 1_000);
    assert_eq!(d.step, Step::Dropped);
    assert!(d.forced_down_hold_ms.is_some());
    assert!(st.bw_paused.load(Ordering::Relaxed));
    // q fits but without the 20 % margin (55 k < 60 k): still dropped, even after the
    // hold.
    assert_eq!(plan(&st, Some(0), 55_000, false, 7_000).step, Step::Dropped);
    // With the margin, after the hold: back at the lowest layer.
    let d = plan(&st, Some(0), 70_000, false, 7_000);
    assert_eq!(d.step, Step::Resumed);
    assert!(!st.bw_paused.load(Ordering::Relaxed));
    assert_eq!(st.cap_rank.load(Ordering::Relaxed), 0);

    // A stale estimate brings it back whatever it says, once the hold allows.
    let st = StepState::default();
    assert_eq!(plan(&st, Some(0), 0, false, 1_000).step, Step::Dropped);
    assert_eq!(plan(&st, Some(0), 0, true, 2_000).step, Step::Dropped);
    assert_eq!(plan(&st, Some(0), 0, true, 6_000).step, Step::Resumed);
}

#[test]
fn a_resumed_track_keeps_its_lowest_layer_for_a_while() {
    let st = StepState::default();
    assert_eq!(plan(&st, Some(0), 0, false, 1_000).step, Step::Dropped);
    assert_eq!(plan(&st, Some(0), 0, true, 6_000).step, Step::Resumed);
    // The estimate is still below q: kept for MIN_KEPT_AFTER_UP, then dropped.
    let kept = MIN_KEPT_AFTER_UP.as_millis() as u64;
    assert_eq!(
        plan(&st, Some(0), 0, false, 6_000 + kept - 1).step,
        Step::Layer(0)
    );
    assert_eq!(
        plan(&st, Some(0), 0, false, 6_000 + kept).step,
        Step::Dropped
    );
}

#[test]
fn no_layers_is_no_panic() {
    let st = StepState::default();
    assert_eq!(
        plan_leg(&st, &[], &[], 2, None, Budget::of(1_000), 1, false).step,
        Step::Dropped
    );
    assert_eq!(
        plan_leg(
            &st,
            &[],
            &[],
            0,
            None,
            Budget {
                stale: true,
                ..Budget::of(0)
            },
            10_000,
            false
        )
        .step,
        Step::Resumed
    );
}
