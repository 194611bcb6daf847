//! RFC 2198 redundant audio (RED): the fmtp line and the block headers.

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
}
