//! What a participant publishes: each incoming track's forwarder task, its codec as
//! negotiated, and (un)publishing it in the conference.

use super::*;

/// Reads one remote track: registers it at its first packet, forwards its packets, and
/// unregisters it when it ends.
pub(super) async fn publish_loop(p: Weak<Participant>, remote: Arc<dyn TrackRemote>) {
    let kind = match remote.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        RtpCodecKind::Video => MediaKind::Video,
        _ => return,
    };
    let mut published: Option<Arc<PublishedTrack>> = None;
    // Set when the track could not be registered (duplicate id): read and discard.
    let mut refused = false;
    while let Some(evt) = remote.poll().await {
        match evt {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                if let Some(t) = &published {
                    t.forward(pkt, Instant::now());
                }
            }
            TrackRemoteEvent::OnOpen(init) => {
                let layer = Layer {
                    rid: init.rid.clone(),
                    ssrc: init.ssrc,
                };
                if let Some(t) = &published {
                    debug!(track = %t.info.track.track_id, rid = ?layer.rid, ssrc = layer.ssrc, "simulcast layer opened");
                    t.add_layer(layer);
                    continue;
                }
                if refused {
                    continue;
                }
                let Some(part) = p.upgrade() else { return };
                let Some(inner) = part.inner.upgrade() else {
                    return;
                };
                let Some(mut codec) = remote.codec(init.ssrc).await else {
                    warn!(participant = %part.id, ssrc = init.ssrc, "remote track without a codec");
                    refused = true;
                    continue;
                };
                let mut exts = Vec::new();
                let mut codecs = Vec::new();
                for r in part.pc.get_receivers().await {
                    if same_track(r.track(), &remote) {
                        if let Ok(params) = r.get_parameters().await {
                            exts = params
                                .rtp_parameters
                                .header_extensions
                                .iter()
                                .map(|e| (e.id, e.uri.clone()))
                                .collect();
                            codecs = params.rtp_parameters.codecs;
                        }
                        break;
                    }
                }
                let SourceCodecs { media_pts, red } = match source_codecs(&mut codec, &codecs) {
                    Ok(found) => found,
                    Err(why) => {
                        warn!(participant = %part.id, ssrc = init.ssrc, "{why}; track ignored");
                        refused = true;
                        continue;
                    }
                };
                let info = TrackInfo {
                    publisher: part.id.clone(),
                    track: TrackRef {
                        stream_id: remote.stream_id().await,
                        track_id: remote.track_id().await,
                    },
                    kind,
                    mime_type: codec.mime_type.clone(),
                };
                let track = Arc::new(PublishedTrack::new(
                    info,
                    codec,
                    SourceNegotiation {
                        exts,
                        media_pts,
                        red,
                    },
                    remote.clone(),
                    layer,
                    inner.config.keyframe_request_min_interval(),
                    inner.stats.clone(),
                ));
                if part.publish(track.clone()) {
                    published = Some(track);
                } else {
                    warn!(
                        participant = %part.id, track = %track.info.track.track_id,
                        "a track with this stream and track id is already published; ignoring it"
                    );
                    refused = true;
                }
            }
            TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
            _ => {}
        }
    }
    if let (Some(t), Some(part)) = (published, p.upgrade()) {
        part.unpublish(&t).await;
    }
}

/// The payload type Sluice offers RED (RFC 2198 redundant Opus) at when it offers first.
pub(super) const RED_PAYLOAD_TYPE: u8 = 63;

/// The track's codec and the payload types it is forwarded from, given the codec of its
/// first packet (`codec`) and the receiver's negotiated `codecs`: the codec's payload
/// types, and the RED that carries it, if negotiated, as `(RED payload type, block payload
/// type)`. A track whose first packet was RED gets the codec RED carries (`codec` is
/// replaced): legs negotiate that codec, and RED beside it when they can.
pub(super) fn source_codecs(
    codec: &mut RTCRtpCodec,
    codecs: &[RTCRtpCodecParameters],
) -> Result<SourceCodecs, String> {
    let is_red = |c: &RTCRtpCodec| {
        c.mime_type
            .eq_ignore_ascii_case(crate::sfu::codec::MIME_TYPE_RED)
    };
    if is_red(codec) {
        let inner = crate::sfu::codec::red_block_payload_type(&codec.sdp_fmtp_line)
            .and_then(|pt| {
                codecs
                    .iter()
                    .find(|c| c.payload_type == pt && !is_red(&c.rtp_codec))
            })
            .ok_or_else(|| {
                format!(
                    "RED track whose fmtp {:?} names no single negotiated codec",
                    codec.sdp_fmtp_line
                )
            })?;
        *codec = inner.rtp_codec.clone();
    }
    let media_pts: Vec<u8> = codecs
        .iter()
        .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type))
        .map(|c| c.payload_type)
        .collect();
    let red = codecs.iter().find_map(|c| {
        let block = crate::sfu::codec::red_block_payload_type(&c.rtp_codec.sdp_fmtp_line)?;
        (is_red(&c.rtp_codec) && media_pts.contains(&block)).then_some((c.payload_type, block))
    });
    let mut pts = media_pts;
    if let Some((red_pt, _)) = red {
        pts.push(red_pt);
    }
    Ok(SourceCodecs {
        media_pts: pts,
        red,
    })
}

/// What [`source_codecs`] found: see [`SourceNegotiation`]'s fields of the same names.
#[derive(Debug, PartialEq)]
pub(super) struct SourceCodecs {
    media_pts: Vec<u8>,
    red: Option<(u8, u8)>,
}

impl Participant {
    /// Registers a track that started flowing and announces it.
    pub(super) fn publish(&self, track: Arc<PublishedTrack>) -> bool {
        let Some(conf) = self.conference.upgrade() else {
            return false;
        };
        // Lock order: screenshare_streams, then published (as in set_screenshare_streams),
        // so a purpose change cannot miss a track being published.
        let screenshares = self.screenshare_streams.lock().unwrap();
        track.screenshare.store(
            screenshares.contains(&track.info.track.stream_id),
            Ordering::Relaxed,
        );
        if self.removed.load(Ordering::Acquire) || !conf.add_track(track.clone()) {
            return false;
        }
        self.published.lock().unwrap().push(track.clone());
        drop(screenshares);
        info!(
            conference = %self.conference_id, participant = %self.id,
            stream = %track.info.track.stream_id, track = %track.info.track.track_id,
            kind = track.info.kind.as_str(), codec = %track.info.mime_type, "track published"
        );
        self.emit(SfuEventKind::TrackPublished(track.info.clone()));
        true
    }

    /// Unregisters a track and ends every subscription to it. Idempotent.
    pub(super) async fn unpublish(&self, track: &Arc<PublishedTrack>) {
        self.published
            .lock()
            .unwrap()
            .retain(|t| !Arc::ptr_eq(t, track));
        track.close();
        let Some(conf) = self.conference.upgrade() else {
            return;
        };
        if !conf.remove_track(track) {
            return;
        }
        info!(
            conference = %self.conference_id, participant = %self.id,
            track = %track.info.track.track_id, "track unpublished"
        );
        self.emit(SfuEventKind::TrackUnpublished(track.info.clone()));
        for other in conf.participants() {
            if other.id != self.id {
                other.drop_leg(&track.info.track).await;
            }
        }
    }

    /// Unpublishes tracks the client stopped sending in its last offer. webrtc-rs does not
    /// end a remote track on renegotiation, so this reads the transceivers' directions.
    pub(super) async fn reap_stopped_publications(&self) {
        use rtc::rtp_transceiver::RTCRtpTransceiverDirection as Dir;
        let published: Vec<Arc<PublishedTrack>> = self.published.lock().unwrap().clone();
        if published.is_empty() {
            return;
        }
        let mut stopped = Vec::new();
        for t in self.pc.get_transceivers().await {
            let Ok(Some(r)) = t.receiver().await else {
                continue;
            };
            let dir = t.current_direction().await.unwrap_or(Dir::Unspecified);
            if matches!(dir, Dir::Recvonly | Dir::Sendrecv) {
                continue;
            }
            if let Some(p) = published.iter().find(|p| p.is_remote(r.track())) {
                stopped.push(p.clone());
            }
        }
        for t in stopped {
            self.unpublish(&t).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(mime: &str, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: pt,
        }
    }

    #[test]
    fn a_track_whose_first_packet_was_red_gets_the_codec_red_carries() {
        // As a browser that prefers RED negotiates it: RED first, Opus beside it.
        let negotiated = [
            c("audio/red", "109/109", 63),
            c("audio/opus", "minptime=10;useinbandfec=1", 109),
            c("audio/PCMU", "", 0),
        ];
        let mut codec = negotiated[0].rtp_codec.clone();
        let found = source_codecs(&mut codec, &negotiated).unwrap();
        assert_eq!(codec.mime_type, "audio/opus");
        assert_eq!(found.media_pts, vec![109, 63]);
        assert_eq!(found.red, Some((63, 109)));
        // The same track seen from a plain Opus first packet.
        let mut codec = negotiated[1].rtp_codec.clone();
        assert_eq!(
            source_codecs(&mut codec, &negotiated).unwrap(),
            SourceCodecs {
                media_pts: vec![109, 63],
                red: Some((63, 109))
            }
        );
    }

    #[test]
    fn red_over_another_codec_is_not_the_tracks() {
        let negotiated = [
            c("audio/opus", "", 111),
            c("audio/red", "0/0", 63),
            c("audio/PCMU", "", 0),
        ];
        let mut codec = negotiated[0].rtp_codec.clone();
        assert_eq!(
            source_codecs(&mut codec, &negotiated).unwrap(),
            SourceCodecs {
                media_pts: vec![111],
                red: None
            }
        );
        // RED naming a payload type nobody negotiated: refused, with the reason.
        let mut codec = c("audio/red", "100/100", 63).rtp_codec;
        let err = source_codecs(&mut codec, &[c("audio/red", "100/100", 63)]).unwrap_err();
        assert!(err.contains("100/100"), "{err}");
    }
}
