//! AV1 (the AV1 RTP specification): the aggregation header and the dependency
//! descriptor header extension (frame templates, layers, render sizes).

use super::{SPATIAL_LAYERS, Temporal};

/// Whether this AV1 packet starts a new coded video sequence (the aggregation header's
/// N bit with Z clear).
pub fn av1_keyframe_start(p: &[u8]) -> bool {
    p.first().is_some_and(|h| h & 0x08 != 0 && h & 0x80 == 0)
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn av1_new_sequence() {
        assert!(av1_keyframe_start(&[0x18]));
        assert!(!av1_keyframe_start(&[0x10]));
        assert!(!av1_keyframe_start(&[0x88]));
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
}
