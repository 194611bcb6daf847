//! A published track ([`Source`]) and its subscriber legs ([`LegSink`]): the packet path.
//!
//! ```text
//! publisher's transport ──► Source::forward (one caller per source: its forwarder)
//!                             │ for each attached LegSink whose layer matches:
//!                             │   clone, LegRewriter::rewrite, LegOutput::write
//!                             ▼   (never waits; a full queue drops and counts)
//!                           the subscriber's transport
//! ```
//!
//! The transport implements [`LegOutput`] for each leg; nothing here does I/O or waits.

use crate::codec::{self, VideoCodec};
use crate::keyframe::KeyframeThrottle;
use crate::layers::{ALL_SPATIAL, ALL_TEMPORAL, Keep, Layer, LayerState, Rung, cell, keep};
use crate::layers::{
    LAYER_STALL, TEMPORAL_LAYERS, choose_layer, follow_spatial_target, follow_temporal_target,
    rank_layers,
};
use crate::rewrite::{LegParams, LegRewriter};
use crate::stats::{DropReason, MediaKind, Stats};
use crate::{JoinClock, RedDelivery, TrackInfo, alloc};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the publisher's connection negotiated for a track's media section.
#[derive(Debug, Default)]
pub struct SourceNegotiation {
    /// Header extensions, `(id, uri)`.
    pub exts: Vec<(u16, String)>,
    /// Payload types of the track's codec and of its RED (empty: unknown).
    pub media_pts: Vec<u8>,
    /// The RFC 2198 RED the publisher may send the track's codec in: `(RED payload type,
    /// payload type of its blocks)`, the latter one of the codec's.
    pub red: Option<(u8, u8)>,
}

/// A track a participant publishes, with the legs it is forwarded to.
pub struct Source {
    /// What the conference knows of it.
    pub info: TrackInfo,
    /// The RTP clock rate of its codec.
    pub clock_rate: u32,
    /// The publisher connection's negotiated header extensions, `(id, uri)`.
    pub source_exts: Vec<(u16, String)>,
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
    pub screenshare: AtomicBool,
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
    /// What its publisher was last told to send ([`crate::dynacast`]).
    dynacast: Mutex<crate::dynacast::State>,
}

/// URI of the RFC 6464 client-to-mixer audio level extension.
pub const AUDIO_LEVEL_EXTENSION: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

impl Source {
    /// A source as its first layer opens: `clock_rate` of its codec, what the publisher's
    /// connection negotiated for it, and the shortest interval between two keyframe
    /// requests to one of its streams.
    pub fn new(
        info: TrackInfo,
        clock_rate: u32,
        negotiated: SourceNegotiation,
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
            VideoCodec::from_mime(&info.mime_type)
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
            clock_rate,
            source_exts,
            media_pts,
            red_pt,
            red_block_pt,
            red_last_seq: AtomicU32::new(u32::MAX),
            layers: ArcSwap::from_pointee(vec![Arc::new(LayerState::new(first))]),
            legs: ArcSwap::from_pointee(Vec::new()),
            legs_edit: Mutex::new(()),
            throttles: Mutex::new(HashMap::new()),
            keyframe_interval,
            stats,
            closed: AtomicBool::new(false),
            screenshare: AtomicBool::new(false),
            dynacast: Mutex::new(Default::default()),
        }
    }

    /// ([`crate::dynacast::DOWNGRADE_DELAY`]) What this video track's publisher should be told to send
    /// now, if anything: the RIDs of its layers from the lowest up to the highest a leg
    /// needs (`None` for a stream without one), empty for none. None: nothing to tell.
    pub fn dynacast(&self, now: Instant) -> Option<Vec<Option<String>>> {
        if self.info.kind != MediaKind::Video {
            return None;
        }
        let mut layers: Vec<Arc<LayerState>> = self.layers.load().as_ref().clone();
        rank_layers(&mut layers);
        let ranked: Vec<&LayerState> = layers.iter().map(|l| l.as_ref()).collect();
        let legs = self.legs.load();
        let need = crate::dynacast::needed_rank(
            &ranked,
            legs.iter()
                .filter(|l| !l.paused.load(Ordering::Relaxed))
                .map(|l| l.want()),
        );
        let ssrcs: Vec<u32> = ranked.iter().map(|l| l.ssrc).collect();
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let top = self.dynacast.lock().unwrap().decide(&ssrcs, need, now_ms)?;
        Some(match top {
            Some(t) => ranked[..=t].iter().map(|l| l.rid.clone()).collect(),
            None => Vec::new(),
        })
    }

    /// Media packets its publisher sent, by their sequence numbers, and those that
    /// arrived, over all its layers: `(expected, received)`.
    pub fn packet_counts(&self) -> (u64, u64) {
        self.layers.load().iter().fold((0, 0), |(e, r), l| {
            let (le, lr) = l.packet_counts();
            (e + le, r + lr)
        })
    }

    /// Adds a simulcast layer as it opens (once per SSRC).
    pub fn add_layer(&self, layer: Layer) {
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
    pub fn is_simulcast(&self) -> bool {
        self.layers.load().len() > 1
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// The layer a subscriber wanting `want` should get, among layers that had a packet
    /// within `live` (all layers when none did).
    pub fn preferred_layer(
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
    pub fn preferred_sid(&self, ssrc: u32, want: Option<(u32, u32)>) -> u8 {
        self.layers
            .load()
            .iter()
            .find(|l| l.ssrc == ssrc)
            .map_or(ALL_SPATIAL, |l| l.preferred_sid(want))
    }

    /// Layers that had a packet within [`LAYER_STALL`] (all when none did), low to high.
    pub fn live_ranked(&self, now: Instant) -> Vec<Arc<LayerState>> {
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
    pub fn ladder(&self, now: Instant) -> (Vec<Arc<LayerState>>, Vec<Rung>) {
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
    pub fn update_rates(&self, elapsed: Duration) {
        for l in self.layers.load().iter() {
            l.update_rate(elapsed);
        }
    }

    /// The bitrate of the layer a leg receives (or its first layer), bits/s.
    pub fn rate_of(&self, ssrc: u32) -> u64 {
        let layers = self.layers.load();
        layers
            .iter()
            .find(|l| l.ssrc == ssrc)
            .or(layers.first())
            .map_or(0, |l| l.rate_bps())
    }

    /// Attaches a leg's sink; false when the track is already gone.
    pub fn attach(&self, sink: Arc<LegSink>) -> bool {
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

    pub fn detach(&self, sink: &Arc<LegSink>) {
        let _g = self.legs_edit.lock().unwrap();
        let mut next: Vec<Arc<LegSink>> = self.legs.load().as_ref().clone();
        next.retain(|s| !Arc::ptr_eq(s, sink));
        self.legs.store(Arc::new(next));
    }

    /// Marks the track gone and detaches every leg.
    pub fn close(&self) {
        let _g = self.legs_edit.lock().unwrap();
        self.closed.store(true, Ordering::Release);
        self.legs.store(Arc::new(Vec::new()));
    }

    /// Fans one packet out to the attached legs. Never waits: a leg whose connection's
    /// queue is full loses the packet (and only that leg), counted as `queue_full`; see
    /// [`LegSink::write`].
    #[inline]
    pub fn forward(&self, pkt: rtp::Packet, now: Instant) {
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
            l.note_seq(pkt.header.sequence_number);
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
    pub fn loudness(&self, now: Instant) -> f32 {
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

    /// Whether a keyframe request for stream `ssrc` may go to the publisher at `now`: at
    /// most one per interval per stream (the rest are counted as suppressed). The caller
    /// sends it and counts it sent.
    pub fn keyframe_allowed(&self, ssrc: u32, now: Instant) -> bool {
        if ssrc == 0 {
            return false;
        }
        let throttle = self
            .throttles
            .lock()
            .unwrap()
            .entry(ssrc)
            .or_insert_with(|| Arc::new(KeyframeThrottle::new(self.keyframe_interval)))
            .clone();
        if throttle.try_acquire(now) {
            return true;
        }
        self.stats
            .keyframe_requests_suppressed
            .fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The media core's counters this source records into.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The payload format keyframes are found in.
    pub fn video_codec(&self) -> VideoCodec {
        self.video_codec
    }

    /// The publisher's RED payload type (0: none) and the payload type of its blocks.
    pub fn red(&self) -> (u8, u8) {
        (self.red_pt, self.red_block_pt)
    }

    /// The layer with SSRC `ssrc`.
    pub fn layer(&self, ssrc: u32) -> Option<Arc<LayerState>> {
        self.layers.load().iter().find(|l| l.ssrc == ssrc).cloned()
    }
}

/// What writing to a leg needs beyond the packet: the negotiated parameters and the
/// rewriter's continuity state. Only the source's forwarder task writes, so the lock
/// around it is uncontended on the packet path (activation sets `params` once).
struct LegWriter {
    params: Option<Arc<LegParams>>,
    rewriter: LegRewriter,
}

/// The forwarder's handle on one subscriber leg.
pub struct LegSink {
    /// The transport's side of the leg: the forwarder hands it packets directly.
    out: Arc<dyn LegOutput>,
    writer: Mutex<LegWriter>,
    join_clock: Arc<JoinClock>,
    /// The source SSRC (simulcast layer) this leg receives now; 0 before the first.
    pub selected_ssrc: AtomicU32,
    /// The layer it should receive; the forwarder switches at its next keyframe.
    pub target_ssrc: AtomicU32,
    /// Forward nothing (the subscriber's tile is 0x0).
    pub paused: AtomicBool,
    /// The subscriber's rendered size, `width << 16 | height`; 0: no preference.
    pub want: AtomicU32,
    /// The bandwidth allocator's state for this leg (see [`alloc::plan_leg`]).
    pub step: alloc::StepState,
    /// The highest temporal layer the leg should receive ([`ALL_TEMPORAL`]: all); set by
    /// the allocator.
    pub tid_target: AtomicU8,
    /// The highest temporal layer it receives now: follows the target at picture starts
    /// (downward at once, upward at a base-layer picture). Written only by the forwarder.
    pub tid_cur: AtomicU8,
    /// The highest spatial layer of an SVC stream the leg should receive
    /// ([`ALL_SPATIAL`]: all); from the subscriber's tile size and the allocator.
    pub sid_target: AtomicU8,
    /// The highest spatial layer it receives now: follows the target at picture starts
    /// (downward at once, upward at a keyframe). Written only by the forwarder.
    pub sid_cur: AtomicU8,
    /// The leg takes the publisher's RED unwrapped (set at activation): it also gets
    /// packets lost before a RED packet back from its redundancy.
    pub red_unwraps: AtomicBool,
}

/// What became of a packet handed to a leg's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// On its way to the subscriber.
    Sent,
    /// The subscriber connection's queue was full: lost for this leg only.
    QueueFull,
    /// The transport refused it (leg unbound, connection closing).
    Failed,
}

/// The transport's side of one subscriber leg: takes a packet already rewritten for the
/// leg (its SSRC, payload type, extension ids and numbering) and never waits.
pub trait LegOutput: Send + Sync {
    /// Hands `pkt` to the subscriber's connection.
    fn write(&self, pkt: rtp::Packet) -> Written;
}

impl LegSink {
    /// A leg of `source` that writes to `out`; it forwards nothing until
    /// [`LegSink::set_params`] and [`Source::attach`].
    pub fn new(source: &Source, out: Arc<dyn LegOutput>, join_clock: Arc<JoinClock>) -> Self {
        let rewriter = {
            let rw = LegRewriter::new(source.clock_rate);
            if source.video_codec == VideoCodec::Vp8 {
                rw.with_vp8_continuity()
            } else {
                rw
            }
        };
        Self {
            out,
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
        }
    }

    /// Sets what the subscriber negotiated for the leg (once, at activation, before it is
    /// attached): its parameters, and whether it takes the publisher's RED unwrapped.
    pub fn set_params(&self, params: LegParams, red_unwraps: bool) {
        self.red_unwraps.store(red_unwraps, Ordering::Relaxed);
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).params = Some(Arc::new(params));
    }

    /// Rewrites a copy of `pkt` for this leg and hands it to the leg's [`LegOutput`],
    /// which never waits: a packet its queue cannot take is lost for this leg only and
    /// counted as `queue_full`.
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
        match self.out.write(out) {
            Written::Sent => {
                stats.record_out(kind, len);
                stats.forward_latency.observe(arrival.elapsed());
                if !self.join_clock.done.load(Ordering::Relaxed)
                    && !self.join_clock.done.swap(true, Ordering::Relaxed)
                {
                    stats.join_duration.observe(self.join_clock.at.elapsed());
                }
            }
            Written::Failed => stats.record_drop(DropReason::WriteFailed),
            Written::QueueFull => stats.record_drop(DropReason::QueueFull),
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
    pub fn red_delivery(&self) -> Option<RedDelivery> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let p = w.params.as_deref()?;
        match (p.red_block_pt, p.red_payload_type) {
            (0, _) => None,
            (_, 0) => Some(RedDelivery::Unwrapped),
            _ => Some(RedDelivery::Passthrough),
        }
    }

    /// The highest spatial layer the leg receives now, when it receives fewer than all.
    pub fn spatial_layer(&self) -> Option<u8> {
        match self.sid_cur.load(Ordering::Relaxed) {
            ALL_SPATIAL => None,
            s => Some(s),
        }
    }

    /// The highest temporal layer the leg receives now, when it receives fewer than all.
    pub fn temporal_layer(&self) -> Option<u8> {
        match self.tid_cur.load(Ordering::Relaxed) {
            ALL_TEMPORAL => None,
            t => Some(t),
        }
    }

    /// The subscriber's rendered size, if it said.
    pub fn want(&self) -> Option<(u32, u32)> {
        let w = self.want.load(Ordering::Relaxed);
        (w != 0).then_some((w >> 16, w & 0xFFFF))
    }
}
