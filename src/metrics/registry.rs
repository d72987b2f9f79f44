//! The Prometheus metrics: one registry per [`Metrics`], and recording what
//! sweeps, rounds and the HTTP server report into it.
//!
//! Names follow Prometheus conventions: prefix `token_sweeper_`, base units,
//! `_total` on counters, and no label that grows with users or keys.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::index::IndexMetrics;
use super::kinds::{error_kinds, HttpClosed, SweepResult};
use super::throttle::ThrottleMetrics;
use crate::sweep::{CountKind, CountMetric, NodeReport, SweepReport, ThrottleReading};

/// Buckets from 5 ms to 30 min: a sweep of a few keys and one of tens of
/// millions both land in a bucket of their own.
const SWEEP_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 60.0, 150.0, 300.0, 600.0, 1800.0,
];
/// One pipeline: sub-millisecond on an idle Redis, seconds when it is saturated.
const BATCH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Every metric of the daemon, in one registry of its own (not the global
/// default, so tests and embedders can have several).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    sweeps: IntCounterVec,
    sweep_duration: Histogram,
    /// Per pipeline; observed by the sweep through [`crate::sweep::SweepProgress`].
    pub batch_duration: Histogram,
    /// By `node` (`host:port` of the primary): per node, never per key.
    /// One per sweep counter with a [`CountMetric::PerNode`].
    per_node: Vec<(CountKind, IntCounterVec)>,
    errors: IntCounterVec,
    last_success: Gauge,
    /// By `node`: when each primary was last swept to the end, so an alert
    /// can find a primary no daemon has finished for a while.
    node_last_success: GaugeVec,
    /// By `node`: 1 when the last sweep of that primary could not finish it.
    node_unfinished: IntGaugeVec,
    /// The adaptive throttle, by `node`: see [`Metrics::record_throttle`].
    throttle: ThrottleMetrics,
    /// The due index, by `node`, and the full scans: see [`Metrics::count_full_scan`].
    index: IndexMetrics,
    /// Every `node` label value the per-node gauges may hold, so that
    /// [`Metrics::retain_nodes`] can find the ones to drop.
    nodes: Arc<Mutex<BTreeSet<String>>>,
    redis_up: IntGauge,
    lock_held: IntGauge,
    /// By `reason`: HTTP connections the server closed to protect itself.
    http_closed: IntCounterVec,
    /// 1 while the schedule has a next tick, 0 when it has run out.
    schedule_armed: IntGauge,
    /// When the next scheduled tick is (0 when there is none).
    next_sweep: Gauge,
}

impl Metrics {
    /// Registers every metric.
    ///
    /// # Errors
    /// Only if two metrics had the same name, which the fixed set here does not.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let name = |n: &str| format!("token_sweeper_{n}");
        let sweeps = IntCounterVec::new(
            Opts::new(name("sweeps_total"), "Scheduled sweeps by how they ended."),
            &["result"],
        )?;
        let sweep_duration = Histogram::with_opts(
            HistogramOpts::new(
                name("sweep_duration_seconds"),
                "Wall time of sweeps that ran.",
            )
            .buckets(SWEEP_BUCKETS.to_vec()),
        )?;
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                name("batch_duration_seconds"),
                "Round trip of one pipeline of ZREMRANGEBYSCORE.",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
        )?;
        let mut per_node = Vec::new();
        for kind in CountKind::ALL {
            if let Some(CountMetric::PerNode { name: metric, help }) = kind.metric() {
                let counter = IntCounterVec::new(Opts::new(name(metric), help), &["node"])?;
                registry.register(Box::new(counter.clone()))?;
                per_node.push((kind, counter));
            }
        }
        let node_last_success = GaugeVec::new(
            Opts::new(
                name("node_last_success_timestamp_seconds"),
                "Unix time at which the last sweep of this node (primary) finished it.",
            ),
            &["node"],
        )?;
        let node_unfinished = IntGaugeVec::new(
            Opts::new(
                name("node_unfinished"),
                "1 when the last sweep of this node could not finish it (failed, or its slots moved).",
            ),
            &["node"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(name("errors_total"), "Errors by kind."),
            &["kind"],
        )?;
        let last_success = Gauge::new(
            name("last_success_timestamp_seconds"),
            "Unix time of the end of the last successful sweep.",
        )?;
        let redis_up = IntGauge::new(name("redis_up"), "1 when Redis answered the last probe.")?;
        let lock_held = IntGauge::new(
            name("lock_held"),
            "Leases this daemon holds while sweeping: 1 for the replica lock; in cluster \
             mode, one per primary it sweeps.",
        )?;
        let http_closed = IntCounterVec::new(
            Opts::new(
                name("http_connections_closed_total"),
                "HTTP connections closed by the server to protect itself, by reason: evicted \
                 (the oldest idle one, to make room), refused (every slot answering a request), \
                 timeout (no complete request head in time, or idle too long).",
            ),
            &["reason"],
        )?;
        let schedule_armed = IntGauge::new(
            name("schedule_armed"),
            "1 while the schedule has a next tick and the scheduler holds an alarm for it; 0 when \
             it has none (no sweep will run) or the alarm could not be set (retried with \
             backoff; the daemon's loop still takes the tick).",
        )?;
        let next_sweep = Gauge::new(
            name("next_sweep_timestamp_seconds"),
            "Unix time of the next scheduled tick (before sweep.jitter); 0 when there is none. \
             In the past for long means the daemon loop is stuck.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(name("build_info"), "Always 1; the version is in the label."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(sweeps.clone()))?;
        registry.register(Box::new(sweep_duration.clone()))?;
        registry.register(Box::new(batch_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(node_last_success.clone()))?;
        registry.register(Box::new(node_unfinished.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(lock_held.clone()))?;
        registry.register(Box::new(http_closed.clone()))?;
        registry.register(Box::new(schedule_armed.clone()))?;
        registry.register(Box::new(next_sweep.clone()))?;
        registry.register(Box::new(build_info))?;
        let throttle = ThrottleMetrics::new(&registry)?;
        let index = IndexMetrics::new(&registry)?;
        // Series that exist from the start read 0 instead of being absent,
        // so rate() and alerts work before the first event: increase()
        // needs two samples, and a series born at 1 has no 0 before it.
        for result in SweepResult::ALL {
            sweeps.with_label_values(&[result.label()]);
        }
        for kind in error_kinds() {
            errors.with_label_values(&[kind]);
        }
        for reason in HttpClosed::ALL {
            http_closed.with_label_values(&[reason.label()]);
        }
        Ok(Self {
            registry,
            sweeps,
            sweep_duration,
            batch_duration,
            per_node,
            errors,
            last_success,
            node_last_success,
            node_unfinished,
            throttle,
            index,
            nodes: Arc::default(),
            redis_up,
            lock_held,
            http_closed,
            schedule_armed,
            next_sweep,
        })
    }

    /// Counts one tick by how it ended.
    pub fn count_sweep(&self, result: SweepResult) {
        self.sweeps.with_label_values(&[result.label()]).inc();
    }

    /// Adds the numbers of one primary's sweep, as it ends (the other
    /// primaries of the sweep may still run): its counts, whether it was
    /// left unfinished, and, if it was finished, now as its last success.
    pub fn record_node(&self, node: &NodeReport) {
        crate::mutex::lock(&self.nodes).insert(node.node.clone());
        let label = [node.node.as_str()];
        for (kind, counter) in &self.per_node {
            counter
                .with_label_values(&label)
                .inc_by(node.counts.get(*kind));
        }
        if let Some(index) = &node.index {
            self.index.record(&node.node, index);
        }
        let unfinished = node.unfinished_reason.is_some();
        self.node_unfinished
            .with_label_values(&label)
            .set(i64::from(unfinished));
        if node.finished {
            self.node_last_success
                .with_label_values(&label)
                .set(unix_seconds_now());
        }
    }

    /// After a round that read the topology: `node_last_success` exists for
    /// every current primary (0 until this daemon finishes it), so that
    /// `max by (node)` over a fleet sees a primary that no daemon sweeps
    /// instead of losing it; `node_unfinished` exists only for the
    /// primaries this daemon swept in that round (`swept`), so a primary it
    /// no longer sweeps (another daemon's now) cannot keep an old 1. Series
    /// of nodes that are no longer primaries (failover, resharding, another
    /// server) go.
    ///
    /// The due index's series stay for the primaries in `index_kept`
    /// (`None`: all): an index round keeps those it swept (a primary now
    /// another daemon's would keep its old lag), a daemon with the index
    /// off none.
    pub fn retain_nodes<'n>(
        &self,
        primaries: impl IntoIterator<Item = &'n str>,
        swept: &BTreeSet<String>,
        index_kept: Option<&BTreeSet<String>>,
    ) {
        let primaries: BTreeSet<&str> = primaries.into_iter().collect();
        let mut known = crate::mutex::lock(&self.nodes);
        for node in known.iter() {
            if !primaries.contains(node.as_str()) {
                // Err: no such series; nothing to drop.
                let _ = self.node_last_success.remove_label_values(&[node]);
                for (_, counter) in &self.per_node {
                    let _ = counter.remove_label_values(&[node]);
                }
                self.throttle.forget(node);
                self.index.forget(node);
            } else if index_kept.is_some_and(|kept| !kept.contains(node)) {
                self.index.forget(node);
            }
            if !primaries.contains(node.as_str()) || !swept.contains(node) {
                let _ = self.node_unfinished.remove_label_values(&[node]);
            }
        }
        for node in &primaries {
            self.node_last_success.with_label_values(&[node]);
        }
        *known = primaries.into_iter().map(str::to_owned).collect();
    }

    /// When a round has read the topology, before it sweeps: every per-node
    /// counter exists from 0 for each primary, so that its first count is
    /// an increase (a series born at 3 is not one to `increase()`).
    /// They go with the node's other series when it is no longer a primary
    /// ([`Metrics::retain_nodes`]).
    pub fn expose_nodes<'n>(&self, primaries: impl IntoIterator<Item = &'n str>) {
        let mut known = crate::mutex::lock(&self.nodes);
        for node in primaries {
            known.insert(node.to_owned());
            for (_, counter) in &self.per_node {
                counter.with_label_values(&[node]);
            }
        }
    }

    /// In index mode, that this daemon's full scan of `nodes` starts
    /// sweeping now.
    pub fn full_scan_started<'n>(&self, nodes: impl IntoIterator<Item = &'n str>) {
        let at = unix_seconds_now();
        for node in nodes {
            self.index.full_scan_started(node, at);
        }
    }

    /// That the full scan of `node` ended (`None`: every one of this daemon).
    pub fn full_scan_ended(&self, node: Option<&str>) {
        self.index.full_scan_ended(node);
    }

    /// One reading of a primary's adaptive throttle (every decision while
    /// it sweeps, and as it ends).
    pub fn record_throttle(&self, reading: &ThrottleReading) {
        crate::mutex::lock(&self.nodes).insert(reading.node.clone());
        self.throttle.record(reading);
    }

    /// Adds the numbers of a sweep that ran (completely or not); the
    /// per-primary ones come from [`Metrics::record_node`].
    pub fn record_report(&self, report: &SweepReport) {
        self.sweep_duration.observe(report.duration_seconds);
        for (kind, n) in report.counts.iter() {
            if let (Some(CountMetric::Error(error)), true) = (kind.metric(), n > 0) {
                self.count_error(error, n);
            }
        }
    }

    /// Counts one round that ran a full scan (not an index sweep) by how it
    /// ended; [`Metrics::count_sweep`] counts it too.
    pub fn count_full_scan(&self, result: SweepResult) {
        self.index.count_full_scan(result);
    }

    /// Counts errors of one kind (`oom`, `noperm`, `connection`, `unit_guard`, ...).
    pub fn count_error(&self, kind: &str, n: u64) {
        self.errors.with_label_values(&[kind]).inc_by(n);
    }

    /// Marks now as the time of the last successful sweep.
    pub fn mark_success(&self) {
        self.last_success.set(unix_seconds_now());
    }

    pub(super) fn count_http_closed(&self, reason: HttpClosed) {
        self.http_closed.with_label_values(&[reason.label()]).inc();
    }

    /// Sets `redis_up`.
    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    /// Sets `lock_held` to the number of leases held.
    pub fn set_lock_held(&self, leases: usize) {
        self.lock_held
            .set(i64::try_from(leases).unwrap_or(i64::MAX));
    }

    /// Sets `next_sweep_timestamp_seconds` from the next tick (Unix
    /// seconds), `None` when the schedule has none, and `schedule_armed`
    /// from whether there is one and the scheduler holds its alarm.
    pub fn set_next_sweep(&self, next: Option<f64>, alarm_set: bool) {
        self.schedule_armed
            .set(i64::from(next.is_some() && alarm_set));
        self.next_sweep.set(next.unwrap_or(0.0));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails for metric families the registry
        // itself rejected at registration.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The wall clock now, in Unix seconds, as the timestamp gauges hold it.
fn unix_seconds_now() -> f64 {
    crate::clock::wall_clock().timestamp_millis() as f64 / 1000.0
}
