//! When sweeps run: the schedule in the settings (a cron expression or a
//! fixed interval), parsed once, and the arithmetic of its ticks.
//!
//! A leaf: it knows nothing of the daemon that drives it or the settings
//! that hold it, so both can use it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

/// When sweeps run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Six-field cron expression (with seconds; an optional seventh field
    /// is the year), UTC.
    Cron(CronSchedule),
    /// Fixed interval in whole seconds.
    Interval(Duration),
}

/// A cron expression, parsed once: the ticks come from the parsed form, the
/// text is kept as the operator wrote it for messages and dumps (the parser
/// upper-cases and trims its copy).
#[derive(Clone, Debug)]
pub struct CronSchedule {
    text: String,
    /// Shared: the parsed form is some 300 bytes, and the settings hand out
    /// a copy of the schedule to each part that drives it.
    cron: Arc<croner::Cron>,
}

/// Why `sweep.schedule` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not parse.
    #[error("is not a cron expression with seconds (\"0 */5 * * * *\"): {0}")]
    Invalid(String),
    /// The expression parses, but no time from now on matches it (Feb 30,
    /// a year in the past): the daemon would sweep at start-up, then never.
    #[error("never fires: no time after {after} matches it")]
    NeverFires {
        /// The time searched from.
        after: DateTime<Utc>,
    },
}

impl CronSchedule {
    /// Parses a cron expression: seconds required, day-of-month AND
    /// day-of-week. Whether it still fires is not checked here (a schedule
    /// that has run out is a state the daemon reports); settings use
    /// [`Schedule::parse_cron`], which refuses one.
    ///
    /// # Errors
    /// [`ScheduleError::Invalid`].
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
        Ok(Self {
            text: expr.to_owned(),
            cron: Arc::new(cron),
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first tick strictly after `now`, if any. croner keeps the
    /// fraction of a second it starts from: on the whole second, ticks stay
    /// on whole seconds.
    fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.trunc_subsecs(0), false)
            .ok()
    }
}

/// Two expressions are the same schedule when they are written the same:
/// what a reload compares.
impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronSchedule {}

impl std::str::FromStr for CronSchedule {
    type Err = ScheduleError;

    fn from_str(expr: &str) -> Result<Self, ScheduleError> {
        Self::parse(expr)
    }
}

impl std::fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Schedule {
    /// Parses a cron expression ([`CronSchedule::parse`]) and makes sure it
    /// fires at least once more: a schedule that never fires is refused
    /// where the configuration is read.
    ///
    /// # Errors
    /// [`ScheduleError`] saying which.
    pub fn parse_cron(expr: &str) -> Result<CronSchedule, ScheduleError> {
        let cron = CronSchedule::parse(expr)?;
        let now = crate::clock::wall_clock().trunc_subsecs(0);
        match cron.next_after(now) {
            Some(_) => Ok(cron),
            None => Err(ScheduleError::NeverFires { after: now }),
        }
    }

    /// The first tick strictly after `now`, or `None` when the schedule has
    /// no more. Interval ticks fall on multiples of the interval since the
    /// Unix epoch (5m: :00, :05, :10 ...), so replicas tick together, as
    /// they do with a cron schedule.
    pub fn next_tick_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Interval(interval) => {
                let period = i64::try_from(interval.as_millis()).ok()?.max(1);
                let next = (now.timestamp_millis().div_euclid(period) + 1).checked_mul(period)?;
                DateTime::from_timestamp_millis(next)
            }
            Self::Cron(cron) => cron.next_after(now),
        }
    }

    /// The time between the next two ticks (for a cron schedule, the gap
    /// that comes next); one second when there are not two more.
    pub fn period(&self) -> Duration {
        let now = crate::clock::wall_clock();
        self.next_tick_after(now)
            .and_then(|first| Some((first, self.next_tick_after(first)?)))
            .and_then(|(first, second)| (second - first).to_std().ok())
            .unwrap_or(Duration::from_secs(1))
    }

    /// The shortest time between two consecutive ticks from `now` on: the
    /// interval itself, or for a cron schedule the shortest gap between its
    /// ticks over the next [`GAP_HORIZON`] (at most [`GAP_TICKS`] ticks).
    /// `None` when fewer than two ticks fall in that window.
    ///
    /// Not [`Schedule::period`]: a cron schedule's gaps differ (`"0 0,1 * * *
    /// *"` has one of a minute, then one of 59), and a bound checked
    /// against the gap that happens to come next would accept a value at
    /// one time of day and refuse it at another.
    pub fn shortest_gap(&self, now: DateTime<Utc>) -> Option<Duration> {
        let cron = match self {
            Self::Interval(interval) => return Some(*interval),
            Self::Cron(cron) => cron,
        };
        let horizon = later(now, GAP_HORIZON);
        let mut tick = cron.next_after(now)?;
        let mut shortest: Option<Duration> = None;
        for _ in 0..GAP_TICKS {
            let Some(next) = cron.next_after(tick) else {
                break;
            };
            if next > horizon {
                break;
            }
            // Ticks only move forward; a gap that does not convert is none.
            if let Ok(gap) = (next - tick).to_std() {
                shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
            }
            tick = next;
        }
        shortest
    }

    /// The longest wait between two reconnect attempts that still lets the
    /// daemon sweep within two periods of Redis coming back: half a period,
    /// between 1 s and 30 s.
    pub fn reconnect_backoff(&self) -> Duration {
        (self.period() / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Time from now until the next tick; one second when there is none
    /// (what a lease needs, as a lower bound).
    pub fn time_to_next_tick(&self) -> Duration {
        let now = crate::clock::wall_clock();
        self.next_tick_after(now)
            .and_then(|next| (next - now).to_std().ok())
            .unwrap_or(Duration::from_secs(1))
    }
}

/// How far ahead [`Schedule::shortest_gap`] looks: two years of 366 days,
/// so that every month and weekday combination of a cron schedule comes
/// round, and a yearly schedule has two ticks in it.
pub const GAP_HORIZON: Duration = Duration::from_secs(2 * 366 * 86_400);

/// How many ticks [`Schedule::shortest_gap`] reads at most, so that a
/// schedule of every second costs milliseconds, not a year of ticks. A cron
/// expression repeats its seconds in every minute it selects and its minutes
/// in every hour, so these ticks show every gap within an hour many times
/// over; a shorter gap could be missed only where it comes from a
/// combination of hours or days these ticks do not reach.
pub const GAP_TICKS: usize = 10_000;

/// `time` plus `by`, saturating at the end of time.
pub(crate) fn later(time: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|by| time.checked_add_signed(by))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The setting behind a schedule, as an operator wrote it.
pub(crate) fn describe(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Cron(cron) => format!("sweep.schedule {:?}", cron.as_str()),
        Schedule::Interval(interval) => format!(
            "sweep.interval {:?}",
            humantime::format_duration(*interval).to_string()
        ),
    }
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

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron(expr.parse().unwrap())
    }

    #[test]
    fn ticks_are_strictly_after_now_on_whole_multiples() {
        let five = every(300);
        assert_eq!(
            five.next_tick_after(at("2030-01-01T10:02:30.5Z")),
            Some(at("2030-01-01T10:05:00Z"))
        );
        assert_eq!(
            five.next_tick_after(at("2030-01-01T10:05:00Z")),
            Some(at("2030-01-01T10:10:00Z"))
        );
        let cron = cron("* * * * * *");
        assert_eq!(
            cron.next_tick_after(at("2030-01-01T10:00:00.300Z")),
            Some(at("2030-01-01T10:00:01Z"))
        );
    }

    #[test]
    fn the_shortest_gap_does_not_depend_on_when_it_is_asked() {
        assert_eq!(
            every(2).shortest_gap(at("2030-01-01T10:00:00Z")),
            Some(Duration::from_secs(2))
        );
        let twice_an_hour = cron("0 0,1 * * * *");
        for now in ["2030-01-01T10:00:30Z", "2030-01-01T10:30:00Z"] {
            assert_eq!(
                twice_an_hour.shortest_gap(at(now)),
                Some(Duration::from_secs(60)),
                "{now}"
            );
        }
        // Midnight and 23:00: the short gap crosses the day.
        let late = cron("0 0 0,23 * * *");
        assert_eq!(
            late.shortest_gap(at("2030-01-01T12:00:00Z")),
            Some(Duration::from_secs(3600))
        );
        // Every second: bounded by GAP_TICKS, not a year of ticks.
        let dense = cron("* * * * * *");
        assert_eq!(
            dense.shortest_gap(at("2030-01-01T12:00:00Z")),
            Some(Duration::from_secs(1))
        );
        // Yearly: two ticks within the horizon from any day of the year.
        let yearly = cron("0 0 0 1 1 *");
        for now in ["2030-01-01T00:00:01Z", "2030-12-31T23:59:59Z"] {
            let gap = yearly.shortest_gap(at(now)).unwrap();
            assert!(
                gap == Duration::from_secs(365 * 86_400)
                    || gap == Duration::from_secs(366 * 86_400),
                "{now}: {gap:?}"
            );
        }
        // Feb 29 only: no two ticks within two years.
        let leap = cron("0 0 0 29 2 *");
        assert_eq!(leap.shortest_gap(at("2029-03-01T00:00:00Z")), None);
    }

    #[test]
    fn reconnects_back_off_to_half_a_period_within_1s_and_30s() {
        assert_eq!(every(1).reconnect_backoff(), Duration::from_secs(1));
        assert_eq!(every(10).reconnect_backoff(), Duration::from_secs(5));
        assert_eq!(every(300).reconnect_backoff(), Duration::from_secs(30));
        let minutely = cron("0 * * * * *");
        assert_eq!(minutely.period(), Duration::from_secs(60));
        assert_eq!(minutely.reconnect_backoff(), Duration::from_secs(30));
    }

    #[test]
    fn a_cron_schedule_that_never_fires_is_refused() {
        for expr in ["0 0 0 30 2 *", "0 0 0 1 1 * 2020"] {
            assert!(
                matches!(
                    Schedule::parse_cron(expr),
                    Err(ScheduleError::NeverFires { .. })
                ),
                "{expr}"
            );
        }
        assert!(matches!(
            Schedule::parse_cron("every monday"),
            Err(ScheduleError::Invalid(_))
        ));
        assert!(
            Schedule::parse_cron("0 0 0 29 2 *").is_ok(),
            "leap days come"
        );
    }

    #[test]
    fn a_cron_schedule_keeps_its_text_as_written() {
        let parsed = CronSchedule::parse(" 0 0 12 * * mon ").unwrap();
        assert_eq!(parsed.as_str(), " 0 0 12 * * mon ");
        assert_eq!(parsed.to_string(), " 0 0 12 * * mon ");
        assert_eq!(
            describe(&Schedule::Cron(parsed.clone())),
            r#"sweep.schedule " 0 0 12 * * mon ""#
        );
        assert_eq!(parsed, CronSchedule::parse(" 0 0 12 * * mon ").unwrap());
        assert_ne!(parsed, CronSchedule::parse("0 0 12 * * MON").unwrap());
        assert_eq!(
            describe(&every(90)),
            r#"sweep.interval "1m 30s""#,
            "an interval as humantime writes it"
        );
    }

    #[test]
    fn a_cron_schedule_needs_seconds() {
        let err = CronSchedule::parse("*/5 * * * *").unwrap_err().to_string();
        assert!(
            err.starts_with(r#"is not a cron expression with seconds ("0 */5 * * * *"): "#),
            "{err}"
        );
        // A schedule that has run out parses: the daemon reports it, only
        // the settings refuse it.
        let spent = cron("0 0 0 1 1 * 2020");
        assert_eq!(spent.next_tick_after(at("2030-01-01T00:00:00Z")), None);
        assert_eq!(spent.shortest_gap(at("2030-01-01T00:00:00Z")), None);
        assert_eq!(spent.period(), Duration::from_secs(1));
    }
}
