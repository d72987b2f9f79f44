//! The host clock, read one way across the crate.
//!
//! Two clocks matter. Redis's `TIME` (read in `store::time`) is the clock
//! the sweep's cutoff, the login script and `verify` agree on: a token's
//! score was written from it. The host clock drives the schedule, stamps the
//! metrics, and is checked against Redis's before a sweep. It is read here
//! and nowhere else, so that no caller panics on a host clock outside
//! chrono's range (`Utc::now` does) or quietly clamps one before 1970.
//!
//! A leaf: it imports nothing from the crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

/// The host clock as a date, without `chrono::Utc::now`'s panics. A clock
/// before 1970 or past chrono's range (the year 262143) reads as the Unix
/// epoch: the sweep's clock check refuses such a clock in one line naming it
/// ([`host_micros`]), and everything scheduled from this value (ticks,
/// schedule bounds, "last success" timestamps) counts from the epoch rather
/// than panicking.
pub fn wall_clock() -> DateTime<Utc> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| {
            DateTime::from_timestamp(i64::try_from(since.as_secs()).ok()?, since.subsec_nanos())
        })
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// The host clock in microseconds since the Unix epoch, or how far before
/// the epoch it reads (a broken host clock: nothing computed from it means
/// anything, so callers refuse rather than clamp).
///
/// # Errors
/// The distance before 1970-01-01 when the host clock reads earlier.
pub fn host_micros() -> Result<i128, Duration> {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => Ok(i128::try_from(since.as_micros()).unwrap_or(i128::MAX)),
        Err(e) => Err(e.duration()),
    }
}
