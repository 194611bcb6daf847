//! Negotiation: remote candidates, the client's offers and answers, Sluice's offers
//! (one at a time; Sluice is the polite side on glare).

use super::*;

impl Participant {
    pub(crate) async fn add_remote_candidate(&self, c: IceCandidate) -> Result<(), SfuError> {
        if c.candidate.trim().is_empty() {
            return Ok(());
        }
        if c.candidate.len() > 1024 {
            return Err(SfuError::BadCandidate(
                "candidate longer than 1024 bytes".into(),
            ));
        }
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                ..Default::default()
            })
            .await
            .map_err(|e| SfuError::BadCandidate(e.to_string()))
    }

    /// Sends a Sluice offer for pending changes, unless one is already out.
    pub(super) async fn renegotiate(&self, neg: &mut Negotiation) -> Result<(), SfuError> {
        if self.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.offers == OfferMode::Client {
            // The client offers; ask it for one with a receive-only section per new leg.
            if neg.stalled {
                return Ok(());
            }
            let mut want = [0u32; 2];
            for leg in &neg.unsent {
                want[leg.source.info.kind as usize] += 1;
            }
            self.emit(SfuEventKind::NeedOffer {
                audio: want[0],
                video: want[1],
            });
            return Ok(());
        }
        if neg.awaiting_answer {
            neg.needs_offer = true;
            return Ok(());
        }
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        let sdp = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| SfuError::WebRtc("no local description after offer".into()))?
            .sdp;
        let mut unsent = std::mem::take(&mut neg.unsent);
        neg.in_flight.append(&mut unsent);
        neg.awaiting_answer = true;
        neg.needs_offer = false;
        self.emit(SfuEventKind::Offer(sdp));
        Ok(())
    }

    /// Asks again for what is pending: the media sections of unsent legs (a client that
    /// offers) or an offer of Sluice's own, whatever an earlier ask led to. For a front end
    /// whose earlier ask may not have reached the client (a signaling connection that
    /// dropped and resumed).
    pub(crate) async fn ask_again(&self) -> Result<(), SfuError> {
        let mut neg = self.neg.lock().await;
        if neg.unsent.is_empty() && !neg.needs_offer {
            return Ok(());
        }
        neg.stalled = false;
        self.renegotiate(&mut neg).await
    }

    pub(crate) async fn remote_description(
        &self,
        desc: SessionDescription,
    ) -> Result<(), SfuError> {
        if desc.sdp.len() > sdp::MAX_SDP_BYTES {
            return Err(SfuError::BadSdp(format!(
                "SDP is {} bytes, above the limit of {}",
                desc.sdp.len(),
                sdp::MAX_SDP_BYTES
            )));
        }
        let mut neg = self.neg.lock().await;
        match desc.kind {
            SdpKind::Answer => {
                if !neg.awaiting_answer {
                    return Err(SfuError::InvalidState(
                        "answer received but no Sluice offer is outstanding".into(),
                    ));
                }
                let answer = RTCSessionDescription::answer(desc.sdp)
                    .map_err(|e| SfuError::BadSdp(e.to_string()))?;
                if let Err(e) = self.pc.set_remote_description(answer).await {
                    // Take the offer back so the next change can be offered afresh.
                    let _ = self
                        .pc
                        .set_local_description(RTCSessionDescription::rollback(None)?)
                        .await;
                    neg.awaiting_answer = false;
                    let mut flight = std::mem::take(&mut neg.in_flight);
                    neg.unsent.append(&mut flight);
                    return Err(SfuError::BadSdp(e.to_string()));
                }
                neg.awaiting_answer = false;
                let legs = std::mem::take(&mut neg.in_flight);
                for leg in legs {
                    if let Err(e) = leg.activate(&*self.pc).await {
                        warn!(participant = %self.id, error = %e, "cannot activate leg");
                    }
                }
                if neg.needs_offer || !neg.unsent.is_empty() {
                    self.renegotiate(&mut neg).await?;
                }
                Ok(())
            }
            SdpKind::Offer => {
                sdp::check_offer(&desc.sdp)?;
                let offer = RTCSessionDescription::offer(desc.sdp)
                    .map_err(|e| SfuError::BadSdp(e.to_string()))?;
                if neg.awaiting_answer {
                    // Glare: Sluice is polite. Roll back, answer, offer the change again.
                    debug!(participant = %self.id, "glare: rolling back the Sluice offer");
                    self.pc
                        .set_local_description(RTCSessionDescription::rollback(None)?)
                        .await?;
                    neg.awaiting_answer = false;
                    let mut flight = std::mem::take(&mut neg.in_flight);
                    flight.append(&mut neg.unsent);
                    neg.unsent = flight;
                    neg.needs_offer = true;
                }
                self.pc
                    .set_remote_description(offer)
                    .await
                    .map_err(|e| SfuError::BadSdp(e.to_string()))?;
                let answer = self.pc.create_answer(None).await?;
                self.pc.set_local_description(answer).await?;
                let sdp = self
                    .pc
                    .local_description()
                    .await
                    .ok_or_else(|| SfuError::WebRtc("no local description after answer".into()))?
                    .sdp;
                if self.offers == OfferMode::Client {
                    self.attach_unsent(&mut neg).await;
                }
                self.emit(SfuEventKind::Answer(sdp::tidy_answer(&sdp)));
                self.reap_stopped_publications().await;
                if neg.needs_offer || !neg.unsent.is_empty() {
                    self.renegotiate(&mut neg).await?;
                }
                Ok(())
            }
        }
    }

    /// ([`OfferMode::Client`]) Activates the unsent legs the client's offer gave a media
    /// section; the rest stay unsent. A round that attached none stalls the asking until
    /// the subscriptions change (a client that does not add sections is not asked forever).
    async fn attach_unsent(&self, neg: &mut Negotiation) {
        if neg.unsent.is_empty() {
            return;
        }
        let mut left = Vec::new();
        let mut attached = 0;
        for leg in std::mem::take(&mut neg.unsent) {
            if leg.negotiated_mid(&*self.pc).await.is_none() {
                left.push(leg);
                continue;
            }
            match leg.activate(&*self.pc).await {
                Ok(true) if leg.mid().is_some() => attached += 1,
                Ok(_) => left.push(leg),
                Err(e) => {
                    warn!(participant = %self.id, error = %e, "cannot activate leg");
                    left.push(leg);
                }
            }
        }
        neg.stalled = attached == 0 && !left.is_empty();
        neg.unsent = left;
    }
}
