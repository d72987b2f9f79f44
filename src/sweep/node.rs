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
use super::error::{Check, SweepError};
use super::guard::guard_node;
use super::index::probe_commands;
use super::mode::SweepMode;
use super::permission::check_permission;
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

/// `Some(reason)` when the node on `conn`, which served `before` when
/// its sweep started (`None`: not a cluster), moved slots or had one
/// migrating while it was swept: keys may have left ahead of the
/// cursor (or the due read) unseen, so it cannot count as finished.
pub(super) async fn slots_changed(
    conn: &mut Connection,
    before: Option<SlotAssignment>,
) -> Result<Option<String>, StoreError> {
    let Some(before) = before else {
        return Ok(None);
    };
    // A node that answered with a `myself` line before the scan must
    // answer with one after it: `slot_assignment` errors otherwise.
    let after = conn.slot_assignment().await?;
    Ok(if after.as_ref() != Some(&before) {
        Some(
            "its slots or configuration epoch changed during the sweep (resharding or \
             failover)"
                .to_owned(),
        )
    } else if !before.migrations.is_empty() {
        // While slot N moves from A (migrating) to B (importing), each
        // of its keys is on exactly one of them: on A until MIGRATE
        // moves it, then on B (a key created meanwhile is created on B,
        // as A answers ASK for keys it lacks). SCAN is per node and
        // returns what the node holds, whatever the slot: A's scan the
        // keys still on A, which A serves; B's scan those already moved,
        // which B serves after ASKING (see `Found::ScannedOn`); a key
        // moved after A's scan returned it answers ASK there and is
        // swept on B. So while no key moves, each is swept where it
        // lives, exactly once. But a key MIGRATE moves after B's cursor
        // passed it and before A's reached it is seen by neither scan,
        // and the markers look the same whether keys move or the
        // migration is stuck: neither node can count as finished until
        // the markers go. The next sweep sees such a key on B.
        let open: Vec<String> = before.migrations.iter().map(ToString::to_string).collect();
        Some(format!(
            "a slot migration was open during the sweep ({}): keys moving meanwhile may \
             have been missed; one that stays open is stuck (redis-cli --cluster fix)",
            open.join(", ")
        ))
    } else {
        None
    })
}

/// Whether a node's `error` is this client's own inability (its ACL user
/// may not run a command there, its credentials are refused there, its
/// client settings do not work), which another client may not share, as
/// opposed to the node being down, stalled or reconfiguring, which every
/// client sees alike. ACLs and passwords are per node on a cluster.
fn is_own_inability(error: &StoreError) -> bool {
    matches!(error.kind(), "noperm" | "auth" | "config")
}

/// The whole sweep's error when a node's `error` is this client's own
/// inability ([`is_own_inability`]): a refused permission check. Every
/// client would not fail alike there, so this one must not go on as if it
/// could sweep (a daemon would stay counted in the shares and keep this
/// node out of the others'). `None`: the node's own failure.
pub(super) fn own_inability(error: &StoreError) -> Option<SweepError> {
    is_own_inability(error).then(|| SweepError::SafetyCheck {
        check: Check::Permission,
        reason: error.to_string(),
        refusal: Some(error.kind()),
    })
}

/// Why a primary could not be opened for a sweep or a rebuild.
pub(super) enum NotOpened {
    /// Its connection or its slot read failed.
    Failed(StoreError),
    /// It no longer serves what it was chosen for ([`moved_since`]).
    Moved(String),
}

/// Connects to `primary` and reads the slots it serves now, checked
/// against those it was chosen for: the opening of every node's sweep,
/// index sweep and rebuild.
pub(super) async fn open_primary(
    conn: &Connection,
    primary: &Primary,
) -> Result<(Connection, Option<SlotAssignment>), NotOpened> {
    let mut node_conn = conn
        .node(&primary.address)
        .await
        .map_err(NotOpened::Failed)?;
    let assignment = node_conn
        .slot_assignment()
        .await
        .map_err(NotOpened::Failed)?;
    if let Some(reason) = assignment
        .as_ref()
        .and_then(|now| moved_since(primary, now))
    {
        return Err(NotOpened::Moved(reason));
    }
    Ok((node_conn, assignment))
}

/// Why a node, by its own account `now`, no longer serves what `primary`
/// says it did when the sweep chose it; `None` when it still does. Its
/// scan could not cover slots it has lost, and slots that moved to a node
/// already swept would be seen by nobody.
pub(super) fn moved_since(primary: &Primary, now: &SlotAssignment) -> Option<String> {
    let mut expected = primary.slots.clone();
    let mut serves = now.slots.clone();
    // Slot lists compare as sets of ranges: the order is the server's.
    for ranges in [&mut expected, &mut serves] {
        ranges.sort_by_key(|range| (*range.start(), *range.end()));
    }
    if !now.primary {
        Some("it is no longer a primary (failover)".to_owned())
    } else if serves != expected {
        Some("its slots changed since the cluster topology was read".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(primary: bool, slots: Vec<std::ops::RangeInclusive<u16>>) -> SlotAssignment {
        SlotAssignment {
            primary,
            config_epoch: 1,
            slots,
            migrations: Vec::new(),
        }
    }

    #[test]
    fn a_node_still_serves_its_slots_in_any_order_and_nothing_else() {
        let chosen = Primary {
            address: "127.0.0.1:7000".to_owned(),
            slots: vec![0..=99, 200..=299],
        };
        assert_eq!(
            moved_since(&chosen, &assignment(true, vec![200..=299, 0..=99])),
            None
        );
        assert!(moved_since(&chosen, &assignment(true, vec![0..=99]))
            .is_some_and(|reason| reason.contains("slots changed")));
        assert!(moved_since(&chosen, &assignment(true, vec![0..=299])).is_some());
        assert!(
            moved_since(&chosen, &assignment(false, vec![0..=99, 200..=299]))
                .is_some_and(|reason| reason.contains("failover"))
        );
    }
}
