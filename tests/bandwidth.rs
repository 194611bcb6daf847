#![recursion_limit = "256"]
//! Bandwidth estimation against a real constraint: the subscriber lives in its own network
//! namespace behind a veth pair, and `tc` limits what Sluice can send it. Sluice's send-side
//! estimate (GCC over the subscriber's transport-wide congestion control feedback) has to
//! find the limit, the allocator has to step the leg down to a layer that fits, try upward
//! no more often than its hold allows, and return to the top layer once the limit lifts;
//! below the lowest layer, drop the track and bring it back after the limit lifts, though
//! with nothing sent no feedback can raise the estimate. And a participant whose link dies
//! (nothing gets through either way, as when a browser crashes) is removed once
//! `sfu.ice_lost_timeout_secs` passes. And on a link that loses 5 % at random, the
//! subscriber's NACKs get nearly every lost packet resent in time.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2 (`ip`, `tc`); scripts/test runs as root in CI.

#[path = "support/netns.rs"]
mod netns;
mod support;

use netns::{Netns, NetnsRuntime};
use sluice::sfu::{HangupReason, Sfu, SfuEventKind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// The layer (0 q, 1 h, 2 f) of each video packet the subscriber received, in order,
/// without retransmissions (packets older than one already received).
fn layers(p: &TestPeer) -> Vec<u8> {
    let st = p.state.lock().unwrap();
    let Some(r) = st.remotes.get("video-0") else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(r.packets.len());
    let mut newest: Option<u16> = None;
    for x in &r.packets {
        if newest
            .is_some_and(|n| x.rtp_seq.wrapping_sub(n) == 0 || x.rtp_seq.wrapping_sub(n) > 0x8000)
        {
            continue;
        }
        newest = Some(x.rtp_seq);
        out.push(x.kind - 10);
    }
    out
}

/// The subscriber's admin view: (estimate, its source, the layer it receives).
fn view(sfu: &Sfu, id: &str) -> (u64, &'static str, Option<String>) {
    let confs = sfu.conferences();
    let me = confs[0]
        .participants
        .iter()
        .find(|p| p.id == id)
        .expect("subscriber listed");
    (
        me.estimate_bps,
        me.estimate_source,
        me.subscriptions.first().and_then(|s| s.layer.clone()),
    )
}

/// A layer sequence as runs, e.g. ` qx12 hx40`.
fn runs(seq: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < seq.len() {
        let j = seq[i..]
            .iter()
            .position(|l| *l != seq[i])
            .map_or(seq.len(), |k| i + k);
        out.push_str(&format!(" {}x{}", ["q", "h", "f"][seq[i] as usize], j - i));
        i = j;
    }
    out
}

/// Rank of a layer RID (none: paused, below q).
fn rank(rid: Option<&str>) -> u8 {
    match rid {
        Some("q") => 1,
        Some("h") => 2,
        Some("f") => 3,
        _ => 0,
    }
}

/// Whether the subscriber's video is paused (dropped for bandwidth).
fn paused(sfu: &Sfu, id: &str) -> bool {
    let confs = sfu.conferences();
    confs[0]
        .participants
        .iter()
        .find(|p| p.id == id)
        .and_then(|p| p.subscriptions.first().map(|s| s.paused))
        .unwrap_or(false)
}

/// The tests here measure real-time behaviour behind a real limit: one at a time, so
/// they do not share the two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upward changes in a layer sequence.
fn ups(seq: &[u8]) -> usize {
    seq.windows(2).filter(|w| w[1] > w[0]).count()
}

/// A publisher on the host side (unlimited, three layers at about 50 / 150 / 270 kbit/s
/// of payload) and a subscriber inside a network namespace (its signaling on this
/// runtime), subscribed at 1280x720 and receiving f. Fields drop in order, the namespace
/// last.
struct LimitedCall {
    sfu: Sfu,
    /// Delivers Sluice's events to the peers for as long as the call lasts.
    _router: Arc<Router>,
    publisher: Arc<TestPeer>,
    sub: Arc<TestPeer>,
    id: String,
    inside: NetnsRuntime,
    ns: Netns,
}

impl LimitedCall {
    /// Sets the call up; with `rtx` the subscriber negotiates NACK and RTX (as browsers
    /// do).
    async fn start(rtx: bool) -> LimitedCall {
        let ns = Netns::create();
        let mut cfg = test_config();
        cfg.bind_address = ns.host_ip.parse().unwrap();
        let sfu = Sfu::new(cfg);
        let router = Router::start(&sfu);
        let publisher = TestPeer::new_at(&sfu, 0, true, true, &ns.host_ip).await;
        router.add(&publisher);
        publisher.join(&sfu).await.unwrap();
        publisher.wait_for("connected", LONG, |s| s.connected).await;
        publisher.start_simulcast_sending();
        let inside = NetnsRuntime::start(&ns.name);
        let id = "@user1:test|DEV1".to_owned();
        let sink = sfu_sink(&sfu, &id);
        let (ns_ip, id2) = (ns.ns_ip.clone(), id.clone());
        let sub = inside
            .handle
            .spawn(async move {
                if rtx {
                    TestPeer::build_rtx_at(id2, 1, sink, &ns_ip).await
                } else {
                    TestPeer::build_at(id2, 1, false, false, sink, &ns_ip).await
                }
            })
            .await
            .unwrap();
        router.add(&sub);
        sub.join(&sfu).await.unwrap();
        sub.wait_for("connected", LONG, |s| s.connected).await;
        router
            .wait_for("video published", LONG, |log| {
                log.iter()
                    .any(|e| matches!(e.kind, SfuEventKind::TrackPublished(_)))
            })
            .await;
        let track = publisher.track_refs()[0].clone();
        sfu.subscribe(CONF, &id, std::slice::from_ref(&track))
            .await
            .unwrap();
        sfu.set_track_size(CONF, &id, &track, 1280, 720)
            .await
            .unwrap();
        sub.wait_for("f packets", LONG, |st| {
            st.remotes
                .get("video-0")
                .is_some_and(|r| r.packets.iter().filter(|p| p.kind == 12).count() >= 30)
        })
        .await;
        LimitedCall {
            sfu,
            _router: router,
            publisher,
            sub,
            id,
            inside,
            ns,
        }
    }

    /// Ends the call: Sluice first (closing a peer first makes Sluice renegotiate with
    /// the other), then the peers, each on its own runtime.
    async fn end(self) {
        self.sfu.shutdown(HangupReason::UserHangup).await;
        assert!(self.sfu.participants(CONF).is_empty());
        self.publisher.close().await;
        let sub = self.sub.clone();
        self.inside
            .handle
            .spawn(async move { sub.close().await })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocator_follows_a_real_bandwidth_limit() {
    let _one = ONE_AT_A_TIME.lock().await;
    let call = LimitedCall::start(false).await;
    let (sfu, sub, id, ns) = (&call.sfu, &call.sub, call.id.clone(), &call.ns);

    // Unlimited: the top layer, on an estimate from transport-wide feedback.
    let (est, source, layer) = view(sfu, &id);
    assert_eq!(source, "twcc", "estimate {est} from {source}");
    assert_eq!(layer.as_deref(), Some("f"));

    // 200 kbit/s into the namespace: f (about 280 kbit/s on the wire) no longer fits,
    // h (about 160) does.
    ns.limit(200);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(20);
    loop {
        let (est, _, layer) = view(sfu, &id);
        if layer.as_deref() != Some("f") && est < 260_000 {
            eprintln!(
                "stepped down to {layer:?} after {:?}, estimate {est}",
                t0.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still on {layer:?} with estimate {est} 20 s into a 200 kbit/s limit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 30 s under the limit: upward tries (each of which the limit turns back) are at
    // least a growing hold apart: 5 s, 10 s, 20 s. (With no probing, the estimate grows
    // while the leg sends less than it; the upward step is what tests it.)
    let from = layers(sub).len();
    let mut estimates = Vec::new();
    let mut chosen = Vec::new();
    let mut trace = String::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (est, _, layer) = view(sfu, &id);
        estimates.push(est);
        chosen.push(rank(layer.as_deref()));
        trace.push_str(&format!(
            " {}k/{}",
            est / 1000,
            layer.as_deref().unwrap_or("-")
        ));
    }
    eprintln!("estimate/layer every 0.5 s:{trace}");
    let window = layers(sub)[from..].to_vec();
    // Upward steps Sluice took (its layer choice sampled every 0.5 s).
    let tries = ups(&chosen);
    eprintln!("received layers:{}", runs(&window));
    let on_f = window.iter().filter(|l| **l == 2).count();
    eprintln!(
        "under the limit: {} packets, {tries} upward steps, {on_f} on f, estimates {estimates:?}",
        window.len()
    );
    assert!(!window.is_empty(), "nothing forwarded under the limit");
    assert!(
        tries <= 3,
        "{tries} upward steps in 30 s under a limit (the hold doubles after each failed one)"
    );
    // Most of what arrived was a layer that fits.
    assert!(
        on_f * 3 < window.len(),
        "{on_f} of {} packets on f under a limit it does not fit",
        window.len()
    );

    // The limit lifts: back to f once the estimate has grown and the hold has passed, and
    // f stays.
    ns.unlimit();
    let t1 = Instant::now();
    let deadline = t1 + Duration::from_secs(60);
    let mark = layers(sub).len();
    loop {
        let got = layers(sub);
        let tail = &got[mark..];
        // 3 s of f in a row (90 packets at 30 frames/s).
        if tail.len() >= 90 && tail[tail.len() - 90..].iter().all(|l| *l == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back on f 60 s after the limit lifted: {:?}",
            view(sfu, &id)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (est, source, layer) = view(sfu, &id);
    eprintln!(
        "back on {layer:?} {:?} after the limit lifted, estimate {est} ({source})",
        t1.elapsed()
    );
    assert!(est > 300_000, "estimate {est} after the limit lifted");

    // Below the lowest layer (q is about 55 kbit/s on the wire): the track is dropped.
    // Then nothing is sent, so no feedback comes and the send-side estimate cannot grow
    // on its own; once the limit lifts, the track has to come back anyway (it is retried
    // after the hold) and climb to f again.
    ns.limit(30);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paused(sfu, &id) {
        assert!(
            Instant::now() < deadline,
            "track not dropped 30 s into a 30 kbit/s limit: {:?}",
            view(sfu, &id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    ns.unlimit();
    let t2 = Instant::now();
    let deadline = t2 + Duration::from_secs(90);
    let mark = layers(sub).len();
    loop {
        let got = layers(sub);
        let tail = &got[mark..];
        if !paused(sfu, &id) && tail.len() >= 90 && tail[tail.len() - 90..].iter().all(|l| *l == 2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back on f 90 s after a below-q limit lifted: {:?}",
            view(sfu, &id)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "dropped track back on f {:?} after the below-q limit lifted",
        t2.elapsed()
    );

    // The subscriber (webrtc-rs: it re-requests every missing packet every 100 ms) asked
    // for more retransmissions than its budget under the limit; the rest were not resent.
    let stats = sfu.stats();
    let (nacks, suppressed) = (
        stats
            .nacks_received
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .retransmits_suppressed
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!("NACKs received {nacks}, retransmissions suppressed {suppressed}");
    assert!(
        nacks > 0 && suppressed > 0,
        "{nacks} NACKs, {suppressed} suppressed"
    );

    call.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upward_steps_are_probed_for_under_a_real_limit() {
    // The same path, with a subscriber that negotiates RTX (as browsers do): Sluice probes
    // for an upward step before taking it, so under a limit the failed tries are probes
    // (up to a second of RTX retransmissions at the step's added rate), not steps to a
    // layer the path cannot carry. The feedback has to report the probes: with RTX
    // packets unnumbered (webrtc binds streams by media SSRC only), each failed probe cut
    // the estimate to 0.85 of the media-only rate, and the leg fell from h to q.
    let _one = ONE_AT_A_TIME.lock().await;
    let call = LimitedCall::start(true).await;
    let (sfu, id, ns) = (&call.sfu, call.id.clone(), &call.ns);

    ns.limit(200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (est, _, layer) = view(sfu, &id);
        if layer.as_deref() != Some("f") && est < 260_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still on {layer:?} with estimate {est} 20 s into a 200 kbit/s limit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = sfu.stats();
    let probes = |i: usize| stats.probes[i].load(std::sync::atomic::Ordering::Relaxed);
    let (passed0, failed0) = (probes(0), probes(1));
    let mut chosen = Vec::new();
    let mut trace = String::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (est, _, layer) = view(sfu, &id);
        chosen.push(rank(layer.as_deref()));
        trace.push_str(&format!(
            " {}k/{}",
            est / 1000,
            layer.as_deref().unwrap_or("-")
        ));
    }
    let tries = ups(&chosen);
    let (passed, failed) = (probes(0) - passed0, probes(1) - failed0);
    eprintln!("estimate/layer every 0.5 s:{trace}");
    eprintln!("under the limit: {tries} upward steps, probes passed {passed}, failed {failed}");
    assert!(
        failed >= 1,
        "no probe failed under a limit the step does not fit"
    );
    // A step is taken only after a probe passed; most tries end as failed probes.
    assert!(
        tries <= passed as usize,
        "{tries} upward steps but only {passed} probes passed"
    );
    assert!(
        tries <= 1,
        "{tries} upward steps in 30 s under a limit, with probing"
    );
    // And the failed probes did not cost the layer that fits (h, rank 2).
    let on_h = chosen.iter().filter(|r| **r == 2).count();
    assert!(
        on_h * 4 >= chosen.len() * 3,
        "on h in only {on_h} of {} samples under the limit",
        chosen.len()
    );

    // The limit lifts: a probe passes and the leg is back on f.
    ns.unlimit();
    let t1 = Instant::now();
    let deadline = t1 + Duration::from_secs(60);
    while view(sfu, &id).2.as_deref() != Some("f") {
        assert!(
            Instant::now() < deadline,
            "not back on f 60 s after the limit lifted: {:?}",
            view(sfu, &id)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "back on f {:?} after the limit lifted; probes since: passed {}, failed {}",
        t1.elapsed(),
        probes(0) - passed0 - passed,
        probes(1) - failed0 - failed
    );
    assert!(
        probes(0) > passed0 + passed,
        "the step back to f was not probed for"
    );
    assert!(
        stats
            .probe_packets
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    call.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_link_dies_is_removed_after_the_lost_timeout() {
    let ns = Netns::create();
    let mut cfg = test_config();
    cfg.bind_address = ns.host_ip.parse().unwrap();
    cfg.ice_lost_timeout_secs = 4;
    let sfu = Sfu::new(cfg);
    let router = Router::start(&sfu);
    let watcher = TestPeer::new_at(&sfu, 0, false, false, &ns.host_ip).await;
    router.add(&watcher);
    watcher.join(&sfu).await.unwrap();
    watcher.wait_for("connected", LONG, |s| s.connected).await;
    let inside = NetnsRuntime::start(&ns.name);
    let id = "@user1:test|DEV1".to_owned();
    let sink = sfu_sink(&sfu, &id);
    let (ns_ip, id2) = (ns.ns_ip.clone(), id.clone());
    let gone = inside
        .handle
        .spawn(async move { TestPeer::build_at(id2, 1, true, false, sink, &ns_ip).await })
        .await
        .unwrap();
    router.add(&gone);
    gone.join(&sfu).await.unwrap();
    gone.wait_for("connected", LONG, |s| s.connected).await;
    gone.start_sending();
    wait_published(&router, &gone, 2).await;
    sfu.subscribe(CONF, &watcher.id, &gone.track_refs())
        .await
        .unwrap();
    watcher
        .wait_for("the peer's video", LONG, |st| {
            st.remotes
                .get("video-1")
                .is_some_and(|r| r.packets.len() > 20)
        })
        .await;

    let cut = Instant::now();
    ns.black_hole();
    // 4 s configured; webrtc-rs's own default would take 30 s.
    router
        .wait_for(
            "the silent peer removed with ice_failed",
            Duration::from_secs(20),
            |log| {
                log.iter().any(|e| {
                    e.participant == id && e.kind == SfuEventKind::Left(HangupReason::IceFailed)
                })
            },
        )
        .await;
    eprintln!(
        "removed {:.1} s after its link died",
        cut.elapsed().as_secs_f64()
    );
    watcher
        .wait_for("its tracks ended at the watcher", LONG, |st| {
            ["audio-1", "video-1"]
                .iter()
                .all(|t| st.remotes.get(*t).is_some_and(|r| r.ended))
        })
        .await;
    assert_eq!(sfu.participants(CONF), vec![watcher.id.clone()]);
    // The watcher, still connected, stays.
    sfu.shutdown(HangupReason::UserHangup).await;
    watcher.close().await;
    inside
        .handle
        .spawn(async move { gone.close().await })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmissions_repair_a_lossy_link_to_the_subscriber() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The subscriber negotiates RTX, as browsers do (webrtc-rs's receiver then asks again
    // for every packet it got by RTX: see sluice_media::resends).
    let call = LimitedCall::start(true).await;
    let (sfu, sub, ns) = (&call.sfu, &call.sub, &call.ns);
    ns.lossy();
    // Let the loss settle in (the estimate and the layer follow it), then watch 15 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let newest = || {
        let st = sub.state.lock().unwrap();
        let r = &st.remotes["video-0"];
        (r.packets.len(), r.packets.last().map_or(0, |p| p.rtp_seq))
    };
    let nacks = || {
        sfu.stats()
            .nacks_received
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let ((n0, s0), nacks0) = (newest(), nacks());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (n1, s1) = newest();
    // Time for the last repairs (retries are 100 ms apart).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let missing = {
        let st = sub.state.lock().unwrap();
        let r = &st.remotes["video-0"];
        (1..=s1.wrapping_sub(s0))
            .filter(|k| !r.seen.contains(&s0.wrapping_add(*k)))
            .count()
    };
    let sent = usize::from(s1.wrapping_sub(s0));
    let asked = nacks() - nacks0;
    let suppressed = sfu
        .stats()
        .retransmits_suppressed
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "15 s at 5 % loss: {sent} packets forwarded, {} first arrivals, \
         {asked} NACKs, {suppressed} requests not resent (budget, or resent 3 times), \
         {missing} never repaired ({:.2} %)",
        n1 - n0,
        100.0 * missing as f64 / sent.max(1) as f64
    );
    // Video kept coming (the lowest layer alone is about 8 packets a second) ...
    assert!(sent > 15 * 8, "only {sent} packets in 15 s");
    // ... the link lost some of it, which the subscriber asked for again ...
    assert!(asked > 0, "no NACKs in 15 s of 5 % loss");
    // ... and nearly all of that was resent in time (without the cap on resends per
    // packet, the budget went on packets the subscriber had, and 5 % stayed lost).
    assert!(
        (missing as f64) < 0.01 * sent as f64,
        "{missing} of {sent} packets never arrived"
    );
    ns.unlimit();
    call.end().await;
}
