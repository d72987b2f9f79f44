//! One primary's sweep: its checks ([`NodeSweep::start`]: slots, unit
//! guard, permission), then its scan and removal and the check that its
//! slots did not move meanwhile ([`NodeSweep::finish`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bounded::BOUND_READ;
use super::counts::Counters;
use super::cutoff::Expired;
use super::error::SweepError;
use super::guard::guard_node;
use super::index::probe_commands;
use super::mode::SweepMode;
use super::permission::check_permission;
use super::primary::{open_primary, own_inability, slots_changed, NotOpened};
use super::query::Found;
use super::remove::sweep_batch;
use super::report::{NodeReport, SweepProgress, Tally};
use super::scan::Scanner;
use crate::config::{SweepSettings, ThrottleMode};
use crate::due_index::index_key;
use crate::store::{Connection, Primary, SlotAssignment, StoreError};

/// `sweep.max_parallel_nodes`, at least one.
pub(super) fn parallel_nodes(settings: &SweepSettings) -> usize {
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

/// A node that could not be swept at all.
pub(super) struct NodeFailed {
    pub(super) address: String,
    /// Why, for the report.
    reason: String,
    /// The Redis error behind it, if it was one (not when the node no
    /// longer serves the slots it was chosen for).
    error: Option<StoreError>,
}

impl NodeFailed {
    /// A node not swept, and why.
    pub(super) fn new(address: &str, reason: String, error: Option<StoreError>) -> Self {
        Self {
            address: address.to_owned(),
            reason,
            error,
        }
    }

    /// A node's `error`: this node not swept (inner), or the whole sweep
    /// refused when it is this client's own inability (outer:
    /// [`own_inability`]).
    pub(super) fn from_error<T>(
        address: &str,
        error: StoreError,
    ) -> Result<Result<T, NodeFailed>, SweepError> {
        match own_inability(&error) {
            Some(refused) => Err(refused),
            None => Ok(Err(Self::new(address, error.to_string(), Some(error)))),
        }
    }

    /// A node whose checks did not answer within `limit`: not swept, as
    /// one that cannot be reached.
    pub(super) fn stalled(address: &str, limit: Duration) -> Self {
        let error = StoreError::Command {
            address: address.to_owned(),
            what: "the checks before the sweep",
            source: no_answer_within(limit),
        };
        Self {
            address: address.to_owned(),
            reason: error.to_string(),
            error: Some(error),
        }
    }

    pub(super) fn report(self) -> (NodeReport, Option<StoreError>) {
        let report = NodeReport::new(self.address, &Counters::default(), Some(self.reason));
        (report, self.error)
    }
}

/// One node's sweep, between its unit guard and its end.
pub(super) struct NodeSweep<'a> {
    pub(super) address: String,
    /// Direct to the node; SCAN and the pipelines go here.
    pub(super) conn: Connection,
    /// The node's slot assignment before the scan (`None`: not a cluster).
    pub(super) assignment: Option<SlotAssignment>,
    /// The slots it was importing then: its keys of those are sent after `ASKING`.
    pub(super) importing: BTreeSet<u16>,
    pub(super) scanner: Scanner<'a>,
    pub(super) tally: Tally<'a>,
    /// `stop` was cancelled during the unit-guard sample.
    interrupted: bool,
}

impl<'a> NodeSweep<'a> {
    /// Connects to the node, checks it still serves the slots it was chosen
    /// for, and runs its unit guard and permission check. The outer error
    /// aborts the whole sweep (a check refused or could not run); the inner
    /// one is this node not being swept.
    pub(super) async fn start(
        conn: &Connection,
        primary: &Primary,
        settings: &'a SweepSettings,
        now_micros: i128,
        mode: SweepMode,
        progress: &'a SweepProgress,
        stop: &CancellationToken,
    ) -> Result<Result<NodeSweep<'a>, NodeFailed>, SweepError> {
        let address = primary.address.as_str();
        let failed = |error: StoreError| NodeFailed::from_error(address, error);
        let (mut node_conn, assignment) = match open_primary(conn, primary).await {
            Ok(opened) => opened,
            Err(NotOpened::Failed(e)) => return failed(e),
            // Swept or not, it could not count as finished; the next sweep
            // reads the topology afresh.
            Err(NotOpened::Moved(reason)) => {
                return Ok(Err(NodeFailed::new(address, reason, None)))
            }
        };
        let importing = assignment
            .as_ref()
            .map(SlotAssignment::importing)
            .unwrap_or_default();
        let tally = Tally {
            progress,
            node: Arc::default(),
        };
        // The unit guard's pages are `scan_count` in either mode: its checks
        // run within a time limit under the daemon's lock, and a few pages
        // once per sweep are not what other clients feel.
        let mut scanner = Scanner::new(node_conn.clone(), settings, tally.clone());
        let found = Found::scanned_on(&importing, settings);
        let scanned = if settings.unit_guard {
            guard_node(&mut scanner, now_micros, found, stop).await?
        } else {
            // The permission check needs a key: the first SCAN page.
            scanner.fill(1, stop).await
        };
        let interrupted = match scanned {
            Ok(interrupted) => interrupted,
            Err(e) => return failed(e),
        };
        // No key on the node: nothing to remove, so nothing to prove.
        // Interrupted: nothing will be sent.
        if let (false, Some(key)) = (interrupted, scanner.pending.first()) {
            // The bounded removal reads before it removes: that command too.
            // Both at once, in one round trip: the checks of a node run
            // within a time limit under the daemon's lock.
            let bounded = settings.throttle == ThrottleMode::Adaptive && mode == SweepMode::Remove;
            let mut read_conn = node_conn.clone();
            let read = async {
                if bounded {
                    check_permission(&mut read_conn, key, found, BOUND_READ).await
                } else {
                    Ok(())
                }
            };
            tokio::try_join!(
                check_permission(&mut node_conn, key, found, mode.command()),
                read
            )?;
            // A full scan that repairs the due index also sends its script.
            if let (SweepMode::Remove, Some(prefix)) = (mode, found.repair()) {
                let probe = std::slice::from_ref(key);
                let index = index_key(prefix, key);
                if let Err(e) = probe_commands(&mut node_conn, &index, probe, mode).await? {
                    return failed(e);
                }
            }
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
    pub(super) async fn finish(
        mut self,
        expired: Expired,
        mode: SweepMode,
        stop: &CancellationToken,
        deadline: Option<tokio::time::Instant>,
    ) -> (NodeReport, Option<StoreError>) {
        let mut throttled = Duration::ZERO;
        let scanned = if self.interrupted {
            Ok(true)
        } else if self.scanner.settings.throttle == ThrottleMode::Adaptive {
            let (scanned, held) = self
                .scan_and_remove_gently(expired, mode, stop, deadline)
                .await;
            throttled = held;
            scanned
        } else {
            self.scan_and_remove(expired, mode, stop).await
        };
        let (finished, reason, error) = match scanned {
            // Interrupted: unfinished, but nothing went wrong.
            Ok(true) => (false, None, None),
            Ok(false) => match slots_changed(&mut self.conn, self.assignment.take()).await {
                Ok(None) => (true, None, None),
                Ok(Some(reason)) => (false, Some(reason), None),
                Err(e) => (false, Some(e.to_string()), Some(e)),
            },
            Err(e) => (false, Some(e.to_string()), Some(e)),
        };
        let mut report = NodeReport::new(self.address, &self.tally.node, reason);
        report.finished = finished;
        report.throttled_seconds = throttled.as_secs_f64();
        (report, error)
    }

    /// Returns whether `stop` cut the scan short.
    async fn scan_and_remove(
        &mut self,
        expired: Expired,
        mode: SweepMode,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        // Capacity = max_in_flight: the scanner may run one channel's worth
        // ahead of the pipelines, which bounds memory to about
        // 2 * max_in_flight batches per node.
        let in_flight = usize::try_from(self.scanner.settings.max_in_flight)
            .unwrap_or(1)
            .max(1);
        let (batches_tx, mut batches_rx) = mpsc::channel::<Vec<Vec<u8>>>(in_flight);
        let settings = self.scanner.settings;
        let scanning = self.scanner.run(batches_tx, stop);
        let conn = &self.conn;
        let tally = &self.tally;
        let found = Found::scanned_on(&self.importing, settings);
        let removing = stream::poll_fn(|cx| batches_rx.poll_recv(cx))
            .map(|batch| {
                let mut conn = conn.clone();
                async move {
                    let sent = Instant::now();
                    let outcome = sweep_batch(&mut conn, &batch, found, expired, mode).await;
                    tally.progress.batch_timed(sent.elapsed());
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
}
