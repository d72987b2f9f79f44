//! The long-running service: schedule, overlap guard, replica lock, reload
//! and shutdown around [`crate::sweep::sweep`].
//!
//! One loop owns all state and reacts to a control message (sweep now,
//! reload, shut down), the end of the running sweep, an alarm from the
//! scheduler, its own wake-up, and nothing else.
//!
//! **The scheduler is the alarm; the loop's plan is the authority.** The
//! `Ticker` plans each tick on the wall clock. For the planned tick the loop
//! sets an `Alarm`: a one-shot job in tokio-cron-scheduler that, when it
//! fires, sends its id into the loop and nothing more. The loop then asks the
//! `Ticker` whether the tick is due, so an alarm that rings early, twice, or
//! for a plan since replaced can start no sweep early or extra, and the
//! scheduler never runs a sweep itself (it prevents no overlap). The loop
//! also wakes by itself at least every second and every quarter of
//! `WatchdogSec`: that feeds systemd's watchdog from the loop's own progress,
//! and takes a tick the scheduler failed to fire, `ALARM_GRACE` after it
//! (at once when no alarm is set).
//!
//! Why one one-shot per planned tick and not the crate's other jobs: its
//! repeated jobs compute each next tick from the previous one and stop
//! firing for good once that falls behind (tokio-cron-scheduler issue #113);
//! a cron job computes its own next tick, which after the clock steps back
//! waits for the old time. A one-shot rings for exactly the tick the loop
//! planned, for an interval or a cron schedule alike. The crate keeps its
//! times in whole seconds, adding the whole seconds of the delay to the
//! current (truncated) second, so a plain delay fires up to ~1.5 s early:
//! the delay is counted from the start of the current second and rounded
//! up, so the job is never due before the tick. It polls every 500 ms, so
//! its alarms come up to half a second late.
//!
//! A new alarm is added before the old one is removed, so a reschedule never
//! leaves the scheduler without one for a moment. Adding one is bounded in
//! time; one that fails or hangs is tried again with backoff (1 s doubling to
//! 1 min), shown as `schedule_armed` 0 and in `/readyz`, and meanwhile the
//! loop's own check takes the tick on time.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::FutureExt;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::config::Settings;
use crate::logging::LogLevel;
use crate::metrics::{Metrics, Readiness, SweepResult};
use crate::mutex::lock;
use crate::schedule::{describe, later, Schedule};
use crate::store::{Connection, ConnectionId, Primary, Reconnecting, StoreError};
use crate::sweep::{self, SweepError, SweepMode, SweepProgress, SweepReport};

/// What the outside world (signals, tests) asks of a running daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Sweep now (SIGUSR1), still under the overlap guard and the lock.
    SweepNow,
    /// Reload the configuration file (SIGHUP).
    Reload,
    /// Stop scheduling, let the running sweep finish its batches, exit (SIGTERM/SIGINT).
    Shutdown,
}

/// A daemon failure that stops it from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The scheduler (tokio-cron-scheduler) could not be created or started.
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics address could not be bound.
    #[error("metrics.listen: cannot listen on {address}: {source}")]
    Listen {
        /// The configured address.
        address: String,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// The longest the loop sleeps: it re-reads the wall clock at least this
/// often, so a suspended host or a stepped clock delays a tick by at most
/// this much even when no alarm rings.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// First and longest wait before trying again to arm a schedule that has no
/// next tick (only the clock stepping back can change that answer), and
/// before trying again to set an alarm the scheduler refused.
const ARM_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// How long after a tick the loop's own check waits for the scheduler's
/// alarm before taking the tick itself: two of the scheduler's 500 ms polls.
const ALARM_GRACE: Duration = Duration::from_secs(1);

/// When the next scheduled tick is: the plan that every alarm is checked
/// against. The loop asks it whether a tick is due when the scheduler's
/// alarm rings ([`Ticker::poll`]) and when it wakes by itself
/// ([`Ticker::poll_late`], which leaves the alarm [`ALARM_GRACE`] to ring
/// first).
///
/// Ticks are compared on the wall clock: a tick never fires early, a clock
/// stepped forward gives one tick (not a burst), and a clock stepped back
/// re-plans from the new time instead of waiting for the old one.
struct Ticker {
    schedule: Schedule,
    next: Result<DateTime<Utc>, Unarmed>,
    /// The wall clock at the last poll, to notice it stepping back.
    last_poll: DateTime<Utc>,
}

/// A schedule with no next tick, and when to look again.
#[derive(Debug)]
struct Unarmed {
    retry_at: DateTime<Utc>,
    backoff: Duration,
}

impl Ticker {
    fn new(schedule: Schedule, now: DateTime<Utc>) -> Self {
        Self {
            next: plan(&schedule, now, ARM_RETRY.0),
            schedule,
            last_poll: now,
        }
    }

    fn arm(&mut self, now: DateTime<Utc>, backoff: Duration) {
        self.next = plan(&self.schedule, now, backoff);
    }

    /// Replaces the schedule, unless the new one has no next tick: then
    /// nothing changes, so a reload never leaves the daemon without one.
    fn reschedule(&mut self, schedule: Schedule, now: DateTime<Utc>) -> Result<(), String> {
        let next = schedule
            .next_tick_after(now)
            .ok_or_else(|| format!("{} has no next tick", describe(&schedule)))?;
        self.schedule = schedule;
        self.next = Ok(next);
        self.last_poll = now;
        Ok(())
    }

    /// Whether a tick is due at `now`; plans the next one when it is.
    fn poll(&mut self, now: DateTime<Utc>) -> bool {
        self.poll_late(now, Duration::ZERO)
    }

    /// Whether a tick is due at `now`, counting it due only `late` after
    /// its time; plans the next one when it is. Either way it notices the
    /// clock stepping back and looks again for a next tick when there was
    /// none.
    fn poll_late(&mut self, now: DateTime<Utc>, late: Duration) -> bool {
        let stepped_back = now < self.last_poll;
        self.last_poll = now;
        match &self.next {
            Ok(_) if stepped_back => {
                self.arm(now, ARM_RETRY.0);
                false
            }
            Ok(next) if now >= later(*next, late) => {
                self.arm(now, ARM_RETRY.0);
                true
            }
            Ok(_) => false,
            Err(_) if stepped_back => {
                self.arm(now, ARM_RETRY.0);
                false
            }
            Err(unarmed) if now >= unarmed.retry_at => {
                let backoff = (unarmed.backoff * 2).min(ARM_RETRY.1);
                self.arm(now, backoff);
                false
            }
            Err(_) => false,
        }
    }

    /// How long the loop may sleep before polling again, for a tick due at
    /// its time.
    #[cfg(test)]
    fn sleep_from(&self, now: DateTime<Utc>) -> Duration {
        self.sleep_late(now, Duration::ZERO)
    }

    /// How long the loop may sleep before polling again, for a tick due
    /// `late` after its time (as [`Ticker::poll_late`] counts it).
    fn sleep_late(&self, now: DateTime<Utc>, late: Duration) -> Duration {
        let until = match &self.next {
            Ok(next) => later(*next, late),
            Err(unarmed) => unarmed.retry_at,
        };
        (until - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP)
    }

    /// The next tick, if there is one.
    fn next(&self) -> Option<DateTime<Utc>> {
        self.next.as_ref().ok().copied()
    }

    /// Why there is no next tick, in one line for `/readyz` and the log.
    fn unarmed_reason(&self) -> Option<String> {
        self.next.as_ref().err().map(|_| {
            format!(
                "{} has no next tick: no sweep is scheduled",
                describe(&self.schedule)
            )
        })
    }
}

/// The next tick of `schedule` after `now`; if there is none, to be looked
/// for again `backoff` from now.
fn plan(
    schedule: &Schedule,
    now: DateTime<Utc>,
    backoff: Duration,
) -> Result<DateTime<Utc>, Unarmed> {
    schedule.next_tick_after(now).ok_or_else(|| Unarmed {
        retry_at: later(now, backoff),
        backoff,
    })
}

/// The scheduler's side of the ticks: one one-shot job in
/// tokio-cron-scheduler for the tick the [`Ticker`] planned, which sends its
/// own id to the loop when it fires. It carries no authority: the loop checks
/// every alarm against the plan.
struct Alarm {
    scheduler: JobScheduler,
    rings: mpsc::Sender<Uuid>,
    /// The job in the scheduler for the planned tick, once one was added.
    set: Option<SetAlarm>,
    /// Why the last try to set the alarm for the planned tick failed, and
    /// when to try again.
    failed: Option<AlarmFailure>,
    /// The longest the loop waits for the scheduler to take a job.
    timeout: Duration,
}

/// A job the scheduler holds for a tick.
#[derive(Clone, Copy, Debug)]
struct SetAlarm {
    job: Uuid,
    tick: DateTime<Utc>,
    /// It has fired; the scheduler deletes a fired one-shot itself.
    rang: bool,
}

/// The scheduler did not take the job for a tick.
#[derive(Debug)]
struct AlarmFailure {
    tick: DateTime<Utc>,
    error: String,
    retry_at: Instant,
    backoff: Duration,
}

impl Alarm {
    /// Starts `scheduler`, whose alarms will ring on `rings`.
    async fn start(
        scheduler: JobScheduler,
        rings: mpsc::Sender<Uuid>,
        timeout: Duration,
    ) -> Result<Self, JobSchedulerError> {
        scheduler.start().await?;
        Ok(Self {
            scheduler,
            rings,
            set: None,
            failed: None,
            timeout,
        })
    }

    /// Makes the scheduler hold an alarm for `tick` (none when `None`):
    /// adds the new job first and only then removes the old one, so a
    /// reschedule never leaves the scheduler without a job. After a
    /// failure, tries again only once its backoff has passed (`now`).
    async fn follow(&mut self, tick: Option<DateTime<Utc>>, now: Instant) {
        let Some(tick) = tick else {
            self.failed = None;
            if let Some(old) = self.set.take() {
                self.retire(old);
            }
            return;
        };
        if self.is_set_for(Some(tick)) {
            self.failed = None;
            return;
        }
        let backoff = match &self.failed {
            Some(failed) if now < failed.retry_at => return,
            Some(failed) => (failed.backoff * 2).min(ARM_RETRY.1),
            None => ARM_RETRY.0,
        };
        let job = match self.add(tick).await {
            Ok(job) => job,
            Err(error) => {
                self.failed = Some(AlarmFailure {
                    tick,
                    error,
                    retry_at: now + backoff,
                    backoff,
                });
                return;
            }
        };
        self.failed = None;
        if let Some(old) = self.set.replace(SetAlarm {
            job,
            tick,
            rang: false,
        }) {
            self.retire(old);
        }
    }

    /// Adds a one-shot job for `tick`, waiting at most `timeout`.
    async fn add(&self, tick: DateTime<Utc>) -> Result<Uuid, String> {
        let rings = self.rings.clone();
        let job = Job::new_one_shot_async(one_shot_delay(tick, Utc::now()), move |job, _| {
            let rings = rings.clone();
            Box::pin(async move {
                // Full only when the loop is behind on alarms already; its
                // own check takes the tick then.
                let _ = rings.try_send(job);
            })
        })
        .map_err(|e| e.to_string())?;
        let id = job.guid();
        match tokio::time::timeout(self.timeout, self.scheduler.add(job)).await {
            Ok(Ok(added)) => Ok(added),
            Ok(Err(e)) => {
                self.remove_later(id);
                Err(e.to_string())
            }
            Err(_) => {
                // It may still land: remove it then, so it does not ring.
                self.remove_later(id);
                Err(format!("no answer within {:?}", self.timeout))
            }
        }
    }

    /// Removes a job that is no longer the alarm, unless it fired (the
    /// scheduler deletes a fired one-shot itself). A job left behind only
    /// wakes the loop once, which then finds nothing due.
    fn retire(&self, old: SetAlarm) {
        if !old.rang {
            self.remove_later(old.job);
        }
    }

    /// Removes `job` without holding up the loop.
    fn remove_later(&self, job: Uuid) {
        let scheduler = self.scheduler.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, scheduler.remove(&job)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, %job, "cannot remove an old alarm"),
                Err(_) => tracing::debug!(%job, "removing an old alarm timed out"),
            }
        });
    }

    /// An alarm rang: if it was the one set for the planned tick, it is
    /// spent (one that rang before its tick is set again by `follow`).
    fn rang(&mut self, job: Uuid) {
        if let Some(set) = self.set.as_mut().filter(|set| set.job == job) {
            set.rang = true;
        }
    }

    /// Whether the scheduler holds an alarm, not yet rung, for `tick`.
    fn is_set_for(&self, tick: Option<DateTime<Utc>>) -> bool {
        self.set
            .is_some_and(|set| !set.rang && Some(set.tick) == tick)
    }

    /// Why the alarm for the planned tick is not set, in one line.
    fn failure_reason(&self) -> Option<String> {
        self.failed.as_ref().map(|failed| {
            format!(
                "the scheduler did not take the alarm for the tick at {}: {}; \
                 the daemon's loop takes that tick itself",
                failed.tick, failed.error
            )
        })
    }

    async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::debug!(error = %e, "scheduler shutdown");
        }
    }
}

/// The delay for a one-shot job due at `tick`, never before it: the
/// scheduler adds the whole seconds of the delay to the current Unix second
/// (truncated), so count from the start of `now`'s second and round up.
fn one_shot_delay(tick: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    let ms = (tick - now.trunc_subsecs(0)).num_milliseconds();
    Duration::from_secs(u64::try_from(ms).unwrap_or(0).div_ceil(1000))
}

/// This daemon's place in the fleet, shared by its rounds, reloads and
/// shutdown: its name, the registry it is in, and the leases it holds.
struct Fleet {
    /// Unique per process, so only the holder can extend or release.
    holder: String,
    /// The registry (`lock.key:daemons`) this daemon may be counted in.
    registered: std::sync::Mutex<Option<String>>,
    /// Every lease key this daemon has taken and not released, across
    /// rounds, so that shutdown can release them even if the round did not
    /// finish.
    taken: std::sync::Mutex<BTreeSet<String>>,
}

/// The replica lock, as leases: one key per primary swept, taken if free
/// (or already ours) once this daemon's checks have passed, kept alive
/// while that primary is swept, then, when it is finished, left to expire
/// 90% into the period so the next period's sweep finds it free. A lease
/// whose primary was not finished, and every lease of a round that failed,
/// is given back at once.
///
/// A single server has one lease, the key `lock.key` itself. A cluster has
/// one per primary, `lock.key:host:port{tag}`, and the daemons register
/// in `lock.key:daemons` so each takes its share of the primaries
/// (different ones for each daemon): N daemons split M primaries. A daemon
/// is registered only while it can sweep: it registers after its checks
/// pass, and leaves the registry when it refuses or fails, stops, changes
/// `lock.key`, or is still sweeping when its period ends (it will skip the
/// next tick); its registration lasts until every daemon has registered in
/// the next period (the next tick, plus `sweep.jitter`, plus `lock.ttl`),
/// so a daemon that dies is counted for one period more, no longer.
struct ReplicaLock {
    key: String,
    ttl: Duration,
    fleet: Arc<Fleet>,
}

/// A lease script: Redis 7 script flags (a shebang, which must be the first
/// line) with `allow-oom`. Without it, Redis refuses a script's first write
/// when used memory is over `maxmemory` (`noeviction`, the natural policy
/// for an allowlist), so every round would fail on its lease exactly when
/// a sweep, which only frees memory, is most needed. These scripts write a
/// few bytes at most (one lease key, one registry member). A replica still
/// refuses them with READONLY, which is how a failover is noticed.
macro_rules! lease_script {
    ($body:literal) => {
        concat!("#!lua flags=allow-oom\n", $body)
    };
}

/// Takes the lease if it is free or already ours, for `ARGV[2]` ms.
const ACQUIRE: &str = lease_script!(
    r"local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0"
);

/// While ours, makes sure it lives at least `ARGV[2]` ms more.
const KEEP_ALIVE: &str = lease_script!(
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1"
);

/// When a primary is finished: if still ours, let the lease live only
/// until the end of the period's lease (`ARGV[2]` ms from now), or delete
/// it if that has passed.
const SETTLE: &str = lease_script!(
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1"
);

/// Deletes it only if ours.
const RELEASE: &str = lease_script!(
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"
);

/// Registers `ARGV[1]` as a live daemon for `ARGV[2]` ms (score = expiry on
/// the Redis clock), forgets expired ones, and returns this daemon's rank
/// among the live ones (by name, so stable across rounds) and their number.
const REGISTER: &str = lease_script!(
    r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
local daemons = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(daemons)
for i, name in ipairs(daemons) do
  if name == ARGV[1] then return {i - 1, #daemons} end
end
return {0, #daemons}"
);

/// Removes `ARGV[1]` from the registry. (Scored `-inf`, then every `-inf`
/// removed: live members are scored with their expiry, so only this one
/// goes. That is `ZREM` with the commands the documented ACL of earlier
/// versions already grants, so an upgrade needs no ACL change.)
const DEREGISTER: &str = lease_script!(
    r"redis.call('ZADD', KEYS[1], 'XX', '-inf', ARGV[1])
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '-inf')"
);

impl Fleet {
    /// Runs a lease script (or the registration) on `key` with this
    /// daemon's name and `ms`. A script that has not answered within
    /// `timeout` is given up on: a primary that is down or stalled (`CLIENT
    /// PAUSE ... WRITE` holds every script) must not hold up the leases on
    /// the others, nor the round.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        conn: &mut Connection,
        (script, what): (&str, &'static str),
        key: &str,
        ms: Duration,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let ms = u64::try_from(ms.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(1).arg(key).arg(&self.holder).arg(ms);
        match tokio::time::timeout(timeout, conn.query::<T>(what, &cmd)).await {
            Ok(answer) => answer,
            Err(_) => Err(conn.error(what, sweep::no_answer_within(timeout))),
        }
    }

    /// Deletes the lease `key` if it is still ours.
    async fn release(
        &self,
        conn: &mut Connection,
        key: &str,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let released: i64 = self
            .eval(
                conn,
                (RELEASE, "lock release"),
                key,
                Duration::ZERO,
                timeout,
            )
            .await?;
        lock(&self.taken).remove(key);
        Ok(released == 1)
    }

    /// Leaves `registry` (`None`: the one it is in, if any), so that the
    /// other daemons' shares cover this daemon's primaries from their next
    /// round.
    async fn leave(&self, conn: &mut Connection, registry: Option<&str>, timeout: Duration) {
        let left = {
            let mut registered = lock(&self.registered);
            match (registry, registered.as_deref()) {
                (Some(wanted), Some(current)) if wanted != current => Some(wanted.to_owned()),
                _ => registered.take().or_else(|| registry.map(str::to_owned)),
            }
        };
        let Some(registry) = left else { return };
        let leaving = (DEREGISTER, "lock deregister");
        match self
            .eval::<i64>(conn, leaving, &registry, Duration::ZERO, timeout)
            .await
        {
            Ok(1) => tracing::info!(registry, "left the registry of daemons"),
            Ok(_) => {}
            Err(e) => {
                // It expires by itself: at the latest one period on.
                tracing::warn!(error = %e, registry, "cannot leave the registry of daemons");
            }
        }
    }

    /// Releases every lease still ours and leaves the registry: this daemon
    /// stops, or cannot sweep now.
    /// Each script is bounded by `timeout`, and they run at once (each
    /// lease lives on its own primary), so this takes about `timeout` at
    /// most, however many primaries are down.
    async fn withdraw(&self, conn: &Connection, timeout: Duration) {
        let keys = lock(&self.taken).clone();
        let releases = keys.iter().map(|key| {
            let mut conn = conn.clone();
            async move {
                match self.release(&mut conn, key, timeout).await {
                    Ok(true) => tracing::info!(key, "released the replica lock"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, key, "cannot release the lease"),
                }
            }
        });
        let leaving = async {
            self.leave(&mut conn.clone(), None, timeout).await;
        };
        futures_util::future::join(futures_util::future::join_all(releases), leaving).await;
    }
}

/// The lease ttl in force: `lock.ttl`, but never longer than the period.
/// A lease outlives its holder by up to the ttl, so a longer one would keep
/// the fleet off a primary for more than a period after its holder dies
/// (30 s with a 2 s interval); the keep-alive runs every third of the ttl,
/// so a ttl of one period still keeps a running sweep's leases.
fn effective_ttl(ttl: Duration, schedule: &Schedule) -> Duration {
    ttl.min(schedule.period())
}

/// The registry of the daemons sharing `lock_key`.
fn registry_of(lock_key: &str) -> String {
    format!("{lock_key}:daemons")
}

impl ReplicaLock {
    /// The longest a lease script may take: the keep-alive runs every
    /// third of the ttl.
    fn timeout(&self) -> Duration {
        self.ttl / 3
    }

    async fn run(
        &self,
        conn: &mut Connection,
        key: &str,
        script: (&str, &'static str),
        ms: Duration,
    ) -> Result<bool, StoreError> {
        let answer: i64 = self
            .fleet
            .eval(conn, script, key, ms, self.timeout())
            .await?;
        Ok(answer == 1)
    }

    /// The lease key of a primary: `lock.key` for a single server; in a
    /// cluster `lock.key:host:port{tag}`, hash-tagged into one of that
    /// primary's own slots, so a primary that is down takes only its own
    /// lease with it.
    fn key_for(&self, primary: &Primary) -> String {
        if primary.slots.is_empty() {
            self.key.clone()
        } else {
            primary.key_on(&format!("{}:{}", self.key, primary.address))
        }
    }

    fn registry(&self) -> String {
        registry_of(&self.key)
    }

    /// Takes a lease for the sweep: at least `ttl`, so the keep-alive
    /// (every ttl/3) always finds it, however short the period's lease.
    async fn acquire(
        &self,
        conn: &mut Connection,
        key: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let taken = self
            .run(conn, key, (ACQUIRE, "lock acquire"), lease.max(self.ttl))
            .await?;
        if taken {
            lock(&self.fleet.taken).insert(key.to_owned());
        }
        Ok(taken)
    }

    /// After a primary is finished: keep its lease only for what is left
    /// of the period's.
    async fn settle(
        &self,
        conn: &mut Connection,
        key: &str,
        left: Duration,
    ) -> Result<bool, StoreError> {
        self.run(conn, key, (SETTLE, "lock settle"), left).await
    }

    async fn keep_alive(&self, conn: &mut Connection, key: &str) -> Result<bool, StoreError> {
        self.run(conn, key, (KEEP_ALIVE, "lock keep-alive"), self.ttl)
            .await
    }

    async fn release(&self, conn: &mut Connection, key: &str) -> Result<bool, StoreError> {
        self.fleet.release(conn, key, self.timeout()).await
    }

    /// The primaries this daemon should sweep, and whether it registered:
    /// all of them for a single server or a lone daemon; with N live
    /// daemons, M/N (rounded up) starting at an offset given by this
    /// daemon's rank. The shares of all live daemons cover every primary,
    /// so no daemon needs to take more. If the registry cannot be reached
    /// (its primary is down, or has not answered within a third of the
    /// ttl: its writes stall), all of them: the leases still keep two
    /// daemons off one primary.
    async fn share_of(
        &self,
        conn: &mut Connection,
        nodes: &[Primary],
        registration: Duration,
    ) -> (Vec<Primary>, bool) {
        if !conn.is_cluster() || nodes.len() < 2 {
            return (nodes.to_vec(), false);
        }
        let registry = self.registry();
        // Registered under another lock.key before a reload: leave it.
        let stale = lock(&self.fleet.registered)
            .clone()
            .filter(|registered| *registered != registry);
        if let Some(stale) = stale {
            self.fleet.leave(conn, Some(&stale), self.timeout()).await;
        }
        *lock(&self.fleet.registered) = Some(registry.clone());
        // Bounded like the lease scripts: a stall on the registry's primary
        // must not keep this daemon from the primaries that answer.
        let registering = (REGISTER, "lock register");
        let ranked = self
            .fleet
            .eval(conn, registering, &registry, registration, self.timeout())
            .await;
        let (rank, daemons): (usize, usize) = match ranked {
            Ok(ranked) => ranked,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the other daemons; trying every primary");
                return (nodes.to_vec(), false);
            }
        };
        let share = nodes.len().div_ceil(daemons.max(1));
        let share = nodes
            .iter()
            .cycle()
            .skip(rank * share % nodes.len())
            .take(share)
            .cloned()
            .collect();
        (share, true)
    }
}

/// Why a sweep was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    Schedule,
    Manual,
}

/// What a round that a tick overlaps is doing, for the overlap warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoundPhase {
    /// Waiting out its `sweep.jitter` delay: it has not read Redis yet.
    Waiting,
    /// Sweeping (checks, lease and the sweep itself).
    Sweeping,
}

/// The random delay before a round sweeps: up to `sweep.jitter` for the
/// scheduled rounds and the start-up one, so replicas started together
/// spread out; none for a sweep an operator asked for now (SIGUSR1).
/// Validation keeps the jitter shorter than the shortest gap between ticks,
/// so a scheduled round has finished waiting by the next tick; the start-up
/// round, which does not start on a tick, may still be waiting then.
fn jitter_delay(trigger: Trigger, jitter: Duration) -> Duration {
    if trigger == Trigger::Manual || jitter.is_zero() {
        return Duration::ZERO;
    }
    let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

/// Everything one sweep round needs, cloned out of the loop's state so the
/// round can run while the loop keeps answering ticks and signals.
struct Round {
    settings: Arc<Settings>,
    redis: Arc<Reconnecting>,
    metrics: Metrics,
    lock: Option<Arc<ReplicaLock>>,
    schedule: Schedule,
    trigger: Trigger,
    /// When the round's `sweep.jitter` delay ends and it starts sweeping
    /// (now, when it has none); the loop reads the same instant to say
    /// which of the two a round that overlaps a tick is doing.
    sweep_at: tokio::time::Instant,
    stop: watch::Receiver<bool>,
}

/// What one round swept.
struct RoundSweeps {
    /// `None` when every primary of this daemon's share was leased by
    /// another daemon this period.
    report: Option<SweepReport>,
    /// Primaries of the share leased by another daemon this period.
    skipped: usize,
}

/// A primary's sweep ended (told by the sweep as it happens).
struct NodeEnded {
    node: String,
    finished: bool,
}

impl Round {
    async fn run(self) -> Option<String> {
        let mut stop = self.stop.clone();
        let stopped = async move {
            // Err: the sender is gone, which only happens at exit.
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let stopped = stopped.shared();

        if self.sweep_at > tokio::time::Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(self.sweep_at) => {}
                () = stopped.clone() => return None,
            }
        }

        // A loss is reported with the id of the connection it happened on,
        // so a late failure cannot drop a connection made since.
        let (conn, id) = match self.redis.checkout() {
            Ok(checked_out) => checked_out,
            Err(reason) => return self.failed("connection", reason),
        };
        let primaries = match conn.primaries().await {
            Ok(primaries) => primaries,
            Err(e) => {
                self.report_loss(&e, id);
                self.withdraw(&conn).await;
                return self.failed(e.kind(), e.to_string());
            }
        };
        let swept_nodes = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let progress = {
            let (timer, recorder, swept) = (
                self.metrics.clone(),
                self.metrics.clone(),
                Arc::clone(&swept_nodes),
            );
            SweepProgress::with_batch_timer(move |rtt| {
                timer.batch_duration.observe(rtt.as_secs_f64());
            })
            .on_node_end(move |node| {
                recorder.record_node(node);
                lock(&swept).insert(node.node.clone());
                // Err: the round no longer listens (no lock, or it ended).
                let _ = ended_tx.send(NodeEnded {
                    node: node.node.clone(),
                    finished: node.finished,
                });
            })
        };
        let swept = self
            .sweep(&conn, &primaries, &progress, ended, stopped)
            .await;
        self.metrics.retain_nodes(
            primaries.iter().map(|p| p.address.as_str()),
            &lock(&swept_nodes),
        );
        match swept {
            Ok(swept) => self.finished(&swept),
            Err(e) => {
                if let SweepError::Redis(e) = &e {
                    self.report_loss(e, id);
                }
                // Before the failure shows in the metrics and /readyz.
                self.withdraw(&conn).await;
                self.failed(e.kind(), e.to_string())
            }
        }
    }

    /// After a refusal or a failure: this daemon holds no lease and is
    /// counted in no share until a round of it can sweep again.
    async fn withdraw(&self, conn: &Connection) {
        if let Some(lock) = &self.lock {
            lock.fleet.withdraw(conn, lock.timeout()).await;
        }
    }

    /// Runs the checks that can refuse, then (under the lock, if enabled)
    /// sweeps the primaries this daemon leases.
    async fn sweep(
        &self,
        conn: &Connection,
        primaries: &[Primary],
        progress: &SweepProgress,
        ended: mpsc::UnboundedReceiver<NodeEnded>,
        stopped: impl Future<Output = ()>,
    ) -> Result<RoundSweeps, SweepError> {
        // Before any lease or registration: a daemon that refuses (clock,
        // unit guard, permission) must not hold what another could sweep.
        // Under the lock, a primary's checks get no longer than a lease
        // script: a stalled primary is left unswept (reported unfinished)
        // instead of holding up the others.
        let prepared = sweep::prepare_within(
            conn,
            primaries,
            &self.settings.sweep,
            SweepMode::Remove,
            progress,
            stopped,
            self.lock.as_ref().map(|lock| lock.timeout()),
        )
        .await?;
        match &self.lock {
            Some(lock) => {
                self.sweep_leased(lock, conn, prepared, primaries, ended)
                    .await
            }
            None => {
                self.log_start(primaries.len());
                let report = prepared.run().await?;
                Ok(RoundSweeps {
                    report: Some(report),
                    skipped: 0,
                })
            }
        }
    }

    fn log_start(&self, nodes: usize) {
        tracing::info!(trigger = ?self.trigger, nodes, "sweep started");
    }

    /// Sweeps the primaries of this daemon's share that it can lease.
    async fn sweep_leased<S: Future<Output = ()>>(
        &self,
        lock: &ReplicaLock,
        conn: &Connection,
        mut prepared: sweep::PreparedSweep<'_, S>,
        nodes: &[Primary],
        mut ended: mpsc::UnboundedReceiver<NodeEnded>,
    ) -> Result<RoundSweeps, SweepError> {
        let mut conn = conn.clone();
        let to_next_tick = self.schedule.time_to_next_tick();
        // 90% of the time to the next tick, from now (after any jitter): the
        // leases mark this period as swept until just before the next tick,
        // so the next period's sweep finds them free.
        let lease = to_next_tick.mul_f64(0.9);
        let lease_ends = Instant::now() + lease;
        // Counted until every daemon has registered in the next period
        // (each registers up to sweep.jitter after the tick, and its checks
        // take a moment): all of them count this daemon then, and no one
        // counts it in the period after unless it registers again.
        let registration = to_next_tick + self.settings.sweep.jitter + lock.ttl;
        let (share, registered) = lock.share_of(&mut conn, nodes, registration).await;
        let mut held = BTreeMap::new();
        let mut taken = BTreeSet::new();
        let mut skipped = 0;
        for primary in share {
            // One whose checks failed will not be swept: a lease on it would
            // only keep another daemon off it.
            if !prepared.can_sweep(&primary.address) {
                taken.insert(primary.address);
                continue;
            }
            let key = lock.key_for(&primary);
            match lock.acquire(&mut conn, &key, lease).await {
                Ok(true) => {
                    held.insert(primary.address.clone(), key);
                }
                Ok(false) => {
                    skipped += 1;
                    continue;
                }
                // A single server's lock: Redis is failing; nothing to sweep.
                Err(e) if !conn.is_cluster() => return Err(e.into()),
                // A cluster lease lives on its own primary, so that primary
                // is down or failing: its sweep will say how.
                Err(e) => {
                    tracing::warn!(error = %e, node = primary.address, "cannot take the lease")
                }
            }
            taken.insert(primary.address);
        }
        if taken.is_empty() {
            return Ok(RoundSweeps {
                report: None,
                skipped,
            });
        }
        prepared.retain(|node| taken.contains(node));
        self.metrics.set_lock_held(held.len());
        self.log_start(taken.len());
        let mut keeper = LeaseKeeper {
            lock,
            conn,
            held,
            lease_ends,
            registered,
            metrics: &self.metrics,
        };
        let result = tokio::select! {
            result = prepared.run() => result,
            never = keeper.keep(&mut ended) => match never {},
        };
        // Ends the keeper was not told of before the sweep returned.
        while let Ok(end) = ended.try_recv() {
            keeper.end(end).await;
        }
        // Every primary's end was handled, unless the sweep failed: then
        // whatever is still held goes back.
        keeper.release_all().await;
        Ok(RoundSweeps {
            report: Some(result?),
            skipped,
        })
    }

    fn finished(&self, swept: &RoundSweeps) -> Option<String> {
        let Some(report) = &swept.report else {
            self.metrics.count_sweep(SweepResult::SkippedLocked);
            tracing::info!(
                key = self.settings.lock.key,
                "another daemon holds the replica lock for this period; skipping"
            );
            return None;
        };
        self.metrics.record_report(report);
        let result = if report.interrupted {
            SweepResult::Interrupted
        } else if !report.unfinished_nodes.is_empty() {
            SweepResult::Incomplete
        } else if report.counts.errors > 0 {
            SweepResult::Error
        } else {
            SweepResult::Ok
        };
        self.metrics.count_sweep(result);
        tracing::info!(
            nodes = report.nodes.len(),
            leased_by_others = swept.skipped,
            keys_scanned = report.counts.keys_scanned,
            keys_changed = report.counts.keys_changed,
            members_removed = report.counts.members_removed,
            skipped_wrong_type = report.counts.skipped_wrong_type,
            keys_redirected = report.counts.keys_redirected,
            errors = report.counts.errors,
            duration_seconds = report.duration_seconds,
            keys_per_second = report.keys_per_second.round(),
            interrupted = report.interrupted,
            cutoff = report.cutoff,
            "sweep finished"
        );
        let mut failures = Vec::new();
        for node in &report.nodes {
            if let Some(reason) = &node.unfinished_reason {
                tracing::warn!(
                    node = node.node,
                    reason,
                    "node not finished; the next sweep covers it"
                );
                failures.push(format!("{}: {reason}", node.node));
            }
        }
        if report.counts.errors > 0 {
            failures.push(format!(
                "{} per-key errors, first: {}",
                report.counts.errors,
                report.first_error.as_deref().unwrap_or("unknown")
            ));
        }
        match result {
            SweepResult::Ok | SweepResult::Interrupted => {
                self.metrics.mark_success();
                None
            }
            _ => {
                if result == SweepResult::Incomplete {
                    self.metrics.count_error("incomplete", 1);
                }
                Some(format!("last sweep: {}", failures.join("; ")))
            }
        }
    }

    /// A lost connection is replaced, unless it has been already.
    fn report_loss(&self, e: &StoreError, id: ConnectionId) {
        if e.is_connection_lost() {
            self.redis.lost_connection(id, &e.to_string());
        }
    }

    fn failed(&self, kind: &str, reason: String) -> Option<String> {
        self.metrics.count_sweep(SweepResult::Error);
        self.metrics.count_error(kind, 1);
        tracing::error!(kind, "sweep failed: {reason}");
        Some(format!("last sweep failed: {reason}"))
    }
}

/// The leases of one round while it sweeps.
struct LeaseKeeper<'a> {
    lock: &'a ReplicaLock,
    conn: Connection,
    /// Lease key by primary (`host:port`), for the primaries still being swept.
    held: BTreeMap<String, String>,
    /// When the period's lease ends (just before the next tick).
    lease_ends: Instant,
    /// Whether this round registered in the registry of daemons.
    registered: bool,
    metrics: &'a Metrics,
}

impl LeaseKeeper<'_> {
    /// Runs beside the sweep; never returns. Extends the leases still held
    /// every third of the ttl; settles or releases each as its primary
    /// ends; and if the sweep is still running when the period's lease
    /// ends, leaves the registry: the loop will skip the next tick, so the
    /// other daemons' shares must cover this daemon's primaries then (the
    /// ones it is still sweeping stay leased).
    async fn keep(
        &mut self,
        ended: &mut mpsc::UnboundedReceiver<NodeEnded>,
    ) -> std::convert::Infallible {
        let every = self.lock.ttl / 3;
        let mut next_keep_alive = Instant::now() + every;
        let mut warned = BTreeSet::new();
        loop {
            tokio::select! {
                Some(end) = ended.recv() => self.end(end).await,
                () = tokio::time::sleep_until(next_keep_alive.into()) => {
                    next_keep_alive = Instant::now() + every;
                    self.keep_alive(&mut warned).await;
                }
                () = tokio::time::sleep_until(self.lease_ends.into()), if self.registered => {
                    self.registered = false;
                    tracing::info!(
                        "the sweep outlives its period; leaving the registry so that the other \
                         daemons cover this daemon's primaries at the next tick"
                    );
                    let timeout = self.lock.timeout();
                    self.lock.fleet.leave(&mut self.conn, None, timeout).await;
                }
            }
        }
    }

    async fn keep_alive(&mut self, warned: &mut BTreeSet<String>) {
        for key in self.held.values() {
            match self.lock.keep_alive(&mut self.conn, key).await {
                Ok(true) => {}
                // Not fatal: a second sweeper is redundant work, never a wrong deletion.
                Ok(false) => {
                    if warned.insert(key.clone()) {
                        tracing::warn!(key, "lost a lease during a sweep");
                    }
                }
                Err(e) => tracing::warn!(error = %e, key, "cannot extend a lease"),
            }
        }
    }

    /// A primary's sweep ended: a finished one keeps its lease until the
    /// period's lease ends (the period counts as swept); any other gives
    /// it back at once.
    async fn end(&mut self, end: NodeEnded) {
        let Some(key) = self.held.remove(&end.node) else {
            return;
        };
        self.metrics.set_lock_held(self.held.len());
        if end.finished {
            let left = self.lease_ends.saturating_duration_since(Instant::now());
            if let Err(e) = self.lock.settle(&mut self.conn, &key, left).await {
                tracing::warn!(error = %e, key, "cannot settle the lease");
            }
        } else if let Err(e) = self.lock.release(&mut self.conn, &key).await {
            tracing::warn!(error = %e, key, "cannot release the lease");
        }
    }

    /// Gives back every lease still held.
    async fn release_all(&mut self) {
        for (_, key) in std::mem::take(&mut self.held) {
            if let Err(e) = self.lock.release(&mut self.conn, &key).await {
                tracing::warn!(error = %e, key, "cannot release the lease");
            }
        }
        self.metrics.set_lock_held(0);
    }
}

/// `/readyz`: Redis answers, a sweep is scheduled, and the last sweep did not fail.
struct DaemonReadiness {
    redis: Arc<Reconnecting>,
    metrics: Metrics,
    /// Why no sweep is scheduled, while none is.
    unscheduled: watch::Receiver<Option<String>>,
    last_failure: watch::Receiver<Option<String>>,
}

impl Readiness for DaemonReadiness {
    async fn check(&self) -> Result<(), String> {
        let pinged = self.redis.ping(Duration::from_secs(1)).await;
        self.metrics.set_redis_up(pinged.is_ok());
        pinged?;
        for reason in [&self.unscheduled, &self.last_failure] {
            if let Some(reason) = reason.borrow().as_ref() {
                return Err(reason.clone());
            }
        }
        Ok(())
    }
}

/// Shows the schedule's state in the metrics and `/readyz`: armed when the
/// ticker has a next tick and the scheduler holds an alarm for it. Logs when
/// that stops or starts being so.
fn publish_schedule(
    ticker: &Ticker,
    alarm: &Alarm,
    metrics: &Metrics,
    unscheduled: &watch::Sender<Option<String>>,
) {
    let next = ticker.next();
    metrics.set_next_sweep(
        next.map(|t| t.timestamp_millis() as f64 / 1000.0),
        alarm.is_set_for(next),
    );
    let reason = ticker.unarmed_reason().or_else(|| alarm.failure_reason());
    unscheduled.send_if_modified(|current| {
        if *current == reason {
            return false;
        }
        match (&reason, next) {
            (Some(reason), _) => tracing::error!("{reason}; checking again with backoff"),
            (None, Some(next)) => tracing::info!(%next, "a sweep is scheduled again"),
            (None, None) => {}
        }
        current.clone_from(&reason);
        true
    });
}

/// Which way a scheduled tick reached the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TickSource {
    /// The scheduler's alarm rang for it.
    Scheduler,
    /// The loop's own check took it, with or without an alarm set for it.
    Loop { alarm_set: bool },
}

impl TickSource {
    /// Says at debug level which way the tick came, and warns when an alarm
    /// was set but did not ring, once until one rings again: a scheduler
    /// that stops firing is not silent, though the loop sweeps without it.
    /// (A tick without an alarm set is already reported as not armed.)
    fn log(self, tick: Option<DateTime<Utc>>, missed: &mut bool) {
        let tick = tick.map(|t| t.to_rfc3339()).unwrap_or_default();
        match self {
            Self::Scheduler if std::mem::take(missed) => {
                tracing::info!(tick, "the scheduler's alarms ring again");
            }
            Self::Loop { alarm_set: true } if !std::mem::replace(missed, true) => {
                tracing::warn!(
                    tick,
                    "the scheduler's alarm did not ring for this tick; the daemon's loop took it \
                     (logged once until an alarm rings again)"
                );
            }
            _ => {}
        }
        tracing::debug!(tick, source = ?self, "scheduled tick");
    }
}

/// The daemon's configuration source and live handles.
pub struct Daemon {
    /// The file to re-read on reload; `None` means defaults and environment only.
    pub config_path: Option<PathBuf>,
    /// The settings in force.
    pub settings: Settings,
    /// Where log level changes go on reload.
    pub log_level: Option<LogLevel>,
}

impl Daemon {
    /// Runs until [`Control::Shutdown`] arrives on `controls` (or the sender is dropped).
    ///
    /// Tells systemd READY once the metrics endpoint listens and the schedule
    /// is armed, and STOPPING when shutdown begins (both no-ops outside systemd).
    ///
    /// # Errors
    /// [`DaemonError`] when it cannot start; once running, Redis outages and
    /// bad reloads are logged and survived, never returned.
    pub async fn run(mut self, mut controls: mpsc::Receiver<Control>) -> Result<(), DaemonError> {
        let metrics = Metrics::new()?;
        let up_metrics = metrics.clone();
        let redis = Arc::new(Reconnecting::new(self.settings.redis.clone(), move |up| {
            up_metrics.set_redis_up(up);
        }));
        redis.set_max_backoff(self.settings.sweep.schedule().reconnect_backoff());
        let address = self.settings.metrics.listen;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::Listen {
                address: address.to_string(),
                source,
            })?;
        let (last_failure_tx, last_failure) = watch::channel(None::<String>);
        let (unscheduled_tx, unscheduled) = watch::channel(None::<String>);
        let mut watchdog = Watchdog::new(sd_notify::watchdog_enabled());
        // Before the endpoints answer, so that their first answer is true.
        let mut ticker = Ticker::new(self.settings.sweep.schedule(), Utc::now());
        // Room for a few alarms: more are never pending in a healthy loop,
        // and one dropped is a tick the loop's own check takes.
        let (rings_tx, mut rings) = mpsc::channel(8);
        // The loop waits for the scheduler at most this long per pass, so
        // it still passes (and pings the watchdog) often enough.
        let mut alarm =
            Alarm::start(JobScheduler::new().await?, rings_tx, watchdog.max_sleep()).await?;
        alarm.follow(ticker.next(), Instant::now()).await;
        publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx);
        let (http_stop_tx, http_stop) = watch::channel(false);
        let http = tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            DaemonReadiness {
                redis: Arc::clone(&redis),
                metrics: metrics.clone(),
                unscheduled,
                last_failure,
            },
            async move {
                let mut http_stop = http_stop;
                let _ = http_stop.wait_for(|stop| *stop).await;
            },
        ));
        tracing::info!("metrics at http://{address}/metrics, health at /healthz and /readyz");

        if let Err(e) = redis.connect_now().await {
            tracing::warn!("{e}; will keep retrying");
        }

        let fleet = Arc::new(Fleet {
            holder: format!(
                "{}:{}:{:016x}",
                hostname(),
                std::process::id(),
                rand::rng().random::<u64>()
            ),
            registered: std::sync::Mutex::default(),
            taken: std::sync::Mutex::default(),
        });
        let (stop_tx, _) = watch::channel(false);
        // `Some(failure)` when the round failed; `/readyz` reports it.
        let mut running: Option<Pin<Box<dyn Future<Output = Option<String>> + Send>>> = None;
        // When the running round starts (or started) sweeping, and what the
        // overlap warning last said about it.
        let mut sweep_at = tokio::time::Instant::now();
        let mut overlap_logged: Option<RoundPhase> = None;
        let mut pending_start = self.settings.sweep.run_on_start;

        notify_systemd(&[sd_notify::NotifyState::Ready]);
        let mut alarm_missed = false;

        loop {
            // Every pass of the loop is progress; it passes at least every
            // `watchdog.max_sleep()`, and not at all while it is stuck.
            watchdog.alive(Instant::now());
            let trigger = if std::mem::take(&mut pending_start) {
                Some(Trigger::Start)
            } else {
                // With an alarm set, the loop's own check leaves it time to
                // ring; without one, it takes the tick on time.
                let grace = if alarm.is_set_for(ticker.next()) {
                    ALARM_GRACE
                } else {
                    Duration::ZERO
                };
                let sleep = ticker
                    .sleep_late(Utc::now(), grace)
                    .min(watchdog.max_sleep());
                let tick = ticker.next();
                let trigger = tokio::select! {
                    control = controls.recv() => match control {
                        Some(Control::SweepNow) => Some(Trigger::Manual),
                        Some(Control::Reload) => {
                            self.reload(&mut ticker, &redis, &fleet).await;
                            None
                        }
                        Some(Control::Shutdown) | None => break,
                    },
                    Some(job) = rings.recv() => {
                        alarm.rang(job);
                        let due = ticker.poll(Utc::now());
                        if due {
                            TickSource::Scheduler.log(tick, &mut alarm_missed);
                        }
                        due.then_some(Trigger::Schedule)
                    },
                    () = tokio::time::sleep(sleep) => {
                        let due = ticker.poll_late(Utc::now(), grace);
                        if due {
                            TickSource::Loop { alarm_set: !grace.is_zero() }
                                .log(tick, &mut alarm_missed);
                        }
                        due.then_some(Trigger::Schedule)
                    },
                    end = async {
                        match running.as_mut() {
                            Some(round) => round.await,
                            None => std::future::pending().await,
                        }
                    }, if running.is_some() => {
                        running = None;
                        let _ = last_failure_tx.send(end);
                        None
                    },
                };
                // Keeps the alarm on the plan, whatever changed it (a tick,
                // a reload, the clock), and retries one not yet taken.
                alarm.follow(ticker.next(), Instant::now()).await;
                publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx);
                // Progress too: waiting on the scheduler (at most
                // `watchdog.max_sleep()`) never doubles the gap between pings.
                watchdog.alive(Instant::now());
                trigger
            };
            let Some(trigger) = trigger else { continue };
            if running.is_some() {
                metrics.count_sweep(SweepResult::SkippedOverlap);
                let now = tokio::time::Instant::now();
                let phase = if now < sweep_at {
                    RoundPhase::Waiting
                } else {
                    RoundPhase::Sweeping
                };
                if overlap_logged != Some(phase) {
                    overlap_logged = Some(phase);
                    match phase {
                        RoundPhase::Waiting => tracing::warn!(
                            ?trigger,
                            sweeps_in = %humantime::format_duration(Duration::from_millis(
                                u64::try_from((sweep_at - now).as_millis()).unwrap_or(u64::MAX)
                            )),
                            "previous sweep still waiting out its sweep.jitter delay; skipping \
                             this tick (logged once per delay)"
                        ),
                        RoundPhase::Sweeping => tracing::warn!(
                            ?trigger,
                            "previous sweep still running; skipping this tick (logged once per sweep)"
                        ),
                    }
                }
                continue;
            }
            overlap_logged = None;
            let settings = Arc::new(self.settings.clone());
            let delay = jitter_delay(trigger, settings.sweep.jitter);
            if !delay.is_zero() {
                tracing::info!(?trigger, ?delay, "sweep waits out its sweep.jitter delay");
            }
            sweep_at = tokio::time::Instant::now() + delay;
            let lock = settings.lock.enabled.then(|| {
                Arc::new(ReplicaLock {
                    key: settings.lock.key.clone(),
                    ttl: effective_ttl(settings.lock.ttl, &ticker.schedule),
                    fleet: Arc::clone(&fleet),
                })
            });
            running = Some(Box::pin(
                Round {
                    settings,
                    redis: Arc::clone(&redis),
                    metrics: metrics.clone(),
                    lock,
                    schedule: ticker.schedule.clone(),
                    trigger,
                    sweep_at,
                    stop: stop_tx.subscribe(),
                }
                .run(),
            ));
        }

        tracing::info!("shutting down");
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        alarm.stop().await;
        let _ = stop_tx.send(true);
        if let Some(round) = running.take() {
            let timeout = self.settings.sweep.shutdown_timeout;
            match tokio::time::timeout(timeout, round).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        ?timeout,
                        "sweep did not finish within sweep.shutdown_timeout"
                    );
                }
            }
        }
        // Another daemon need not wait for the leases to expire, and from
        // their next round the others' shares cover this daemon's primaries.
        if let Ok((conn, _)) = redis.checkout() {
            fleet.withdraw(&conn, SHUTDOWN_RELEASE).await;
        }
        let _ = http_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
        tracing::info!("stopped");
        Ok(())
    }

    async fn reload(&mut self, ticker: &mut Ticker, redis: &Arc<Reconnecting>, fleet: &Fleet) {
        // Off the runtime's one thread: a file that is slow to read (a hung
        // mount) holds up this loop, which the watchdog then reports, but
        // not the metrics endpoint.
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || Settings::load(path.as_deref()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|loaded| loaded.map_err(|e| e.to_string()));
        let new = match loaded {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("reload failed, keeping the previous configuration: {e}");
                return;
            }
        };
        // First, as it is the one step that can still fail: nothing of the
        // new configuration applies unless all of it does.
        let schedule = new.sweep.schedule();
        if schedule != ticker.schedule {
            if let Err(reason) = ticker.reschedule(schedule, Utc::now()) {
                tracing::error!("reload failed, keeping the previous configuration: {reason}");
                return;
            }
        }
        if new.metrics.listen != self.settings.metrics.listen {
            tracing::warn!("metrics.listen changed; it takes effect after a restart");
        }
        if let Some(level) = &self.log_level {
            level.set(&new.log);
        }
        redis.set_max_backoff(ticker.schedule.reconnect_backoff());
        // Leave the registry of the old key now: the daemons still using it
        // should not count this one in their next round.
        if self.settings.lock.enabled
            && (!new.lock.enabled || new.lock.key != self.settings.lock.key)
        {
            if let Ok((mut conn, _)) = redis.checkout() {
                let registry = registry_of(&self.settings.lock.key);
                fleet
                    .leave(&mut conn, Some(&registry), SHUTDOWN_RELEASE)
                    .await;
            }
        }
        redis.update_settings(new.redis.clone());
        self.settings = new;
        tracing::info!("configuration reloaded; it applies from the next sweep");
    }
}

/// How long each lease script may take at shutdown (and when a reload
/// changes `lock.key`).
const SHUTDOWN_RELEASE: Duration = Duration::from_secs(2);

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

/// systemd's watchdog (`WatchdogSec=`), fed by the daemon loop itself:
/// pinged from the loop's own passes, never from a task of its own, so a
/// loop that is stuck (while the rest of the process may still run) stops
/// the pings and systemd restarts the daemon.
struct Watchdog {
    /// A quarter of the watchdog interval: the loop passes and pings at
    /// least this often, so two pings are at most half the interval apart.
    every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Watchdog {
    fn new(interval: Option<Duration>) -> Self {
        Self {
            every: interval.map(|interval| interval / 4),
            last_ping: None,
        }
    }

    /// The longest the loop may sleep.
    fn max_sleep(&self) -> Duration {
        self.every.map_or(MAX_SLEEP, |every| every.min(MAX_SLEEP))
    }

    /// Called by the loop on every pass; pings when a ping is due and
    /// returns whether it did.
    fn alive(&mut self, now: Instant) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        if self
            .last_ping
            .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return false;
        }
        self.last_ping = Some(now);
        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        true
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn at(time: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(time).unwrap().to_utc()
    }

    fn every(secs: u64) -> Schedule {
        Schedule::Interval(Duration::from_secs(secs))
    }

    /// The bound on `sweep.jitter`: the shortest gap, whatever the time of
    /// day it is computed at (the next gap, `period()`, depends on it).

    #[test]
    fn a_tick_is_never_early_and_a_late_one_comes_once() {
        let mut ticker = Ticker::new(every(10), at("2030-01-01T10:00:01Z"));
        assert!(!ticker.poll(at("2030-01-01T10:00:09.999Z")));
        assert!(ticker.poll(at("2030-01-01T10:00:10Z")));
        assert!(!ticker.poll(at("2030-01-01T10:00:10.5Z")));
        // The host slept through six ticks: one tick, then back on the grid.
        assert!(ticker.poll(at("2030-01-01T10:01:15Z")));
        assert!(!ticker.poll(at("2030-01-01T10:01:15.1Z")));
        assert_eq!(ticker.next(), Some(at("2030-01-01T10:01:20Z")));
    }

    #[test]
    fn a_clock_stepped_back_replans_from_the_new_time() {
        let mut ticker = Ticker::new(every(10), at("2030-01-01T10:00:01Z"));
        assert!(!ticker.poll(at("2030-01-01T09:00:00Z")));
        assert_eq!(ticker.next(), Some(at("2030-01-01T09:00:10Z")));
        assert_eq!(
            ticker.sleep_from(at("2030-01-01T09:00:00Z")),
            MAX_SLEEP,
            "the loop wakes at least every second"
        );
    }

    #[test]
    fn a_schedule_that_runs_out_is_reported_and_tried_again_with_backoff() {
        let once = Schedule::Cron("0 0 12 1 1 * 2030".parse().unwrap());
        let mut ticker = Ticker::new(once, at("2030-01-01T11:59:59Z"));
        assert_eq!(ticker.unarmed_reason(), None);
        assert!(ticker.poll(at("2030-01-01T12:00:00Z")), "its one tick");
        assert_eq!(ticker.next(), None);
        assert_eq!(
            ticker.unarmed_reason().as_deref(),
            Some("sweep.schedule \"0 0 12 1 1 * 2030\" has no next tick: no sweep is scheduled")
        );
        let retry = |ticker: &Ticker| match &ticker.next {
            Err(unarmed) => (unarmed.retry_at, unarmed.backoff),
            Ok(next) => panic!("armed for {next}"),
        };
        assert_eq!(
            retry(&ticker),
            (at("2030-01-01T12:00:01Z"), Duration::from_secs(1))
        );
        assert!(!ticker.poll(at("2030-01-01T12:00:01Z")));
        assert_eq!(
            retry(&ticker),
            (at("2030-01-01T12:00:03Z"), Duration::from_secs(2))
        );
        assert!(!ticker.poll(at("2030-01-01T12:00:02Z")));
        assert_eq!(retry(&ticker).1, Duration::from_secs(2), "not due yet");
        let mut now = at("2030-01-01T12:00:03Z");
        for _ in 0..10 {
            assert!(!ticker.poll(now));
            now = retry(&ticker).0;
        }
        assert_eq!(retry(&ticker).1, ARM_RETRY.1, "the backoff is capped");

        // The clock was wrong and steps back: armed again at once.
        assert!(!ticker.poll(at("2030-01-01T11:59:00Z")));
        assert_eq!(ticker.next(), Some(at("2030-01-01T12:00:00Z")));
        assert_eq!(ticker.unarmed_reason(), None);
    }

    #[test]
    fn a_reschedule_never_leaves_the_daemon_without_a_schedule() {
        let now = at("2030-01-01T10:00:01Z");
        let mut ticker = Ticker::new(every(10), now);
        let never = Schedule::Cron("0 0 0 1 1 * 2020".parse().unwrap());
        assert_eq!(
            ticker.reschedule(never, now),
            Err("sweep.schedule \"0 0 0 1 1 * 2020\" has no next tick".to_owned())
        );
        assert_eq!(ticker.schedule, every(10));
        assert_eq!(ticker.next(), Some(at("2030-01-01T10:00:10Z")));

        assert_eq!(ticker.reschedule(every(60), now), Ok(()));
        assert_eq!(ticker.next(), Some(at("2030-01-01T10:01:00Z")));
    }

    #[test]
    fn the_watchdog_is_pinged_from_the_loop_often_enough() {
        let mut watchdog = Watchdog::new(Some(Duration::from_secs(2)));
        // A loop that passes at least every max_sleep pings at least every
        // half interval.
        assert_eq!(watchdog.max_sleep(), Duration::from_millis(500));
        let start = Instant::now();
        assert!(watchdog.alive(start));
        assert!(!watchdog.alive(start + Duration::from_millis(100)));
        assert!(watchdog.alive(start + Duration::from_millis(500)));
        // No watchdog: nothing to ping, the loop still wakes every second.
        let mut off = Watchdog::new(None);
        assert!(!off.alive(start));
        assert_eq!(off.max_sleep(), MAX_SLEEP);
        assert_eq!(
            Watchdog::new(Some(Duration::from_secs(60))).max_sleep(),
            MAX_SLEEP
        );
    }

    #[test]
    fn a_tick_the_alarm_missed_is_taken_by_the_loop_after_the_grace() {
        let mut ticker = Ticker::new(every(10), at("2030-01-01T10:00:01Z"));
        // The loop's own check leaves the alarm time to ring ...
        assert!(!ticker.poll_late(at("2030-01-01T10:00:10.999Z"), ALARM_GRACE));
        assert_eq!(
            ticker.sleep_late(at("2030-01-01T10:00:10.500Z"), ALARM_GRACE),
            Duration::from_millis(500)
        );
        // ... then takes the tick itself, once.
        assert!(ticker.poll_late(at("2030-01-01T10:00:11Z"), ALARM_GRACE));
        assert!(!ticker.poll_late(at("2030-01-01T10:00:11.5Z"), ALARM_GRACE));
        assert_eq!(ticker.next(), Some(at("2030-01-01T10:00:20Z")));
        // An alarm that rings early is no tick.
        assert!(!ticker.poll(at("2030-01-01T10:00:19.999Z")));
        assert!(ticker.poll(at("2030-01-01T10:00:20Z")));
    }

    #[test]
    fn a_one_shot_delay_never_makes_the_scheduler_fire_before_the_tick() {
        // The scheduler's due time: the current whole second plus the
        // delay's whole seconds.
        let due = |tick: &str, now: &str| {
            let now = at(now);
            let delay = one_shot_delay(at(tick), now);
            now.trunc_subsecs(0) + chrono::Duration::seconds(delay.as_secs() as i64)
        };
        assert_eq!(
            due("2030-01-01T10:00:05Z", "2030-01-01T10:00:03.900Z"),
            at("2030-01-01T10:00:05Z"),
            "a plain delay (1.1 s) would be due at :04"
        );
        assert_eq!(
            due("2030-01-01T10:00:05Z", "2030-01-01T10:00:03Z"),
            at("2030-01-01T10:00:05Z")
        );
        assert_eq!(
            due("2030-01-01T10:00:05.500Z", "2030-01-01T10:00:03.200Z"),
            at("2030-01-01T10:00:06Z")
        );
        assert_eq!(
            one_shot_delay(at("2030-01-01T10:00:05Z"), at("2030-01-01T10:00:07Z")),
            Duration::ZERO,
            "a tick already past: at once"
        );
    }

    /// What the scheduler asked of [`TestStore`], and how it should answer.
    #[derive(Clone, Default)]
    struct Probe {
        refuse: Arc<std::sync::atomic::AtomicBool>,
        hang: Arc<std::sync::atomic::AtomicBool>,
        ops: Arc<std::sync::Mutex<Vec<(&'static str, Uuid)>>>,
    }

    impl Probe {
        fn ops(&self) -> Vec<(&'static str, Uuid)> {
            self.ops.lock().unwrap().clone()
        }

        fn adds(&self) -> usize {
            self.ops().iter().filter(|(op, _)| *op == "add").count()
        }

        fn position(&self, op: (&'static str, Uuid)) -> Option<usize> {
            self.ops().iter().position(|o| *o == op)
        }

        /// Waits (bounded) for the scheduler to delete `job`.
        async fn deleted(&self, job: Uuid) -> usize {
            for _ in 0..100 {
                if let Some(at) = self.position(("delete", job)) {
                    return at;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{job} never deleted: {:?}", self.ops());
        }
    }

    /// The scheduler's own in-memory store, except that it can refuse or
    /// never answer an add, as a failing store does: the scheduler's real
    /// `add` then fails or hangs.
    struct TestStore {
        inner: tokio_cron_scheduler::SimpleMetadataStore,
        probe: Probe,
    }

    type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, JobSchedulerError>> + Send>>;
    use tokio_cron_scheduler::job::job_data::{JobAndNextTick, JobStoredData};
    use tokio_cron_scheduler::store::{DataStore, InitStore};

    impl DataStore<JobStoredData> for TestStore {
        fn get(&mut self, id: Uuid) -> StoreFuture<Option<JobStoredData>> {
            self.inner.get(id)
        }

        fn add_or_update(&mut self, data: JobStoredData) -> StoreFuture<()> {
            let id: Uuid = data.id.as_ref().unwrap().into();
            self.probe.ops.lock().unwrap().push(("add", id));
            if self.probe.hang.load(std::sync::atomic::Ordering::SeqCst) {
                return Box::pin(std::future::pending());
            }
            if self.probe.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Box::pin(std::future::ready(Err(JobSchedulerError::SaveJob)));
            }
            self.inner.add_or_update(data)
        }

        fn delete(&mut self, guid: Uuid) -> StoreFuture<()> {
            self.probe.ops.lock().unwrap().push(("delete", guid));
            self.inner.delete(guid)
        }
    }

    impl InitStore for TestStore {
        fn init(&mut self) -> StoreFuture<()> {
            self.inner.init()
        }

        fn inited(&mut self) -> StoreFuture<bool> {
            self.inner.inited()
        }
    }

    impl tokio_cron_scheduler::MetaDataStorage for TestStore {
        fn list_next_ticks(&mut self) -> StoreFuture<Vec<JobAndNextTick>> {
            self.inner.list_next_ticks()
        }

        fn set_next_and_last_tick(
            &mut self,
            guid: Uuid,
            next_tick: Option<DateTime<Utc>>,
            last_tick: Option<DateTime<Utc>>,
        ) -> StoreFuture<()> {
            self.inner
                .set_next_and_last_tick(guid, next_tick, last_tick)
        }

        fn time_till_next_job(&mut self) -> StoreFuture<Option<Duration>> {
            self.inner.time_till_next_job()
        }
    }

    async fn alarm_on(probe: &Probe, timeout: Duration) -> Alarm {
        let scheduler = JobScheduler::new_with_storage_and_code(
            Box::new(TestStore {
                inner: tokio_cron_scheduler::SimpleMetadataStore::default(),
                probe: probe.clone(),
            }),
            Box::<tokio_cron_scheduler::SimpleNotificationStore>::default(),
            Box::<tokio_cron_scheduler::SimpleJobCode>::default(),
            Box::<tokio_cron_scheduler::SimpleNotificationCode>::default(),
            200,
        )
        .await
        .unwrap();
        // Alarms for far-off ticks never ring in these tests.
        let (rings, _) = mpsc::channel(8);
        Alarm::start(scheduler, rings, timeout).await.unwrap()
    }

    /// A ticker whose one tick is at `time` (a cron schedule with a year).
    fn once_at(time: &str) -> Schedule {
        use chrono::{Datelike, Timelike};
        let t = at(time);
        Schedule::Cron(
            format!(
                "{} {} {} {} {} * {}",
                t.second(),
                t.minute(),
                t.hour(),
                t.day(),
                t.month(),
                t.year()
            )
            .parse()
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_new_alarm_is_added_before_the_old_one_is_removed() {
        let probe = Probe::default();
        let mut alarm = alarm_on(&probe, Duration::from_secs(5)).await;
        let first_tick = at("2099-01-01T00:00:00Z");
        let second_tick = at("2099-01-02T00:00:00Z");
        alarm.follow(Some(first_tick), Instant::now()).await;
        let first = alarm.set.unwrap().job;
        assert!(alarm.is_set_for(Some(first_tick)));
        // The same plan again: nothing to do.
        alarm.follow(Some(first_tick), Instant::now()).await;
        assert_eq!(probe.adds(), 1);

        alarm.follow(Some(second_tick), Instant::now()).await;
        let second = alarm.set.unwrap().job;
        assert!(alarm.is_set_for(Some(second_tick)));
        let removed = probe.deleted(first).await;
        assert!(
            probe.position(("add", second)).unwrap() < removed,
            "{:?}",
            probe.ops()
        );
        assert_eq!(
            probe.ops(),
            [("add", first), ("add", second), ("delete", first)]
        );

        // No next tick: the alarm goes.
        alarm.follow(None, Instant::now()).await;
        assert!(!alarm.is_set_for(Some(second_tick)));
        probe.deleted(second).await;
    }

    #[tokio::test]
    async fn a_refused_alarm_keeps_the_old_one_is_reported_and_retried_with_backoff() {
        let probe = Probe::default();
        let mut alarm = alarm_on(&probe, Duration::from_secs(5)).await;
        let metrics = Metrics::new().unwrap();
        let (unscheduled_tx, unscheduled) = watch::channel(None);
        let armed = |metrics: &Metrics| {
            metrics.render().lines().find_map(|line| {
                line.strip_prefix("token_sweeper_schedule_armed ")
                    .map(|value| value.parse::<f64>().unwrap())
            })
        };
        let mut ticker = Ticker::new(once_at("2099-01-01T00:00:00Z"), Utc::now());
        let start = Instant::now();
        alarm.follow(ticker.next(), start).await;
        let old = alarm.set.unwrap().job;
        publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx);
        assert_eq!(armed(&metrics), Some(1.0));

        // A reload to a new schedule; the scheduler refuses its alarm.
        probe
            .refuse
            .store(true, std::sync::atomic::Ordering::SeqCst);
        ticker
            .reschedule(once_at("2099-01-02T00:00:00Z"), Utc::now())
            .unwrap();
        alarm.follow(ticker.next(), start).await;
        assert!(!alarm.is_set_for(ticker.next()));
        assert_eq!(alarm.set.unwrap().job, old, "the old alarm is kept");
        publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx);
        assert_eq!(armed(&metrics), Some(0.0));
        let reason = unscheduled.borrow().clone().unwrap();
        assert!(
            reason.starts_with(
                "the scheduler did not take the alarm for the tick at 2099-01-02 00:00:00 UTC: SaveJob;"
            ),
            "{reason}"
        );
        assert_eq!(probe.adds(), 2);

        // Tried again after 1 s, then 2 s, 4 s ... at most a minute apart.
        let mut now = start;
        for backoff in [1, 2, 4, 8, 16, 32, 60, 60] {
            let retry_at = now + Duration::from_secs(backoff);
            let adds = probe.adds();
            alarm
                .follow(ticker.next(), retry_at - Duration::from_millis(1))
                .await;
            assert_eq!(probe.adds(), adds, "not before {backoff} s");
            alarm.follow(ticker.next(), retry_at).await;
            assert_eq!(probe.adds(), adds + 1, "after {backoff} s");
            now = retry_at;
        }
        assert!(probe.position(("delete", old)).is_none());

        // The scheduler takes it again: set, reported, the old one removed.
        probe
            .refuse
            .store(false, std::sync::atomic::Ordering::SeqCst);
        alarm
            .follow(ticker.next(), now + Duration::from_secs(60))
            .await;
        assert!(alarm.is_set_for(ticker.next()));
        let new = alarm.set.unwrap().job;
        publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx);
        assert_eq!(armed(&metrics), Some(1.0));
        assert_eq!(*unscheduled.borrow(), None);
        let removed = probe.deleted(old).await;
        assert!(probe.position(("add", new)).unwrap() < removed);
    }

    #[tokio::test]
    async fn an_add_the_scheduler_never_answers_does_not_hold_up_the_loop() {
        let probe = Probe::default();
        probe.hang.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut alarm = alarm_on(&probe, Duration::from_millis(200)).await;
        let tick = at("2099-01-01T00:00:00Z");
        tokio::time::timeout(
            Duration::from_secs(10),
            alarm.follow(Some(tick), Instant::now()),
        )
        .await
        .expect("follow returns though the scheduler never answers");
        assert!(!alarm.is_set_for(Some(tick)));
        let reason = alarm.failure_reason().unwrap();
        assert!(reason.contains(": no answer within 200ms;"), "{reason}");
    }

    #[tokio::test]
    async fn the_scheduler_rings_the_alarm_at_its_tick_never_before() {
        let (rings, mut rung) = mpsc::channel(8);
        let mut alarm = Alarm::start(JobScheduler::new().await.unwrap(), rings, MAX_SLEEP)
            .await
            .unwrap();
        // Two seconds after the start of this second: a plain delay would
        // be due a second early.
        let tick = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(2);
        alarm.follow(Some(tick), Instant::now()).await;
        let job = alarm.set.unwrap().job;
        let rang = tokio::time::timeout(Duration::from_secs(10), rung.recv())
            .await
            .expect("the alarm rings")
            .unwrap();
        let now = Utc::now();
        assert_eq!(rang, job);
        assert!(now >= tick, "rang at {now}, before its tick {tick}");
        alarm.rang(job);
        assert!(!alarm.is_set_for(Some(tick)), "spent once it rang");
        alarm.stop().await;
    }
}
