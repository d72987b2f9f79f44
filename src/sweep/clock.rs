//! Step 1 of a sweep: "now", from Redis `TIME` or the host clock, after
//! the clock-skew check. Every answer is read strictly: a clock that cannot
//! be read refuses the sweep ([`Check::Clock`]), it never guesses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use super::error::{Check, SweepError};
use super::query::shape;
use crate::config::{ClockSource, SweepSettings};
use crate::store::Connection;

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

/// `TIME`'s reply, strictly: two decimal strings, seconds since the epoch
/// and microseconds below a million. Anything else says what it was.
fn parse_time(reply: &Value) -> Result<i128, String> {
    let decimal = |part: &Value| -> Option<u64> {
        match part {
            Value::BulkString(text) => std::str::from_utf8(text).ok().and_then(digits),
            Value::SimpleString(text) => digits(text),
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    };
    let Value::Array(parts) = reply else {
        return Err(shape(reply));
    };
    let [secs, micros] = parts.as_slice() else {
        return Err(shape(reply));
    };
    match (decimal(secs), decimal(micros)) {
        (Some(secs), Some(micros)) if micros < 1_000_000 => {
            Ok(i128::from(secs) * 1_000_000 + i128::from(micros))
        }
        (Some(_), Some(micros)) => Err(format!("{micros} microseconds, not below a million")),
        _ => Err(format!(
            "{} and {}, not two non-negative integers",
            shape(secs),
            shape(micros)
        )),
    }
}

/// A non-negative decimal integer, digits only (no sign, no spaces).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The host clock in microseconds since the Unix epoch.
fn host_time() -> Result<i128, SweepError> {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => Ok(i128::try_from(since.as_micros()).unwrap_or(i128::MAX)),
        // Before 1970 the host clock is broken: no cutoff or skew computed
        // from it means anything.
        Err(e) => Err(Check::Clock.refused(format!(
            "the host clock reads {:?} before 1970-01-01; fix the host clock",
            e.duration()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::query::tests::bulk;

    #[test]
    fn time_replies_are_decoded_strictly() {
        let time = |parts: Vec<Value>| parse_time(&Value::Array(parts));
        assert_eq!(
            time(vec![bulk("1700000000"), bulk("123456")]),
            Ok(1_700_000_000_123_456)
        );
        assert_eq!(time(vec![Value::Int(5), Value::Int(7)]), Ok(5_000_007));
        for bad in [
            vec![bulk("1700000000")],
            vec![bulk("1700000000"), bulk("1"), bulk("2")],
            vec![bulk("-5"), bulk("0")],
            vec![bulk("+5"), bulk("0")],
            vec![bulk(" 5"), bulk("0")],
            vec![bulk("1.5"), bulk("0")],
            vec![bulk(""), bulk("0")],
            vec![bulk("1700000000"), bulk("1000000")],
            vec![bulk("99999999999999999999"), bulk("0")],
            vec![Value::Nil, bulk("0")],
            vec![Value::Int(-1), bulk("0")],
        ] {
            assert!(time(bad.clone()).is_err(), "{bad:?}");
        }
        for bad in [Value::Nil, bulk("1700000000"), Value::Okay, Value::Int(1)] {
            assert!(parse_time(&bad).is_err(), "{bad:?}");
        }
    }
}
