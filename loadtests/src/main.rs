//! `sluice-loadtest`: Sluice's load-test tool.
//!
//! `call`: simulated participants join calls through Sluice's real signaling on a local
//! homeserver, publish synthetic audio or simulcast video and subscribe to everyone; the
//! report has loss, reordering, end-to-end latency, join times and Sluice's CPU and RSS per
//! forwarded packet (table, and JSON with `--json`). Loopback targets only.
//!
//! ```text
//! sluice-loadtest call --homeserver http://127.0.0.1:8008 --sluice-user @sfu:localhost \
//!     --sluice-device SLUICE --sluice-pid PID --rooms 2 --participants 5 --publishers 5 \
//!     --profile video --duration 30 [--warmup 5] [--ramp 5] [--json FILE]
//! ```
//!
//! With `--janus URL --sluice-pid JANUS_PID` (no homeserver) the same participants go
//! through Janus's VideoRoom over its HTTP API instead: the peer-SFU baseline.
//!
//! `micro`: benchmarks of the per-packet decisions of the forwarding
//! path (header rewriting, VP8 continuity after a simulcast switch, keyframe detection,
//! layer choice, keyframe throttling) and of the bandwidth allocator (one allocation tick
//! over 25 simulcast legs), each over a fixed number of iterations, reported as
//! nanoseconds per operation (table and JSON). Run it on a release build:
//!
//! ```text
//! cargo run --release -p sluice-loadtest -- micro [--iterations N] [--json FILE]
//! ```
//!
//! `floor`: the same layout through a minimal forwarder (recvmmsg → SRTP unprotect →
//! SRTP protect per subscriber → sendmmsg, webrtc-rs's SRTP) in this process: its CPU per
//! forwarded packet is the floor Sluice's is divided by.
//!
//! `call --plot FILE.png` draws the timeline (packets/s, latency p50/p99). Not built yet: the
//! Janus baseline.

use bytes::Bytes;
use rtc::interceptor::{Interceptor, Packet as InterceptorPacket, StreamInfo, TaggedPacket};
use rtc::rtp;
use rtc::sansio::Protocol;
use sluice::sfu::alloc::{Budget, StepState, plan_leg, video_priority};
use sluice::sfu::codec::{
    DdTemplates, VideoCodec, is_keyframe_start, vp9_spatial_sizes, vp9_temporal,
};
use sluice::sfu::estimates::Estimates;
use sluice::sfu::keyframe::KeyframeThrottle;
use sluice::sfu::probe::ProbeInterceptor;
use sluice::sfu::rewrite::{LegParams, LegRewriter};
use sluice::sfu::stats::Stats;
use sluice::sfu::{Layer, LayerState, choose_layer};
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
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
        black_box(rw.rewrite(&mut p, &params, now));
        black_box(p);
    }));

    let mut rw = LegRewriter::new(90_000).with_vp8_continuity();
    let mut first = packet(1, 0, vp8(10, true));
    assert!(rw.rewrite(&mut first, &params, now));
    let mut switched = packet(2, 0, vp8(20_000, true));
    assert!(rw.rewrite(&mut switched, &params, now));
    out.push(bench(
        "rewrite + VP8 picture id after a switch",
        iterations,
        |i| {
            let mut p = packet(2, i as u16, vp8(20_000u16.wrapping_add(i as u16), false));
            black_box(rw.rewrite(&mut p, &params, now));
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

    // Temporal-layer dropping: where a packet sits (once per packet), and leaving it out
    // of a leg (per leg that does not receive its layer).
    let vp9: [Bytes; 2] = [
        Bytes::from_static(&[0xA8, 0x80, 0x05, 0x00, 7, 0xAA]),
        Bytes::from_static(&[0xA8, 0x80, 0x06, 0x40, 7, 0xAA]),
    ];
    out.push(bench("VP9 temporal position", iterations, |i| {
        black_box(vp9_temporal(&vp9[(i & 1) as usize]));
    }));
    // Spatial SVC: the per-VP9-packet look for a keyframe's layer sizes (the V bit; only
    // keyframes' base packets carry them).
    let vp9_ss: [Bytes; 2] = [
        Bytes::from_static(&[0xA8, 0x80, 0x05, 0x00, 7, 0xAA]),
        Bytes::from_static(&[
            0xAA, 0x80, 0x05, 0x00, 7, 0x50, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68, 0x05,
            0x00, 0x02, 0xD0, 0xAA,
        ]),
    ];
    assert!(vp9_spatial_sizes(&vp9_ss[1]).is_some());
    out.push(bench(
        "VP9 spatial layer sizes (every other packet a keyframe's)",
        iterations,
        |i| {
            black_box(vp9_spatial_sizes(&vp9_ss[(i & 1) as usize]));
        },
    ));
    let dd = DdTemplates::default();
    // An L1T3 structure (templates T0, T0, T1, T2, T2), then per-frame descriptors.
    let key_dd = [0x80, 0x00, 0x01, 0x80, 0x02, 0x14, 0xC0, 0x00, 0x00];
    assert!(dd.temporal(&key_dd).is_some());
    let frame_dd: [[u8; 3]; 2] = [[0x82, 0x00, 0x02], [0x83, 0x00, 0x03]];
    assert_eq!(dd.temporal(&frame_dd[1]).map(|t| t.tid), Some(2));
    out.push(bench(
        "AV1 temporal position (dependency descriptor)",
        iterations,
        |i| {
            black_box(dd.temporal(&frame_dd[(i & 1) as usize]));
        },
    ));
    let mut rw = LegRewriter::new(90_000);
    let mut first = packet(1, 0, inter.clone());
    assert!(rw.rewrite(&mut first, &params, now));
    out.push(bench(
        "leave a packet out of a leg (every other one)",
        iterations,
        |i| {
            let mut p = packet(1, i as u16 + 1, inter.clone());
            if i & 1 == 0 {
                rw.skip(&p);
            } else {
                black_box(rw.rewrite(&mut p, &params, now));
            }
            black_box(p);
        },
    ));

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

    // The prober on a subscriber's connection sees every packet sent; while not probing
    // it only notes the newest sequence number of the packet's stream (25 video legs).
    let estimates = Arc::new(Estimates::new(0));
    let mut prober = ProbeInterceptor::new(estimates.clone(), Arc::new(Stats::default()));
    for ssrc in 0..25u32 {
        prober.bind_local_stream(&StreamInfo {
            ssrc: 1000 + ssrc,
            ssrc_rtx: Some(2000 + ssrc),
            payload_type_rtx: Some(97),
            mime_type: "video/VP8".to_owned(),
            ..Default::default()
        });
    }
    // The same packets go round: what comes out is what goes in next time.
    let mut sent: Vec<Option<TaggedPacket>> = (0..25u32)
        .map(|ssrc| {
            Some(TaggedPacket {
                now,
                transport: Default::default(),
                message: InterceptorPacket::Rtp(packet(1000 + ssrc, 1, inter.clone())).into(),
            })
        })
        .collect();
    out.push(bench(
        "prober: a sent packet passing (25 video legs)",
        iterations,
        |i| {
            let slot = &mut sent[(i % 25) as usize];
            if let Some(msg) = slot.take() {
                prober.handle_write(msg).unwrap();
            }
            *slot = black_box(prober.poll_write());
        },
    ));
    assert!(
        estimates
            .can_probe
            .load(std::sync::atomic::Ordering::Relaxed)
    );

    let throttle = KeyframeThrottle::new(Duration::from_millis(1000));
    out.push(bench("keyframe throttle check", iterations, |_| {
        black_box(throttle.try_acquire(now));
    }));

    // One subscriber's allocation tick over 25 simulcast legs (a 5x5 gallery): order the
    // legs (2 screenshares, 3 speakers, the rest by tile size), then choose each one's
    // layer against what is left of an estimate that swings between 1 and 6 Mbit/s over
    // the ticks, so legs step down, wait out holds, step up and get dropped.
    // (screenshare, speaker rank, tile size): the inputs of `video_priority`.
    type Inputs = (bool, Option<usize>, Option<(u32, u32)>);
    let legs: Vec<(StepState, Inputs)> = (0..25)
        .map(|i| {
            let size = [(1280, 720), (640, 360), (320, 180)][i % 3];
            (
                StepState::default(),
                (i < 2, (2..5).contains(&i).then_some(i - 2), Some(size)),
            )
        })
        .collect();
    let mut order: Vec<usize> = (0..legs.len()).collect();
    let mut cur: Vec<Option<usize>> = vec![Some(2); legs.len()];
    let rates = [50_000u64, 150_000, 270_000];
    let ticks = (iterations / 25).max(1000);
    let mut tick = 0u64;
    let alloc = bench("allocation tick, 25 simulcast legs", ticks, |_| {
        // 250 ms per tick (the clock keeps going through the warm-up); the estimate is
        // a triangle wave over 40 s.
        tick += 1;
        let clock_ms = tick * 250;
        let phase = (tick % 160) as i64;
        let budget = 1_000_000 + 5_000_000 * (80 - (phase - 80).abs()) / 80;
        order.sort_by_key(|&j| {
            let (s, sp, w) = legs[j].1;
            video_priority(s, sp, w)
        });
        let mut remaining = budget;
        for &j in &order {
            let d = plan_leg(
                &legs[j].0,
                &rates,
                &[],
                2,
                cur[j],
                Budget::of(remaining),
                clock_ms,
                false,
            );
            if let Some(r) = d.step.rank() {
                remaining -= rates[r] as i64;
                cur[j] = Some(r);
            }
        }
        black_box(remaining);
    });
    out.push(alloc);
    out
}

const USAGE: &str = "usage: sluice-loadtest micro [--iterations N] [--json FILE]\n\
       sluice-loadtest floor [--rooms N] [--participants M] [--publishers K]\n\
           [--profile audio|video|screenshare] [--duration SECS] [--json FILE]\n\
       sluice-loadtest call --homeserver URL --sluice-user USER --sluice-device DEVICE\n\
           [--sluice-pid PID] [--rooms N] [--participants M] [--publishers K]\n\
           [--profile audio|video|screenshare] [--duration SECS] [--warmup SECS] [--ramp PER_SEC]\n\
           [--json FILE] [--plot FILE.png]\n\
       sluice-loadtest call --janus URL [--sluice-pid JANUS_PID] [same layout options]";

fn call_main(args: &[String]) -> ExitCode {
    use sluice_loadtest::call::{CallOptions, run, table};
    use sluice_loadtest::peer::Profile;
    let mut o = CallOptions {
        homeserver: String::new(),
        sluice_user: String::new(),
        sluice_device: "SLUICE".into(),
        rooms: 1,
        participants: 3,
        publishers: 3,
        profile: Profile::Video,
        ramp_per_sec: 5.0,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(3),
        sluice_pid: None,
        progress: true,
        janus: None,
    };
    let mut json_path = None;
    let mut plot_path: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(v) = it.next() else {
            eprintln!("error: {a} expects a value\n{USAGE}");
            return ExitCode::from(2);
        };
        let num = |what: &str| -> std::result::Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| *x >= 0.0)
                .ok_or(format!("{what} expects a non-negative number, got {v:?}"))
        };
        let r: std::result::Result<(), String> = (|| {
            match a.as_str() {
                "--homeserver" => o.homeserver = v.clone(),
                "--sluice-user" => o.sluice_user = v.clone(),
                "--sluice-device" => o.sluice_device = v.clone(),
                "--sluice-pid" => o.sluice_pid = Some(num("--sluice-pid")? as u32),
                "--janus" => o.janus = Some(v.clone()),
                "--rooms" => o.rooms = num("--rooms")? as usize,
                "--participants" => o.participants = num("--participants")? as usize,
                "--publishers" => o.publishers = num("--publishers")? as usize,
                "--duration" => o.duration = Duration::from_secs_f64(num("--duration")?),
                "--warmup" => o.warmup = Duration::from_secs_f64(num("--warmup")?),
                "--ramp" => o.ramp_per_sec = num("--ramp")?,
                "--profile" => {
                    o.profile = Profile::parse(v).ok_or(format!(
                        "--profile expects audio, video or screenshare, got {v:?}"
                    ))?
                }
                "--json" => json_path = Some(v.clone()),
                "--plot" => plot_path = Some(v.clone()),
                other => return Err(format!("unknown option {other}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if o.janus.is_none() && (o.homeserver.is_empty() || o.sluice_user.is_empty()) {
        eprintln!("error: --homeserver and --sluice-user (or --janus) are required\n{USAGE}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(o)) {
        Ok(report) => {
            print!("{}", table(&report));
            if let Some(p) = json_path
                && let Err(e) = std::fs::write(
                    &p,
                    serde_json::to_string_pretty(&report).unwrap_or_default(),
                )
            {
                eprintln!("error: cannot write {p}: {e}");
                return ExitCode::FAILURE;
            }
            if let Some(p) = plot_path
                && let Err(e) = sluice_loadtest::plot::plot(&report, std::path::Path::new(&p))
            {
                eprintln!("error: cannot draw {p}: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn floor_main(args: &[String]) -> ExitCode {
    use sluice_loadtest::floor::{FloorOptions, run_floor};
    use sluice_loadtest::peer::Profile;
    let mut o = FloorOptions {
        rooms: 1,
        participants: 3,
        publishers: 3,
        profile: Profile::Video,
        duration: Duration::from_secs(10),
    };
    let mut json_path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(v) = it.next() else {
            eprintln!("error: {a} expects a value\n{USAGE}");
            return ExitCode::from(2);
        };
        let n = v.parse::<f64>().ok().filter(|x| *x >= 0.0);
        let ok = match (a.as_str(), n) {
            ("--rooms", Some(x)) => {
                o.rooms = x as usize;
                true
            }
            ("--participants", Some(x)) => {
                o.participants = x as usize;
                true
            }
            ("--publishers", Some(x)) => {
                o.publishers = x as usize;
                true
            }
            ("--duration", Some(x)) => {
                o.duration = Duration::from_secs_f64(x);
                true
            }
            ("--profile", _) => match Profile::parse(v) {
                Some(p) => {
                    o.profile = p;
                    true
                }
                None => false,
            },
            ("--json", _) => {
                json_path = Some(v.clone());
                true
            }
            _ => false,
        };
        if !ok {
            eprintln!("error: bad option {a} {v:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match run_floor(&o) {
        Ok(r) => {
            println!(
                "floor: {:.0} forwarded packets/s, {:.3} CPU s per million packets, {:.0} packets/s per core",
                r["forwarded_packets_per_sec"].as_f64().unwrap_or(0.0),
                r["cpu_seconds_per_million_packets"].as_f64().unwrap_or(0.0),
                r["packets_per_sec_per_core"].as_f64().unwrap_or(0.0)
            );
            if let Some(p) = json_path
                && let Err(e) =
                    std::fs::write(&p, serde_json::to_string_pretty(&r).unwrap_or_default())
            {
                eprintln!("error: cannot write {p}: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("call") {
        return call_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("floor") {
        return floor_main(&args[1..]);
    }
    if args.first().map(String::as_str) != Some("micro") {
        eprintln!("{USAGE}");
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
