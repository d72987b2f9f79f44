//! Which scores are expired: the cutoff computed from "now" and the
//! grace, and the removal floor below which milliseconds sweeps keep
//! everything. Pure arithmetic, shared with the auth path's login script.

use std::time::Duration;

use crate::config::ScoreUnit;

/// Largest magnitude below which every integer is exactly a double, the
/// type Redis parses a score range bound into. A larger cutoff could be
/// rounded up by Redis, expiring members scored above it.
const EXACT_IN_A_DOUBLE: i128 = 1 << 53;

/// The highest score that counts as expired: `floor((now - grace) / unit)`.
///
/// `None` when that is above 2^53: Redis could not compare scores with it
/// exactly (and only a clock hundreds of thousands of years ahead gets
/// there). A cutoff below -2^53 (an absurd grace) becomes `i64::MIN`:
/// nothing finite is expired, which only ever keeps members.
///
/// ```
/// use std::time::Duration;
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::cutoff_for;
///
/// // 1_700_000_000.999_999 s, no grace
/// let now = 1_700_000_000_999_999;
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Seconds), Some(1_700_000_000));
/// assert_eq!(cutoff_for(now, Duration::ZERO, ScoreUnit::Milliseconds), Some(1_700_000_000_999));
/// assert_eq!(cutoff_for(now, Duration::from_secs(60), ScoreUnit::Seconds), Some(1_699_999_940));
/// ```
pub fn cutoff_for(now_micros: i128, grace: Duration, unit: ScoreUnit) -> Option<i64> {
    let grace = i128::try_from(grace.as_micros()).unwrap_or(i128::MAX);
    let cutoff = unit.from_unix_micros(now_micros.saturating_sub(grace));
    if cutoff > EXACT_IN_A_DOUBLE {
        None
    } else if cutoff < -EXACT_IN_A_DOUBLE {
        Some(i64::MIN)
    } else {
        i64::try_from(cutoff).ok()
    }
}

/// The scores a sweep removes: at or below the cutoff and, in milliseconds,
/// above the [`removal_floor`].
///
/// A score that could be a seconds timestamp, far-future "never expires"
/// placeholders included, is never removed from data swept as
/// milliseconds, whatever the unit guard saw: read as milliseconds it is
/// before 2001, so nothing legitimate is kept by this,
/// while a live seconds-scored token (a set written by a service moving
/// from seconds to milliseconds, or shared with one in seconds) would
/// otherwise be removed as long expired. The unit guard samples only some
/// sets and reads one score of each; this holds for every member of every
/// key, in the command itself, at no extra cost. In seconds no floor is
/// needed: a millisecond timestamp is a thousand times above any seconds
/// cutoff, so it is never expired. Members scored `-inf` (or anything at or
/// below the floor) stay in milliseconds: the key's TTL takes them.
///
/// ```
/// use std::time::Duration;
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::Expired;
///
/// let now = 1_700_000_000 * 1_000_000; // microseconds
/// let ms = Expired::at(now, Duration::ZERO, ScoreUnit::Milliseconds).unwrap();
/// assert!(ms.contains(1_699_999_999_000.0)); // a millisecond expiry a second ago
/// assert!(!ms.contains(1_700_003_600.0)); // an hour ahead, in seconds: kept
/// assert!(!ms.contains(f64::NEG_INFINITY));
/// let s = Expired::at(now, Duration::ZERO, ScoreUnit::Seconds).unwrap();
/// assert!(s.contains(1_699_999_999.0) && s.contains(f64::NEG_INFINITY));
/// assert!(!s.contains(1_699_999_999_000.0)); // milliseconds: far in the future
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    floor: Option<i64>,
    cutoff: i64,
}

impl Expired {
    /// The expired scores at `now_micros` (microseconds since the epoch)
    /// less `grace`, in `unit`: [`cutoff_for`] and [`removal_floor`].
    /// `None` when the cutoff is beyond what Redis compares exactly.
    pub fn at(now_micros: i128, grace: Duration, unit: ScoreUnit) -> Option<Self> {
        Some(Self {
            floor: removal_floor(unit),
            cutoff: cutoff_for(now_micros, grace, unit)?,
        })
    }

    /// The highest expired score.
    pub fn cutoff(self) -> i64 {
        self.cutoff
    }

    /// Scores at or below this are never removed; `None`: no floor.
    pub fn floor(self) -> Option<i64> {
        self.floor
    }

    /// Whether a member scored `score` is removed.
    pub fn contains(self, score: f64) -> bool {
        score <= self.cutoff as f64 && self.floor.is_none_or(|floor| score > floor as f64)
    }
}

/// The score at or below which nothing is ever removed from sets scored in
/// milliseconds: 10^12 ms, 2001-09-09T01:46:40Z.
///
/// Why this constant, and why not one counted from the clock: it must sit
/// above every seconds timestamp anyone writes, and below every millisecond
/// timestamp a live token can have.
/// - Above seconds: read as seconds, 10^12 is the year 33658. Every
///   "never expires" placeholder a seconds-writing service uses (2^32 - 1,
///   4102444800 for 2100, 9999999999, even 10^11) is far below it, so in a
///   milliseconds sweep no plausible seconds score is ever removed. (The
///   floor it replaces, now + 50 years in seconds, left such placeholders
///   above it: read as 1970 milliseconds, they were removed.)
/// - Below milliseconds: it is 2001 in milliseconds, before this code, JWT
///   session stores and any token alive today; the unit guard's idea of a
///   plausible millisecond timestamp starts 20 years back from now, also
///   above it ([`looks_like`](crate::sweep::looks_like)). Keeping members scored 1970 to 2001 in
///   milliseconds costs nothing: the key's TTL takes them.
/// - Independent of the clock: no clock reading (a host booted at the
///   epoch, a Redis `TIME` decades ahead) can move it, so no clock oddity
///   can bring a seconds score into the removed range.
pub const MS_REMOVAL_FLOOR: i64 = 1_000_000_000_000;

/// The score at or below which nothing is ever removed from sets scored in
/// `unit`: [`MS_REMOVAL_FLOOR`] for milliseconds, `None` (no floor) for
/// seconds. The one definition the sweep and the auth path's login script
/// share; render it for Redis with [`min_bound`].
///
/// ```
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::{removal_floor, MS_REMOVAL_FLOOR};
///
/// assert_eq!(removal_floor(ScoreUnit::Milliseconds), Some(MS_REMOVAL_FLOOR));
/// assert!(9_999_999_999 < MS_REMOVAL_FLOOR); // a seconds "never" is kept
/// assert_eq!(removal_floor(ScoreUnit::Seconds), None);
/// ```
pub fn removal_floor(unit: ScoreUnit) -> Option<i64> {
    match unit {
        ScoreUnit::Seconds => None,
        ScoreUnit::Milliseconds => Some(MS_REMOVAL_FLOOR),
    }
}

/// The `min` argument of `ZREMRANGEBYSCORE`/`ZCOUNT` for `floor`: `(floor`
/// (exclusive: the floor itself is kept), or `-inf` without one.
pub fn min_bound(floor: Option<i64>) -> String {
    match floor {
        Some(floor) => format!("({floor}"),
        None => "-inf".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_moves_the_cutoff_back_in_the_unit_rounding_down() {
        let now = 1_700_000_000_500_000; // .5 s
        let grace = Duration::from_millis(1_500);
        assert_eq!(
            cutoff_for(now, grace, ScoreUnit::Milliseconds),
            Some(1_699_999_999_000)
        );
        assert_eq!(
            cutoff_for(now, grace, ScoreUnit::Seconds),
            Some(1_699_999_999)
        );
        // A grace below the unit still rounds down: a member is only ever kept longer.
        assert_eq!(
            cutoff_for(now, Duration::from_micros(1), ScoreUnit::Seconds),
            Some(1_700_000_000)
        );
        assert_eq!(
            cutoff_for(
                1_700_000_000_000_000,
                Duration::from_micros(1),
                ScoreUnit::Seconds
            ),
            Some(1_699_999_999)
        );
    }

    #[test]
    fn the_min_bound_excludes_the_floor() {
        assert_eq!(
            min_bound(removal_floor(ScoreUnit::Milliseconds)),
            "(1000000000000"
        );
        assert_eq!(min_bound(removal_floor(ScoreUnit::Seconds)), "-inf");
        let ms = Expired::at(
            1_700_000_000_000_000,
            Duration::ZERO,
            ScoreUnit::Milliseconds,
        )
        .unwrap();
        assert!(!ms.contains(MS_REMOVAL_FLOOR as f64));
        assert!(ms.contains(MS_REMOVAL_FLOOR as f64 + 1.0));
    }

    #[test]
    fn cutoff_rounds_down_before_the_epoch_too() {
        assert_eq!(
            cutoff_for(-1, Duration::ZERO, ScoreUnit::Milliseconds),
            Some(-1)
        );
        assert_eq!(
            cutoff_for(1_500, Duration::ZERO, ScoreUnit::Milliseconds),
            Some(1)
        );
        // An absurd grace saturates to "nothing is expired" instead of wrapping.
        assert_eq!(
            cutoff_for(0, Duration::from_secs(u64::MAX), ScoreUnit::Seconds),
            Some(i64::MIN)
        );
    }

    #[test]
    fn a_cutoff_redis_cannot_hold_exactly_is_refused_not_saturated() {
        let limit: i128 = 1 << 53;
        let at_limit_ms = limit * 1_000;
        assert_eq!(
            cutoff_for(at_limit_ms, Duration::ZERO, ScoreUnit::Milliseconds),
            Some(1 << 53)
        );
        assert_eq!(
            cutoff_for(at_limit_ms + 1_000, Duration::ZERO, ScoreUnit::Milliseconds),
            None
        );
        // Before, a clock past i64 milliseconds saturated to i64::MAX: every
        // finite score expired.
        assert_eq!(
            cutoff_for(
                i128::from(i64::MAX) * 1_000_000,
                Duration::ZERO,
                ScoreUnit::Milliseconds
            ),
            None
        );
    }

    #[test]
    fn expired_is_the_range_the_command_removes() {
        let now = 1_795_836_033_123_456;
        let ms = Expired::at(now, Duration::ZERO, ScoreUnit::Milliseconds).unwrap();
        let floor = ms.floor().unwrap() as f64;
        assert!(ms.contains(ms.cutoff() as f64));
        assert!(!ms.contains(ms.cutoff() as f64 + 0.5));
        assert!(ms.contains(floor + 1.0));
        for kept in [floor, 0.0, -0.0, f64::NEG_INFINITY, f64::INFINITY] {
            assert!(!ms.contains(kept), "{kept}");
        }
        let s = Expired::at(now, Duration::ZERO, ScoreUnit::Seconds).unwrap();
        assert_eq!(s.floor(), None);
        assert!(s.contains(f64::NEG_INFINITY) && s.contains(0.0));
        assert!(!s.contains(1_795_836_033_000.0 - 86_400_000.0));
        // No cutoff Redis cannot compare exactly, floor or not.
        assert_eq!(
            Expired::at(i128::MAX / 2, Duration::ZERO, ScoreUnit::Milliseconds),
            None
        );
    }
}
