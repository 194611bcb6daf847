//! `sluice-loadtest`: Sluice's load-test tool.
//!
//! Today it has one mode, `micro`: benchmarks of the per-packet decisions of the forwarding
//! path (header rewriting, VP8 continuity after a simulcast switch, keyframe detection,
//! layer choice, keyframe throttling), each over a fixed number of iterations, reported as
//! nanoseconds per operation (table and JSON). Run it on a release build:
//!
//! ```text
//! cargo run --release -p sluice-loadtest -- micro [--iterations N] [--json FILE]
//! ```
//!
//! The call-level load test (simulated participants through the real signaling path, SFU
//! CPU per forwarded packet, the floor and Janus baselines) is not built yet.

use bytes::Bytes;
use rtc::rtp;
use sluice::sfu::codec::{VideoCodec, is_keyframe_start};
use sluice::sfu::rewrite::{LegParams, LegRewriter};
use sluice::sfu::rtcp::KeyframeThrottle;
use sluice::sfu::{Layer, LayerState, choose_layer};
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Result {
    name: &'static str,
    iterations: u64,
    ns_per_op: f64,
}

fn bench(name: &'static str, iterations: u64, mut f: impl FnMut(u64)) -> Result {
    // Warm up caches and branch predictors on a tenth of the run.
    for i in 0..iterations / 10 {
        f(i);
    }
    let t = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    let elapsed = t.elapsed();
    Result {
        name,
        iterations,
        ns_per_op: elapsed.as_nanos() as f64 / iterations as f64,
    }
}

fn packet(ssrc: u32, seq: u16, payload: Bytes) -> rtp::Packet {
    let mut p = rtp::Packet::default();
    p.header.version = 2;
    p.header.ssrc = ssrc;
    p.header.payload_type = 120;
    p.header.sequence_number = seq;
    p.header.timestamp = seq as u32 * 3000;
    p.header.extension = true;
    p.header.extension_profile = 0xBEDE;
    p.header.extensions = vec![
        rtp::header::Extension {
            id: 1,
            payload: Bytes::from_static(b"0"),
        },
        rtp::header::Extension {
            id: 3,
            payload: Bytes::from_static(b"\x85"),
        },
    ];
    p.payload = payload;
    p
}

fn vp8(pic: u16, key: bool) -> Bytes {
    let v = (pic & 0x7FFF) | 0x8000;
    let mut b = vec![0x90, 0x80, (v >> 8) as u8, v as u8];
    b.push(if key { 0x00 } else { 0x01 });
    b.resize(1100, 0x5A);
    Bytes::from(b)
}

fn micro(iterations: u64) -> Vec<Result> {
    let source = vec![
        (1u16, "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned()),
        (
            3u16,
            "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned(),
        ),
    ];
    let leg = vec![
        (4u16, "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned()),
        (
            7u16,
            "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned(),
        ),
    ];
    let params = LegParams::new(0xAAAA, 96, &source, &leg, Some("2"));
    let now = Instant::now();
    let inter = vp8(100, false);
    let mut out = Vec::new();

    let mut rw = LegRewriter::new(90_000);
    out.push(bench("rewrite header (no switch)", iterations, |i| {
        // The clone is what the forwarder does per leg.
        let mut p = packet(1, i as u16, inter.clone());
        rw.rewrite(&mut p, &params, now);
        black_box(p);
    }));

    let mut rw = LegRewriter::new(90_000).with_vp8_continuity();
    let mut first = packet(1, 0, vp8(10, true));
    rw.rewrite(&mut first, &params, now);
    let mut switched = packet(2, 0, vp8(20_000, true));
    rw.rewrite(&mut switched, &params, now);
    out.push(bench(
        "rewrite + VP8 picture id after a switch",
        iterations,
        |i| {
            let mut p = packet(2, i as u16, vp8(20_000u16.wrapping_add(i as u16), false));
            rw.rewrite(&mut p, &params, now);
            black_box(p);
        },
    ));

    let payloads = [vp8(1, false), vp8(2, true)];
    out.push(bench("VP8 keyframe detection", iterations, |i| {
        black_box(is_keyframe_start(
            VideoCodec::Vp8,
            &payloads[(i & 1) as usize],
        ));
    }));

    let layers: Vec<LayerState> = [("q", 320u16, 180u16), ("h", 640, 360), ("f", 1280, 720)]
        .iter()
        .enumerate()
        .map(|(i, (rid, w, h))| {
            let l = LayerState::new(Layer {
                rid: Some((*rid).to_owned()),
                ssrc: i as u32 + 1,
            });
            l.set_size(*w, *h);
            l
        })
        .collect();
    let refs: Vec<&LayerState> = layers.iter().collect();
    let sizes = [(320, 180), (640, 360), (1280, 720), (200, 100)];
    out.push(bench(
        "simulcast layer choice (3 layers)",
        iterations,
        |i| {
            black_box(choose_layer(&refs, Some(sizes[(i & 3) as usize])));
        },
    ));

    let throttle = KeyframeThrottle::new(Duration::from_millis(1000));
    out.push(bench("keyframe throttle check", iterations, |_| {
        black_box(throttle.try_acquire(now));
    }));
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("micro") {
        eprintln!(
            "usage: sluice-loadtest micro [--iterations N] [--json FILE]\n\
             (the call-level load test is not built yet)"
        );
        return ExitCode::from(2);
    }
    let mut iterations = 1_000_000u64;
    let mut json_path = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => iterations = n,
                _ => {
                    eprintln!("error: --iterations expects a positive number");
                    return ExitCode::from(2);
                }
            },
            "--json" => match it.next() {
                Some(p) => json_path = Some(p.clone()),
                None => {
                    eprintln!("error: --json expects a file path");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("error: unknown option {other}");
                return ExitCode::from(2);
            }
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; measure with --release");
    }
    let results = micro(iterations);
    println!("{:<45} {:>12} {:>10}", "benchmark", "iterations", "ns/op");
    for r in &results {
        println!("{:<45} {:>12} {:>10.1}", r.name, r.iterations, r.ns_per_op);
    }
    if let Some(p) = json_path {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({"name": r.name, "iterations": r.iterations, "ns_per_op": r.ns_per_op})
            })
            .collect();
        let text =
            serde_json::to_string_pretty(&serde_json::json!({"micro": v})).unwrap_or_default();
        if let Err(e) = std::fs::write(&p, text) {
            eprintln!("error: cannot write {p}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
