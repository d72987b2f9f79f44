//! Step 1 of a sweep: "now", from Redis `TIME` or the host clock, after
//! the clock-skew check. Every answer is read strictly: a clock that cannot
//! be read refuses the sweep ([`Check::Clock`]), it never guesses.

use std::time::Duration;

use redis::Value;

use super::cutoff::Expired;
use super::error::{Check, SweepError};
use crate::config::{ClockSource, SweepSettings};
use crate::store::{parse_time, Connection};

/// "Now" in microseconds since the Unix epoch, after the clock-skew check.
///
/// A clock ahead removes live tokens, and the skew check lets through
/// anything within `sweep.max_clock_skew` (a minute by default), so with
/// the host clock (`sweep.clock = "local"`) "now" is the earlier of the two
/// clocks whenever both are read: a host 50 s ahead cannot remove a token
/// with 30 s left, by the clock that judges it. That clock is Redis's: the
/// auth path (`verify`, the login script) and any writer following the data
/// contract read `TIME`, so a member at or below Redis "now" is already
/// refused as expired everywhere. With `sweep.clock = "redis"` "now" is
/// therefore Redis `TIME` alone: taking a host clock that is behind would
/// only keep members no one accepts any more, make the cutoff depend on a
/// clock the configuration chose not to trust, and let daemons on different
/// hosts disagree on it. With the skew check off (`0s`) only the chosen
/// clock is read.
pub(super) async fn read_clock(
    conn: &Connection,
    settings: &SweepSettings,
) -> Result<i128, SweepError> {
    let now = match settings.clock {
        ClockSource::Redis => redis_time(conn).await?,
        ClockSource::Local => host_time()?,
    };
    if settings.max_clock_skew.is_zero() {
        return Ok(now);
    }
    let other = match settings.clock {
        ClockSource::Redis => host_time()?,
        ClockSource::Local => redis_time(conn).await?,
    };
    let skew =
        Duration::from_micros(u64::try_from((now - other).unsigned_abs()).unwrap_or(u64::MAX));
    if skew > settings.max_clock_skew {
        return Err(SweepError::ClockSkew {
            skew,
            max: settings.max_clock_skew,
        });
    }
    Ok(match settings.clock {
        ClockSource::Redis => now,
        ClockSource::Local => now.min(other),
    })
}

/// [`read_clock`], and the scores expired then ([`Expired::at`]): step 2
/// of every sweep, a full scan or an index sweep.
pub(super) async fn expired_now(
    conn: &Connection,
    settings: &SweepSettings,
) -> Result<(i128, Expired), SweepError> {
    let now_micros = read_clock(conn, settings).await?;
    let expired =
        Expired::at(now_micros, settings.grace, settings.score_unit).ok_or_else(|| {
            Check::Cutoff.refused(format!(
                "now ({now_micros} µs since 1970) less sweep.grace is beyond 2^53 {}: Redis \
                 could not compare scores with it exactly",
                settings.score_unit
            ))
        })?;
    Ok((now_micros, expired))
}

/// The step name of the clock read, in errors.
const TIME_READ: &str = "TIME (clock check)";

/// Redis `TIME` in microseconds since the Unix epoch.
async fn redis_time(conn: &Connection) -> Result<i128, SweepError> {
    let mut conn = conn.clone();
    let reply: Value = conn
        .query(TIME_READ, &redis::cmd("TIME"))
        .await
        .map_err(|e| Check::Clock.failed(e))?;
    parse_time(&reply).map_err(|reason| {
        Check::Clock.refused(format!(
            "Redis at {}: TIME answered {reason}",
            conn.address()
        ))
    })
}

/// The host clock in microseconds since the Unix epoch.
fn host_time() -> Result<i128, SweepError> {
    // Before 1970 the host clock is broken: no cutoff or skew computed
    // from it means anything.
    crate::clock::host_micros().map_err(|before| {
        Check::Clock.refused(format!(
            "the host clock reads {before:?} before 1970-01-01; fix the host clock"
        ))
    })
}
