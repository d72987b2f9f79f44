//! One pipeline of sweep script calls ([`SWEEP_DUE`](super::script)):
//! the due slots packed into calls, sent by SHA (by text where the node
//! lacks the script), and what each call did tallied per slot.

use redis::{RedisResult, Value};

use super::super::counts::Counts;
use super::super::cutoff::Expired;
use super::super::mode::SweepMode;
use super::super::remove::BatchOutcome;
use super::call::{decode, is_noscript, sweep_command, Group, Send};
use super::due::DueSlot;
use super::node::{IndexNode, DUE_PER_SLOT};
use crate::store::StoreError;

/// The command of the sweep, as errors name it.
const SWEEP_WHAT: &str = "EVALSHA (index sweep)";

/// Due keys one packed call holds at most: one call holds Redis for all
/// of them, so packing keeps the bound a single slot's call already has.
const KEYS_PER_CALL: usize = DUE_PER_SLOT;

/// Calls of the sweep script, each on the slots it holds.
type Calls<'d> = Vec<Vec<&'d DueSlot>>;

impl IndexNode<'_> {
    /// One pipeline of [`SWEEP_DUE`](super::script) on `due`; returns the
    /// slots to read again (more due, and the call made progress).
    pub(super) async fn sweep_slots(
        &mut self,
        due: &[DueSlot],
        expired: Expired,
        mode: SweepMode,
    ) -> Result<Vec<u16>, StoreError> {
        let calls = self.calls(due.iter().collect());
        let done = self.run(calls, expired, mode).await?;
        let mut again = Vec::new();
        let mut stopped = Ok(());
        for (call, reply) in done {
            let done = match reply {
                Ok(value) => decode(&value, call.len()),
                Err(e) if matches!(e.code(), Some("NOPERM" | "READONLY" | "CLUSTERDOWN")) => {
                    if stopped.is_ok() {
                        stopped = Err(self.conn.error(SWEEP_WHAT, e));
                    }
                    for slot in call {
                        self.tally.add(&outcome_of(slot));
                    }
                    continue;
                }
                Err(e) => {
                    for slot in call {
                        let why = format!("{SWEEP_WHAT} {}: {e}", slot.index_key);
                        let mut outcome = outcome_of(slot);
                        outcome.counts.errors += 1;
                        outcome.first_error = Some(why.clone());
                        self.skipped.get_or_insert(why);
                        self.tally.add(&outcome);
                    }
                    continue;
                }
            };
            let Some(done) = done else {
                let why = format!(
                    "{SWEEP_WHAT}: Redis at {} answered a reply of the wrong shape",
                    self.conn.address()
                );
                for slot in call {
                    let mut outcome = outcome_of(slot);
                    outcome.counts.errors += 1;
                    outcome.first_error = Some(why.clone());
                    self.tally.add(&outcome);
                }
                // What it did is unknown: not finished.
                self.skipped.get_or_insert(why);
                continue;
            };
            let mut outcome = BatchOutcome {
                counts: done.counts,
                first_error: None,
            };
            outcome.counts.due_keys = call.iter().map(|slot| slot.keys.len() as u64).sum();
            let mut noted = vec![(0, None); call.len()];
            for (group, cut, error) in done.notes {
                noted[group] = (cut, error);
            }
            let progress = outcome.counts.members_removed
                + outcome.counts.index_entries_moved
                + outcome.counts.index_entries_dropped;
            for (slot, (cut, error)) in call.into_iter().zip(noted) {
                if let Some(error) = error {
                    let why = format!("{SWEEP_WHAT} {}: {error}", slot.index_key);
                    outcome.counts.errors += 1;
                    outcome.first_error.get_or_insert(why.clone());
                    // The slot's sweep stopped midway: not finished.
                    self.skipped.get_or_insert(why);
                } else if cut > 0 || (slot.full && progress > 0) {
                    // A key cut short removed at least `limit` members; a full slot
                    // has a call of its own (see `calls`), so the call's
                    // progress is the slot's.
                    again.push(slot.slot);
                }
            }
            self.tally.add(&outcome);
        }
        stopped.map(|()| again)
    }

    /// `due` as calls: one slot each on a cluster (a script's keys must
    /// share a slot there), else packed up to [`KEYS_PER_CALL`] due keys
    /// and entries to drop.
    fn calls<'d>(&self, due: Vec<&'d DueSlot>) -> Calls<'d> {
        if !self.pack {
            return due.into_iter().map(|slot| vec![slot]).collect();
        }
        let mut calls: Calls<'d> = Vec::new();
        let mut held = 0;
        for slot in due {
            // A slot of entries to drop only still costs its commands. A
            // full slot (its read hit the limit) counts as a whole call, so
            // it has one of its own: whether to read it again follows its
            // call's progress.
            let work = if slot.full {
                KEYS_PER_CALL
            } else {
                (slot.keys.len() + slot.foreign.len()).max(1)
            };
            match calls.last_mut() {
                Some(call) if held + work <= KEYS_PER_CALL => call.push(slot),
                _ => {
                    held = 0;
                    calls.push(vec![slot]);
                }
            }
            held += work;
        }
        calls
    }

    /// Sends `calls`, each with its reply. A server that refuses keys of
    /// several slots in one script (`CROSSSLOT`: a proxy, a cluster node
    /// taken for a single server) ran none of them: those calls go again
    /// one slot each, and the node's later calls too.
    async fn run<'d>(
        &mut self,
        calls: Calls<'d>,
        expired: Expired,
        mode: SweepMode,
    ) -> Result<Vec<(Vec<&'d DueSlot>, RedisResult<Value>)>, StoreError> {
        let replies = self.send_cached(&calls, expired, mode).await?;
        let mut done = Vec::with_capacity(calls.len());
        let mut refused = Vec::new();
        for (call, reply) in calls.into_iter().zip(replies) {
            match reply {
                Err(e) if call.len() > 1 && e.code() == Some("CROSSSLOT") => {
                    refused.extend(call.into_iter().map(|slot| vec![slot]));
                }
                reply => done.push((call, reply)),
            }
        }
        if !refused.is_empty() {
            self.pack = false;
            tracing::info!(
                node = %self.address,
                "the server refuses a script over keys of several slots (CROSSSLOT): \
                 sweeping its due index one slot per call"
            );
            let replies = self.send_cached(&refused, expired, mode).await?;
            done.extend(refused.into_iter().zip(replies));
        }
        Ok(done)
    }

    /// Sends `calls` by SHA, and again by text those the node answered
    /// `NOSCRIPT` (its first call, a restart, a failover, `SCRIPT FLUSH`:
    /// the cache is per node): they did not run, and `EVAL` caches it.
    async fn send_cached(
        &mut self,
        calls: &[Vec<&DueSlot>],
        expired: Expired,
        mode: SweepMode,
    ) -> Result<Vec<RedisResult<Value>>, StoreError> {
        let mut replies = self.send(calls, Send::Sha, expired, mode).await?;
        let missing: Vec<usize> = (0..replies.len())
            .filter(|&i| matches!(&replies[i], Err(e) if is_noscript(e)))
            .collect();
        if !missing.is_empty() {
            let again: Vec<Vec<&DueSlot>> = missing
                .iter()
                .filter_map(|&i| calls.get(i).cloned())
                .collect();
            let sent = self.send(&again, Send::Text, expired, mode).await?;
            for (i, reply) in missing.into_iter().zip(sent) {
                replies[i] = reply;
            }
        }
        Ok(replies)
    }

    /// One pipeline of the sweep script, one command per call, sent by
    /// `send`; one reply per call, in order.
    async fn send(
        &mut self,
        calls: &[Vec<&DueSlot>],
        send: Send,
        expired: Expired,
        mode: SweepMode,
    ) -> Result<Vec<RedisResult<Value>>, StoreError> {
        let run_mode = match mode {
            SweepMode::Remove => "remove",
            SweepMode::DryRun => "count",
        };
        // In every throttle mode: one call is atomic, so unlike a
        // pipeline no other client gets in between its keys.
        let limit = self.settings.max_members_per_command;
        let mut pipe = redis::pipe();
        for call in calls {
            let groups: Vec<Group<'_>> = call
                .iter()
                .map(|slot| Group {
                    index_key: &slot.index_key,
                    keys: &slot.keys,
                    // Only a sweep that removes writes the index.
                    drop: match mode {
                        SweepMode::Remove => &slot.foreign,
                        SweepMode::DryRun => &[],
                    },
                })
                .collect();
            pipe.add_command(sweep_command(send, &groups, expired, limit, run_mode));
        }
        let replies: Vec<RedisResult<Value>> =
            match pipe.ignore_errors().query_async(&mut self.conn).await {
                Ok(replies) => replies,
                Err(e) => return Err(self.conn.error(SWEEP_WHAT, e)),
            };
        if replies.len() != calls.len() {
            return Err(self.conn.bad_reply(
                SWEEP_WHAT,
                format!("{} replies to {} commands", replies.len(), calls.len()),
            ));
        }
        Ok(replies)
    }
}

/// A slot's outcome before its call's reply: its due keys.
fn outcome_of(slot: &DueSlot) -> BatchOutcome {
    BatchOutcome {
        counts: Counts {
            due_keys: slot.keys.len() as u64,
            ..Counts::default()
        },
        first_error: None,
    }
}
