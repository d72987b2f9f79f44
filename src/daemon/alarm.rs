//! The scheduler's side of the ticks: a one-shot tokio-cron-scheduler job
//! per planned tick that only wakes the loop (see the daemon's module docs
//! for why one-shots, and why the delay is rounded up).

use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use super::ticker::ARM_RETRY;

/// The scheduler's side of the ticks: one one-shot job in
/// tokio-cron-scheduler for the tick the [`Ticker`] planned, which sends its
/// own id to the loop when it fires. It carries no authority: the loop checks
/// every alarm against the plan.
pub(super) struct Alarm {
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
    pub(super) async fn start(
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
    pub(super) async fn follow(&mut self, tick: Option<DateTime<Utc>>, now: Instant) {
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
        let job = Job::new_one_shot_async(
            one_shot_delay(tick, crate::clock::wall_clock()),
            move |job, _| {
                let rings = rings.clone();
                Box::pin(async move {
                    // Full only when the loop is behind on alarms already; its
                    // own check takes the tick then.
                    let _ = rings.try_send(job);
                })
            },
        )
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
    pub(super) fn rang(&mut self, job: Uuid) {
        if let Some(set) = self.set.as_mut().filter(|set| set.job == job) {
            set.rang = true;
        }
    }

    /// Whether the scheduler holds an alarm, not yet rung, for `tick`.
    pub(super) fn is_set_for(&self, tick: Option<DateTime<Utc>>) -> bool {
        self.set
            .is_some_and(|set| !set.rang && Some(set.tick) == tick)
    }

    /// Why the alarm for the planned tick is not set, in one line.
    pub(super) fn failure_reason(&self) -> Option<String> {
        self.failed.as_ref().map(|failed| {
            format!(
                "the scheduler did not take the alarm for the tick at {}: {}; \
                 the daemon's loop takes that tick itself",
                failed.tick, failed.error
            )
        })
    }

    pub(super) async fn stop(mut self) {
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

/// Which way a scheduled tick reached the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TickSource {
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
    pub(super) fn log(self, tick: Option<DateTime<Utc>>, missed: &mut bool) {
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

#[cfg(test)]
mod tests;
