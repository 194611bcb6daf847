//! Media core tests with real webrtc-rs peers on loopback (no Matrix, no mocks).

mod support;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use sluice::sfu::{HangupReason, Sfu, SfuEventKind, SfuSnapshot, TrackRef};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(20);

/// Joins `n` publishing peers and waits until every one is connected and its two tracks
/// are published.
async fn join_peers(sfu: &Sfu, router: &Arc<Router>, idxs: &[u8]) -> Vec<Arc<TestPeer>> {
    let mut peers = Vec::new();
    for &i in idxs {
        let p = TestPeer::new(sfu, i, true).await;
        router.add(&p);
        p.join(sfu).await.expect("join");
        p.wait_for("connected", LONG, |s| s.connected).await;
        p.start_sending();
        peers.push(p);
    }
    for p in &peers {
        let id = p.id.clone();
        router
            .wait_for("tracks published", LONG, |log| {
                log.iter()
                    .filter(|e| {
                        e.participant == id && matches!(e.kind, SfuEventKind::TrackPublished(_))
                    })
                    .count()
                    == 2
            })
            .await;
    }
    peers
}

/// Subscribes every peer in `subs` to every track of every peer in `pubs` (other than its
/// own) and waits until packets of each arrive.
async fn subscribe_all(sfu: &Sfu, subs: &[Arc<TestPeer>], pubs: &[Arc<TestPeer>]) {
    for s in subs {
        let refs: Vec<TrackRef> = pubs
            .iter()
            .filter(|p| p.id != s.id)
            .flat_map(|p| p.track_refs())
            .collect();
        sfu.subscribe(CONF, &s.id, &refs).await.expect("subscribe");
    }
    for s in subs {
        let want: Vec<String> = pubs
            .iter()
            .filter(|p| p.id != s.id)
            .flat_map(|p| p.track_refs().into_iter().map(|t| t.track_id))
            .collect();
        s.wait_for("first packets of every subscribed track", LONG, |st| {
            want.iter().all(|t| {
                st.remotes
                    .get(t)
                    .is_some_and(|r| !r.packets.is_empty())
            })
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_exchange_audio_and_video_intact_and_in_order() {
    let (sfu, events) = Sfu::new(test_config());
    let router = Router::start(&sfu, events);
    let peers = join_peers(&sfu, &router, &[0, 1, 2]).await;
    subscribe_all(&sfu, &peers, &peers).await;

    // Everything a receiver gets from here on is measured.
    let start: HashMap<(String, String), usize> = peers
        .iter()
        .flat_map(|p| {
            let st = p.state.lock().unwrap();
            st.remotes
                .iter()
                .map(|(t, r)| ((p.id.clone(), t.clone()), r.packets.len()))
                .collect::<Vec<_>>()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in &peers {
        p.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let snap = sfu.snapshot();
    assert_eq!(
        snap,
        SfuSnapshot {
            conferences: 1,
            participants: 3,
            published_tracks: 6,
            subscriptions: 12
        }
    );

    for rx in &peers {
        // The receiver's negotiated payload types, by MIME type.
        let mut pts: HashMap<u8, String> = HashMap::new();
        let mut level_ids: Vec<u8> = Vec::new();
        for r in rx.pc.get_receivers().await {
            let params = r.get_parameters().await.unwrap();
            for c in params.rtp_parameters.codecs {
                pts.insert(c.payload_type, c.rtp_codec.mime_type.to_lowercase());
            }
            for e in params.rtp_parameters.header_extensions {
                if e.uri == AUDIO_LEVEL {
                    level_ids.push(e.id as u8);
                }
            }
        }
        let st = rx.state.lock().unwrap();
        for tx in peers.iter().filter(|p| p.id != rx.id) {
            for s in &tx.sends {
                let r = st
                    .remotes
                    .get(&s.track_id)
                    .unwrap_or_else(|| panic!("{} has no track {}", rx.id, s.track_id));
                // Stream and track ids are the publisher's.
                assert_eq!(r.stream_id, s.stream_id);
                assert_eq!(r.kind, s.kind);
                let kind_byte = if s.kind == RtpCodecKind::Audio { 0 } else { 1 };
                let skip = start[&(rx.id.clone(), s.track_id.clone())];
                let got = &r.packets[skip..];
                assert!(!got.is_empty(), "{} got nothing of {}", rx.id, s.track_id);
                let first = got[0].seq;
                let last = tx.last_sent(kind_byte);
                let expected = (last - first + 1) as usize;
                let ratio = got.len() as f64 / expected as f64;
                assert!(
                    ratio >= 0.99,
                    "{} received {}/{} of {} ({ratio:.3})",
                    rx.id,
                    got.len(),
                    expected,
                    s.track_id
                );
                let want_mime = if s.kind == RtpCodecKind::Audio {
                    "audio/opus"
                } else {
                    "video/vp8"
                };
                let mut prev = None;
                for pkt in got {
                    assert_eq!((pkt.sender, pkt.kind), (tx.idx, kind_byte));
                    if let Some(p) = prev {
                        assert!(pkt.seq > p, "out of order: {} after {p}", pkt.seq);
                    }
                    prev = Some(pkt.seq);
                    let len = if kind_byte == 0 { 120 } else { 1000 };
                    assert_eq!(pkt.payload, payload(tx.idx, kind_byte, pkt.seq, len));
                    assert_eq!(pkt.ssrc, r.ssrc, "SSRC is the leg's");
                    assert_ne!(pkt.ssrc, s.ssrc, "SSRC was rewritten");
                    assert_eq!(
                        pts.get(&pkt.pt).map(String::as_str),
                        Some(want_mime),
                        "payload type {} is negotiated for {want_mime} on the leg",
                        pkt.pt
                    );
                    if kind_byte == 0 {
                        // The audio level reached the subscriber under its own id.
                        assert!(
                            pkt.extensions
                                .iter()
                                .any(|(id, v)| level_ids.contains(id) && v[..] == [0x80 | tx.idx]),
                            "audio level missing: {:?}",
                            pkt.extensions
                        );
                    }
                }
                // Sequence numbers on the leg are contiguous.
                let _ = first;
            }
        }
    }
    let stats = sfu.stats();
    assert_eq!(stats.dropped(sluice::sfu::DropReason::QueueFull), 0);
    for p in &peers {
        p.close().await;
    }
}
