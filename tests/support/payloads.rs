//! Synthetic test payloads: the marked payload every test packet carries, RED frames, VP8
//! frames per simulcast layer, and the SVC and AV1 descriptors the SVC tests send.

use super::Received;
use bytes::Bytes;
use std::sync::Arc;
use webrtc::rtp_transceiver::RtpSender;

/// Marker bytes at the start of every test payload.
pub const MAGIC: &[u8; 4] = b"SLCE";

/// Payload of packet `seq` of `sender`'s `kind` stream: a header then a deterministic body.
pub fn payload(sender: u8, kind: u8, seq: u32, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(MAGIC);
    v.push(sender);
    v.push(kind);
    v.extend_from_slice(&seq.to_be_bytes());
    while v.len() < len {
        v.push((v.len() as u32 ^ seq) as u8);
    }
    Bytes::from(v)
}

/// Parses a test payload: (sender, kind, seq), or None when it is not one.
pub fn parse_payload(p: &[u8]) -> Option<(u8, u8, u32)> {
    // Plain test payloads start with the marker; VP8-framed ones (simulcast) carry it
    // after the payload descriptor and frame header.
    let at = (0..=24).find(|i| p.len() >= i + 10 && &p[*i..i + 4] == MAGIC)?;
    let p = &p[at..];
    Some((p[4], p[5], u32::from_be_bytes([p[6], p[7], p[8], p[9]])))
}

/// The payload type test peers that take RED (see [`TestPeer::new_red`]) offer it at.
pub const RED_PT: u8 = 63;

/// How a RED-sending test peer (`red_send`) sends its audio frame `seq`, as a browser's
/// RED does: most frames in RED with the previous frame as the redundant block, every
/// fifth as plain Opus (Chrome's fallback when RED would not fit the packet), and every
/// 25th as RED whose block headers do not fit the payload, as an encrypted RED payload's
/// may not (a 1000-byte redundant block is announced, then a test payload follows the
/// primary header). Frames for which [`red_lost`] holds are lost on the way (not sent;
/// their sequence numbers are skipped). Returns (sent as RED, payload).
pub fn red_frame(sender: u8, seq: u32, block_pt: u8) -> (bool, Bytes) {
    let primary = payload(sender, 0, seq, 120);
    if seq % 5 == 4 {
        return (false, primary);
    }
    let mut v = Vec::with_capacity(256);
    if seq % 25 == 12 {
        v.extend_from_slice(&[0x80 | block_pt, 0, 0x03, 0xE8, block_pt]);
        v.extend_from_slice(&primary);
        return (true, Bytes::from(v));
    }
    let prev = payload(sender, 0, seq.wrapping_sub(1), 120);
    // 20 ms (960 ticks) earlier, 120 bytes long.
    v.extend_from_slice(&[
        0x80 | block_pt,
        (960u32 >> 6) as u8,
        ((960u32 & 0x3F) << 2) as u8,
        120,
    ]);
    v.push(block_pt);
    v.extend_from_slice(&prev);
    v.extend_from_slice(&primary);
    (true, Bytes::from(v))
}

/// The audio frames a RED-sending test peer loses on the way to Sluice (one in 25; the
/// next frame is RED and carries it again).
pub fn red_lost(seq: u32) -> bool {
    seq % 25 == 20
}

/// The 15-bit VP8 picture id of a payload made by [`vp8_payload`].
pub fn vp8_picture_id(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2] & 0x7F, p[3]])
}

/// The video codec of a test peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestVideo {
    /// VP8 (simulcast with RIDs when asked).
    Vp8,
    /// VP9, temporal layers in the payload descriptor.
    Vp9,
    /// AV1, temporal layers in the dependency descriptor extension.
    Av1,
}

/// The AV1 dependency descriptor header extension.
pub const DEPENDENCY_DESCRIPTOR: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// Writes `(value, width)` fields most significant bit first, zero-padded to a byte.
pub fn bit_fields(fields: &[(u32, usize)]) -> Vec<u8> {
    let mut out = vec![];
    let mut n = 0;
    for &(v, width) in fields {
        for i in (0..width).rev() {
            if n % 8 == 0 {
                out.push(0);
            }
            *out.last_mut().unwrap() |= (((v >> i) & 1) as u8) << (7 - n % 8);
            n += 1;
        }
    }
    out
}

/// The dependency descriptor of a frame of [`TestPeer::start_svc_sending`]'s AV1 stream:
/// templates 0 (keyframe, T0), 1 (T0), 2 (T1), 3 and 4 (T2) at offset 0; a keyframe's
/// descriptor carries the structure (its template layers; the rest is zeros, which
/// Sluice does not read).
pub fn svc_dependency_descriptor(first: bool, last: bool, tid: u8, key: bool, frame: u32) -> Bytes {
    let template = if key { 0 } else { [1, 2, 3][tid as usize] };
    let mut f = vec![
        (first as u32, 1),
        (last as u32, 1),
        (template, 6),
        (frame & 0xFFFF, 16),
    ];
    if key && first {
        f.extend([(1, 1), (0, 4), (0, 6), (2, 5)]);
        f.extend([(0, 2), (1, 2), (1, 2), (0, 2), (3, 2)]);
        f.push((0, 32));
    }
    Bytes::from(bit_fields(&f))
}

/// The id the dependency descriptor extension got on `sender` (AV1 test streams need it).
pub(super) async fn dependency_descriptor_id(
    sender: &Arc<dyn RtpSender>,
    video: TestVideo,
) -> Option<u8> {
    let id = sender.get_parameters().await.ok().and_then(|p| {
        p.rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == DEPENDENCY_DESCRIPTOR)
            .map(|e| e.id as u8)
    });
    assert!(
        video != TestVideo::Av1 || id.is_some(),
        "the dependency descriptor was not negotiated"
    );
    id
}

/// An AV1 RTP aggregation header for one OBU element (W=1): Z and Y (continuation) on
/// inner packets, N on the first packet of a new coded video sequence (a keyframe).
pub(super) fn av1_aggregation_header(first: bool, last: bool, new_sequence: bool) -> u8 {
    let mut h = 0x10u8;
    if !first {
        h |= 0x80;
    }
    if !last {
        h |= 0x40;
    }
    if new_sequence {
        h |= 0x08;
    }
    h
}

/// The dependency descriptor of a layer frame of [`TestPeer::start_spatial_sending`]'s AV1
/// stream: template `3·sid + tid` (offset 0); the keyframe picture's first packet carries
/// the structure: nine templates, S0T0 … S2T2, three decode targets (their indications
/// all 0), no frame diffs, no chains, and the layers' render resolutions.
pub fn spatial_dependency_descriptor(
    first: bool,
    last: bool,
    sid: u8,
    tid: u8,
    structure: bool,
    frame: u32,
) -> Bytes {
    let mut f = vec![
        (first as u32, 1),
        (last as u32, 1),
        (3 * sid as u32 + tid as u32, 6),
        (frame & 0xFFFF, 16),
    ];
    if structure {
        f.extend([(1, 1), (0, 4), (0, 6), (2, 5)]);
        // Next temporal layer, twice, then the next spatial layer; the end after S2T2.
        for idc in [1, 1, 2, 1, 1, 2, 1, 1, 3] {
            f.push((idc, 2));
        }
        // Decode target indications (9 × 3 × 2 bits), no fdiffs, no chains (ns(4): 2
        // bits).
        f.extend([(0, 27), (0, 27), (0, 9), (0, 2)]);
        f.push((1, 1));
        for (w, h) in [(320u32, 180u32), (640, 360), (1280, 720)] {
            f.extend([(w - 1, 16), (h - 1, 16)]);
        }
    }
    Bytes::from(bit_fields(&f))
}

/// Temporal layer id of each frame of [`TestPeer::start_svc_sending`]'s stream, by frame
/// number modulo 4 (L1T3).
pub const SVC_PATTERN: [u8; 4] = [0, 2, 1, 2];
/// Packets per frame of that stream, by temporal layer id.
pub const SVC_PACKETS: [usize; 3] = [3, 2, 1];

/// Packets per spatial layer frame of [`TestPeer::start_spatial_sending`] (600 bytes each:
/// about 36, 72 and 144 kbit/s per temporal layer of the pattern's T0).
pub const SPATIAL_PACKETS: [usize; 3] = [1, 2, 4];

/// The payload kind byte of a spatial SVC packet: 40 + 16·key + 4·sid + tid.
pub fn spatial_kind(sid: u8, tid: u8, key: bool) -> u8 {
    40 + 16 * u8::from(key) + 4 * sid + tid
}

/// `(sid, tid, key)` of a packet sent by [`TestPeer::start_spatial_sending`].
pub fn spatial_of(r: &Received) -> (u8, u8, bool) {
    let k = r.kind - 40;
    ((k % 16) / 4, k % 4, k >= 16)
}

/// Simulcast layers the test publisher sends: (rid, width, height).
pub const LAYERS: [(&str, u16, u16); 3] = [("q", 320, 180), ("h", 640, 360), ("f", 1280, 720)];

/// A VP8 payload for layer frame `seq`: descriptor (with a per-layer picture id), frame
/// header (with the size on keyframes), then the test marker (kind byte = 10 + layer).
pub fn vp8_payload(sender: u8, layer: usize, seq: u32, key: bool) -> Bytes {
    // X and S set, a 15-bit picture id that differs per layer (as browsers' do).
    let pic = ((layer as u32 * 10_000 + seq) & 0x7FFF) as u16 | 0x8000;
    let mut v = vec![0x90u8, 0x80];
    v.extend_from_slice(&pic.to_be_bytes());
    if key {
        let (_, w, h) = LAYERS[layer];
        v.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
        v.extend_from_slice(&w.to_le_bytes());
        v.extend_from_slice(&h.to_le_bytes());
    } else {
        v.extend_from_slice(&[0x01, 0x00, 0x00]);
    }
    // Layer sizes give distinct rates at 30 frames/s: about 50, 150 and 270 kbit/s.
    v.extend_from_slice(&payload(
        sender,
        10 + layer as u8,
        seq,
        [200, 600, 1100][layer],
    ));
    Bytes::from(v)
}
