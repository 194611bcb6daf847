//! Matrix signaling: Sluice as a MatrixRTC focus.
//!
//! Sluice is a Matrix account (matrix-sdk). It follows call membership state in the rooms
//! it is in, authorizes participants from it, and carries SDP and ICE as to-device events
//! (plain or Olm-encrypted); after connect, clients talk to it on a data channel. The
//! media core ([`crate::sfu`]) knows nothing of this: [`signaling::Signaling`] translates.

pub mod dc_message;
pub mod membership;
pub mod metrics;
pub mod protocol;
pub mod signaling;
pub mod stream_metadata;

use crate::config::MatrixConfig;
use crate::sfu::Sfu;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::ruma::events::AnyToDeviceEvent;
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::{Client, Room};
use signaling::Signaling;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Errors starting the Matrix side.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The client could not be built (bad URL, store not openable).
    #[error("cannot set up the Matrix client: {0}")]
    Setup(String),
    /// Login failed.
    #[error("cannot log in as {user}: {message}")]
    Login {
        /// The configured user.
        user: String,
        /// The homeserver's answer.
        message: String,
    },
}

/// A running Matrix focus: the client, its sync loop and the signaling state.
pub struct Focus {
    /// The logged-in client.
    pub client: Client,
    /// Signaling state (sessions, counters).
    pub signaling: Arc<Signaling>,
    /// True while the last sync succeeded.
    pub sync_up: Arc<AtomicBool>,
    /// Failed syncs.
    pub sync_errors: Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Focus {
    /// Logs in, registers event handlers, and starts the sync loop and the signaling tasks.
    pub async fn start(cfg: &MatrixConfig, sfu: Sfu) -> Result<Focus, MatrixError> {
        let password = cfg
            .resolve_password()
            .map_err(|e| MatrixError::Setup(e.to_string()))?;
        std::fs::create_dir_all(&cfg.store_path).map_err(|e| {
            MatrixError::Setup(format!(
                "cannot create matrix.store_path {}: {e}",
                cfg.store_path.display()
            ))
        })?;
        let passphrase =
            (!cfg.store_passphrase.0.is_empty()).then_some(cfg.store_passphrase.0.as_str());
        let client = Client::builder()
            .homeserver_url(cfg.homeserver_url.trim())
            .sqlite_store(&cfg.store_path, passphrase)
            .build()
            .await
            .map_err(|e| MatrixError::Setup(e.to_string()))?;
        client
            .matrix_auth()
            .login_username(cfg.user_id.as_str(), &password.0)
            .device_id(&cfg.device_id)
            .initial_device_display_name("Sluice SFU")
            .send()
            .await
            .map_err(|e| MatrixError::Login {
                user: cfg.user_id.clone(),
                message: e.to_string(),
            })?;
        info!(user = %cfg.user_id, device = %cfg.device_id, "logged in to the homeserver");

        let signaling = Signaling::new(client.clone(), sfu, cfg.clone());
        let sig = signaling.clone();
        client.add_event_handler(
            move |raw: Raw<AnyToDeviceEvent>, enc: Option<EncryptionInfo>| {
                let sig = sig.clone();
                async move { sig.on_to_device(raw, enc) }
            },
        );
        if cfg.auto_join {
            let allowed = cfg.allowed_homeservers.clone();
            client.add_event_handler(
                move |ev: StrippedRoomMemberEvent, room: Room, client: Client| {
                    let allowed = allowed.clone();
                    async move {
                        if ev.content.membership != MembershipState::Invite
                            || client.user_id() != Some(ev.state_key.as_ref())
                        {
                            return;
                        }
                        let server = ev.sender.server_name().as_str().to_owned();
                        if !allowed.is_empty() && !allowed.contains(&server) {
                            warn!(room = %room.room_id(), inviter = %ev.sender, "invite from a homeserver not in matrix.allowed_homeservers; ignoring");
                            return;
                        }
                        tokio::spawn(join_with_retry(room));
                    }
                },
            );
        }

        let sync_up = Arc::new(AtomicBool::new(false));
        let sync_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = vec![
            tokio::spawn(sync_loop(
                client.clone(),
                sync_up.clone(),
                sync_errors.clone(),
                signaling.room_changes(),
            )),
            tokio::spawn(signaling.clone().watch_memberships()),
        ];
        Ok(Focus {
            client,
            signaling,
            sync_up,
            sync_errors,
            tasks,
        })
    }

    /// The front end's metrics collector, for [`crate::metrics::Metrics::register`].
    pub fn metrics_collector(&self) -> metrics::MatrixCollector {
        metrics::MatrixCollector::new(
            self.signaling.clone(),
            self.sync_up.clone(),
            self.sync_errors.clone(),
        )
    }

    /// Whether the homeserver is reachable (last sync succeeded).
    pub fn is_synced(&self) -> bool {
        self.sync_up.load(Ordering::Relaxed)
    }

    /// Stops the sync loop and the signaling tasks.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn join_with_retry(room: Room) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=6 {
        match room.join().await {
            Ok(()) => {
                info!(room = %room.room_id(), "joined room on invite");
                return;
            }
            Err(e) => {
                warn!(room = %room.room_id(), attempt, error = %e, "joining failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How long each sync request may wait on the homeserver for news (its long poll).
const SYNC_LONG_POLL: Duration = Duration::from_secs(10);

/// A sync request still unanswered this long after its long poll ended means the
/// homeserver stalled (it accepts connections but does not answer, e.g. frozen): the
/// request is abandoned, sync counts as down (`/readyz` 503), and it is retried.
const SYNC_STALL_GRACE: Duration = Duration::from_secs(5);

/// Syncs forever. Errors and stalls back off (1 s doubling to 30 s) and never stop the
/// loop; media already flowing is not touched by a homeserver outage. Rooms whose
/// membership state a response changed go to the membership watch (`room_changes`),
/// after the store has them.
async fn sync_loop(
    client: Client,
    up: Arc<AtomicBool>,
    errors: Arc<std::sync::atomic::AtomicU64>,
    room_changes: mpsc::UnboundedSender<matrix_sdk::ruma::OwnedRoomId>,
) {
    let mut settings = SyncSettings::default().timeout(SYNC_LONG_POLL);
    let mut delay = Duration::from_secs(1);
    loop {
        let answer = tokio::time::timeout(
            SYNC_LONG_POLL + SYNC_STALL_GRACE,
            client.sync_once(settings.clone()),
        )
        .await
        .map_err(|_| {
            format!(
                "the homeserver did not answer a sync request within {} s",
                (SYNC_LONG_POLL + SYNC_STALL_GRACE).as_secs()
            )
        })
        .and_then(|r| r.map_err(|e| e.to_string()));
        match answer {
            Ok(response) => {
                if !up.swap(true, Ordering::Relaxed) {
                    info!("matrix sync is up");
                }
                delay = Duration::from_secs(1);
                for room in signaling::changed_rooms(&response) {
                    let _ = room_changes.send(room);
                }
                settings = settings.token(response.next_batch);
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                if up.swap(false, Ordering::Relaxed) {
                    warn!(error = %e, "matrix sync failed; retrying with backoff");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
