//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.
//!
//! Names follow Prometheus conventions: prefix `token_sweeper_`, base units,
//! `_total` on counters, and no label that grows with users or keys.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::{watch, Notify};

use crate::sweep::{CountKind, CountMetric, NodeReport, SweepReport};

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
    /// One per sweep counter with a [`CountMetric::PerNode`].
    per_node: Vec<(CountKind, IntCounterVec)>,
    errors: IntCounterVec,
    last_success: Gauge,
    /// By `node`: when each primary was last swept to the end, so an alert
    /// can find a primary no daemon has finished for a while.
    node_last_success: GaugeVec,
    /// By `node`: 1 when the last sweep of that primary could not finish it.
    node_unfinished: IntGaugeVec,
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
        let unfinished = node.unfinished_reason.is_some();
        self.node_unfinished
            .with_label_values(&label)
            .set(i64::from(unfinished));
        if node.finished {
            self.node_last_success
                .with_label_values(&label)
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
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
    pub fn retain_nodes<'n>(
        &self,
        primaries: impl IntoIterator<Item = &'n str>,
        swept: &BTreeSet<String>,
    ) {
        let primaries: BTreeSet<&str> = primaries.into_iter().collect();
        let mut known = crate::mutex::lock(&self.nodes);
        for node in known.iter() {
            if !primaries.contains(node.as_str()) {
                // Err: no such series; nothing to drop.
                let _ = self.node_last_success.remove_label_values(&[node]);
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

    /// Counts errors of one kind (`oom`, `noperm`, `connection`, `unit_guard`, ...).
    pub fn count_error(&self, kind: &str, n: u64) {
        self.errors.with_label_values(&[kind]).inc_by(n);
    }

    /// Marks now as the time of the last successful sweep.
    pub fn mark_success(&self) {
        self.last_success
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    fn count_http_closed(&self, reason: HttpClosed) {
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

/// What `/readyz` and the `redis_up` gauge ask of the daemon.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok(())` when ready, else a one-line reason. Called per request.
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

struct Endpoints<R> {
    metrics: Metrics,
    readiness: R,
}

/// Most HTTP connections open at once. Prometheus, a probe or two and the
/// `healthcheck` command need a handful; whatever a flood of clients does,
/// the rest of the process's descriptors stay for Redis (the sweep, the
/// cluster client, reconnecting).
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long a client has to send the head of a request (request line and
/// headers): from when its connection opens, and again from each response
/// on a kept-alive connection, so it is the idle timeout too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head accepted; a larger one is answered 431. The
/// endpoints need a few hundred bytes.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// A connection's read buffer at most (hyper's minimum is 8 KiB): with the
/// connection cap, bounds what clients can make the server hold.
const MAX_READ_BUFFER_BYTES: usize = 16 * 1024;

/// How long open connections may finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`
/// completes.
///
/// Whatever clients do, the server holds at most [`MAX_HTTP_CONNECTIONS`]
/// connections, each with a bounded buffer, and closes one that has not sent
/// a complete request head within [`HEADER_READ_TIMEOUT`]. When a connection
/// arrives over the cap, the oldest connection not answering a request right
/// now is closed to make room (a slow or idle client has had the longest to
/// send its request); only when every one is answering a request is the new
/// one closed. So a flood of slow clients cannot keep a probe from getting
/// its answer. Accept errors (such as running out of descriptors) are
/// logged and waited out.
pub async fn serve<R: Readiness>(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    readiness: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state = Arc::new(Endpoints {
        metrics: metrics.clone(),
        readiness,
    });
    let app = axum::Router::new()
        .route("/metrics", get(metrics_page::<R>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<R>))
        .with_state(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER_BYTES);
    let connections = Arc::new(Connections::new(MAX_HTTP_CONNECTIONS));
    let (stop, stopping) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            // Reaps ended connections so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let admitted = match connections.admit() {
            Admission::Admitted(admitted) => admitted,
            Admission::Evicted(admitted) => {
                metrics.count_http_closed(HttpClosed::Evicted);
                admitted
            }
            Admission::Refused => {
                metrics.count_http_closed(HttpClosed::Refused);
                // Dropping the stream closes it at once.
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = AnswerMarking {
            router: TowerToHyperService::new(app.clone()),
            slot: Arc::clone(&admitted.slot),
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tasks.spawn(serve_connection(
            connection,
            admitted,
            stopping.clone(),
            metrics.clone(),
        ));
        // Lets the new connection read the request it may already have sent
        // before further arrivals could count it among the oldest idle ones.
        tokio::task::yield_now().await;
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    // Dropping `tasks` closes whatever is still open.
}

/// Why the server closed an HTTP connection; the `reason` label of
/// `http_connections_closed_total`.
#[derive(Clone, Copy)]
enum HttpClosed {
    Evicted,
    Refused,
    Timeout,
}

impl HttpClosed {
    const ALL: [Self; 3] = [Self::Evicted, Self::Refused, Self::Timeout];

    fn label(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
        }
    }
}

/// Runs one connection until it ends, is evicted (dropping it closes the
/// socket), or the server stops (it may then finish its request).
async fn serve_connection(
    connection: hyper::server::conn::http1::Connection<
        TokioIo<tokio::net::TcpStream>,
        AnswerMarking,
    >,
    admitted: Admitted,
    mut stopping: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let mut connection = std::pin::pin!(connection);
    let stop = async move {
        // The guard `wait_for` returns must not live across an await.
        let _ = stopping.wait_for(|stop| *stop).await.map(drop);
    };
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = admitted.slot.evict.notified() => return,
        () = stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if ended.is_err_and(|e| e.is_timeout()) {
        metrics.count_http_closed(HttpClosed::Timeout);
    }
}

/// An accept that failed. Running out of descriptors (EMFILE) is the likely
/// cause and passes as connections close: wait a moment rather than spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    // The client gave up before it was accepted: nothing to do.
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "metrics: cannot accept an HTTP connection; retrying in 500ms");
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The open HTTP connections, oldest first.
struct Connections {
    max: usize,
    table: Mutex<ConnectionTable>,
}

#[derive(Default)]
struct ConnectionTable {
    next_id: u64,
    /// By id; ids only grow, so the first entry is the oldest connection.
    open: BTreeMap<u64, Arc<Slot>>,
}

/// One open connection, as the table sees it.
#[derive(Default)]
struct Slot {
    /// True while a request on it is being answered.
    answering: AtomicBool,
    /// Told when the connection must close to make room.
    evict: Notify,
}

/// A connection let in; leaves the table when dropped.
struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    slot: Arc<Slot>,
}

enum Admission {
    /// Under the cap.
    Admitted(Admitted),
    /// At the cap: the oldest connection not answering a request was closed.
    Evicted(Admitted),
    /// At the cap, every connection answering a request: close the new one.
    Refused,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max,
            table: Mutex::new(ConnectionTable::default()),
        }
    }

    fn admit(self: &Arc<Self>) -> Admission {
        let mut table = crate::mutex::lock(&self.table);
        let mut evicted = false;
        if table.open.len() >= self.max {
            let idle = table
                .open
                .iter()
                .find(|(_, slot)| !slot.answering.load(Ordering::Relaxed))
                .map(|(&id, _)| id);
            let Some(victim) = idle.and_then(|id| table.open.remove(&id)) else {
                return Admission::Refused;
            };
            victim.evict.notify_one();
            evicted = true;
        }
        let id = table.next_id;
        table.next_id += 1;
        let slot = Arc::new(Slot::default());
        table.open.insert(id, Arc::clone(&slot));
        let admitted = Admitted {
            connections: Arc::clone(self),
            id,
            slot,
        };
        if evicted {
            Admission::Evicted(admitted)
        } else {
            Admission::Admitted(admitted)
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        crate::mutex::lock(&self.connections.table)
            .open
            .remove(&self.id);
    }
}

/// The router, marking its connection's slot as answering while a request
/// is handled, so that it is not the one evicted meanwhile.
#[derive(Clone)]
struct AnswerMarking {
    router: TowerToHyperService<axum::Router>,
    slot: Arc<Slot>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for AnswerMarking {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let answering = Answering::mark(&self.slot);
        let answer = self.router.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(answering);
            response
        })
    }
}

/// Marks a slot as answering a request until dropped (also when the answer
/// is abandoned half-way).
struct Answering(Arc<Slot>);

impl Answering {
    fn mark(slot: &Arc<Slot>) -> Self {
        slot.answering.store(true, Ordering::Relaxed);
        Self(Arc::clone(slot))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.store(false, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> (Admitted, bool) {
        match admission {
            Admission::Admitted(a) => (a, false),
            Admission::Evicted(a) => (a, true),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn over_the_cap_the_oldest_idle_connection_makes_room() {
        let connections = Arc::new(Connections::new(3));
        let (first, _) = admitted(connections.admit());
        let (second, _) = admitted(connections.admit());
        let (third, evicted) = admitted(connections.admit());
        assert!(!evicted);

        // The oldest is answering a request: the next oldest goes.
        let busy = Answering::mark(&first.slot);
        let (fourth, evicted) = admitted(connections.admit());
        assert!(evicted);
        let open: Vec<u64> = crate::mutex::lock(&connections.table)
            .open
            .keys()
            .copied()
            .collect();
        assert_eq!(open, [first.id, third.id, fourth.id]);
        drop(second);

        // Every one answering: the newcomer is refused.
        let _busy = [&third, &fourth].map(|a| Answering::mark(&a.slot));
        assert!(matches!(connections.admit(), Admission::Refused));

        // Done answering: the oldest goes again.
        drop(busy);
        let (_, evicted) = admitted(connections.admit());
        assert!(evicted);
        assert!(!crate::mutex::lock(&connections.table)
            .open
            .contains_key(&first.id));
    }

    #[test]
    fn a_closed_connection_leaves_the_table() {
        let connections = Arc::new(Connections::new(1));
        let (only, _) = admitted(connections.admit());
        drop(only);
        let (_, evicted) = admitted(connections.admit());
        assert!(!evicted, "room again");
    }
}
