//! The LiveKit front door's metrics, registered beside the core's
//! ([`crate::metrics::Metrics::register`]).

use super::auth::{AuthService, ENDPOINTS, RESULTS};
use crate::metrics::{FamilySpec, counter, declared_family, descs};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Every family this collector exports.
pub const FAMILIES: &[FamilySpec] = &[(
    "sluice_livekit_token_requests_total",
    "Requests to the MatrixRTC authorization service, by endpoint and result.",
    MetricType::COUNTER,
    &["endpoint", "result"],
)];

/// Names of the families this front end exports.
pub fn family_names() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.0).collect()
}

/// Reads the front door's counters at scrape time.
pub struct LiveKitCollector {
    auth: Arc<AuthService>,
    descs: Vec<Desc>,
}

impl LiveKitCollector {
    /// A collector over the authorization service's counters.
    pub fn new(auth: Arc<AuthService>) -> Self {
        Self {
            auth,
            descs: descs(FAMILIES),
        }
    }
}

impl Collector for LiveKitCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut requests = Vec::new();
        for (ei, e) in ENDPOINTS.iter().enumerate() {
            for (ri, r) in RESULTS.iter().enumerate() {
                requests.push(counter(
                    &[("endpoint", e), ("result", r)],
                    self.auth.stats.requests[ei][ri].load(Ordering::Relaxed),
                ));
            }
        }
        declared_family(FAMILIES, "sluice_livekit_token_requests_total", requests)
            .into_iter()
            .collect()
    }
}
