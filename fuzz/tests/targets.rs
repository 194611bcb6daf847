//! The bounded fuzz run of the test suite: every target replays its kept findings
//! (`fuzz/regressions/`), runs its seeds (`fuzz/corpus/`) and then a fixed number of
//! mutants of them (`SLUICE_FUZZ_RUNS`, default 20 000 per target; the same mutants every
//! run). A panic or failed check fails the test and writes the input to test-artifacts.

use sluice_fuzz::engine::{self, Options};
use sluice_fuzz::mutate::Shape;
use sluice_fuzz::{TARGETS, Target, target};
use std::path::PathBuf;

fn runs() -> u64 {
    std::env::var("SLUICE_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn check(name: &str) {
    let t = target(name).expect("a target of that name");
    for (file, input) in engine::load_dir(&engine::regressions_dir(t)) {
        if let Err(m) = engine::run_one(t, &input) {
            panic!("{name}: kept finding {file} fails again: {m}");
        }
    }
    let seeds: Vec<Vec<u8>> = engine::load_dir(&engine::corpus_dir(t))
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert!(
        !seeds.is_empty(),
        "{name} has no seeds in {}",
        engine::corpus_dir(t).display()
    );
    let opts = Options {
        seed: 0x5eed,
        runs: Some(runs()),
        duration: None,
        keep: None,
        progress: None,
    };
    let n = seeds.len();
    let r = engine::fuzz(t, seeds, &opts);
    // Seeds the parser refuses exercise only its first check.
    assert!(
        r.seeds_accepted > 0,
        "{name}: none of its {n} seeds is accepted"
    );
    if let Some(f) = r.findings.first() {
        let dir = std::env::var_os("SLUICE_TEST_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("fuzz")
            .join(name);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("crash-{}", engine::name_of(&f.input)));
        let _ = std::fs::write(&path, &f.input);
        panic!(
            "{name}: {} finding(s) in {} runs; the first, kept as {} (copy it to {} to keep it):\n{}",
            r.findings.len(),
            r.runs,
            path.display(),
            engine::regressions_dir(t).display(),
            f.message
        );
    }
    eprintln!(
        "{name}: {} runs in {:.1} s, {} of {n} seeds and {:.0} % of all accepted, no findings",
        r.runs,
        r.elapsed.as_secs_f64(),
        r.seeds_accepted,
        100.0 * r.accepted as f64 / r.runs.max(1) as f64
    );
}

#[test]
fn every_target_is_tested_here() {
    let src = include_str!("targets.rs");
    for t in TARGETS {
        assert!(
            src.contains(&format!("fn {}()", t.name)),
            "no test for target {}",
            t.name
        );
    }
}

#[test]
fn the_engine_finds_a_planted_bug() {
    // A parser that panics on a two-byte change of its seed: the bounded run must find it,
    // or the runs above would prove nothing.
    fn planted(data: &[u8]) -> bool {
        let v = serde_json::from_slice::<serde_json::Value>(data);
        if let Ok(v) = &v
            && v.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.is_empty())
        {
            panic!("planted: empty type");
        }
        v.is_ok()
    }
    let t = Target {
        name: "planted",
        shape: Shape::Json,
        max_len: 1 << 10,
        run: planted,
    };
    let opts = Options {
        seed: 7,
        runs: Some(runs()),
        duration: None,
        keep: None,
        progress: None,
    };
    let r = engine::fuzz(
        &t,
        vec![br#"{"type":"m.call.pong","content":{}}"#.to_vec()],
        &opts,
    );
    assert_eq!(r.findings.len(), 1, "{r:?}");
    assert!(r.findings[0].message.contains("planted: empty type"));
}

#[test]
fn to_device() {
    check("to_device");
}
#[test]
fn membership() {
    check("membership");
}
#[test]
fn stream_metadata() {
    check("stream_metadata");
}
#[test]
fn sdp_offer() {
    check("sdp_offer");
}
#[test]
fn dc_message() {
    check("dc_message");
}
#[test]
fn livekit_signal() {
    check("livekit_signal");
}
#[test]
fn livekit_data() {
    check("livekit_data");
}
#[test]
fn livekit_token() {
    check("livekit_token");
}
#[test]
fn livekit_auth() {
    check("livekit_auth");
}
#[test]
fn rtcp() {
    check("rtcp");
}
#[test]
fn rtp_payload() {
    check("rtp_payload");
}
#[test]
fn av1_dependency_descriptor() {
    check("av1_dependency_descriptor");
}
#[test]
fn rewrite() {
    check("rewrite");
}
