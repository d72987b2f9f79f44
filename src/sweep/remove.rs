//! Step 5 of a sweep: one pipeline of `ZREMRANGEBYSCORE` (`ZCOUNT` in a dry
//! run) per batch of keys, and the tally of its replies.

use std::collections::HashMap;

use super::counts::Counts;
use super::cutoff::{min_bound, Expired};
use super::index::lower_found;
use super::mode::SweepMode;
use super::query::{is_redirect, not_a_cluster, query_each, replied_from, Found, KeyReply};
use crate::store::{Connection, StoreError};

/// What one pipeline of keys did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Its counts (`keys_scanned` stays 0: the scan counts those).
    pub counts: Counts,
    /// The first per-key error other than WRONGTYPE.
    pub first_error: Option<String>,
}

/// Sends one pipeline over `keys`: `ZREMRANGEBYSCORE key <min> cutoff`
/// (or `ZCOUNT` in a dry run) over the scores `expired` says, and tallies
/// the replies.
///
/// On a connection to one cluster node, keys that answer MOVED (their slot
/// moved) are sent again, one command each, through the cluster client, which
/// routes them by slot; keys that answer ASK (their slot is being migrated)
/// go to the node named, after `ASKING`. A redirected key did nothing where
/// it was first sent, so it is counted once, where it lives now.
///
/// Public so that callers sweeping keys they found another way (a list of
/// users) use the exact same command.
///
/// # Errors
/// [`StoreError::Command`] when the pipeline as a whole fails (connection
/// lost, timeout). Per-key errors are counted in the outcome instead.
pub async fn sweep_keys(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    expired: Expired,
    mode: SweepMode,
) -> Result<BatchOutcome, StoreError> {
    let (outcome, stopped) = sweep_batch(conn, keys, Found::Anywhere, expired, mode).await;
    stopped.map(|()| outcome)
}

/// [`sweep_keys`] for keys `found` as said. Returns the outcome of every
/// reply the pipeline got, and beside it the error that ends the node's
/// sweep, if any: a NOPERM on one key (an ACL that lets the user write
/// only some keys) does not undo what the other keys of the same pipeline
/// did, so their counts are reported with the error, not dropped.
pub(super) async fn sweep_batch(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    found: Found<'_>,
    expired: Expired,
    mode: SweepMode,
) -> (BatchOutcome, Result<(), StoreError>) {
    let (outcome, stopped, _) =
        remove_up_to(conn, keys, found, expired, mode, &HashMap::new()).await;
    (outcome, stopped)
}

/// [`sweep_batch`], with the upper bound of some keys lowered from the
/// cutoff to the score given in `upper` (as Redis wrote it, so it parses
/// back to the very same double): the bounded removal's second step.
/// The lower bound is always the sweep's ([`min_bound`]); every bound in
/// `upper` has been checked to be an expired score.
pub(super) async fn remove_up_to(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    found: Found<'_>,
    expired: Expired,
    mode: SweepMode,
    upper: &HashMap<Vec<u8>, String>,
) -> (BatchOutcome, Result<(), StoreError>, Vec<Vec<u8>>) {
    let command = mode.command();
    let min = min_bound(expired.floor());
    let mut outcome = BatchOutcome::default();
    let replies = match query_each(conn, command, keys, found, |key| {
        let mut cmd = redis::cmd(command);
        cmd.arg(key).arg(&min);
        match upper.get(key) {
            Some(bound) => cmd.arg(bound),
            None => cmd.arg(expired.cutoff()),
        };
        cmd
    })
    .await
    {
        Ok(replies) => replies,
        Err(e) => return (outcome, Err(e), Vec::new()),
    };
    let mut stopped = Ok(());
    // Keys removed up to a bound that did remove something: only those may
    // have more left. One whose removal was refused (MISCONF, NOREPLICAS,
    // OOM) is not sent back, or a node that refuses writes but answers
    // reads would be asked for the same keys forever.
    let mut progressed = Vec::new();
    // The keys whose removal answered: the repair's (one that failed may
    // keep expired members, which an entry above them would hide).
    let repairing = mode == SweepMode::Remove && found.repair().is_some();
    let mut removed = Vec::new();
    for (key, KeyReply { reply, redirected }) in keys.iter().zip(replies) {
        outcome.counts.keys_redirected += u64::from(redirected);
        match reply {
            Err(e) if !redirected && is_redirect(&e) => {
                outcome.counts.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| not_a_cluster(conn, command));
            }
            reply => {
                let count = reply.and_then(|value| Ok(redis::from_redis_value::<u64>(value)?));
                if matches!(count, Ok(n) if n > 0) && upper.contains_key(key) {
                    progressed.push(key.clone());
                }
                if repairing && count.is_ok() {
                    removed.push(key.clone());
                }
                if let Err(e) = outcome.tally(command, count) {
                    // The first such error is the node's; every reply is
                    // still counted.
                    if stopped.is_ok() {
                        stopped = Err(replied_from(conn, redirected).error(command, e));
                    }
                }
            }
        }
    }
    // A full scan with the due index on repairs it: each key's entry is
    // lowered to its next expiry (the keys of code that does not maintain
    // the index get one). Only ever lowered, so only ever early; after the
    // removal, as it only reads scores above what it removed. A key removed
    // up to a bound may keep expired members above it: its entry goes to
    // its first member above the bound (whole, rounded down: no later),
    // still due, so a sweep stopped before the key's next step leaves it
    // early, not late; a bound with no whole number (-inf) is not used.
    if let (Some(prefix), Ok(())) = (found.repair(), &stopped) {
        let above: HashMap<Vec<u8>, i64> = upper
            .iter()
            .filter_map(|(key, bound)| Some((key.clone(), whole_below(bound)?)))
            .collect();
        removed.retain(|key| !upper.contains_key(key) || above.contains_key(key));
        let (lowered, lower_stopped) =
            lower_found(conn, prefix, &removed, found, expired, &above).await;
        outcome.counts.index_entries_repaired += lowered.counts.index_entries_repaired;
        outcome.counts.errors += lowered.counts.errors;
        if outcome.first_error.is_none() {
            outcome.first_error = lowered.first_error;
        }
        stopped = lower_stopped;
    }
    (outcome, stopped, progressed)
}

/// The largest whole number at or below a score Redis wrote, if finite
/// and exact in a double (a bound is an expired score, so at or below a
/// cutoff that is).
fn whole_below(score: &str) -> Option<i64> {
    let score: f64 = score.parse().ok()?;
    let floor = score.floor();
    // 2^53: every whole number up to it is exact, so the cast is too.
    (floor.is_finite() && floor.abs() <= 9_007_199_254_740_992.0).then_some(floor as i64)
}

impl BatchOutcome {
    /// Counts one key's reply. Errors that are not about the key (missing ACL
    /// permission, a replica, a cluster that is down) are returned: the
    /// node's sweep stops with the server's own message, once the rest of
    /// the batch's replies are counted (an ACL may allow some keys and not
    /// others, so replies before and after it may have removed members).
    pub(super) fn tally(
        &mut self,
        command: &str,
        reply: redis::RedisResult<u64>,
    ) -> Result<(), redis::RedisError> {
        match reply {
            Ok(0) => {}
            Ok(removed) => {
                self.counts.keys_changed += 1;
                self.counts.members_removed += removed;
            }
            Err(e) if e.code() == Some("WRONGTYPE") => self.counts.skipped_wrong_type += 1,
            // CLUSTERDOWN: the node refuses keyed commands until the
            // cluster is whole again; the next sweep retries it.
            Err(e) if matches!(e.code(), Some("NOPERM" | "READONLY" | "CLUSTERDOWN")) => {
                return Err(e)
            }
            Err(e) => {
                self.counts.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{command}: {e}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::whole_below;

    #[test]
    fn a_bound_repairs_from_the_whole_number_at_or_below_it() {
        assert_eq!(whole_below("1764412800000"), Some(1_764_412_800_000));
        assert_eq!(whole_below("1700000000.5"), Some(1_700_000_000));
        assert_eq!(whole_below("-1.5"), Some(-2));
        assert_eq!(whole_below("-inf"), None);
        assert_eq!(whole_below("1e300"), None);
        assert_eq!(whole_below("soon"), None);
    }
}
