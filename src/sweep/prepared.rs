//! [`PreparedSweep`]: every primary whose checks have run, before anything
//! is deleted, so that a caller (a daemon taking leases) can keep only the
//! primaries it may sweep.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::cutoff::Expired;
use super::index::IndexNode;
use super::mode::SweepMode;
use super::node::{NodeFailed, NodeSweep};
use super::report::SweepProgress;
use crate::config::SweepSettings;

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
