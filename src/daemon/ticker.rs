//! The plan of ticks: when the next scheduled sweep is due, on the wall
//! clock. Every alarm and every wake-up of the loop is checked against it,
//! so nothing else decides when a sweep starts.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::schedule::{describe, later, Schedule};

/// The longest the loop sleeps: it re-reads the wall clock at least this
/// often, so a suspended host or a stepped clock delays a tick by at most
/// this much even when no alarm rings.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);
/// First and longest wait before trying again to arm a schedule that has no
/// next tick (only the clock stepping back can change that answer), and
/// before trying again to set an alarm the scheduler refused.
pub(super) const ARM_RETRY: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60));
/// How long after a tick the loop's own check waits for the scheduler's
/// alarm before taking the tick itself: two of the scheduler's 500 ms polls.
pub(super) const ALARM_GRACE: Duration = Duration::from_secs(1);

/// When the next scheduled tick is: the plan that every alarm is checked
/// against. The loop asks it whether a tick is due when the scheduler's
/// alarm rings ([`Ticker::poll`]) and when it wakes by itself
/// ([`Ticker::poll_late`], which leaves the alarm [`ALARM_GRACE`] to ring
/// first).
///
/// Ticks are compared on the wall clock: a tick never fires early, a clock
/// stepped forward gives one tick (not a burst), and a clock stepped back
/// re-plans from the new time instead of waiting for the old one.
pub(super) struct Ticker {
    pub(super) schedule: Schedule,
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
    pub(super) fn new(schedule: Schedule, now: DateTime<Utc>) -> Self {
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
    pub(super) fn reschedule(
        &mut self,
        schedule: Schedule,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let next = schedule
            .next_tick_after(now)
            .ok_or_else(|| format!("{} has no next tick", describe(&schedule)))?;
        self.schedule = schedule;
        self.next = Ok(next);
        self.last_poll = now;
        Ok(())
    }

    /// Whether a tick is due at `now`; plans the next one when it is.
    pub(super) fn poll(&mut self, now: DateTime<Utc>) -> bool {
        self.poll_late(now, Duration::ZERO)
    }

    /// Whether a tick is due at `now`, counting it due only `late` after
    /// its time; plans the next one when it is. Either way it notices the
    /// clock stepping back and looks again for a next tick when there was
    /// none.
    pub(super) fn poll_late(&mut self, now: DateTime<Utc>, late: Duration) -> bool {
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
    pub(super) fn sleep_late(&self, now: DateTime<Utc>, late: Duration) -> Duration {
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
    pub(super) fn next(&self) -> Option<DateTime<Utc>> {
        self.next.as_ref().ok().copied()
    }

    /// Why there is no next tick, in one line for `/readyz` and the log.
    pub(super) fn unarmed_reason(&self) -> Option<String> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::daemon::testing::{at, every};

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
}
