//! The due index's metrics (`sweep.due_index`): its size and lag per
//! primary, as each index sweep found them, and the full scans by how
//! they ended. The counters of what index sweeps did (due keys, entries
//! moved and dropped) are per-node sweep counters, from the sweep's table.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use super::kinds::SweepResult;
use crate::sweep::IndexReport;

/// The due index's series.
#[derive(Clone)]
pub(super) struct IndexMetrics {
    /// By `node`: entries in the primary's index keys, as last read.
    entries: GaugeVec,
    /// By `node`: now less the oldest due score, at the start of the last
    /// index sweep of the primary.
    lag: GaugeVec,
    /// By `result`: rounds that ran a full scan.
    full_scans: IntCounterVec,
}

impl IndexMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let name = |n: &str| format!("token_sweeper_{n}");
        let metrics = Self {
            entries: GaugeVec::new(
                Opts::new(
                    name("due_index_entries"),
                    "Entries in this primary's due index keys, as last read: index rounds \
                     read them until one has, then once an hour.",
                ),
                &["node"],
            )?,
            lag: GaugeVec::new(
                Opts::new(
                    name("due_index_lag_seconds"),
                    "Now less the oldest due score of this primary's due index, at the start \
                     of its last index sweep (0 when nothing was due).",
                ),
                &["node"],
            )?,
            full_scans: IntCounterVec::new(
                Opts::new(
                    name("full_scans_total"),
                    "Rounds that ran a full scan (SCAN of every key), by how they ended: with \
                     the due index off every round, with it on those of \
                     sweep.due_index.full_scan. Also counted in sweeps_total.",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(metrics.entries.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.full_scans.clone()))?;
        // Every series from 0, as sweeps_total's: the first failure is an
        // increase. Only the results a round that ran can have.
        for result in [
            SweepResult::Ok,
            SweepResult::Error,
            SweepResult::Interrupted,
            SweepResult::Incomplete,
            SweepResult::SkippedLocked,
        ] {
            metrics.full_scans.with_label_values(&[result.label()]);
        }
        Ok(metrics)
    }

    /// One primary's index, as its index sweep found it.
    pub(super) fn record(&self, node: &str, index: &IndexReport) {
        // Not read by every sweep: the last reading stands.
        if let Some(size) = index.index_size {
            self.entries.with_label_values(&[node]).set(size as f64);
        }
        self.lag
            .with_label_values(&[node])
            .set(index.index_lag_seconds);
    }

    pub(super) fn count_full_scan(&self, result: SweepResult) {
        self.full_scans.with_label_values(&[result.label()]).inc();
    }

    /// Drops the series of a node that is no longer a primary.
    pub(super) fn forget(&self, node: &str) {
        // Err: no such series; nothing to drop.
        let _ = self.entries.remove_label_values(&[node]);
        let _ = self.lag.remove_label_values(&[node]);
    }
}
