//! VP9 (RFC 9628): keyframes, layer indices and the spatial layer sizes of the
//! scalability structure.

use super::{SPATIAL_LAYERS, Temporal};

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
#[cfg(test)]
mod tests {
    use super::*;

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
