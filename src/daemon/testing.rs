//! Helpers for the daemon's unit tests: times and schedules written as text.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::schedule::Schedule;

/// `time` (RFC 3339) as a UTC time.
pub(super) fn at(time: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(time).unwrap().to_utc()
}

/// An interval schedule of `secs` seconds.
pub(super) fn every(secs: u64) -> Schedule {
    Schedule::Interval(Duration::from_secs(secs))
}

/// A ticker whose one tick is at `time` (a cron schedule with a year).
pub(super) fn once_at(time: &str) -> Schedule {
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
