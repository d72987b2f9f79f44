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
    /// By `node`: when this daemon's full scan of the primary (index mode)
    /// started sweeping, its checks passed and its lease taken; no series
    /// when none runs. Index sweeps of the primary wait for it, so the
    /// alerts on the last success stand down for its own period instead
    /// of paging every night.
    full_scan_started: GaugeVec,
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
            full_scan_started: GaugeVec::new(
                Opts::new(
                    name("full_scan_started_timestamp_seconds"),
                    "While this daemon's full scan of the primary runs in index mode (its \
                     index sweeps wait for it), when it started sweeping, in Unix seconds.",
                ),
                &["node"],
            )?,
        };
        registry.register(Box::new(metrics.full_scan_started.clone()))?;
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

    pub(super) fn full_scan_started(&self, node: &str, at: f64) {
        self.full_scan_started.with_label_values(&[node]).set(at);
    }

    /// The full scan of `node` ended (all of them: `None`).
    pub(super) fn full_scan_ended(&self, node: Option<&str>) {
        match node {
            // Err: no such series; nothing to drop.
            Some(node) => drop(self.full_scan_started.remove_label_values(&[node])),
            None => self.full_scan_started.reset(),
        }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::Metrics;

    /// A daemon's index series (size, lag) stay only for the primaries its
    /// last index round swept: a full scan leaves them, an index round
    /// drops those of primaries now another daemon's share, and the index
    /// turned off drops them all. A stale lag would keep an alert firing.
    #[test]
    fn index_series_stay_only_for_primaries_the_last_index_round_swept() {
        use crate::sweep::{Counts, IndexReport, NodeReport};

        let Ok(metrics) = Metrics::new() else {
            panic!("the registry")
        };
        let primaries = ["10.0.0.1:6379", "10.0.0.2:6379"];
        for node in primaries {
            metrics.record_node(&NodeReport {
                node: node.to_owned(),
                counts: Counts::default(),
                finished: true,
                throttled_seconds: 0.0,
                unfinished_reason: None,
                index: Some(IndexReport {
                    index_size: Some(7),
                    index_lag_seconds: 3.0,
                }),
            });
        }
        let series = |metrics: &Metrics| {
            let text = metrics.render();
            primaries.map(|node| {
                let entries = format!("token_sweeper_due_index_entries{{node=\"{node}\"}} 7\n");
                let lag = format!("token_sweeper_due_index_lag_seconds{{node=\"{node}\"}} 3\n");
                assert_eq!(text.contains(&entries), text.contains(&lag), "{text}");
                text.contains(&entries)
            })
        };
        assert_eq!(series(&metrics), [true, true]);
        let first: BTreeSet<String> = [primaries[0].to_owned()].into();
        metrics.retain_nodes(primaries, &first, None);
        assert_eq!(series(&metrics), [true, true], "a full scan leaves them");
        metrics.retain_nodes(primaries, &first, Some(&first));
        assert_eq!(series(&metrics), [true, false], "the other's share");
        metrics.retain_nodes(primaries, &first, Some(&BTreeSet::new()));
        assert_eq!(series(&metrics), [false, false], "the index off");
    }
}
