//! One sweep: remove every expired member from every token set.
//!
//! The algorithm, in the order it runs:
//!
//! 1. **Clock.** "Now" comes from Redis `TIME` (or the host clock); the two are
//!    compared and the sweep refuses to run when they disagree by more than
//!    `sweep.max_clock_skew`, because a clock running ahead removes live tokens.
//!    `cutoff = floor((now - grace) / unit)`; members with `score <= cutoff` are
//!    expired. Rounding down only ever keeps a member longer.
//! 2. **Scan.** `SCAN cursor MATCH pattern COUNT n TYPE zset`, one page at a
//!    time. Keys are handed on in batches through a bounded channel, so memory
//!    holds at most a few batches whatever the size of the keyspace.
//! 3. **Unit guard.** The first `unit_guard_sample` keys are held back and their
//!    highest finite score is read. If any looks like the other unit (seconds
//!    while sweeping milliseconds would delete every live token), the sweep
//!    stops before a single deletion.
//! 4. **Remove.** Each batch becomes one pipeline of
//!    `ZREMRANGEBYSCORE key -inf cutoff` (`ZCOUNT` in a dry run). Up to
//!    `max_in_flight` pipelines are outstanding on the one multiplexed
//!    connection, and the next SCAN page is requested while they run, so
//!    Redis always has work queued. `max_keys_per_second` paces the batches.
//! 5. **Per-key errors.** A key that stopped being a sorted set between SCAN and
//!    its pipeline (WRONGTYPE) is skipped and counted; other per-key errors
//!    are counted and the first is kept for the report. A failure of the
//!    connection, a missing ACL permission (NOPERM) or a replica (READONLY)
//!    ends the sweep.
//!
//! 6. **Cluster.** Steps 2 to 5 run once per primary, on a connection of its
//!    own (SCAN is per node), up to `sweep.max_parallel_nodes` at a time; the
//!    unit guard of every primary passes before any primary deletes. A key
//!    whose slot moved answers MOVED/ASK and is swept again through the
//!    cluster client, once. A primary counts as finished only when its scan
//!    ran to the end and its slot assignment was the same, with no migration,
//!    before and after; otherwise it is named in `unfinished_nodes` and the
//!    next sweep, which reads the topology afresh, covers it. A standalone
//!    server is the one-node case of the same loop.
//!
//! The sweep never touches a key's TTL and never writes anything but
//! `ZREMRANGEBYSCORE`; an emptied set disappears because Redis deletes empty
//! sorted sets.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{ClockSource, ScoreUnit, SweepSettings};
use crate::redis::{Connection, RedisError};

/// Whether the sweep deletes or only counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    /// `ZREMRANGEBYSCORE`: expired members are removed.
    Remove,
    /// `ZCOUNT`: expired members are counted; nothing changes.
    DryRun,
}

/// Why a sweep stopped before finishing.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The connection failed (unreachable, timed out, closed).
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The sampled scores contradict `sweep.score_unit`; nothing was deleted.
    #[error(
        "unit guard: sweep.score_unit is \"{configured}\" but {suspicious} of {sampled} sampled \
         sets have scores that look like {seen} (key {example_key:?} has {example_score}); \
         nothing was deleted. Fix sweep.score_unit, or set sweep.unit_guard = false if the data \
         is known to be right"
    )]
    UnitGuard {
        /// The unit in the configuration.
        configured: ScoreUnit,
        /// The unit the data looks like.
        seen: ScoreUnit,
        /// Sets whose scores look like `seen`.
        suspicious: usize,
        /// Sets inspected.
        sampled: usize,
        /// One offending key (lossily decoded for printing).
        example_key: String,
        /// Its highest finite score.
        example_score: f64,
    },
    /// The Redis clock and the host clock disagree.
    #[error(
        "clock skew: Redis TIME and the host clock differ by {skew:?}, more than \
         sweep.max_clock_skew ({max:?}); nothing was deleted. Fix the clocks (NTP) or raise \
         sweep.max_clock_skew"
    )]
    ClockSkew {
        /// How far apart the clocks are.
        skew: Duration,
        /// The configured limit.
        max: Duration,
    },
}

/// What a sweep, one node of it, or one pipeline counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Keys returned by SCAN (Redis may return a key twice while it rehashes).
    pub keys_scanned: u64,
    /// Keys that had at least one expired member.
    pub keys_changed: u64,
    /// Expired members removed (in a dry run: that would be removed).
    pub members_removed: u64,
    /// Keys skipped because they stopped being sorted sets between SCAN and
    /// their pipeline.
    pub skipped_wrong_type: u64,
    /// Keys that had moved to another cluster node (MOVED/ASK) and were
    /// swept there through the cluster client.
    pub keys_redirected: u64,
    /// Per-key command errors other than WRONGTYPE.
    pub errors: u64,
}

/// [`Counts`] that concurrent tasks add to.
#[derive(Default)]
struct Counters {
    keys_scanned: AtomicU64,
    keys_changed: AtomicU64,
    members_removed: AtomicU64,
    skipped_wrong_type: AtomicU64,
    keys_redirected: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn fields(&self) -> [&AtomicU64; 6] {
        [
            &self.keys_scanned,
            &self.keys_changed,
            &self.members_removed,
            &self.skipped_wrong_type,
            &self.keys_redirected,
            &self.errors,
        ]
    }

    fn add(&self, counts: &Counts) {
        let values = [
            counts.keys_scanned,
            counts.keys_changed,
            counts.members_removed,
            counts.skipped_wrong_type,
            counts.keys_redirected,
            counts.errors,
        ];
        for (counter, n) in self.fields().into_iter().zip(values) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Counts {
        let [keys_scanned, keys_changed, members_removed, skipped_wrong_type, keys_redirected, errors] =
            self.fields().map(|counter| counter.load(Ordering::Relaxed));
        Counts {
            keys_scanned,
            keys_changed,
            members_removed,
            skipped_wrong_type,
            keys_redirected,
            errors,
        }
    }
}

/// Live counters of a running sweep.
///
/// The sweep adds to them as batches complete; a progress display or a
/// metrics exporter may read them at any time from another task. The final
/// [`SweepReport`] is built from them, so the two never disagree.
#[derive(Default)]
pub struct SweepProgress {
    total: Counters,
    /// The first per-key error message, so a report can say what went wrong.
    first_error: Mutex<Option<String>>,
    /// Told the round-trip time of every pipeline (for a latency histogram).
    batch_timer: Option<BatchTimer>,
}

/// Receives the round-trip time of each pipeline.
type BatchTimer = Box<dyn Fn(Duration) + Send + Sync>;

impl std::fmt::Debug for SweepProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweepProgress")
            .field("keys_scanned", &self.keys_scanned())
            .field("members_removed", &self.members_removed())
            .finish_non_exhaustive()
    }
}

impl SweepProgress {
    /// Counters that also report each pipeline's round-trip time to `timer`.
    pub fn with_batch_timer(timer: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        Self {
            batch_timer: Some(Box::new(timer)),
            ..Self::default()
        }
    }

    /// Keys returned by SCAN so far.
    pub fn keys_scanned(&self) -> u64 {
        self.total.keys_scanned.load(Ordering::Relaxed)
    }

    /// Members removed (or, in a dry run, found expired) so far.
    pub fn members_removed(&self) -> u64 {
        self.total.members_removed.load(Ordering::Relaxed)
    }

    /// Everything counted so far: after a sweep that failed, what it had
    /// done when it stopped (pipelines whose replies were lost not included).
    pub fn counts(&self) -> Counts {
        self.total.snapshot()
    }

    /// The first per-key error so far.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|first| first.clone())
    }
}

/// Where one node's sweep adds its counts: the sweep's totals and the node's own.
#[derive(Clone)]
struct Tally<'a> {
    progress: &'a SweepProgress,
    node: Arc<Counters>,
}

impl Tally<'_> {
    fn scanned(&self, keys: usize) {
        self.add(&BatchOutcome {
            counts: Counts {
                keys_scanned: keys as u64,
                ..Counts::default()
            },
            first_error: None,
        });
    }

    fn add(&self, outcome: &BatchOutcome) {
        self.progress.total.add(&outcome.counts);
        self.node.add(&outcome.counts);
        if let Some(message) = &outcome.first_error {
            if let Ok(mut first) = self.progress.first_error.lock() {
                first.get_or_insert_with(|| message.clone());
            }
        }
    }
}

/// What one sweep did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepReport {
    /// Remove or dry run.
    pub mode: SweepMode,
    /// Members with a score at or below this were expired.
    pub cutoff: i64,
    /// Unit of `cutoff`.
    pub score_unit: String,
    /// What it counted, over every node (flattened into the JSON report).
    #[serde(flatten)]
    pub counts: Counts,
    /// The first of those errors, if any.
    pub first_error: Option<String>,
    /// Wall time of the sweep.
    pub duration_seconds: f64,
    /// `keys_scanned / duration_seconds`.
    pub keys_per_second: f64,
    /// True when a shutdown request stopped the scan early; the keys not yet
    /// scanned were left for the next sweep.
    pub interrupted: bool,
    /// Nodes that failed or whose slots moved while they were swept: some of
    /// their keys may not have been seen. The next sweep covers them.
    pub unfinished_nodes: Vec<String>,
    /// Per node (one entry for a single server, one per primary of a cluster).
    pub nodes: Vec<NodeReport>,
}

/// What one sweep did on one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeReport {
    /// `host:port`.
    pub node: String,
    /// What it counted on this node (flattened into the JSON report).
    #[serde(flatten)]
    pub counts: Counts,
    /// True when every key of this node's slots was seen.
    pub finished: bool,
    /// Why not, when not finished.
    pub unfinished_reason: Option<String>,
}

/// What one pipeline of keys did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Its counts (`keys_scanned` stays 0: the scan counts those).
    pub counts: Counts,
    /// The first per-key error other than WRONGTYPE.
    pub first_error: Option<String>,
}

/// Runs one sweep over every key matching `settings.pattern`, on every
/// primary of `conn` (the one server, or each primary of a cluster).
///
/// `shutdown` ends the scan early when it completes: pipelines already sent
/// finish and are counted, nothing more is sent, and the report says
/// `interrupted`. Pass `std::future::pending()` for a sweep that always runs
/// to the end.
///
/// # Errors
/// [`SweepError`] when Redis cannot be reached (in a cluster: no primary
/// could be swept), or when the clock check or the unit guard refuses to
/// sweep (in which case nothing was deleted). A cluster sweep that reached
/// only some primaries returns a report naming the others in
/// [`SweepReport::unfinished_nodes`].
pub async fn sweep(
    conn: &Connection,
    settings: &SweepSettings,
    mode: SweepMode,
    progress: &SweepProgress,
    shutdown: impl Future<Output = ()>,
) -> Result<SweepReport, SweepError> {
    let nodes: Vec<String> = conn
        .primaries()
        .await?
        .into_iter()
        .map(|primary| primary.address)
        .collect();
    sweep_nodes(conn, &nodes, settings, mode, progress, shutdown).await
}

/// [`sweep`] over the given primaries only (addresses from
/// [`Connection::primaries`]); the daemon uses it to sweep the primaries
/// it holds leases on.
///
/// # Errors
/// As [`sweep`].
pub async fn sweep_nodes(
    conn: &Connection,
    nodes: &[String],
    settings: &SweepSettings,
    mode: SweepMode,
    progress: &SweepProgress,
    shutdown: impl Future<Output = ()>,
) -> Result<SweepReport, SweepError> {
    let started = Instant::now();
    let now_micros = read_clock(conn, settings).await?;
    let cutoff = cutoff_for(now_micros, settings.grace, settings.score_unit);
    tracing::debug!(cutoff, unit = %settings.score_unit, ?mode, nodes = nodes.len(), "sweep starting");
    let parallel = usize::try_from(settings.max_parallel_nodes)
        .unwrap_or(1)
        .max(1);
    let shutdown = Box::pin(shutdown).shared();

    // Every node's unit guard passes before any node deletes: a wrong unit
    // seen on the last primary must not find the first one already swept.
    // (The futures are made by an iterator, not a stream combinator: a
    // closure over borrowed items there trips rustc's higher-ranked `Send`
    // check for the daemon's boxed future. They are lazy either way.)
    let starts: Vec<_> = nodes
        .iter()
        .map(|address| {
            NodeSweep::start(
                conn,
                address,
                settings,
                now_micros,
                progress,
                shutdown.clone(),
            )
        })
        .collect();
    let started_nodes: Vec<Result<NodeSweep<'_>, NodeFailed>> = stream::iter(starts)
        .buffered(parallel)
        .try_collect()
        .await?;

    let finishes: Vec<_> = started_nodes
        .into_iter()
        .map(|node| {
            let shutdown = shutdown.clone();
            async move {
                match node {
                    Ok(node) => node.finish(cutoff, mode, shutdown).await,
                    Err(failed) => failed.report(),
                }
            }
        })
        .collect();
    let ended: Vec<(NodeReport, Option<RedisError>)> = stream::iter(finishes)
        .buffer_unordered(parallel)
        .collect()
        .await;

    let mut nodes = Vec::with_capacity(ended.len());
    let mut failures = Vec::new();
    for (report, failure) in ended {
        failures.extend(failure);
        nodes.push(report);
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    // Every node failed: that is Redis failing (down, wrong credentials, no
    // permission), reported as such rather than as a partial sweep.
    if failures.len() == nodes.len() {
        if let Some(failure) = failures.into_iter().next() {
            return Err(failure.into());
        }
    }
    let interrupted = nodes
        .iter()
        .any(|n| !n.finished && n.unfinished_reason.is_none());

    let duration = started.elapsed();
    let counts = progress.counts();
    Ok(SweepReport {
        mode,
        cutoff,
        score_unit: settings.score_unit.to_string(),
        keys_per_second: rate(counts.keys_scanned, duration),
        counts,
        first_error: progress.first_error(),
        duration_seconds: duration.as_secs_f64(),
        interrupted,
        unfinished_nodes: nodes
            .iter()
            .filter(|n| n.unfinished_reason.is_some())
            .map(|n| n.node.clone())
            .collect(),
        nodes,
    })
}

/// A node that could not be swept at all.
struct NodeFailed {
    address: String,
    error: RedisError,
}

impl NodeFailed {
    fn report(self) -> (NodeReport, Option<RedisError>) {
        let report = NodeReport::new(
            self.address,
            &Counters::default(),
            Some(self.error.to_string()),
        );
        (report, Some(self.error))
    }
}

impl NodeReport {
    fn new(node: String, counts: &Counters, unfinished_reason: Option<String>) -> Self {
        Self {
            node,
            counts: counts.snapshot(),
            finished: false,
            unfinished_reason,
        }
    }
}

/// One node's sweep, between its unit guard and its end.
struct NodeSweep<'a> {
    address: String,
    /// Direct to the node; SCAN and the pipelines go here.
    conn: Connection,
    /// The node's slot assignment before the scan (`None`: not a cluster).
    assignment: Option<String>,
    scanner: Scanner<'a>,
    tally: Tally<'a>,
    /// Shutdown came during the unit-guard sample.
    interrupted: bool,
}

impl<'a> NodeSweep<'a> {
    /// Connects to the node and runs its unit guard. The outer error aborts
    /// the whole sweep (unit guard); the inner one is this node failing.
    async fn start(
        conn: &Connection,
        address: &str,
        settings: &'a SweepSettings,
        now_micros: i128,
        progress: &'a SweepProgress,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Result<NodeSweep<'a>, NodeFailed>, SweepError> {
        let failed = |error| {
            Ok(Err(NodeFailed {
                address: address.to_owned(),
                error,
            }))
        };
        let mut node_conn = match conn.node(address).await {
            Ok(node_conn) => node_conn,
            Err(e) => return failed(e),
        };
        let assignment = match node_conn.slot_assignment().await {
            Ok(assignment) => assignment,
            Err(e) => return failed(e),
        };
        let tally = Tally {
            progress,
            node: Arc::default(),
        };
        let mut scanner = Scanner::new(node_conn.clone(), settings, tally.clone());
        let sample = if settings.unit_guard {
            usize::try_from(settings.unit_guard_sample).unwrap_or(usize::MAX)
        } else {
            0
        };
        let interrupted = match scanner.fill(sample, shutdown).await {
            Ok(interrupted) => interrupted,
            Err(e) => return failed(e),
        };
        if !interrupted && sample > 0 {
            let keys = &scanner.pending[..scanner.pending.len().min(sample)];
            match check_units(&mut node_conn, keys, settings.score_unit, now_micros).await {
                Ok(()) => {}
                Err(SweepError::Redis(e)) => return failed(e),
                Err(refused) => return Err(refused),
            }
        }
        Ok(Ok(NodeSweep {
            address: address.to_owned(),
            conn: node_conn,
            assignment,
            scanner,
            tally,
            interrupted,
        }))
    }

    /// Scans the rest of the node and removes, up to `max_in_flight`
    /// pipelines at a time; then checks the slots did not move meanwhile.
    async fn finish(
        mut self,
        cutoff: i64,
        mode: SweepMode,
        shutdown: impl Future<Output = ()>,
    ) -> (NodeReport, Option<RedisError>) {
        let scanned = if self.interrupted {
            Ok(true)
        } else {
            self.scan_and_remove(cutoff, mode, shutdown).await
        };
        let (finished, reason, error) = match scanned {
            // Interrupted: unfinished, but nothing went wrong.
            Ok(true) => (false, None, None),
            Ok(false) => match self.check_assignment().await {
                Ok(None) => (true, None, None),
                Ok(Some(reason)) => (false, Some(reason), None),
                Err(e) => (false, Some(e.to_string()), Some(e)),
            },
            Err(e) => (false, Some(e.to_string()), Some(e)),
        };
        let mut report = NodeReport::new(self.address, &self.tally.node, reason);
        report.finished = finished;
        (report, error)
    }

    /// Returns whether `shutdown` cut the scan short.
    async fn scan_and_remove(
        &mut self,
        cutoff: i64,
        mode: SweepMode,
        shutdown: impl Future<Output = ()>,
    ) -> Result<bool, RedisError> {
        // Capacity = max_in_flight: the scanner may run one channel's worth
        // ahead of the pipelines, which bounds memory to about
        // 2 * max_in_flight batches per node.
        let in_flight = usize::try_from(self.scanner.settings.max_in_flight)
            .unwrap_or(1)
            .max(1);
        let (batches_tx, mut batches_rx) = mpsc::channel::<Vec<Vec<u8>>>(in_flight);
        let scanning = self.scanner.run(batches_tx, shutdown);
        let conn = &self.conn;
        let tally = &self.tally;
        let removing = stream::poll_fn(|cx| batches_rx.poll_recv(cx))
            .map(|batch| {
                let mut conn = conn.clone();
                async move {
                    let sent = Instant::now();
                    let outcome = sweep_keys(&mut conn, &batch, cutoff, mode).await;
                    if let Some(timer) = &tally.progress.batch_timer {
                        timer(sent.elapsed());
                    }
                    outcome
                }
            })
            .buffer_unordered(in_flight)
            .try_for_each(|outcome| {
                tally.add(&outcome);
                std::future::ready(Ok(()))
            });
        let (interrupted, ()) = tokio::try_join!(scanning, removing)?;
        Ok(interrupted)
    }

    /// `Some(reason)` when the node's slots moved or were migrating while it
    /// was scanned: keys may have left ahead of the cursor unseen.
    async fn check_assignment(&mut self) -> Result<Option<String>, RedisError> {
        let Some(before) = self.assignment.take() else {
            return Ok(None);
        };
        let after = self.conn.slot_assignment().await?.unwrap_or_default();
        Ok(if before != after {
            Some("its slots changed during the sweep (resharding or failover)".to_owned())
        } else if before.contains('[') {
            Some("a slot migration was in progress during the sweep".to_owned())
        } else {
            None
        })
    }
}

/// "Now" in microseconds since the Unix epoch, after the clock-skew check.
async fn read_clock(conn: &Connection, settings: &SweepSettings) -> Result<i128, SweepError> {
    let needs_redis_time =
        settings.clock == ClockSource::Redis || !settings.max_clock_skew.is_zero();
    let redis_now = if needs_redis_time {
        let mut conn = conn.clone();
        let (secs, micros): (i64, i64) = conn.query("TIME", &redis::cmd("TIME")).await?;
        Some(i128::from(secs) * 1_000_000 + i128::from(micros))
    } else {
        None
    };
    let local_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_micros()).unwrap_or(i128::MAX))
        // A host clock before 1970 is broken: treat it as 0 so the skew check
        // (or, with the check off, the cutoff) errs towards removing nothing.
        .unwrap_or(0);
    if let Some(redis_now) = redis_now {
        let skew = Duration::from_micros(
            u64::try_from((redis_now - local_now).unsigned_abs()).unwrap_or(u64::MAX),
        );
        if !settings.max_clock_skew.is_zero() && skew > settings.max_clock_skew {
            return Err(SweepError::ClockSkew {
                skew,
                max: settings.max_clock_skew,
            });
        }
    }
    Ok(match (settings.clock, redis_now) {
        (ClockSource::Redis, Some(redis_now)) => redis_now,
        _ => local_now,
    })
}

/// The highest score that counts as expired: `floor((now - grace) / unit)`.
///
/// ```
/// use std::time::Duration;
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::cutoff_for;
///
/// // 1_700_000_000.999_999 s, no grace
/// let now = 1_700_000_000_999_999;
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Seconds), 1_700_000_000);
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Milliseconds), 1_700_000_000_999);
/// assert_eq!(cutoff_for(now, Duration::from_secs(60), ScoreUnit::Seconds), 1_699_999_940);
/// ```
pub fn cutoff_for(now_micros: i128, grace: Duration, unit: ScoreUnit) -> i64 {
    let grace = i128::try_from(grace.as_micros()).unwrap_or(i128::MAX);
    let cutoff = now_micros.saturating_sub(grace).div_euclid(unit.micros());
    // Saturating keeps an absurd grace from wrapping into a huge positive cutoff.
    i64::try_from(cutoff).unwrap_or(if cutoff < 0 { i64::MIN } else { i64::MAX })
}

/// Sends one pipeline over `keys`: `ZREMRANGEBYSCORE key -inf cutoff`
/// (or `ZCOUNT` in a dry run), and tallies the replies.
///
/// On a connection to one cluster node, keys that answer MOVED (their slot
/// moved) are sent again, one command each, through the cluster client, which
/// routes them by slot; keys that answer ASK (their slot is being migrated)
/// go to the node named, after `ASKING`. A redirected key did nothing where
/// it was first sent, so it is counted once, where it lives now.
///
/// Public so that callers sweeping keys they found another way (a list of
/// users) use the exact same command.
///
/// # Errors
/// [`RedisError::Command`] when the pipeline as a whole fails (connection
/// lost, timeout). Per-key errors are counted in the outcome instead.
pub async fn sweep_keys(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    cutoff: i64,
    mode: SweepMode,
) -> Result<BatchOutcome, RedisError> {
    let command = match mode {
        SweepMode::Remove => "ZREMRANGEBYSCORE",
        SweepMode::DryRun => "ZCOUNT",
    };
    let sweep_cmd = |key: &[u8]| {
        let mut cmd = redis::cmd(command);
        cmd.arg(key).arg("-inf").arg(cutoff);
        cmd
    };
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.add_command(sweep_cmd(key));
    }
    let replies: Vec<redis::RedisResult<u64>> =
        match pipe.ignore_errors().query_async(&mut *conn).await {
            Ok(replies) => replies,
            Err(e) => return Err(conn.error(command, e)),
        };
    let mut outcome = BatchOutcome::default();
    let mut moved = Vec::new();
    for (key, reply) in keys.iter().zip(replies) {
        match reply {
            Err(e) if e.code() == Some("MOVED") => moved.push((key, None)),
            Err(e) if e.code() == Some("ASK") => {
                let importing = e.redirect_node().map(|(address, _slot)| address.to_owned());
                moved.push((key, importing));
            }
            reply => outcome
                .tally(command, reply)
                .map_err(|e| conn.error(command, e))?,
        }
    }
    if moved.is_empty() {
        return Ok(outcome);
    }
    let Some(cluster) = conn.cluster() else {
        // A single server answering MOVED is a cluster node swept as standalone.
        outcome.counts.errors += moved.len() as u64;
        outcome.first_error.get_or_insert_with(|| {
            format!(
                "{command}: MOVED: {} is a Redis Cluster node; set redis.mode = \"cluster\"",
                conn.address()
            )
        });
        return Ok(outcome);
    };
    let retries = moved.iter().map(|(key, redirect)| {
        let mut cluster = cluster.clone();
        let cmd = sweep_cmd(key);
        async move {
            match redirect {
                // The slot is being migrated: the key is at the node named.
                Some(importing) => cluster.query_asking::<u64>(importing, &cmd).await,
                // The slot moved for good: the cluster client routes by slot.
                None => cmd.query_async::<u64>(&mut cluster).await,
            }
        }
    });
    for reply in futures_util::future::join_all(retries).await {
        outcome.counts.keys_redirected += 1;
        outcome
            .tally(command, reply)
            .map_err(|e| cluster.error(command, e))?;
    }
    Ok(outcome)
}

impl BatchOutcome {
    /// Counts one key's reply. Errors that are not about the key (missing ACL
    /// permission, a replica, a cluster that is down) are returned: every other key would fail the
    /// same way, so the node's sweep stops with the server's own message.
    fn tally(
        &mut self,
        command: &str,
        reply: redis::RedisResult<u64>,
    ) -> Result<(), redis::RedisError> {
        match reply {
            Ok(0) => {}
            Ok(removed) => {
                self.counts.keys_changed += 1;
                self.counts.members_removed += removed;
            }
            Err(e) if e.code() == Some("WRONGTYPE") => self.counts.skipped_wrong_type += 1,
            // CLUSTERDOWN: the node refuses keyed commands until the
            // cluster is whole again; the next sweep retries it.
            Err(e) if matches!(e.code(), Some("NOPERM" | "READONLY" | "CLUSTERDOWN")) => {
                return Err(e)
            }
            Err(e) => {
                self.counts.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{command}: {e}"));
            }
        }
        Ok(())
    }
}

/// The SCAN side of one node's sweep: pages through its keyspace, paces, and
/// hands batches to the pipelines.
struct Scanner<'a> {
    conn: Connection,
    settings: &'a SweepSettings,
    tally: Tally<'a>,
    /// Keys per batch, lowered under a rate limit so pacing stays smooth.
    batch_size: usize,
    /// Where the next SCAN continues.
    cursor: u64,
    /// The last SCAN returned cursor 0: the node has no more keys to give.
    finished: bool,
    /// Keys scanned, not yet sent.
    pending: Vec<Vec<u8>>,
}

impl<'a> Scanner<'a> {
    fn new(conn: Connection, settings: &'a SweepSettings, tally: Tally<'a>) -> Self {
        let mut batch_size = usize::try_from(settings.batch_size).unwrap_or(usize::MAX);
        if settings.max_keys_per_second > 0 {
            // About ten batches a second: a limit of 50/s should not mean one
            // burst of 1000 keys every 20 seconds.
            let per_tenth = usize::try_from(settings.max_keys_per_second / 10).unwrap_or(1);
            batch_size = batch_size.min(per_tenth.max(1));
        }
        Self {
            conn,
            settings,
            tally,
            batch_size: batch_size.max(1),
            cursor: 0,
            finished: false,
            pending: Vec::new(),
        }
    }

    /// One SCAN page into `pending`, unless `shutdown` comes first (true).
    async fn next_page(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, RedisError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(self.cursor)
            .arg("MATCH")
            .arg(&self.settings.pattern)
            .arg("COUNT")
            .arg(self.settings.scan_count)
            .arg("TYPE")
            .arg("zset");
        let (cursor, keys) = tokio::select! {
            biased;
            () = shutdown.as_mut() => return Ok(true),
            page = self.conn.query::<(u64, Vec<Vec<u8>>)>("SCAN", &scan) => page?,
        };
        self.cursor = cursor;
        self.finished = cursor == 0;
        self.tally.scanned(keys.len());
        self.pending.extend(keys);
        Ok(false)
    }

    /// Scans until at least `keys` keys are pending or the node is exhausted
    /// (for the unit guard's sample). Returns whether `shutdown` came first.
    async fn fill(
        &mut self,
        keys: usize,
        shutdown: impl Future<Output = ()>,
    ) -> Result<bool, RedisError> {
        let mut shutdown = std::pin::pin!(shutdown);
        while self.pending.len() < keys && !self.finished {
            if self.next_page(&mut shutdown).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Scans to the end, sending full batches as they fill. Returns whether
    /// `shutdown` cut the scan short.
    async fn run(
        &mut self,
        batches: mpsc::Sender<Vec<Vec<u8>>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<bool, RedisError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let pacer = Pacer::new(self.settings.max_keys_per_second);
        let mut sent: u64 = 0;
        loop {
            while self.pending.len() >= self.batch_size
                || (self.finished && !self.pending.is_empty())
            {
                let rest = self
                    .pending
                    .split_off(self.pending.len().min(self.batch_size));
                let batch = std::mem::replace(&mut self.pending, rest);
                sent += batch.len() as u64;
                pacer.wait_for(sent).await;
                if batches.send(batch).await.is_err() {
                    // The pipelines side has stopped; its error is what
                    // try_join reports.
                    return Ok(false);
                }
            }
            if self.finished {
                return Ok(false);
            }
            if self.next_page(&mut shutdown).await? {
                return Ok(true);
            }
        }
    }
}

/// Keeps the average rate at or below `max_keys_per_second`.
struct Pacer {
    started: tokio::time::Instant,
    keys_per_second: u64,
}

impl Pacer {
    fn new(keys_per_second: u64) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            keys_per_second,
        }
    }

    /// Sleeps until `sent` keys are within the budget.
    async fn wait_for(&self, sent: u64) {
        if self.keys_per_second == 0 {
            return;
        }
        // The first batch goes at once; batch n waits until n-1 batches' worth
        // of time has passed.
        let due = Duration::from_secs_f64(sent as f64 / self.keys_per_second as f64);
        tokio::time::sleep_until(self.started + due).await;
    }
}

/// How far from now a score may be and still look like a timestamp of a unit.
/// 20 years back, 50 ahead: the seconds window and the milliseconds window are
/// three orders of magnitude apart, so real data cannot fall in the wrong one.
const PLAUSIBLE_PAST: i128 = 20 * 365 * 86_400;
const PLAUSIBLE_FUTURE: i128 = 50 * 365 * 86_400;

/// Which unit a score looks like, if it looks like a timestamp near now at all.
///
/// ```
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::looks_like;
///
/// let now = 1_700_000_000 * 1_000_000; // microseconds
/// assert_eq!(looks_like(1_700_086_400.0, now), Some(ScoreUnit::Seconds));
/// assert_eq!(looks_like(1_700_086_400_000.0, now), Some(ScoreUnit::Milliseconds));
/// assert_eq!(looks_like(42.0, now), None);
/// ```
pub fn looks_like(score: f64, now_micros: i128) -> Option<ScoreUnit> {
    if !score.is_finite() {
        return None;
    }
    let now_secs = now_micros.div_euclid(1_000_000) as f64;
    [ScoreUnit::Seconds, ScoreUnit::Milliseconds]
        .into_iter()
        .find(|unit| {
            let per_second = (1_000_000 / unit.micros()) as f64;
            let low = (now_secs - PLAUSIBLE_PAST as f64) * per_second;
            let high = (now_secs + PLAUSIBLE_FUTURE as f64) * per_second;
            (low..=high).contains(&score)
        })
}

/// `ZREVRANGEBYSCORE ... WITHSCORES LIMIT 0 1`: at most one (member, score).
type HighestScore = Vec<(Vec<u8>, f64)>;

/// The unit guard: reads the highest finite score of each sampled key and
/// refuses to go on when any looks like the other unit.
async fn check_units(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    unit: ScoreUnit,
    now_micros: i128,
) -> Result<(), SweepError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for key in keys {
        // "(+inf": members scored +inf (tokens that never expire) say nothing
        // about the unit; the highest finite score is the newest token.
        pipe.cmd("ZREVRANGEBYSCORE")
            .arg(key)
            .arg("(+inf")
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
    }
    let replies: Vec<redis::RedisResult<HighestScore>> =
        match pipe.ignore_errors().query_async(&mut *conn).await {
            Ok(replies) => replies,
            Err(e) => return Err(conn.error("ZREVRANGEBYSCORE (unit guard)", e).into()),
        };
    let mut suspicious = keys.iter().zip(replies).filter_map(|(key, reply)| {
        // A key that vanished or changed type since SCAN has nothing to say.
        let (_, score) = reply.ok()?.into_iter().next()?;
        let seen = looks_like(score, now_micros)?;
        (seen != unit).then_some((key, score, seen))
    });
    let Some((example_key, example_score, seen)) = suspicious.next() else {
        return Ok(());
    };
    Err(SweepError::UnitGuard {
        configured: unit,
        seen,
        suspicious: 1 + suspicious.count(),
        sampled: keys.len(),
        example_key: String::from_utf8_lossy(example_key).into_owned(),
        example_score,
    })
}

fn rate(count: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_rounds_down_before_the_epoch_too() {
        assert_eq!(cutoff_for(-1, Duration::ZERO, ScoreUnit::Milliseconds), -1);
        assert_eq!(
            cutoff_for(1_500, Duration::ZERO, ScoreUnit::Milliseconds),
            1
        );
        // An absurd grace saturates to "nothing is expired" instead of wrapping.
        assert_eq!(
            cutoff_for(0, Duration::from_secs(u64::MAX), ScoreUnit::Seconds),
            i64::MIN
        );
    }

    #[test]
    fn units_do_not_overlap() {
        let now = 1_795_836_033 * 1_000_000;
        assert_eq!(looks_like(1_795_836_033.0, now), Some(ScoreUnit::Seconds));
        assert_eq!(
            looks_like(1_795_836_033_000.0, now),
            Some(ScoreUnit::Milliseconds)
        );
        // Long-lived tokens in either unit still classify.
        assert_eq!(
            looks_like(1_795_836_033.0 + 30.0 * 365.0 * 86_400.0, now),
            Some(ScoreUnit::Seconds)
        );
        assert_eq!(looks_like(f64::INFINITY, now), None);
        assert_eq!(looks_like(0.0, now), None);
    }
}
