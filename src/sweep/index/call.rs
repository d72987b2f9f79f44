//! Calling the sweep script: its command, its permission probe, and the
//! decoding of its reply.

use redis::Value;

use super::super::counts::Counts;
use super::super::cutoff::{min_bound, Expired};
use super::super::error::{Check, SweepError};
use super::super::mode::SweepMode;
use super::super::query::shape;
use super::script::SWEEP_DUE;
use crate::store::Connection;

/// `EVAL SWEEP_DUE` on `index_key` and `keys`, ARGV as the script reads them.
pub(super) fn sweep_command(
    index_key: &str,
    keys: &[Vec<u8>],
    expired: Expired,
    limit: u32,
    mode: &str,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SWEEP_DUE).arg(keys.len() + 1).arg(index_key);
    for key in keys {
        cmd.arg(key);
    }
    cmd.arg(min_bound(expired.floor()))
        .arg(expired.cutoff())
        .arg(limit)
        .arg(mode);
    cmd
}

/// The permission check of index mode ([`Check::Permission`]): the sweep
/// script in its probe mode on `index_key` and `keys`, which runs every
/// command `mode` sends over an empty range or as a no-op.
pub(in crate::sweep) async fn probe_commands(
    conn: &mut Connection,
    index_key: &str,
    keys: &[Vec<u8>],
    mode: SweepMode,
) -> Result<(), SweepError> {
    let probe = match mode {
        SweepMode::Remove => "probe-remove",
        SweepMode::DryRun => "probe-count",
    };
    // The bounds are checked, not used: any valid pair.
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SWEEP_DUE).arg(keys.len() + 1).arg(index_key);
    for key in keys {
        cmd.arg(key);
    }
    cmd.arg("-inf").arg(0).arg(1).arg(probe);
    let reply: Value = conn
        .query("EVAL (index permission probe)", &cmd)
        .await
        .map_err(|e| Check::Permission.failed(e))?;
    match decode(&reply) {
        Some((counts, 0, None)) if counts == Counts::default() => Ok(()),
        _ => Err(Check::Permission.refused(format!(
            "Redis at {}: the index sweep's probe answered {}, not nothing done",
            conn.address(),
            shape(&reply)
        ))),
    }
}

/// The script's reply: its counts, the keys cut short, its error.
pub(super) fn decode(value: &Value) -> Option<(Counts, u64, Option<String>)> {
    let Value::Array(items) = value else {
        return None;
    };
    let [changed, removed, moved, dropped, wrong, cut, error] = items.as_slice() else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let error = match error {
        Value::BulkString(text) if text.is_empty() => None,
        Value::BulkString(text) => Some(String::from_utf8_lossy(text).into_owned()),
        Value::SimpleString(text) if text.is_empty() => None,
        Value::SimpleString(text) => Some(text.clone()),
        _ => return None,
    };
    let counts = Counts {
        keys_changed: int(changed)?,
        members_removed: int(removed)?,
        index_entries_moved: int(moved)?,
        index_entries_dropped: int(dropped)?,
        skipped_wrong_type: int(wrong)?,
        ..Counts::default()
    };
    Some((counts, int(cut)?, error))
}
