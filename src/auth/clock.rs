//! Time checks on Redis `TIME`: one clock for every decision after the
//! signature (see the module docs), in microseconds so that no unit
//! conversion rounds a live session away.

use std::time::Duration;

use crate::config::ScoreUnit;

use super::{AuthError, Claims};

/// A moment, in microseconds since the epoch.
#[derive(Clone, Copy, Debug)]
pub(super) struct RedisTime {
    pub(super) micros: f64,
}

impl RedisTime {
    /// The host clock, for the one check that runs without Redis.
    pub(super) fn host() -> Self {
        // A host clock before 1970 reads as the epoch: the checks then
        // refuse the token as not yet valid, never accept it.
        Self {
            micros: crate::clock::host_micros().unwrap_or(0) as f64,
        }
    }

    /// Whole seconds, rounded down.
    pub(super) fn secs(self) -> u64 {
        (self.micros / 1e6) as u64
    }
}

impl From<(u64, u64)> for RedisTime {
    /// The reply to `TIME`: seconds and microseconds.
    fn from((secs, micros): (u64, u64)) -> Self {
        Self {
            micros: secs as f64 * 1e6 + micros as f64,
        }
    }
}

/// `iat` no later than now plus the leeway, and `exp` plus the leeway
/// still ahead of now.
pub(super) fn check_times(
    claims: &Claims,
    now: RedisTime,
    leeway: Duration,
) -> Result<(), AuthError> {
    let leeway_micros = leeway.as_micros() as f64;
    let at = |secs: u64| secs as f64 * 1e6;
    // `iat` is whole seconds: against now rounded up, a token stamped a
    // moment ago by a clock a few milliseconds ahead (another cluster
    // node's TIME) is not "from the future"; a second ahead is.
    let this_second = (now.micros / 1e6).ceil() * 1e6;
    if at(claims.iat) > this_second + leeway_micros {
        return Err(AuthError::Invalid(format!(
            "iat {} is more than the leeway ({}) in the future",
            claims.iat,
            humantime::format_duration(leeway)
        )));
    }
    if at(claims.exp) + leeway_micros <= now.micros {
        return Err(AuthError::Expired);
    }
    Ok(())
}

/// Whether a member scored `score` verifies at `now`: score + leeway >
/// now (the scripts' `cutoff` is the same line).
pub(super) fn is_live(score: f64, unit: ScoreUnit, leeway: Duration, now: RedisTime) -> bool {
    unit.to_unix_micros(score) + leeway.as_micros() as f64 > now.micros
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iat: u64, exp: u64) -> Claims {
        Claims::sample(iat, exp)
    }

    const LEEWAY: Duration = Duration::from_secs(5);

    #[test]
    fn iat_may_be_ahead_by_the_leeway_and_a_part_of_a_second() {
        let now = RedisTime::from((1_000, 1));
        // Rounded up to 1001, plus 5 s of leeway.
        assert!(check_times(&claims(1_006, 2_000), now, LEEWAY).is_ok());
        assert!(matches!(
            check_times(&claims(1_007, 2_000), now, LEEWAY),
            Err(AuthError::Invalid(message)) if message.contains("iat 1007")
        ));
    }

    #[test]
    fn exp_plus_the_leeway_must_be_ahead_of_now() {
        let now = RedisTime::from((1_000, 0));
        assert!(check_times(&claims(900, 996), now, LEEWAY).is_ok());
        assert!(matches!(
            check_times(&claims(900, 995), now, LEEWAY),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            check_times(&claims(900, 999), now, Duration::ZERO),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn a_score_is_live_while_score_plus_leeway_is_ahead_of_now() {
        let now = RedisTime::from((1_000, 0));
        assert!(is_live(996.0, ScoreUnit::Seconds, LEEWAY, now));
        assert!(!is_live(995.0, ScoreUnit::Seconds, LEEWAY, now));
        assert!(is_live(995_001.0, ScoreUnit::Milliseconds, LEEWAY, now));
        assert!(!is_live(995_000.0, ScoreUnit::Milliseconds, LEEWAY, now));
        assert!(is_live(f64::INFINITY, ScoreUnit::Milliseconds, LEEWAY, now));
    }
}
