//! One sweep: remove every expired member from every token set.
//!
//! Every check before the first deletion fails closed: an answer that is not
//! what the check needs (a refused command, a reply of the wrong shape, an
//! impossible clock) stops the sweep with [`SweepError::SafetyCheck`] naming
//! the check, and is never read as "all clear". This file tells the six
//! steps of a sweep in the order they run, each calling into a file of one
//! idea:
//!
//! 1. **Primaries** ([`sweep`], [`sweep_index`]). They come from
//!    `CLUSTER NODES`, parsed strictly (a malformed line, or no primary
//!    serving slots, stops the sweep). A standalone server is the one-node
//!    case of the same loop.
//! 2. **Clock and cutoff** ([`prepare_within`], `clock.rs`, `cutoff.rs`).
//!    "Now" comes from Redis `TIME` (or the host clock); the two are
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
//! 3. **Checks per primary** ([`prepare_within`], `node.rs`, `primary.rs`, `guard.rs`,
//!    `permission.rs`). Each primary must still serve the slots it was
//!    chosen for. Its unit guard: the keys scanned first are held back and
//!    their highest finite score is read, until `unit_guard_sample` have
//!    confirmed the unit (reading at most [`GUARD_READ_FACTOR`] times that
//!    many keys). If any looks like the other unit (a wrong
//!    `sweep.score_unit`), the sweep stops before a single deletion. Every
//!    key read must give a definite answer; only a score that looks like
//!    the configured unit is evidence. One with nothing to say (deleted
//!    since SCAN, only `+inf` members, in milliseconds nothing above the
//!    removal floor) is fine, but if none confirmed the unit and the node
//!    has keys left unread, or a set read has a score that looks like
//!    neither unit, the guard refuses: it has no evidence. Last, one
//!    command of the kind the sweep will send is run on a sampled key over
//!    an empty score range ([`Check::Permission`]), so that a user who may
//!    read but not remove is refused here, before a daemon takes a lease,
//!    and not at the first pipeline. The checks of every primary pass
//!    before any primary deletes.
//! 4. **Scan** ([`PreparedSweep::run`], `scan.rs`).
//!    `SCAN cursor MATCH pattern COUNT n TYPE zset`, one page at a time,
//!    once per primary on a connection of its own (SCAN is per node), up to
//!    `sweep.max_parallel_nodes` at a time. Keys are handed on in batches
//!    through a bounded channel, so memory holds at most a few batches
//!    whatever the size of the keyspace. `max_keys_per_second` paces the
//!    batches.
//! 5. **Remove** (`remove.rs`, `query.rs`). Each batch becomes one pipeline
//!    of `ZREMRANGEBYSCORE key <min> cutoff` (`ZCOUNT` in a dry run),
//!    `<min>` being `-inf` in seconds and `(<removal floor>` in
//!    milliseconds. Up to `max_in_flight` pipelines are outstanding on the
//!    one multiplexed connection, and the next SCAN page is requested while
//!    they run, so Redis always has work queued. A key that stopped being a
//!    sorted set between SCAN and its pipeline (WRONGTYPE) is skipped and
//!    counted; other per-key errors are counted and the first is kept for
//!    the report. A failure of the connection, a missing ACL permission
//!    (NOPERM) or a replica (READONLY) ends the node's sweep. A key SCAN
//!    finds on a node that is importing its slot (an open migration) is
//!    read and swept there, right after `ASKING`. A key whose slot moved
//!    answers MOVED/ASK and is read (guard) or swept again where it lives
//!    now, once.
//! 6. **Confirm and report** (`primary.rs`, `report.rs`, `counts.rs`). A
//!    primary counts as finished only when, by its own `CLUSTER NODES`
//!    line, it served the slots it was chosen for when its sweep started,
//!    its scan ran to the end, and its slots and config epoch were the
//!    same, with no migration, before and after; otherwise it is named in
//!    `unfinished_nodes` and the next sweep, which reads the topology
//!    afresh, covers it. The [`SweepReport`] is built from the live
//!    [`SweepProgress`] counters, so the two never disagree; what is
//!    counted is defined once, in `counts.rs` ([`CountKind`]).
//!
//! Steps 2 and 3, the checks that can refuse, run on every primary before
//! anything else: [`prepare`] runs them alone and returns a
//! [`PreparedSweep`], so that a caller that must commit to nothing unless
//! the sweep can run (the daemon, before it registers or takes a lease)
//! can check first, keep only some primaries, then run the rest. A
//! [`SweepProgress::on_node_end`] hook hears of each primary as it ends.
//!
//! Steps 4 and 5 are as above with `sweep.throttle = "off"`. With the
//! adaptive throttle (the default; `gentle.rs`, `throttle/`, `bounded.rs`)
//! each primary's sweep sends one piece at a time (a SCAN page or a
//! pipeline of at most 200 keys), pauses between pieces to take at most
//! its share of Redis's time, adapts that share and the piece to a PING
//! probe's latency on a connection of its own, never goes below
//! `sweep.throttle_floor`, and removes at most
//! `sweep.max_members_per_command` members per command, by score, with
//! the same bounds ([`ThrottleReading`] tells the metrics).
//!
//! Stopping is one [`CancellationToken`]: once cancelled, no SCAN page and
//! no batch more is sent, the pipelines in flight finish and are counted,
//! and the report says `interrupted`.
//!
//! The sweep never touches a key's TTL and never writes anything but
//! `ZREMRANGEBYSCORE`; an emptied set disappears because Redis deletes empty
//! sorted sets.
//!
//! The files import each other one way only, leaves first: `mode`;
//! `counts` (mode); `cutoff`, `error`, `query` and `throttle/reading`
//! (none of these); `remove` (cutoff, query, counts); `report` (counts,
//! remove, throttle/reading); `clock`, `permission` (error, query); `scan`
//! (report); `guard` (scan, query, cutoff); the rest of `throttle`
//! (report); `bounded` (remove, query, cutoff);
//! `node` (all of them); `gentle` (node, throttle, bounded); `index`
//! (node, guard); `prepared` (node, index);
//! `rebuild` (node, guard, scan, index: `index rebuild`); this file (node,
//! index, prepared and the re-exports).

/// Step 5 with the throttle: at most N members per command.
mod bounded;
/// Step 2: "now", and the clock-skew check.
mod clock;
/// The counters, defined once in a table: [`Counts`], [`CountKind`].
mod counts;
/// Cutoff and removal-floor arithmetic: [`Expired`].
mod cutoff;
/// [`SweepError`] and the [`Check`]s that can refuse a sweep.
mod error;
/// Steps 4 and 5 with the throttle: one piece at a time.
mod gentle;
/// Step 3: the unit guard.
mod guard;
/// Index mode: steps 4 and 5 by the due index.
mod index;
/// Remove or dry run, and the command each sends.
mod mode;
/// One primary from its checks to its end.
mod node;
/// Step 3: the permission probe.
mod permission;
/// [`PreparedSweep`]: every primary checked, nothing deleted yet; its run
/// (steps 4 to 6).
mod prepared;
/// A primary's slots around its sweep: opening it, and confirming after.
mod primary;
/// One pipeline of a command per key, sent where each key lives.
mod query;
/// `index rebuild`: the due index built from the sets, paced and resumable.
mod rebuild;
/// Step 5: the removal pipeline and the tally of its replies.
mod remove;
/// [`SweepProgress`] while it runs, [`SweepReport`] when it ends.
mod report;
/// Step 4: SCAN, batching and pacing.
mod scan;
/// The adaptive throttle: probe, controller, pace.
mod throttle;

pub(crate) use counts::count_table;
pub use counts::{CountKind, CountMetric, Counts, Printed};
pub use cutoff::{cutoff_for, min_bound, removal_floor, Expired, MS_REMOVAL_FLOOR};
pub use error::{Check, SweepError};
pub use guard::{check_units, looks_like, GUARD_READ_FACTOR};
pub use index::lower_entries;
use index::IndexNode;
pub use mode::{SweepBy, SweepMode};
pub(crate) use node::no_answer_within;
pub use prepared::PreparedSweep;
use prepared::Ready;
pub use rebuild::{rebuild_cursor_key, rebuild_index, RebuildNode, RebuildOptions, RebuildReport};
pub use remove::{sweep_keys, BatchOutcome};
pub use report::{IndexReport, NodeReport, SweepProgress, SweepReport};
pub use throttle::{ThrottleReading, ThrottleState};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::SweepSettings;
use crate::store::{Connection, Primary};
use node::{parallel_nodes, NodeFailed, NodeSweep};

/// Runs one sweep over every key matching `settings.pattern`, on every
/// primary of `conn` (the one server, or each primary of a cluster).
///
/// Cancelling `stop` ends the scan early: pipelines already sent finish
/// and are counted, nothing more is sent, and the report says
/// `interrupted`. Pass a token never cancelled for a sweep that always
/// runs to the end.
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
    stop: &CancellationToken,
) -> Result<SweepReport, SweepError> {
    // Step 1: the primaries.
    let nodes = conn
        .primaries()
        .await
        .map_err(|e| Check::ClusterTopology.failed(e))?;
    sweep_nodes(conn, &nodes, settings, mode, progress, stop).await
}

/// Sweeps by the due index: every primary of `conn`, its due keys only
/// (see the module's steps). `settings.due_index` gives the key prefix;
/// whether it is enabled is the caller's choice (the index is read
/// either way). With `read_size`, every primary also reads its index's
/// size (see [`SweepBy::Index`]).
///
/// # Errors
/// As [`sweep`]: a safety check refused (nothing was
/// deleted), or no primary could be swept.
pub async fn sweep_index(
    conn: &Connection,
    settings: &SweepSettings,
    mode: SweepMode,
    progress: &SweepProgress,
    stop: &CancellationToken,
    read_size: bool,
) -> Result<SweepReport, SweepError> {
    // Step 1: the primaries.
    let nodes = conn
        .primaries()
        .await
        .map_err(|e| Check::ClusterTopology.failed(e))?;
    let read_size: BTreeSet<String> = match read_size {
        true => nodes.iter().map(|node| node.address.clone()).collect(),
        false => BTreeSet::new(),
    };
    let by = SweepBy::Index {
        read_size: &read_size,
    };
    prepare_by(conn, &nodes, settings, mode, progress, stop, None, by)
        .await?
        .run()
        .await
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
    stop: &CancellationToken,
) -> Result<SweepReport, SweepError> {
    prepare(conn, nodes, settings, mode, progress, stop)
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
pub async fn prepare<'a>(
    conn: &Connection,
    nodes: &[Primary],
    settings: &'a SweepSettings,
    mode: SweepMode,
    progress: &'a SweepProgress,
    stop: &CancellationToken,
) -> Result<PreparedSweep<'a>, SweepError> {
    prepare_within(conn, nodes, settings, mode, progress, stop, None).await
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
pub async fn prepare_within<'a>(
    conn: &Connection,
    nodes: &[Primary],
    settings: &'a SweepSettings,
    mode: SweepMode,
    progress: &'a SweepProgress,
    stop: &CancellationToken,
    node_checks: Option<Duration>,
) -> Result<PreparedSweep<'a>, SweepError> {
    let by = SweepBy::Scan;
    prepare_by(conn, nodes, settings, mode, progress, stop, node_checks, by).await
}

/// [`prepare_within`], finding the keys `by` a full scan or the due index.
///
/// # Errors
/// As [`prepare`].
#[allow(clippy::too_many_arguments)]
pub async fn prepare_by<'a>(
    conn: &Connection,
    nodes: &[Primary],
    settings: &'a SweepSettings,
    mode: SweepMode,
    progress: &'a SweepProgress,
    stop: &CancellationToken,
    node_checks: Option<Duration>,
    by: SweepBy<'_>,
) -> Result<PreparedSweep<'a>, SweepError> {
    let started = Instant::now();
    if nodes.is_empty() {
        return Err(Check::ClusterTopology.refused("no primary to sweep".to_owned()));
    }

    // Step 2: the clock and the cutoff.
    let (now_micros, expired) = clock::expired_now(conn, settings).await?;
    tracing::debug!(
        cutoff = expired.cutoff(),
        floor = expired.floor(),
        unit = %settings.score_unit,
        nodes = nodes.len(),
        "sweep checks starting"
    );

    // Step 3: every node's checks pass before any node deletes: a wrong
    // unit seen on the last primary must not find the first one already
    // swept. (The futures are made by an iterator, not a stream combinator:
    // a closure over borrowed items there trips rustc's higher-ranked
    // `Send` check for the daemon's boxed future. They are lazy either way.)
    let starts: Vec<_> = nodes
        .iter()
        .map(|primary| {
            let start = async move {
                Ok::<_, SweepError>(match by {
                    SweepBy::Scan => {
                        NodeSweep::start(conn, primary, settings, now_micros, mode, progress, stop)
                            .await?
                            .map(Ready::Scan)
                    }
                    SweepBy::Index { read_size } => {
                        let clock = (now_micros, expired);
                        let read_size = read_size.contains(&primary.address);
                        IndexNode::start(conn, primary, settings, clock, mode, progress, read_size)
                            .await?
                            .map(Ready::Index)
                    }
                })
            };
            async move {
                let Some(limit) = node_checks else {
                    return start.await;
                };
                tokio::time::timeout(limit, start)
                    .await
                    .unwrap_or_else(|_| Ok(Err(NodeFailed::stalled(&primary.address, limit))))
            }
        })
        .collect();
    let nodes = stream::iter(starts)
        .buffered(parallel_nodes(settings))
        .try_collect()
        .await?;
    Ok(PreparedSweep {
        started,
        settings,
        progress,
        expired,
        mode,
        nodes,
        stop: stop.clone(),
        deadline: None,
        now_micros,
        index: matches!(by, SweepBy::Index { .. }),
    })
}
