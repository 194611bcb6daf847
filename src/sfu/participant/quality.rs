//! The participant's connection quality: what its link lost both ways, its round trip and
//! jitter over the interval since it was last asked (from its connection's statistics),
//! scored by the media core ([`sluice_media::quality`]).

use super::*;
use rtc::statistics::StatsSelector;
use rtc::statistics::report::RTCStatsReportEntry;
use sluice_media::quality::{LinkSample, Quality, classify, mos};

/// A participant's connection quality over one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionQuality {
    /// Its class.
    pub quality: Quality,
    /// The score (1 to 4.5; 1 when lost).
    pub score: f64,
    /// What the link did.
    pub link: LinkSample,
}

/// Packets received from the participant and lost on the way, as its connection counted
/// them when last asked.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Received {
    packets: u64,
    lost: i64,
}

impl Participant {
    /// The connection's quality since the last call: lost while its connection is
    /// interrupted (ICE disconnected), None before it first connected. The loss is the
    /// worse of what Sluice lost of the participant's media in the interval and what the
    /// participant last reported losing of Sluice's; round trip and jitter are the worst
    /// its streams report.
    pub(crate) async fn connection_quality(&self) -> Option<ConnectionQuality> {
        if !self.is_connected() {
            return None;
        }
        if self.interrupted.load(Ordering::Acquire) {
            return Some(ConnectionQuality {
                quality: Quality::Lost,
                score: 1.0,
                link: LinkSample {
                    loss: 1.0,
                    ..LinkSample::default()
                },
            });
        }
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut now = Received::default();
        let mut link = LinkSample::default();
        for entry in report.iter() {
            match entry {
                RTCStatsReportEntry::InboundRtp(s) => {
                    let r = &s.received_rtp_stream_stats;
                    now.packets += r.packets_received;
                    now.lost += r.packets_lost;
                    link.jitter = link.jitter.max(r.jitter);
                }
                RTCStatsReportEntry::RemoteInboundRtp(s) => {
                    link.loss = link.loss.max(s.fraction_lost);
                    link.rtt = link.rtt.max(s.round_trip_time);
                    link.jitter = link.jitter.max(s.received_rtp_stream_stats.jitter);
                }
                _ => {}
            }
        }
        let before = std::mem::replace(&mut *self.received.lock().unwrap(), now);
        let got = now.packets.saturating_sub(before.packets);
        let lost = (now.lost - before.lost).max(0) as u64;
        if got + lost > 0 {
            link.loss = link.loss.max(lost as f64 / (got + lost) as f64);
        }
        let score = mos(&link);
        Some(ConnectionQuality {
            quality: classify(score),
            score,
            link,
        })
    }
}
