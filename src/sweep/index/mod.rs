//! Index mode: a sweep that reads the due index (`[sweep.due_index]`, see
//! [`crate::due_index`]) instead of scanning every key, so its cost follows
//! what expired, not the size of the keyspace.
//!
//! The steps are the full scan's, with step 4 and 5 replaced:
//! 1. the primaries, as a full scan;
//! 2. the clock and the cutoff, the same code (`clock::expired_now`);
//! 3. per primary, its slots (it must still serve them), then the due
//!    entries of its first slots are read and the unit guard runs on their
//!    keys with the full scan's evidence rules (`guard::no_evidence`), then
//!    the permission probe: the sweep script in a mode that runs every
//!    command it sends as a no-op, so an ACL refusing one stops the sweep
//!    here ([`Check::Permission`](crate::sweep::Check)). Every primary's
//!    checks pass before any primary deletes;
//! 4. per slot the primary serves (a standalone server: all 16384),
//!    `ZRANGEBYSCORE <index key> -inf <cutoff> WITHSCORES LIMIT 0 100`,
//!    pipelined over 256 slots, gives the due keys; entries naming a key
//!    of another slot, or one `sweep.pattern` does not match (what a full
//!    scan would not touch), are dropped, never swept;
//! 5. one `EVALSHA` of the sweep script (`script.rs`) per index key and
//!    its due keys (one slot) on a cluster, or per up to 100 due keys of
//!    any slots on a single server (`batch.rs`), which removes each key's
//!    expired members with the full scan's exact bounds (at most
//!    `sweep.max_members_per_command` per key per call in every throttle
//!    mode: a call is atomic, no other client gets in between its keys),
//!    and moves the
//!    key's entry to its next expiry or drops it, atomically with the
//!    removal; a slot with more due keys, or a key cut short, is read
//!    again while the calls make progress. The calls go in pipelines
//!    paced as a full scan's (`pace.rs`): `sweep.max_keys_per_second` in
//!    any mode, and the adaptive throttle's pieces and pauses, a due key
//!    being a unit of `Step::Keys`;
//! 6. the primary counts as finished when its slots did not move, no slot
//!    was skipped, and the scan ran to the end; the report adds the index
//!    size and lag ([`IndexReport`]).
//!
//! A full scan (`sweep --full`, the daemon's `due_index.full_scan`) with
//! the index on also repairs it: each key it sweeps gets its entry lowered
//! to its next expiry ([`lower_entries`]).

/// One pipeline of sweep script calls: packing, sending, tallying.
mod batch;
/// The sweep script's command, permission probe and reply.
mod call;
/// Reading the due entries of some slots.
mod due;
/// Lowering entries: the full scan's repair, the rebuild's step.
mod lower;
/// One primary's index sweep.
mod node;
/// Pacing its script calls: the rate limit and the adaptive throttle.
mod pace;
/// The Lua of the sweep and of the repair.
mod script;

use std::collections::HashMap;

pub(super) use call::probe_commands;
pub(super) use lower::lower_found;

use super::cutoff::Expired;
use super::query::Found;
use super::remove::BatchOutcome;
use super::report::IndexReport;
use crate::config::ScoreUnit;
use crate::store::{Connection, StoreError};
pub(super) use node::IndexNode;

/// What one primary's index sweep found of its index: its size (when
/// read) and its oldest due score.
pub(super) type IndexFound = (Option<u64>, Option<f64>);

impl IndexReport {
    /// The index of the primaries swept, from what each found (a primary
    /// not swept found nothing); the lag is counted from `now_micros`, in
    /// scores of `unit`. The size is the sum only when every primary read
    /// its own: a part is not the size.
    pub(super) fn of(found: &[IndexFound], now_micros: i128, unit: ScoreUnit) -> Self {
        let mut index = IndexReport {
            index_size: found.iter().map(|(size, _)| *size).sum(),
            ..IndexReport::default()
        };
        let per_second = unit.per_second() as f64;
        for (_, oldest) in found {
            if let Some(oldest) = oldest.filter(|score| score.is_finite()) {
                let lag = (now_micros as f64 / 1e6 - oldest / per_second).max(0.0);
                index.index_lag_seconds = index.index_lag_seconds.max(lag);
            }
        }
        index
    }
}

/// Lowers the due-index entry of each of `keys` (on any node: a key that
/// moved is followed) to the key's earliest unexpired score, its first
/// score above `expired`'s cutoff, with `ZADD LT`: an entry is only ever
/// added or lowered, never raised, so it is only ever early. A key that is
/// not a sorted set, or has nothing above the cutoff, is left alone. The
/// index key is `prefix`'s for the key's slot. What a full scan does to
/// repair the index, and the step of a rebuild.
///
/// Returns `index_entries_repaired` (entries added or lowered) and `errors`.
///
/// # Errors
/// [`StoreError`] when the pipeline fails as a whole, or on NOPERM,
/// READONLY or CLUSTERDOWN.
pub async fn lower_entries(
    conn: &mut Connection,
    prefix: &str,
    keys: &[Vec<u8>],
    expired: Expired,
) -> Result<BatchOutcome, StoreError> {
    let anywhere = Found::Anywhere;
    let (lowered, stopped) =
        lower_found(conn, prefix, keys, anywhere, expired, &HashMap::new()).await;
    stopped.map(|()| BatchOutcome {
        counts: lowered.counts,
        first_error: lowered.first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_the_sum_only_when_every_primary_read_its_own() {
        let now_micros = 100_000_000; // 100 s
        let unit = ScoreUnit::Milliseconds;
        let every = IndexReport::of(
            &[(Some(3), Some(40_000.0)), (Some(4), None)],
            now_micros,
            unit,
        );
        assert_eq!(every.index_size, Some(7));
        assert_eq!(every.index_lag_seconds, 60.0);
        // A primary whose slots were skipped, or that failed: no size.
        let part = IndexReport::of(&[(Some(3), None), (None, Some(90_000.0))], now_micros, unit);
        assert_eq!(part.index_size, None);
        assert_eq!(part.index_lag_seconds, 10.0);
        // Nothing due: no lag.
        let quiet = IndexReport::of(&[(Some(0), None)], now_micros, unit);
        assert_eq!((quiet.index_size, quiet.index_lag_seconds), (Some(0), 0.0));
    }
}
