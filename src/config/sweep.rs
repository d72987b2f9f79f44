//! `[sweep]`: what a sweep removes, how hard it pushes Redis, and when the
//! daemon runs it, with the bounds that keep each value sane.

use std::time::Duration;

use chrono::SubsecRound;
use serde::{Deserialize, Serialize};

use super::values::{
    between_one_and, human_duration, human_duration_option, in_days, positive, string_enum,
};
use super::{ConfigError, DueIndexSettings, ScoreUnit, ThrottleMode};
use crate::schedule::{CronSchedule, Schedule, ScheduleError};

string_enum! {
    /// Where "now" comes from when computing the cutoff.
    ClockSource {
        /// Redis `TIME`: one clock for every sweeper and every writer.
        Redis = "redis",
        /// The host clock of the sweeper.
        Local = "local",
    }
}

/// Largest `sweep.scan_count`. One SCAN call runs to its end inside Redis's
/// single thread, visiting about COUNT buckets of the keyspace: every other
/// client waits that long (100 000 buckets: a few milliseconds), and the
/// reply holds up to that many keys. A huge COUNT walks the whole keyspace in
/// one call and returns every key at once.
pub const MAX_SCAN_COUNT: u32 = 100_000;

/// Largest `sweep.batch_size`. Redis's pipelining guide suggests batches of
/// about 10 000 commands; a longer pipeline only grows the buffers on both
/// sides, its replies included.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// Largest `sweep.max_in_flight`. Redis runs one command at a time, so more
/// pipelines in flight only hide network latency, while each holds a batch
/// of keys: a primary's sweep holds about (2 × max_in_flight + 1) batches,
/// at the two maxima 650 000 keys (some 65 MB with 100-byte keys).
pub const MAX_IN_FLIGHT: u32 = 32;

/// Longest `sweep.interval`: 366 days. A sweep less than once a year is
/// no sweep; a yearly cron schedule is the way to ask for one. The bound
/// keeps every tick the interval plans inside the calendar (an interval of
/// 500000000y has no next tick), so such a value is refused here, when the
/// configuration is read, and not found out when the daemon runs.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 86_400);

/// Largest `sweep.max_clock_skew` (`0s` turns the check off). Every UTC
/// offset is a whole number of quarter hours, so a host whose clock is set
/// in local time or the wrong time zone (or not moved for daylight saving)
/// is off by at least 15 minutes: a limit below that catches it, while an
/// NTP-synced clock is off by milliseconds, far inside it. A larger limit
/// would be the check turned off without saying so (`100y` used to pass),
/// and would let a clock that far ahead remove live tokens.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);

/// Largest `sweep.unit_guard_sample`. The sampled keys are held until each
/// has been read; a few dozen already tell seconds from milliseconds.
pub const MAX_UNIT_GUARD_SAMPLE: u32 = 10_000;

/// What a sweep does and how hard it pushes Redis.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepSettings {
    /// SCAN MATCH pattern of the token sets.
    pub pattern: String,
    /// Unit of the scores (token expiry times).
    pub score_unit: ScoreUnit,
    /// Where "now" comes from.
    pub clock: ClockSource,
    /// Extra time a token is kept after its expiry (cutoff = now - grace).
    #[serde(with = "human_duration")]
    pub grace: Duration,
    /// Refuse to sweep when the Redis clock and the host clock differ by more
    /// than this ("0s" turns the check off), at most [`MAX_CLOCK_SKEW`]. A
    /// clock running ahead would remove live tokens.
    #[serde(with = "human_duration")]
    pub max_clock_skew: Duration,
    /// SCAN COUNT hint: how many slots Redis visits per SCAN call, at most
    /// [`MAX_SCAN_COUNT`].
    pub scan_count: u32,
    /// Keys per pipeline of ZREMRANGEBYSCORE, at most [`MAX_BATCH_SIZE`].
    pub batch_size: u32,
    /// Pipelines sent before waiting for the oldest one's replies (per
    /// node), at most [`MAX_IN_FLIGHT`].
    pub max_in_flight: u32,
    /// In cluster mode, how many primaries are swept at the same time. Each
    /// primary is its own Redis process, so sweeping them in parallel is what
    /// keeps every one of them busy.
    pub max_parallel_nodes: u32,
    /// Upper bound on keys swept per second; 0 means no limit. Applies with
    /// the throttle on or off.
    pub max_keys_per_second: u64,
    /// `"adaptive"` (yield to the other clients of Redis) or `"off"`.
    pub throttle: ThrottleMode,
    /// Adaptive: the latency a probe may gain over its idle round trip
    /// before the sweep slows down (from 50µs to 1s).
    #[serde(with = "human_duration")]
    pub throttle_target: Duration,
    /// Adaptive: the largest share of Redis's time the sweep takes when
    /// nothing else needs it, in percent (1 to 100).
    pub throttle_max_share_percent: u8,
    /// Adaptive: keys per second (per primary) the sweep keeps handling
    /// however busy Redis is (a key counts when SCAN visits it and when it
    /// is swept), so that it always finishes; at least 1.
    pub throttle_floor: u64,
    /// Adaptive: most members one command removes from one set; a set
    /// with more is cleaned in several commands.
    pub max_members_per_command: u32,
    /// Check a sample of sets before deleting anything: if their scores look
    /// like the other unit, abort. Turn off only for data that is known odd.
    pub unit_guard: bool,
    /// How many sets the unit guard inspects, at most [`MAX_UNIT_GUARD_SAMPLE`].
    pub unit_guard_sample: u32,
    /// Daemon schedule as an interval (`"5m"`): whole seconds, from 1s to
    /// [`MAX_INTERVAL`]. Exactly one of `interval` and `schedule` may be set.
    #[serde(with = "human_duration_option")]
    pub interval: Option<Duration>,
    /// Daemon schedule as a cron expression with seconds, in UTC:
    /// `"0 */5 * * * *"`. Exactly one of `interval` and `schedule` may be set.
    #[serde(with = "cron_text")]
    pub schedule: Option<CronSchedule>,
    /// Sweep once as soon as the daemon starts, before the first tick.
    pub run_on_start: bool,
    /// Delay each scheduled sweep by a random time up to this, so replicas
    /// started together do not all hit Redis at the same instant. Shorter
    /// than the interval, or than the shortest gap between two ticks of the
    /// cron schedule (over the next two years), so every tick can sweep.
    #[serde(with = "human_duration")]
    pub jitter: Duration,
    /// After SIGTERM/SIGINT, how long a running sweep may take to finish its
    /// batches in flight before the daemon exits anyway.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
    /// `[sweep.due_index]`: the opt-in due index.
    pub due_index: DueIndexSettings,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            pattern: "*-tokens".to_owned(),
            score_unit: ScoreUnit::Milliseconds,
            clock: ClockSource::Redis,
            grace: Duration::ZERO,
            max_clock_skew: Duration::from_secs(60),
            scan_count: 1000,
            batch_size: 1000,
            max_in_flight: 8,
            max_parallel_nodes: 16,
            max_keys_per_second: 0,
            throttle: ThrottleMode::Adaptive,
            throttle_target: Duration::from_micros(500),
            throttle_max_share_percent: 75,
            throttle_floor: 2000,
            max_members_per_command: 500,
            unit_guard: true,
            unit_guard_sample: 64,
            interval: Some(Duration::from_secs(300)),
            schedule: None,
            run_on_start: true,
            jitter: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
            due_index: DueIndexSettings::default(),
        }
    }
}

impl SweepSettings {
    /// When sweeps run, from `schedule` or `interval` (validation makes sure
    /// exactly one is set).
    pub fn schedule(&self) -> Schedule {
        match (&self.schedule, self.interval) {
            (Some(cron), _) => Schedule::Cron(cron.clone()),
            (None, Some(interval)) => Schedule::Interval(interval),
            // Validation rejects this; five minutes is the documented default.
            (None, None) => Schedule::Interval(Duration::from_secs(300)),
        }
    }

    /// The rules between `[sweep]` keys and the bounds of each.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.pattern.is_empty() {
            return Err(ConfigError::invalid("sweep.pattern", "must not be empty"));
        }
        if self.max_clock_skew > MAX_CLOCK_SKEW {
            return Err(ConfigError::invalid(
                "sweep.max_clock_skew",
                format!(
                    "must be at most {} (0s turns the check off), got {}: a clock set in the \
                     wrong time zone is off by 15 minutes or more",
                    in_days(MAX_CLOCK_SKEW),
                    in_days(self.max_clock_skew)
                ),
            ));
        }
        between_one_and("sweep.scan_count", self.scan_count, MAX_SCAN_COUNT)?;
        between_one_and("sweep.batch_size", self.batch_size, MAX_BATCH_SIZE)?;
        between_one_and("sweep.max_in_flight", self.max_in_flight, MAX_IN_FLIGHT)?;
        self.validate_throttle()?;
        // Not bounded: each primary is its own Redis process, and the
        // cluster's size bounds how many run at once.
        between_one_and(
            "sweep.max_parallel_nodes",
            self.max_parallel_nodes,
            u32::MAX,
        )?;
        // The bound holds with the guard off too: it is one reload from on.
        if self.unit_guard || self.unit_guard_sample > MAX_UNIT_GUARD_SAMPLE {
            between_one_and(
                "sweep.unit_guard_sample",
                self.unit_guard_sample,
                MAX_UNIT_GUARD_SAMPLE,
            )?;
        }
        match (&self.schedule, self.interval) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "sweep.schedule",
                    "sweep.schedule and sweep.interval are both set; set exactly one",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "sweep.schedule",
                    "neither sweep.schedule nor sweep.interval is set; set exactly one",
                ))
            }
            // Parsed and found to fire when read; checked again for settings
            // built in code, which can hold one that has run out.
            (Some(cron), None) => {
                let now = crate::clock::wall_clock().trunc_subsecs(0);
                if self.schedule().next_tick_after(now).is_none() {
                    let e = ScheduleError::NeverFires { after: now };
                    return Err(ConfigError::invalid(
                        "sweep.schedule",
                        format!("{:?} {e}", cron.as_str()),
                    ));
                }
            }
            (None, Some(interval)) => {
                if interval < Duration::from_secs(1)
                    || interval.subsec_nanos() != 0
                    || interval > MAX_INTERVAL
                {
                    return Err(ConfigError::invalid(
                        "sweep.interval",
                        format!(
                            "must be whole seconds, at least 1s and at most {}, got {}",
                            in_days(MAX_INTERVAL),
                            in_days(interval)
                        ),
                    ));
                }
            }
        }
        // Each scheduled sweep first waits a random time up to the jitter; a
        // jitter as long as the gap to the next tick makes every tick land on
        // a round still waiting, and no sweep ever runs.
        let schedule = self.schedule();
        let (limit, what) = match (&schedule, schedule.shortest_gap(crate::clock::wall_clock())) {
            (Schedule::Interval(_), Some(gap)) => (gap, "sweep.interval".to_owned()),
            (Schedule::Cron(cron), Some(gap)) => (
                gap,
                format!(
                    "the shortest gap between two ticks of sweep.schedule {:?}",
                    cron.as_str()
                ),
            ),
            // Not two ticks within the next two years (Feb 29 only): the
            // interval's bound, so the jitter stays a delay and never an end
            // to sweeping.
            (_, None) => (
                MAX_INTERVAL,
                "the longest sweep.interval (the schedule has no two ticks within two years)"
                    .to_owned(),
            ),
        };
        if self.jitter >= limit {
            return Err(ConfigError::invalid(
                "sweep.jitter",
                format!(
                    "must be shorter than {what}, {}, got {}: each sweep first waits up to \
                     the jitter",
                    in_days(limit),
                    in_days(self.jitter)
                ),
            ));
        }
        positive("sweep.shutdown_timeout", self.shutdown_timeout)?;
        self.due_index.validate(&self.pattern)
    }
}

/// `sweep.schedule`: parsed, and refused when it never fires, as the
/// settings are read.
mod cron_text {
    use serde::{Deserializer, Serializer};

    use super::super::values::from_text;
    use crate::schedule::{CronSchedule, Schedule};

    pub fn serialize<S: Serializer>(cron: &Option<CronSchedule>, s: S) -> Result<S::Ok, S::Error> {
        match cron {
            Some(cron) => s.serialize_str(cron.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CronSchedule>, D::Error> {
        from_text(d, |text| {
            Schedule::parse_cron(text)
                .map(Some)
                .map_err(|e| format!("{text:?} {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sweep(json: serde_json::Value) -> Result<SweepSettings, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_schedule_is_parsed_as_it_is_read_and_written_as_it_was() {
        let read = sweep(serde_json::json!({ "schedule": "0 */5 * * * *" })).unwrap();
        let cron = read.schedule.clone().unwrap();
        assert_eq!(cron.as_str(), "0 */5 * * * *");
        assert_eq!(read.schedule(), Schedule::Cron(cron));
        let written = toml::to_string(&SweepSettings {
            interval: None,
            ..read
        })
        .unwrap();
        assert!(
            written.contains("schedule = \"0 */5 * * * *\"\n") && !written.contains("interval"),
            "{written}"
        );
    }

    #[test]
    fn a_schedule_that_does_not_parse_or_never_fires_is_not_read() {
        let err = sweep(serde_json::json!({ "schedule": "every monday" })).unwrap_err();
        assert!(
            err.starts_with("\"every monday\" is not a cron expression with seconds"),
            "{err}"
        );
        let err = sweep(serde_json::json!({ "schedule": "0 0 0 30 2 *" })).unwrap_err();
        assert!(
            err.starts_with("\"0 0 0 30 2 *\" never fires: no time after "),
            "{err}"
        );
    }

    #[test]
    fn an_interval_is_whole_seconds_within_a_year() {
        let with = |interval: Duration| SweepSettings {
            interval: Some(interval),
            ..SweepSettings::default()
        };
        assert_eq!(
            with(Duration::from_millis(1500))
                .validate()
                .unwrap_err()
                .to_string(),
            "sweep.interval: must be whole seconds, at least 1s and at most 366 days, got 1s 500ms"
        );
        assert!(with(MAX_INTERVAL + Duration::from_secs(1))
            .validate()
            .is_err());
        with(MAX_INTERVAL).validate().unwrap();
    }

    #[test]
    fn the_jitter_is_shorter_than_the_shortest_gap_between_ticks() {
        let settings = SweepSettings {
            interval: None,
            schedule: Some("0 0,1 * * * *".parse().unwrap()),
            jitter: Duration::from_secs(60),
            ..SweepSettings::default()
        };
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "sweep.jitter: must be shorter than the shortest gap between two ticks of \
             sweep.schedule \"0 0,1 * * * *\", 1m, got 1m: each sweep first waits up to the jitter"
        );
        SweepSettings {
            jitter: Duration::from_secs(59),
            ..settings
        }
        .validate()
        .unwrap();
    }
}
