//! The Matrix front end's metrics: sync health and signaling counters, collected at scrape
//! time and registered beside the core's ([`crate::metrics::Metrics::register`]).

use super::signaling::{EVENT_RESULTS, EVENT_TYPES, Signaling};
use crate::metrics::{FamilySpec, counter, declared_family, descs, gauge};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Every family this collector exports.
pub const FAMILIES: &[FamilySpec] = &[
    (
        "sluice_matrix_sync_up",
        "1 when the last Matrix sync succeeded (absent without Matrix).",
        MetricType::GAUGE,
        &[],
    ),
    (
        "sluice_matrix_sync_errors_total",
        "Failed Matrix syncs.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_signaling_sessions",
        "Live signaling sessions.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "sluice_signaling_events_total",
        "To-device signaling events, by type and result.",
        MetricType::COUNTER,
        &["type", "result"],
    ),
    (
        "sluice_signaling_dc_errors_total",
        "Data-channel requests refused with sluice.error (malformed, bad metadata, too large, rate limited, refused by the media core).",
        MetricType::COUNTER,
        &[],
    ),
];

/// Names of the families this front end exports.
pub fn family_names() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.0).collect()
}

/// What the collector reads from the running focus.
pub struct MatrixCollector {
    /// Signaling counters and sessions.
    pub signaling: Arc<Signaling>,
    /// Whether the last sync succeeded.
    pub sync_up: Arc<AtomicBool>,
    /// Failed syncs.
    pub sync_errors: Arc<AtomicU64>,
    descs: Vec<Desc>,
}

impl MatrixCollector {
    /// A collector over a focus's state.
    pub fn new(
        signaling: Arc<Signaling>,
        sync_up: Arc<AtomicBool>,
        sync_errors: Arc<AtomicU64>,
    ) -> Self {
        Self {
            signaling,
            sync_up,
            sync_errors,
            descs: descs(FAMILIES),
        }
    }
}

impl Collector for MatrixCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let up = if self.sync_up.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        };
        let mut events = Vec::new();
        for (ti, t) in EVENT_TYPES.iter().enumerate() {
            for (ri, r) in EVENT_RESULTS.iter().enumerate() {
                events.push(counter(
                    &[("type", t), ("result", r)],
                    self.signaling.stats.events[ti][ri].load(Ordering::Relaxed),
                ));
            }
        }
        [
            ("sluice_matrix_sync_up", vec![gauge(&[], up)]),
            (
                "sluice_matrix_sync_errors_total",
                vec![counter(&[], self.sync_errors.load(Ordering::Relaxed))],
            ),
            (
                "sluice_signaling_sessions",
                vec![gauge(&[], self.signaling.session_count() as f64)],
            ),
            ("sluice_signaling_events_total", events),
            (
                "sluice_signaling_dc_errors_total",
                vec![counter(
                    &[],
                    self.signaling.stats.dc_errors.load(Ordering::Relaxed),
                )],
            ),
        ]
        .into_iter()
        .filter_map(|(name, metrics)| declared_family(FAMILIES, name, metrics))
        .collect()
    }
}
