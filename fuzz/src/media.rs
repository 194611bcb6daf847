//! Targets for the media core's parsers of what publishers send: the payload descriptors
//! of each codec, the AV1 dependency descriptor, RED blocks, and the leg rewriter that
//! edits forwarded packets.

use bytes::Bytes;
use rtc::shared::marshal::Unmarshal;
use sluice_media::codec::{self, DdTemplates, VideoCodec};
use sluice_media::rewrite::{LegParams, LegRewriter};
use std::time::{Duration, Instant};

/// An RTP payload; the first byte picks the codec: VP8, VP9, H.264, AV1 or RED (audio).
pub fn rtp_payload(data: &[u8]) -> bool {
    let Some((&which, p)) = data.split_first() else {
        return false;
    };
    match which % 5 {
        0 => {
            let key = codec::is_keyframe_start(VideoCodec::Vp8, p);
            if let Some((w, h)) = codec::vp8_keyframe_size(p) {
                assert!(w <= 0x3FFF && h <= 0x3FFF, "VP8 sizes are 14 bits: {w}x{h}");
            }
            key | codec::vp8_temporal(p).is_some()
        }
        1 => {
            let key = codec::is_keyframe_start(VideoCodec::Vp9, p);
            let t = codec::vp9_temporal(p);
            if let Some(t) = t {
                assert!(t.tid < 8 && t.sid < 8, "{t:?}");
            }
            if let Some((_, n)) = codec::vp9_spatial_sizes(p) {
                assert!(n <= codec::SPATIAL_LAYERS);
            }
            key | t.is_some()
        }
        2 => codec::is_keyframe_start(VideoCodec::H264, p),
        3 => codec::is_keyframe_start(VideoCodec::Av1, p),
        _ => {
            let blocks = codec::red_blocks(p);
            if let Some(b) = &blocks {
                assert!(b.primary <= p.len(), "primary block past the payload");
                if let Some((r, _, _)) = &b.newest {
                    assert!(r.start <= r.end && r.end <= p.len(), "{r:?} of {}", p.len());
                }
            }
            if let Some((at, _)) = codec::red_primary(p) {
                assert!(at <= p.len());
            }
            let fmtp = std::str::from_utf8(p)
                .ok()
                .and_then(codec::red_block_payload_type);
            blocks.is_some() | fmtp.is_some()
        }
    }
}

/// A run of AV1 dependency descriptors (each `u8` length-prefixed) read in order by one
/// stream's template store, as the forwarder reads them off one publisher's packets.
pub fn av1_dependency_descriptor(data: &[u8]) -> bool {
    let dd = DdTemplates::default();
    let mut read = false;
    for chunk in frames(data) {
        if let Some(t) = dd.temporal(chunk) {
            assert!(t.sid < 8 && t.tid < 16, "{t:?}");
            read = true;
        }
        if let Some(sizes) = dd.take_sizes() {
            assert!(sizes.len() <= codec::SPATIAL_LAYERS);
        }
    }
    read
}

/// Length-prefixed chunks (`u8` length, then that many bytes; the last one may be short).
fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&n, rest) = data.split_first()?;
        let n = (n as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        data = tail;
        Some(chunk)
    })
}

/// A run of RTP packets from one publisher through a VP8 leg's rewriter with RED mapped:
/// each packet after a byte whose low bit says "left out" (else forwarded) and whose
/// upper seven bits are its length in units of 4 bytes.
pub fn rewrite(data: &[u8]) -> bool {
    let source_exts = [
        (1u16, "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned()),
        (2, codec::DEPENDENCY_DESCRIPTOR_EXTENSION.to_owned()),
        (3, "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned()),
    ];
    let leg_exts = [
        (4u16, "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned()),
        (5, codec::DEPENDENCY_DESCRIPTOR_EXTENSION.to_owned()),
        (14, "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned()),
    ];
    let params =
        LegParams::new(0x5100_0001, 96, &source_exts, &leg_exts, Some("3")).with_red(63, 111);
    let mut leg = LegRewriter::new(90_000).with_vp8_continuity();
    let t0 = Instant::now();
    let mut raw = data;
    let mut n = 0u64;
    let mut forwarded = false;
    while let Some((&b, rest)) = raw.split_first() {
        let (skip, len) = (b & 1 == 1, ((b >> 1) as usize * 4).min(rest.len()));
        let (pkt, tail) = rest.split_at(len);
        raw = tail;
        let mut buf = Bytes::copy_from_slice(pkt);
        let Ok(mut p) = rtc::rtp::packet::Packet::unmarshal(&mut buf) else {
            continue;
        };
        n += 1;
        let now = t0 + Duration::from_millis(n * 20);
        if skip {
            leg.skip(&p);
        } else if leg.rewrite(&mut p, &params, now) {
            assert_eq!(
                p.header.ssrc, params.ssrc,
                "a forwarded packet goes out on the leg's ssrc"
            );
            forwarded = true;
        }
    }
    forwarded
}
