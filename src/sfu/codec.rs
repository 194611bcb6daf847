//! Just enough of each video payload format to find keyframes: simulcast layer switches
//! happen only at the first packet of a keyframe of the target layer. Pure functions over
//! the RTP payload; no allocation.

/// The payload formats Sluice can find keyframes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// H.264 (RFC 6184).
    H264,
    /// AV1 (AOM RTP payload format).
    Av1,
    /// Anything else: no keyframe detection.
    Other,
}

impl VideoCodec {
    /// From a MIME type such as `video/VP8`.
    pub fn from_mime(mime: &str) -> VideoCodec {
        let m = mime.to_ascii_lowercase();
        match m.as_str() {
            "video/vp8" => VideoCodec::Vp8,
            "video/vp9" => VideoCodec::Vp9,
            "video/h264" => VideoCodec::H264,
            "video/av1" => VideoCodec::Av1,
            _ => VideoCodec::Other,
        }
    }
}

/// Length of the VP8 payload descriptor at the start of `p`, or None when truncated.
fn vp8_descriptor_len(p: &[u8]) -> Option<usize> {
    let b0 = *p.first()?;
    let mut len = 1;
    if b0 & 0x80 != 0 {
        // X: extension byte with I, L, T, K flags.
        let x = *p.get(1)?;
        len += 1;
        if x & 0x80 != 0 {
            // I: picture id, 7 or 15 bits.
            let m = *p.get(len)?;
            len += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            len += 1; // T or K: TID/Y/KEYIDX
        }
    }
    (p.len() >= len).then_some(len)
}

/// Whether this VP8 packet starts a keyframe: S=1, partition 0, and the frame's P bit 0.
pub fn vp8_keyframe_start(p: &[u8]) -> bool {
    let Some(b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0 && b0 & 0x0F == 0;
    if !start {
        return false;
    }
    match vp8_descriptor_len(p).and_then(|n| p.get(n)) {
        Some(h) => h & 0x01 == 0,
        None => false,
    }
}

/// Width and height from a VP8 keyframe's first packet (RFC 6386 §9.1).
pub fn vp8_keyframe_size(p: &[u8]) -> Option<(u16, u16)> {
    if !vp8_keyframe_start(p) {
        return None;
    }
    let f = &p[vp8_descriptor_len(p)?..];
    if f.len() < 10 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3FFF;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3FFF;
    Some((w, h))
}

/// Whether this VP9 packet starts a keyframe: B=1 (beginning of frame), P=0 (not
/// inter-predicted), and the first spatial layer.
pub fn vp9_keyframe_start(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let p_bit = b0 & 0x40 != 0;
    let b_bit = b0 & 0x08 != 0;
    if p_bit || !b_bit {
        return false;
    }
    // With layer indices (L), the spatial id must be 0.
    if b0 & 0x20 != 0 {
        let mut i = 1;
        if b0 & 0x80 != 0 {
            // I: picture id
            match p.get(i) {
                Some(m) if m & 0x80 != 0 => i += 2,
                Some(_) => i += 1,
                None => return false,
            }
        }
        match p.get(i) {
            Some(l) => return (l >> 1) & 0x07 == 0,
            None => return false,
        }
    }
    true
}

/// Whether this H.264 packet carries (the start of) an IDR picture or an SPS.
pub fn h264_keyframe_start(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1F {
        5 | 7 => true,
        // STAP-A: aggregated NAL units, each with a 2-byte size.
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if let Some(nal) = p.get(i + 2)
                    && matches!(nal & 0x1F, 5 | 7)
                {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        // FU-A: start bit set and the fragmented NAL is IDR.
        28 => p.get(1).is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1F == 5),
        _ => false,
    }
}

/// Whether this AV1 packet starts a new coded video sequence (the aggregation header's
/// N bit with Z clear).
pub fn av1_keyframe_start(p: &[u8]) -> bool {
    p.first().is_some_and(|h| h & 0x08 != 0 && h & 0x80 == 0)
}

/// Where one packet sits in a stream's temporal scalability structure: what temporal-layer
/// dropping (a leg that gets fewer frames per second than the publisher sends) decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    /// Temporal layer id (0 = base layer; higher layers depend on lower ones only).
    pub tid: u8,
    /// Spatial layer id (0 = base) within the stream (VP9 or AV1 SVC).
    pub sid: u8,
    /// The first packet of a picture (of its base spatial layer): a leg changes the
    /// temporal and spatial layers it receives only here, so it never gets part of a
    /// frame.
    pub picture_start: bool,
    /// The last packet of its layer frame (VP9's E bit, the dependency descriptor's end of
    /// frame): where a leg that receives no higher spatial layer ends the picture (the
    /// RTP marker).
    pub frame_end: bool,
}

/// The temporal layer id of a VP8 packet from its payload descriptor's TID (RFC 7741
/// §4.2: the T bit); None without it (nothing can be dropped).
pub fn vp8_temporal(p: &[u8]) -> Option<Temporal> {
    let b0 = *p.first()?;
    if b0 & 0x80 == 0 {
        return None;
    }
    let x = *p.get(1)?;
    if x & 0x20 == 0 {
        return None;
    }
    let mut i = 2;
    if x & 0x80 != 0 {
        i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    if x & 0x40 != 0 {
        i += 1;
    }
    let t = *p.get(i)?;
    Some(Temporal {
        tid: t >> 6,
        sid: 0,
        // S=1, partition 0: the first packet of a frame.
        picture_start: b0 & 0x10 != 0 && b0 & 0x0F == 0,
        frame_end: false,
    })
}

/// The temporal and spatial ids of a VP9 packet from its payload descriptor's layer
/// indices (RFC 9628 §4.2: the L bit); None without them (nothing can be dropped).
pub fn vp9_temporal(p: &[u8]) -> Option<Temporal> {
    let b0 = *p.first()?;
    if b0 & 0x20 == 0 {
        return None;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        i += if *p.get(1)? & 0x80 != 0 { 2 } else { 1 };
    }
    let l = *p.get(i)?;
    let (tid, sid) = (l >> 5, (l >> 1) & 0x07);
    Some(Temporal {
        tid,
        sid,
        picture_start: b0 & 0x08 != 0 && sid == 0,
        frame_end: b0 & 0x04 != 0,
    })
}

/// Most spatial layers Sluice tells apart per stream.
pub const SPATIAL_LAYERS: usize = 4;

/// The size of each spatial layer from a VP9 payload descriptor's scalability structure
/// (RFC 9628 §4.2.1: the V bit, with Y), which keyframes carry: `(width, height)` per
/// spatial layer, low to high, and how many layers there are (at most
/// [`SPATIAL_LAYERS`] are kept). None when the packet carries no sizes.
pub fn vp9_spatial_sizes(p: &[u8]) -> Option<([(u16, u16); SPATIAL_LAYERS], usize)> {
    let b0 = *p.first()?;
    if b0 & 0x02 == 0 {
        return None;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        i += if *p.get(1)? & 0x80 != 0 { 2 } else { 1 };
    }
    let flexible = b0 & 0x10 != 0;
    if b0 & 0x20 != 0 {
        // Layer indices, and TL0PICIDX in non-flexible mode.
        i += if flexible { 1 } else { 2 };
    }
    if flexible && b0 & 0x40 != 0 {
        // Up to three reference indices, each with N: another follows.
        for _ in 0..3 {
            let d = *p.get(i)?;
            i += 1;
            if d & 0x01 == 0 {
                break;
            }
        }
    }
    let ss = *p.get(i)?;
    if ss & 0x10 == 0 {
        return None;
    }
    let n = (ss >> 5) as usize + 1;
    let mut sizes = [(0u16, 0u16); SPATIAL_LAYERS];
    for (l, size) in sizes.iter_mut().enumerate().take(n) {
        let at = i + 1 + 4 * l;
        let b = p.get(at..at + 4)?;
        *size = (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        );
    }
    Some((sizes, n.min(SPATIAL_LAYERS)))
}

/// The URI of the AV1 dependency descriptor header extension.
pub const DEPENDENCY_DESCRIPTOR_EXTENSION: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// The layers of each frame dependency template, from the last template dependency
/// structure a stream's dependency descriptors carried (AV1 RTP spec, appendix A.4).
/// Written only by the stream's forwarder; atomics so the packet path needs no lock.
#[derive(Debug)]
pub struct DdTemplates {
    /// `template_id_offset` of the structure.
    offset: std::sync::atomic::AtomicU8,
    /// Per template index: `0x80 | sid << 4 | tid`, 0 for no such template.
    layers: [std::sync::atomic::AtomicU8; 64],
    /// Per spatial layer, `width << 16 | height` from the structure's render resolutions
    /// (0: none), and whether they changed since [`DdTemplates::take_sizes`].
    sizes: [std::sync::atomic::AtomicU32; SPATIAL_LAYERS],
    sizes_new: std::sync::atomic::AtomicBool,
}

impl Default for DdTemplates {
    fn default() -> Self {
        Self {
            offset: std::sync::atomic::AtomicU8::new(0),
            layers: std::array::from_fn(|_| std::sync::atomic::AtomicU8::new(0)),
            sizes: Default::default(),
            sizes_new: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Reads bits most significant first, as the dependency descriptor is written.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = (v << 1) | ((byte >> (7 - self.pos % 8)) & 1) as u32;
            self.pos += 1;
        }
        Some(v)
    }

    /// Skips `n` bits; None when fewer are left.
    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos += n;
        (self.pos <= self.data.len() * 8).then_some(())
    }

    /// A non-symmetric unsigned value below `n` (`ns(n)` of the AV1 specifications).
    fn ns(&mut self, n: u32) -> Option<u32> {
        let w = (32 - n.leading_zeros()) as usize;
        if w == 0 {
            return Some(0);
        }
        let m = (1u32 << w) - n;
        let v = self.read(w - 1)?;
        if v < m {
            return Some(v);
        }
        Some((v << 1) - m + self.read(1)?)
    }
}

impl DdTemplates {
    /// The temporal position of the frame a dependency descriptor `dd` (the extension's
    /// payload) describes. A descriptor that carries a template dependency structure (a
    /// keyframe's) replaces the stored templates first. None when the descriptor is
    /// truncated or names a template no structure defined.
    pub fn temporal(&self, dd: &[u8]) -> Option<Temporal> {
        use std::sync::atomic::Ordering::Relaxed;
        let b0 = *dd.first()?;
        if dd.len() < 3 {
            return None;
        }
        let start = b0 & 0x80 != 0;
        let template_id = b0 & 0x3F;
        if dd.len() > 3 && dd[3] & 0x80 != 0 {
            self.read_structure(&dd[3..]);
        }
        let offset = self.offset.load(Relaxed);
        let idx = (template_id as usize + 64 - offset as usize) % 64;
        let l = self.layers[idx].load(Relaxed);
        if l & 0x80 == 0 {
            return None;
        }
        let (tid, sid) = (l & 0x0F, (l >> 4) & 0x07);
        Some(Temporal {
            tid,
            sid,
            picture_start: start && sid == 0,
            frame_end: b0 & 0x40 != 0,
        })
    }

    /// Reads `template_dependency_structure()` up to its template layers; `ext` starts
    /// at the extended descriptor fields (the structure-present flag first).
    fn read_structure(&self, ext: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut b = Bits { data: ext, pos: 0 };
        // Five flags: structure present, active decode targets, custom dtis, fdiffs,
        // chains.
        let Some(_) = b.read(5) else { return };
        let (Some(offset), Some(dt_cnt_minus_one)) = (b.read(6), b.read(5)) else {
            return;
        };
        let mut layers = [0u8; 64];
        let (mut tid, mut sid) = (0u8, 0u8);
        let mut templates = 0;
        for slot in layers.iter_mut() {
            *slot = 0x80 | (sid.min(7) << 4) | tid.min(15);
            templates += 1;
            match b.read(2) {
                Some(1) => tid = tid.saturating_add(1),
                Some(2) => {
                    tid = 0;
                    sid = sid.saturating_add(1);
                }
                Some(3) => break,
                // A truncated structure: keep what the last complete one said.
                None => return,
                _ => {}
            }
        }
        self.offset.store(offset as u8, Relaxed);
        for (to, l) in self.layers.iter().zip(layers) {
            to.store(l, Relaxed);
        }
        // The rest, up to the spatial layers' render resolutions; a structure cut short
        // (or without them) leaves the sizes unknown.
        let sizes = Self::read_resolutions(&mut b, templates, dt_cnt_minus_one as usize + 1, sid);
        for (i, slot) in self.sizes.iter().enumerate() {
            let v = sizes
                .as_ref()
                .and_then(|s| s.get(i).copied())
                .map_or(0, |(w, h)| (w << 16) | h);
            slot.store(v, Relaxed);
        }
        self.sizes_new.store(true, Relaxed);
    }

    /// Reads template dtis, fdiffs and chains past, then the render resolutions: per
    /// spatial layer up to `max_sid`, `(width, height)`.
    fn read_resolutions(
        b: &mut Bits<'_>,
        templates: usize,
        dt_cnt: usize,
        max_sid: u8,
    ) -> Option<Vec<(u32, u32)>> {
        b.skip(templates * dt_cnt * 2)?;
        for _ in 0..templates {
            while b.read(1)? == 1 {
                b.skip(4)?;
            }
        }
        let chains = b.ns(dt_cnt as u32 + 1)?;
        if chains > 0 {
            for _ in 0..dt_cnt {
                b.ns(chains)?;
            }
            b.skip(templates * chains as usize * 4)?;
        }
        if b.read(1)? == 0 {
            return None;
        }
        (0..=max_sid as usize)
            .take(SPATIAL_LAYERS)
            .map(|_| Some(((b.read(16)? + 1).min(0xFFFF), (b.read(16)? + 1).min(0xFFFF))))
            .collect()
    }

    /// The spatial layers' sizes from the last template structure, once after each
    /// structure that announced them: `(width, height)` per layer, low to high.
    pub fn take_sizes(&self) -> Option<Vec<(u16, u16)>> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.sizes_new.load(Relaxed) || !self.sizes_new.swap(false, Relaxed) {
            return None;
        }
        let sizes: Vec<(u16, u16)> = self
            .sizes
            .iter()
            .map(|s| s.load(Relaxed))
            .take_while(|s| *s != 0)
            .map(|s| ((s >> 16) as u16, s as u16))
            .collect();
        (!sizes.is_empty()).then_some(sizes)
    }
}

/// Whether the packet starts a keyframe in `codec`.
pub fn is_keyframe_start(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_keyframe_start(payload),
        VideoCodec::Vp9 => vp9_keyframe_start(payload),
        VideoCodec::H264 => h264_keyframe_start(payload),
        VideoCodec::Av1 => av1_keyframe_start(payload),
        VideoCodec::Other => false,
    }
}

/// MIME type of RFC 2198 redundant audio, as browsers negotiate it for Opus.
pub const MIME_TYPE_RED: &str = "audio/red";

/// The payload type every block of a RED stream carries, from its `a=fmtp` line (`111/111`:
/// the primary and one redundant block, both Opus at 111). None unless the line names one
/// payload type throughout: a RED stream Sluice forwards carries exactly one codec.
pub fn red_block_payload_type(fmtp: &str) -> Option<u8> {
    let mut pts = fmtp.trim().split('/').map(|p| p.trim().parse::<u8>().ok());
    let first = pts.next()??;
    for pt in pts {
        if pt? != first {
            return None;
        }
    }
    (first < 128).then_some(first)
}

/// Where the primary (newest) block of an RFC 2198 RED payload starts, and its payload
/// type. The block headers are 4 bytes for each redundant block (F bit set: payload type,
/// 14-bit timestamp offset, 10-bit length) and 1 byte for the primary (F bit clear); the
/// blocks follow in header order, so the primary is the rest of the payload. None when the
/// headers do not fit the payload or leave an empty primary: not RED Sluice can unwrap
/// (an encrypted payload, a malformed packet).
#[inline]
pub fn red_primary(p: &[u8]) -> Option<(usize, u8)> {
    red_blocks(p).map(|b| (b.primary, b.primary_pt))
}

/// The blocks of an RFC 2198 RED payload Sluice uses: see [`red_blocks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedBlocks {
    /// Where the primary block starts (it runs to the end of the payload).
    pub primary: usize,
    /// The primary block's payload type.
    pub primary_pt: u8,
    /// The newest redundant block, the one just before the primary (the previous packet's
    /// primary): its byte range, how many timestamp ticks before the packet's it is, and
    /// its payload type. None without redundancy.
    pub newest: Option<(std::ops::Range<usize>, u32, u8)>,
}

/// The primary and the newest redundant block of a RED payload (see [`red_primary`]);
/// None when the headers do not fit the payload or leave an empty primary.
#[inline]
pub fn red_blocks(p: &[u8]) -> Option<RedBlocks> {
    let mut at = 0usize;
    let mut redundant = 0usize;
    // The last redundant header: (payload type, timestamp offset, length).
    let mut last: Option<(u8, u32, usize)> = None;
    loop {
        let b = *p.get(at)?;
        if b & 0x80 == 0 {
            let start = at + 1 + redundant;
            if start >= p.len() {
                return None;
            }
            let newest = last
                .filter(|(_, _, len)| *len > 0)
                .map(|(pt, offset, len)| (start - len..start, offset, pt));
            return Some(RedBlocks {
                primary: start,
                primary_pt: b & 0x7F,
                newest,
            });
        }
        let h = p.get(at + 1..at + 4)?;
        let offset = ((h[0] as u32) << 6) | (h[1] as u32 >> 2);
        let len = ((h[1] as usize & 0x03) << 8) | h[2] as usize;
        redundant += len;
        last = Some((b & 0x7F, offset, len));
        at += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 keyframe's first packet: descriptor with picture id, then the frame header.
    fn vp8_key(w: u16, h: u16) -> Vec<u8> {
        let mut p = vec![0x90, 0x80, 0x81, 0x23]; // X, S, PID 0; I; 15-bit picture id
        p.extend_from_slice(&[0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a]); // P=0 keyframe
        p.extend_from_slice(&w.to_le_bytes());
        p.extend_from_slice(&h.to_le_bytes());
        p.extend_from_slice(&[0; 20]);
        p
    }

    #[test]
    fn vp8_keyframes_and_sizes() {
        let k = vp8_key(1280, 720);
        assert!(vp8_keyframe_start(&k));
        assert_eq!(vp8_keyframe_size(&k), Some((1280, 720)));
        // Interframe: P bit set.
        let mut inter = k.clone();
        inter[4] |= 0x01;
        assert!(!vp8_keyframe_start(&inter));
        // Continuation packet (S = 0).
        let mut cont = k.clone();
        cont[0] &= !0x10;
        assert!(!vp8_keyframe_start(&cont));
        // Minimal descriptor without extensions.
        let mut small = vec![
            0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00,
        ];
        small.extend_from_slice(&[0; 4]);
        assert_eq!(vp8_keyframe_size(&small), Some((320, 180)));
        assert!(!vp8_keyframe_start(&[]));
        assert!(!vp8_keyframe_start(&[0x90]));
    }

    #[test]
    fn vp9_keyframes() {
        assert!(vp9_keyframe_start(&[0x08])); // B, not P
        assert!(!vp9_keyframe_start(&[0x48])); // P set
        assert!(!vp9_keyframe_start(&[0x00])); // not beginning of frame
        // L present, spatial id 1: not the base layer.
        assert!(!vp9_keyframe_start(&[0x28, 0x02]));
        assert!(vp9_keyframe_start(&[0x28, 0x00]));
    }

    #[test]
    fn vp8_temporal_layer_ids() {
        // X, S, PID 0; I, L, T; 15-bit picture id; TL0PICIDX; TID 2, Y.
        let p = [0x90, 0xE0, 0x80, 0x05, 7, (2 << 6) | 0x20, 0xAA];
        assert_eq!(
            vp8_temporal(&p),
            Some(Temporal {
                tid: 2,
                sid: 0,
                picture_start: true,
                frame_end: false
            })
        );
        // T without I or L, a continuation packet.
        let p = [0x80, 0x20, 1 << 6, 0xAA];
        assert_eq!(
            vp8_temporal(&p),
            Some(Temporal {
                tid: 1,
                sid: 0,
                picture_start: false,
                frame_end: false
            })
        );
        // No T bit, no X, truncated: nothing to go by.
        assert_eq!(vp8_temporal(&[0x90, 0xC0, 0x80, 0x05, 7, 0xAA]), None);
        assert_eq!(vp8_temporal(&[0x10, 0xAA]), None);
        assert_eq!(vp8_temporal(&[0x90, 0xE0, 0x80, 0x05, 7]), None);
    }

    #[test]
    fn vp9_layer_indices() {
        // I (15-bit picture id), L, B; TID 2, U, SID 0; TL0PICIDX.
        let p = [0xA8, 0x80, 0x05, (2 << 5) | 0x10, 7, 0xAA];
        assert_eq!(
            vp9_temporal(&p),
            Some(Temporal {
                tid: 2,
                sid: 0,
                picture_start: true,
                frame_end: false
            })
        );
        // 7-bit picture id, not the beginning of a frame, spatial layer 1.
        let p = [0xA0, 0x05, (1 << 5) | (1 << 1), 7];
        assert_eq!(
            vp9_temporal(&p),
            Some(Temporal {
                tid: 1,
                sid: 1,
                picture_start: false,
                frame_end: false
            })
        );
        // The beginning of a spatial layer 1 frame does not start the picture; E ends the
        // layer frame.
        assert!(!vp9_temporal(&[0x28, 1 << 1, 0]).unwrap().picture_start);
        assert!(vp9_temporal(&[0x24, 1 << 1, 0]).unwrap().frame_end);
        // No layer indices, or truncated: nothing to go by.
        assert_eq!(vp9_temporal(&[0x88, 0x80, 0x05]), None);
        assert_eq!(vp9_temporal(&[0xA8, 0x80]), None);
        assert_eq!(vp9_temporal(&[]), None);
    }

    /// Writes bits most significant first.
    fn bits(fields: &[(u32, usize)]) -> Vec<u8> {
        let mut out = vec![];
        let mut n = 0;
        for &(v, width) in fields {
            for i in (0..width).rev() {
                if n % 8 == 0 {
                    out.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                *out.last_mut().unwrap() |= bit << (7 - n % 8);
                n += 1;
            }
        }
        out
    }

    /// A dependency descriptor: the mandatory fields, then (with `offset`) an L1T3
    /// template structure whose templates are T0, T0, T1, T2, T2.
    fn dd(start: bool, template: u32, frame: u32, offset: Option<u32>) -> Vec<u8> {
        let mut f = vec![(start as u32, 1), (1, 1), (template, 6), (frame, 16)];
        if let Some(off) = offset {
            f.extend([(1, 1), (0, 4), (off, 6), (2, 5)]);
            f.extend([(0, 2), (1, 2), (1, 2), (0, 2), (3, 2)]);
            f.push((0, 24)); // the rest of the structure, not read
        }
        bits(&f)
    }

    #[test]
    fn av1_dependency_descriptor_layers() {
        let t = DdTemplates::default();
        // No structure seen yet: unknown.
        assert_eq!(t.temporal(&dd(true, 3, 1, None)), None);
        // A keyframe's descriptor brings the structure (offset 62: ids wrap past 63).
        let key = t.temporal(&dd(true, 62, 1, Some(62))).unwrap();
        assert_eq!((key.tid, key.sid, key.picture_start), (0, 0, true));
        let tids: Vec<u8> = [62, 63, 0, 1, 2]
            .iter()
            .map(|id| t.temporal(&dd(true, *id, 2, None)).unwrap().tid)
            .collect();
        assert_eq!(tids, vec![0, 0, 1, 2, 2]);
        assert!(!t.temporal(&dd(false, 1, 3, None)).unwrap().picture_start);
        // An id outside the structure, and a truncated descriptor.
        assert_eq!(t.temporal(&dd(true, 10, 4, None)), None);
        assert_eq!(t.temporal(&[0x80, 0]), None);
        // A truncated structure leaves the last complete one in place.
        let mut cut = dd(true, 62, 5, Some(0));
        cut.truncate(5);
        t.temporal(&cut);
        assert_eq!(t.temporal(&dd(true, 1, 6, None)).unwrap().tid, 2);
    }

    #[test]
    fn av1_dependency_descriptor_spatial_layers_and_their_sizes() {
        let t = DdTemplates::default();
        // L3T1 with two decode targets: templates S0, S1, S2; dtis 3×2×2 bits; fdiffs
        // (one on the second template); two chains: ns(3) = 2 is `1` + `1`, each decode
        // target protected by ns(2) (1 bit), 3×2 chain fdiffs of 4 bits; resolutions.
        let mut f = vec![(1, 1), (1, 1), (1, 6), (9, 16)];
        f.extend([(1, 1), (0, 4), (0, 6), (1, 5)]);
        f.extend([(2, 2), (2, 2), (3, 2)]);
        f.push((0, 12));
        f.extend([(0, 1), (1, 1), (3, 4), (0, 1), (0, 1)]);
        f.extend([(3, 2), (0, 1), (1, 1), (0, 24)]);
        f.push((1, 1));
        for (w, h) in [(320u32, 180u32), (640, 360), (1280, 720)] {
            f.extend([(w - 1, 16), (h - 1, 16)]);
        }
        let d = bits(&f);
        let at = t.temporal(&d).unwrap();
        assert_eq!((at.sid, at.tid, at.frame_end), (1, 0, true));
        assert_eq!(
            t.take_sizes(),
            Some(vec![(320, 180), (640, 360), (1280, 720)])
        );
        // Once per structure.
        assert_eq!(t.take_sizes(), None);
        // A structure without resolutions (the L1T3 one): sizes unknown, and said once.
        t.temporal(&dd(true, 0, 10, Some(0)));
        assert_eq!(t.take_sizes(), None);
        // ns(n): values below n, short codes first.
        for (n, code, want) in [
            (3u32, vec![(0, 1)], 0),
            (3, vec![(1, 1), (0, 1)], 1),
            (3, vec![(1, 1), (1, 1)], 2),
            (5, vec![(2, 2)], 2),
            (5, vec![(3, 2), (0, 1)], 3),
            (5, vec![(3, 2), (1, 1)], 4),
        ] {
            let data = bits(&code);
            let mut b = Bits {
                data: &data,
                pos: 0,
            };
            assert_eq!(b.ns(n), Some(want), "ns({n}) of {code:?}");
        }
    }

    #[test]
    fn h264_keyframes() {
        assert!(h264_keyframe_start(&[0x65, 0x88])); // IDR
        assert!(h264_keyframe_start(&[0x67, 0x42])); // SPS
        assert!(!h264_keyframe_start(&[0x41, 0x9a])); // non-IDR slice
        assert!(h264_keyframe_start(&[0x7c, 0x85])); // FU-A start of IDR
        assert!(!h264_keyframe_start(&[0x7c, 0x05])); // FU-A continuation
        assert!(h264_keyframe_start(&[
            0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68
        ]));
        assert!(!h264_keyframe_start(&[0x78, 0x00, 0x02, 0x41, 0x42]));
    }

    #[test]
    fn av1_new_sequence() {
        assert!(av1_keyframe_start(&[0x18]));
        assert!(!av1_keyframe_start(&[0x10]));
        assert!(!av1_keyframe_start(&[0x88]));
    }

    /// A RED payload: one 4-byte header per redundant block, then the primary's 1-byte
    /// header, then the blocks.
    fn red(pt: u8, redundant: &[&[u8]], primary: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        for (i, b) in redundant.iter().enumerate() {
            let offset = 960 * (redundant.len() - i) as u32;
            p.push(0x80 | pt);
            p.push((offset >> 6) as u8);
            p.push(((offset as u8 & 0x3F) << 2) | (b.len() >> 8) as u8);
            p.push(b.len() as u8);
        }
        p.push(pt);
        for b in redundant {
            p.extend_from_slice(b);
        }
        p.extend_from_slice(primary);
        p
    }

    #[test]
    fn red_primary_finds_the_newest_block() {
        let p = red(111, &[&[1; 300], &[2; 40]], &[3; 70]);
        assert_eq!(red_primary(&p), Some((4 + 4 + 1 + 340, 111)));
        assert!(p[349..].iter().all(|&b| b == 3));
        // No redundancy: a one-byte header, then the primary.
        assert_eq!(red_primary(&red(111, &[], &[9; 5])), Some((1, 111)));
        // A redundant block longer than 255 bytes uses the length's upper bits.
        let p = red(100, &[&[1; 700]], &[3; 2]);
        assert_eq!(red_primary(&p), Some((5 + 700, 100)));
    }

    #[test]
    fn red_blocks_finds_the_newest_redundant_block() {
        let p = red(111, &[&[1; 300], &[2; 40]], &[3; 70]);
        let b = red_blocks(&p).unwrap();
        assert_eq!(b.primary, 349);
        // Blocks 960 ticks apart: the newest redundant one is 960 ticks back.
        assert_eq!(b.newest, Some((309..349, 960, 111)));
        assert!(p[309..349].iter().all(|&x| x == 2));
        assert_eq!(red_blocks(&red(111, &[], &[9; 5])).unwrap().newest, None);
        let p = red(100, &[&[1; 700]], &[3; 2]);
        assert_eq!(red_blocks(&p).unwrap().newest, Some((5..705, 960, 100)));
    }

    #[test]
    fn red_primary_refuses_what_is_not_red_it_can_unwrap() {
        let p = red(111, &[&[1; 30]], &[3; 10]);
        // Block lengths beyond the payload (a truncated packet, or ciphertext).
        assert_eq!(red_primary(&p[..4 + 1 + 30]), None, "empty primary");
        assert_eq!(red_primary(&p[..20]), None);
        assert_eq!(red_primary(&[0x80 | 111, 0, 0]), None, "header cut short");
        assert_eq!(red_primary(&[]), None);
        assert_eq!(red_primary(&[0xFF; 64]), None, "headers only");
    }

    #[test]
    fn red_block_payload_type_takes_one_codec_only() {
        assert_eq!(red_block_payload_type("111/111"), Some(111));
        assert_eq!(red_block_payload_type(" 109/109/109 "), Some(109));
        assert_eq!(red_block_payload_type("111"), Some(111));
        assert_eq!(red_block_payload_type("111/0"), None, "two codecs");
        assert_eq!(red_block_payload_type(""), None);
        assert_eq!(red_block_payload_type("minptime=10"), None);
        assert_eq!(red_block_payload_type("200/200"), None);
    }

    #[test]
    fn vp9_spatial_sizes_from_the_scalability_structure() {
        // I (15-bit), L, B, V; TID 0, SID 0; TL0PICIDX; SS: N_S = 2 (three layers), Y.
        let mut p = vec![0xAA, 0x80, 0x05, 0x00, 7, (2 << 5) | 0x10];
        for (w, h) in [(320u16, 180u16), (640, 360), (1280, 720)] {
            p.extend_from_slice(&w.to_be_bytes());
            p.extend_from_slice(&h.to_be_bytes());
        }
        p.push(0xAA);
        let (sizes, n) = vp9_spatial_sizes(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(&sizes[..3], &[(320, 180), (640, 360), (1280, 720)]);
        // Flexible mode with two reference indices (N on the first) before the SS.
        let mut f = vec![0xFA, 0x05, 0x00, 0x03, 0x04, 0x10];
        f.extend_from_slice(&[0x01, 0x40, 0x00, 0xB4]);
        assert_eq!(
            vp9_spatial_sizes(&f).unwrap(),
            ([(320, 180), (0, 0), (0, 0), (0, 0)], 1)
        );
        // No V bit, SS without sizes (Y = 0), or cut short: no sizes.
        assert_eq!(vp9_spatial_sizes(&[0xA8, 0x80, 0x05, 0x00, 7]), None);
        assert_eq!(vp9_spatial_sizes(&[0xAA, 0x80, 0x05, 0x00, 7, 0x40]), None);
        assert_eq!(vp9_spatial_sizes(&p[..12]), None);
    }
}
