//! Step 4 of a sweep: SCAN one node, one page at a time, and hand full
//! batches to the pipelines through a bounded channel, paced by
//! `sweep.max_keys_per_second`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::report::Tally;
use crate::config::SweepSettings;
use crate::store::{Connection, StoreError};

/// The SCAN side of one node's sweep: pages through its keyspace, paces, and
/// hands batches to the pipelines.
pub(super) struct Scanner<'a> {
    pub(super) conn: Connection,
    pub(super) settings: &'a SweepSettings,
    tally: Tally<'a>,
    /// Keys per batch, lowered under a rate limit so pacing stays smooth.
    batch_size: usize,
    /// Where the next SCAN continues.
    pub(super) cursor: u64,
    /// SCAN COUNT: `sweep.scan_count`, or the adaptive throttle's piece.
    pub(super) count: u32,
    /// The last SCAN returned cursor 0: the node has no more keys to give.
    pub(super) finished: bool,
    /// Keys scanned, not yet sent.
    pub(super) pending: Vec<Vec<u8>>,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(conn: Connection, settings: &'a SweepSettings, tally: Tally<'a>) -> Self {
        Self {
            conn,
            settings,
            tally,
            batch_size: batch_size(settings.batch_size, settings.max_keys_per_second),
            cursor: 0,
            count: settings.scan_count,
            finished: false,
            pending: Vec::new(),
        }
    }

    /// One SCAN page into `pending`, unless `stop` is cancelled first (true).
    pub(super) async fn next_page(&mut self, stop: &CancellationToken) -> Result<bool, StoreError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(self.cursor)
            .arg("MATCH")
            .arg(&self.settings.pattern)
            .arg("COUNT")
            .arg(self.count)
            .arg("TYPE")
            .arg("zset");
        let (cursor, keys) = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(true),
            page = self.conn.query::<(u64, Vec<Vec<u8>>)>("SCAN", &scan) => page?,
        };
        self.cursor = cursor;
        self.finished = cursor == 0;
        self.tally.scanned(keys.len());
        self.pending.extend(keys);
        Ok(false)
    }

    /// Scans until at least `keys` keys are pending or the node is exhausted
    /// (for the unit guard's sample). Returns whether `stop` was cancelled first.
    pub(super) async fn fill(
        &mut self,
        keys: usize,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        while self.pending.len() < keys && !self.finished {
            if self.next_page(stop).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Scans to the end, sending full batches as they fill. Returns whether
    /// `stop` cut the scan short.
    pub(super) async fn run(
        &mut self,
        batches: mpsc::Sender<Vec<Vec<u8>>>,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let pacer = Pacer::new(self.settings.max_keys_per_second);
        let mut sent: u64 = 0;
        loop {
            while self.pending.len() >= self.batch_size
                || (self.finished && !self.pending.is_empty())
            {
                let rest = self
                    .pending
                    .split_off(self.pending.len().min(self.batch_size));
                let batch = std::mem::replace(&mut self.pending, rest);
                sent += batch.len() as u64;
                pacer.wait_for(sent).await;
                if batches.send(batch).await.is_err() {
                    // The pipelines side has stopped; its error is what
                    // try_join reports.
                    return Ok(false);
                }
            }
            if self.finished {
                return Ok(false);
            }
            if self.next_page(stop).await? {
                return Ok(true);
            }
        }
    }
}

/// Keys per batch: `sweep.batch_size`, at least one, and under a rate
/// limit at most a tenth of a second's worth.
fn batch_size(batch_size: u32, max_keys_per_second: u64) -> usize {
    let mut batch_size = usize::try_from(batch_size).unwrap_or(usize::MAX);
    if max_keys_per_second > 0 {
        // About ten batches a second: a limit of 50/s should not mean one
        // burst of 1000 keys every 20 seconds.
        let per_tenth = usize::try_from(max_keys_per_second / 10).unwrap_or(1);
        batch_size = batch_size.min(per_tenth.max(1));
    }
    batch_size.max(1)
}

/// Keeps the average rate at or below `max_keys_per_second`.
struct Pacer {
    started: tokio::time::Instant,
    keys_per_second: u64,
}

impl Pacer {
    fn new(keys_per_second: u64) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            keys_per_second,
        }
    }

    /// Sleeps until `sent` keys are within the budget.
    async fn wait_for(&self, sent: u64) {
        if self.keys_per_second == 0 {
            return;
        }
        // The first batch goes at once; batch n waits until n-1 batches' worth
        // of time has passed.
        let due = Duration::from_secs_f64(sent as f64 / self.keys_per_second as f64);
        tokio::time::sleep_until(self.started + due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_makes_batches_of_a_tenth_of_a_second() {
        assert_eq!(batch_size(1000, 0), 1000);
        assert_eq!(batch_size(1000, 50), 5);
        assert_eq!(batch_size(1000, 5), 1);
        assert_eq!(batch_size(10, 1_000_000), 10);
        assert_eq!(batch_size(0, 0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_keeps_the_average_rate_from_its_start() {
        let start = tokio::time::Instant::now();
        let waited = |at: Duration| {
            let elapsed = start.elapsed();
            // The timer wheel rounds deadlines up to the next millisecond.
            assert!(
                elapsed >= at && elapsed <= at + Duration::from_millis(1),
                "{elapsed:?}, not {at:?}"
            );
        };
        let pacer = Pacer::new(100);
        pacer.wait_for(10).await;
        waited(Duration::from_millis(100));
        // Already within the budget: no wait.
        pacer.wait_for(10).await;
        waited(Duration::from_millis(100));
        pacer.wait_for(250).await;
        waited(Duration::from_millis(2_500));
        // No limit: never waits.
        Pacer::new(0).wait_for(u64::MAX).await;
        waited(Duration::from_millis(2_500));
    }
}
