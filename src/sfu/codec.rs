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
}
