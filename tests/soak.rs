#![recursion_limit = "256"]
//! Soak: many join/leave cycles against one SFU, several clients at once, with real
//! webrtc-rs peers on loopback (the in-process router as signaling). In each cycle a client
//! joins, connects, publishes audio and video, subscribes to the two resident publishers and
//! receives their media, has a resident subscribe to its video (in the first 240 cycles),
//! and leaves. Afterwards every count is back at its baseline: participants, conferences,
//! published tracks, legs, tokio tasks, open file descriptors and OS threads. Resident
//! memory per cycle after a warm-up is printed, a figure and not a check
//! (docs/performance.md has a long run).
//!
//! `SLUICE_SOAK_CYCLES` (default 48) and `SLUICE_SOAK_CLIENTS` (clients at once, default 3)
//! scale it.

mod support;

use sluice::sfu::{HangupReason, Sfu, SfuSnapshot, TrackRef};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Everything the soak checks returns to its baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    sfu: SfuSnapshot,
    tasks: usize,
    fds: usize,
    threads: usize,
}

fn counts(sfu: &Sfu) -> Counts {
    Counts {
        sfu: sfu.snapshot(),
        tasks: alive_tasks(),
        fds: open_fds(),
        threads: threads(),
    }
}

/// Waits (up to `within`) until `f()` equals `want`; returns the last value.
async fn settle<T: PartialEq>(within: Duration, want: &T, f: impl Fn() -> T) -> T {
    let deadline = Instant::now() + within;
    loop {
        let v = f();
        if v == *want || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Drops what the residents recorded of the media they received, and the router's record
/// of their events, so the test's own records do not count as growth.
fn trim(router: &Router, residents: &[Arc<TestPeer>]) {
    let ids: Vec<&str> = residents.iter().map(|r| r.id.as_str()).collect();
    // Nothing waits on the residents' events after the start (offers carry whole SDPs).
    router
        .log
        .lock()
        .unwrap()
        .retain(|e| !ids.contains(&e.participant.as_str()));
    for r in residents {
        for info in r.state.lock().unwrap().remotes.values_mut() {
            info.packets = Vec::new();
            info.duplicates = Vec::new();
            info.seen = Default::default();
        }
    }
}

/// One client's join, media both ways (with `watched`, a resident subscribes to its video),
/// and leave.
async fn cycle(
    sfu: &Sfu,
    router: &Arc<Router>,
    residents: &[Arc<TestPeer>],
    idx: u8,
    watched: bool,
) {
    let p = TestPeer::new(sfu, idx, true).await;
    router.add(&p);
    p.join(sfu).await.expect("join");
    p.wait_for("connected", LONG, |s| s.connected).await;
    p.start_sending();
    wait_published(router, &p, 2).await;
    let refs: Vec<TrackRef> = residents.iter().flat_map(|r| r.track_refs()).collect();
    sfu.subscribe(CONF, &p.id, &refs).await.expect("subscribe");
    let want: Vec<String> = refs.iter().map(|t| t.track_id.clone()).collect();
    p.wait_for("the residents' media", LONG, |st| {
        want.iter()
            .all(|t| st.remotes.get(t).is_some_and(|r| !r.packets.is_empty()))
    })
    .await;
    if watched {
        watch(sfu, residents, &p).await;
    }
    sfu.leave(CONF, &p.id, HangupReason::UserHangup)
        .await
        .expect("leave");
    p.close().await;
    router.remove(&p.id);
}

/// The first resident subscribes to `p`'s video and receives it.
async fn watch(sfu: &Sfu, residents: &[Arc<TestPeer>], p: &TestPeer) {
    let video: Vec<TrackRef> = p
        .track_refs()
        .into_iter()
        .filter(|t| t.track_id.starts_with("video"))
        .collect();
    sfu.subscribe(CONF, &residents[0].id, &video)
        .await
        .expect("a resident subscribes");
    let vid = video[0].track_id.clone();
    residents[0]
        .wait_for("the client's video at a resident", LONG, |st| {
            st.remotes
                .get(&vid)
                .is_some_and(|r| !r.packets.is_empty() && !r.ended)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_cycles_return_every_count_to_its_baseline() {
    log_if_asked();
    let cycles = env_or("SLUICE_SOAK_CYCLES", 48);
    let clients = env_or("SLUICE_SOAK_CLIENTS", 3).clamp(1, 4);
    let sfu = Sfu::new(test_config());
    let router = Router::start(&sfu);
    let residents = join_peers(&sfu, &router, &[0, 1]).await;
    subscribe_all(&sfu, &residents, &residents).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = counts(&sfu);

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let warm = (cycles / 10).max(clients);
    let rss_warm = Arc::new(std::sync::Mutex::new(None::<(usize, u64)>));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (sfu, router, residents) = (sfu.clone(), router.clone(), residents.clone());
        let (next, rss_warm) = (next.clone(), rss_warm.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= cycles {
                    break;
                }
                trim(&router, &residents);
                if n == warm {
                    *rss_warm.lock().unwrap() = Some((n, rss_bytes()));
                }
                // An id (and its track ids) comes back every 240 cycles. webrtc-rs (the
                // residents' client) opens a track id only once per connection, so a
                // resident watches a client only on its id's first use.
                let idx = 16 + (n % 240) as u8;
                cycle(&sfu, &router, &residents, idx, n < 240).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("a client's cycles");
    }
    let elapsed = started.elapsed();

    // The residents' renegotiations after the last leave settle; tokio's idle blocking
    // threads retire after 10 s.
    let end = settle(Duration::from_secs(40), &baseline, || counts(&sfu)).await;
    trim(&router, &residents);
    let rss_end = rss_bytes();
    // What the residents' connections now carry: a media section per leg they ever had.
    for r in &residents {
        let sdp =
            r.pc.remote_description()
                .await
                .map(|d| d.sdp)
                .unwrap_or_default();
        eprintln!(
            "soak: {} holds {} media sections, its last offer {} bytes",
            r.id,
            sdp.matches("\nm=").count(),
            sdp.len()
        );
    }
    if let Some((n, rss0)) = *rss_warm.lock().unwrap() {
        let per = (rss_end as f64 - rss0 as f64) / (cycles - n).max(1) as f64;
        eprintln!(
            "soak: {cycles} cycles, {clients} at once, in {:.1} s ({:.0} ms per cycle per client); RSS {:.1} MiB after {n} cycles, {:.1} MiB at the end: {:+.2} kB per cycle",
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e3 * clients as f64 / cycles as f64,
            rss0 as f64 / 1048576.0,
            rss_end as f64 / 1048576.0,
            per / 1e3
        );
    }
    assert_eq!(end, baseline, "counts after {cycles} cycles vs before them");

    // The residents still exchange media.
    let n0 = residents[1].state.lock().unwrap().remotes["video-0"]
        .packets
        .len();
    residents[1]
        .wait_for("media still flowing", LONG, |st| {
            st.remotes["video-0"].packets.len() > n0 + 20
        })
        .await;
    for p in &residents {
        sfu.leave(CONF, &p.id, HangupReason::UserHangup)
            .await
            .unwrap();
        p.close().await;
    }
    let snap = settle(LONG, &SfuSnapshot::default(), || sfu.snapshot()).await;
    assert_eq!(snap, SfuSnapshot::default());
}
