//! One sweep: remove every expired member from every token set.
//!
//! Every check before the first deletion fails closed: an answer that is not
//! what the check needs (a refused command, a reply of the wrong shape, an
//! impossible clock) stops the sweep with [`SweepError::SafetyCheck`] naming
//! the check, and is never read as "all clear". The algorithm, in the order
//! it runs:
//!
//! 1. **Clock.** "Now" comes from Redis `TIME` (or the host clock); the two are
//!    compared and the sweep refuses to run when they disagree by more than
//!    `sweep.max_clock_skew`, because a clock running ahead removes live tokens.
//!    With the host clock (`sweep.clock = "local"`), "now" is the earlier of
//!    the two: Redis `TIME` is the clock the auth path judges tokens by.
//!    `TIME` must answer two decimal integers; a host clock before 1970 is
//!    refused. `cutoff = floor((now - grace) / unit)`; members with
//!    `score <= cutoff` are expired. Rounding down only ever keeps a member
//!    longer; a cutoff above 2^53, which Redis would round, is refused. In
//!    milliseconds, scores at or below 10^12 ([`removal_floor`], a constant
//!    above every seconds timestamp) are never removed: see [`Expired`].
//! 2. **Scan.** `SCAN cursor MATCH pattern COUNT n TYPE zset`, one page at a
//!    time. Keys are handed on in batches through a bounded channel, so memory
//!    holds at most a few batches whatever the size of the keyspace.
//! 3. **Unit guard.** The keys scanned first are held back and their highest
//!    finite score is read, until `unit_guard_sample` have confirmed the unit
//!    (reading at most [`GUARD_READ_FACTOR`] times that many keys). If any looks like the
//!    other unit (a wrong `sweep.score_unit`), the sweep stops before a
//!    single deletion. Every key read must
//!    give a definite answer; only a score that looks like the configured
//!    unit is evidence. One with nothing to say (deleted since SCAN, only
//!    `+inf` members, in milliseconds nothing above the removal floor) is
//!    fine, but if none confirmed the unit and the node has keys left
//!    unread, or a set read has a score that looks like neither unit, the
//!    guard refuses: it has no evidence.
//!    Last, one command of the kind the sweep will send is run on a sampled
//!    key over an empty score range ([`Check::Permission`]), so that a user
//!    who may read but not remove is refused here, before a daemon takes a
//!    lease, and not at the first pipeline.
//! 4. **Remove.** Each batch becomes one pipeline of
//!    `ZREMRANGEBYSCORE key <min> cutoff` (`ZCOUNT` in a dry run), `<min>`
//!    being `-inf` in seconds and `(<removal floor>` in milliseconds. Up to
//!    `max_in_flight` pipelines are outstanding on the one multiplexed
//!    connection, and the next SCAN page is requested while they run, so
//!    Redis always has work queued. `max_keys_per_second` paces the batches.
//! 5. **Per-key errors.** A key that stopped being a sorted set between SCAN and
//!    its pipeline (WRONGTYPE) is skipped and counted; other per-key errors
//!    are counted and the first is kept for the report. A failure of the
//!    connection, a missing ACL permission (NOPERM) or a replica (READONLY)
//!    ends the sweep.
//! 6. **Cluster.** The primaries come from `CLUSTER NODES`, parsed strictly
//!    (a malformed line, or no primary serving slots, stops the sweep).
//!    Steps 2 to 5 run once per primary, on a connection of its own (SCAN is
//!    per node), up to `sweep.max_parallel_nodes` at a time; the unit guard
//!    of every primary passes before any primary deletes. A key SCAN finds
//!    on a node that is importing its slot (an open migration) is read and
//!    swept there, right after `ASKING`. A key whose slot moved answers
//!    MOVED/ASK and is read (guard) or swept again where it lives now, once.
//!    A primary counts as finished only when, by its own
//!    `CLUSTER NODES` line, it served the slots it was chosen for when its
//!    sweep started, its scan ran to the end, and its slots and config epoch
//!    were the same, with no migration, before and after; otherwise it is
//!    named in `unfinished_nodes` and the next sweep, which reads the
//!    topology afresh, covers it. A standalone server is the one-node case
//!    of the same loop.
//!
//! Steps 1 and 3, the checks that can refuse, run on every primary before
//! anything else: [`prepare`] runs them alone and returns a
//! [`PreparedSweep`], so that a caller that must commit to nothing unless
//! the sweep can run (the daemon, before it registers or takes a lease)
//! can check first, keep only some primaries, then run the rest. A
//! [`SweepProgress::on_node_end`] hook hears of each primary as it ends.
//!
//! The sweep never touches a key's TTL and never writes anything but
//! `ZREMRANGEBYSCORE`; an emptied set disappears because Redis deletes empty
//! sorted sets.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{ClockSource, ScoreUnit, SweepSettings};
use crate::store::{key_slot, Connection, Primary, SlotAssignment, StoreError};
use redis::Value;

/// Whether the sweep deletes or only counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    /// `ZREMRANGEBYSCORE`: expired members are removed.
    Remove,
    /// `ZCOUNT`: expired members are counted; nothing changes.
    DryRun,
}

impl SweepMode {
    /// The command the sweep sends per key.
    fn command(self) -> &'static str {
        match self {
            Self::Remove => "ZREMRANGEBYSCORE",
            Self::DryRun => "ZCOUNT",
        }
    }
}

/// Why a sweep stopped before finishing.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The connection failed (unreachable, timed out, closed), or a command
    /// outside the safety checks failed. When the connection was lost during
    /// a safety check, this variant (not [`SweepError::SafetyCheck`]) says
    /// so, naming the check in the failed step, so that a daemon reconnects.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// A safety check could not get the answer it needs (a refused command,
    /// a reply of the wrong shape, an impossible clock); nothing was deleted.
    #[error("{check} could not run, so nothing was deleted: {reason}")]
    SafetyCheck {
        /// The check.
        check: Check,
        /// Why it could not run.
        reason: String,
        /// When Redis refused the check's command: the kind of refusal
        /// ([`StoreError::kind`]: `noperm`, `oom`, ...), which is what an
        /// operator has to fix.
        refusal: Option<&'static str>,
    },
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

impl SweepError {
    /// What failed, for the `kind` label of `errors_total`: the Redis
    /// error's kind (`connection`, `noperm`, `oom`, ...; also when Redis
    /// refused a safety check's command, since that is what has to be
    /// fixed), else the check that refused (`unit_guard`, `clock_skew`,
    /// `clock`, `cutoff`, `cluster_topology`, `permission`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(e) => e.kind(),
            Self::SafetyCheck {
                refusal: Some(kind),
                ..
            } => kind,
            Self::SafetyCheck { check, .. } => check.label(),
            Self::UnitGuard { .. } => Check::UnitGuard.label(),
            Self::ClockSkew { .. } => Check::ClockSkew.label(),
        }
    }
}

/// The checks that run before a sweep deletes anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Reading "now": Redis `TIME` or the host clock.
    Clock,
    /// Comparing the Redis clock with the host clock.
    ClockSkew,
    /// Turning "now" and the grace into the score cutoff.
    Cutoff,
    /// Reading the primaries of a cluster from `CLUSTER NODES`.
    ClusterTopology,
    /// Reading sampled scores to confirm `sweep.score_unit`.
    UnitGuard,
    /// Running the sweep's own command (`ZREMRANGEBYSCORE`, or `ZCOUNT` in a
    /// dry run) on a sampled key over an empty score range: proves the ACL
    /// user may run it there before anything commits to the sweep.
    Permission,
}

impl Check {
    /// A short name for metrics labels: `clock`, `clock_skew`, `cutoff`,
    /// `cluster_topology`, `unit_guard`, `permission`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Clock => "clock",
            Self::ClockSkew => "clock_skew",
            Self::Cutoff => "cutoff",
            Self::ClusterTopology => "cluster_topology",
            Self::UnitGuard => "unit_guard",
            Self::Permission => "permission",
        }
    }

    /// The check stopped on `error`. A lost connection stays
    /// [`SweepError::Redis`], which a daemon answers by reconnecting; any
    /// other failure (Redis answered, but not with what the check needs) is
    /// [`SweepError::SafetyCheck`]. Either way the sweep stops here.
    fn failed(self, error: StoreError) -> SweepError {
        if error.is_connection_lost() {
            SweepError::Redis(error)
        } else {
            SweepError::SafetyCheck {
                check: self,
                reason: error.to_string(),
                refusal: Some(error.kind()),
            }
        }
    }

    fn refused(self, reason: String) -> SweepError {
        SweepError::SafetyCheck {
            check: self,
            reason,
            refusal: None,
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Clock => "the clock check",
            Self::ClockSkew => "the clock skew check",
            Self::Cutoff => "the cutoff check",
            Self::ClusterTopology => "the cluster topology check",
            Self::UnitGuard => "the unit guard",
            Self::Permission => "the permission check",
        })
    }
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

impl Counts {
    /// The fields in the order of [`Counters::fields`].
    fn values(&self) -> [u64; 6] {
        [
            self.keys_scanned,
            self.keys_changed,
            self.members_removed,
            self.skipped_wrong_type,
            self.keys_redirected,
            self.errors,
        ]
    }
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
        for (counter, n) in self.fields().into_iter().zip(counts.values()) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn sub(&self, counts: &Counts) {
        for (counter, n) in self.fields().into_iter().zip(counts.values()) {
            counter.fetch_sub(n, Ordering::Relaxed);
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
    /// Told of each node as its sweep ends.
    node_end: Option<NodeEnd>,
}

/// Receives the round-trip time of each pipeline.
type BatchTimer = Box<dyn Fn(Duration) + Send + Sync>;

/// Receives each node's report as that node's sweep ends.
type NodeEnd = Box<dyn Fn(&NodeReport) + Send + Sync>;

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

    /// Also tells `hook` of each node as its sweep ends (finished or not),
    /// with that node's report, while the other nodes may still be swept:
    /// a daemon hands back that node's lease and stamps its metrics then,
    /// not when the slowest node of the sweep is done. Called once for
    /// every node [`PreparedSweep::run`] sweeps, from the sweeping task:
    /// it must not block.
    #[must_use]
    pub fn on_node_end(mut self, hook: impl Fn(&NodeReport) + Send + Sync + 'static) -> Self {
        self.node_end = Some(Box::new(hook));
        self
    }

    fn node_ended(&self, report: &NodeReport) {
        if let Some(hook) = &self.node_end {
            hook(report);
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

    /// Takes what this node counted back out of the sweep's totals: the
    /// node was prepared but is not swept.
    fn retract(&self) {
        self.progress.total.sub(&self.node.snapshot());
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
    /// In milliseconds: members scored at or below this
    /// ([`MS_REMOVAL_FLOOR`]) were kept whatever the cutoff, because such a
    /// score could be a seconds timestamp (see [`Expired`]); `None`
    /// (seconds): no floor.
    pub score_floor: Option<i64>,
    /// Unit of `cutoff` and `score_floor`.
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
/// could be swept), or when a safety check (clock, skew, cutoff, cluster
/// topology, unit guard) refuses to sweep or cannot run, in which case
/// nothing was deleted. A cluster sweep that reached only some primaries
/// returns a report naming the others in [`SweepReport::unfinished_nodes`].
pub async fn sweep(
    conn: &Connection,
    settings: &SweepSettings,
    mode: SweepMode,
    progress: &SweepProgress,
    shutdown: impl Future<Output = ()>,
) -> Result<SweepReport, SweepError> {
    let nodes = conn
        .primaries()
        .await
        .map_err(|e| Check::ClusterTopology.failed(e))?;
    sweep_nodes(conn, &nodes, settings, mode, progress, shutdown).await
}

/// [`sweep`] over the given primaries only (from [`Connection::primaries`]):
/// [`prepare`], then [`PreparedSweep::run`] on all of them. A primary
/// counts as finished only if, when its sweep starts, it still serves
/// exactly the slots given here: the caller chose it to cover them.
///
/// # Errors
/// As [`sweep`]; an empty `nodes` is a [`Check::ClusterTopology`] error:
/// there is always at least one primary, so "none" is a caller's mistake,
/// never a successful sweep of nothing.
pub async fn sweep_nodes(
    conn: &Connection,
    nodes: &[Primary],
    settings: &SweepSettings,
    mode: SweepMode,
    progress: &SweepProgress,
    shutdown: impl Future<Output = ()>,
) -> Result<SweepReport, SweepError> {
    prepare(conn, nodes, settings, mode, progress, shutdown)
        .await?
        .run()
        .await
}

/// The checks that can refuse a sweep, on every primary given, before
/// anything is deleted anywhere: the clock (Redis `TIME`, the skew against
/// the host clock, the cutoff), and each primary's slots, unit guard (which
/// scans its first keys; they stay pending, to be swept) and permission to
/// run `mode`'s command ([`Check::Permission`]). A caller that must not
/// commit to anything unless the sweep can run (a daemon taking leases)
/// calls this first, then [`PreparedSweep::retain`] and
/// [`PreparedSweep::run`].
///
/// A primary that cannot be reached or scanned is not a refusal: it is
/// kept, to be reported unfinished by [`PreparedSweep::run`].
///
/// # Errors
/// As [`sweep_nodes`], for the checks: the clock, the skew, the cutoff,
/// the unit guard or the permission check of any primary, an empty `nodes`.
pub async fn prepare<'a, S: Future<Output = ()>>(
    conn: &Connection,
    nodes: &[Primary],
    settings: &'a SweepSettings,
    mode: SweepMode,
    progress: &'a SweepProgress,
    shutdown: S,
) -> Result<PreparedSweep<'a, S>, SweepError> {
    prepare_within(conn, nodes, settings, mode, progress, shutdown, None).await
}

/// [`prepare`], with each primary's checks (connecting to it, its slots,
/// unit guard and permission check) bounded by `node_checks`: a primary
/// whose checks have not answered by then is not swept, and is reported
/// unfinished, as one that cannot be reached is. A daemon sharing the
/// primaries with others needs this: a primary whose writes stall (`CLIENT
/// PAUSE ... WRITE` holds the permission check's command) must not keep it
/// from sweeping the primaries that answer.
///
/// # Errors
/// As [`prepare`].
pub async fn prepare_within<'a, S: Future<Output = ()>>(
    conn: &Connection,
    nodes: &[Primary],
    settings: &'a SweepSettings,
    mode: SweepMode,
    progress: &'a SweepProgress,
    shutdown: S,
    node_checks: Option<Duration>,
) -> Result<PreparedSweep<'a, S>, SweepError> {
    let started = Instant::now();
    if nodes.is_empty() {
        return Err(Check::ClusterTopology.refused("no primary to sweep".to_owned()));
    }
    let now_micros = read_clock(conn, settings).await?;
    let expired =
        Expired::at(now_micros, settings.grace, settings.score_unit).ok_or_else(|| {
            Check::Cutoff.refused(format!(
                "now ({now_micros} µs since 1970) less sweep.grace is beyond 2^53 {}: Redis \
                 could not compare scores with it exactly",
                settings.score_unit
            ))
        })?;
    tracing::debug!(
        cutoff = expired.cutoff,
        floor = expired.floor,
        unit = %settings.score_unit,
        nodes = nodes.len(),
        "sweep checks starting"
    );
    let shutdown = Box::pin(shutdown).shared();

    // Every node's unit guard passes before any node deletes: a wrong unit
    // seen on the last primary must not find the first one already swept.
    // (The futures are made by an iterator, not a stream combinator: a
    // closure over borrowed items there trips rustc's higher-ranked `Send`
    // check for the daemon's boxed future. They are lazy either way.)
    let starts: Vec<_> = nodes
        .iter()
        .map(|primary| {
            let start = NodeSweep::start(
                conn,
                primary,
                settings,
                now_micros,
                mode,
                progress,
                shutdown.clone(),
            );
            async move {
                let Some(limit) = node_checks else {
                    return start.await;
                };
                match tokio::time::timeout(limit, start).await {
                    Ok(started) => started,
                    Err(_) => {
                        let error = StoreError::Command {
                            address: primary.address.clone(),
                            what: "the checks before the sweep",
                            source: no_answer_within(limit),
                        };
                        Ok(Err(NodeFailed {
                            address: primary.address.clone(),
                            reason: error.to_string(),
                            error: Some(error),
                        }))
                    }
                }
            }
        })
        .collect();
    let prepared = stream::iter(starts)
        .buffered(parallel_nodes(settings))
        .try_collect()
        .await?;
    Ok(PreparedSweep {
        started,
        settings,
        progress,
        expired,
        mode,
        nodes: prepared,
        shutdown,
    })
}

fn parallel_nodes(settings: &SweepSettings) -> usize {
    usize::try_from(settings.max_parallel_nodes)
        .unwrap_or(1)
        .max(1)
}

/// The error of a command given up on after `limit`: a timeout, as
/// redis-rs reports one (`StoreError::is_timeout`).
pub(crate) fn no_answer_within(limit: Duration) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {limit:?}"),
    ))
}

/// A sweep whose checks passed on every primary ([`prepare`]) and that has
/// deleted nothing yet.
pub struct PreparedSweep<'a, S: Future<Output = ()>> {
    started: Instant,
    settings: &'a SweepSettings,
    progress: &'a SweepProgress,
    expired: Expired,
    /// The mode the permission check was run for, so the one `run` uses.
    mode: SweepMode,
    nodes: Vec<Result<NodeSweep<'a>, NodeFailed>>,
    shutdown: futures_util::future::Shared<std::pin::Pin<Box<S>>>,
}

impl<S: Future<Output = ()>> PreparedSweep<'_, S> {
    /// Keeps only the primaries (by `host:port`) that `keep` accepts; the
    /// others are not swept, and what their checks scanned is taken back
    /// out of the sweep's counts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.nodes.retain(|node| {
            let kept = keep(match node {
                Ok(node) => &node.address,
                Err(failed) => &failed.address,
            });
            if let (false, Ok(node)) = (kept, node) {
                node.tally.retract();
            }
            kept
        });
    }

    /// Whether the checks of the primary `node` (`host:port`) passed, so
    /// that it can be swept: `false` for one that could not be reached,
    /// stalled, or no longer serves its slots (it is reported unfinished).
    pub fn can_sweep(&self, node: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n, Ok(n) if n.address == node))
    }

    /// Scans the rest of each primary and removes (or counts, in a dry run:
    /// the mode given to [`prepare`]) its expired members, up to
    /// `sweep.max_parallel_nodes` primaries at a time; tells
    /// [`SweepProgress::on_node_end`] of each as it ends.
    ///
    /// # Errors
    /// [`SweepError::Redis`] when no primary could be swept (every one
    /// failed): Redis down, wrong credentials, no permission.
    pub async fn run(self) -> Result<SweepReport, SweepError> {
        let Self {
            started,
            settings,
            progress,
            expired,
            mode,
            nodes,
            shutdown,
        } = self;
        let finishes: Vec<_> = nodes
            .into_iter()
            .map(|node| {
                let shutdown = shutdown.clone();
                async move {
                    let (report, failure) = match node {
                        Ok(node) => node.finish(expired, mode, shutdown).await,
                        Err(failed) => failed.report(),
                    };
                    progress.node_ended(&report);
                    (report, failure)
                }
            })
            .collect();
        let ended: Vec<(NodeReport, Option<StoreError>)> = stream::iter(finishes)
            .buffer_unordered(parallel_nodes(settings))
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
            cutoff: expired.cutoff,
            score_floor: expired.floor,
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
}

/// A node that could not be swept at all.
struct NodeFailed {
    address: String,
    /// Why, for the report.
    reason: String,
    /// The Redis error behind it, if it was one (not when the node no
    /// longer serves the slots it was chosen for).
    error: Option<StoreError>,
}

impl NodeFailed {
    fn report(self) -> (NodeReport, Option<StoreError>) {
        let report = NodeReport::new(self.address, &Counters::default(), Some(self.reason));
        (report, self.error)
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
    assignment: Option<SlotAssignment>,
    /// The slots it was importing then: its keys of those are sent after `ASKING`.
    importing: BTreeSet<u16>,
    scanner: Scanner<'a>,
    tally: Tally<'a>,
    /// Shutdown came during the unit-guard sample.
    interrupted: bool,
}

impl<'a> NodeSweep<'a> {
    /// Connects to the node, checks it still serves the slots it was chosen
    /// for, and runs its unit guard and permission check. The outer error
    /// aborts the whole sweep (a check refused or could not run); the inner
    /// one is this node not being swept.
    async fn start(
        conn: &Connection,
        primary: &Primary,
        settings: &'a SweepSettings,
        now_micros: i128,
        mode: SweepMode,
        progress: &'a SweepProgress,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Result<NodeSweep<'a>, NodeFailed>, SweepError> {
        let address = primary.address.as_str();
        let failed = |error: StoreError| {
            if is_own_inability(&error) {
                // Every daemon would not fail alike here: this one must not
                // go on as if it could sweep (a daemon would stay counted
                // in the shares and keep this node out of the others').
                return Err(SweepError::SafetyCheck {
                    check: Check::Permission,
                    reason: error.to_string(),
                    refusal: Some(error.kind()),
                });
            }
            Ok(Err(NodeFailed {
                address: address.to_owned(),
                reason: error.to_string(),
                error: Some(error),
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
        if let Some(reason) = assignment
            .as_ref()
            .and_then(|now| moved_since(primary, now))
        {
            // Swept or not, it could not count as finished; the next sweep
            // reads the topology afresh.
            return Ok(Err(NodeFailed {
                address: address.to_owned(),
                reason,
                error: None,
            }));
        }
        let importing = assignment
            .as_ref()
            .map(SlotAssignment::importing)
            .unwrap_or_default();
        let tally = Tally {
            progress,
            node: Arc::default(),
        };
        let mut scanner = Scanner::new(node_conn.clone(), settings, tally.clone());
        let found = Found::ScannedOn {
            importing: &importing,
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let scanned = if settings.unit_guard {
            scanner.guard(now_micros, found, &mut shutdown).await?
        } else {
            // The permission check needs a key: the first SCAN page.
            scanner.fill(1, &mut shutdown).await
        };
        let interrupted = match scanned {
            Ok(interrupted) => interrupted,
            Err(e) => return failed(e),
        };
        // No key on the node: nothing to remove, so nothing to prove.
        // Interrupted: nothing will be sent.
        if let (false, Some(key)) = (interrupted, scanner.pending.first()) {
            check_permission(&mut node_conn, key, found, mode).await?;
        }
        Ok(Ok(NodeSweep {
            address: address.to_owned(),
            conn: node_conn,
            assignment,
            importing,
            scanner,
            tally,
            interrupted,
        }))
    }

    /// Scans the rest of the node and removes, up to `max_in_flight`
    /// pipelines at a time; then checks the slots did not move meanwhile.
    async fn finish(
        mut self,
        expired: Expired,
        mode: SweepMode,
        shutdown: impl Future<Output = ()>,
    ) -> (NodeReport, Option<StoreError>) {
        let scanned = if self.interrupted {
            Ok(true)
        } else {
            self.scan_and_remove(expired, mode, shutdown).await
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
        expired: Expired,
        mode: SweepMode,
        shutdown: impl Future<Output = ()>,
    ) -> Result<bool, StoreError> {
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
        let found = Found::ScannedOn {
            importing: &self.importing,
        };
        let removing = stream::poll_fn(|cx| batches_rx.poll_recv(cx))
            .map(|batch| {
                let mut conn = conn.clone();
                async move {
                    let sent = Instant::now();
                    let outcome = sweep_batch(&mut conn, &batch, found, expired, mode).await;
                    if let Some(timer) = &tally.progress.batch_timer {
                        timer(sent.elapsed());
                    }
                    outcome
                }
            })
            .buffer_unordered(in_flight)
            .map(Ok)
            .try_for_each(|(outcome, stopped)| {
                // Counted before the error ends the node: what the batch's
                // other keys removed was removed.
                tally.add(&outcome);
                std::future::ready(stopped)
            });
        let (interrupted, ()) = tokio::try_join!(scanning, removing)?;
        Ok(interrupted)
    }

    /// `Some(reason)` when the node's slots moved or were migrating while it
    /// was scanned: keys may have left ahead of the cursor unseen.
    async fn check_assignment(&mut self) -> Result<Option<String>, StoreError> {
        let Some(before) = self.assignment.take() else {
            return Ok(None);
        };
        // A node that answered with a `myself` line before the scan must
        // answer with one after it: `slot_assignment` errors otherwise.
        let after = self.conn.slot_assignment().await?;
        Ok(if after.as_ref() != Some(&before) {
            Some(
                "its slots or configuration epoch changed during the sweep (resharding or \
                 failover)"
                    .to_owned(),
            )
        } else if !before.migrations.is_empty() {
            // While slot N moves from A (migrating) to B (importing), each
            // of its keys is on exactly one of them: on A until MIGRATE
            // moves it, then on B (a key created meanwhile is created on B,
            // as A answers ASK for keys it lacks). SCAN is per node and
            // returns what the node holds, whatever the slot: A's scan the
            // keys still on A, which A serves; B's scan those already moved,
            // which B serves after ASKING (see `Found::ScannedOn`); a key
            // moved after A's scan returned it answers ASK there and is
            // swept on B. So while no key moves, each is swept where it
            // lives, exactly once. But a key MIGRATE moves after B's cursor
            // passed it and before A's reached it is seen by neither scan,
            // and the markers look the same whether keys move or the
            // migration is stuck: neither node can count as finished until
            // the markers go. The next sweep sees such a key on B.
            let open: Vec<String> = before.migrations.iter().map(ToString::to_string).collect();
            Some(format!(
                "a slot migration was open during the sweep ({}): keys moving meanwhile may \
                 have been missed; one that stays open is stuck (redis-cli --cluster fix)",
                open.join(", ")
            ))
        } else {
            None
        })
    }
}

/// Whether a node's `error` is this client's own inability (its ACL user
/// may not run a command there, its credentials are refused there, its
/// client settings do not work), which another client may not share, as
/// opposed to the node being down, stalled or reconfiguring, which every
/// client sees alike. ACLs and passwords are per node on a cluster.
fn is_own_inability(error: &StoreError) -> bool {
    matches!(error.kind(), "noperm" | "auth" | "config")
}

/// Why a node, by its own account `now`, no longer serves what `primary`
/// says it did when the sweep chose it; `None` when it still does. Its
/// scan could not cover slots it has lost, and slots that moved to a node
/// already swept would be seen by nobody.
fn moved_since(primary: &Primary, now: &SlotAssignment) -> Option<String> {
    let mut expected = primary.slots.clone();
    let mut serves = now.slots.clone();
    // Slot lists compare as sets of ranges: the order is the server's.
    for ranges in [&mut expected, &mut serves] {
        ranges.sort_by_key(|range| (*range.start(), *range.end()));
    }
    if !now.primary {
        Some("it is no longer a primary (failover)".to_owned())
    } else if serves != expected {
        Some("its slots changed since the cluster topology was read".to_owned())
    } else {
        None
    }
}

/// "Now" in microseconds since the Unix epoch, after the clock-skew check.
///
/// A clock ahead removes live tokens, and the skew check lets through
/// anything within `sweep.max_clock_skew` (a minute by default), so with
/// the host clock (`sweep.clock = "local"`) "now" is the earlier of the two
/// clocks whenever both are read: a host 50 s ahead cannot remove a token
/// with 30 s left, by the clock that judges it. That clock is Redis's: the
/// auth path (`verify`, the login script) and any writer following the data
/// contract read `TIME`, so a member at or below Redis "now" is already
/// refused as expired everywhere. With `sweep.clock = "redis"` "now" is
/// therefore Redis `TIME` alone: taking a host clock that is behind would
/// only keep members no one accepts any more, make the cutoff depend on a
/// clock the configuration chose not to trust, and let daemons on different
/// hosts disagree on it. With the skew check off (`0s`) only the chosen
/// clock is read.
async fn read_clock(conn: &Connection, settings: &SweepSettings) -> Result<i128, SweepError> {
    let now = match settings.clock {
        ClockSource::Redis => redis_time(conn).await?,
        ClockSource::Local => host_time()?,
    };
    if settings.max_clock_skew.is_zero() {
        return Ok(now);
    }
    let other = match settings.clock {
        ClockSource::Redis => host_time()?,
        ClockSource::Local => redis_time(conn).await?,
    };
    let skew =
        Duration::from_micros(u64::try_from((now - other).unsigned_abs()).unwrap_or(u64::MAX));
    if skew > settings.max_clock_skew {
        return Err(SweepError::ClockSkew {
            skew,
            max: settings.max_clock_skew,
        });
    }
    Ok(match settings.clock {
        ClockSource::Redis => now,
        ClockSource::Local => now.min(other),
    })
}

/// The step name of the clock read, in errors.
const TIME_READ: &str = "TIME (clock check)";

/// Redis `TIME` in microseconds since the Unix epoch.
async fn redis_time(conn: &Connection) -> Result<i128, SweepError> {
    let mut conn = conn.clone();
    let reply: Value = conn
        .query(TIME_READ, &redis::cmd("TIME"))
        .await
        .map_err(|e| Check::Clock.failed(e))?;
    parse_time(&reply).map_err(|reason| {
        Check::Clock.refused(format!(
            "Redis at {}: TIME answered {reason}",
            conn.address()
        ))
    })
}

/// `TIME`'s reply, strictly: two decimal strings, seconds since the epoch
/// and microseconds below a million. Anything else says what it was.
fn parse_time(reply: &Value) -> Result<i128, String> {
    let decimal = |part: &Value| -> Option<u64> {
        match part {
            Value::BulkString(text) => std::str::from_utf8(text).ok().and_then(digits),
            Value::SimpleString(text) => digits(text),
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    };
    let Value::Array(parts) = reply else {
        return Err(shape(reply));
    };
    let [secs, micros] = parts.as_slice() else {
        return Err(shape(reply));
    };
    match (decimal(secs), decimal(micros)) {
        (Some(secs), Some(micros)) if micros < 1_000_000 => {
            Ok(i128::from(secs) * 1_000_000 + i128::from(micros))
        }
        (Some(_), Some(micros)) => Err(format!("{micros} microseconds, not below a million")),
        _ => Err(format!(
            "{} and {}, not two non-negative integers",
            shape(secs),
            shape(micros)
        )),
    }
}

/// A non-negative decimal integer, digits only (no sign, no spaces).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The host clock in microseconds since the Unix epoch.
fn host_time() -> Result<i128, SweepError> {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => Ok(i128::try_from(since.as_micros()).unwrap_or(i128::MAX)),
        // Before 1970 the host clock is broken: no cutoff or skew computed
        // from it means anything.
        Err(e) => Err(Check::Clock.refused(format!(
            "the host clock reads {:?} before 1970-01-01; fix the host clock",
            e.duration()
        ))),
    }
}

/// What a reply is, without its content (which may hold tokens): for
/// error messages.
fn shape(reply: &Value) -> String {
    match reply {
        Value::Nil => "nil".to_owned(),
        Value::Int(_) => "an integer".to_owned(),
        Value::BulkString(bytes) => format!("a string of {} bytes", bytes.len()),
        Value::Array(items) => format!("an array of {} elements", items.len()),
        Value::SimpleString(_) | Value::Okay => "a status".to_owned(),
        Value::Double(_) => "a double".to_owned(),
        Value::ServerError(e) => format!("an error ({})", e.code()),
        _ => "a reply of another type".to_owned(),
    }
}

/// Largest magnitude below which every integer is exactly a double, the
/// type Redis parses a score range bound into. A larger cutoff could be
/// rounded up by Redis, expiring members scored above it.
const EXACT_IN_A_DOUBLE: i128 = 1 << 53;

/// The highest score that counts as expired: `floor((now - grace) / unit)`.
///
/// `None` when that is above 2^53: Redis could not compare scores with it
/// exactly (and only a clock hundreds of thousands of years ahead gets
/// there). A cutoff below -2^53 (an absurd grace) becomes `i64::MIN`:
/// nothing finite is expired, which only ever keeps members.
///
/// ```
/// use std::time::Duration;
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::cutoff_for;
///
/// // 1_700_000_000.999_999 s, no grace
/// let now = 1_700_000_000_999_999;
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Seconds), Some(1_700_000_000));
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Milliseconds), Some(1_700_000_000_999));
/// assert_eq!(cutoff_for(now, Duration::from_secs(60), ScoreUnit::Seconds), Some(1_699_999_940));
/// ```
pub fn cutoff_for(now_micros: i128, grace: Duration, unit: ScoreUnit) -> Option<i64> {
    let grace = i128::try_from(grace.as_micros()).unwrap_or(i128::MAX);
    let cutoff = unit.from_unix_micros(now_micros.saturating_sub(grace));
    if cutoff > EXACT_IN_A_DOUBLE {
        None
    } else if cutoff < -EXACT_IN_A_DOUBLE {
        Some(i64::MIN)
    } else {
        i64::try_from(cutoff).ok()
    }
}

/// The scores a sweep removes: at or below the cutoff and, in milliseconds,
/// above the [`removal_floor`].
///
/// A score that could be a seconds timestamp, far-future "never expires"
/// placeholders included, is never removed from data swept as
/// milliseconds, whatever the unit guard saw: read as milliseconds it is
/// before 2001, so nothing legitimate is kept by this,
/// while a live seconds-scored token (a set written by a service moving
/// from seconds to milliseconds, or shared with one in seconds) would
/// otherwise be removed as long expired. The unit guard samples only some
/// sets and reads one score of each; this holds for every member of every
/// key, in the command itself, at no extra cost. In seconds no floor is
/// needed: a millisecond timestamp is a thousand times above any seconds
/// cutoff, so it is never expired. Members scored `-inf` (or anything at or
/// below the floor) stay in milliseconds: the key's TTL takes them.
///
/// ```
/// use std::time::Duration;
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::Expired;
///
/// let now = 1_700_000_000 * 1_000_000; // microseconds
/// let ms = Expired::at(now, Duration::ZERO, ScoreUnit::Milliseconds).unwrap();
/// assert!(ms.contains(1_699_999_999_000.0)); // a millisecond expiry a second ago
/// assert!(!ms.contains(1_700_003_600.0)); // an hour ahead, in seconds: kept
/// assert!(!ms.contains(f64::NEG_INFINITY));
/// let s = Expired::at(now, Duration::ZERO, ScoreUnit::Seconds).unwrap();
/// assert!(s.contains(1_699_999_999.0) && s.contains(f64::NEG_INFINITY));
/// assert!(!s.contains(1_699_999_999_000.0)); // milliseconds: far in the future
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    floor: Option<i64>,
    cutoff: i64,
}

impl Expired {
    /// The expired scores at `now_micros` (microseconds since the epoch)
    /// less `grace`, in `unit`: [`cutoff_for`] and [`removal_floor`].
    /// `None` when the cutoff is beyond what Redis compares exactly.
    pub fn at(now_micros: i128, grace: Duration, unit: ScoreUnit) -> Option<Self> {
        Some(Self {
            floor: removal_floor(unit),
            cutoff: cutoff_for(now_micros, grace, unit)?,
        })
    }

    /// The highest expired score.
    pub fn cutoff(self) -> i64 {
        self.cutoff
    }

    /// Scores at or below this are never removed; `None`: no floor.
    pub fn floor(self) -> Option<i64> {
        self.floor
    }

    /// Whether a member scored `score` is removed.
    pub fn contains(self, score: f64) -> bool {
        score <= self.cutoff as f64 && self.floor.is_none_or(|floor| score > floor as f64)
    }
}

/// The score at or below which nothing is ever removed from sets scored in
/// milliseconds: 10^12 ms, 2001-09-09T01:46:40Z.
///
/// Why this constant, and why not one counted from the clock: it must sit
/// above every seconds timestamp anyone writes, and below every millisecond
/// timestamp a live token can have.
/// - Above seconds: read as seconds, 10^12 is the year 33658. Every
///   "never expires" placeholder a seconds-writing service uses (2^32 - 1,
///   4102444800 for 2100, 9999999999, even 10^11) is far below it, so in a
///   milliseconds sweep no plausible seconds score is ever removed. (The
///   floor it replaces, now + 50 years in seconds, left such placeholders
///   above it: read as 1970 milliseconds, they were removed.)
/// - Below milliseconds: it is 2001 in milliseconds, before this code, JWT
///   session stores and any token alive today; the unit guard's idea of a
///   plausible millisecond timestamp starts 20 years back from now, also
///   above it ([`looks_like`]). Keeping members scored 1970 to 2001 in
///   milliseconds costs nothing: the key's TTL takes them.
/// - Independent of the clock: no clock reading (a host booted at the
///   epoch, a Redis `TIME` decades ahead) can move it, so no clock oddity
///   can bring a seconds score into the removed range.
pub const MS_REMOVAL_FLOOR: i64 = 1_000_000_000_000;

/// The score at or below which nothing is ever removed from sets scored in
/// `unit`: [`MS_REMOVAL_FLOOR`] for milliseconds, `None` (no floor) for
/// seconds. The one definition the sweep and the auth path's login script
/// share; render it for Redis with [`min_bound`].
///
/// ```
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::{removal_floor, MS_REMOVAL_FLOOR};
///
/// assert_eq!(removal_floor(ScoreUnit::Milliseconds), Some(MS_REMOVAL_FLOOR));
/// assert!(9_999_999_999 < MS_REMOVAL_FLOOR); // a seconds "never" is kept
/// assert_eq!(removal_floor(ScoreUnit::Seconds), None);
/// ```
pub fn removal_floor(unit: ScoreUnit) -> Option<i64> {
    match unit {
        ScoreUnit::Seconds => None,
        ScoreUnit::Milliseconds => Some(MS_REMOVAL_FLOOR),
    }
}

/// The `min` argument of `ZREMRANGEBYSCORE`/`ZCOUNT` for `floor`: `(floor`
/// (exclusive: the floor itself is kept), or `-inf` without one.
pub fn min_bound(floor: Option<i64>) -> String {
    match floor {
        Some(floor) => format!("({floor}"),
        None => "-inf".to_owned(),
    }
}

/// Sends one pipeline over `keys`: `ZREMRANGEBYSCORE key <min> cutoff`
/// (or `ZCOUNT` in a dry run) over the scores `expired` says, and tallies
/// the replies.
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
/// [`StoreError::Command`] when the pipeline as a whole fails (connection
/// lost, timeout). Per-key errors are counted in the outcome instead.
pub async fn sweep_keys(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    expired: Expired,
    mode: SweepMode,
) -> Result<BatchOutcome, StoreError> {
    let (outcome, stopped) = sweep_batch(conn, keys, Found::Anywhere, expired, mode).await;
    stopped.map(|()| outcome)
}

/// [`sweep_keys`] for keys `found` as said. Returns the outcome of every
/// reply the pipeline got, and beside it the error that ends the node's
/// sweep, if any: a NOPERM on one key (an ACL that lets the user write
/// only some keys) does not undo what the other keys of the same pipeline
/// did, so their counts are reported with the error, not dropped.
async fn sweep_batch(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    found: Found<'_>,
    expired: Expired,
    mode: SweepMode,
) -> (BatchOutcome, Result<(), StoreError>) {
    let command = mode.command();
    let min = min_bound(expired.floor);
    let mut outcome = BatchOutcome::default();
    let replies = match query_each(conn, command, keys, found, |key| {
        let mut cmd = redis::cmd(command);
        cmd.arg(key).arg(&min).arg(expired.cutoff);
        cmd
    })
    .await
    {
        Ok(replies) => replies,
        Err(e) => return (outcome, Err(e)),
    };
    let mut stopped = Ok(());
    for KeyReply { reply, redirected } in replies {
        outcome.counts.keys_redirected += u64::from(redirected);
        match reply {
            Err(e) if !redirected && is_redirect(&e) => {
                outcome.counts.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| not_a_cluster(conn, command));
            }
            reply => {
                let count = reply.and_then(|value| Ok(redis::from_redis_value::<u64>(value)?));
                if let Err(e) = outcome.tally(command, count) {
                    // The first such error is the node's; every reply is
                    // still counted.
                    if stopped.is_ok() {
                        stopped = Err(replied_from(conn, redirected).error(command, e));
                    }
                }
            }
        }
    }
    (outcome, stopped)
}

/// [`Check::Permission`] on `key`, a key SCAN `found` on `conn`'s node: the
/// command `mode` sends, over the score range `(0 (0`, which is empty (no
/// score is both above and below 0; 0 and -0 are neither), so it removes
/// and counts nothing, while Redis's ACL check, which comes before the
/// command runs, refuses it with NOPERM if the user may not run it on such
/// keys. Redis checks the ACL before the key's type and before redirecting,
/// so WRONGTYPE (the key changed type since SCAN) and a MOVED/ASK the
/// cluster client followed both mean the node let the command through.
async fn check_permission(
    conn: &mut Connection,
    key: &Vec<u8>,
    found: Found<'_>,
    mode: SweepMode,
) -> Result<(), SweepError> {
    // Errors read "the permission check could not run ...: ZCOUNT failed:
    // ...", so the step is named by its command alone.
    let what = mode.command();
    let replies = query_each(conn, what, std::slice::from_ref(key), found, |key| {
        let mut cmd = redis::cmd(what);
        cmd.arg(key).arg("(0").arg("(0");
        cmd
    })
    .await
    .map_err(|e| Check::Permission.failed(e))?;
    for KeyReply { reply, redirected } in replies {
        match reply {
            Ok(Value::Int(0)) => {}
            Err(e) if e.code() == Some("WRONGTYPE") => {}
            Err(e) if !redirected && is_redirect(&e) => {
                return Err(Check::Permission.refused(not_a_cluster(conn, what)))
            }
            Err(e) => {
                let e = replied_from(conn, redirected).error(what, e);
                return Err(Check::Permission.failed(e));
            }
            Ok(other) => {
                return Err(Check::Permission.refused(format!(
                    "Redis at {}: {what} answered {} for key {:?}, not 0",
                    replied_from(conn, redirected).address(),
                    shape(&other),
                    String::from_utf8_lossy(key)
                )))
            }
        }
    }
    Ok(())
}

/// One key's reply, from where the key lives.
struct KeyReply {
    reply: redis::RedisResult<Value>,
    /// The key answered MOVED/ASK on the node; `reply` came from the node
    /// it lives on now.
    redirected: bool,
}

/// Where the keys given to [`query_each`] were found, which decides how
/// they are sent to the connection's node.
#[derive(Clone, Copy)]
enum Found<'a> {
    /// Given by a caller: a key may live on any node, so it is sent as it
    /// is, and a MOVED/ASK reply followed.
    Anywhere,
    /// Returned by SCAN on the connection's node, which was importing the
    /// slots `importing` (its own `[slot-<-id]` markers). Those keys are on
    /// the node, which serves them only right after `ASKING`; sent without
    /// it, they answer MOVED, to the owner, which answers ASK back.
    /// (Sending `ASKING` for a key the node does not hold would sweep an
    /// empty key there instead of the real one on the owner: hence only
    /// for keys SCAN found on the node.)
    ScannedOn { importing: &'a BTreeSet<u16> },
}

impl Found<'_> {
    fn needs_asking(self, key: &[u8]) -> bool {
        match self {
            Self::Anywhere => false,
            Self::ScannedOn { importing } => importing.contains(&key_slot(key)),
        }
    }
}

/// Sends `command(key)` for every key in one pipeline on `conn`, and
/// returns the replies in key order. A key `found` on the node in a slot it
/// is importing goes right after its own `ASKING`, in the same pipeline, so
/// that nothing else sharing the connection comes between the two. On a
/// connection to one cluster node, a key that answers MOVED is sent again
/// through the cluster client (which routes by slot) and one that answers
/// ASK goes to the importing node right after `ASKING`; on a single
/// server, MOVED/ASK replies are returned as they are. The sweep and the
/// unit guard both go through here, so a key is read where it is removed.
async fn query_each(
    conn: &mut Connection,
    what: &'static str,
    keys: &[Vec<u8>],
    found: Found<'_>,
    command: impl Fn(&[u8]) -> redis::Cmd,
) -> Result<Vec<KeyReply>, StoreError> {
    let mut pipe = redis::pipe();
    let mut asking = Vec::with_capacity(keys.len());
    for key in keys {
        let ask = found.needs_asking(key);
        if ask {
            pipe.cmd("ASKING");
        }
        pipe.add_command(command(key));
        asking.push(ask);
    }
    let sent = keys.len() + asking.iter().filter(|ask| **ask).count();
    let replies: Vec<redis::RedisResult<Value>> =
        match pipe.ignore_errors().query_async(&mut *conn).await {
            Ok(replies) => replies,
            Err(e) => return Err(conn.error(what, e)),
        };
    if replies.len() != sent {
        // The replies would be paired with the wrong keys, or some dropped.
        return Err(conn.bad_reply(
            what,
            format!("{} replies to {sent} commands", replies.len()),
        ));
    }
    let mut replies = replies.into_iter();
    let mut next = || {
        replies
            .next()
            .ok_or_else(|| conn.bad_reply(what, format!("fewer than {sent} replies")))
    };
    let mut own = Vec::with_capacity(keys.len());
    for ask in asking {
        let asked = if ask { Some(next()?) } else { None };
        let reply = next()?;
        own.push(match asked {
            None | Some(Ok(Value::Okay)) => reply,
            // A refused ASKING (an ACL without it) is the key's answer: the
            // command after it could only say MOVED.
            Some(Err(e)) => Err(e),
            Some(Ok(other)) => {
                return Err(conn.bad_reply(what, format!("ASKING answered {}", shape(&other))))
            }
        });
    }
    let cluster = conn.cluster();
    let mut redirects = Vec::new();
    let mut out = Vec::with_capacity(keys.len());
    for (index, (key, reply)) in keys.iter().zip(own).enumerate() {
        if let (Err(e), Some(cluster)) = (&reply, &cluster) {
            let importing = match e.code() {
                // The slot moved for good: the cluster client routes by slot.
                Some("MOVED") => Some(None),
                // The slot is being migrated: the key is at the node named.
                Some("ASK") => Some(e.redirect_node().map(|(node, _slot)| node.to_owned())),
                _ => None,
            };
            if let Some(importing) = importing {
                let mut cluster = cluster.clone();
                let cmd = command(key);
                redirects.push(async move {
                    let reply = match importing {
                        Some(node) => cluster.query_asking::<Value>(&node, &cmd).await,
                        None => cmd.query_async::<Value>(&mut cluster).await,
                    };
                    (index, reply)
                });
            }
        }
        out.push(KeyReply {
            reply,
            redirected: false,
        });
    }
    for (index, reply) in futures_util::future::join_all(redirects).await {
        if let Some(slot) = out.get_mut(index) {
            *slot = KeyReply {
                reply,
                redirected: true,
            };
        }
    }
    Ok(out)
}

fn is_redirect(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("MOVED" | "ASK"))
}

/// A MOVED/ASK that could not be followed: `conn` is a single server.
fn not_a_cluster(conn: &Connection, what: &str) -> String {
    format!(
        "{what}: MOVED: {} is a Redis Cluster node; set redis.mode = \"cluster\"",
        conn.address()
    )
}

/// The connection a key's reply came from: `conn`, or for a redirected key
/// the cluster client (so errors name where they happened).
fn replied_from(conn: &Connection, redirected: bool) -> Connection {
    conn.cluster()
        .filter(|_| redirected)
        .unwrap_or_else(|| conn.clone())
}

impl BatchOutcome {
    /// Counts one key's reply. Errors that are not about the key (missing ACL
    /// permission, a replica, a cluster that is down) are returned: the
    /// node's sweep stops with the server's own message, once the rest of
    /// the batch's replies are counted (an ACL may allow some keys and not
    /// others, so replies before and after it may have removed members).
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
    ) -> Result<bool, StoreError> {
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
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, StoreError> {
        while self.pending.len() < keys && !self.finished {
            if self.next_page(shutdown).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The unit guard of this node: reads the highest score of the keys
    /// scanned first (see [`check_units`]) until `unit_guard_sample` of them
    /// have confirmed the unit, the node has no more keys, or
    /// [`GUARD_READ_FACTOR`] times the sample were read. The keys read stay
    /// pending, to be swept like the others.
    ///
    /// Only a score that looks like a timestamp in the configured unit is
    /// evidence. A set with nothing to say (deleted since SCAN, only `+inf`
    /// members, in milliseconds only scores at or below the removal floor,
    /// which the sweep never removes) is a definite answer, but not
    /// evidence. A score that looks like neither unit (and is above the
    /// floor) is not evidence either, and it is data the sweep could remove
    /// (in seconds, a score of 42 is long expired). So the guard refuses
    /// when nothing read confirmed the unit and either such a score was read
    /// or the node has keys the guard did not read, whose unit is unknown.
    /// A node whose every set was read and said nothing goes ahead: nothing
    /// on it depends on the unit.
    ///
    /// The outer error aborts the sweep; the inner one is SCAN failing, the
    /// node not being swept. Returns whether `shutdown` came first.
    async fn guard(
        &mut self,
        now_micros: i128,
        found: Found<'_>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Result<bool, StoreError>, SweepError> {
        let sample = usize::try_from(self.settings.unit_guard_sample).unwrap_or(usize::MAX);
        if sample == 0 {
            return Err(Check::UnitGuard.refused("sweep.unit_guard_sample is 0".to_owned()));
        }
        let limit = sample.saturating_mul(GUARD_READ_FACTOR);
        let (mut read, mut seen) = (0, GuardSample::default());
        while seen.confirmed < sample && read < limit {
            let upto = read.saturating_add(sample - seen.confirmed).min(limit);
            match self.fill(upto, shutdown).await {
                Ok(true) => return Ok(Ok(true)),
                Ok(false) => {}
                Err(e) => return Ok(Err(e)),
            }
            let end = self.pending.len().min(upto);
            let keys = self.pending.get(read..end).unwrap_or_default();
            if keys.is_empty() {
                // The node has no more keys.
                break;
            }
            let batch = check_batch(
                &mut self.conn,
                keys,
                found,
                self.settings.score_unit,
                now_micros,
            )
            .await?;
            seen.confirmed += batch.confirmed;
            seen.unclear += batch.unclear;
            read = end;
        }
        let read_all = self.finished && read == self.pending.len();
        if seen.confirmed == 0 && (seen.unclear > 0 || !read_all) {
            let unit = self.settings.score_unit;
            return Err(Check::UnitGuard.refused(format!(
                "{}: none of the first {read} sets has a score that looks like a timestamp in \
                 {unit} ({} have scores that look like neither unit, the others only +inf \
                 members{}, or were deleted since SCAN), so the unit cannot be confirmed; set \
                 sweep.unit_guard = false if the data is known to be right",
                self.conn.address(),
                seen.unclear,
                if removal_floor(unit).is_some() {
                    " or scores at or below the removal floor"
                } else {
                    ""
                },
            )));
        }
        Ok(Ok(false))
    }

    /// Scans to the end, sending full batches as they fill. Returns whether
    /// `shutdown` cut the scan short.
    async fn run(
        &mut self,
        batches: mpsc::Sender<Vec<Vec<u8>>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<bool, StoreError> {
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
            let per_second = unit.per_second() as f64;
            let low = (now_secs - PLAUSIBLE_PAST as f64) * per_second;
            let high = (now_secs + PLAUSIBLE_FUTURE as f64) * per_second;
            (low..=high).contains(&score)
        })
}

/// How many keys, per key of `sweep.unit_guard_sample`, the unit guard
/// reads at most while looking for sets with a finite score. Bounded
/// because the keys it reads are held until swept; 16 keeps that to a
/// batch or so at the default sample of 64.
pub const GUARD_READ_FACTOR: usize = 16;

/// The step name of the unit guard's read, in errors.
const GUARD_READ: &str = "ZREVRANGEBYSCORE (unit guard)";

/// The unit guard's read of `keys`: the highest score below `+inf` of each
/// (members scored `+inf`, tokens that never expire, say nothing about the
/// unit; the highest finite score is the newest token). Returns how many of
/// the keys confirm `unit`: their highest finite score looks like a
/// timestamp in it ([`looks_like`]). A score that looks like neither unit
/// is not evidence for either: a set of such scores confirms nothing.
///
/// Every key must get a definite answer: a score, or nothing to say (the
/// key no longer exists or is no longer a sorted set, or holds only
/// `+inf`/`-inf` members). Redis sends an error as an error reply, never as
/// an empty one, and the reply is decoded strictly (a nil or any other
/// shape is not "no members"), so an empty array is Redis's own answer.
/// Keys that moved to another cluster node are read where they live now,
/// as the sweep would remove them there.
///
/// Public so that callers sweeping keys they found another way (with
/// [`sweep_keys`]) can run the same guard first.
///
/// # Errors
/// [`SweepError::UnitGuard`] when a score looks like the other unit;
/// [`SweepError::SafetyCheck`] when a key's reply is not a definite answer
/// (NOPERM, a MOVED/ASK that cannot be followed, a wrong shape);
/// [`SweepError::Redis`] when the connection is lost.
pub async fn check_units(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    unit: ScoreUnit,
    now_micros: i128,
) -> Result<usize, SweepError> {
    Ok(check_batch(conn, keys, Found::Anywhere, unit, now_micros)
        .await?
        .confirmed)
}

/// What the unit guard's read of some keys says about the configured unit.
#[derive(Clone, Copy, Debug, Default)]
struct GuardSample {
    /// Keys whose highest finite score looks like a timestamp in the
    /// configured unit: the only evidence for it.
    confirmed: usize,
    /// Keys whose highest finite score looks like a timestamp in neither
    /// unit and is above the removal floor (in seconds: any such score).
    unclear: usize,
}

/// [`check_units`] for keys `found` as said.
async fn check_batch(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    found: Found<'_>,
    unit: ScoreUnit,
    now_micros: i128,
) -> Result<GuardSample, SweepError> {
    let replies = query_each(conn, GUARD_READ, keys, found, |key| {
        let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
        cmd.arg(key)
            .arg("(+inf")
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
        cmd
    })
    .await
    .map_err(|e| Check::UnitGuard.failed(e))?;
    let mut sample = GuardSample::default();
    let mut suspicious = Vec::new();
    for (key, KeyReply { reply, redirected }) in keys.iter().zip(replies) {
        let reply = match reply {
            Ok(reply) => reply,
            // The key stopped being a sorted set: the sweep skips it too.
            Err(e) if e.code() == Some("WRONGTYPE") => continue,
            Err(e) if !redirected && is_redirect(&e) => {
                return Err(Check::UnitGuard.refused(not_a_cluster(conn, GUARD_READ)))
            }
            Err(e) => {
                let e = replied_from(conn, redirected).error(GUARD_READ, e);
                return Err(Check::UnitGuard.failed(e));
            }
        };
        let score = highest_score(&reply).map_err(|shape| {
            Check::UnitGuard.refused(format!(
                "Redis at {}: {GUARD_READ} answered {shape} for key {:?}, not a (member, score) \
                 pair or nothing",
                replied_from(conn, redirected).address(),
                String::from_utf8_lossy(key)
            ))
        })?;
        let Some(score) = score.filter(|score| score.is_finite()) else {
            continue;
        };
        match looks_like(score, now_micros) {
            Some(seen) if seen == unit => sample.confirmed += 1,
            Some(seen) => suspicious.push((key, score, seen)),
            // The sweep removes none of this set's members whatever the
            // unit: every finite one is at or below the floor.
            None if removal_floor(unit).is_some_and(|floor| score <= floor as f64) => {}
            // Not a timestamp near now in either unit: it confirms nothing,
            // and a sweep could remove it (in seconds, 42 is long expired).
            None => sample.unclear += 1,
        }
    }
    let Some(&(example_key, example_score, seen)) = suspicious.first() else {
        return Ok(sample);
    };
    Err(SweepError::UnitGuard {
        configured: unit,
        seen,
        suspicious: suspicious.len(),
        sampled: keys.len(),
        example_key: String::from_utf8_lossy(example_key).into_owned(),
        example_score,
    })
}

/// The score in a `ZREVRANGEBYSCORE ... WITHSCORES LIMIT 0 1` reply: `None`
/// for an empty array; RESP2 `[member, score]` or RESP3 `[[member, score]]`
/// otherwise. Every other shape, a nil included, is an error describing it.
fn highest_score(reply: &Value) -> Result<Option<f64>, String> {
    let pair = match reply {
        Value::Array(items) => match items.as_slice() {
            [] => return Ok(None),
            [Value::Array(pair)] => pair.as_slice(),
            pair => pair,
        },
        other => return Err(shape(other)),
    };
    let score = match pair {
        [Value::BulkString(_), Value::BulkString(score)] => std::str::from_utf8(score)
            .ok()
            .and_then(|score| score.parse::<f64>().ok()),
        [Value::BulkString(_), Value::Double(score)] => Some(*score),
        _ => None,
    };
    // `(+inf` excludes +inf, and Redis has no NaN scores: either is a
    // reply to some other question.
    match score {
        Some(score) if !score.is_nan() && score != f64::INFINITY => Ok(Some(score)),
        _ => Err(shape(reply)),
    }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_rounds_down_before_the_epoch_too() {
        assert_eq!(
            cutoff_for(-1, Duration::ZERO, ScoreUnit::Milliseconds),
            Some(-1)
        );
        assert_eq!(
            cutoff_for(1_500, Duration::ZERO, ScoreUnit::Milliseconds),
            Some(1)
        );
        // An absurd grace saturates to "nothing is expired" instead of wrapping.
        assert_eq!(
            cutoff_for(0, Duration::from_secs(u64::MAX), ScoreUnit::Seconds),
            Some(i64::MIN)
        );
    }

    #[test]
    fn a_cutoff_redis_cannot_hold_exactly_is_refused_not_saturated() {
        let limit: i128 = 1 << 53;
        let at_limit_ms = limit * 1_000;
        assert_eq!(
            cutoff_for(at_limit_ms, Duration::ZERO, ScoreUnit::Milliseconds),
            Some(1 << 53)
        );
        assert_eq!(
            cutoff_for(at_limit_ms + 1_000, Duration::ZERO, ScoreUnit::Milliseconds),
            None
        );
        // Before, a clock past i64 milliseconds saturated to i64::MAX: every
        // finite score expired.
        assert_eq!(
            cutoff_for(
                i128::from(i64::MAX) * 1_000_000,
                Duration::ZERO,
                ScoreUnit::Milliseconds
            ),
            None
        );
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn time_replies_are_decoded_strictly() {
        let time = |parts: Vec<Value>| parse_time(&Value::Array(parts));
        assert_eq!(
            time(vec![bulk("1700000000"), bulk("123456")]),
            Ok(1_700_000_000_123_456)
        );
        assert_eq!(time(vec![Value::Int(5), Value::Int(7)]), Ok(5_000_007));
        for bad in [
            vec![bulk("1700000000")],
            vec![bulk("1700000000"), bulk("1"), bulk("2")],
            vec![bulk("-5"), bulk("0")],
            vec![bulk("+5"), bulk("0")],
            vec![bulk(" 5"), bulk("0")],
            vec![bulk("1.5"), bulk("0")],
            vec![bulk(""), bulk("0")],
            vec![bulk("1700000000"), bulk("1000000")],
            vec![bulk("99999999999999999999"), bulk("0")],
            vec![Value::Nil, bulk("0")],
            vec![Value::Int(-1), bulk("0")],
        ] {
            assert!(time(bad.clone()).is_err(), "{bad:?}");
        }
        for bad in [Value::Nil, bulk("1700000000"), Value::Okay, Value::Int(1)] {
            assert!(parse_time(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_guard_reads_a_score_or_nothing_and_nothing_else() {
        let member = || bulk("digest");
        let array = Value::Array;
        assert_eq!(highest_score(&array(vec![])), Ok(None));
        // RESP2 and RESP3 shapes.
        assert_eq!(
            highest_score(&array(vec![member(), bulk("1700000000")])),
            Ok(Some(1.7e9))
        );
        assert_eq!(
            highest_score(&array(vec![array(vec![member(), Value::Double(2.5)])])),
            Ok(Some(2.5))
        );
        assert_eq!(
            highest_score(&array(vec![member(), bulk("-inf")])),
            Ok(Some(f64::NEG_INFINITY))
        );
        for bad in [
            // redis-rs reads a nil as an empty Vec: the guard must not.
            Value::Nil,
            Value::Int(0),
            bulk("1700000000"),
            array(vec![member()]),
            array(vec![member(), bulk("1"), member(), bulk("2")]),
            array(vec![member(), bulk("soon")]),
            array(vec![member(), bulk("inf")]),
            array(vec![member(), bulk("nan")]),
            array(vec![Value::Int(1), bulk("1")]),
        ] {
            let err = highest_score(&bad).unwrap_err();
            assert!(!err.contains("digest"), "a member never appears: {err}");
        }
    }

    #[test]
    fn every_safety_check_names_itself_and_has_a_label() {
        for (check, label) in [
            (Check::Clock, "clock"),
            (Check::ClockSkew, "clock_skew"),
            (Check::Cutoff, "cutoff"),
            (Check::ClusterTopology, "cluster_topology"),
            (Check::UnitGuard, "unit_guard"),
            (Check::Permission, "permission"),
        ] {
            assert_eq!(check.label(), label);
            let message = check.refused("because".to_owned()).to_string();
            assert!(message.contains(&label.replace('_', " ")), "{message}");
            assert!(
                message.ends_with("nothing was deleted: because"),
                "{message}"
            );
        }
    }

    #[test]
    fn the_removal_floor_is_above_every_seconds_score_and_below_live_milliseconds() {
        let floor = removal_floor(ScoreUnit::Milliseconds).unwrap() as f64;
        assert_eq!(removal_floor(ScoreUnit::Seconds), None);
        // Seconds "never expires" placeholders, and the top of the seconds
        // window at any clock up to the year 2500.
        for seconds in [4_294_967_295.0, 4_102_444_800.0, 9_999_999_999.0, 1e11] {
            assert!(seconds < floor, "{seconds}");
        }
        for now_secs in [0, 1_704_067_200, 1_795_836_033, 16_725_225_600_i128] {
            let now = now_secs * 1_000_000;
            let top_of_seconds = (now_secs + PLAUSIBLE_FUTURE) as f64;
            assert!(top_of_seconds < floor, "{now_secs}");
            // From 2022 on, every score that looks like milliseconds (20
            // years back at most) is above it.
            if now_secs >= 1_640_995_200 {
                let low_ms = ((now_secs - PLAUSIBLE_PAST) * 1000) as f64;
                assert_eq!(looks_like(low_ms, now), Some(ScoreUnit::Milliseconds));
                assert!(low_ms > floor, "{now_secs}");
            }
        }
        assert_eq!(min_bound(Some(MS_REMOVAL_FLOOR)), "(1000000000000");
        assert_eq!(min_bound(None), "-inf");
    }

    #[test]
    fn expired_is_the_range_the_command_removes() {
        let now = 1_795_836_033_123_456;
        let ms = Expired::at(now, Duration::ZERO, ScoreUnit::Milliseconds).unwrap();
        let floor = ms.floor().unwrap() as f64;
        assert!(ms.contains(ms.cutoff() as f64));
        assert!(!ms.contains(ms.cutoff() as f64 + 0.5));
        assert!(ms.contains(floor + 1.0));
        for kept in [floor, 0.0, -0.0, f64::NEG_INFINITY, f64::INFINITY] {
            assert!(!ms.contains(kept), "{kept}");
        }
        let s = Expired::at(now, Duration::ZERO, ScoreUnit::Seconds).unwrap();
        assert_eq!(s.floor(), None);
        assert!(s.contains(f64::NEG_INFINITY) && s.contains(0.0));
        assert!(!s.contains(1_795_836_033_000.0 - 86_400_000.0));
        // No cutoff Redis cannot compare exactly, floor or not.
        assert_eq!(
            Expired::at(i128::MAX / 2, Duration::ZERO, ScoreUnit::Milliseconds),
            None
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
