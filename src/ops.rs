//! Operations: graceful drain and idle eviction.
//!
//! A drain (first SIGTERM, or `POST /admin/drain`) makes readiness false and refuses new
//! conferences while existing ones keep admitting their members; it completes when the last
//! conference ends, or at the deadline, when everyone left is hung up with
//! `sluice.draining`.

use crate::sfu::{HangupReason, Sfu};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainOutcome {
    /// Every conference ended by itself.
    Completed,
    /// The deadline passed; the remaining participants were hung up.
    DeadlineReached,
}

/// Drain state of one instance.
pub struct Ops {
    sfu: Sfu,
    deadline: Duration,
    task: Mutex<Option<JoinHandle<()>>>,
    started: Mutex<Option<Instant>>,
    outcome: watch::Sender<Option<DrainOutcome>>,
}

impl Ops {
    /// A controller draining `sfu` within `deadline`.
    pub fn new(sfu: Sfu, deadline: Duration) -> Arc<Ops> {
        Arc::new(Ops {
            sfu,
            deadline,
            task: Mutex::new(None),
            started: Mutex::new(None),
            outcome: watch::channel(None).0,
        })
    }

    /// Whether a drain is in progress or done.
    pub fn draining(&self) -> bool {
        self.sfu.is_draining()
    }

    /// Seconds until the drain deadline, while draining.
    pub fn remaining(&self) -> Option<Duration> {
        self.started
            .lock()
            .unwrap()
            .map(|t| self.deadline.saturating_sub(t.elapsed()))
    }

    /// Starts a drain; false when one is already running.
    pub fn start_drain(self: &Arc<Self>) -> bool {
        let mut task = self.task.lock().unwrap();
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return false;
        }
        self.outcome.send_replace(None);
        self.sfu.set_draining(true);
        *self.started.lock().unwrap() = Some(Instant::now());
        info!(deadline_secs = self.deadline.as_secs(), "drain started");
        let this = self.clone();
        *task = Some(tokio::spawn(async move {
            let outcome = this.run().await;
            info!(?outcome, "drain finished");
            this.outcome.send_replace(Some(outcome));
        }));
        true
    }

    /// Cancels a running drain and admits new conferences again; false when none ran.
    pub fn cancel_drain(&self) -> bool {
        let task = self.task.lock().unwrap().take();
        let Some(task) = task else {
            return false;
        };
        task.abort();
        self.sfu.set_draining(false);
        *self.started.lock().unwrap() = None;
        info!("drain cancelled");
        true
    }

    async fn run(&self) -> DrainOutcome {
        let until = Instant::now() + self.deadline;
        loop {
            if self.sfu.snapshot().conferences == 0 {
                return DrainOutcome::Completed;
            }
            if Instant::now() >= until {
                self.sfu.shutdown(HangupReason::Draining).await;
                return DrainOutcome::DeadlineReached;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until a drain (started now or later) finishes.
    pub async fn wait_drained(&self) -> DrainOutcome {
        let mut rx = self.outcome.subscribe();
        loop {
            if let Some(o) = *rx.borrow_and_update() {
                return o;
            }
            if rx.changed().await.is_err() {
                return DrainOutcome::Completed;
            }
        }
    }
}

/// Removes idle participants every `every` (see [`Sfu::evict_idle`]).
pub async fn evict_idle_loop(sfu: Sfu, idle: Duration, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let n = sfu.evict_idle(idle).await;
        if n > 0 {
            info!(evicted = n, "removed idle participants");
        }
    }
}
