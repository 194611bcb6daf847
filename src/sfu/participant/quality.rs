//! The participant's connection quality: what its link lost both ways, its round trip and
//! jitter over the interval since it was last asked (the loss of its media by the sequence
//! numbers of its tracks, the rest from its receiver reports), scored by the media core
//! ([`sluice_media::quality`]).

use super::*;
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

/// Packets of the participant's media, as its tracks counted them when last asked.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Received {
    /// Packets its sequence numbers say were sent.
    expected: u64,
    /// Packets that arrived.
    packets: u64,
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
        // What arrived of the participant's media, by the sequence numbers of its tracks
        // (webrtc-rs 0.21 counts no inbound loss), and its own report of what Sluice sends
        // it (webrtc-rs's remote-inbound statistics have no round trip, and their jitter
        // is in RTP clock units).
        let mut now = Received::default();
        for t in self.published.lock().unwrap().iter() {
            let (expected, received) = t.source().packet_counts();
            now.expected += expected;
            now.packets += received;
        }
        let mut link = self.estimates.reported.sample();
        let before = std::mem::replace(&mut *self.received.lock().unwrap(), now);
        let expected = now.expected.saturating_sub(before.expected);
        let got = now.packets.saturating_sub(before.packets);
        if expected > 0 {
            let lost = expected.saturating_sub(got);
            link.loss = link.loss.max(lost as f64 / expected as f64);
        }
        let score = mos(&link);
        Some(ConnectionQuality {
            quality: classify(score),
            score,
            link,
        })
    }
}
