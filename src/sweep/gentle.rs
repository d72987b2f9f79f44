//! Steps 4 and 5 of one primary with the adaptive throttle
//! (`sweep.throttle = "adaptive"`, the default): one piece of work at a
//! time, each followed by the pause the throttle asks for.
//!
//! With the throttle off, SCAN runs ahead of up to `max_in_flight`
//! pipelines so that Redis always has work queued: the fastest sweep, and
//! every other client waits behind it. Here, one round trip is out at a
//! time (a SCAN page of `piece` buckets, or a pipeline of `piece` keys), so
//! a request of another client waits for at most one piece, and between
//! pieces Redis is the other clients' alone for as long as the throttle
//! says (see `throttle/mod.rs`). Keys holding more expired members than
//! `sweep.max_members_per_command` are cleaned a bounded step at a time
//! (`bounded.rs`) and come back first, until clean.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bounded::read_bounds;
use super::cutoff::Expired;
use super::mode::SweepMode;
use super::node::NodeSweep;
use super::query::Found;
use super::remove::sweep_batch;
use super::throttle::{covered_by, Step, Throttle};
use crate::store::StoreError;

impl NodeSweep<'_> {
    /// The adaptive scan and removal; returns whether `stop` cut it short,
    /// and the time the throttle held it below its full share.
    pub(super) async fn scan_and_remove_gently(
        &mut self,
        expired: Expired,
        mode: SweepMode,
        stop: &CancellationToken,
        deadline: Option<Instant>,
    ) -> (Result<bool, StoreError>, std::time::Duration) {
        let settings = self.scanner.settings;
        let progress = self.tally.progress;
        let mut throttle = Throttle::start(&self.conn, &self.address, settings, deadline, progress);
        let result = self.gently(&mut throttle, expired, mode, stop).await;
        (result, throttle.end())
    }

    async fn gently(
        &mut self,
        throttle: &mut Throttle<'_>,
        expired: Expired,
        mode: SweepMode,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let settings = self.scanner.settings;
        let limit = settings.max_members_per_command;
        // On a cluster node the cursor does not say how far along the scan
        // is (see `covered_by`).
        let cursor_says = self.assignment.is_none();
        let mut again: Vec<Vec<u8>> = Vec::new();
        loop {
            if throttle.wait(stop).await {
                return Ok(true);
            }
            let found = Found::scanned_on(&self.importing, settings);
            if !again.is_empty() || !self.scanner.pending.is_empty() {
                // Keys not yet clean first: they are what holds Redis
                // longest, so they are costed apart (a revisit removes up to
                // the bound; a fresh key, usually a few members).
                let (step, keys, fresh) = if again.is_empty() {
                    let n = throttle.piece(Step::Keys).min(self.scanner.pending.len());
                    let keys: Vec<Vec<u8>> = self.scanner.pending.drain(..n).collect();
                    (Step::Keys, keys, n)
                } else {
                    let n = throttle.piece(Step::Revisit).min(again.len());
                    (Step::Revisit, again.drain(..n).collect(), 0)
                };
                throttle.sweeping(fresh);
                let units = keys.len();
                let sent = Instant::now();
                let (outcome, stopped) = match mode {
                    // ZCOUNT is O(log n) whatever the count: nothing to bound.
                    SweepMode::DryRun => {
                        sweep_batch(&mut self.conn, &keys, found, expired, mode).await
                    }
                    SweepMode::Remove => {
                        let (read, plan) =
                            read_bounds(&mut self.conn, &keys, found, expired, limit).await;
                        let plan = match plan {
                            Ok(plan) => plan,
                            Err(e) => {
                                self.tally.add(&read);
                                return Err(e);
                            }
                        };
                        throttle.worked(sent, step, units, units);
                        if plan.keys.is_empty() {
                            // Nothing to remove: no round trip, no pause.
                            self.tally.add(&read);
                            continue;
                        }
                        if throttle.wait(stop).await {
                            // The bounds read, nothing removed: no harm.
                            self.tally.add(&read);
                            return Ok(true);
                        }
                        let sent = Instant::now();
                        let mut bounded = plan.remove(&mut self.conn, found, expired, read).await;
                        again.extend(bounded.again);
                        progress_timed(self, sent);
                        throttle.worked(sent, step, units, 0);
                        if step == Step::Revisit {
                            // A key comes back only after a removal that
                            // removed something: it was counted changed then.
                            bounded.outcome.counts.keys_changed = 0;
                        }
                        self.tally.add(&bounded.outcome);
                        bounded.stopped?;
                        continue;
                    }
                };
                progress_timed(self, sent);
                throttle.worked(sent, step, units, units);
                self.tally.add(&outcome);
                stopped?;
                continue;
            }
            if self.scanner.finished {
                return Ok(false);
            }
            let piece = throttle.piece(Step::Scan);
            self.scanner.count = u32::try_from(piece).unwrap_or(u32::MAX);
            let sent = Instant::now();
            if self.scanner.next_page(stop).await? {
                return Ok(true);
            }
            throttle.worked(sent, Step::Scan, piece, piece);
            let covered = cursor_says.then(|| covered_by(self.scanner.cursor));
            throttle.scanned(covered);
        }
    }
}

/// The pipeline's round trip, for the batch latency histogram.
fn progress_timed(node: &NodeSweep<'_>, sent: Instant) {
    node.tally.progress.batch_timed(sent.elapsed());
}
