//! Smoke run of the call-level load test: a few participants for a few seconds against a
//! real Synapse (SLUICE_TEST_HOMESERVER, started by scripts/test) and a Sluice running in
//! this process. Checks that the tool works end to end and that its report has every field
//! with plausible values. Timings are not asserted (they belong to the benchmark).

use serde_json::Value;
use sluice::config::{MatrixConfig, Secret, SfuConfig};
use sluice::matrix::Focus;
use sluice::sfu::Sfu;
use sluice_loadtest::call::{CallOptions, run};
use sluice_loadtest::matrix::Account;
use sluice_loadtest::peer::Profile;
use std::time::{Duration, Instant};

/// A Sluice in this process, signed in to the test homeserver and synced.
async fn start_sluice() -> (Sfu, Focus, MatrixConfig, String) {
    let hs = std::env::var("SLUICE_TEST_HOMESERVER")
        .expect("SLUICE_TEST_HOMESERVER is not set: run the suite with scripts/test");
    let name = format!(
        "ltsfu{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let sfu_account = Account::register(&hs, &name, "sfu-pw").await.unwrap();
    let store = std::env::temp_dir().join(format!("sluice-lt-store-{name}"));
    let cfg = MatrixConfig {
        homeserver_url: hs.clone(),
        user_id: sfu_account.user_id.clone(),
        password: Secret("sfu-pw".into()),
        device_id: "SLUICELT".into(),
        store_path: store,
        ..MatrixConfig::default()
    };
    let sfu_cfg = SfuConfig {
        bind_address: "127.0.0.1".parse().unwrap(),
        ..SfuConfig::default()
    };
    let sfu = Sfu::new(sfu_cfg);
    let focus = Focus::start(&cfg, sfu.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !focus.is_synced() {
        assert!(Instant::now() < deadline, "Sluice never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (sfu, focus, cfg, hs)
}

/// A 4-second run (after 3 s of warm-up) of one room of 3 with `publishers` of them
/// publishing `profile`. Sluice runs in this process, so the CPU figures include the
/// participants' own.
fn options(hs: String, cfg: &MatrixConfig, publishers: usize, profile: Profile) -> CallOptions {
    CallOptions {
        homeserver: hs,
        sluice_user: cfg.user_id.clone(),
        sluice_device: cfg.device_id.clone(),
        rooms: 1,
        participants: 3,
        publishers,
        profile,
        ramp_per_sec: 10.0,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(3),
        sluice_pid: Some(std::process::id()),
        progress: false,
        janus: None,
    }
}

/// Waits until every participant has left Sluice, then stops it.
async fn stop_sluice(sfu: Sfu, focus: Focus, cfg: MatrixConfig) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sfu.snapshot().participants != 0 {
        assert!(
            Instant::now() < deadline,
            "participants left in Sluice: {:?}",
            sfu.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    focus.stop().await;
    let _ = std::fs::remove_dir_all(&cfg.store_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_video_call_load_run_reports_every_figure() {
    let (sfu, focus, cfg, hs) = start_sluice().await;
    let report: Value = run(options(hs, &cfg, 2, Profile::Video)).await.unwrap();

    assert_eq!(report["participants_joined"], 3, "{report:#}");
    assert_eq!(report["join_failures"].as_array().unwrap().len(), 0);
    // 2 publishers × (audio + video) reach the 2 other participants each: 6 streams (the
    // listener gets 4, each publisher the other's 2), more if a layer switch fell inside
    // the window.
    assert!(
        report["received_streams"].as_u64().unwrap() >= 6,
        "{report:#}"
    );
    let window = report["window_seconds"].as_f64().unwrap();
    assert!(window >= 4.0);
    let received = report["received_packets"].as_u64().unwrap();
    // Audio 50/s and the 720p layer ~177/s per stream: far above 100 over 4 s.
    assert!(received > 1000, "{report:#}");
    assert!(report["received_packets_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["loss_ratio"].as_f64().unwrap() < 0.05, "{report:#}");
    let lat = &report["latency_ms"];
    for k in ["p50", "p95", "p99", "max"] {
        let v = lat[k].as_f64().unwrap();
        assert!(v > 0.0 && v < window * 1000.0, "latency {k} = {v}");
    }
    assert!(lat["p50"].as_f64() <= lat["p99"].as_f64());
    let j = &report["join_ms"];
    assert!(j["invite_to_answer_p50"].as_f64().unwrap() > 0.0);
    assert!(
        j["invite_to_first_media_p50"].as_f64().unwrap()
            >= j["invite_to_answer_p50"].as_f64().unwrap()
    );
    let s = &report["sluice"];
    assert!(s["cpu_seconds"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(s["packets_per_sec_per_core"].as_f64().unwrap() > 0.0);
    assert!(s["rss_bytes"].as_u64().unwrap() > 0);
    let timeline = report["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
    assert!(
        timeline
            .iter()
            .all(|p| p["received_pps"].as_f64().unwrap() > 0.0
                && p["latency_p99_ms"].as_f64().unwrap() > 0.0),
        "every second of the timeline has traffic and latency: {timeline:?}"
    );
    // Everyone hung up: Sluice holds nothing.
    stop_sluice(sfu, focus, cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_screenshare_load_run_delivers_the_screen_to_every_listener() {
    let (sfu, focus, cfg, hs) = start_sluice().await;
    // Meanwhile: Sluice learns from the presenter's metadata that its screen stream is a
    // screenshare.
    let watch = {
        let sfu = sfu.clone();
        tokio::spawn(async move {
            loop {
                let declared: Vec<String> = sfu
                    .conferences()
                    .iter()
                    .flat_map(|c| c.participants.iter())
                    .flat_map(|p| p.screenshare_streams.iter().cloned())
                    .collect();
                if !declared.is_empty() {
                    return declared;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let report: Value = run(options(hs, &cfg, 1, Profile::Screenshare))
        .await
        .unwrap();
    assert_eq!(report["profile"], "screenshare");
    assert_eq!(report["participants_joined"], 3, "{report:#}");
    // One presenter's audio and screen reach both listeners: 4 streams (2 without the
    // screen).
    assert!(
        report["received_streams"].as_u64().unwrap() >= 4,
        "{report:#}"
    );
    // Per listener: audio 50/s and the screen about 46/s (bursts of 8 and 60): about 770
    // packets over 4 s for the two; audio alone would be 400.
    let received = report["received_packets"].as_u64().unwrap();
    assert!(received > 600, "{report:#}");
    assert!(report["loss_ratio"].as_f64().unwrap() < 0.05, "{report:#}");
    let declared = tokio::time::timeout(Duration::from_secs(1), watch)
        .await
        .expect("Sluice never saw a screenshare stream")
        .unwrap();
    assert!(
        declared.iter().all(|s| s.starts_with("lt-screen-stream-")),
        "{declared:?}"
    );
    stop_sluice(sfu, focus, cfg).await;
}
