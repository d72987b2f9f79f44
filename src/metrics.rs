//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.
//!
//! Names follow Prometheus conventions: prefix `token_sweeper_`, base units,
//! `_total` on counters, and no label that grows with users or keys.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::sweep::SweepReport;

/// Buckets from 5 ms to 30 min: a sweep of a few keys and one of tens of
/// millions both land in a bucket of their own.
const SWEEP_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 60.0, 150.0, 300.0, 600.0, 1800.0,
];
/// One pipeline: sub-millisecond on an idle Redis, seconds when it is saturated.
const BATCH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// How a scheduled sweep ended; the `result` label of `sweeps_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepResult {
    /// Ran to the end without per-key errors.
    Ok,
    /// Failed, refused (unit guard, clock), or had per-key errors.
    Error,
    /// Stopped early by shutdown.
    Interrupted,
    /// Some cluster primaries could not be finished (failed, or their slots
    /// moved); the others were swept. `node_unfinished` names them.
    Incomplete,
    /// A tick came while the previous sweep was still running.
    SkippedOverlap,
    /// Another daemon holds the replica lock for this period.
    SkippedLocked,
}

impl SweepResult {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Interrupted => "interrupted",
            Self::Incomplete => "incomplete",
            Self::SkippedOverlap => "skipped_overlap",
            Self::SkippedLocked => "skipped_locked",
        }
    }
}

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
    keys_scanned: IntCounterVec,
    tokens_removed: IntCounterVec,
    errors: IntCounterVec,
    last_success: Gauge,
    /// By `node`: when each primary was last swept to the end, so an alert
    /// can find a primary no daemon has finished for a while.
    node_last_success: GaugeVec,
    /// By `node`: 1 when the last sweep of that primary could not finish it.
    node_unfinished: IntGaugeVec,
    redis_up: IntGauge,
    lock_held: IntGauge,
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
        let keys_scanned = IntCounterVec::new(
            Opts::new(
                name("keys_scanned_total"),
                "Keys returned by SCAN, by node.",
            ),
            &["node"],
        )?;
        let tokens_removed = IntCounterVec::new(
            Opts::new(
                name("tokens_removed_total"),
                "Expired members removed from token sets, by node.",
            ),
            &["node"],
        )?;
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
        let schedule_armed = IntGauge::new(
            name("schedule_armed"),
            "1 while the schedule has a next tick; 0 when it has none (no sweep will run).",
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
        registry.register(Box::new(keys_scanned.clone()))?;
        registry.register(Box::new(tokens_removed.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(node_last_success.clone()))?;
        registry.register(Box::new(node_unfinished.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(lock_held.clone()))?;
        registry.register(Box::new(schedule_armed.clone()))?;
        registry.register(Box::new(next_sweep.clone()))?;
        registry.register(Box::new(build_info))?;
        // Series that exist from the start read 0 instead of being absent,
        // so rate() and alerts work before the first event.
        for result in [
            SweepResult::Ok,
            SweepResult::Error,
            SweepResult::Interrupted,
            SweepResult::Incomplete,
            SweepResult::SkippedOverlap,
            SweepResult::SkippedLocked,
        ] {
            sweeps.with_label_values(&[result.label()]);
        }
        Ok(Self {
            registry,
            sweeps,
            sweep_duration,
            batch_duration,
            keys_scanned,
            tokens_removed,
            errors,
            last_success,
            node_last_success,
            node_unfinished,
            redis_up,
            lock_held,
            schedule_armed,
            next_sweep,
        })
    }

    /// Counts one tick by how it ended.
    pub fn count_sweep(&self, result: SweepResult) {
        self.sweeps.with_label_values(&[result.label()]).inc();
    }

    /// Adds the numbers of a sweep that ran (completely or not).
    pub fn record_report(&self, report: &SweepReport) {
        self.sweep_duration.observe(report.duration_seconds);
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        for node in &report.nodes {
            let label = [node.node.as_str()];
            self.keys_scanned
                .with_label_values(&label)
                .inc_by(node.counts.keys_scanned);
            self.tokens_removed
                .with_label_values(&label)
                .inc_by(node.counts.members_removed);
            let unfinished = node.unfinished_reason.is_some();
            self.node_unfinished
                .with_label_values(&label)
                .set(i64::from(unfinished));
            if node.finished {
                self.node_last_success.with_label_values(&label).set(now);
            }
        }
        if report.counts.skipped_wrong_type > 0 {
            self.count_error("wrong_type", report.counts.skipped_wrong_type);
        }
        if report.counts.errors > 0 {
            self.count_error("command", report.counts.errors);
        }
    }

    /// Counts errors of one kind (`oom`, `noperm`, `connection`, `unit_guard`, ...).
    pub fn count_error(&self, kind: &str, n: u64) {
        self.errors.with_label_values(&[kind]).inc_by(n);
    }

    /// Marks now as the time of the last successful sweep.
    pub fn mark_success(&self) {
        self.last_success
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
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

    /// Sets `schedule_armed` and `next_sweep_timestamp_seconds` from the
    /// next tick (Unix seconds), `None` when the schedule has none.
    pub fn set_next_sweep(&self, next: Option<f64>) {
        self.schedule_armed.set(i64::from(next.is_some()));
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

/// What `/readyz` and the `redis_up` gauge ask of the daemon.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok(())` when ready, else a one-line reason. Called per request.
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

struct Endpoints<R> {
    metrics: Metrics,
    readiness: R,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`
/// completes.
///
/// # Errors
/// When the server fails while running.
pub async fn serve<R: Readiness>(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    readiness: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(Endpoints { metrics, readiness });
    let app = axum::Router::new()
        .route("/metrics", get(metrics_page::<R>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<R>))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_page<R: Readiness>(State(state): State<Arc<Endpoints<R>>>) -> impl IntoResponse {
    // Probe at scrape time: an idle daemon does no work when nobody asks.
    let _ = state.readiness.check().await;
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

async fn ready<R: Readiness>(State(state): State<Arc<Endpoints<R>>>) -> impl IntoResponse {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// GETs `url` (`http://host:port/path`) and returns the status code; used by
/// the `healthcheck` subcommand, so a container image needs no curl.
///
/// # Errors
/// When the URL is not plain `http://`, or the server does not answer within `timeout`.
pub async fn http_get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        stream.read_to_end(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    // "HTTP/1.1 200 OK"
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP response"))
}
