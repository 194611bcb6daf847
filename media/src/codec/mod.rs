//! Just enough of each video payload format to find keyframes: simulcast layer switches
//! happen only at the first packet of a keyframe of the target layer. Pure functions over
//! the RTP payload; no allocation. One file per payload format.

mod av1;
mod h264;
mod red;
mod vp8;
mod vp9;

pub use av1::{DEPENDENCY_DESCRIPTOR_EXTENSION, DdTemplates, av1_keyframe_start};
pub use h264::h264_keyframe_start;
pub use red::{MIME_TYPE_RED, RedBlocks, red_block_payload_type, red_blocks, red_primary};
pub use vp8::{vp8_keyframe_size, vp8_keyframe_start, vp8_temporal};
pub use vp9::{vp9_keyframe_start, vp9_spatial_sizes, vp9_temporal};

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

/// Most spatial layers Sluice tells apart per stream.
pub const SPATIAL_LAYERS: usize = 4;

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
