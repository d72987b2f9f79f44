//! In index mode, when a round is a full scan (the safety net that also
//! repairs the index) instead of an index sweep: its own plan
//! (`sweep.due_index.full_scan`), a full scan due waiting for the running
//! round, and one owed after a failure.

use chrono::{DateTime, Utc};

use super::ticker::Ticker;
use super::trigger::RoundKind;
use crate::schedule::Schedule;

/// The full scans' plan and what is due of it.
pub(super) struct FullScans {
    /// `sweep.due_index.full_scan`. No alarm of its own: the loop checks it
    /// on every pass (at least every second), and a full scan is rare
    /// enough for that.
    pub(super) ticker: Ticker,
    /// A full scan came due: it runs as soon as no round runs (it waits for
    /// an index sweep; never two sweeps of one primary at once).
    pending: bool,
    /// A full scan that failed as a whole runs at a tick after the next
    /// index sweep, not a period later: the safety net must not lapse for
    /// one Redis outage. While it keeps failing (an ACL without SCAN),
    /// index sweeps and full scans alternate, so the index sweeps go on.
    owed: bool,
}

impl FullScans {
    pub(super) fn new(plan: Schedule, now: DateTime<Utc>) -> Self {
        Self {
            ticker: Ticker::new(plan, now),
            pending: false,
            owed: false,
        }
    }

    /// A pass of the loop at `now`: a tick of the plan due makes a full scan
    /// pending (with the index off every sweep is a full scan and the plan
    /// is unused). Not while one still runs (`full_runs`): queued behind it,
    /// back to back, they would starve the index sweeps; that one outran
    /// its plan, which `sweep_behind` says.
    pub(super) fn poll(&mut self, now: DateTime<Utc>, index_on: bool, full_runs: bool) {
        if self.ticker.poll(now) && index_on {
            if full_runs {
                tracing::warn!("a full scan still runs at the next full_scan tick; skipping it");
            } else {
                self.pending = true;
            }
        }
    }

    /// A round ended (`full_scan`: a full scan of index mode), failed as a
    /// whole or not.
    pub(super) fn ended(&mut self, full_scan: bool, failed_whole: bool) {
        if full_scan && failed_whole {
            self.owed = true;
            tracing::warn!("the full scan failed; it runs again after the next index sweep");
        }
    }

    /// Whether a full scan is due now: `triggered` a tick (or a request)
    /// with no round running, after a round of `last` kind. An owed one is
    /// due once an index sweep has run since it failed.
    pub(super) fn due(
        &mut self,
        triggered: bool,
        running: bool,
        last: RoundKind,
        index_on: bool,
    ) -> bool {
        if triggered && !running && last == RoundKind::Index {
            self.pending |= std::mem::take(&mut self.owed);
        }
        self.pending &= index_on;
        self.pending
    }

    /// A full scan starts: nothing is pending any more.
    pub(super) fn started(&mut self) {
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_scan_waits_for_its_turn_and_is_never_queued_behind_another() {
        let at = |secs: i64| DateTime::from_timestamp(1_000_000_000 + secs, 0).unwrap();
        let plan = Schedule::Interval(Duration::from_secs(10));
        let mut full = FullScans::new(plan, at(0));
        // A tick while a full scan still runs: skipped, not queued.
        full.poll(at(10), true, true);
        assert!(!full.due(true, false, RoundKind::Full, true));
        // A tick while an index sweep runs: pending until it can start.
        full.poll(at(20), true, false);
        assert!(full.due(false, true, RoundKind::Index, true));
        full.started();
        assert!(!full.due(true, false, RoundKind::Full, true));
        // Failed as a whole: owed, and due once an index sweep has run.
        full.ended(true, true);
        assert!(!full.due(true, false, RoundKind::Full, true));
        assert!(
            !full.due(false, false, RoundKind::Index, true),
            "at a tick only"
        );
        assert!(full.due(true, false, RoundKind::Index, true));
        full.started();
        // Only a failure as a whole is owed; the index off, nothing is due.
        full.ended(true, false);
        assert!(!full.due(true, false, RoundKind::Index, true));
        full.poll(at(30), true, false);
        assert!(!full.due(true, false, RoundKind::Index, false));
    }
}
