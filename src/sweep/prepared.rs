//! [`PreparedSweep`]: every primary whose checks have run, before anything
//! is deleted, so that a caller (a daemon taking leases) can keep only the
//! primaries it may sweep; then steps 4 to 6 of each ([`PreparedSweep::run`]).

use std::time::Instant;

use futures_util::{stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::cutoff::Expired;
use super::error::SweepError;
use super::index::{IndexFound, IndexNode};
use super::mode::SweepMode;
use super::node::{parallel_nodes, NodeFailed, NodeSweep};
use super::report::{rate, IndexReport, NodeReport, SweepProgress, SweepReport};
use crate::config::SweepSettings;
use crate::store::StoreError;

/// One primary whose checks passed, ready to be swept by a full scan or by
/// the due index.
pub(super) enum Ready<'a> {
    /// A full scan's node: SCAN, then remove.
    Scan(NodeSweep<'a>),
    /// An index sweep's node: its due keys only.
    Index(IndexNode<'a>),
}

impl Ready<'_> {
    pub(super) fn address(&self) -> &str {
        match self {
            Ready::Scan(node) => &node.address,
            Ready::Index(node) => &node.address,
        }
    }

    /// Takes what the checks counted back out of the sweep's counts.
    fn retract(&self) {
        match self {
            Ready::Scan(node) => node.tally.retract(),
            Ready::Index(node) => node.tally.retract(),
        }
    }
}

/// A sweep whose checks passed on every primary ([`prepare`](crate::sweep::prepare)) and that has
/// deleted nothing yet.
pub struct PreparedSweep<'a> {
    pub(super) started: Instant,
    pub(super) settings: &'a SweepSettings,
    pub(super) progress: &'a SweepProgress,
    pub(super) expired: Expired,
    /// The mode the permission check was run for, so the one `run` uses.
    pub(super) mode: SweepMode,
    pub(super) nodes: Vec<Result<Ready<'a>, NodeFailed>>,
    /// "Now" of the checks, in microseconds: the index lag is counted from it.
    pub(super) now_micros: i128,
    /// Swept by the due index (the report gains [`IndexReport`](crate::sweep::IndexReport)).
    pub(super) index: bool,
    /// Cancelled: stop sending, finish the batches in flight.
    pub(super) stop: CancellationToken,
    /// When the period of this sweep ends, for the throttle's "behind".
    pub(super) deadline: Option<tokio::time::Instant>,
}

impl PreparedSweep<'_> {
    /// Says when this sweep's period ends (the daemon's next tick): a
    /// primary whose sweep runs past it, or whose adaptive throttle
    /// projects it will, reports itself behind
    /// ([`ThrottleReading::behind`](crate::sweep::ThrottleReading::behind)).
    pub fn set_deadline(&mut self, deadline: tokio::time::Instant) {
        self.deadline = Some(deadline);
    }

    /// Keeps only the primaries (by `host:port`) that `keep` accepts; the
    /// others are not swept, and what their checks scanned is taken back
    /// out of the sweep's counts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.nodes.retain(|node| {
            let kept = keep(match node {
                Ok(node) => node.address(),
                Err(failed) => &failed.address,
            });
            if let (false, Ok(node)) = (kept, node) {
                node.retract();
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
            .any(|n| matches!(n, Ok(n) if n.address() == node))
    }
}

impl PreparedSweep<'_> {
    /// Scans the rest of each primary and removes (or counts, in a dry run:
    /// the mode given to [`prepare`](crate::sweep::prepare)) its expired
    /// members, or in index mode
    /// ([`SweepBy::Index`](crate::sweep::SweepBy::Index)) sweeps its due
    /// keys, up to
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
            stop,
            deadline,
            now_micros,
            index,
        } = self;
        // Steps 4 and 5, then the first half of 6: each node scans and
        // removes, then confirms its slots did not move meanwhile.
        let stop = &stop;
        let finishes: Vec<_> = nodes
            .into_iter()
            .map(|node| async move {
                let (report, failure, found) = match node {
                    Ok(Ready::Scan(node)) => {
                        let (report, failure) = node.finish(expired, mode, stop, deadline).await;
                        (report, failure, None)
                    }
                    Ok(Ready::Index(node)) => {
                        let (mut report, failure, found) =
                            node.finish(expired, mode, stop, deadline).await;
                        let unit = settings.score_unit;
                        report.index = Some(IndexReport::of(&[found], now_micros, unit));
                        (report, failure, Some(found))
                    }
                    Err(failed) => {
                        let (report, failure) = failed.report();
                        // An index sweep's node that found nothing.
                        (report, failure, index.then_some((None, None)))
                    }
                };
                progress.node_ended(&report);
                (report, failure, found)
            })
            .collect();
        let ended: Vec<(NodeReport, Option<StoreError>, Option<IndexFound>)> =
            stream::iter(finishes)
                .buffer_unordered(parallel_nodes(settings))
                .collect()
                .await;

        // Step 6, the report.
        let mut nodes = Vec::with_capacity(ended.len());
        let mut failures = Vec::new();
        let mut found = Vec::new();
        for (report, failure, index) in ended {
            failures.extend(failure);
            nodes.push(report);
            found.extend(index);
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
        // Index mode reads no keyspace: its rate is of the due keys.
        let keys = if index {
            counts.due_keys
        } else {
            counts.keys_scanned
        };
        Ok(SweepReport {
            mode,
            cutoff: expired.cutoff(),
            score_floor: expired.floor(),
            score_unit: settings.score_unit.to_string(),
            keys_per_second: rate(keys, duration),
            counts,
            first_error: progress.first_error(),
            duration_seconds: duration.as_secs_f64(),
            interrupted,
            throttled_seconds: nodes.iter().map(|n| n.throttled_seconds).sum(),
            unfinished_nodes: nodes
                .iter()
                .filter(|n| n.unfinished_reason.is_some())
                .map(|n| n.node.clone())
                .collect(),
            nodes,
            index: index.then(|| IndexReport::of(&found, now_micros, settings.score_unit)),
        })
    }
}
