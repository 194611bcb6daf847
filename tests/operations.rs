#![recursion_limit = "256"]
//! Operations: metrics (the core's and the LiveKit front door's) scraped by a real Prometheus, health/readiness, the admin API, and
//! the drain sequence, end to end with real WebRTC peers.

mod support;

use serde_json::{Value, json};
use sluice::http::AppState;
use sluice::metrics::{LoadEstimator, Metrics};
use sluice::ops::{DrainOutcome, Ops};
use sluice::sfu::{HangupReason, Sfu, SfuEventKind, SfuSnapshot};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

struct Http {
    addr: SocketAddr,
    ops: Arc<Ops>,
    sync_up: Arc<AtomicBool>,
}

async fn start_http(sfu: &Sfu, token: Option<&str>, deadline: Duration) -> Http {
    start_http_with(sfu, token, deadline, false).await
}

/// `start_http`, with the LiveKit front door (its routes and metrics) when `livekit`.
async fn start_http_with(
    sfu: &Sfu,
    token: Option<&str>,
    deadline: Duration,
    livekit: bool,
) -> Http {
    let load = LoadEstimator::new(sfu.stats(), 10_000);
    load.sample();
    let metrics = Arc::new(Metrics::new(sfu.clone(), load));
    let mut front_doors = Vec::new();
    if livekit {
        let cfg = sluice::config::LiveKitConfig {
            api_key: "ops-key".into(),
            api_secret: sluice::config::Secret("an-operations-test-secret-of-32-chars".into()),
            public_url: "ws://127.0.0.1:9/livekit/sfu".into(),
            full_access_homeservers: vec!["localhost".into()],
            ..Default::default()
        };
        cfg.validate().unwrap();
        let auth = sluice::livekit::AuthService::new(&cfg).unwrap();
        let signal = sluice::livekit::Signal::new(sfu.clone(), &cfg, &cfg.api_secret);
        let delayed = sluice::livekit::delayed_leave::DelayedLeaves::new(
            signal.clone(),
            Default::default(),
            Duration::from_secs(5),
        )
        .unwrap();
        auth.delegate_to(delayed);
        metrics.register(Box::new(sluice::livekit::metrics::LiveKitCollector::new(
            auth.clone(),
            signal.clone(),
        )));
        front_doors.push(auth.routes());
        front_doors.push(signal.routes());
    }
    let ops = Ops::new(sfu.clone(), deadline);
    let sync_up = Arc::new(AtomicBool::new(true));
    let state = AppState {
        sfu: sfu.clone(),
        metrics,
        ops: ops.clone(),
        sync_up: Some(sync_up.clone()),
        admin_token: token.map(str::to_owned),
        transport: Some(json!({"type": "sluice", "user_id": "@sfu:test", "device_id": "SFU"})),
        web: None,
        front_doors,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sluice::http::serve(listener, state));
    Http { addr, ops, sync_up }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn prom_query(client: &reqwest::Client, prom: &str, q: &str) -> Option<f64> {
    let v: Value = client
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_core_series_during_a_conference() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let http = start_http_with(&sfu, None, Duration::from_secs(60), true).await;
    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    subscribe_all(&sfu, &peers, &peers).await;
    // One unreadable token request, for the LiveKit front door's counters.
    let r = reqwest::Client::new()
        .post(format!("http://{}/livekit/jwt/get_token", http.addr))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let dir = std::env::temp_dir().join(format!("sluice-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{}']\n",
            http.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Debian's prometheus must be installed (scripts/test installs it)");
    let _prom = KillOnDrop(child);
    let prom = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if prom_query(&client, &prom, "sluice_participants").await == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped sluice_participants = 2"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let q = |query: &'static str| {
        let client = client.clone();
        let prom = prom.clone();
        async move { prom_query(&client, &prom, query).await }
    };
    assert_eq!(q("up{job=\"sluice\"}").await, Some(1.0));
    assert_eq!(q("sluice_conferences").await, Some(1.0));
    assert_eq!(
        q("sluice_published_tracks{kind=\"video\"}").await,
        Some(2.0)
    );
    assert_eq!(
        q("sluice_subscribed_tracks{kind=\"audio\"}").await,
        Some(2.0)
    );
    assert!(
        q("sluice_packets_total{direction=\"out\",kind=\"video\"}")
            .await
            .unwrap()
            > 0.0
    );
    assert!(
        q("sluice_bytes_total{direction=\"in\",kind=\"audio\"}")
            .await
            .unwrap()
            > 0.0
    );
    assert!(q("sluice_forward_latency_seconds_count").await.unwrap() > 0.0);
    // Receive-to-send stays well under 50 ms on loopback (a sanity bound, not a benchmark).
    let p50 = q("histogram_quantile(0.5, sluice_forward_latency_seconds_bucket)")
        .await
        .unwrap();
    assert!(p50 < 0.05, "median forwarding latency {p50}");
    assert_eq!(q("sluice_join_duration_seconds_count").await, Some(2.0));
    assert!(q("sluice_pli_total{direction=\"out\"}").await.unwrap() >= 1.0);
    assert_eq!(
        q("sluice_forwarded_packets_dropped_total{reason=\"queue_full\"}").await,
        Some(0.0)
    );
    assert_eq!(q("sluice_conference_size_count").await, Some(1.0));
    assert_eq!(q("sluice_draining").await, Some(0.0));
    let load = q("sluice_load_ratio").await.unwrap();
    assert!((0.0..=1.0).contains(&load));
    assert!(q("process_resident_memory_bytes").await.unwrap() > 0.0);
    // The LiveKit front door's families, in Prometheus's own parse of the exposition.
    assert_eq!(
        q("sluice_livekit_token_requests_total{endpoint=\"get_token\",result=\"not_json\"}").await,
        Some(1.0)
    );
    assert_eq!(
        q("sluice_livekit_token_requests_total{endpoint=\"delegate_delayed_leave\",result=\"issued\"}").await,
        Some(0.0)
    );
    assert_eq!(q("sluice_livekit_participants").await, Some(0.0));
    assert_eq!(
        q("sluice_livekit_connections_total{outcome=\"joined\"}").await,
        Some(0.0)
    );
    assert_eq!(q("sluice_livekit_delayed_leaves").await, Some(0.0));
    assert_eq!(
        q("sluice_livekit_delayed_leave_actions_total{action=\"send\"}").await,
        Some(0.0)
    );
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_discovery_and_admin_api() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let http = start_http(&sfu, Some(TOKEN), Duration::from_secs(60)).await;
    let base = format!("http://{}", http.addr);
    let c = reqwest::Client::new();
    let get = |path: &str| c.get(format!("{base}{path}")).send();

    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    http.sync_up.store(false, Ordering::Relaxed);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("sync"));
    http.sync_up.store(true, Ordering::Relaxed);
    let wk: Value = get("/.well-known/sluice")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wk["transports"][0]["type"], "sluice");
    assert_eq!(wk["transports"][0]["device_id"], "SFU");

    // Admin: no token, wrong token, right token.
    let r = get("/admin/conferences").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{base}/admin/conferences"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let peers = join_peers(&sfu, &router, &[0, 1]).await;
    subscribe_all(&sfu, &peers, &peers).await;
    let list: Value = c
        .get(format!("{base}/admin/conferences"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conf = &list["conferences"][0];
    assert_eq!(conf["id"], CONF);
    assert_eq!(conf["participants"].as_array().unwrap().len(), 2);
    assert_eq!(
        conf["participants"][0]["published"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        conf["participants"][0]["subscriptions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(conf["participants"][0]["connected"], true);
    assert_eq!(list["totals"]["participants"], 2);

    // Per-leg quality from the subscribers' receiver reports (webrtc sends them about
    // every second; RTT needs a sender report first).
    let value = |m: &str, name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + LONG;
    let m = loop {
        let m = get("/metrics").await.unwrap().text().await.unwrap();
        if value(&m, "sluice_packet_loss_ratio_count") >= 4.0
            && value(&m, "sluice_rtt_seconds_count") >= 4.0
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no receiver reports for the legs:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(value(&m, "sluice_jitter_seconds_count") >= 4.0);
    // Loopback loses nothing and answers fast.
    assert_eq!(value(&m, "sluice_packet_loss_ratio_sum"), 0.0);
    let rtt_mean = value(&m, "sluice_rtt_seconds_sum") / value(&m, "sluice_rtt_seconds_count");
    assert!(rtt_mean < 0.1, "mean RTT {rtt_mean}");

    // Kick one participant; kicking it again is a 404.
    let kick_url = format!(
        "{base}/admin/conferences/{}/participants/{}",
        urlencode(CONF),
        urlencode(&peers[1].id)
    );
    let r = c.delete(&kick_url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    router
        .wait_for("kicked participant left", LONG, |log| {
            log.iter()
                .any(|e| e.participant == peers[1].id && matches!(e.kind, SfuEventKind::Left(_)))
        })
        .await;
    assert_eq!(sfu.snapshot().participants, 1);
    let r = c.delete(&kick_url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unknown_participant");

    // Drain through the API flips readiness and the metric; cancelling restores both.
    let r = c
        .post(format!("{base}/admin/drain"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("draining"));
    let m = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(m.contains("sluice_draining 1"), "{m}");
    let r = c
        .delete(format!("{base}/admin/drain"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let r = c
        .delete(format!("{base}/admin/drain"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // An instance without a token refuses every admin call.
    let closed = start_http(&sfu, None, Duration::from_secs(60)).await;
    let r = c
        .get(format!("http://{}/admin/conferences", closed.addr))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let _ = http.ops;
    for p in &peers {
        p.close().await;
    }
    sfu.shutdown(HangupReason::UserHangup).await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Joins a fresh peer to conference `conf` (not the default one).
async fn join_elsewhere(sfu: &Sfu, idx: u8, conf: &str) -> Result<(), sluice::sfu::SfuError> {
    let peer = TestPeer::new(sfu, idx, true).await;
    let offer = peer.pc.create_offer(None).await.unwrap();
    peer.pc.set_local_description(offer).await.unwrap();
    let sdp = peer.pc.local_description().await.unwrap().sdp;
    let r = sfu.join(conf, &peer.id, &sdp, no_sink()).await;
    peer.close().await;
    r.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_conferences_admits_existing_and_ends_when_empty() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let http = start_http(&sfu, None, Duration::from_secs(60)).await;
    let a = join_peers(&sfu, &router, &[0]).await;
    assert!(http.ops.start_drain());
    assert!(!http.ops.start_drain(), "a second drain does not start");
    let r = reqwest::get(format!("http://{}/readyz", http.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    // A new conference is refused; nothing is left of the attempt.
    let e = join_elsewhere(&sfu, 5, "another-conference")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "draining");
    assert_eq!(sfu.snapshot().conferences, 1);
    // The existing conference still admits its members.
    let b = join_peers(&sfu, &router, &[1]).await;
    assert_eq!(sfu.snapshot().participants, 2);

    // Not done while anyone is there.
    let waiting = tokio::time::timeout(Duration::from_millis(500), http.ops.wait_drained()).await;
    assert!(waiting.is_err(), "drain finished with participants present");
    for p in a.iter().chain(b.iter()) {
        sfu.leave(CONF, &p.id, HangupReason::UserHangup)
            .await
            .unwrap();
        p.close().await;
    }
    let outcome = tokio::time::timeout(LONG, http.ops.wait_drained())
        .await
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Completed);
    assert_eq!(sfu.snapshot(), SfuSnapshot::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_hangs_up_the_rest() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let http = start_http(&sfu, None, Duration::from_secs(2)).await;
    let peers = join_peers(&sfu, &router, &[0]).await;
    let t0 = Instant::now();
    http.ops.start_drain();
    let outcome = tokio::time::timeout(LONG, http.ops.wait_drained())
        .await
        .unwrap();
    assert_eq!(outcome, DrainOutcome::DeadlineReached);
    assert!(t0.elapsed() >= Duration::from_secs(2));
    router
        .wait_for("hung up with sluice.draining", LONG, |log| {
            log.iter()
                .any(|e| e.kind == SfuEventKind::Left(HangupReason::Draining))
        })
        .await;
    assert_eq!(sfu.snapshot(), SfuSnapshot::default());
    peers[0].close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_participants_are_evicted_and_busy_ones_kept() {
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let busy = join_peers(&sfu, &router, &[0]).await;
    // A participant that publishes nothing and subscribes to nothing.
    let idle = TestPeer::new(&sfu, 1, false).await;
    router.add(&idle);
    idle.join(&sfu).await.unwrap();
    idle.wait_for("connected", LONG, |s| s.connected).await;
    assert_eq!(sfu.evict_idle(Duration::from_secs(3600)).await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sfu.evict_idle(Duration::from_millis(200)).await, 1);
    router
        .wait_for("idle participant removed", LONG, |log| {
            log.iter()
                .any(|e| e.participant == idle.id && matches!(e.kind, SfuEventKind::Left(_)))
        })
        .await;
    assert_eq!(sfu.participants(CONF), vec![busy[0].id.clone()]);
    idle.close().await;
    busy[0].close().await;
    sfu.shutdown(HangupReason::UserHangup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_binary_serves_http_and_exits_on_sigterm() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("sluice-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sluice.toml");
    std::fs::write(&cfg, format!("[http]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "sluice never answered /healthz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("sluice_conferences 0"));
    // Without Matrix there is no transport to advertise.
    let wk = reqwest::get(format!("http://127.0.0.1:{port}/.well-known/sluice"))
        .await
        .unwrap();
    assert_eq!(wk.status(), 404);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "sluice did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_exits_2_naming_the_option() {
    let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[sfu]\nice_connect_timeout_secs = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sfu.ice_connect_timeout_secs"), "{err}");
    assert!(err.contains("between 1 and 600"), "{err}");
    let good = dir.join("good.toml");
    std::fs::write(&good, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secrets_never_reach_the_logs() {
    // A homeserver that is not there: login fails, with every log line at debug level.
    let dead = free_port();
    let http = free_port();
    let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sluice.toml");
    let password = "pw-MUST-NOT-APPEAR-7d1e";
    let token = "admin-token-MUST-NOT-APPEAR-99";
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_token = \"{token}\"\n\
             [matrix]\nhomeserver_url = \"http://127.0.0.1:{dead}\"\nuser_id = \"@sfu:localhost\"\n\
             password = \"{password}\"\nstore_path = \"{}\"\n\
             [log]\nlevel = \"trace\"\n",
            dir.join("store").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "serve must fail without a homeserver"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("cannot"), "no error explained: {all}");
    assert!(!all.contains(password), "the password was logged");
    assert!(!all.contains(token), "the admin token was logged");
    let _ = std::fs::remove_dir_all(&dir);
}
