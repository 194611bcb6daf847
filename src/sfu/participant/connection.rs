//! The participant's webrtc connection: building it (media engine, interceptors, ICE
//! settings) and its event handler.

use super::*;

pub(super) struct Handler {
    pub(super) me: OnceLock<Weak<Participant>>,
}

impl Handler {
    fn participant(&self) -> Option<Arc<Participant>> {
        self.me.get().and_then(Weak::upgrade)
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Some(p) = self.participant() else { return };
        match event.candidate.to_json() {
            Ok(init) => {
                let mid = p.first_mid.lock().unwrap().clone();
                p.local_candidate(Some(IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: mid,
                    sdp_mline_index: Some(0),
                }));
            }
            Err(e) => warn!(participant = %p.id, error = %e, "cannot encode local candidate"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(p) = self.participant()
        {
            p.local_candidate(None);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let Some(p) = self.participant() else { return };
        debug!(conference = %p.conference_id, participant = %p.id, %state, "connection state");
        match state {
            RTCPeerConnectionState::Connected => {
                p.interrupted.store(false, Ordering::Release);
                if !p.connected.swap(true, Ordering::AcqRel) {
                    info!(conference = %p.conference_id, participant = %p.id, "connected");
                    p.connected_now.notify_one();
                    p.emit(SfuEventKind::Connected);
                }
            }
            RTCPeerConnectionState::Disconnected => {
                p.interrupted.store(true, Ordering::Release);
            }
            RTCPeerConnectionState::Failed => {
                if let Some(inner) = p.inner.upgrade() {
                    inner.stats.ice_failures.fetch_add(1, Ordering::Relaxed);
                }
                // Never call into the connection from its own event handler: spawn.
                tokio::spawn(async move { p.remove(HangupReason::IceFailed).await });
            }
            _ => {}
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let Some(p) = self.participant() else { return };
        let label: Arc<str> = dc.label().await.unwrap_or_default().into();
        {
            let mut dcs = p.dcs.lock().unwrap();
            let most = match p.data {
                DataChannels::Text => 1,
                DataChannels::Packets => crate::sfu::MAX_DATA_CHANNELS,
            };
            if dcs.len() >= most {
                debug!(participant = %p.id, %label, "ignoring a data channel beyond the {most} it may open");
                return;
            }
            dcs.push((label.clone(), dc.clone()));
        }
        let task = tokio::spawn(data_channel_loop(Arc::downgrade(&p), dc, label));
        p.track_task(task);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(p) = self.participant() else { return };
        let task = tokio::spawn(publish_loop(Arc::downgrade(&p), track));
        p.track_task(task);
    }
}

pub(super) fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}

pub(super) async fn build_pc(
    inner: &Inner,
    handler: Arc<Handler>,
    estimates: Arc<sluice_media::estimates::Estimates>,
) -> Result<Arc<dyn PeerConnection>, SfuError> {
    let cfg = &inner.config;
    let mut last_err = None;
    for port in inner.ports.candidates() {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        // RFC 2198 RED for Opus, so that a publisher that prefers it (browsers send RED
        // only when it is first in their offer; webrtc answers in the offer's order) can
        // send it, and it reaches subscribers that take RED untouched: its payload may be
        // end-to-end encrypted as a whole. Its fmtp matches any single payload type.
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: crate::sfu::codec::MIME_TYPE_RED.to_owned(),
                    clock_rate: 48000,
                    channels: 2,
                    sdp_fmtp_line: "111/111".to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type: RED_PAYLOAD_TYPE,
            },
            RtpCodecKind::Audio,
        )?;
        for (uris, kind) in [
            (AUDIO_EXTENSIONS, RtpCodecKind::Audio),
            (VIDEO_EXTENSIONS, RtpCodecKind::Video),
        ] {
            for uri in uris {
                media.register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: (*uri).to_owned(),
                    },
                    kind,
                    None,
                )?;
            }
        }
        // webrtc's default set (NACK both ways, simulcast header extensions, TWCC
        // feedback to publishers, sender reports) without receiver reports. A browser stops
        // putting mid/rid on a simulcast stream's packets once a receiver report acknowledges
        // its SSRC, and webrtc 0.21 forgets the rid→SSRC mapping it learned at every
        // renegotiation (`start_rtp` rebuilds rid codings with no SSRC): with reports, a
        // publisher's layers become unroutable after its first renegotiation. Publishers
        // still get TWCC feedback (bandwidth, loss) and NACKs; Sluice's loss/jitter/RTT
        // figures come from the subscribers' reports, which are unaffected.
        let registry = configure_nack(Default::default(), &mut media);
        configure_simulcast_extension_headers(&mut media)?;
        //
        // Send-side bandwidth estimation for what Sluice sends this participant: the TWCC
        // sender numbers every departing packet, the congestion controller records them and
        // runs Sluice's GCC-style estimator (`bwe`) on the participant's transport-wide
        // feedback; its target reaches
        // `Estimates` through the keyframe-request interceptor. No pacer: forwarded media
        // leaves at the publisher's pace, and the allocator keeps the total under the
        // estimate by choosing layers.
        let registry = configure_twcc_receiver_only(registry, &mut media)?
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            // Both see RTX packets (retransmissions, probes) as their stream's: see
            // `probe::WithRtxStreams`.
            .with(
                Slot::TwccSender,
                WithRtxStreams(TwccSenderBuilder::new().build()),
            )
            .with(
                Slot::CongestionControl,
                WithRtxStreams(
                    CongestionControlBuilder::new(
                        crate::sfu::bwe::SubscriberEstimator::new(
                            (cfg.bandwidth_initial_kbps * 1000) as f64,
                            (cfg.bandwidth_min_kbps * 1000) as f64,
                            (cfg.bandwidth_max_kbps * 1000) as f64,
                        )
                        .publishing_delivered(estimates.clone()),
                    )
                    .build(),
                ),
            );
        let registry =
            with_keyframe_requests_counted(registry, inner.stats.clone(), estimates.clone());
        let registry =
            crate::sfu::rtcp::with_nack_budget(registry, inner.stats.clone(), estimates.clone());
        let registry =
            crate::sfu::probe::with_prober(registry, estimates.clone(), inner.stats.clone());
        let (disconnected, failed) = cfg.ice_lost_timeouts();
        let mut settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(cfg.bind_address.is_loopback())
            .with_ice_timeouts(Some(disconnected), Some(failed), None);
        if !cfg.nat_1to1_ips.is_empty() {
            settings = settings.with_nat_1to1_ips(
                cfg.nat_1to1_ips.iter().map(|ip| ip.to_string()).collect(),
                RTCIceCandidateType::Host,
            );
        }
        let result = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler.clone() as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![SocketAddr::new(cfg.bind_address, port)])
            .build()
            .await;
        match result {
            Ok(pc) => return Ok(Arc::new(pc)),
            Err(e) => {
                debug!(port, error = %e, "cannot build a peer connection on this port");
                last_err = Some(e);
            }
        }
    }
    Err(SfuError::WebRtc(format!(
        "no peer connection could be built (UDP ports exhausted?): {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    )))
}

pub(super) fn same_track(a: &Arc<dyn TrackRemote>, b: &Arc<dyn TrackRemote>) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}
