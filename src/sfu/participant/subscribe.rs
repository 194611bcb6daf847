//! What a participant receives: its legs (subscribe, unsubscribe, sizes) and their
//! bandwidth allocation.

use super::*;

impl Participant {
    pub(crate) fn leg_count(&self) -> usize {
        self.legs.lock().unwrap().len()
    }

    pub(crate) fn legs_by_kind(&self) -> [usize; 2] {
        let mut n = [0; 2];
        for l in self.legs.lock().unwrap().values() {
            n[l.source.info.kind as usize] += 1;
        }
        n
    }

    pub(crate) fn subscriptions(&self) -> Vec<crate::sfu::SubscriptionInfo> {
        let mut v: Vec<crate::sfu::SubscriptionInfo> = self
            .legs
            .lock()
            .unwrap()
            .iter()
            .map(|(t, leg)| crate::sfu::SubscriptionInfo {
                track: t.clone(),
                layer: leg.layer_rid(),
                switching_to: leg.target_rid(),
                temporal_layer: leg.sink.temporal_layer(),
                spatial_layer: leg.sink.spatial_layer(),
                red: leg.sink.red_delivery(),
                paused: leg.sink.paused.load(Ordering::Relaxed)
                    || leg.sink.step.bw_paused.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.track.track_id.cmp(&b.track.track_id));
        v
    }

    /// Replaces the set of this publisher's stream ids that are screenshares, and marks
    /// its published tracks accordingly.
    pub(crate) fn set_screenshare_streams(&self, streams: HashSet<String>) {
        let mut screenshares = self.screenshare_streams.lock().unwrap();
        for t in self.published.lock().unwrap().iter() {
            t.screenshare
                .store(streams.contains(&t.info.track.stream_id), Ordering::Relaxed);
        }
        *screenshares = streams;
    }

    /// The stream ids declared as screenshares, sorted.
    pub(crate) fn screenshare_streams(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .screenshare_streams
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Fits this subscriber's legs into its bandwidth estimate (see `track::allocate`);
    /// `speakers` are the conference's active speakers, loudest first.
    pub(crate) async fn allocate(&self, now: Instant, speakers: &[ParticipantId]) {
        let legs: Vec<Arc<Leg>> = self.legs.lock().unwrap().values().cloned().collect();
        if legs.is_empty() {
            return;
        }
        let clock_ms = now
            .saturating_duration_since(self.join_clock.at)
            .as_millis() as u64
            + 1;
        let probe =
            crate::sfu::track::allocate(&self.id, &legs, &self.estimates, now, clock_ms, speakers)
                .await;
        self.estimates.probe_bps.store(probe, Ordering::Relaxed);
    }

    /// The mid each active leg rides, by the track it forwards.
    pub(crate) fn leg_mids(&self) -> Vec<(TrackRef, String)> {
        self.legs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(t, leg)| Some((t.clone(), leg.mid()?)))
            .collect()
    }

    /// Adds a leg per source, each seen by the subscriber as the paired stream and track id.
    pub(crate) async fn subscribe(
        &self,
        sources: Vec<(Arc<PublishedTrack>, TrackRef)>,
    ) -> Result<(), SfuError> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| SfuError::UnknownParticipant(self.id.clone()))?;
        let mut neg = self.neg.lock().await;
        if self.removed.load(Ordering::Acquire) {
            return Err(SfuError::UnknownParticipant(self.id.clone()));
        }
        let fresh: Vec<(Arc<PublishedTrack>, TrackRef)> = {
            let legs = self.legs.lock().unwrap();
            let own: Vec<String> = self
                .published
                .lock()
                .unwrap()
                .iter()
                .map(|t| t.info.track.track_id.clone())
                .collect();
            let mut fresh: Vec<(Arc<PublishedTrack>, TrackRef)> = Vec::new();
            for (s, seen_as) in sources {
                if legs.contains_key(&s.info.track)
                    || fresh.iter().any(|(f, _)| f.info.track == s.info.track)
                {
                    continue;
                }
                let tid = &seen_as.track_id;
                if own.contains(tid)
                    || legs.values().any(|l| &l.seen_as.track_id == tid)
                    || fresh.iter().any(|(_, f)| &f.track_id == tid)
                {
                    return Err(SfuError::TrackIdConflict(tid.clone()));
                }
                fresh.push((s, seen_as));
            }
            let limit = inner.config.max_subscriptions_per_participant;
            if legs.len() + fresh.len() > limit {
                return Err(SfuError::TooManySubscriptions(limit));
            }
            fresh
        };
        if fresh.is_empty() {
            return Ok(());
        }
        for (source, seen_as) in fresh {
            let key = source.info.track.clone();
            let leg = Leg::create(
                &*self.pc,
                source,
                seen_as,
                inner.stats.clone(),
                self.join_clock.clone(),
            )
            .await?;
            self.legs.lock().unwrap().insert(key, leg.clone());
            neg.unsent.push(leg);
        }
        neg.stalled = false;
        self.renegotiate(&mut neg).await
    }

    pub(crate) async fn unsubscribe(&self, tracks: &[TrackRef]) -> Result<(), SfuError> {
        let removed: Vec<Arc<Leg>> = {
            let mut legs = self.legs.lock().unwrap();
            tracks.iter().filter_map(|t| legs.remove(t)).collect()
        };
        self.drop_legs(removed).await
    }

    /// Ends the subscription to `track` if there is one (its publisher stopped or left).
    pub(super) async fn drop_leg(&self, track: &TrackRef) {
        let removed: Vec<Arc<Leg>> = self
            .legs
            .lock()
            .unwrap()
            .remove(track)
            .into_iter()
            .collect();
        if let Err(e) = self.drop_legs(removed).await {
            debug!(participant = %self.id, error = %e, "renegotiation after a track ended failed");
        }
    }

    pub(super) async fn drop_legs(&self, legs: Vec<Arc<Leg>>) -> Result<(), SfuError> {
        if legs.is_empty() {
            return Ok(());
        }
        for leg in &legs {
            leg.stop().await;
        }
        let mut neg = self.neg.lock().await;
        neg.unsent
            .retain(|l| !legs.iter().any(|d| Arc::ptr_eq(l, d)));
        neg.in_flight
            .retain(|l| !legs.iter().any(|d| Arc::ptr_eq(l, d)));
        if self.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        for leg in &legs {
            if let Err(e) = self.pc.remove_track(&leg.sender).await {
                debug!(participant = %self.id, error = %e, "remove_track failed");
            }
        }
        neg.stalled = false;
        self.renegotiate(&mut neg).await
    }

    /// Sets the rendered size of a subscribed track (0x0 pauses it).
    pub(crate) async fn set_track_size(
        &self,
        track: &TrackRef,
        width: u32,
        height: u32,
    ) -> Result<(), SfuError> {
        let leg = self
            .legs
            .lock()
            .unwrap()
            .get(track)
            .cloned()
            .ok_or_else(|| SfuError::UnknownTrack {
                stream_id: track.stream_id.clone(),
                track_id: track.track_id.clone(),
            })?;
        leg.set_size(width, height).await;
        Ok(())
    }
}
