//! The layers of a published track and the choice among them: each layer's live state
//! (size, rates per spatial and temporal layer, last packet), the quality ladder the
//! allocator climbs, the layer choice by tile size, and how a leg follows its temporal and
//! spatial targets packet by packet (at picture starts, up only where it can decode).

use crate::codec;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// One simulcast layer (or the only stream) of a published track, as it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Its RTP stream id (RID), when simulcast.
    pub rid: Option<String>,
    /// Its SSRC.
    pub ssrc: u32,
}

/// A layer's live state, read and written on the packet path without locks.
#[derive(Debug)]
pub struct LayerState {
    /// Its RTP stream id (RID), when simulcast.
    pub rid: Option<String>,
    /// Its SSRC.
    pub ssrc: u32,
    /// `width << 16 | height` from its last keyframe; 0 while unknown.
    pub(crate) size: AtomicU32,
    /// When its last packet arrived (ms since the track's epoch, +1; 0 never).
    pub(crate) last_ms: AtomicU64,
    /// Payload bytes received, for the rate estimate.
    pub(crate) bytes: AtomicU64,
    bytes_seen: AtomicU64,
    /// Smoothed bitrate (bits/s), updated by the housekeeping task.
    rate_bps: AtomicU64,
    /// The same per spatial and temporal layer id, at `sid * TEMPORAL_LAYERS + tid` (ids
    /// above the last count as the last), for packets whose layers are known.
    pub(crate) st_bytes: [AtomicU64; LAYER_CELLS],
    st_bytes_seen: [AtomicU64; LAYER_CELLS],
    st_rate_bps: [AtomicU64; LAYER_CELLS],
    /// `width << 16 | height` of each spatial layer, from a VP9 keyframe's scalability
    /// structure or an AV1 dependency descriptor's render resolutions; 0 while unknown.
    spatial_size: [AtomicU32; codec::SPATIAL_LAYERS],
    /// Media packets received on it.
    received: AtomicU64,
    /// The first and the highest sequence number received, extended past wraps (from
    /// 1 << 16, so 0 is none). Written only by the forwarder.
    first_seq: AtomicU64,
    highest_seq: AtomicU64,
}

/// Counters per (spatial, temporal) layer pair.
const LAYER_CELLS: usize = codec::SPATIAL_LAYERS * TEMPORAL_LAYERS;

/// The counter index of a packet's layers.
#[inline]
pub(crate) fn cell(sid: u8, tid: u8) -> usize {
    (sid as usize).min(codec::SPATIAL_LAYERS - 1) * TEMPORAL_LAYERS
        + (tid as usize).min(TEMPORAL_LAYERS - 1)
}

/// A layer without packets for this long is stalled: its subscribers move to a live one.
pub const LAYER_STALL: Duration = Duration::from_secs(2);

/// Temporal layers Sluice tells apart per stream (L1T3 is what browsers send).
pub const TEMPORAL_LAYERS: usize = 4;

/// A leg's temporal-layer target meaning "every layer the publisher sends".
pub const ALL_TEMPORAL: u8 = u8::MAX;

/// A leg's spatial-layer target meaning "every spatial layer the stream carries".
pub const ALL_SPATIAL: u8 = u8::MAX;

/// One step of a track's quality ladder for the allocator: a simulcast layer (its rank
/// among the live layers, low to high) with its spatial layers up to `sid` (resolution,
/// for an SVC stream) and temporal layers up to `tid` (frames per second), and what that
/// costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// Rank of the simulcast layer among the live ones.
    pub layer: usize,
    /// Highest spatial layer id forwarded; [`ALL_SPATIAL`] on the rungs of the top one.
    pub sid: u8,
    /// Highest temporal layer id forwarded; [`ALL_TEMPORAL`] on a layer's top rung.
    pub tid: u8,
    /// Bitrate of this rung, bits/s.
    pub rate: u64,
}

impl LayerState {
    /// A layer as it opens (size unknown, no packet yet).
    pub fn new(l: Layer) -> Self {
        Self {
            rid: l.rid,
            ssrc: l.ssrc,
            size: AtomicU32::new(0),
            last_ms: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bytes_seen: AtomicU64::new(0),
            rate_bps: AtomicU64::new(0),
            st_bytes: Default::default(),
            st_bytes_seen: Default::default(),
            st_rate_bps: Default::default(),
            spatial_size: Default::default(),
            received: AtomicU64::new(0),
            first_seq: AtomicU64::new(0),
            highest_seq: AtomicU64::new(0),
        }
    }

    /// Counts a media packet with sequence number `seq` (the forwarder, per packet).
    #[inline]
    pub(crate) fn note_seq(&self, seq: u16) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let hi = self.highest_seq.load(Ordering::Relaxed);
        if hi == 0 {
            let ext = 1 << 16 | u64::from(seq);
            self.first_seq.store(ext, Ordering::Relaxed);
            self.highest_seq.store(ext, Ordering::Relaxed);
            return;
        }
        let ahead = seq.wrapping_sub(hi as u16) as i16;
        if ahead > 0 {
            self.highest_seq.store(hi + ahead as u64, Ordering::Relaxed);
        }
    }

    /// Packets the publisher sent on this layer as far as its sequence numbers show, and
    /// those that arrived: `(expected, received)`.
    pub fn packet_counts(&self) -> (u64, u64) {
        let hi = self.highest_seq.load(Ordering::Relaxed);
        let expected = match hi {
            0 => 0,
            hi => hi - self.first_seq.load(Ordering::Relaxed) + 1,
        };
        (expected, self.received.load(Ordering::Relaxed))
    }

    /// The rungs of this layer (rank `layer`): per spatial layer it carries, low to high,
    /// one per temporal layer, each with the spatial and temporal layers below it (an
    /// SVC frame references lower spatial layers of its picture); a single rung when it
    /// has no layers of either kind.
    pub(crate) fn rungs(&self, layer: usize, out: &mut Vec<Rung>) {
        let rates: [u64; LAYER_CELLS] =
            std::array::from_fn(|c| self.st_rate_bps[c].load(Ordering::Relaxed));
        let spatial = (0..codec::SPATIAL_LAYERS)
            .rposition(|s| {
                rates[s * TEMPORAL_LAYERS..][..TEMPORAL_LAYERS]
                    .iter()
                    .any(|r| *r > 0)
            })
            .map_or(1, |s| s + 1);
        let temporal = (0..TEMPORAL_LAYERS)
            .rposition(|t| (0..spatial).any(|s| rates[s * TEMPORAL_LAYERS + t] > 0))
            .map_or(1, |t| t + 1);
        let total = self.rate_bps();
        for s in 0..spatial {
            let top_s = s + 1 == spatial;
            for t in 0..temporal {
                let top_t = t + 1 == temporal;
                let sum: u64 = (0..=s)
                    .flat_map(|s| (0..=t).map(move |t| s * TEMPORAL_LAYERS + t))
                    .map(|c| rates[c])
                    .sum();
                out.push(Rung {
                    layer,
                    sid: if top_s { ALL_SPATIAL } else { s as u8 },
                    tid: if top_t { ALL_TEMPORAL } else { t as u8 },
                    rate: if top_s && top_t { sum.max(total) } else { sum },
                });
            }
        }
    }

    /// The lowest spatial layer that covers a tile of `want` (as [`choose_layer`] judges
    /// a layer), when the stream announced its spatial layers' sizes; [`ALL_SPATIAL`]
    /// otherwise, or when the top one is needed.
    pub(crate) fn preferred_sid(&self, want: Option<(u32, u32)>) -> u8 {
        let Some((w, h)) = want else {
            return ALL_SPATIAL;
        };
        let sizes: Vec<(u32, u32)> = self
            .spatial_size
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .take_while(|s| *s != 0)
            .map(|s| (s >> 16, s & 0xFFFF))
            .collect();
        if sizes.len() < 2 {
            return ALL_SPATIAL;
        }
        match sizes
            .iter()
            .position(|&(lw, lh)| lw * 10 >= w * 9 || lh * 10 >= h * 9)
        {
            Some(s) if s + 1 < sizes.len() => s as u8,
            _ => ALL_SPATIAL,
        }
    }

    /// Records the spatial layers' sizes a keyframe announced (a VP9 scalability
    /// structure, an AV1 dependency descriptor's render resolutions); the stream's size
    /// is the top one's.
    pub(crate) fn set_spatial_sizes(&self, sizes: &[(u16, u16)]) {
        for (i, slot) in self.spatial_size.iter().enumerate() {
            let v = sizes
                .get(i)
                .map_or(0, |&(w, h)| ((w as u32) << 16) | h as u32);
            slot.store(v, Ordering::Relaxed);
        }
        if let Some(&(w, h)) = sizes.last() {
            self.set_size(w, h);
        }
    }

    /// The layer's smoothed bitrate in bits/s (0 while unknown).
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps.load(Ordering::Relaxed)
    }

    /// Folds the bytes received over `elapsed` into the smoothed rate.
    pub(crate) fn update_rate(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        smooth(&self.bytes, &self.bytes_seen, &self.rate_bps, secs, 0.0);
        // A layer the publisher stopped sending decays out of the ladder.
        for c in 0..LAYER_CELLS {
            smooth(
                &self.st_bytes[c],
                &self.st_bytes_seen[c],
                &self.st_rate_bps[c],
                secs,
                1000.0,
            );
        }
    }

    /// Records the size a keyframe announced.
    pub fn set_size(&self, width: u16, height: u16) {
        self.size
            .store(((width as u32) << 16) | height as u32, Ordering::Relaxed);
    }

    /// `(width, height)` when known.
    pub fn size(&self) -> Option<(u32, u32)> {
        let s = self.size.load(Ordering::Relaxed);
        (s != 0).then_some((s >> 16, s & 0xFFFF))
    }
}

/// Folds the bytes counted since the last call (over `secs`) into a smoothed rate; a
/// rate below `floor` bits/s is 0.
fn smooth(bytes: &AtomicU64, seen: &AtomicU64, rate_bps: &AtomicU64, secs: f64, floor: f64) {
    let total = bytes.load(Ordering::Relaxed);
    let delta = total.saturating_sub(seen.swap(total, Ordering::Relaxed));
    let now = delta as f64 * 8.0 / secs;
    let old = rate_bps.load(Ordering::Relaxed) as f64;
    let rate = if old == 0.0 {
        now
    } else {
        0.7 * old + 0.3 * now
    };
    rate_bps.store(
        if rate < floor { 0 } else { rate as u64 },
        Ordering::Relaxed,
    );
}

/// Rank of a simulcast RID by the usual naming when sizes are unknown (low → high).
fn rid_rank(rid: Option<&str>) -> u32 {
    match rid {
        Some("q" | "l" | "low" | "0") => 0,
        Some("h" | "m" | "mid" | "1") => 1,
        Some("f" | "high" | "hi" | "2") => 2,
        _ => 1,
    }
}

/// Orders layers low to high: by known size, else by RID convention.
pub(crate) fn rank_layers<T: std::ops::Deref<Target = LayerState>>(layers: &mut [T]) {
    let all_sized = layers.iter().all(|l| l.size().is_some());
    layers.sort_by_key(|l| {
        if all_sized {
            let (w, h) = l.size().unwrap_or_default();
            (w * h, l.ssrc)
        } else {
            (rid_rank(l.rid.as_deref()), l.ssrc)
        }
    });
}

/// Chooses the layer for a subscriber that renders at `want` (width, height): the
/// smallest layer at least about that size, else the largest; with no preference, the
/// largest. Layers are ordered by known size, else by RID convention.
pub fn choose_layer(layers: &[&LayerState], want: Option<(u32, u32)>) -> Option<u32> {
    let mut ranked: Vec<&LayerState> = layers.to_vec();
    rank_layers(&mut ranked);
    let all_sized = ranked.iter().all(|l| l.size().is_some());
    let top = ranked.last()?.ssrc;
    let Some((w, h)) = want else {
        return Some(top);
    };
    if !all_sized {
        // Without sizes, assume the usual 1/4, 1/2, 1 scaling of a 1280x720 top layer.
        let idx = if h <= 180 && w <= 320 {
            0
        } else if h <= 360 && w <= 640 {
            1
        } else {
            2
        };
        return Some(ranked[idx.min(ranked.len() - 1)].ssrc);
    }
    // A layer 10 % smaller than the tile still looks right.
    let fits = |l: &&LayerState| {
        let (lw, lh) = l.size().unwrap_or_default();
        lw * 10 >= w * 9 || lh * 10 >= h * 9
    };
    Some(ranked.iter().find(|l| fits(l)).map_or(top, |l| l.ssrc))
}

/// The highest temporal layer a leg receives from the packet at `t` on, given what it
/// received (`cur`) and what the allocator wants (`target`): changes only where a
/// picture starts, so no frame is cut; down at once; up only at a base-layer (tid 0)
/// picture, which references no frame of a higher layer, so every frame forwarded after
/// it has its references whatever the layer pattern.
#[inline]
pub fn follow_temporal_target(cur: u8, target: u8, t: codec::Temporal) -> u8 {
    if t.picture_start && (target < cur || (target > cur && t.tid == 0)) {
        target
    } else {
        cur
    }
}

/// The highest spatial layer a leg receives from the packet at `t` on, given what it
/// received (`cur`) and what the allocator wants (`target`): changes only where a picture
/// starts; down at once (a spatial layer references only lower ones of its picture, and
/// its own earlier frames, which the leg keeps receiving); up only at a keyframe (`key`,
/// asked only then), the one picture whose higher spatial frames reference no earlier
/// picture.
#[inline]
pub fn follow_spatial_target(
    cur: u8,
    target: u8,
    t: codec::Temporal,
    key: impl FnOnce() -> bool,
) -> u8 {
    if !t.picture_start || target == cur {
        cur
    } else if target < cur || key() {
        target
    } else {
        cur
    }
}

/// What a leg that receives temporal layers up to `tid` and spatial layers up to `sid`
/// does with a packet at `t`.
#[inline]
pub fn keep(t: codec::Temporal, tid: u8, sid: u8) -> Keep {
    if t.sid > sid {
        Keep::Skip { spatial: true }
    } else if t.tid > tid {
        Keep::Skip { spatial: false }
    } else {
        Keep::Forward {
            end_of_picture: t.sid == sid && t.frame_end,
        }
    }
}

/// What the forwarder does with a packet for one leg, from its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Leave it out: a spatial (or else temporal) layer above the leg's.
    Skip { spatial: bool },
    /// Forward it; with the RTP marker set when it ends the leg's picture.
    Forward { end_of_picture: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_counts_follow_sequence_numbers_across_a_wrap_and_reordering() {
        let l = LayerState::new(Layer { rid: None, ssrc: 1 });
        assert_eq!(l.packet_counts(), (0, 0));
        // 65530 ..= 65535, 0 ..= 9 with 65533 and 4 lost, 7 late (after 8).
        let seqs = (65530u16..=65535)
            .chain(0..=9)
            .filter(|s| *s != 65533 && *s != 4 && *s != 7)
            .chain([7]);
        for s in seqs {
            l.note_seq(s);
        }
        assert_eq!(l.packet_counts(), (16, 14));
    }

    fn layer(rid: &str, ssrc: u32, size: Option<(u16, u16)>) -> LayerState {
        let l = LayerState::new(Layer {
            rid: Some(rid.to_owned()),
            ssrc,
        });
        if let Some((w, h)) = size {
            l.set_size(w, h);
        }
        l
    }

    #[test]
    fn smallest_layer_covering_the_tile_wins() {
        let q = layer("q", 1, Some((320, 180)));
        let h = layer("h", 2, Some((640, 360)));
        let f = layer("f", 3, Some((1280, 720)));
        let all = [&f, &q, &h];
        assert_eq!(choose_layer(&all, Some((320, 180))), Some(1));
        assert_eq!(choose_layer(&all, Some((300, 160))), Some(1));
        assert_eq!(choose_layer(&all, Some((600, 340))), Some(2));
        assert_eq!(choose_layer(&all, Some((1280, 720))), Some(3));
        assert_eq!(choose_layer(&all, Some((1920, 1080))), Some(3));
        assert_eq!(choose_layer(&all, None), Some(3));
        assert_eq!(choose_layer(&[], None), None);
    }

    #[test]
    fn temporal_layers_change_only_where_pictures_start_and_go_up_at_base_pictures() {
        let at = |tid, picture_start| codec::Temporal {
            tid,
            sid: 0,
            picture_start,
            frame_end: false,
        };
        // Down: not inside a picture, then at the next picture start of any layer.
        assert_eq!(follow_temporal_target(2, 0, at(1, false)), 2);
        assert_eq!(follow_temporal_target(2, 0, at(2, true)), 0);
        // Up: not at a picture of a higher layer, nor inside a base-layer picture.
        assert_eq!(follow_temporal_target(0, 2, at(2, true)), 0);
        assert_eq!(follow_temporal_target(0, 2, at(1, true)), 0);
        assert_eq!(follow_temporal_target(0, 2, at(0, false)), 0);
        assert_eq!(
            follow_temporal_target(0, ALL_TEMPORAL, at(0, true)),
            ALL_TEMPORAL
        );
        assert_eq!(follow_temporal_target(1, 1, at(0, true)), 1);
    }

    #[test]
    fn the_ladder_climbs_temporal_layers_within_each_simulcast_layer() {
        let q = layer("q", 1, None);
        let f = layer("f", 2, None);
        // q carries three temporal layers, f none known.
        for (t, r) in [180_000, 120_000, 120_000].into_iter().enumerate() {
            q.st_rate_bps[t].store(r, Ordering::Relaxed);
        }
        q.rate_bps.store(400_000, Ordering::Relaxed);
        f.rate_bps.store(900_000, Ordering::Relaxed);
        let mut rungs = vec![];
        q.rungs(0, &mut rungs);
        f.rungs(1, &mut rungs);
        let got: Vec<(usize, u8, u64)> = rungs.iter().map(|r| (r.layer, r.tid, r.rate)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 180_000),
                (0, 1, 300_000),
                // The top rung is all of the layer, at least what the layer measured.
                (0, ALL_TEMPORAL, 420_000),
                (1, ALL_TEMPORAL, 900_000),
            ]
        );
    }

    #[test]
    fn spatial_layers_change_only_where_pictures_start_and_go_up_at_keyframes() {
        let at = |sid, picture_start| codec::Temporal {
            tid: 0,
            sid,
            picture_start,
            frame_end: false,
        };
        let never = || -> bool { panic!("asked for a keyframe where no switch up can be") };
        // Down: at the next picture start, without a keyframe.
        assert_eq!(follow_spatial_target(2, 0, at(1, false), never), 2);
        assert_eq!(follow_spatial_target(2, 0, at(0, true), never), 0);
        // Up: only at a keyframe picture.
        assert_eq!(follow_spatial_target(0, 2, at(0, true), || false), 0);
        assert_eq!(follow_spatial_target(0, 2, at(0, true), || true), 2);
        assert_eq!(
            follow_spatial_target(0, ALL_SPATIAL, at(2, false), never),
            0
        );
        assert_eq!(follow_spatial_target(1, 1, at(0, true), never), 1);
    }

    #[test]
    fn a_leg_below_the_top_spatial_layer_ends_pictures_at_its_own() {
        let sink_keeps = |sid: u8, t: codec::Temporal| keep(t, ALL_TEMPORAL, sid);
        let pkt = |sid, frame_end| codec::Temporal {
            tid: 0,
            sid,
            picture_start: sid == 0,
            frame_end,
        };
        assert_eq!(
            sink_keeps(1, pkt(1, true)),
            Keep::Forward {
                end_of_picture: true
            }
        );
        assert_eq!(
            sink_keeps(1, pkt(0, true)),
            Keep::Forward {
                end_of_picture: false
            }
        );
        assert_eq!(sink_keeps(1, pkt(2, true)), Keep::Skip { spatial: true });
        assert_eq!(
            keep(
                codec::Temporal {
                    tid: 2,
                    ..pkt(0, true)
                },
                1,
                ALL_SPATIAL
            ),
            Keep::Skip { spatial: false }
        );
        assert_eq!(
            sink_keeps(ALL_SPATIAL, pkt(2, true)),
            Keep::Forward {
                end_of_picture: false
            }
        );
    }

    #[test]
    fn an_svc_ladder_climbs_temporal_layers_within_each_spatial_layer() {
        let l = layer("x", 1, None);
        // L3T2: spatial layer s, temporal layer t at 100·(s+1)·(t+1) kbit/s.
        for s in 0..3 {
            for t in 0..2 {
                l.st_rate_bps[cell(s, t)]
                    .store(100_000 * (s as u64 + 1) * (t as u64 + 1), Ordering::Relaxed);
            }
        }
        let mut rungs = vec![];
        l.rungs(0, &mut rungs);
        let got: Vec<(u8, u8, u64)> = rungs.iter().map(|r| (r.sid, r.tid, r.rate)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 100_000),
                (0, ALL_TEMPORAL, 300_000),
                (1, 0, 300_000),
                (1, ALL_TEMPORAL, 900_000),
                (ALL_SPATIAL, 0, 600_000),
                (ALL_SPATIAL, ALL_TEMPORAL, 1_800_000),
            ]
        );
    }

    #[test]
    fn the_tile_chooses_the_spatial_layer_once_sizes_are_known() {
        let l = layer("x", 1, None);
        assert_eq!(
            l.preferred_sid(Some((320, 180))),
            ALL_SPATIAL,
            "sizes unknown"
        );
        l.set_spatial_sizes(&[(320, 180), (640, 360), (1280, 720)]);
        assert_eq!(l.size(), Some((1280, 720)));
        assert_eq!(l.preferred_sid(Some((320, 180))), 0);
        assert_eq!(l.preferred_sid(Some((300, 170))), 0);
        assert_eq!(l.preferred_sid(Some((600, 340))), 1);
        assert_eq!(l.preferred_sid(Some((1280, 720))), ALL_SPATIAL);
        assert_eq!(l.preferred_sid(Some((1920, 1080))), ALL_SPATIAL);
        assert_eq!(l.preferred_sid(None), ALL_SPATIAL);
    }

    #[test]
    fn rid_convention_orders_layers_of_unknown_size() {
        let q = layer("q", 30, None);
        let h = layer("h", 20, None);
        let f = layer("f", 10, None);
        let all = [&f, &h, &q];
        assert_eq!(choose_layer(&all, Some((320, 180))), Some(30));
        assert_eq!(choose_layer(&all, Some((640, 360))), Some(20));
        assert_eq!(choose_layer(&all, None), Some(10));
        // Two layers live: a large tile gets the top one.
        assert_eq!(choose_layer(&[&q, &h], Some((1280, 720))), Some(20));
    }
}
