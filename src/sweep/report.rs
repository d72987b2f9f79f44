//! What a sweep tells: live [`SweepProgress`] while it runs, a
//! [`SweepReport`] (with a [`NodeReport`] per primary) when it ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::counts::{CountKind, Counters, Counts};
use super::mode::SweepMode;
use super::remove::BatchOutcome;
use super::throttle::reading::ThrottleReading;

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
    /// Told of each throttle decision.
    throttle: Option<ThrottleHook>,
}

/// Receives each [`ThrottleReading`].
type ThrottleHook = Box<dyn Fn(&ThrottleReading) + Send + Sync>;

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
    /// every node [`PreparedSweep::run`](crate::sweep::PreparedSweep::run) sweeps, from the sweeping task:
    /// it must not block.
    #[must_use]
    pub fn on_node_end(mut self, hook: impl Fn(&NodeReport) + Send + Sync + 'static) -> Self {
        self.node_end = Some(Box::new(hook));
        self
    }

    /// Also tells `hook` of every decision of the adaptive throttle of
    /// every node (every 250 ms or so while it sweeps, and once as it
    /// ends), for the metrics. From the sweeping task: it must not block.
    #[must_use]
    pub fn on_throttle(mut self, hook: impl Fn(&ThrottleReading) + Send + Sync + 'static) -> Self {
        self.throttle = Some(Box::new(hook));
        self
    }

    pub(super) fn throttle_read(&self, reading: &ThrottleReading) {
        if let Some(hook) = &self.throttle {
            hook(reading);
        }
    }

    pub(super) fn node_ended(&self, report: &NodeReport) {
        if let Some(hook) = &self.node_end {
            hook(report);
        }
    }

    pub(super) fn batch_timed(&self, rtt: Duration) {
        if let Some(timer) = &self.batch_timer {
            timer(rtt);
        }
    }

    /// Keys returned by SCAN so far.
    pub fn keys_scanned(&self) -> u64 {
        self.total.get(CountKind::KeysScanned)
    }

    /// Members removed (or, in a dry run, found expired) so far.
    pub fn members_removed(&self) -> u64 {
        self.total.get(CountKind::MembersRemoved)
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
pub(super) struct Tally<'a> {
    pub(super) progress: &'a SweepProgress,
    pub(super) node: Arc<Counters>,
}

impl Tally<'_> {
    pub(super) fn scanned(&self, keys: usize) {
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
    pub(super) fn retract(&self) {
        self.progress.total.sub(&self.node.snapshot());
    }

    pub(super) fn add(&self, outcome: &BatchOutcome) {
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
    /// ([`MS_REMOVAL_FLOOR`](crate::sweep::MS_REMOVAL_FLOOR)) were kept whatever the cutoff, because such a
    /// score could be a seconds timestamp (see [`Expired`](crate::sweep::Expired)); `None`
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
    /// Time the adaptive throttle held the sweep below its full share,
    /// summed over the nodes (0 with `sweep.throttle = "off"`).
    pub throttled_seconds: f64,
    /// Nodes that failed or whose slots moved while they were swept: some of
    /// their keys may not have been seen. The next sweep covers them.
    pub unfinished_nodes: Vec<String>,
    /// Per node (one entry for a single server, one per primary of a cluster).
    pub nodes: Vec<NodeReport>,
    /// Index mode: the due index as the sweep found it; `None` for a full scan.
    pub index: Option<IndexReport>,
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
    /// Time the adaptive throttle held this node's sweep below its full share.
    pub throttled_seconds: f64,
    /// Why not, when not finished.
    pub unfinished_reason: Option<String>,
    /// Index mode: this primary's index, when its checks read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexReport>,
}

/// What an index sweep adds to its report, and to each primary's: the
/// index as it found it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexReport {
    /// Entries in the index keys of the primaries swept (sum of `ZCARD`;
    /// in a primary's report, its own); `None` when the sweep did not read
    /// it ([`SweepBy::Index`](crate::sweep::SweepBy::Index)), or not on
    /// every primary (one failed, or had slots skipped).
    pub index_size: Option<u64>,
    /// How far behind the oldest due entry was when the sweep read it: now
    /// less its score, in seconds (0 when nothing was due).
    pub index_lag_seconds: f64,
}

impl NodeReport {
    pub(super) fn new(node: String, counts: &Counters, unfinished_reason: Option<String>) -> Self {
        Self {
            node,
            counts: counts.snapshot(),
            finished: false,
            throttled_seconds: 0.0,
            unfinished_reason,
            index: None,
        }
    }
}

pub(super) fn rate(count: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}
