//! Dynacast: which of a published video track's layers anyone receives, so its publisher
//! can stop encoding and sending the rest (LiveKit's `subscribed_quality_update`).
//!
//! A leg needs the layer its subscriber's tile asks for ([`choose_layer`] over all the
//! track's layers (`Source::dynacast`), live or not: a layer the publisher paused must still be asked back),
//! and the layers below it, which the bandwidth allocator falls back to. A leg its
//! subscriber paused needs nothing; one the allocator dropped for bandwidth still counts
//! (it comes back when the estimate does). The track needs the highest any leg needs.
//! More is asked for at once; less only once it has been enough for [`DOWNGRADE_DELAY`],
//! so a tile that shrinks and grows again, or a subscriber that leaves and rejoins, does
//! not make the publisher drop a layer and restart it with a keyframe.

use crate::layers::{LayerState, choose_layer};
use std::time::Duration;

/// How long a track must need fewer layers before its publisher is told so.
pub const DOWNGRADE_DELAY: Duration = Duration::from_secs(5);

/// What a track's publisher was last told to send, and since when it needs less.
#[derive(Debug, Default)]
pub struct State {
    /// The SSRC of the highest layer it was told to send, `Some(None)`: none; `None`:
    /// never told (a publisher starts with every layer).
    committed: Option<Option<u32>>,
    /// Since when it needs fewer layers than committed (ms on the caller's clock).
    lower_since_ms: Option<u64>,
}

impl State {
    /// Decides what to tell the publisher when the track needs layers up to rank `need`
    /// (None: none) of `ranked` (its layers' SSRCs, low to high), at `now_ms`: the new top
    /// rank to send up to (`Some(None)`: nothing), or None to tell nothing now.
    pub fn decide(
        &mut self,
        ranked: &[u32],
        need: Option<usize>,
        now_ms: u64,
    ) -> Option<Option<usize>> {
        let top = ranked.len().checked_sub(1)?;
        // What the publisher sends now, as a rank: everything until it is first told.
        let sent = match self.committed {
            None => Some(top),
            Some(None) => None,
            Some(Some(ssrc)) => Some(ranked.iter().position(|s| *s == ssrc).unwrap_or(top)),
        };
        if need == sent {
            self.lower_since_ms = None;
            return None;
        }
        let more = need > sent;
        if !more {
            let since = *self.lower_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < DOWNGRADE_DELAY.as_millis() as u64 {
                return None;
            }
        }
        self.lower_since_ms = None;
        self.committed = Some(need.map(|n| ranked[n]));
        Some(need)
    }
}

/// The highest rank of `ranked` (low to high) any of `wants` needs: a want of `None`
/// (no stated size) needs the top; None when there are no wants.
pub fn needed_rank(
    ranked: &[&LayerState],
    wants: impl IntoIterator<Item = Option<(u32, u32)>>,
) -> Option<usize> {
    wants
        .into_iter()
        .filter_map(|w| {
            let ssrc = choose_layer(ranked, w)?;
            ranked.iter().position(|l| l.ssrc == ssrc)
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const Q: u32 = 1;
    const H: u32 = 2;
    const F: u32 = 3;
    const LAYERS: [u32; 3] = [Q, H, F];

    #[test]
    fn more_layers_are_asked_for_at_once_and_fewer_after_the_delay() {
        let delay = DOWNGRADE_DELAY.as_millis() as u64;
        let mut st = State::default();
        // A publisher starts with every layer: a track that needs all says nothing.
        assert_eq!(st.decide(&LAYERS, Some(2), 0), None);
        // Only q needed: told once that has lasted the delay.
        assert_eq!(st.decide(&LAYERS, Some(0), 1_000), None);
        assert_eq!(st.decide(&LAYERS, Some(0), 1_000 + delay - 1), None);
        assert_eq!(st.decide(&LAYERS, Some(0), 1_000 + delay), Some(Some(0)));
        assert_eq!(st.decide(&LAYERS, Some(0), 1_000 + delay + 250), None);
        // A bigger tile: h at once.
        assert_eq!(st.decide(&LAYERS, Some(1), 10_000), Some(Some(1)));
        // It shrinks and grows again within the delay: nothing said either time.
        assert_eq!(st.decide(&LAYERS, Some(0), 11_000), None);
        assert_eq!(st.decide(&LAYERS, Some(1), 12_000), None);
        // The wait starts afresh after that.
        assert_eq!(st.decide(&LAYERS, Some(0), 13_000), None);
        assert_eq!(st.decide(&LAYERS, Some(0), 13_000 + delay - 1), None);
        // Nobody left: nothing at all, after the delay from when the need first fell.
        assert_eq!(st.decide(&LAYERS, None, 13_000 + delay), Some(None));
        // Someone again: at once.
        assert_eq!(st.decide(&LAYERS, Some(0), 30_000), Some(Some(0)));
    }

    #[test]
    fn a_track_nobody_receives_is_paused_after_the_delay_and_a_new_layer_changes_no_rank() {
        let delay = DOWNGRADE_DELAY.as_millis() as u64;
        let mut st = State::default();
        assert_eq!(st.decide(&LAYERS, None, 0), None);
        assert_eq!(st.decide(&LAYERS, None, delay), Some(None));
        assert_eq!(st.decide(&LAYERS, Some(1), delay + 1), Some(Some(1)));
        // The committed layer is kept by SSRC: a layer that opens below it moves its rank
        // but not what was told.
        assert_eq!(st.decide(&[7, Q, H, F], Some(2), delay + 2), None);
        // No layers at all: nothing to tell.
        assert_eq!(st.decide(&[], Some(0), delay + 3), None);
    }

    #[test]
    fn the_need_is_the_highest_layer_any_tile_asks_for() {
        let sized = |ssrc, w: u32, h: u32| {
            let l = LayerState::new(crate::layers::Layer { rid: None, ssrc });
            l.size.store(w << 16 | h, Ordering::Relaxed);
            l
        };
        let layers = [sized(Q, 320, 180), sized(H, 640, 360), sized(F, 1280, 720)];
        let ranked: Vec<&LayerState> = layers.iter().collect();
        assert_eq!(needed_rank(&ranked, []), None);
        assert_eq!(needed_rank(&ranked, [Some((160, 90))]), Some(0));
        assert_eq!(
            needed_rank(&ranked, [Some((160, 90)), Some((640, 360))]),
            Some(1)
        );
        // A subscriber that states no size needs the top.
        assert_eq!(needed_rank(&ranked, [Some((160, 90)), None]), Some(2));
    }
}
