//! Published tracks, subscriber legs, and the packet path between them.
//!
//! ```text
//! publisher PC ──► TrackRemote::poll ──► forwarder task (one per published track)
//!                                         │ for each attached LegSink whose layer matches:
//!                                         │   clone, LegRewriter::rewrite, write_rtp polled
//!                                         │   once (never waits; full: drop + count)
//!                                         ▼
//!                               subscriber PC's driver channel ──► subscriber PC
//! subscriber PC ──► TrackLocal::poll (PLI/FIR) ──► rtcp task (one per leg)
//!                                                  ──► KeyframeThrottle ──► publisher PLI
//! ```

use super::alloc;
use super::codec::{self, VideoCodec};
use super::rewrite::{LegParams, LegRewriter};
use super::rtcp::{KeyframeThrottle, is_keyframe_request};
use super::stats::{DropReason, MediaKind, Stats};
use super::{SfuError, TrackInfo};
use arc_swap::ArcSwap;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

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
    size: AtomicU32,
    /// When its last packet arrived (ms since the track's epoch, +1; 0 never).
    last_ms: AtomicU64,
    /// Payload bytes received, for the rate estimate.
    bytes: AtomicU64,
    bytes_seen: AtomicU64,
    /// Smoothed bitrate (bits/s), updated by the housekeeping task.
    rate_bps: AtomicU64,
    /// The same per spatial and temporal layer id, at `sid * TEMPORAL_LAYERS + tid` (ids
    /// above the last count as the last), for packets whose layers are known.
    st_bytes: [AtomicU64; LAYER_CELLS],
    st_bytes_seen: [AtomicU64; LAYER_CELLS],
    st_rate_bps: [AtomicU64; LAYER_CELLS],
    /// `width << 16 | height` of each spatial layer, from a VP9 keyframe's scalability
    /// structure or an AV1 dependency descriptor's render resolutions; 0 while unknown.
    spatial_size: [AtomicU32; codec::SPATIAL_LAYERS],
}

/// Counters per (spatial, temporal) layer pair.
const LAYER_CELLS: usize = codec::SPATIAL_LAYERS * TEMPORAL_LAYERS;

/// The counter index of a packet's layers.
#[inline]
fn cell(sid: u8, tid: u8) -> usize {
    (sid as usize).min(codec::SPATIAL_LAYERS - 1) * TEMPORAL_LAYERS
        + (tid as usize).min(TEMPORAL_LAYERS - 1)
}

/// Temporal layers Sluice tells apart per stream (L1T3 is what browsers send).
pub const TEMPORAL_LAYERS: usize = 4;

/// A leg's temporal-layer target meaning "every layer the publisher sends".
pub(crate) const ALL_TEMPORAL: u8 = u8::MAX;

/// A leg's spatial-layer target meaning "every spatial layer the stream carries".
pub(crate) const ALL_SPATIAL: u8 = u8::MAX;

/// One step of a track's quality ladder for the allocator: a simulcast layer (its rank
/// among the live layers, low to high) with its spatial layers up to `sid` (resolution,
/// for an SVC stream) and temporal layers up to `tid` (frames per second), and what that
/// costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rung {
    /// Rank of the simulcast layer among the live ones.
    pub(crate) layer: usize,
    /// Highest spatial layer id forwarded; [`ALL_SPATIAL`] on the rungs of the top one.
    pub(crate) sid: u8,
    /// Highest temporal layer id forwarded; [`ALL_TEMPORAL`] on a layer's top rung.
    pub(crate) tid: u8,
    /// Bitrate of this rung, bits/s.
    pub(crate) rate: u64,
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
        }
    }

    /// The rungs of this layer (rank `layer`): per spatial layer it carries, low to high,
    /// one per temporal layer, each with the spatial and temporal layers below it (an
    /// SVC frame references lower spatial layers of its picture); a single rung when it
    /// has no layers of either kind.
    fn rungs(&self, layer: usize, out: &mut Vec<Rung>) {
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
    fn preferred_sid(&self, want: Option<(u32, u32)>) -> u8 {
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
    fn set_spatial_sizes(&self, sizes: &[(u16, u16)]) {
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
    fn update_rate(&self, elapsed: Duration) {
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
fn rank_layers<T: std::ops::Deref<Target = LayerState>>(layers: &mut [T]) {
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

/// What the publisher's connection negotiated for a track's media section.
pub(crate) struct SourceNegotiation {
    /// Header extensions, `(id, uri)`.
    pub(crate) exts: Vec<(u16, String)>,
    /// Payload types of the track's codec and of its RED (empty: unknown).
    pub(crate) media_pts: Vec<u8>,
    /// The RFC 2198 RED the publisher may send the track's codec in: `(RED payload type,
    /// payload type of its blocks)`, the latter one of the codec's.
    pub(crate) red: Option<(u8, u8)>,
}

/// A track a participant publishes, with the legs it is forwarded to.
pub(crate) struct PublishedTrack {
    pub(crate) info: TrackInfo,
    pub(crate) codec: RTCRtpCodec,
    /// The publisher connection's negotiated header extensions, `(id, uri)`.
    pub(crate) source_exts: Vec<(u16, String)>,
    /// Payload types that carry this track's codec. Anything else on its SSRCs (RTX
    /// retransmissions and padding, FEC) serves the publisher's own hop and is not
    /// forwarded: legs retransmit from their own buffers. Empty: not known, forward all.
    media_pts: Vec<u8>,
    /// The publisher's RED payload type (0: none) and the payload type of its blocks: RED
    /// packets go to each leg as RED or unwrapped (see [`LegParams::red_payload_type`]).
    red_pt: u8,
    red_block_pt: u8,
    /// The newest sequence number of the track's audio (RED tracks only; `u32::MAX`:
    /// none yet), to see a packet lost before a RED packet that carries it again.
    red_last_seq: AtomicU32,
    remote: Arc<dyn TrackRemote>,
    /// Simulcast layers (or the one stream); read per packet without locking.
    layers: ArcSwap<Vec<Arc<LayerState>>>,
    /// Keyframe detection for layer switches.
    video_codec: VideoCodec,
    /// Read on every packet without locking; replaced whole when a leg comes or goes.
    legs: ArcSwap<Vec<Arc<LegSink>>>,
    legs_edit: Mutex<()>,
    throttles: Mutex<HashMap<u32, Arc<KeyframeThrottle>>>,
    keyframe_interval: Duration,
    stats: Arc<Stats>,
    closed: AtomicBool,
    /// The publisher declared this track's stream a screenshare (`purpose:
    /// m.screenshare` in its stream metadata): the allocator serves it before cameras.
    pub(crate) screenshare: AtomicBool,
    /// Id of the RFC 6464 audio-level extension on the publisher's connection (0: none).
    audio_level_id: u8,
    /// Id of the AV1 dependency descriptor extension on the publisher's connection (0:
    /// none), and the frame templates its descriptors defined.
    dd_id: u8,
    dd: codec::DdTemplates,
    /// Smoothed loudness 0..127 (127 − dBov), as f32 bits; written only by the forwarder.
    loudness: AtomicU32,
    /// When the last audio-level value arrived (ms since `epoch`).
    level_at_ms: AtomicU64,
    epoch: Instant,
}

/// URI of the RFC 6464 client-to-mixer audio level extension.
pub const AUDIO_LEVEL_EXTENSION: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

impl PublishedTrack {
    pub(crate) fn new(
        info: TrackInfo,
        codec: RTCRtpCodec,
        negotiated: SourceNegotiation,
        remote: Arc<dyn TrackRemote>,
        first: Layer,
        keyframe_interval: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        let SourceNegotiation {
            exts: source_exts,
            media_pts,
            red,
        } = negotiated;
        let (red_pt, red_block_pt) = red.unwrap_or((0, 0));
        let audio_level_id = source_exts
            .iter()
            .find(|(id, uri)| uri == AUDIO_LEVEL_EXTENSION && (1..=255).contains(id))
            .map_or(0, |(id, _)| *id as u8);
        let dd_id = source_exts
            .iter()
            .find(|(id, uri)| {
                uri == codec::DEPENDENCY_DESCRIPTOR_EXTENSION && (1..=255).contains(id)
            })
            .map_or(0, |(id, _)| *id as u8);
        let video_codec = if info.kind == MediaKind::Video {
            VideoCodec::from_mime(&codec.mime_type)
        } else {
            VideoCodec::Other
        };
        Self {
            audio_level_id,
            dd_id: if info.kind == MediaKind::Video {
                dd_id
            } else {
                0
            },
            dd: codec::DdTemplates::default(),
            video_codec,
            loudness: AtomicU32::new(0f32.to_bits()),
            level_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            info,
            codec,
            source_exts,
            media_pts,
            red_pt,
            red_block_pt,
            red_last_seq: AtomicU32::new(u32::MAX),
            remote,
            layers: ArcSwap::from_pointee(vec![Arc::new(LayerState::new(first))]),
            legs: ArcSwap::from_pointee(Vec::new()),
            legs_edit: Mutex::new(()),
            throttles: Mutex::new(HashMap::new()),
            keyframe_interval,
            stats,
            closed: AtomicBool::new(false),
            screenshare: AtomicBool::new(false),
        }
    }

    /// Whether `remote` is this track's receiving end.
    pub(crate) fn is_remote(&self, remote: &Arc<dyn TrackRemote>) -> bool {
        std::ptr::eq(
            Arc::as_ptr(&self.remote) as *const (),
            Arc::as_ptr(remote) as *const (),
        )
    }

    pub(crate) fn add_layer(&self, layer: Layer) {
        let _g = self.legs_edit.lock().unwrap();
        let layers = self.layers.load();
        if layers.iter().any(|l| l.ssrc == layer.ssrc) {
            return;
        }
        let mut next: Vec<Arc<LayerState>> = layers.as_ref().clone();
        next.push(Arc::new(LayerState::new(layer)));
        self.layers.store(Arc::new(next));
    }

    /// Whether the track has more than one layer.
    pub(crate) fn is_simulcast(&self) -> bool {
        self.layers.load().len() > 1
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// The layer a subscriber wanting `want` should get, among layers that had a packet
    /// within `live` (all layers when none did).
    pub(crate) fn preferred_layer(
        &self,
        want: Option<(u32, u32)>,
        now: Instant,
        live: Duration,
    ) -> Option<u32> {
        let layers = self.layers.load();
        let now_ms = self.now_ms(now);
        let alive: Vec<&LayerState> = layers
            .iter()
            .map(|l| l.as_ref())
            .filter(|l| {
                let t = l.last_ms.load(Ordering::Relaxed);
                t != 0 && now_ms.saturating_sub(t) <= live.as_millis() as u64
            })
            .collect();
        if alive.is_empty() {
            let all: Vec<&LayerState> = layers.iter().map(|l| l.as_ref()).collect();
            return choose_layer(&all, want);
        }
        choose_layer(&alive, want)
    }

    /// The highest spatial layer of stream `ssrc` a subscriber wanting `want` needs
    /// ([`ALL_SPATIAL`]: all, or not an SVC stream with known sizes).
    pub(crate) fn preferred_sid(&self, ssrc: u32, want: Option<(u32, u32)>) -> u8 {
        self.layers
            .load()
            .iter()
            .find(|l| l.ssrc == ssrc)
            .map_or(ALL_SPATIAL, |l| l.preferred_sid(want))
    }

    /// Layers that had a packet within [`LAYER_STALL`] (all when none did), low to high.
    pub(crate) fn live_ranked(&self, now: Instant) -> Vec<Arc<LayerState>> {
        let layers = self.layers.load();
        let now_ms = self.now_ms(now);
        let mut alive: Vec<Arc<LayerState>> = layers
            .iter()
            .filter(|l| {
                let t = l.last_ms.load(Ordering::Relaxed);
                t != 0 && now_ms.saturating_sub(t) <= LAYER_STALL.as_millis() as u64
            })
            .cloned()
            .collect();
        if alive.is_empty() {
            alive = layers.as_ref().clone();
        }
        rank_layers(&mut alive);
        alive
    }

    /// The live layers (low to high, as [`PublishedTrack::live_ranked`]) and the quality
    /// ladder over them: each layer's temporal steps, lowest first.
    pub(crate) fn ladder(&self, now: Instant) -> (Vec<Arc<LayerState>>, Vec<Rung>) {
        let ranked = self.live_ranked(now);
        let mut rungs = Vec::with_capacity(ranked.len() * TEMPORAL_LAYERS);
        for (i, l) in ranked.iter().enumerate() {
            l.rungs(i, &mut rungs);
        }
        (ranked, rungs)
    }

    /// Where the packet sits in the temporal structure: from its dependency descriptor
    /// when the publisher sends one, else from a VP8 or VP9 payload descriptor.
    #[inline]
    fn temporal(&self, pkt: &rtp::Packet) -> Option<codec::Temporal> {
        if self.dd_id != 0
            && let Some(ext) = pkt.header.extensions.iter().find(|e| e.id == self.dd_id)
        {
            return self.dd.temporal(&ext.payload);
        }
        match self.video_codec {
            VideoCodec::Vp8 => codec::vp8_temporal(&pkt.payload),
            VideoCodec::Vp9 => codec::vp9_temporal(&pkt.payload),
            _ => None,
        }
    }

    /// Updates every layer's smoothed bitrate from the bytes of the last `elapsed`.
    pub(crate) fn update_rates(&self, elapsed: Duration) {
        for l in self.layers.load().iter() {
            l.update_rate(elapsed);
        }
    }

    /// The bitrate of the layer a leg receives (or its first layer), bits/s.
    pub(crate) fn rate_of(&self, ssrc: u32) -> u64 {
        let layers = self.layers.load();
        layers
            .iter()
            .find(|l| l.ssrc == ssrc)
            .or(layers.first())
            .map_or(0, |l| l.rate_bps())
    }

    /// Attaches a leg's sink; false when the track is already gone.
    pub(crate) fn attach(&self, sink: Arc<LegSink>) -> bool {
        let _g = self.legs_edit.lock().unwrap();
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut next: Vec<Arc<LegSink>> = self.legs.load().as_ref().clone();
        if !next.iter().any(|s| Arc::ptr_eq(s, &sink)) {
            next.push(sink);
        }
        self.legs.store(Arc::new(next));
        true
    }

    pub(crate) fn detach(&self, sink: &Arc<LegSink>) {
        let _g = self.legs_edit.lock().unwrap();
        let mut next: Vec<Arc<LegSink>> = self.legs.load().as_ref().clone();
        next.retain(|s| !Arc::ptr_eq(s, sink));
        self.legs.store(Arc::new(next));
    }

    /// Marks the track gone and detaches every leg.
    pub(crate) fn close(&self) {
        let _g = self.legs_edit.lock().unwrap();
        self.closed.store(true, Ordering::Release);
        self.legs.store(Arc::new(Vec::new()));
    }

    /// Fans one packet out to the attached legs. Never waits: a leg whose connection's
    /// queue is full loses the packet (and only that leg), counted as `queue_full`; see
    /// [`LegSink::write`].
    #[inline]
    pub(crate) fn forward(&self, pkt: rtp::Packet, now: Instant) {
        self.stats.record_in(self.info.kind, pkt.payload.len());
        if !self.media_pts.is_empty() && !self.media_pts.contains(&pkt.header.payload_type) {
            self.stats.record_drop(DropReason::NotMedia);
            return;
        }
        if self.audio_level_id != 0 {
            self.observe_level(&pkt, now);
        }
        let red = self.red_pt != 0 && pkt.header.payload_type == self.red_pt;
        if red {
            self.stats.red_received.fetch_add(1, Ordering::Relaxed);
        }
        // A RED packet right after a loss carries the lost packet again (its newest
        // redundant block): legs that take RED unwrapped get it back, built only then.
        let after_loss = self.red_pt != 0 && self.note_red_seq(pkt.header.sequence_number) && red;
        let mut recovered: Option<Option<rtp::Packet>> = None;
        let ssrc = pkt.header.ssrc;
        let layers = self.layers.load();
        let single = layers.len() <= 1;
        let temporal = if self.info.kind == MediaKind::Video {
            self.temporal(&pkt)
        } else {
            None
        };
        if let Some(l) = layers.iter().find(|l| l.ssrc == ssrc) {
            l.last_ms.store(self.now_ms(now), Ordering::Relaxed);
            l.bytes
                .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
            if let Some(t) = temporal {
                l.st_bytes[cell(t.sid, t.tid)]
                    .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
            }
            if self.dd_id != 0
                && let Some(sizes) = self.dd.take_sizes()
            {
                l.set_spatial_sizes(&sizes);
            }
            match self.video_codec {
                VideoCodec::Vp8 => {
                    if let Some((w, h)) = codec::vp8_keyframe_size(&pkt.payload) {
                        l.set_size(w, h);
                    }
                }
                VideoCodec::Vp9 => {
                    if let Some((sizes, n)) = codec::vp9_spatial_sizes(&pkt.payload) {
                        l.set_spatial_sizes(&sizes[..n]);
                    }
                }
                _ => {}
            }
        }
        let legs = self.legs.load();
        // Computed at most once per packet, and only while some leg waits to switch.
        let mut keyframe: Option<bool> = None;
        for sink in legs.iter() {
            if sink.paused.load(Ordering::Relaxed) || sink.step.bw_paused.load(Ordering::Relaxed) {
                continue;
            }
            let selected = sink.selected_ssrc.load(Ordering::Relaxed);
            if selected != ssrc {
                let target = sink.target_ssrc.load(Ordering::Relaxed);
                let switch = if single {
                    // One stream: follow it, whatever its SSRC (a restarted sender).
                    true
                } else if target == ssrc {
                    // A simulcast switch waits for the target layer's keyframe.
                    *keyframe.get_or_insert_with(|| {
                        self.video_codec == VideoCodec::Other
                            || codec::is_keyframe_start(self.video_codec, &pkt.payload)
                    })
                } else {
                    false
                };
                if !switch {
                    continue;
                }
                sink.selected_ssrc.store(ssrc, Ordering::Relaxed);
                sink.target_ssrc.store(ssrc, Ordering::Relaxed);
            }
            let mut mark = false;
            if let Some(t) = temporal {
                let key = || {
                    *keyframe.get_or_insert_with(|| {
                        codec::is_keyframe_start(self.video_codec, &pkt.payload)
                    })
                };
                match sink.keeps(t, key) {
                    Keep::Forward { end_of_picture } => mark = end_of_picture,
                    Keep::Skip { spatial } => {
                        sink.skip(&pkt);
                        let counter = if spatial {
                            &self.stats.spatial_layer_skipped
                        } else {
                            &self.stats.temporal_layer_skipped
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            if after_loss
                && sink.red_unwraps.load(Ordering::Relaxed)
                && let Some(lost) = recovered.get_or_insert_with(|| self.recover_from_red(&pkt))
            {
                sink.write(lost, false, false, now, &self.stats, self.info.kind);
            }
            sink.write(&pkt, red, mark, now, &self.stats, self.info.kind);
        }
    }

    /// Notes the sequence number of an audio packet of a RED track; true when packets
    /// are missing right before it (a loss on the publisher's path, as far as seen).
    #[inline]
    fn note_red_seq(&self, seq: u16) -> bool {
        let last = self.red_last_seq.load(Ordering::Relaxed);
        if last != u32::MAX && (seq.wrapping_sub(last as u16) as i16) <= 0 {
            return false;
        }
        self.red_last_seq.store(seq as u32, Ordering::Relaxed);
        last != u32::MAX && seq.wrapping_sub(last as u16) >= 2
    }

    /// The packet before RED packet `pkt`, rebuilt from its newest redundant block
    /// (sequence number one less, the block's timestamp); None when it has none of the
    /// track's codec.
    #[cold]
    fn recover_from_red(&self, pkt: &rtp::Packet) -> Option<rtp::Packet> {
        let (range, offset, pt) = codec::red_blocks(&pkt.payload)?.newest?;
        if pt != self.red_block_pt || offset == 0 {
            return None;
        }
        let mut lost = pkt.clone();
        lost.header.sequence_number = pkt.header.sequence_number.wrapping_sub(1);
        lost.header.timestamp = pkt.header.timestamp.wrapping_sub(offset);
        lost.header.marker = false;
        lost.payload = pkt.payload.slice(range);
        self.stats.red_recovered.fetch_add(1, Ordering::Relaxed);
        Some(lost)
    }

    /// Updates the smoothed loudness from the packet's audio-level extension. Single
    /// writer (this track's forwarder), so plain load/store suffices.
    #[inline]
    fn observe_level(&self, pkt: &rtp::Packet, now: Instant) {
        let Some(ext) = pkt
            .header
            .extensions
            .iter()
            .find(|e| e.id == self.audio_level_id)
        else {
            return;
        };
        let Some(&b) = ext.payload.first() else {
            return;
        };
        let loudness = 127.0 - (b & 0x7F) as f32;
        let old = f32::from_bits(self.loudness.load(Ordering::Relaxed));
        // ~50 packets/s: alpha 0.2 settles within about 100 ms.
        let smoothed = old + 0.2 * (loudness - old);
        self.loudness.store(smoothed.to_bits(), Ordering::Relaxed);
        self.level_at_ms.store(
            now.saturating_duration_since(self.epoch).as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
    }

    /// Smoothed loudness 0..127 (127 − dBov) at `now`; 0 when no level arrived for
    /// 500 ms (silence, DTX, or a muted track) or the track carries no level.
    pub(crate) fn loudness(&self, now: Instant) -> f32 {
        let at = self.level_at_ms.load(Ordering::Relaxed);
        if at == 0 {
            return 0.0;
        }
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        if now_ms.saturating_sub(at) > 500 {
            return 0.0;
        }
        f32::from_bits(self.loudness.load(Ordering::Relaxed))
    }

    /// Asks the publisher for a keyframe on `ssrc`, at most once per interval per stream.
    pub(crate) async fn request_keyframe(&self, ssrc: u32) {
        if ssrc == 0 {
            return;
        }
        let throttle = self
            .throttles
            .lock()
            .unwrap()
            .entry(ssrc)
            .or_insert_with(|| Arc::new(KeyframeThrottle::new(self.keyframe_interval)))
            .clone();
        if !throttle.try_acquire(Instant::now()) {
            self.stats
                .keyframe_requests_suppressed
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if self.remote.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
            self.stats
                .keyframe_requests_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What writing to a leg needs beyond the packet: the negotiated parameters and the
/// rewriter's continuity state. Only the source's forwarder task writes, so the lock
/// around it is uncontended on the packet path (activation sets `params` once).
struct LegWriter {
    params: Option<Arc<LegParams>>,
    rewriter: LegRewriter,
}

/// The highest temporal layer a leg receives from the packet at `t` on, given what it
/// received (`cur`) and what the allocator wants (`target`): changes only where a
/// picture starts, so no frame is cut; down at once; up only at a base-layer (tid 0)
/// picture, which references no frame of a higher layer, so every frame forwarded after
/// it has its references whatever the layer pattern.
#[inline]
pub(crate) fn follow_temporal_target(cur: u8, target: u8, t: codec::Temporal) -> u8 {
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
pub(crate) fn follow_spatial_target(
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
pub(crate) fn keep(t: codec::Temporal, tid: u8, sid: u8) -> Keep {
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
pub(crate) enum Keep {
    /// Leave it out: a spatial (or else temporal) layer above the leg's.
    Skip { spatial: bool },
    /// Forward it; with the RTP marker set when it ends the leg's picture.
    Forward { end_of_picture: bool },
}

/// The forwarder's handle on one subscriber leg.
pub(crate) struct LegSink {
    /// The leg's send track: the forwarder hands packets to webrtc through it directly.
    local: Arc<TrackLocalStaticRTP>,
    writer: Mutex<LegWriter>,
    join_clock: Arc<super::participant::JoinClock>,
    /// The source SSRC (simulcast layer) this leg receives now; 0 before the first.
    pub(crate) selected_ssrc: AtomicU32,
    /// The layer it should receive; the forwarder switches at its next keyframe.
    pub(crate) target_ssrc: AtomicU32,
    /// Forward nothing (the subscriber's tile is 0x0).
    pub(crate) paused: AtomicBool,
    /// The subscriber's rendered size, `width << 16 | height`; 0: no preference.
    pub(crate) want: AtomicU32,
    /// The bandwidth allocator's state for this leg (see [`alloc::plan_leg`]).
    pub(crate) step: alloc::StepState,
    /// The highest temporal layer the leg should receive ([`ALL_TEMPORAL`]: all); set by
    /// the allocator.
    pub(crate) tid_target: AtomicU8,
    /// The highest temporal layer it receives now: follows the target at picture starts
    /// (downward at once, upward at a base-layer picture). Written only by the forwarder.
    pub(crate) tid_cur: AtomicU8,
    /// The highest spatial layer of an SVC stream the leg should receive
    /// ([`ALL_SPATIAL`]: all); from the subscriber's tile size and the allocator.
    pub(crate) sid_target: AtomicU8,
    /// The highest spatial layer it receives now: follows the target at picture starts
    /// (downward at once, upward at a keyframe). Written only by the forwarder.
    pub(crate) sid_cur: AtomicU8,
    /// The leg takes the publisher's RED unwrapped (set at activation): it also gets
    /// packets lost before a RED packet back from its redundancy.
    pub(crate) red_unwraps: AtomicBool,
}

impl LegSink {
    /// Rewrites a copy of `pkt` for this leg and hands it to webrtc without waiting.
    ///
    /// `write_rtp` locks the track's context (free unless a renegotiation binds it at
    /// that moment) and sends to the subscriber connection's bounded driver channel. The
    /// future is polled once: when the channel is full (the subscriber's connection is
    /// behind) or the context is busy, it is dropped, which cancels the send, and the
    /// packet is lost for this leg only and counted as `queue_full`. The forwarder never
    /// waits on a leg, and no task or queue of Sluice's sits between it and webrtc.
    ///
    /// A `red` packet (the publisher's RFC 2198 RED) goes out as RED, untouched, when the
    /// leg negotiated RED over the same payload type; otherwise only its primary block goes,
    /// as a plain packet of the codec (a slice of the payload, not a copy). With
    /// `end_of_picture`, the packet goes with the RTP marker set (the leg's picture ends
    /// there: higher spatial layers are left out).
    #[inline]
    fn write(
        &self,
        pkt: &rtp::Packet,
        red: bool,
        end_of_picture: bool,
        arrival: Instant,
        stats: &Stats,
        kind: MediaKind,
    ) {
        let mut out = pkt.clone();
        {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let LegWriter { params, rewriter } = &mut *w;
            // Attached only after activation, which sets the parameters first.
            let Some(p) = params.as_deref() else {
                return;
            };
            let unwrap = red && p.red_payload_type == 0;
            if unwrap {
                match codec::red_primary(&out.payload) {
                    Some((at, pt)) if pt == p.red_block_pt => {
                        out.payload = out.payload.slice(at..);
                    }
                    _ => {
                        rewriter.skip(pkt);
                        stats.record_drop(DropReason::RedUnusable);
                        return;
                    }
                }
            }
            if !rewriter.rewrite(&mut out, p, arrival) {
                stats.record_drop(DropReason::Late);
                return;
            }
            if end_of_picture {
                out.header.marker = true;
            }
            if red && !unwrap {
                out.header.payload_type = p.red_payload_type;
            } else if unwrap {
                stats.red_unwrapped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let len = out.payload.len();
        let fut = std::pin::pin!(self.local.write_rtp(out));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(Ok(())) => {
                stats.record_out(kind, len);
                stats.forward_latency.observe(arrival.elapsed());
                if !self.join_clock.done.load(Ordering::Relaxed)
                    && !self.join_clock.done.swap(true, Ordering::Relaxed)
                {
                    stats.join_duration.observe(self.join_clock.at.elapsed());
                }
            }
            std::task::Poll::Ready(Err(_)) => stats.record_drop(DropReason::WriteFailed),
            std::task::Poll::Pending => stats.record_drop(DropReason::QueueFull),
        }
    }

    /// Whether the leg receives a packet at temporal position `t`, moving the leg's
    /// temporal and spatial layers toward their targets first when `t` starts a picture
    /// (see [`follow_temporal_target`] and [`follow_spatial_target`]; `key` tells whether
    /// the packet starts a keyframe). A kept packet that ends the frame of the highest
    /// spatial layer the leg receives, below the stream's top, ends the leg's picture.
    #[inline]
    fn keeps(&self, t: codec::Temporal, key: impl FnOnce() -> bool) -> Keep {
        let cur = self.tid_cur.load(Ordering::Relaxed);
        let next = follow_temporal_target(cur, self.tid_target.load(Ordering::Relaxed), t);
        if next != cur {
            self.tid_cur.store(next, Ordering::Relaxed);
        }
        let scur = self.sid_cur.load(Ordering::Relaxed);
        let snext = follow_spatial_target(scur, self.sid_target.load(Ordering::Relaxed), t, key);
        if snext != scur {
            self.sid_cur.store(snext, Ordering::Relaxed);
        }
        keep(t, next, snext)
    }

    /// Leaves `pkt` out of this leg without a gap in its sequence numbers.
    #[inline]
    fn skip(&self, pkt: &rtp::Packet) {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rewriter
            .skip(pkt);
    }

    /// How the leg receives the publisher's RED; None when the publisher sends none (or
    /// the leg is not active yet).
    pub(crate) fn red_delivery(&self) -> Option<super::RedDelivery> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let p = w.params.as_deref()?;
        match (p.red_block_pt, p.red_payload_type) {
            (0, _) => None,
            (_, 0) => Some(super::RedDelivery::Unwrapped),
            _ => Some(super::RedDelivery::Passthrough),
        }
    }

    /// The highest spatial layer the leg receives now, when it receives fewer than all.
    pub(crate) fn spatial_layer(&self) -> Option<u8> {
        match self.sid_cur.load(Ordering::Relaxed) {
            ALL_SPATIAL => None,
            s => Some(s),
        }
    }

    /// The highest temporal layer the leg receives now, when it receives fewer than all.
    pub(crate) fn temporal_layer(&self) -> Option<u8> {
        match self.tid_cur.load(Ordering::Relaxed) {
            ALL_TEMPORAL => None,
            t => Some(t),
        }
    }

    /// The subscriber's rendered size, if it said.
    pub(crate) fn want(&self) -> Option<(u32, u32)> {
        let w = self.want.load(Ordering::Relaxed);
        (w != 0).then_some((w >> 16, w & 0xFFFF))
    }
}

/// One published track forwarded to one subscriber.
pub(crate) struct Leg {
    pub(crate) source: Arc<PublishedTrack>,
    pub(crate) sink: Arc<LegSink>,
    pub(crate) sender: Arc<dyn RtpSender>,
    pub(crate) ssrc: u32,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicBool,
}

impl Leg {
    /// Adds a send track for `source` to `pc` and starts the leg's writer and RTCP tasks.
    /// Nothing is forwarded until [`Leg::activate`] after the subscriber's answer.
    pub(crate) async fn create(
        pc: &dyn PeerConnection,
        source: Arc<PublishedTrack>,
        stats: Arc<Stats>,
        join_clock: Arc<super::participant::JoinClock>,
    ) -> Result<Arc<Leg>, SfuError> {
        let ssrc = loop {
            let s: u32 = rand::random();
            if s != 0 {
                break s;
            }
        };
        let kind = match source.info.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let track = MediaStreamTrack::new(
            source.info.track.stream_id.clone(),
            source.info.track.track_id.clone(),
            source.info.track.track_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    // Video legs retransmit (and probe, see `probe`) on an RTX stream when
                    // the subscriber negotiates RTX; webrtc clears it otherwise.
                    rtx: (kind == RtpCodecKind::Video).then(|| RTCRtpRtxParameters {
                        ssrc: loop {
                            let s: u32 = rand::random();
                            if s != 0 && s != ssrc {
                                break s;
                            }
                        },
                    }),
                    ..Default::default()
                },
                codec: source.codec.clone(),
                ..Default::default()
            }],
        );
        let local = Arc::new(TrackLocalStaticRTP::new(track));
        // A transceiver of its own, send-only: `add_track` would reuse one of the
        // subscriber's publishing transceivers, which a browser that offered it `sendonly`
        // can never receive on.
        let transceiver = pc
            .add_transceiver_from_track(
                local.clone() as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![source.info.track.stream_id.clone()],
                    send_encodings: vec![],
                }),
            )
            .await?;
        let sender = transceiver
            .sender()
            .await?
            .ok_or_else(|| SfuError::WebRtc("new transceiver without a sender".into()))?;
        let rewriter = {
            let rw = LegRewriter::new(source.codec.clock_rate);
            if source.video_codec == VideoCodec::Vp8 {
                rw.with_vp8_continuity()
            } else {
                rw
            }
        };
        let sink = Arc::new(LegSink {
            local: local.clone(),
            writer: Mutex::new(LegWriter {
                params: None,
                rewriter,
            }),
            join_clock,
            selected_ssrc: AtomicU32::new(0),
            target_ssrc: AtomicU32::new(0),
            paused: AtomicBool::new(false),
            want: AtomicU32::new(0),
            step: alloc::StepState::default(),
            tid_target: AtomicU8::new(ALL_TEMPORAL),
            tid_cur: AtomicU8::new(ALL_TEMPORAL),
            sid_target: AtomicU8::new(ALL_SPATIAL),
            sid_cur: AtomicU8::new(ALL_SPATIAL),
            red_unwraps: AtomicBool::new(false),
        });
        let rtcp = tokio::spawn(rtcp_loop(
            local,
            Arc::downgrade(&source),
            Arc::downgrade(&sink),
            stats,
        ));
        Ok(Arc::new(Leg {
            source,
            sink,
            sender,
            ssrc,
            tasks: Mutex::new(vec![rtcp]),
            active: AtomicBool::new(false),
        }))
    }

    /// Reads what the subscriber negotiated for this leg, starts forwarding, and asks the
    /// publisher for a keyframe so the subscriber can start decoding. Returns false when the
    /// leg cannot carry the source codec (the subscriber did not accept it) or the source
    /// is gone.
    pub(crate) async fn activate(&self, pc: &dyn PeerConnection) -> Result<bool, SfuError> {
        if self.active.load(Ordering::Acquire) {
            return Ok(true);
        }
        let params = self.sender.get_parameters().await?;
        let codecs = &params.rtp_parameters.codecs;
        let want = &self.source.codec;
        let matching: Vec<_> = codecs
            .iter()
            .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&want.mime_type))
            .collect();
        let chosen = matching
            .iter()
            .find(|c| c.rtp_codec.sdp_fmtp_line == want.sdp_fmtp_line)
            .or_else(|| matching.first());
        let Some(codec) = chosen else {
            tracing::warn!(
                track = %self.source.info.track.track_id,
                mime = %want.mime_type,
                "subscriber did not negotiate the publisher's codec; leg stays idle"
            );
            return Ok(false);
        };
        let leg_exts: Vec<(u16, String)> = params
            .rtp_parameters
            .header_extensions
            .iter()
            .map(|e| (e.id, e.uri.clone()))
            .collect();
        let mut mid = None;
        let sender_id = self.sender.id();
        for t in pc.get_transceivers().await {
            if let Ok(Some(s)) = t.sender().await
                && s.id() == sender_id
            {
                mid = t.mid().await.ok().flatten();
                break;
            }
        }
        // The publisher's RED passes through untouched (its payload may be end-to-end
        // encrypted) when the leg negotiated RED whose blocks carry the leg's payload type
        // for the codec, and that is the publisher's too; otherwise the leg receives the
        // primary blocks unwrapped.
        let leg_red = if self.source.red_pt == 0 {
            0
        } else {
            codecs
                .iter()
                .find(|c| {
                    c.rtp_codec
                        .mime_type
                        .eq_ignore_ascii_case(codec::MIME_TYPE_RED)
                        && codec::red_block_payload_type(&c.rtp_codec.sdp_fmtp_line)
                            == Some(codec.payload_type)
                        && codec.payload_type == self.source.red_block_pt
                })
                .map_or(0, |c| c.payload_type)
        };
        if self.source.red_pt != 0 {
            tracing::debug!(
                track = %self.source.info.track.track_id,
                passthrough = leg_red != 0,
                "publisher sends RED: leg takes it {}",
                if leg_red != 0 { "as RED" } else { "unwrapped" }
            );
        }
        self.sink
            .red_unwraps
            .store(self.source.red_pt != 0 && leg_red == 0, Ordering::Relaxed);
        let leg_params = LegParams::new(
            self.ssrc,
            codec.payload_type,
            &self.source.source_exts,
            &leg_exts,
            mid.as_deref(),
        )
        .with_red(leg_red, self.source.red_block_pt);
        self.sink
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .params = Some(Arc::new(leg_params));
        if !self.source.attach(self.sink.clone()) {
            return Ok(false);
        }
        self.active.store(true, Ordering::Release);
        self.retarget(Instant::now()).await;
        Ok(true)
    }

    /// Sets the subscriber's rendered size: 0x0 pauses the leg; otherwise the layer
    /// choice follows it (a switch waits for the new layer's keyframe).
    pub(crate) async fn set_size(&self, width: u32, height: u32) {
        let was_paused = self
            .sink
            .paused
            .swap(width == 0 && height == 0, Ordering::Relaxed);
        if width == 0 && height == 0 {
            return;
        }
        self.sink.want.store(
            (width.min(0xFFFF) << 16) | height.min(0xFFFF),
            Ordering::Relaxed,
        );
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        if was_paused {
            resume(&self.source, &self.sink).await;
        }
        self.retarget(Instant::now()).await;
    }

    /// The RID of the layer the leg receives now, when the track is simulcast.
    pub(crate) fn layer_rid(&self) -> Option<String> {
        let ssrc = self.sink.selected_ssrc.load(Ordering::Relaxed);
        self.source
            .layers
            .load()
            .iter()
            .find(|l| l.ssrc == ssrc)
            .and_then(|l| l.rid.clone())
    }

    /// Re-chooses the layer; requests a keyframe of a new target. True when it changed.
    pub(crate) async fn retarget(&self, now: Instant) -> bool {
        retarget_sink(&self.source, &self.sink, now).await
    }

    /// Stops forwarding and ends the leg's tasks (awaited, so nothing of the leg outlives
    /// this call). The caller removes the sender from the connection.
    pub(crate) async fn stop(&self) {
        self.source.detach(&self.sink);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// A layer without packets for this long is stalled: its subscribers move to a live one.
pub(crate) const LAYER_STALL: Duration = Duration::from_secs(2);

/// Points `sink` at the layer it should receive now (preference among live layers) and
/// asks for that layer's keyframe when the target changed. True when it changed.
pub(crate) async fn retarget_sink(source: &PublishedTrack, sink: &LegSink, now: Instant) -> bool {
    let Some(mut want) = source.preferred_layer(sink.want(), now, LAYER_STALL) else {
        return false;
    };
    // The allocator's cap is a rung of the track's ladder: a layer, and the spatial and
    // temporal layers of it. Below the cap's layer, the leg gets every temporal layer;
    // of an SVC stream, the spatial layers its tile needs.
    let cap = sink.step.cap_rank.load(Ordering::Relaxed);
    let mut tid = ALL_TEMPORAL;
    let mut sid = source.preferred_sid(want, sink.want());
    if cap != u32::MAX {
        let (ranked, rungs) = source.ladder(now);
        if rungs.len() > 1
            && let Some(pos) = ranked.iter().position(|l| l.ssrc == want)
        {
            let r = rungs[(cap as usize).min(rungs.len() - 1)];
            if pos > r.layer || (pos == r.layer && r.sid <= sid) {
                want = ranked[r.layer].ssrc;
                (sid, tid) = (r.sid, r.tid);
            }
        }
    }
    sink.tid_target.store(tid, Ordering::Relaxed);
    sink.sid_target.store(sid, Ordering::Relaxed);
    // More spatial layers start at a keyframe.
    if sid > sink.sid_cur.load(Ordering::Relaxed) && source.info.kind == MediaKind::Video {
        let on = match sink.selected_ssrc.load(Ordering::Relaxed) {
            0 => want,
            s => s,
        };
        source.request_keyframe(on).await;
    }
    let old = sink.target_ssrc.swap(want, Ordering::Relaxed);
    let selected = sink.selected_ssrc.load(Ordering::Relaxed);
    if old == want && selected != 0 {
        return false;
    }
    if !source.is_simulcast() {
        // One stream: the forwarder adopts it at once; ask for a keyframe to start on.
        if selected == 0 && source.info.kind == MediaKind::Video {
            source.request_keyframe(want).await;
        }
        return old != want;
    }
    if want != selected && source.info.kind == MediaKind::Video {
        source.request_keyframe(want).await;
    }
    old != want
}

/// Restarts a paused leg at the next keyframe of its target layer (a simulcast leg
/// forwards nothing until then), and asks the publisher for one.
async fn resume(source: &PublishedTrack, sink: &LegSink) {
    if source.info.kind != MediaKind::Video {
        return;
    }
    if source.is_simulcast() {
        sink.selected_ssrc.store(0, Ordering::Relaxed);
    }
    let target = match sink.target_ssrc.load(Ordering::Relaxed) {
        0 => sink.selected_ssrc.load(Ordering::Relaxed),
        t => t,
    };
    source.request_keyframe(target).await;
}

/// Fits one subscriber's legs into its bandwidth estimate (`budget_bps`, 0 = unknown:
/// no cap): audio first, then video in [`alloc::video_priority`] order (screenshares, then the
/// active speakers' video, loudest first, then by rendered size), each simulcast
/// leg at the highest layer up to its size preference that fits what is left, stepping
/// down first and dropping the track (until it fits again) only when even its lowest
/// layer does not; upward steps one layer at a time, a hold apart (see
/// [`alloc::plan_leg`]).
/// A dropped track also comes back when the estimate is `stale` (no feedback: with
/// nothing sent, a send-side estimate cannot recover on its own).
/// With `can_probe` (the subscriber's connection can send RTX probes, see
/// [`super::probe`]), upward steps are probed for first; the probe rate the legs ask for
/// is returned (bits/s, 0: none) for the connection's prober.
/// Then re-targets every leg (sizes, stalls, caps).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn allocate(
    subscriber: &str,
    legs: &[Arc<Leg>],
    budget_bps: u64,
    stale: bool,
    now: Instant,
    clock_ms: u64,
    speakers: &[super::ParticipantId],
    can_probe: bool,
) -> u64 {
    let mut probe_bps = 0;
    let mut remaining = budget_bps as i64;
    let mut video: Vec<&Arc<Leg>> = Vec::new();
    for leg in legs {
        if leg.source.info.kind == MediaKind::Audio {
            remaining -= leg.source.rate_of(0) as i64;
        } else if !leg.sink.paused.load(Ordering::Relaxed) {
            video.push(leg);
        }
    }
    video.sort_by_key(|l| {
        alloc::video_priority(
            l.source.screenshare.load(Ordering::Relaxed),
            speakers.iter().position(|p| *p == l.source.info.publisher),
            l.sink.want(),
        )
    });
    for leg in video {
        let (source, sink) = (&leg.source, &leg.sink);
        let (ranked, rungs) = source.ladder(now);
        if !source.is_simulcast() && rungs.len() <= 1 {
            // One stream without temporal layers: nothing to choose.
            remaining -= source.rate_of(0) as i64;
            sink.step.cap_rank.store(u32::MAX, Ordering::Relaxed);
            sink.step.bw_paused.store(false, Ordering::Relaxed);
        } else if budget_bps == 0 {
            sink.step.cap_rank.store(u32::MAX, Ordering::Relaxed);
            sink.step.bw_paused.store(false, Ordering::Relaxed);
        } else {
            // The preferred layer at its full frame rate is the top rung the leg wants.
            let pref_layer = source
                .preferred_layer(sink.want(), now, LAYER_STALL)
                .and_then(|p| ranked.iter().position(|l| l.ssrc == p))
                .unwrap_or(ranked.len().saturating_sub(1));
            // Of an SVC stream, the spatial layers the tile needs.
            let pref_sid = ranked
                .get(pref_layer)
                .map_or(ALL_SPATIAL, |l| l.preferred_sid(sink.want()));
            let pref = rungs
                .iter()
                .rposition(|r| r.layer < pref_layer || (r.layer == pref_layer && r.sid <= pref_sid))
                .unwrap_or(0);
            let rates: Vec<u64> = rungs.iter().map(|r| r.rate).collect();
            let layer_of: Vec<usize> = rungs.iter().map(|r| r.layer).collect();
            let target = sink.target_ssrc.load(Ordering::Relaxed);
            let target_tid = sink.tid_target.load(Ordering::Relaxed);
            let target_sid = sink.sid_target.load(Ordering::Relaxed);
            let cur = ranked.iter().position(|l| l.ssrc == target).and_then(|lp| {
                rungs.iter().position(|r| {
                    r.layer == lp
                        && (r.sid > target_sid || (r.sid == target_sid && r.tid >= target_tid))
                })
            });
            let d = alloc::plan_leg(
                &sink.step, &rates, &layer_of, pref, cur, remaining, stale, clock_ms, can_probe,
            );
            probe_bps += d.probe_bps;
            if let Some(passed) = d.probe_passed {
                source.stats.probes[usize::from(!passed)].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    participant = subscriber,
                    track = %source.info.track.track_id,
                    from_rank = ?cur,
                    estimate_bps = budget_bps,
                    passed,
                    "bandwidth: probe for an upward step ended"
                );
            }
            if let Some(hold) = d.forced_down_hold_ms {
                tracing::debug!(
                    participant = subscriber,
                    track = %source.info.track.track_id,
                    from_rank = ?cur,
                    to_rank = ?d.step.rank(),
                    estimate_bps = budget_bps,
                    upgrade_hold_ms = hold,
                    "bandwidth: leg stepped down (none: track dropped)"
                );
            }
            match d.step {
                alloc::Step::Dropped => continue,
                alloc::Step::Resumed => {
                    tracing::debug!(
                        participant = subscriber,
                        track = %source.info.track.track_id,
                        estimate_bps = budget_bps,
                        stale,
                        "bandwidth: dropped track resumed at its lowest layer"
                    );
                    // Resumed at the lowest layer: the next step up waits for the hold.
                    retarget_sink(source, sink, now).await;
                    resume(source, sink).await;
                    remaining -= rates.first().copied().unwrap_or(0) as i64;
                    continue;
                }
                alloc::Step::Layer(fit) => {
                    if let Some(from) = d.stepped_up_from {
                        tracing::debug!(
                            participant = subscriber,
                            track = %source.info.track.track_id,
                            from_rank = from,
                            to_rank = fit,
                            estimate_bps = budget_bps,
                            "bandwidth: leg stepped up"
                        );
                    }
                    remaining -= rates.get(fit).copied().unwrap_or(0) as i64;
                }
            }
        }
        retarget_sink(source, sink, now).await;
    }
    probe_bps
}

/// Per-leg RTCP: relays the subscriber's keyframe requests to the publisher.
async fn rtcp_loop(
    local: Arc<TrackLocalStaticRTP>,
    source: std::sync::Weak<PublishedTrack>,
    sink: std::sync::Weak<LegSink>,
    stats: Arc<Stats>,
) {
    while let Some(evt) = local.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = evt else {
            continue;
        };
        let requests = packets
            .iter()
            .filter(|p| is_keyframe_request(p.as_ref()))
            .count();
        if requests == 0 {
            continue;
        }
        stats
            .keyframe_requests_received
            .fetch_add(requests as u64, Ordering::Relaxed);
        let (Some(source), Some(sink)) = (source.upgrade(), sink.upgrade()) else {
            break;
        };
        // Several requests in one compound packet are one request. Before the first
        // layer is selected, the request is for the target.
        let ssrc = match sink.selected_ssrc.load(Ordering::Relaxed) {
            0 => sink.target_ssrc.load(Ordering::Relaxed),
            s => s,
        };
        source.request_keyframe(ssrc).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
