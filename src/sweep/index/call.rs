//! Calling the sweep script: its command, its permission probe, and the
//! decoding of its reply.

use redis::Value;

use super::super::counts::Counts;
use super::super::cutoff::{min_bound, Expired};
use super::super::error::{Check, SweepError};
use super::super::mode::SweepMode;
use super::super::query::shape;
use super::script::{sweep_due_sha, SWEEP_DUE};
use crate::store::{Connection, StoreError};

/// How the sweep script is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Send {
    /// `EVALSHA <sha>`: what every call tries first.
    Sha,
    /// `EVAL <script>`: again after `NOSCRIPT` (the node's script cache is
    /// empty: a restart, a failover, `SCRIPT FLUSH`); it caches the script
    /// on that node. `NOSCRIPT` means the script did not run, so sending
    /// it again runs it once.
    Text,
}

/// Whether `error` is a cluster redirect (not `CROSSSLOT`, a refusal of
/// the call as written, which would never pass).
fn is_redirect(error: &StoreError) -> bool {
    let StoreError::Command { source, .. } = error else {
        return false;
    };
    matches!(source.code(), Some("MOVED" | "ASK" | "TRYAGAIN"))
}

/// Whether `error` is Redis saying it has no script of that SHA.
pub(super) fn is_noscript(error: &redis::RedisError) -> bool {
    error.code() == Some("NOSCRIPT")
}

/// One group of a call of the sweep script: an index key, due keys of
/// its slot, and entries to drop from it that are not keys to sweep.
#[derive(Clone, Copy)]
pub(super) struct Group<'a> {
    pub(super) index_key: &'a str,
    pub(super) keys: &'a [Vec<u8>],
    pub(super) drop: &'a [Vec<u8>],
}

/// A call of the sweep script, by `send`, on `groups` (the layout
/// [`SWEEP_DUE`] reads), ARGV as the script reads them.
pub(super) fn sweep_command(
    send: Send,
    groups: &[Group<'_>],
    expired: Expired,
    limit: u32,
    mode: &str,
) -> redis::Cmd {
    let bounds = (min_bound(expired.floor()), expired.cutoff().to_string());
    script_command(send, groups, (&bounds.0, &bounds.1), limit, mode)
}

fn script_command(
    send: Send,
    groups: &[Group<'_>],
    (min, cutoff): (&str, &str),
    limit: u32,
    mode: &str,
) -> redis::Cmd {
    let mut cmd = match send {
        Send::Sha => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sweep_due_sha());
            cmd
        }
        Send::Text => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(SWEEP_DUE);
            cmd
        }
    };
    let keys: usize = groups.iter().map(|group| group.keys.len() + 1).sum();
    cmd.arg(keys);
    for group in groups {
        cmd.arg(group.index_key);
        for key in group.keys {
            cmd.arg(key);
        }
    }
    cmd.arg(min).arg(cutoff).arg(limit).arg(mode);
    for group in groups {
        cmd.arg(group.keys.len()).arg(group.drop.len());
        for entry in group.drop {
            cmd.arg(entry);
        }
    }
    cmd
}

/// The permission check of index mode ([`Check::Permission`]): the sweep
/// script in its probe mode on `index_key` and `keys`, which runs every
/// command `mode` sends over an empty range or as a no-op; sent as `EVAL`
/// (which also caches it on the node), then as `EVALSHA`, as the sweep
/// sends both.
///
/// The inner error is the node's, not a refusal: a redirect (`TRYAGAIN`,
/// `ASK`, `MOVED`: its slot is migrating or moved since the node was
/// opened), so the node is not swept and the others are. Anything else
/// refuses.
pub(in crate::sweep) async fn probe_commands(
    conn: &mut Connection,
    index_key: &str,
    keys: &[Vec<u8>],
    mode: SweepMode,
) -> Result<Result<(), StoreError>, SweepError> {
    for send in [Send::Text, Send::Sha] {
        if let Err(e) = probe_once(conn, send, index_key, keys, mode).await? {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

async fn probe_once(
    conn: &mut Connection,
    send: Send,
    index_key: &str,
    keys: &[Vec<u8>],
    mode: SweepMode,
) -> Result<Result<(), StoreError>, SweepError> {
    let probe = match mode {
        SweepMode::Remove => "probe-remove",
        SweepMode::DryRun => "probe-count",
    };
    let group = Group {
        index_key,
        keys,
        drop: &[],
    };
    // The bounds are checked, not used: any valid pair.
    let cmd = script_command(send, &[group], ("-inf", "0"), 1, probe);
    let what = match send {
        Send::Sha => "EVALSHA (index permission probe)",
        Send::Text => "EVAL (index permission probe)",
    };
    let reply: Value = match conn.query(what, &cmd).await {
        Ok(reply) => reply,
        // The script left the node's cache since the EVAL just before
        // (`SCRIPT FLUSH`): Redis checks the ACL first, so EVALSHA is
        // allowed, and the sweep sends EVAL again on NOSCRIPT.
        Err(StoreError::Command { source, .. }) if send == Send::Sha && is_noscript(&source) => {
            return Ok(Ok(()))
        }
        Err(e) if is_redirect(&e) => return Ok(Err(e)),
        Err(e) => return Err(Check::Permission.failed(e)),
    };
    match decode(&reply, 1) {
        Some(done) if done == CallDone::default() => Ok(Ok(())),
        _ => Err(Check::Permission.refused(format!(
            "Redis at {}: the index sweep's probe answered {}, not nothing done",
            conn.address(),
            shape(&reply)
        ))),
    }
}

/// What one call of the script did: its totals, and the groups that cut
/// keys short or failed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CallDone {
    /// Summed over the call's groups (`due_keys` stays 0: the caller
    /// counts what it sent).
    pub(super) counts: Counts,
    /// `(group, keys cut short, error)`, the group as an index into the
    /// call's groups; only groups with a cut or an error.
    pub(super) notes: Vec<(usize, u64, Option<String>)>,
}

/// The script's reply to a call of `groups` groups; `None` for a reply
/// of any other shape: a group out of range, or not after the one noted
/// before it (the script notes each group once, in order; a second note
/// could hide the first one's error).
pub(super) fn decode(value: &Value, groups: usize) -> Option<CallDone> {
    let Value::Array(items) = value else {
        return None;
    };
    let [changed, removed, moved, dropped, wrong, notes] = items.as_slice() else {
        return None;
    };
    let counts = Counts {
        keys_changed: int(changed)?,
        members_removed: int(removed)?,
        index_entries_moved: int(moved)?,
        index_entries_dropped: int(dropped)?,
        skipped_wrong_type: int(wrong)?,
        ..Counts::default()
    };
    let Value::Array(notes) = notes else {
        return None;
    };
    if notes.len() % 3 != 0 {
        return None;
    }
    let mut next = 0;
    let notes = notes
        .chunks(3)
        .map(|note| {
            let [group, cut, error] = note else {
                return None;
            };
            let group = usize::try_from(int(group)?).ok()?.checked_sub(1)?;
            (next <= group && group < groups).then_some(())?;
            next = group + 1;
            let error = match error {
                Value::BulkString(text) if text.is_empty() => None,
                Value::BulkString(text) => Some(String::from_utf8_lossy(text).into_owned()),
                Value::SimpleString(text) if text.is_empty() => None,
                Value::SimpleString(text) => Some(text.clone()),
                _ => return None,
            };
            Some((group, int(cut)?, error))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(CallDone { counts, notes })
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::query::tests::bulk;

    fn reply(notes: Vec<Value>) -> Value {
        let mut items: Vec<Value> = (1..=5).map(Value::Int).collect();
        items.push(Value::Array(notes));
        Value::Array(items)
    }

    #[test]
    fn a_reply_is_the_totals_and_the_groups_noted_in_order() {
        let done = decode(&reply(vec![]), 2);
        let counts = Counts {
            keys_changed: 1,
            members_removed: 2,
            index_entries_moved: 3,
            index_entries_dropped: 4,
            skipped_wrong_type: 5,
            ..Counts::default()
        };
        assert_eq!(
            done,
            Some(CallDone {
                counts: counts.clone(),
                notes: Vec::new()
            })
        );
        let notes = vec![
            Value::Int(1),
            Value::Int(2),
            bulk(""),
            Value::Int(2),
            Value::Int(0),
            bulk("ERR boom"),
        ];
        assert_eq!(
            decode(&reply(notes), 2),
            Some(CallDone {
                counts,
                notes: vec![(0, 2, None), (1, 0, Some("ERR boom".to_owned()))],
            })
        );
    }

    #[test]
    fn any_other_reply_is_refused() {
        let note = |group: i64| vec![Value::Int(group), Value::Int(0), bulk("e")];
        // Group 0, a group past the call's, a group noted twice or out of
        // order, a note cut short.
        assert_eq!(decode(&reply(note(0)), 2), None);
        assert_eq!(decode(&reply(note(3)), 2), None);
        assert_eq!(decode(&reply([note(1), note(1)].concat()), 2), None);
        assert_eq!(decode(&reply([note(2), note(1)].concat()), 2), None);
        assert_eq!(decode(&reply(vec![Value::Int(1), Value::Int(0)]), 2), None);
        // A negative count, a total missing, not an array.
        let mut negative = reply(vec![]);
        if let Value::Array(items) = &mut negative {
            items[1] = Value::Int(-1);
        }
        assert_eq!(decode(&negative, 1), None);
        assert_eq!(
            decode(&Value::Array((1..=5).map(Value::Int).collect()), 1),
            None
        );
        assert_eq!(decode(&Value::Int(0), 1), None);
    }
}
