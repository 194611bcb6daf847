//! The metric set, in one registry owned by the app.
//!
//! Counters on the packet path live in the media core as plain atomics
//! ([`crate::sfu::Stats`]); [`CoreCollector`] turns them and the core's counts into
//! Prometheus families at scrape time, so a scrape costs nothing on the packet path. Each
//! front end registers a collector of its own ([`Metrics::register`]; the Matrix one is
//! `crate::matrix::metrics`), built with the helpers here. Label values are bounded sets
//! (kind, direction, reason, …): no room, user or call ids.

use crate::sfu::{DropReason, HangupReason, MediaKind, Sfu, Stats};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The instance's own load estimate in 0..1: the larger of the process's CPU use over the
/// machine's cores and the forwarded packet rate over the configured capacity. Sampled every
/// few seconds by [`LoadEstimator::run`].
pub struct LoadEstimator {
    sfu_stats: Arc<Stats>,
    capacity_pps: f64,
    ratio_bits: AtomicU64,
    cpu_bits: AtomicU64,
    pps_bits: AtomicU64,
    last: Mutex<Option<(Instant, f64, u64)>>,
}

fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / if ticks > 0.0 { ticks } else { 100.0 })
}

impl LoadEstimator {
    /// An estimator over the core's counters and the configured capacity.
    pub fn new(sfu_stats: Arc<Stats>, capacity_pps: u64) -> Arc<Self> {
        Arc::new(Self {
            sfu_stats,
            capacity_pps: capacity_pps.max(1) as f64,
            ratio_bits: AtomicU64::new(0f64.to_bits()),
            cpu_bits: AtomicU64::new(0f64.to_bits()),
            pps_bits: AtomicU64::new(0f64.to_bits()),
            last: Mutex::new(None),
        })
    }

    /// The current estimate.
    pub fn ratio(&self) -> f64 {
        f64::from_bits(self.ratio_bits.load(Ordering::Relaxed))
    }

    /// Takes one sample (also called by [`LoadEstimator::run`]).
    pub fn sample(&self) {
        let now = Instant::now();
        let cpu = process_cpu_seconds().unwrap_or(0.0);
        let out = self.sfu_stats.packets_out(MediaKind::Audio)
            + self.sfu_stats.packets_out(MediaKind::Video);
        let mut last = self.last.lock().unwrap();
        if let Some((t, c, p)) = *last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let cores = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1) as f64;
                let cpu_ratio = ((cpu - c) / dt / cores).clamp(0.0, 1.0);
                let pps = out.saturating_sub(p) as f64 / dt;
                let pps_ratio = (pps / self.capacity_pps).clamp(0.0, 1.0);
                self.cpu_bits.store(cpu_ratio.to_bits(), Ordering::Relaxed);
                self.pps_bits.store(pps.to_bits(), Ordering::Relaxed);
                self.ratio_bits
                    .store(cpu_ratio.max(pps_ratio).to_bits(), Ordering::Relaxed);
            }
        }
        *last = Some((now, cpu, out));
    }

    /// Samples every `every` forever.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.sample();
        }
    }
}

/// Buckets of `sluice_bandwidth_estimate_bits`.
const ESTIMATE_BUCKETS: &[f64] = &[100e3, 250e3, 500e3, 1e6, 2e6, 5e6, 10e6, 20e6, 50e6];

/// Buckets of `sluice_conference_size`.
const CONFERENCE_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];

struct CoreCollector {
    sfu: Sfu,
    load: Arc<LoadEstimator>,
    descs: Vec<Desc>,
}

/// (name, help, type, label names) of a metric family.
pub type FamilySpec = (
    &'static str,
    &'static str,
    MetricType,
    &'static [&'static str],
);

/// Every family the core collector exports.
const FAMILIES: &[FamilySpec] = &[
    (
        "sluice_conferences",
        "Live conferences.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "sluice_participants",
        "Participants across all conferences.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "sluice_published_tracks",
        "Tracks being published, by kind.",
        MetricType::GAUGE,
        &["kind"],
    ),
    (
        "sluice_subscribed_tracks",
        "Subscriber legs (forwarded tracks), by kind.",
        MetricType::GAUGE,
        &["kind"],
    ),
    (
        "sluice_packets_total",
        "RTP packets received from publishers (in) and handed to subscriber legs (out).",
        MetricType::COUNTER,
        &["direction", "kind"],
    ),
    (
        "sluice_bytes_total",
        "RTP payload bytes received (in) and forwarded (out).",
        MetricType::COUNTER,
        &["direction", "kind"],
    ),
    (
        "sluice_forwarded_packets_dropped_total",
        "Packets not forwarded to a leg, by reason.",
        MetricType::COUNTER,
        &["reason"],
    ),
    (
        "sluice_nack_total",
        "NACKs received from subscribers (answered by retransmission).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_retransmits_suppressed_total",
        "Packets subscribers asked to have retransmitted beyond their retransmission budget (a share of their bandwidth estimate); not resent.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_pli_total",
        "Keyframe requests received from subscribers (in) and sent to publishers (out).",
        MetricType::COUNTER,
        &["direction"],
    ),
    (
        "sluice_keyframe_requests_suppressed_total",
        "Keyframe requests coalesced by the per-stream throttle (subscribers' requests, and the repeated asks of a pending layer switch).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_probe_packets_total",
        "Probe packets requested: RTX retransmissions of recent video packets sent to probe a subscriber's path before an upward layer step.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_bandwidth_probes_total",
        "Probes before an upward layer step, by result: passed (the estimate still covered the step: taken) or failed (not taken; the hold before the next try doubles).",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        "sluice_temporal_layer_packets_skipped_total",
        "Packets left out of subscriber legs that receive fewer temporal layers (frames per second) than the publisher sends.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_spatial_layer_packets_skipped_total",
        "Packets left out of subscriber legs that receive fewer spatial layers (a lower resolution) of an SVC stream than the publisher sends.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_red_packets_received_total",
        "RED (redundant audio) packets received from publishers.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_red_packets_recovered_total",
        "Audio packets lost on a publisher's path, rebuilt from the next RED packet's redundancy for subscriber legs that take RED unwrapped.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_red_packets_unwrapped_total",
        "RED (redundant audio) packets sent as their primary block alone to subscriber legs that did not negotiate the publisher's RED.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_hangups_total",
        "Participants removed, by hangup reason.",
        MetricType::COUNTER,
        &["reason"],
    ),
    (
        "sluice_ice_failures_total",
        "Peer connections that failed.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_data_channel_messages_refused_total",
        "Data-channel messages refused (binary or over 64 KiB).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_data_channel_messages_limited_total",
        "Data-channel messages dropped over a participant's rate or backlog limit.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "sluice_forward_latency_seconds",
        "Time from receiving a packet to handing it to a subscriber leg.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "sluice_join_duration_seconds",
        "Time from join (invite) to the first packet forwarded to the participant.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "sluice_conference_size",
        "Participants per live conference.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "sluice_packet_loss_ratio",
        "Fraction lost per subscriber leg, one observation per reception report.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "sluice_jitter_seconds",
        "Interarrival jitter per subscriber leg, one observation per reception report.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "sluice_rtt_seconds",
        "Round-trip time per subscriber leg, from reception reports (LSR/DLSR).",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "sluice_leg_layers",
        "Subscriber legs by the simulcast layer they receive (RID class q, h, f, other).",
        MetricType::GAUGE,
        &["layer"],
    ),
    (
        "sluice_leg_temporal_layers",
        "Subscriber legs receiving fewer temporal layers (frames per second) than the publisher sends, by the highest temporal layer they receive.",
        MetricType::GAUGE,
        &["temporal_layer"],
    ),
    (
        "sluice_bandwidth_estimate_bits",
        "Subscribers' effective bandwidth estimates (lower of send-side GCC and REMB), bits/s, observed at scrape time.",
        MetricType::HISTOGRAM,
        &[],
    ),
    (
        "sluice_bandwidth_estimate_source",
        "Participants by where their bandwidth estimate comes from (twcc, remb, none).",
        MetricType::GAUGE,
        &["source"],
    ),
    (
        "sluice_draining",
        "1 while the instance is draining.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "sluice_load_ratio",
        "The instance's load estimate 0..1: max of CPU use and forwarded packet rate over capacity.",
        MetricType::GAUGE,
        &[],
    ),
];

/// Names of every metric family the core exports (histograms add `_bucket`, `_sum` and
/// `_count` series); each front end lists its own.
pub fn family_names() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.0).collect()
}

/// The descriptions of `specs`, for a collector's [`Collector::desc`].
pub fn descs(specs: &[FamilySpec]) -> Vec<Desc> {
    specs
        .iter()
        .map(|(name, help, _, labels)| {
            Desc::new(
                (*name).to_owned(),
                (*help).to_owned(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                Default::default(),
            )
            .expect("valid metric description")
        })
        .collect()
}

/// The family `name` of `specs` with `metrics`; None when `specs` does not declare it (a
/// scrape must never panic, and a unit test renders every declared family).
pub fn declared_family(
    specs: &[FamilySpec],
    name: &str,
    metrics: Vec<proto::Metric>,
) -> Option<MetricFamily> {
    let found = specs.iter().find(|f| f.0 == name);
    debug_assert!(found.is_some(), "metric family {name} is not declared");
    found.map(|(_, help, t, _)| family(name, help, *t, metrics))
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

/// A gauge sample with `pairs` as labels.
pub fn gauge(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(labels(pairs));
    let mut g = proto::Gauge::default();
    g.set_value(v);
    m.set_gauge(g);
    m
}

/// A counter sample with `pairs` as labels.
pub fn counter(pairs: &[(&str, &str)], v: u64) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(labels(pairs));
    let mut c = proto::Counter::default();
    c.set_value(v as f64);
    m.set_counter(c);
    m
}

fn histogram(bounds: &[f64], cumulative: &[u64], count: u64, sum: f64) -> proto::Metric {
    let mut h = proto::Histogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(sum);
    h.set_bucket(
        bounds
            .iter()
            .zip(cumulative)
            .map(|(b, c)| {
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*b);
                bucket.set_cumulative_count(*c);
                bucket
            })
            .collect(),
    );
    let mut m = proto::Metric::default();
    m.set_histogram(h);
    m
}

/// A histogram of values observed now (a snapshot, not accumulated over time).
fn snapshot_histogram(bounds: &[f64], values: &[f64]) -> proto::Metric {
    let cumulative: Vec<u64> = bounds
        .iter()
        .map(|b| values.iter().filter(|v| **v <= *b).count() as u64)
        .collect();
    histogram(
        bounds,
        &cumulative,
        values.len() as u64,
        values.iter().sum(),
    )
}

const KINDS: [MediaKind; 2] = [MediaKind::Audio, MediaKind::Video];

impl Collector for CoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.sfu.snapshot();
        let detail = self.sfu.detail();
        let st = self.sfu.stats();
        let mut out: Vec<MetricFamily> = Vec::new();
        let mut push = |name: &str, metrics: Vec<proto::Metric>| {
            out.extend(declared_family(FAMILIES, name, metrics));
        };
        push(
            "sluice_conferences",
            vec![gauge(&[], snap.conferences as f64)],
        );
        push(
            "sluice_participants",
            vec![gauge(&[], snap.participants as f64)],
        );
        push(
            "sluice_published_tracks",
            KINDS
                .iter()
                .map(|k| {
                    gauge(
                        &[("kind", k.as_str())],
                        detail.published[*k as usize] as f64,
                    )
                })
                .collect(),
        );
        push(
            "sluice_subscribed_tracks",
            KINDS
                .iter()
                .map(|k| {
                    gauge(
                        &[("kind", k.as_str())],
                        detail.subscribed[*k as usize] as f64,
                    )
                })
                .collect(),
        );
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for k in KINDS {
            packets.push(counter(
                &[("direction", "in"), ("kind", k.as_str())],
                st.packets_in(k),
            ));
            packets.push(counter(
                &[("direction", "out"), ("kind", k.as_str())],
                st.packets_out(k),
            ));
            bytes.push(counter(
                &[("direction", "in"), ("kind", k.as_str())],
                st.bytes_in(k),
            ));
            bytes.push(counter(
                &[("direction", "out"), ("kind", k.as_str())],
                st.bytes_out(k),
            ));
        }
        push("sluice_packets_total", packets);
        push("sluice_bytes_total", bytes);
        push(
            "sluice_forwarded_packets_dropped_total",
            DropReason::ALL
                .iter()
                .map(|r| counter(&[("reason", r.as_str())], st.dropped(*r)))
                .collect(),
        );
        push(
            "sluice_nack_total",
            vec![counter(&[], st.nacks_received.load(Ordering::Relaxed))],
        );
        push(
            "sluice_retransmits_suppressed_total",
            vec![counter(
                &[],
                st.retransmits_suppressed.load(Ordering::Relaxed),
            )],
        );
        push(
            "sluice_pli_total",
            vec![
                counter(
                    &[("direction", "in")],
                    st.keyframe_requests_received.load(Ordering::Relaxed),
                ),
                counter(
                    &[("direction", "out")],
                    st.keyframe_requests_sent.load(Ordering::Relaxed),
                ),
            ],
        );
        push(
            "sluice_keyframe_requests_suppressed_total",
            vec![counter(
                &[],
                st.keyframe_requests_suppressed.load(Ordering::Relaxed),
            )],
        );
        push(
            "sluice_probe_packets_total",
            vec![counter(&[], st.probe_packets.load(Ordering::Relaxed))],
        );
        push(
            "sluice_bandwidth_probes_total",
            vec![
                counter(
                    &[("result", "passed")],
                    st.probes[0].load(Ordering::Relaxed),
                ),
                counter(
                    &[("result", "failed")],
                    st.probes[1].load(Ordering::Relaxed),
                ),
            ],
        );
        push(
            "sluice_temporal_layer_packets_skipped_total",
            vec![counter(
                &[],
                st.temporal_layer_skipped.load(Ordering::Relaxed),
            )],
        );
        push(
            "sluice_spatial_layer_packets_skipped_total",
            vec![counter(
                &[],
                st.spatial_layer_skipped.load(Ordering::Relaxed),
            )],
        );
        push(
            "sluice_red_packets_received_total",
            vec![counter(&[], st.red_received.load(Ordering::Relaxed))],
        );
        push(
            "sluice_red_packets_recovered_total",
            vec![counter(&[], st.red_recovered.load(Ordering::Relaxed))],
        );
        push(
            "sluice_red_packets_unwrapped_total",
            vec![counter(&[], st.red_unwrapped.load(Ordering::Relaxed))],
        );
        push(
            "sluice_hangups_total",
            HangupReason::ALL
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    counter(
                        &[("reason", r.as_str())],
                        st.left[i].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        );
        push(
            "sluice_ice_failures_total",
            vec![counter(&[], st.ice_failures.load(Ordering::Relaxed))],
        );
        push(
            "sluice_data_channel_messages_refused_total",
            vec![counter(
                &[],
                st.data_channel_messages_refused.load(Ordering::Relaxed),
            )],
        );
        push(
            "sluice_data_channel_messages_limited_total",
            vec![counter(
                &[],
                st.data_channel_messages_limited.load(Ordering::Relaxed),
            )],
        );
        for (name, h) in [
            ("sluice_forward_latency_seconds", &st.forward_latency),
            ("sluice_join_duration_seconds", &st.join_duration),
            ("sluice_packet_loss_ratio", &st.leg_loss),
            ("sluice_jitter_seconds", &st.leg_jitter),
            ("sluice_rtt_seconds", &st.leg_rtt),
        ] {
            let (bounds, cum, count, sum) = h.snapshot();
            push(name, vec![histogram(bounds, &cum, count, sum)]);
        }
        let sizes: Vec<f64> = detail.conference_sizes.iter().map(|n| *n as f64).collect();
        push(
            "sluice_conference_size",
            vec![snapshot_histogram(CONFERENCE_SIZE_BUCKETS, &sizes)],
        );
        let alloc = self.sfu.allocation_detail();
        push(
            "sluice_bandwidth_estimate_source",
            ["twcc", "remb", "none"]
                .iter()
                .zip(alloc.sources)
                .map(|(s, n)| gauge(&[("source", s)], n as f64))
                .collect(),
        );
        push(
            "sluice_leg_layers",
            ["q", "h", "f", "other"]
                .iter()
                .zip(alloc.layers)
                .map(|(l, n)| gauge(&[("layer", l)], n as f64))
                .collect(),
        );
        push(
            "sluice_leg_temporal_layers",
            ["0", "1", "2"]
                .iter()
                .zip(alloc.temporal_layers)
                .map(|(l, n)| gauge(&[("temporal_layer", l)], n as f64))
                .collect(),
        );
        let estimates: Vec<f64> = alloc.estimates.iter().map(|e| *e as f64).collect();
        push(
            "sluice_bandwidth_estimate_bits",
            vec![snapshot_histogram(ESTIMATE_BUCKETS, &estimates)],
        );
        push(
            "sluice_draining",
            vec![gauge(&[], if self.sfu.is_draining() { 1.0 } else { 0.0 })],
        );
        push("sluice_load_ratio", vec![gauge(&[], self.load.ratio())]);
        out
    }
}

/// The app's metric registry.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Registers the core collector and the process collector (CPU, memory, fds).
    pub fn new(sfu: Sfu, load: Arc<LoadEstimator>) -> Metrics {
        let registry = Registry::new();
        registry
            .register(Box::new(CoreCollector {
                sfu,
                load,
                descs: descs(FAMILIES),
            }))
            .expect("core collector registers once");
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(pc));
        }
        Metrics { registry }
    }

    /// Adds a front end's collector (once per front end).
    pub fn register(&self, collector: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "a front end's metrics could not be registered");
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SfuConfig;

    #[tokio::test]
    async fn exposition_has_the_core_families_with_bounded_labels() {
        let sfu = Sfu::new(SfuConfig::default());
        let load = LoadEstimator::new(sfu.stats(), 1000);
        sfu.stats().record_in(MediaKind::Video, 1200);
        sfu.stats()
            .forward_latency
            .observe(Duration::from_micros(300));
        let m = Metrics::new(sfu, load);
        let text = m.render();
        for name in [
            "sluice_conferences 0",
            "sluice_participants 0",
            "sluice_published_tracks{kind=\"video\"} 0",
            "sluice_packets_total{direction=\"in\",kind=\"video\"} 1",
            "sluice_bytes_total{direction=\"in\",kind=\"video\"} 1200",
            "sluice_forwarded_packets_dropped_total{reason=\"queue_full\"} 0",
            "sluice_forward_latency_seconds_bucket{le=\"0.0005\"} 1",
            "sluice_forward_latency_seconds_count 1",
            "sluice_hangups_total{reason=\"keep_alive_timeout\"} 0",
            "sluice_draining 0",
            "sluice_load_ratio 0",
            "# TYPE sluice_packets_total counter",
            "# TYPE sluice_join_duration_seconds histogram",
            "# TYPE sluice_packet_loss_ratio histogram",
            "# TYPE sluice_jitter_seconds histogram",
            "# TYPE sluice_rtt_seconds histogram",
        ] {
            assert!(text.contains(name), "missing {name:?} in:\n{text}");
        }
        // Without Matrix the Matrix families are absent rather than fake.
        assert!(!text.contains("sluice_matrix_sync_up"));
    }

    #[test]
    fn load_ratio_follows_packet_rate() {
        let stats = Arc::new(Stats::default());
        let load = LoadEstimator::new(stats.clone(), 100);
        load.sample();
        for _ in 0..1000 {
            stats.record_out(MediaKind::Audio, 10);
        }
        std::thread::sleep(Duration::from_millis(100));
        load.sample();
        // 1000 packets in ~0.1 s is far above a capacity of 100 pps: saturated.
        assert_eq!(load.ratio(), 1.0);
    }
}
