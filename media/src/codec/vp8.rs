//! VP8 (RFC 7741): keyframes, their sizes, and temporal layer ids from the payload
//! descriptor.

use super::Temporal;

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
#[cfg(test)]
mod tests {
    use super::*;

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
}
