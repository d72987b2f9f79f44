//! One sweep: remove every expired member from every token set.
//!
//! The algorithm, in the order it runs:
//!
//! 1. **Clock.** "Now" comes from Redis `TIME` (or the host clock); the two are
//!    compared and the sweep refuses to run when they disagree by more than
//!    `sweep.max_clock_skew`, because a clock running ahead removes live tokens.
//!    `cutoff = floor((now - grace) / unit)`; members with `score <= cutoff` are
//!    expired. Rounding down only ever keeps a member longer.
//! 2. **Scan.** `SCAN cursor MATCH pattern COUNT n TYPE zset`, one page at a
//!    time. Keys are handed on in batches through a bounded channel, so memory
//!    holds at most a few batches whatever the size of the keyspace.
//! 3. **Unit guard.** The first `unit_guard_sample` keys are held back and their
//!    highest finite score is read. If any looks like the other unit (seconds
//!    while sweeping milliseconds would delete every live token), the sweep
//!    stops before a single deletion.
//! 4. **Remove.** Each batch becomes one pipeline of
//!    `ZREMRANGEBYSCORE key -inf cutoff` (`ZCOUNT` in a dry run). Up to
//!    `max_in_flight` pipelines are outstanding on the one multiplexed
//!    connection, and the next SCAN page is requested while they run, so
//!    Redis always has work queued. `max_keys_per_second` paces the batches.
//! 5. **Per-key errors.** A key that stopped being a sorted set between SCAN and
//!    its pipeline (WRONGTYPE) is skipped and counted; other per-key errors
//!    are counted and the first is kept for the report. A failure of the
//!    connection, a missing ACL permission (NOPERM) or a replica (READONLY)
//!    ends the sweep.
//!
//! The sweep never touches a key's TTL and never writes anything but
//! `ZREMRANGEBYSCORE`; an emptied set disappears because Redis deletes empty
//! sorted sets.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{ClockSource, ScoreUnit, SweepSettings};
use crate::redis::{Connection, RedisError};

/// Whether the sweep deletes or only counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    /// `ZREMRANGEBYSCORE`: expired members are removed.
    Remove,
    /// `ZCOUNT`: expired members are counted; nothing changes.
    DryRun,
}

/// Why a sweep stopped before finishing.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The connection failed (unreachable, timed out, closed).
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The sampled scores contradict `sweep.score_unit`; nothing was deleted.
    #[error(
        "unit guard: sweep.score_unit is \"{configured}\" but {suspicious} of {sampled} sampled \
         sets have scores that look like {seen} (key {example_key:?} has {example_score}); \
         nothing was deleted. Fix sweep.score_unit, or set sweep.unit_guard = false if the data \
         is known to be right"
    )]
    UnitGuard {
        /// The unit in the configuration.
        configured: ScoreUnit,
        /// The unit the data looks like.
        seen: ScoreUnit,
        /// Sets whose scores look like `seen`.
        suspicious: usize,
        /// Sets inspected.
        sampled: usize,
        /// One offending key (lossily decoded for printing).
        example_key: String,
        /// Its highest finite score.
        example_score: f64,
    },
    /// The Redis clock and the host clock disagree.
    #[error(
        "clock skew: Redis TIME and the host clock differ by {skew:?}, more than \
         sweep.max_clock_skew ({max:?}); nothing was deleted. Fix the clocks (NTP) or raise \
         sweep.max_clock_skew"
    )]
    ClockSkew {
        /// How far apart the clocks are.
        skew: Duration,
        /// The configured limit.
        max: Duration,
    },
}

/// Live counters of a running sweep.
///
/// The sweep adds to them as batches complete; a progress display or a
/// metrics exporter may read them at any time from another task. The final
/// [`SweepReport`] is built from them, so the two never disagree.
#[derive(Default)]
pub struct SweepProgress {
    keys_scanned: AtomicU64,
    keys_changed: AtomicU64,
    members_removed: AtomicU64,
    skipped_wrong_type: AtomicU64,
    errors: AtomicU64,
    /// The first per-key error message, so a report can say what went wrong.
    first_error: Mutex<Option<String>>,
    /// Told the round-trip time of every pipeline (for a latency histogram).
    batch_timer: Option<BatchTimer>,
}

/// Receives the round-trip time of each pipeline.
type BatchTimer = Box<dyn Fn(Duration) + Send + Sync>;

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

    /// Keys returned by SCAN so far.
    pub fn keys_scanned(&self) -> u64 {
        self.keys_scanned.load(Ordering::Relaxed)
    }

    /// Members removed (or, in a dry run, found expired) so far.
    pub fn members_removed(&self) -> u64 {
        self.members_removed.load(Ordering::Relaxed)
    }

    fn add(&self, outcome: &BatchOutcome) {
        self.keys_changed
            .fetch_add(outcome.keys_changed, Ordering::Relaxed);
        self.members_removed
            .fetch_add(outcome.members_removed, Ordering::Relaxed);
        self.skipped_wrong_type
            .fetch_add(outcome.skipped_wrong_type, Ordering::Relaxed);
        self.errors.fetch_add(outcome.errors, Ordering::Relaxed);
        if let Some(message) = &outcome.first_error {
            if let Ok(mut first) = self.first_error.lock() {
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
    /// Unit of `cutoff`.
    pub score_unit: String,
    /// Keys returned by SCAN (Redis may return a key twice while it rehashes).
    pub keys_scanned: u64,
    /// Keys that had at least one expired member.
    pub keys_changed: u64,
    /// Expired members removed (in a dry run: that would be removed).
    pub members_removed: u64,
    /// Keys skipped because they stopped being sorted sets mid-sweep.
    pub skipped_wrong_type: u64,
    /// Per-key command errors other than WRONGTYPE.
    pub errors: u64,
    /// The first of those errors, if any.
    pub first_error: Option<String>,
    /// Wall time of the sweep.
    pub duration_seconds: f64,
    /// `keys_scanned / duration_seconds`.
    pub keys_per_second: f64,
    /// True when a shutdown request stopped the scan early; the keys not yet
    /// scanned were left for the next sweep.
    pub interrupted: bool,
}

/// What one pipeline of keys did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Keys that had at least one expired member.
    pub keys_changed: u64,
    /// Members removed (or counted, in a dry run).
    pub members_removed: u64,
    /// Keys that were not sorted sets.
    pub skipped_wrong_type: u64,
    /// Other per-key errors.
    pub errors: u64,
    /// The first of those errors.
    pub first_error: Option<String>,
}

/// Runs one sweep over every key matching `settings.pattern`.
///
/// `shutdown` ends the scan early when it completes: pipelines already sent
/// finish and are counted, nothing more is sent, and the report says
/// `interrupted`. Pass `std::future::pending()` for a sweep that always runs
/// to the end.
///
/// # Errors
/// [`SweepError`] when the connection fails, or when the clock check or the
/// unit guard refuses to sweep (in which case nothing was deleted).
pub async fn sweep(
    conn: &Connection,
    settings: &SweepSettings,
    mode: SweepMode,
    progress: &SweepProgress,
    shutdown: impl Future<Output = ()>,
) -> Result<SweepReport, SweepError> {
    let started = Instant::now();
    let now_micros = read_clock(conn, settings).await?;
    let cutoff = cutoff_for(now_micros, settings.grace, settings.score_unit);
    tracing::debug!(cutoff, unit = %settings.score_unit, ?mode, "sweep starting");

    // Capacity = max_in_flight: the scanner may run one channel's worth ahead of
    // the pipelines, which bounds memory to about 2 * max_in_flight batches.
    let in_flight = usize::try_from(settings.max_in_flight).unwrap_or(1).max(1);
    let (batches_tx, mut batches_rx) = mpsc::channel::<Vec<Vec<u8>>>(in_flight);

    let scanner = Scanner::new(conn.clone(), settings, now_micros, progress);
    let scanning = scanner.run(batches_tx, shutdown);
    let removing = stream::poll_fn(|cx| batches_rx.poll_recv(cx))
        .map(|batch| {
            let mut conn = conn.clone();
            async move {
                let sent = Instant::now();
                let outcome = sweep_keys(&mut conn, &batch, cutoff, mode).await;
                if let Some(timer) = &progress.batch_timer {
                    timer(sent.elapsed());
                }
                outcome
            }
        })
        .buffer_unordered(in_flight)
        .map_err(SweepError::from)
        .try_for_each(|outcome| {
            progress.add(&outcome);
            std::future::ready(Ok(()))
        });
    let (interrupted, ()) = tokio::try_join!(scanning, removing)?;

    let duration = started.elapsed();
    let keys_scanned = progress.keys_scanned();
    Ok(SweepReport {
        mode,
        cutoff,
        score_unit: settings.score_unit.to_string(),
        keys_scanned,
        keys_changed: progress.keys_changed.load(Ordering::Relaxed),
        members_removed: progress.members_removed(),
        skipped_wrong_type: progress.skipped_wrong_type.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
        first_error: progress
            .first_error
            .lock()
            .ok()
            .and_then(|first| first.clone()),
        duration_seconds: duration.as_secs_f64(),
        keys_per_second: rate(keys_scanned, duration),
        interrupted,
    })
}

/// "Now" in microseconds since the Unix epoch, after the clock-skew check.
async fn read_clock(conn: &Connection, settings: &SweepSettings) -> Result<i128, SweepError> {
    let needs_redis_time =
        settings.clock == ClockSource::Redis || !settings.max_clock_skew.is_zero();
    let redis_now = if needs_redis_time {
        let mut conn = conn.clone();
        let (secs, micros): (i64, i64) = conn.query("TIME", &redis::cmd("TIME")).await?;
        Some(i128::from(secs) * 1_000_000 + i128::from(micros))
    } else {
        None
    };
    let local_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_micros()).unwrap_or(i128::MAX))
        // A host clock before 1970 is broken: treat it as 0 so the skew check
        // (or, with the check off, the cutoff) errs towards removing nothing.
        .unwrap_or(0);
    if let Some(redis_now) = redis_now {
        let skew = Duration::from_micros(
            u64::try_from((redis_now - local_now).unsigned_abs()).unwrap_or(u64::MAX),
        );
        if !settings.max_clock_skew.is_zero() && skew > settings.max_clock_skew {
            return Err(SweepError::ClockSkew {
                skew,
                max: settings.max_clock_skew,
            });
        }
    }
    Ok(match (settings.clock, redis_now) {
        (ClockSource::Redis, Some(redis_now)) => redis_now,
        _ => local_now,
    })
}

/// The highest score that counts as expired: `floor((now - grace) / unit)`.
///
/// ```
/// use std::time::Duration;
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::cutoff_for;
///
/// // 1_700_000_000.999_999 s, no grace
/// let now = 1_700_000_000_999_999;
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Seconds), 1_700_000_000);
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Milliseconds), 1_700_000_000_999);
/// assert_eq!(cutoff_for(now, Duration::from_secs(60), ScoreUnit::Seconds), 1_699_999_940);
/// ```
pub fn cutoff_for(now_micros: i128, grace: Duration, unit: ScoreUnit) -> i64 {
    let grace = i128::try_from(grace.as_micros()).unwrap_or(i128::MAX);
    let cutoff = now_micros.saturating_sub(grace).div_euclid(unit.micros());
    // Saturating keeps an absurd grace from wrapping into a huge positive cutoff.
    i64::try_from(cutoff).unwrap_or(if cutoff < 0 { i64::MIN } else { i64::MAX })
}

/// Sends one pipeline over `keys`: `ZREMRANGEBYSCORE key -inf cutoff`
/// (or `ZCOUNT` in a dry run), and tallies the replies.
///
/// Public so that callers sweeping keys they found another way (one node of a
/// cluster, a list of users) use the exact same command.
///
/// # Errors
/// [`RedisError::Command`] when the pipeline as a whole fails (connection
/// lost, timeout). Per-key errors are counted in the outcome instead.
pub async fn sweep_keys(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    cutoff: i64,
    mode: SweepMode,
) -> Result<BatchOutcome, RedisError> {
    let command = match mode {
        SweepMode::Remove => "ZREMRANGEBYSCORE",
        SweepMode::DryRun => "ZCOUNT",
    };
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd(command).arg(key).arg("-inf").arg(cutoff);
    }
    let replies: Vec<redis::RedisResult<u64>> =
        match pipe.ignore_errors().query_async(conn.raw()).await {
            Ok(replies) => replies,
            Err(e) => return Err(conn.error(command, e)),
        };
    let mut outcome = BatchOutcome::default();
    for reply in replies {
        match reply {
            Ok(0) => {}
            Ok(removed) => {
                outcome.keys_changed += 1;
                outcome.members_removed += removed;
            }
            Err(e) if e.code() == Some("WRONGTYPE") => outcome.skipped_wrong_type += 1,
            // Not about one key: the ACL user lacks the command, or this is a
            // replica. Every other key would fail the same way, so stop here
            // with the server's own message (it names the command).
            Err(e) if matches!(e.code(), Some("NOPERM" | "READONLY")) => {
                return Err(conn.error(command, e));
            }
            Err(e) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("{command}: {e}"));
            }
        }
    }
    Ok(outcome)
}

/// The SCAN side of a sweep: pages through the keyspace, holds back the
/// unit-guard sample, paces, and hands batches to the pipelines.
struct Scanner<'a> {
    conn: Connection,
    settings: &'a SweepSettings,
    now_micros: i128,
    progress: &'a SweepProgress,
    /// Keys per batch, lowered under a rate limit so pacing stays smooth.
    batch_size: usize,
}

impl<'a> Scanner<'a> {
    fn new(
        conn: Connection,
        settings: &'a SweepSettings,
        now_micros: i128,
        progress: &'a SweepProgress,
    ) -> Self {
        let mut batch_size = usize::try_from(settings.batch_size).unwrap_or(usize::MAX);
        if settings.max_keys_per_second > 0 {
            // About ten batches a second: a limit of 50/s should not mean one
            // burst of 1000 keys every 20 seconds.
            let per_tenth = usize::try_from(settings.max_keys_per_second / 10).unwrap_or(1);
            batch_size = batch_size.min(per_tenth.max(1));
        }
        Self {
            conn,
            settings,
            now_micros,
            progress,
            batch_size: batch_size.max(1),
        }
    }

    /// Returns whether `shutdown` cut the scan short.
    async fn run(
        mut self,
        batches: mpsc::Sender<Vec<Vec<u8>>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<bool, SweepError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut cursor: u64 = 0;
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut guard_sample = if self.settings.unit_guard {
            usize::try_from(self.settings.unit_guard_sample).unwrap_or(usize::MAX)
        } else {
            0
        };
        let pacer = Pacer::new(self.settings.max_keys_per_second);
        let mut sent: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&self.settings.pattern)
                .arg("COUNT")
                .arg(self.settings.scan_count)
                .arg("TYPE")
                .arg("zset");
            let page = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(true),
                page = self.conn.query::<(u64, Vec<Vec<u8>>)>("SCAN", &scan) => page?,
            };
            let keys;
            (cursor, keys) = page;
            self.progress
                .keys_scanned
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
            pending.extend(keys);
            let finished = cursor == 0;

            if guard_sample > 0 {
                if pending.len() < guard_sample && !finished {
                    continue;
                }
                let sample = &pending[..pending.len().min(guard_sample)];
                check_units(
                    &mut self.conn,
                    sample,
                    self.settings.score_unit,
                    self.now_micros,
                )
                .await?;
                guard_sample = 0;
            }

            while pending.len() >= self.batch_size || (finished && !pending.is_empty()) {
                let rest = pending.split_off(pending.len().min(self.batch_size));
                let batch = std::mem::replace(&mut pending, rest);
                sent += batch.len() as u64;
                pacer.wait_for(sent).await;
                if batches.send(batch).await.is_err() {
                    // The pipelines side has stopped; its error is what
                    // try_join reports.
                    return Ok(false);
                }
            }
            if finished {
                return Ok(false);
            }
        }
    }
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

/// How far from now a score may be and still look like a timestamp of a unit.
/// 20 years back, 50 ahead: the seconds window and the milliseconds window are
/// three orders of magnitude apart, so real data cannot fall in the wrong one.
const PLAUSIBLE_PAST: i128 = 20 * 365 * 86_400;
const PLAUSIBLE_FUTURE: i128 = 50 * 365 * 86_400;

/// Which unit a score looks like, if it looks like a timestamp near now at all.
///
/// ```
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::looks_like;
///
/// let now = 1_700_000_000 * 1_000_000; // microseconds
/// assert_eq!(looks_like(1_700_086_400.0, now), Some(ScoreUnit::Seconds));
/// assert_eq!(looks_like(1_700_086_400_000.0, now), Some(ScoreUnit::Milliseconds));
/// assert_eq!(looks_like(42.0, now), None);
/// ```
pub fn looks_like(score: f64, now_micros: i128) -> Option<ScoreUnit> {
    if !score.is_finite() {
        return None;
    }
    let now_secs = now_micros.div_euclid(1_000_000) as f64;
    [ScoreUnit::Seconds, ScoreUnit::Milliseconds]
        .into_iter()
        .find(|unit| {
            let per_second = (1_000_000 / unit.micros()) as f64;
            let low = (now_secs - PLAUSIBLE_PAST as f64) * per_second;
            let high = (now_secs + PLAUSIBLE_FUTURE as f64) * per_second;
            (low..=high).contains(&score)
        })
}

/// `ZREVRANGEBYSCORE ... WITHSCORES LIMIT 0 1`: at most one (member, score).
type HighestScore = Vec<(Vec<u8>, f64)>;

/// The unit guard: reads the highest finite score of each sampled key and
/// refuses to go on when any looks like the other unit.
async fn check_units(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    unit: ScoreUnit,
    now_micros: i128,
) -> Result<(), SweepError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for key in keys {
        // "(+inf": members scored +inf (tokens that never expire) say nothing
        // about the unit; the highest finite score is the newest token.
        pipe.cmd("ZREVRANGEBYSCORE")
            .arg(key)
            .arg("(+inf")
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
    }
    let replies: Vec<redis::RedisResult<HighestScore>> =
        match pipe.ignore_errors().query_async(conn.raw()).await {
            Ok(replies) => replies,
            Err(e) => return Err(conn.error("ZREVRANGEBYSCORE (unit guard)", e).into()),
        };
    let mut suspicious = keys.iter().zip(replies).filter_map(|(key, reply)| {
        // A key that vanished or changed type since SCAN has nothing to say.
        let (_, score) = reply.ok()?.into_iter().next()?;
        let seen = looks_like(score, now_micros)?;
        (seen != unit).then_some((key, score, seen))
    });
    let Some((example_key, example_score, seen)) = suspicious.next() else {
        return Ok(());
    };
    Err(SweepError::UnitGuard {
        configured: unit,
        seen,
        suspicious: 1 + suspicious.count(),
        sampled: keys.len(),
        example_key: String::from_utf8_lossy(example_key).into_owned(),
        example_score,
    })
}

fn rate(count: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_rounds_down_before_the_epoch_too() {
        assert_eq!(cutoff_for(-1, Duration::ZERO, ScoreUnit::Milliseconds), -1);
        assert_eq!(
            cutoff_for(1_500, Duration::ZERO, ScoreUnit::Milliseconds),
            1
        );
        // An absurd grace saturates to "nothing is expired" instead of wrapping.
        assert_eq!(
            cutoff_for(0, Duration::from_secs(u64::MAX), ScoreUnit::Seconds),
            i64::MIN
        );
    }

    #[test]
    fn units_do_not_overlap() {
        let now = 1_795_836_033 * 1_000_000;
        assert_eq!(looks_like(1_795_836_033.0, now), Some(ScoreUnit::Seconds));
        assert_eq!(
            looks_like(1_795_836_033_000.0, now),
            Some(ScoreUnit::Milliseconds)
        );
        // Long-lived tokens in either unit still classify.
        assert_eq!(
            looks_like(1_795_836_033.0 + 30.0 * 365.0 * 86_400.0, now),
            Some(ScoreUnit::Seconds)
        );
        assert_eq!(looks_like(f64::INFINITY, now), None);
        assert_eq!(looks_like(0.0, now), None);
    }
}
