//! Delegated delayed leave (MSC4140 with MSC4195's `delay_id`): a MatrixRTC client schedules
//! its call-membership "leave" as a delayed event on its homeserver and hands the delay id to
//! the authorization service. Sluice, which sees whether the client's LiveKit connection is
//! really there, keeps restarting the delayed event while the participant is connected and
//! sends it as soon as the participant is gone, so the others learn of a vanished member at
//! once instead of after the delay, and a connected member whose client stopped refreshing
//! (a frozen tab) does not drop out.
//!
//! The homeserver's delayed-event management endpoints take the delay id as the credential
//! (`POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}/{restart,send}`,
//! no access token). One job (a task) per (LiveKit room, identity); a newer delegation for the
//! same pair replaces the older.

use super::Signal;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long a delegated event may wait for its participant's first connection.
const CONNECT_WINDOW: Duration = Duration::from_secs(60);
/// How often a job looks at its participant's connection.
const POLL: Duration = Duration::from_secs(1);
/// The longest delay accepted (Synapse's own limit is configurable; a day is generous).
pub const MAX_DELAY_MS: i64 = 24 * 3600 * 1000;
/// Jobs at most (one per connected MatrixRTC member).
const MAX_JOBS: usize = 10_000;

/// Why a delegation was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DelegationError {
    /// The delay id or timeout is out of bounds.
    #[error("{0}")]
    Invalid(&'static str),
    /// Too many jobs already.
    #[error("too many delegated delayed leave events ({MAX_JOBS})")]
    Full,
}

/// What the jobs did, for metrics.
#[derive(Default)]
pub struct DelayedLeaveStats {
    /// Delegations taken.
    pub started: AtomicU64,
    /// Restarts sent to homeservers.
    pub restarts: AtomicU64,
    /// Leave events sent because the participant left.
    pub sent: AtomicU64,
    /// Management requests that failed (unreachable, refused).
    pub failed: AtomicU64,
}

/// The delegated delayed leave events of one Sluice.
pub struct DelayedLeaves {
    http: reqwest::Client,
    overrides: BTreeMap<String, String>,
    signal: Arc<Signal>,
    jobs: Mutex<HashMap<(String, String), (u64, tokio::task::AbortHandle)>>,
    next: AtomicU64,
    /// Its counters.
    pub stats: DelayedLeaveStats,
}

/// One delegation, as the token request gave it.
pub struct Delegation {
    /// The user's homeserver (server name).
    pub server_name: String,
    /// The delayed event's id.
    pub delay_id: String,
    /// Its delay, milliseconds.
    pub delay_ms: i64,
    /// The LiveKit room and identity whose connection it follows.
    pub room: String,
    /// See `room`.
    pub identity: String,
}

impl DelayedLeaves {
    /// Jobs that follow `signal`'s connections; `overrides` (`livekit.homeserver_urls`) name
    /// where to reach a homeserver's client-server API instead of `.well-known` discovery.
    pub fn new(
        signal: Arc<Signal>,
        overrides: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Self {
            http,
            overrides,
            signal,
            jobs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            stats: DelayedLeaveStats::default(),
        }))
    }

    /// Jobs running now.
    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    /// True when no job runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a delegation's values; the delay id becomes a URL path segment.
    pub fn check(delay_id: &str, delay_ms: i64) -> Result<(), DelegationError> {
        if delay_id.is_empty()
            || delay_id.len() > 255
            || !delay_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        {
            return Err(DelegationError::Invalid(
                "`delay_id` must be 1 to 255 characters of A-Z, a-z, 0-9, - _ . ~",
            ));
        }
        if !(1..=MAX_DELAY_MS).contains(&delay_ms) {
            return Err(DelegationError::Invalid(
                "`delay_timeout` must be 1 to 86400000 milliseconds",
            ));
        }
        Ok(())
    }

    /// Takes over `d`: replaces an earlier job for the same room and identity.
    pub fn delegate(self: &Arc<Self>, d: Delegation) -> Result<(), DelegationError> {
        Self::check(&d.delay_id, d.delay_ms)?;
        let key = (d.room.clone(), d.identity.clone());
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.len() >= MAX_JOBS && !jobs.contains_key(&key) {
            return Err(DelegationError::Full);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let (room, identity) = (d.room.clone(), d.identity.clone());
            me.run(d).await;
            let mut jobs = me.jobs.lock().unwrap();
            if jobs.get(&(room.clone(), identity.clone())).map(|j| j.0) == Some(n) {
                jobs.remove(&(room, identity));
            }
        });
        if let Some((_, old)) = jobs.insert(key, (n, task.abort_handle())) {
            old.abort();
        }
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One job: restart while connected (and while waiting for the first connection), send
    /// once the participant is gone, stop when the homeserver no longer knows the event.
    async fn run(&self, d: Delegation) {
        let base = self.client_api(&d.server_name).await;
        let url = |action: &str| {
            format!(
                "{}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{}/{action}",
                base.trim_end_matches('/'),
                d.delay_id
            )
        };
        let every = (Duration::from_millis(d.delay_ms as u64) / 3)
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let started = Instant::now();
        let mut seen = false;
        let mut restarted = Instant::now();
        info!(room = %d.room, identity = %d.identity, server = %d.server_name, delay_ms = d.delay_ms, "delayed leave delegated");
        loop {
            tokio::time::sleep(POLL).await;
            let present = self.signal.has_identity(&d.room, &d.identity);
            if !present && seen {
                let ok = self.post(&url("send"), &d).await;
                if ok {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    info!(room = %d.room, identity = %d.identity, "participant gone: delayed leave sent");
                }
                return;
            }
            if !present && started.elapsed() > CONNECT_WINDOW {
                info!(room = %d.room, identity = %d.identity, "participant never connected: the delayed leave is left to expire");
                return;
            }
            seen |= present;
            if restarted.elapsed() >= every {
                restarted = Instant::now();
                if !self.post(&url("restart"), &d).await {
                    return;
                }
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// POSTs a management action; false when the job should end (the homeserver does not
    /// know the event any more, or refused).
    async fn post(&self, url: &str, d: &Delegation) -> bool {
        match self
            .http
            .post(url)
            .json(&serde_json::json!({}))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => true,
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                // Sent, cancelled (a client that hangs up cleanly does it) or expired.
                info!(room = %d.room, identity = %d.identity, "the homeserver holds the delayed leave no more (sent or cancelled); job ends");
                false
            }
            Ok(r) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(room = %d.room, identity = %d.identity, status = r.status().as_u16(), "delayed event management refused; job ends");
                false
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(room = %d.room, identity = %d.identity, server = %d.server_name, error = %e.without_url(), "homeserver unreachable for delayed event management");
                // Keep trying: the next restart may reach it before the event fires.
                true
            }
        }
    }

    /// Where `server_name`'s client-server API is: the override, else
    /// `.well-known/matrix/client`'s `m.homeserver.base_url`, else `https://server_name`.
    async fn client_api(&self, server_name: &str) -> String {
        if let Some(u) = self.overrides.get(server_name) {
            return u.clone();
        }
        let wk = format!("https://{server_name}/.well-known/matrix/client");
        if let Ok(r) = self.http.get(&wk).send().await
            && r.status().is_success()
            && let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(base) = v["m.homeserver"]["base_url"].as_str()
            && (base.starts_with("https://") || base.starts_with("http://"))
        {
            return base.to_owned();
        }
        debug!(server = %server_name, "no .well-known/matrix/client: using https://<server name>");
        format!("https://{server_name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_ids_and_timeouts_are_bounded() {
        assert!(DelayedLeaves::check("syd_AbC-12.x~", 10_000).is_ok());
        assert!(DelayedLeaves::check("", 10_000).is_err());
        assert!(DelayedLeaves::check("a/b", 10_000).is_err());
        assert!(DelayedLeaves::check("a?b", 10_000).is_err());
        assert!(DelayedLeaves::check(&"a".repeat(256), 10_000).is_err());
        assert!(DelayedLeaves::check("a", 0).is_err());
        assert!(DelayedLeaves::check("a", MAX_DELAY_MS + 1).is_err());
    }
}
