//! What a round ends with: the counts and the log line of its sweep, and
//! the failure that `/readyz` reports until a round succeeds.

use super::trigger::RoundKind;
use crate::metrics::{Metrics, SweepResult};
use crate::sweep::{self, SweepReport};

/// What one round swept.
pub(super) struct RoundSweeps {
    /// `None` when every primary of this daemon's share was leased by
    /// another daemon this period.
    pub(super) report: Option<SweepReport>,
    /// Primaries of the share leased by another daemon this period.
    pub(super) skipped: usize,
}

/// Why a round failed, in one line: `/readyz` says it until a round
/// succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RoundFailure {
    pub(super) reason: String,
    /// The round swept nothing: it could not start or was refused (not a
    /// sweep that left some primaries unfinished or had per-key errors).
    /// A full scan that failed so is owed: it runs at the next tick.
    pub(super) whole: bool,
}

/// Counts a round of `round` ending with `result`: in `sweeps_total`, and
/// a full scan in `full_scans_total` too.
fn count(metrics: &Metrics, round: RoundKind, result: SweepResult) {
    metrics.count_sweep(result);
    if round == RoundKind::Full {
        metrics.count_full_scan(result);
    }
}

/// Counts and logs a round of `round` that could not sweep (`kind` names
/// the failure in the metrics).
pub(super) fn failed(
    metrics: &Metrics,
    round: RoundKind,
    kind: &str,
    reason: String,
) -> RoundFailure {
    count(metrics, round, SweepResult::Error);
    metrics.count_error(kind, 1);
    tracing::error!(kind, round = round.name(), "sweep failed: {reason}");
    RoundFailure {
        reason: format!("last sweep failed: {reason}"),
        whole: true,
    }
}

/// Counts and logs what a round of `round` swept; a round that swept less than its
/// share, or had per-key errors, failed.
pub(super) fn finished(
    metrics: &Metrics,
    lock_key: &str,
    round: RoundKind,
    swept: &RoundSweeps,
) -> Result<(), RoundFailure> {
    let Some(report) = &swept.report else {
        count(metrics, round, SweepResult::SkippedLocked);
        tracing::info!(
            key = lock_key,
            "another daemon holds the replica lock for this period; skipping"
        );
        return Ok(());
    };
    metrics.record_report(report);
    let result = if report.interrupted {
        SweepResult::Interrupted
    } else if !report.unfinished_nodes.is_empty() {
        SweepResult::Incomplete
    } else if report.counts.errors > 0 {
        SweepResult::Error
    } else {
        SweepResult::Ok
    };
    count(metrics, round, result);
    // One field per counter, from the sweep's one table of them
    // (`tracing` needs the field names when it compiles).
    macro_rules! log_finished {
        (($report:ident, $skipped:expr, $round_kind:expr) $(
            $(#[doc = $doc:literal])+ $field:ident / $kind:ident : $printed:expr, $metric:expr;
        )+) => {
            tracing::info!(
                kind = $round_kind,
                nodes = $report.nodes.len(),
                leased_by_others = $skipped,
                $($field = $report.counts.$field,)+
                duration_seconds = $report.duration_seconds,
                keys_per_second = $report.keys_per_second.round(),
                interrupted = $report.interrupted,
                cutoff = $report.cutoff,
                // Index mode only: the index as this sweep found it.
                index_entries = $report.index.as_ref().and_then(|index| index.index_size),
                index_lag_seconds = $report.index.as_ref().map(|index| index.index_lag_seconds),
                "sweep finished"
            )
        };
    }
    sweep::count_table!(log_finished!(report, swept.skipped, round.name()));
    let mut failures = Vec::new();
    for node in &report.nodes {
        if let Some(reason) = &node.unfinished_reason {
            tracing::warn!(
                node = node.node,
                reason,
                "node not finished; the next sweep covers it"
            );
            failures.push(format!("{}: {reason}", node.node));
        }
    }
    if report.counts.errors > 0 {
        failures.push(format!(
            "{} per-key errors, first: {}",
            report.counts.errors,
            report.first_error.as_deref().unwrap_or("unknown")
        ));
    }
    match result {
        SweepResult::Ok | SweepResult::Interrupted => {
            metrics.mark_success();
            Ok(())
        }
        _ => {
            if result == SweepResult::Incomplete {
                metrics.count_error(crate::metrics::INCOMPLETE, 1);
            }
            Err(RoundFailure {
                reason: format!("last sweep: {}", failures.join("; ")),
                whole: false,
            })
        }
    }
}
