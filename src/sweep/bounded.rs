//! Step 5 with the adaptive throttle: removal of at most
//! `sweep.max_members_per_command` members per command, also inside one key.
//!
//! One ZREMRANGEBYSCORE over a set holding a million expired members keeps
//! Redis's one thread for about 300 ms, and every other client waits. So,
//! for each key of a pipeline:
//! 1. `ZRANGEBYSCORE key <min> cutoff WITHSCORES LIMIT N-1 1` reads the
//!    score of the N-th expired member (none: the key has fewer than N);
//! 2. `ZREMRANGEBYSCORE key <min> <that score>` (or `cutoff` when there
//!    were fewer) removes them, and a key that had N or more comes back in
//!    a later pipeline until step 1 finds fewer than N.
//!
//! Safe whatever happens between the two commands: what step 2 can remove
//! is scored at most that score, which step 1 read from the expired range
//! (and which is checked here to be in it, or the key is left alone), so a
//! member added meanwhile by a login (scored in the future) is never in
//! it. A removal by rank would not be: a logout between a count and a
//! ZREMRANGEBYRANK shifts the ranks onto a live member. The bounds are the
//! sweep's own ([`min_bound`] of the removal floor, and the cutoff), so
//! the unit guard and the milliseconds floor hold as in one command. The
//! bound is approximate in one way only: members tied at exactly the N-th
//! score all go in the same command, so one command may remove more than
//! N when many share a score.

use std::collections::HashMap;

use redis::Value;

use super::cutoff::{min_bound, Expired};
use super::mode::SweepMode;
use super::query::{is_redirect, not_a_cluster, query_each, replied_from, shape, Found, KeyReply};
use super::remove::{remove_up_to, BatchOutcome};
use crate::store::{Connection, StoreError};

/// The command of step 1, as errors name it.
pub(super) const BOUND_READ: &str = "ZRANGEBYSCORE";

/// What one bounded pipeline did, and the keys to come back to.
pub(super) struct Bounded {
    /// Counts of both steps.
    pub(super) outcome: BatchOutcome,
    /// The error that ends the node's sweep, if any.
    pub(super) stopped: Result<(), StoreError>,
    /// Keys that had more than the bound to remove: not clean yet.
    pub(super) again: Vec<Vec<u8>>,
}

/// Step 1 for `keys`: which to remove up to a lower bound than the cutoff.
/// Step 2 is [`Plan::remove`], a round trip of its own, so that the caller
/// can pace between the two.
pub(super) async fn read_bounds(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    found: Found<'_>,
    expired: Expired,
    limit: u32,
) -> (BatchOutcome, Result<Plan, StoreError>) {
    let min = min_bound(expired.floor());
    let offset = limit.saturating_sub(1);
    let mut outcome = BatchOutcome::default();
    let replies = match query_each(conn, BOUND_READ, keys, found, |key| {
        let mut cmd = redis::cmd(BOUND_READ);
        cmd.arg(key)
            .arg(&min)
            .arg(expired.cutoff())
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(1);
        cmd
    })
    .await
    {
        Ok(replies) => replies,
        Err(e) => return (outcome, Err(e)),
    };
    let mut plan = Plan::default();
    for (key, KeyReply { reply, redirected }) in keys.iter().zip(replies) {
        match reply.map(one_pair) {
            Ok(Value::Array(items)) if items.is_empty() => plan.keys.push(key.clone()),
            Ok(Value::Array(items)) if items.len() == 2 => {
                match expired_score(&items[1], expired) {
                    Some(bound) => {
                        plan.upper.insert(key.clone(), bound);
                        plan.keys.push(key.clone());
                    }
                    None => {
                        // Not a score of the expired range: Redis answered
                        // something this code does not understand, and the key
                        // is left alone rather than removed up to it.
                        outcome.counts.errors += 1;
                        outcome.first_error.get_or_insert_with(|| {
                            format!(
                                "{BOUND_READ}: Redis at {} answered a score outside the expired \
                             range; the key was left alone",
                                conn.address()
                            )
                        });
                    }
                }
            }
            Ok(other) => {
                outcome.counts.errors += 1;
                outcome.first_error.get_or_insert_with(|| {
                    format!(
                        "{BOUND_READ}: Redis at {} answered {}, not a (member, score) or nothing",
                        conn.address(),
                        shape(&other)
                    )
                });
            }
            Err(e) if !redirected && is_redirect(&e) => {
                outcome.counts.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| not_a_cluster(conn, BOUND_READ));
            }
            Err(e) => {
                if let Err(e) = outcome.tally(BOUND_READ, Err(e)) {
                    // NOPERM, READONLY, CLUSTERDOWN: the node's sweep ends
                    // before anything of this pipeline is removed.
                    return (
                        outcome,
                        Err(replied_from(conn, redirected).error(BOUND_READ, e)),
                    );
                }
            }
        }
    }
    (outcome, Ok(plan))
}

/// What step 2 removes: every key of `keys`, those in `upper` only up to
/// the score given there.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) upper: HashMap<Vec<u8>, String>,
}

impl Plan {
    /// Step 2: the removal. Keys removed up to a bound come back if that
    /// removal removed something.
    pub(super) async fn remove(
        self,
        conn: &mut Connection,
        found: Found<'_>,
        expired: Expired,
        mut outcome: BatchOutcome,
    ) -> Bounded {
        if self.keys.is_empty() {
            return Bounded {
                outcome,
                stopped: Ok(()),
                again: Vec::new(),
            };
        }
        let (removed, stopped, progressed) = remove_up_to(
            conn,
            &self.keys,
            found,
            expired,
            SweepMode::Remove,
            &self.upper,
        )
        .await;
        outcome.counts.add(&removed.counts);
        if outcome.first_error.is_none() {
            outcome.first_error = removed.first_error;
        }
        Bounded {
            outcome,
            stopped,
            again: progressed,
        }
    }
}

/// A reply of `ZRANGEBYSCORE .. WITHSCORES LIMIT n 1` as `[member, score]`
/// whatever the protocol: RESP2 answers `[member, score]`, RESP3 (a URL's
/// `protocol=resp3`) `[[member, score]]`. Anything else is left as it came,
/// for the caller to refuse.
fn one_pair(reply: Value) -> Value {
    match reply {
        Value::Array(mut items) if items.len() == 1 && is_pair(&items[0]) => {
            items.pop().unwrap_or(Value::Nil)
        }
        other => other,
    }
}

fn is_pair(value: &Value) -> bool {
    matches!(value, Value::Array(pair) if pair.len() == 2)
}

/// The text of `score` to send back to Redis as a bound, if it is a score
/// `expired` contains: as Redis wrote it (RESP2), so that it parses back to
/// the very double it came from; a RESP3 double in Rust's shortest form,
/// which also round-trips exactly.
fn expired_score(score: &Value, expired: Expired) -> Option<String> {
    let text = match score {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
        Value::Double(value) => format!("{value:?}"),
        _ => return None,
    };
    let value: f64 = text.parse().ok()?;
    // "inf" / "-inf" parse in Rust and in Redis alike; NaN is never a score.
    expired.contains(value).then_some(text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ScoreUnit;
    use crate::sweep::query::tests::bulk;

    #[test]
    fn a_resp3_pair_reads_as_a_resp2_one() {
        let resp2 = Value::Array(vec![bulk("m"), bulk("1699999999000")]);
        let resp3 = Value::Array(vec![Value::Array(vec![
            bulk("m"),
            Value::Double(1_699_999_999_000.0),
        ])]);
        assert_eq!(one_pair(resp2.clone()), resp2);
        assert_eq!(
            one_pair(resp3),
            Value::Array(vec![bulk("m"), Value::Double(1_699_999_999_000.0)])
        );
        // Nothing, or a shape that is neither: as it came.
        assert_eq!(one_pair(Value::Array(vec![])), Value::Array(vec![]));
        let odd = Value::Array(vec![Value::Array(vec![bulk("m")])]);
        assert_eq!(one_pair(odd.clone()), odd);
    }

    #[test]
    fn only_an_expired_score_is_a_bound() {
        let now = 1_700_000_000 * 1_000_000;
        let ms = Expired::at(now, Duration::ZERO, ScoreUnit::Milliseconds).unwrap_or_else(|| {
            unreachable!("a 2023 clock has a cutoff");
        });
        assert_eq!(
            expired_score(&bulk("1699999999000"), ms).as_deref(),
            Some("1699999999000")
        );
        // Live, below the floor, or not a number: no bound, the key is left alone.
        for text in ["1700000000001", "1700003600", "-inf", "nan", "soon"] {
            assert_eq!(expired_score(&bulk(text), ms), None, "{text}");
        }
        assert_eq!(
            expired_score(&Value::Double(1_699_999_999_000.0), ms).as_deref(),
            Some("1699999999000.0")
        );
        assert_eq!(expired_score(&Value::Int(1), ms), None);
        let s = Expired::at(now, Duration::ZERO, ScoreUnit::Seconds).unwrap_or_else(|| {
            unreachable!("a 2023 clock has a cutoff");
        });
        assert_eq!(expired_score(&bulk("-inf"), s).as_deref(), Some("-inf"));
    }
}
