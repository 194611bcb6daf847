//! Smoke run of the load tool's Janus baseline: a real Janus (Debian's, configured by
//! scripts/janus-config and started here), three participants for a few seconds. Checks
//! that the VideoRoom flow works end to end: everyone joins, each subscriber receives the
//! others' audio and 720p layer, and Janus's process figures are read. Timings are not
//! asserted. Needs the `janus` package (scripts/test installs it).

use serde_json::Value;
use sluice_loadtest::call::{CallOptions, run};
use sluice_loadtest::peer::Profile;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A Janus process, killed on drop.
struct JanusProcess(Child);

impl Drop for JanusProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_video_run_through_janus_reports_what_arrived() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("sluice-janus-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ok = Command::new(root.join("scripts/janus-config"))
        .arg(&dir)
        .arg(port.to_string())
        .status()
        .expect("scripts/janus-config")
        .success();
    assert!(
        ok,
        "scripts/janus-config failed (is the janus package installed?)"
    );
    let child = Command::new("janus")
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .arg("-F")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("janus not found: apt-get install janus (scripts/test does)");
    let janus = JanusProcess(child);
    let url = format!("http://127.0.0.1:{port}/janus");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .post(&url)
        .body(r#"{"janus":"ping","transaction":"t"}"#)
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "Janus did not answer on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report: Value = run(CallOptions {
        homeserver: String::new(),
        sluice_user: String::new(),
        sluice_device: String::new(),
        rooms: 1,
        participants: 3,
        publishers: 2,
        profile: Profile::Video,
        ramp_per_sec: 10.0,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(3),
        sluice_pid: Some(janus.0.id()),
        progress: false,
        janus: Some(url),
    })
    .await
    .unwrap();

    assert_eq!(report["target"], "janus");
    assert_eq!(report["participants_joined"], 3, "{report:#}");
    assert_eq!(report["join_failures"].as_array().unwrap().len(), 0);
    assert!(
        report["received_streams"].as_u64().unwrap() >= 6,
        "{report:#}"
    );
    // 2 publishers' audio (50/s) and 720p layer (~177/s) to the 2 others: over 4 s,
    // thousands of packets; the low layer alone (16/s) would stay far below 2500.
    let received = report["received_packets"].as_u64().unwrap();
    assert!(received > 2500, "{report:#}");
    assert!(report["loss_ratio"].as_f64().unwrap() < 0.05, "{report:#}");
    let s = &report["sluice"];
    assert!(s["cpu_seconds"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(s["rss_bytes"].as_u64().unwrap() > 0);
    drop(janus);
    let _ = std::fs::remove_dir_all(dir);
}
