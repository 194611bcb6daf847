//! A conference: its participants and the tracks they publish.

use super::participant::Participant;
use super::track::PublishedTrack;
use super::{ConferenceId, Inner, ParticipantId, SfuError, TrackInfo, TrackRef};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

enum Slot {
    /// Reserved by a join whose peer connection is being built.
    Joining,
    Active(Arc<Participant>),
}

pub(crate) struct Conference {
    pub(crate) id: ConferenceId,
    slots: Mutex<HashMap<ParticipantId, Slot>>,
    tracks: Mutex<HashMap<TrackRef, Arc<PublishedTrack>>>,
    pub(crate) speakers: Mutex<sluice_media::speakers::SpeakerState>,
}

impl Conference {
    /// Finds or creates the conference and reserves a participant slot in it, enforcing the
    /// instance and conference limits. The reservation keeps a concurrent second join with
    /// the same id out while the first builds its connection.
    pub(crate) fn reserve(
        inner: &Inner,
        conference: &str,
        participant: &str,
    ) -> Result<Arc<Conference>, SfuError> {
        let mut confs = inner.conferences.lock().unwrap();
        let conf = match confs.get(conference) {
            Some(c) => c.clone(),
            None => {
                if inner.draining.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(SfuError::Draining);
                }
                if confs.len() >= inner.config.max_conferences {
                    return Err(SfuError::ServerFull);
                }
                let c = Arc::new(Conference {
                    id: conference.to_owned(),
                    slots: Mutex::new(HashMap::new()),
                    tracks: Mutex::new(HashMap::new()),
                    speakers: Mutex::new(Default::default()),
                });
                confs.insert(conference.to_owned(), c.clone());
                c
            }
        };
        let mut slots = conf.slots.lock().unwrap();
        if slots.contains_key(participant) {
            return Err(SfuError::ParticipantExists(participant.to_owned()));
        }
        if slots.len() >= inner.config.max_participants_per_conference {
            drop(slots);
            if conf.is_empty() {
                confs.remove(conference);
            }
            return Err(SfuError::ConferenceFull);
        }
        slots.insert(participant.to_owned(), Slot::Joining);
        drop(slots);
        Ok(conf)
    }

    pub(crate) fn activate(&self, participant: &str, p: Arc<Participant>) {
        self.slots
            .lock()
            .unwrap()
            .insert(participant.to_owned(), Slot::Active(p));
    }

    pub(crate) fn release_reservation(&self, participant: &str) {
        let mut slots = self.slots.lock().unwrap();
        if matches!(slots.get(participant), Some(Slot::Joining)) {
            slots.remove(participant);
        }
    }

    /// Removes the participant's slot if it still holds `p`. Returns whether it did.
    pub(crate) fn remove_participant(&self, participant: &str, p: &Arc<Participant>) -> bool {
        let mut slots = self.slots.lock().unwrap();
        match slots.get(participant) {
            Some(Slot::Active(existing)) if Arc::ptr_eq(existing, p) => {
                slots.remove(participant);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.lock().unwrap().is_empty()
    }

    pub(crate) fn participant(&self, id: &str) -> Option<Arc<Participant>> {
        match self.slots.lock().unwrap().get(id) {
            Some(Slot::Active(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// The participants currently announced as active speakers, loudest first.
    pub(crate) fn speaker_order(&self) -> Vec<ParticipantId> {
        self.speakers.lock().unwrap().participants()
    }

    pub(crate) fn participants(&self) -> Vec<Arc<Participant>> {
        self.slots
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| match s {
                Slot::Active(p) => Some(p.clone()),
                Slot::Joining => None,
            })
            .collect()
    }

    pub(crate) fn participant_ids(&self) -> Vec<ParticipantId> {
        let mut ids: Vec<ParticipantId> = self.slots.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn track(&self, t: &TrackRef) -> Option<Arc<PublishedTrack>> {
        self.tracks.lock().unwrap().get(t).cloned()
    }

    /// Registers a published track. Fails when another track with the same stream and track
    /// id is already published in the conference.
    pub(crate) fn add_track(&self, track: Arc<PublishedTrack>) -> bool {
        let mut tracks = self.tracks.lock().unwrap();
        if tracks.contains_key(&track.info.track) {
            return false;
        }
        tracks.insert(track.info.track.clone(), track);
        true
    }

    /// Unregisters a published track if it is still the one registered under its key.
    pub(crate) fn remove_track(&self, track: &Arc<PublishedTrack>) -> bool {
        let mut tracks = self.tracks.lock().unwrap();
        match tracks.get(&track.info.track) {
            Some(existing) if Arc::ptr_eq(existing, track) => {
                tracks.remove(&track.info.track);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn tracks(&self) -> Vec<Arc<PublishedTrack>> {
        self.tracks.lock().unwrap().values().cloned().collect()
    }

    pub(crate) fn track_infos(&self) -> Vec<TrackInfo> {
        self.tracks
            .lock()
            .unwrap()
            .values()
            .map(|t| t.info.clone())
            .collect()
    }

    /// (participants, published tracks, subscriber legs)
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let participants = self.participants();
        let tracks = self.tracks.lock().unwrap().len();
        let legs = participants.iter().map(|p| p.leg_count()).sum();
        (participants.len(), tracks, legs)
    }
}
