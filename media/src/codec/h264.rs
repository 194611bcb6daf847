//! H.264 (RFC 6184): IDR pictures and SPS, single NAL units, STAP-A and FU-A.

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
#[cfg(test)]
mod tests {
    use super::*;

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
}
