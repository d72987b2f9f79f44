//! The label values of the labelled counters (`errors_total{kind}`,
//! `sweeps_total{result}`, `http_connections_closed_total{reason}`), each
//! listed once so that every series exists at 0 from start-up.

use std::collections::BTreeSet;

use crate::store::StoreError;
use crate::sweep::{Check, CountKind, CountMetric};

/// The `errors_total` kind of a round that left primaries unfinished.
pub const INCOMPLETE: &str = "incomplete";

/// Every `kind` label value `errors_total` can have: a Redis error's
/// ([`StoreError::KINDS`]), a refusing check's ([`Check::ALL`]), a per-key
/// error's ([`CountMetric::Error`]) and [`INCOMPLETE`]. Each series starts
/// at 0, so the first error of a kind is an increase; a series created by
/// its first error starts at 1 and increase() never sees it.
pub fn error_kinds() -> BTreeSet<&'static str> {
    let per_key = CountKind::ALL
        .iter()
        .filter_map(|kind| match kind.metric() {
            Some(CountMetric::Error(error)) => Some(error),
            _ => None,
        });
    StoreError::KINDS
        .iter()
        .copied()
        .chain(Check::ALL.iter().map(|check| check.label()))
        .chain(per_key)
        .chain([INCOMPLETE])
        .collect()
}

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
    /// In index mode, a tick came while a full scan ran: the full scan
    /// does all an index sweep would, so the tick is covered, not overrun.
    SkippedFullScan,
    /// Another daemon holds the replica lock for this period.
    SkippedLocked,
}

impl SweepResult {
    /// Every result: each `sweeps_total` series starts at 0.
    pub const ALL: [Self; 7] = [
        Self::Ok,
        Self::Error,
        Self::Interrupted,
        Self::Incomplete,
        Self::SkippedOverlap,
        Self::SkippedFullScan,
        Self::SkippedLocked,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Interrupted => "interrupted",
            Self::Incomplete => "incomplete",
            Self::SkippedOverlap => "skipped_overlap",
            Self::SkippedFullScan => "skipped_full_scan",
            Self::SkippedLocked => "skipped_locked",
        }
    }
}

/// Why the server closed an HTTP connection; the `reason` label of
/// `http_connections_closed_total`.
#[derive(Clone, Copy)]
pub(super) enum HttpClosed {
    Evicted,
    Refused,
    Timeout,
}

impl HttpClosed {
    pub(super) const ALL: [Self; 3] = [Self::Evicted, Self::Refused, Self::Timeout];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// Every known series of the two counters the alerts take increase()
    /// of is exposed at 0 before anything happened.
    #[test]
    fn counters_start_at_zero() {
        let text = Metrics::new().map(|m| m.render()).unwrap_or_default();
        let kinds = error_kinds();
        for kind in [
            "unit_guard",
            "clock",
            "clock_skew",
            "cutoff",
            "permission",
            "noperm",
        ] {
            assert!(kinds.contains(kind), "{kind}");
        }
        for kind in &kinds {
            let line = format!("token_sweeper_errors_total{{kind=\"{kind}\"}} 0\n");
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
        for result in SweepResult::ALL {
            let line = format!(
                "token_sweeper_sweeps_total{{result=\"{}\"}} 0\n",
                result.label()
            );
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
    }
}
