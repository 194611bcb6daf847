//! The LiveKit front door's metrics, registered beside the core's
//! ([`crate::metrics::Metrics::register`]).

use super::auth::{AuthService, ENDPOINTS, RESULTS};
use super::signal::{DATA_RESULTS, DYNACAST_TOPS, OUTCOMES, Signal};
use crate::metrics::{FamilySpec, counter, declared_family, descs, gauge};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Every family this collector exports.
pub const FAMILIES: &[FamilySpec] = &[
    (
        "sluice_livekit_token_requests_total",
        "Requests to the MatrixRTC authorization service, by endpoint and result.",
        MetricType::COUNTER,
        &["endpoint", "result"],
    ),
    (
        "sluice_livekit_connections_total",
        "LiveKit signaling connections: joined, or refused or ended by reason.",
        MetricType::COUNTER,
        &["outcome"],
    ),
    (
        "sluice_livekit_data_packets_total",
        "LiveKit data packets clients sent: relayed, refused, not permitted; and copies \
         dropped for a recipient with 1 MiB waiting on its data channel.",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        "sluice_livekit_dynacast_updates_total",
        "Subscribed-quality updates (dynacast) sent to LiveKit publishers, by the highest \
         quality they enable (off: the publisher may stop the track).",
        MetricType::COUNTER,
        &["top"],
    ),
    (
        "sluice_livekit_participants",
        "LiveKit participants connected now.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "sluice_livekit_delayed_leaves",
        "Delegated delayed leave events (MSC4140) Sluice follows now.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "sluice_livekit_delayed_leave_actions_total",
        "Delegated delayed leave events: taken over, restarted, sent when the participant \
         left, and management requests that failed.",
        MetricType::COUNTER,
        &["action"],
    ),
];

/// Names of the families this front end exports.
pub fn family_names() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.0).collect()
}

/// Reads the front door's counters at scrape time.
pub struct LiveKitCollector {
    auth: Arc<AuthService>,
    signal: Arc<Signal>,
    descs: Vec<Desc>,
}

impl LiveKitCollector {
    /// A collector over the authorization service's and the signaling's counters.
    pub fn new(auth: Arc<AuthService>, signal: Arc<Signal>) -> Self {
        Self {
            auth,
            signal,
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
        let connections = OUTCOMES
            .iter()
            .enumerate()
            .map(|(i, o)| {
                counter(
                    &[("outcome", o)],
                    self.signal.stats.connections[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        let data = DATA_RESULTS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                counter(
                    &[("result", r)],
                    self.signal.stats.data_packets[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        let dynacast = DYNACAST_TOPS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                counter(
                    &[("top", t)],
                    self.signal.stats.dynacast[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        let participants = vec![gauge(&[], self.signal.counts().1 as f64)];
        let (mut jobs, mut actions) = (Vec::new(), Vec::new());
        if let Some(d) = self.auth.delegation() {
            jobs.push(gauge(&[], d.len() as f64));
            let st = &d.stats;
            for (a, v) in [
                ("delegated", &st.started),
                ("restart", &st.restarts),
                ("send", &st.sent),
                ("failed", &st.failed),
            ] {
                actions.push(counter(&[("action", a)], v.load(Ordering::Relaxed)));
            }
        }
        [
            ("sluice_livekit_token_requests_total", requests),
            ("sluice_livekit_connections_total", connections),
            ("sluice_livekit_data_packets_total", data),
            ("sluice_livekit_dynacast_updates_total", dynacast),
            ("sluice_livekit_participants", participants),
            ("sluice_livekit_delayed_leaves", jobs),
            ("sluice_livekit_delayed_leave_actions_total", actions),
        ]
        .into_iter()
        .filter(|(_, metrics)| !metrics.is_empty())
        .filter_map(|(name, metrics)| declared_family(FAMILIES, name, metrics))
        .collect()
    }
}
