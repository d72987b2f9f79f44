//! The unit guard: the scores of the first keys scanned must look like
//! timestamps in `sweep.score_unit`, or the sweep stops before a single
//! deletion ([`Check::UnitGuard`], [`SweepError::UnitGuard`]).

use redis::Value;
use tokio_util::sync::CancellationToken;

use super::cutoff::removal_floor;
use super::error::{Check, SweepError};
use super::query::{is_redirect, not_a_cluster, query_each, replied_from, shape, Found, KeyReply};
use super::scan::Scanner;
use crate::config::ScoreUnit;
use crate::store::{Connection, StoreError};

/// How far from now a score may be and still look like a timestamp of a unit.
/// 20 years back, 50 ahead: the seconds window and the milliseconds window are
/// three orders of magnitude apart, so real data cannot fall in the wrong one.
const PLAUSIBLE_PAST: i128 = 20 * 365 * 86_400;
const PLAUSIBLE_FUTURE: i128 = 50 * 365 * 86_400;

/// Which unit a score looks like, if it looks like a timestamp near now at all.
///
/// ```
/// use token_sweeper::config::ScoreUnit;
/// use token_sweeper::sweep::looks_like;
///
/// let now = 1_700_000_000 * 1_000_000; // microseconds
/// assert_eq!(looks_like(1_700_086_400.0, now), Some(ScoreUnit::Seconds));
/// assert_eq!(looks_like(1_700_086_400_000.0, now), Some(ScoreUnit::Milliseconds));
/// assert_eq!(looks_like(42.0, now), None);
/// ```
pub fn looks_like(score: f64, now_micros: i128) -> Option<ScoreUnit> {
    if !score.is_finite() {
        return None;
    }
    let now_secs = now_micros.div_euclid(1_000_000) as f64;
    [ScoreUnit::Seconds, ScoreUnit::Milliseconds]
        .into_iter()
        .find(|unit| {
            let per_second = unit.per_second() as f64;
            let low = (now_secs - PLAUSIBLE_PAST as f64) * per_second;
            let high = (now_secs + PLAUSIBLE_FUTURE as f64) * per_second;
            (low..=high).contains(&score)
        })
}

/// The unit guard of this node: reads the highest score of the keys
/// scanned first (see [`check_units`]) until `unit_guard_sample` of them
/// have confirmed the unit, the node has no more keys, or
/// [`GUARD_READ_FACTOR`] times the sample were read. The keys read stay
/// pending, to be swept like the others.
///
/// Only a score that looks like a timestamp in the configured unit is
/// evidence. A set with nothing to say (deleted since SCAN, only `+inf`
/// members, in milliseconds only scores at or below the removal floor,
/// which the sweep never removes) is a definite answer, but not
/// evidence. A score that looks like neither unit (and is above the
/// floor) is not evidence either, and it is data the sweep could remove
/// (in seconds, a score of 42 is long expired). So the guard refuses
/// when nothing read confirmed the unit and either such a score was read
/// or the node has keys the guard did not read, whose unit is unknown.
/// A node whose every set was read and said nothing goes ahead: nothing
/// on it depends on the unit.
///
/// The outer error aborts the sweep; the inner one is SCAN failing, the
/// node not being swept. Returns whether `stop` was cancelled first.
pub(super) async fn guard_node(
    scanner: &mut Scanner<'_>,
    now_micros: i128,
    found: Found<'_>,
    stop: &CancellationToken,
) -> Result<Result<bool, StoreError>, SweepError> {
    let sample = usize::try_from(scanner.settings.unit_guard_sample).unwrap_or(usize::MAX);
    if sample == 0 {
        return Err(Check::UnitGuard.refused("sweep.unit_guard_sample is 0".to_owned()));
    }
    let limit = sample.saturating_mul(GUARD_READ_FACTOR);
    let (mut read, mut seen) = (0, GuardSample::default());
    while seen.confirmed < sample && read < limit {
        let upto = read.saturating_add(sample - seen.confirmed).min(limit);
        match scanner.fill(upto, stop).await {
            Ok(true) => return Ok(Ok(true)),
            Ok(false) => {}
            Err(e) => return Ok(Err(e)),
        }
        let end = scanner.pending.len().min(upto);
        let keys = scanner.pending.get(read..end).unwrap_or_default();
        if keys.is_empty() {
            // The node has no more keys.
            break;
        }
        let batch = check_batch(
            &mut scanner.conn,
            keys,
            found,
            scanner.settings.score_unit,
            now_micros,
        )
        .await?;
        seen.confirmed += batch.confirmed;
        seen.unclear += batch.unclear;
        read = end;
    }
    let read_all = scanner.finished && read == scanner.pending.len();
    no_evidence(
        scanner.conn.address(),
        read,
        seen,
        scanner.settings.score_unit,
        read_all,
    )?;
    Ok(Ok(false))
}

/// The guard's rule on what it read: nothing read confirmed the unit, and
/// either a score looked like neither unit or keys were left unread (whose
/// unit is unknown): refused, with no evidence.
pub(super) fn no_evidence(
    address: &str,
    read: usize,
    seen: GuardSample,
    unit: ScoreUnit,
    read_all: bool,
) -> Result<(), SweepError> {
    if seen.confirmed == 0 && (seen.unclear > 0 || !read_all) {
        return Err(Check::UnitGuard.refused(format!(
            "{address}: none of the first {read} sets has a score that looks like a timestamp in \
             {unit} ({} have scores that look like neither unit, the others only +inf \
             members{}, or were deleted since SCAN), so the unit cannot be confirmed; set \
             sweep.unit_guard = false if the data is known to be right",
            seen.unclear,
            if removal_floor(unit).is_some() {
                " or scores at or below the removal floor"
            } else {
                ""
            },
        )));
    }
    Ok(())
}

/// How many keys, per key of `sweep.unit_guard_sample`, the unit guard
/// reads at most while looking for sets with a finite score. Bounded
/// because the keys it reads are held until swept; 16 keeps that to a
/// batch or so at the default sample of 64.
pub const GUARD_READ_FACTOR: usize = 16;

/// The step name of the unit guard's read, in errors.
const GUARD_READ: &str = "ZREVRANGEBYSCORE (unit guard)";

/// The unit guard's read of `keys`: the highest score below `+inf` of each
/// (members scored `+inf`, tokens that never expire, say nothing about the
/// unit; the highest finite score is the newest token). Returns how many of
/// the keys confirm `unit`: their highest finite score looks like a
/// timestamp in it ([`looks_like`]). A score that looks like neither unit
/// is not evidence for either: a set of such scores confirms nothing.
///
/// Every key must get a definite answer: a score, or nothing to say (the
/// key no longer exists or is no longer a sorted set, or holds only
/// `+inf`/`-inf` members). Redis sends an error as an error reply, never as
/// an empty one, and the reply is decoded strictly (a nil or any other
/// shape is not "no members"), so an empty array is Redis's own answer.
/// Keys that moved to another cluster node are read where they live now,
/// as the sweep would remove them there.
///
/// Public so that callers sweeping keys they found another way (with
/// [`sweep_keys`](crate::sweep::sweep_keys)) can run the same guard first.
///
/// # Errors
/// [`SweepError::UnitGuard`] when a score looks like the other unit;
/// [`SweepError::SafetyCheck`] when a key's reply is not a definite answer
/// (NOPERM, a MOVED/ASK that cannot be followed, a wrong shape);
/// [`SweepError::Redis`] when the connection is lost.
pub async fn check_units(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    unit: ScoreUnit,
    now_micros: i128,
) -> Result<usize, SweepError> {
    Ok(check_batch(conn, keys, Found::Anywhere, unit, now_micros)
        .await?
        .confirmed)
}

/// What the unit guard's read of some keys says about the configured unit.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GuardSample {
    /// Keys whose highest finite score looks like a timestamp in the
    /// configured unit: the only evidence for it.
    pub(super) confirmed: usize,
    /// Keys whose highest finite score looks like a timestamp in neither
    /// unit and is above the removal floor (in seconds: any such score).
    pub(super) unclear: usize,
}

/// [`check_units`] for keys `found` as said.
pub(super) async fn check_batch(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    found: Found<'_>,
    unit: ScoreUnit,
    now_micros: i128,
) -> Result<GuardSample, SweepError> {
    let replies = query_each(conn, GUARD_READ, keys, found, |key| {
        let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
        cmd.arg(key)
            .arg("(+inf")
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
        cmd
    })
    .await
    .map_err(|e| Check::UnitGuard.failed(e))?;
    let mut sample = GuardSample::default();
    let mut suspicious = Vec::new();
    for (key, KeyReply { reply, redirected }) in keys.iter().zip(replies) {
        let reply = match reply {
            Ok(reply) => reply,
            // The key stopped being a sorted set: the sweep skips it too.
            Err(e) if e.code() == Some("WRONGTYPE") => continue,
            Err(e) if !redirected && is_redirect(&e) => {
                return Err(Check::UnitGuard.refused(not_a_cluster(conn, GUARD_READ)))
            }
            Err(e) => {
                let e = replied_from(conn, redirected).error(GUARD_READ, e);
                return Err(Check::UnitGuard.failed(e));
            }
        };
        let score = highest_score(&reply).map_err(|shape| {
            Check::UnitGuard.refused(format!(
                "Redis at {}: {GUARD_READ} answered {shape} for key {:?}, not a (member, score) \
                 pair or nothing",
                replied_from(conn, redirected).address(),
                String::from_utf8_lossy(key)
            ))
        })?;
        let Some(score) = score.filter(|score| score.is_finite()) else {
            continue;
        };
        match looks_like(score, now_micros) {
            Some(seen) if seen == unit => sample.confirmed += 1,
            Some(seen) => suspicious.push((key, score, seen)),
            // The sweep removes none of this set's members whatever the
            // unit: every finite one is at or below the floor.
            None if removal_floor(unit).is_some_and(|floor| score <= floor as f64) => {}
            // Not a timestamp near now in either unit: it confirms nothing,
            // and a sweep could remove it (in seconds, 42 is long expired).
            None => sample.unclear += 1,
        }
    }
    let Some(&(example_key, example_score, seen)) = suspicious.first() else {
        return Ok(sample);
    };
    Err(SweepError::UnitGuard {
        configured: unit,
        seen,
        suspicious: suspicious.len(),
        sampled: keys.len(),
        example_key: String::from_utf8_lossy(example_key).into_owned(),
        example_score,
    })
}

/// The score in a `ZREVRANGEBYSCORE ... WITHSCORES LIMIT 0 1` reply: `None`
/// for an empty array; RESP2 `[member, score]` or RESP3 `[[member, score]]`
/// otherwise. Every other shape, a nil included, is an error describing it.
fn highest_score(reply: &Value) -> Result<Option<f64>, String> {
    let pair = match reply {
        Value::Array(items) => match items.as_slice() {
            [] => return Ok(None),
            [Value::Array(pair)] => pair.as_slice(),
            pair => pair,
        },
        other => return Err(shape(other)),
    };
    let score = match pair {
        [Value::BulkString(_), Value::BulkString(score)] => std::str::from_utf8(score)
            .ok()
            .and_then(|score| score.parse::<f64>().ok()),
        [Value::BulkString(_), Value::Double(score)] => Some(*score),
        _ => None,
    };
    // `(+inf` excludes +inf, and Redis has no NaN scores: either is a
    // reply to some other question.
    match score {
        Some(score) if !score.is_nan() && score != f64::INFINITY => Ok(Some(score)),
        _ => Err(shape(reply)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sweep::cutoff::{min_bound, MS_REMOVAL_FLOOR};
    use crate::sweep::query::tests::bulk;

    #[test]
    fn the_guard_reads_a_score_or_nothing_and_nothing_else() {
        let member = || bulk("digest");
        let array = Value::Array;
        assert_eq!(highest_score(&array(vec![])), Ok(None));
        // RESP2 and RESP3 shapes.
        assert_eq!(
            highest_score(&array(vec![member(), bulk("1700000000")])),
            Ok(Some(1.7e9))
        );
        assert_eq!(
            highest_score(&array(vec![array(vec![member(), Value::Double(2.5)])])),
            Ok(Some(2.5))
        );
        assert_eq!(
            highest_score(&array(vec![member(), bulk("-inf")])),
            Ok(Some(f64::NEG_INFINITY))
        );
        for bad in [
            // redis-rs reads a nil as an empty Vec: the guard must not.
            Value::Nil,
            Value::Int(0),
            bulk("1700000000"),
            array(vec![member()]),
            array(vec![member(), bulk("1"), member(), bulk("2")]),
            array(vec![member(), bulk("soon")]),
            array(vec![member(), bulk("inf")]),
            array(vec![member(), bulk("nan")]),
            array(vec![Value::Int(1), bulk("1")]),
        ] {
            let err = highest_score(&bad).unwrap_err();
            assert!(!err.contains("digest"), "a member never appears: {err}");
        }
    }

    #[test]
    fn the_removal_floor_is_above_every_seconds_score_and_below_live_milliseconds() {
        let floor = removal_floor(ScoreUnit::Milliseconds).unwrap() as f64;
        assert_eq!(removal_floor(ScoreUnit::Seconds), None);
        // Seconds "never expires" placeholders, and the top of the seconds
        // window at any clock up to the year 2500.
        for seconds in [4_294_967_295.0, 4_102_444_800.0, 9_999_999_999.0, 1e11] {
            assert!(seconds < floor, "{seconds}");
        }
        for now_secs in [0, 1_704_067_200, 1_795_836_033, 16_725_225_600_i128] {
            let now = now_secs * 1_000_000;
            let top_of_seconds = (now_secs + PLAUSIBLE_FUTURE) as f64;
            assert!(top_of_seconds < floor, "{now_secs}");
            // From 2022 on, every score that looks like milliseconds (20
            // years back at most) is above it.
            if now_secs >= 1_640_995_200 {
                let low_ms = ((now_secs - PLAUSIBLE_PAST) * 1000) as f64;
                assert_eq!(looks_like(low_ms, now), Some(ScoreUnit::Milliseconds));
                assert!(low_ms > floor, "{now_secs}");
            }
        }
        assert_eq!(min_bound(Some(MS_REMOVAL_FLOOR)), "(1000000000000");
        assert_eq!(min_bound(None), "-inf");
    }

    #[test]
    fn units_do_not_overlap() {
        let now = 1_795_836_033 * 1_000_000;
        assert_eq!(looks_like(1_795_836_033.0, now), Some(ScoreUnit::Seconds));
        assert_eq!(
            looks_like(1_795_836_033_000.0, now),
            Some(ScoreUnit::Milliseconds)
        );
        // Long-lived tokens in either unit still classify.
        assert_eq!(
            looks_like(1_795_836_033.0 + 30.0 * 365.0 * 86_400.0, now),
            Some(ScoreUnit::Seconds)
        );
        assert_eq!(looks_like(f64::INFINITY, now), None);
        assert_eq!(looks_like(0.0, now), None);
    }
}
