//! Index mode: a sweep that reads the due index (`[sweep.due_index]`, see
//! [`crate::due_index`]) instead of scanning every key, so its cost follows
//! what expired, not the size of the keyspace.
//!
//! The steps are the full scan's, with step 4 and 5 replaced:
//! 1. the primaries, as a full scan;
//! 2. the clock and the cutoff, the same code (`clock::expired_now`);
//! 3. per primary, its slots (it must still serve them), then the due
//!    entries of its first slots are read and the unit guard runs on their
//!    keys with the full scan's evidence rules (`guard::no_evidence`), then
//!    the permission probe: the sweep script in a mode that runs every
//!    command it sends as a no-op, so an ACL refusing one stops the sweep
//!    here ([`Check::Permission`](crate::sweep::Check)). Every primary's
//!    checks pass before any primary deletes;
//! 4. per slot the primary serves (a standalone server: all 16384),
//!    `ZRANGEBYSCORE <index key> -inf <cutoff> WITHSCORES LIMIT 0 100`,
//!    pipelined over 256 slots, gives the due keys; entries naming a key
//!    of another slot, or one `sweep.pattern` does not match (what a full
//!    scan would not touch), are dropped, never swept;
//! 5. per index key one `EVAL` of the sweep script (`script.rs`) with the
//!    index key and its due keys (one slot), which removes each key's
//!    expired members with the full scan's exact bounds, at most
//!    `sweep.max_members_per_command` per key per call, and moves the
//!    key's entry to its next expiry or drops it, atomically with the
//!    removal; a slot with more due keys, or a key cut short, is read
//!    again while the calls make progress;
//! 6. the primary counts as finished when its slots did not move, no slot
//!    was skipped, and the scan ran to the end; the report adds the index
//!    size and lag ([`IndexReport`]).
//!
//! A full scan (`sweep --full`, the daemon's `due_index.full_scan`) with
//! the index on also repairs it: each key it sweeps gets its entry lowered
//! to its next expiry ([`lower_entries`]).

/// The sweep script's command, permission probe and reply.
mod call;
/// Reading the due entries of some slots.
mod due;
/// Lowering entries: the full scan's repair, the rebuild's step.
mod lower;
/// One primary's index sweep.
mod node;
/// The Lua of the sweep and of the repair.
mod script;

pub(super) use call::probe_commands;
pub(super) use lower::lower_found;

use std::time::Instant;

use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::clock::expired_now;
use super::cutoff::Expired;
use super::error::{Check, SweepError};
use super::mode::SweepMode;
use super::node::parallel_nodes;
use super::query::Found;
use super::remove::BatchOutcome;
use super::report::{rate, NodeReport, SweepProgress, SweepReport};
use crate::config::SweepSettings;
use crate::store::{Connection, StoreError};
use node::IndexNode;

/// What an index sweep adds to its report: the index as it found it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexReport {
    /// Entries in the index keys of the primaries swept (sum of `ZCARD`).
    pub index_size: u64,
    /// How far behind the oldest due entry was when the sweep read it: now
    /// less its score, in seconds (0 when nothing was due).
    pub index_lag_seconds: f64,
}

/// One node's end: its report, its failure, its index size and oldest due score.
type NodeEnded = (NodeReport, Option<StoreError>, (u64, Option<f64>));

/// Sweeps by the due index: every primary of `conn`, its due keys only
/// (see the module's steps). `settings.due_index` gives the key prefix;
/// whether it is enabled is the caller's choice (the index is read
/// either way).
///
/// # Errors
/// As [`sweep`](crate::sweep::sweep): a safety check refused (nothing was
/// deleted), or no primary could be swept.
pub async fn sweep_index(
    conn: &Connection,
    settings: &SweepSettings,
    mode: SweepMode,
    progress: &SweepProgress,
    stop: &CancellationToken,
) -> Result<SweepReport, SweepError> {
    let started = Instant::now();
    let nodes = conn
        .primaries()
        .await
        .map_err(|e| Check::ClusterTopology.failed(e))?;
    if nodes.is_empty() {
        return Err(Check::ClusterTopology.refused("no primary to sweep".to_owned()));
    }
    let (now_micros, expired) = expired_now(conn, settings).await?;
    let starts: Vec<_> = nodes
        .iter()
        .map(|primary| {
            IndexNode::start(
                conn,
                primary,
                settings,
                (now_micros, expired),
                mode,
                progress,
            )
        })
        .collect();
    let prepared: Vec<_> = stream::iter(starts)
        .buffered(parallel_nodes(settings))
        .try_collect()
        .await?;
    let finishes: Vec<_> = prepared
        .into_iter()
        .map(|node| async move {
            let (report, failure, index) = match node {
                Ok(node) => {
                    let index = (node.size, node.oldest);
                    let (report, failure) = node.finish(expired, mode, stop).await;
                    (report, failure, index)
                }
                Err(failed) => {
                    let (report, failure) = failed.report();
                    (report, failure, (0, None))
                }
            };
            progress.node_ended(&report);
            (report, failure, index)
        })
        .collect();
    let ended: Vec<NodeEnded> = stream::iter(finishes)
        .buffer_unordered(parallel_nodes(settings))
        .collect()
        .await;
    let mut reports = Vec::with_capacity(ended.len());
    let mut failures = Vec::new();
    let mut index = IndexReport::default();
    let per_second = settings.score_unit.per_second() as f64;
    for (report, failure, (size, oldest)) in ended {
        failures.extend(failure);
        reports.push(report);
        index.index_size += size;
        if let Some(oldest) = oldest.filter(|score| score.is_finite()) {
            let lag = (now_micros as f64 / 1e6 - oldest / per_second).max(0.0);
            index.index_lag_seconds = index.index_lag_seconds.max(lag);
        }
    }
    reports.sort_by(|a, b| a.node.cmp(&b.node));
    if failures.len() == reports.len() {
        if let Some(failure) = failures.into_iter().next() {
            return Err(failure.into());
        }
    }
    let interrupted = reports
        .iter()
        .any(|n| !n.finished && n.unfinished_reason.is_none());
    let duration = started.elapsed();
    let counts = progress.counts();
    Ok(SweepReport {
        mode,
        cutoff: expired.cutoff(),
        score_floor: expired.floor(),
        score_unit: settings.score_unit.to_string(),
        keys_per_second: rate(counts.due_keys, duration),
        counts,
        first_error: progress.first_error(),
        duration_seconds: duration.as_secs_f64(),
        interrupted,
        throttled_seconds: 0.0,
        unfinished_nodes: reports
            .iter()
            .filter(|n| n.unfinished_reason.is_some())
            .map(|n| n.node.clone())
            .collect(),
        nodes: reports,
        index: Some(index),
    })
}

/// Lowers the due-index entry of each of `keys` (on any node: a key that
/// moved is followed) to the key's earliest unexpired score, its first
/// score above `expired`'s cutoff, with `ZADD LT`: an entry is only ever
/// added or lowered, never raised, so it is only ever early. A key that is
/// not a sorted set, or has nothing above the cutoff, is left alone. The
/// index key is `prefix`'s for the key's slot. What a full scan does to
/// repair the index, and the step of a rebuild.
///
/// Returns `index_entries_moved` (entries added or lowered) and `errors`.
///
/// # Errors
/// [`StoreError`] when the pipeline fails as a whole, or on NOPERM,
/// READONLY or CLUSTERDOWN.
pub async fn lower_entries(
    conn: &mut Connection,
    prefix: &str,
    keys: &[Vec<u8>],
    expired: Expired,
) -> Result<BatchOutcome, StoreError> {
    let (lowered, stopped) = lower_found(conn, prefix, keys, Found::Anywhere, expired).await;
    stopped.map(|()| BatchOutcome {
        counts: lowered.counts,
        first_error: lowered.first_error,
    })
}
