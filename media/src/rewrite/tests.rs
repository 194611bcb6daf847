//! Tests of the per-leg rewriter.

use super::*;
use std::time::Duration;

const AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const ORIENTATION: &str = "urn:3gpp:video-orientation";

fn packet(ssrc: u32, seq: u16, ts: u32, exts: &[(u8, &'static [u8])]) -> rtp::Packet {
    let mut p = rtp::Packet::default();
    p.header.version = 2;
    p.header.ssrc = ssrc;
    p.header.payload_type = 120;
    p.header.sequence_number = seq;
    p.header.timestamp = ts;
    p.header.extension = !exts.is_empty();
    p.header.extension_profile = PROFILE_ONE_BYTE;
    p.header.extensions = exts
        .iter()
        .map(|(id, v)| rtp::header::Extension {
            id: *id,
            payload: Bytes::from_static(v),
        })
        .collect();
    p.payload = Bytes::from_static(b"payload");
    p
}

fn params() -> LegParams {
    let source = vec![
        (1, MID_EXTENSION.to_owned()),
        (3, AUDIO_LEVEL.to_owned()),
        (
            4,
            "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01".to_owned(),
        ),
        (5, ORIENTATION.to_owned()),
    ];
    let leg = vec![
        (9, MID_EXTENSION.to_owned()),
        (7, AUDIO_LEVEL.to_owned()),
        (
            2,
            "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01".to_owned(),
        ),
    ];
    LegParams::new(0xAAAA, 96, &source, &leg, Some("4"))
}

#[test]
fn rewrites_ssrc_pt_and_remaps_or_strips_extensions() {
    let p = params();
    let mut rw = LegRewriter::new(48_000);
    let mut pkt = packet(
        0x1111,
        10,
        1000,
        &[(1, b"0"), (3, b"\x85"), (4, b"\x00\x01"), (5, b"\x01")],
    );
    assert!(rw.rewrite(&mut pkt, &p, Instant::now()));
    assert_eq!(pkt.header.ssrc, 0xAAAA);
    assert_eq!(pkt.header.payload_type, 96);
    let ids: Vec<(u8, Bytes)> = pkt
        .header
        .extensions
        .iter()
        .map(|e| (e.id, e.payload.clone()))
        .collect();
    // audio level remapped 3 -> 7; mid, transport-cc and the leg-unknown orientation
    // stripped; the leg's own mid appended.
    assert_eq!(
        ids,
        vec![
            (7, Bytes::from_static(b"\x85")),
            (9, Bytes::from_static(b"4"))
        ]
    );
    assert!(pkt.header.extension);
    assert_eq!(pkt.header.extension_profile, PROFILE_ONE_BYTE);
    assert_eq!(pkt.payload, Bytes::from_static(b"payload"));
}

#[test]
fn rewritten_packet_marshals_to_its_announced_size() {
    use rtp::packet::Packet;
    use shared::marshal::{Marshal, MarshalSize, Unmarshal};
    // A browser's packet whose extension block ends in padding (parsed into
    // `extensions_padding`): after rewriting, the size announced and the bytes written
    // must agree, or the SRTP writer refuses the packet.
    let mut wire: Vec<u8> = vec![0x90, 96, 0, 10, 0, 0, 0x03, 0xe8, 0, 0, 0x11, 0x11];
    // One-byte extensions mid "0", audio level, transport-cc; 3 words, 5 bytes padding.
    wire.extend([
        0xBE, 0xDE, 0, 3, 0x10, b'0', 0x30, 0x85, 0x41, 0, 1, 0, 0, 0, 0, 0,
    ]);
    wire.extend(b"payload");
    let mut parsed = Packet::unmarshal(&mut Bytes::from(wire)).unwrap();
    assert!(parsed.header.extensions_padding > 0);
    let mut rw = LegRewriter::new(48_000);
    assert!(rw.rewrite(&mut parsed, &params(), Instant::now()));
    let out = parsed.marshal().unwrap();
    assert_eq!(out.len(), parsed.marshal_size());
    let back = Packet::unmarshal(&mut out.clone()).unwrap();
    assert_eq!(back.header.extensions.len(), 2);
    assert_eq!(back.payload, Bytes::from_static(b"payload"));
}

#[test]
fn an_extension_added_after_rewriting_keeps_the_size_consistent() {
    use shared::marshal::{Marshal, MarshalSize};
    // Extension blocks of every length modulo 4, then a transport-wide sequence number
    // added the way webrtc's TWCC sender adds it.
    let level = "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned();
    for payload in [
        &b"\x85"[..],
        b"\x85\x01",
        b"\x85\x01\x02",
        b"\x85\x01\x02\x03",
    ] {
        let p = LegParams::new(1, 96, &[(3, level.clone())], &[(3, level.clone())], None);
        let mut rw = LegRewriter::new(90_000);
        let mut pkt = packet(5, 1, 1, &[(3, payload)]);
        assert!(rw.rewrite(&mut pkt, &p, Instant::now()));
        pkt.header
            .set_extension(5, Bytes::from_static(&[0, 7]))
            .unwrap();
        let out = pkt.marshal().unwrap();
        assert_eq!(
            out.len(),
            pkt.marshal_size(),
            "extension payload of {} bytes",
            payload.len()
        );
    }
}

#[test]
fn no_extensions_left_clears_the_flag() {
    let p = LegParams::new(1, 96, &[], &[], None);
    let mut rw = LegRewriter::new(90_000);
    let mut pkt = packet(5, 1, 1, &[(3, b"\x85")]);
    assert!(rw.rewrite(&mut pkt, &p, Instant::now()));
    assert!(pkt.header.extensions.is_empty());
    assert!(!pkt.header.extension);
}

#[test]
fn same_source_keeps_numbering_and_survives_wraparound() {
    let p = params();
    let mut rw = LegRewriter::new(90_000);
    let t = Instant::now();
    let mut out = vec![];
    for (i, seq) in [65_534u16, 65_535, 0, 1].into_iter().enumerate() {
        let mut pkt = packet(0x1111, seq, 3000 * i as u32, &[]);
        assert!(rw.rewrite(&mut pkt, &p, t));
        out.push(pkt.header.sequence_number);
    }
    assert_eq!(out, vec![65_534, 65_535, 0, 1]);
}

#[test]
fn source_switch_continues_sequence_and_advances_timestamp() {
    let p = params();
    let mut rw = LegRewriter::new(90_000);
    let t0 = Instant::now();
    let mut a = packet(0x1111, 500, 90_000, &[]);
    assert!(rw.rewrite(&mut a, &p, t0));
    let mut a2 = packet(0x1111, 501, 93_000, &[]);
    assert!(rw.rewrite(&mut a2, &p, t0));
    // New source with unrelated numbering, 100 ms later.
    let mut b = packet(0x2222, 40_000, 7, &[]);
    assert!(rw.rewrite(&mut b, &p, t0 + Duration::from_millis(100)));
    assert_eq!(b.header.sequence_number, 502);
    assert_eq!(b.header.timestamp, 93_000 + 9_000);
    let mut b2 = packet(0x2222, 40_001, 3007, &[]);
    assert!(rw.rewrite(&mut b2, &p, t0 + Duration::from_millis(133)));
    assert_eq!(b2.header.sequence_number, 503);
    assert_eq!(b2.header.timestamp, 93_000 + 9_000 + 3_000);
}

#[test]
fn reordered_packet_keeps_its_place() {
    let p = params();
    let mut rw = LegRewriter::new(90_000);
    let t = Instant::now();
    for seq in [10u16, 12, 11, 13] {
        let mut pkt = packet(0x1111, seq, seq as u32, &[]);
        assert!(rw.rewrite(&mut pkt, &p, t));
        assert_eq!(pkt.header.sequence_number, seq);
    }
    // A switch after the reordering continues from the highest, not the last seen.
    let mut pkt = packet(0x3333, 1, 1, &[]);
    assert!(rw.rewrite(&mut pkt, &p, t));
    assert_eq!(pkt.header.sequence_number, 14);
}

/// Rewrites source packets `seqs` of SSRC 1 in that order, skipping those in `left_out`;
/// the leg's numbers of the packets sent (None: could not be placed).
fn leg_numbers(rw: &mut LegRewriter, seqs: &[u16], left_out: &[u16]) -> Vec<Option<u16>> {
    let p = params();
    let t = Instant::now();
    let mut out = vec![];
    for &seq in seqs {
        let mut pkt = packet(1, seq, seq as u32, &[]);
        if left_out.contains(&seq) {
            rw.skip(&pkt);
        } else {
            out.push(
                rw.rewrite(&mut pkt, &p, t)
                    .then_some(pkt.header.sequence_number),
            );
        }
    }
    out
}

#[test]
fn left_out_packets_leave_no_gap() {
    let mut rw = LegRewriter::new(90_000);
    // 0, 2 and 3 belong to frames of a temporal layer the leg does not receive; the
    // numbers wrap on the way.
    let seqs = [65_534, 65_535, 0, 1, 2, 3, 4];
    let out = leg_numbers(&mut rw, &seqs, &[0, 2, 3]);
    assert_eq!(out, vec![Some(65_534), Some(65_535), Some(0), Some(1)]);
    // A source switch after left-out packets continues from the last number sent.
    let mut pkt = packet(9, 500, 1, &[]);
    assert!(rw.rewrite(&mut pkt, &params(), Instant::now()));
    assert_eq!(pkt.header.sequence_number, 2);
}

#[test]
fn a_late_packet_gets_the_number_it_would_have_had() {
    let mut rw = LegRewriter::new(90_000);
    // 11 arrives after 12 and 13; 12 was left out before 11 arrived.
    let out = leg_numbers(&mut rw, &[10, 12, 13, 11, 14], &[12]);
    assert_eq!(out, vec![Some(10), Some(12), Some(11), Some(13)]);
    // A late packet of a left-out frame changes nothing: its number is a gap.
    let mut rw = LegRewriter::new(90_000);
    let out = leg_numbers(&mut rw, &[20, 22, 21, 23], &[21]);
    assert_eq!(out, vec![Some(20), Some(22), Some(23)]);
}

#[test]
fn a_packet_older_than_the_left_out_window_is_not_placed() {
    let mut rw = LegRewriter::new(90_000);
    // 1 is missing; 2..=41 are left out (more than the window); then 1 arrives.
    let mut seqs: Vec<u16> = vec![0];
    seqs.extend(2..=41);
    seqs.push(42);
    seqs.push(1);
    let left: Vec<u16> = (2..=41).collect();
    let out = leg_numbers(&mut rw, &seqs, &left);
    assert_eq!(out, vec![Some(0), Some(2), None]);
}

fn vp8(pic: u16, tl0: u8) -> Bytes {
    // X, S; I and L present; 15-bit picture id; TL0PICIDX; then a frame byte.
    let v = (pic & 0x7FFF) | 0x8000;
    let b = v.to_be_bytes();
    Bytes::from(vec![0x90, 0xC0, b[0], b[1], tl0, 0x01, 0xAA])
}

#[test]
fn vp8_picture_ids_continue_across_a_switch() {
    let p = params();
    let mut rw = LegRewriter::new(90_000).with_vp8_continuity();
    let t = Instant::now();
    let mut out = vec![];
    for (ssrc, pic, tl0) in [(1, 100, 7), (1, 101, 8), (2, 5000, 200), (2, 5001, 201)] {
        let mut pkt = packet(ssrc, pic, pic as u32, &[]);
        pkt.payload = vp8(pic, tl0);
        assert!(rw.rewrite(&mut pkt, &p, t));
        let ids = vp8_ids(&pkt.payload);
        out.push((
            read_pic(&pkt.payload, ids.pic.unwrap()),
            pkt.payload[ids.tl0.unwrap()],
        ));
        assert_eq!(*pkt.payload.last().unwrap(), 0xAA, "frame data untouched");
    }
    assert_eq!(out, vec![(100, 7), (101, 8), (102, 9), (103, 10)]);
}

#[test]
fn vp8_picture_ids_close_up_over_left_out_pictures() {
    let p = params();
    let mut rw = LegRewriter::new(90_000).with_vp8_continuity();
    let t = Instant::now();
    // (seq, picture id, first packet of its picture, left out). Picture 101 is two
    // packets; 104 is left out before the late 103 arrives.
    let plan = [
        (1u16, 100u16, true, false),
        (2, 101, true, true),
        (3, 101, false, true),
        (4, 102, true, false),
        (6, 104, true, true),
        (5, 103, true, false),
        (7, 105, true, false),
    ];
    let mut out = vec![];
    for (seq, pic, start, left_out) in plan {
        let mut pkt = packet(1, seq, seq as u32, &[]);
        let mut payload = vp8(pic, 3).to_vec();
        if !start {
            payload[0] &= !0x10;
        }
        pkt.payload = Bytes::from(payload);
        if left_out {
            rw.skip(&pkt);
            continue;
        }
        assert!(rw.rewrite(&mut pkt, &p, t));
        let ids = vp8_ids(&pkt.payload);
        out.push((
            pkt.header.sequence_number,
            read_pic(&pkt.payload, ids.pic.unwrap()),
            pkt.payload[ids.tl0.unwrap()],
        ));
    }
    // Consecutive sequence numbers and picture ids; TL0PICIDX as sent.
    assert_eq!(
        out,
        vec![(1, 100, 3), (2, 101, 3), (3, 102, 3), (4, 103, 3)]
    );
}

#[test]
fn vp8_seven_bit_ids_wrap_within_seven_bits() {
    let p = params();
    let mut rw = LegRewriter::new(90_000).with_vp8_continuity();
    let t = Instant::now();
    let mut first = packet(1, 1, 1, &[]);
    first.payload = Bytes::from(vec![0x90, 0x80, 0x7F, 0x01]); // 7-bit id 127
    assert!(rw.rewrite(&mut first, &p, t));
    let mut next = packet(2, 9, 9, &[]);
    next.payload = Bytes::from(vec![0x90, 0x80, 0x10, 0x01]); // other source, id 16
    assert!(rw.rewrite(&mut next, &p, t));
    assert_eq!(next.payload[2], 0x00, "127 + 1 wraps to 0 in 7 bits");
}

#[test]
fn no_switch_means_no_payload_copy() {
    let p = params();
    let mut rw = LegRewriter::new(90_000).with_vp8_continuity();
    let mut pkt = packet(1, 1, 1, &[]);
    pkt.payload = vp8(10, 1);
    let before = pkt.payload.as_ptr();
    assert!(rw.rewrite(&mut pkt, &p, Instant::now()));
    assert_eq!(pkt.payload.as_ptr(), before);
}

#[test]
fn high_ids_use_the_two_byte_profile() {
    let leg = vec![(200u16, AUDIO_LEVEL.to_owned())];
    let source = vec![(3u16, AUDIO_LEVEL.to_owned())];
    let p = LegParams::new(1, 111, &source, &leg, None);
    let mut rw = LegRewriter::new(48_000);
    let mut pkt = packet(5, 1, 1, &[(3, b"\x85")]);
    assert!(rw.rewrite(&mut pkt, &p, Instant::now()));
    assert_eq!(pkt.header.extensions[0].id, 200);
    assert_eq!(pkt.header.extension_profile, PROFILE_TWO_BYTE);
}
