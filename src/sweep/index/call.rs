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

/// Whether `error` is Redis saying it has no script of that SHA.
pub(super) fn is_noscript(error: &redis::RedisError) -> bool {
    error.code() == Some("NOSCRIPT")
}

/// The start of a call of the sweep script, by `send`, with its keys:
/// `EVALSHA <sha>` or `EVAL <script>`, the key count, `index_key`, `keys`.
fn script_call(send: Send, index_key: &str, keys: &[Vec<u8>]) -> redis::Cmd {
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
    cmd.arg(keys.len() + 1).arg(index_key);
    for key in keys {
        cmd.arg(key);
    }
    cmd
}

/// The sweep script (by `send`) on `index_key` and `keys`, ARGV as the
/// script reads them.
pub(super) fn sweep_command(
    send: Send,
    index_key: &str,
    keys: &[Vec<u8>],
    expired: Expired,
    limit: u32,
    mode: &str,
) -> redis::Cmd {
    let mut cmd = script_call(send, index_key, keys);
    cmd.arg(min_bound(expired.floor()))
        .arg(expired.cutoff())
        .arg(limit)
        .arg(mode);
    cmd
}

/// The permission check of index mode ([`Check::Permission`]): the sweep
/// script in its probe mode on `index_key` and `keys`, which runs every
/// command `mode` sends over an empty range or as a no-op; sent as `EVAL`
/// (which also caches it on the node), then as `EVALSHA`, as the sweep
/// sends both.
pub(in crate::sweep) async fn probe_commands(
    conn: &mut Connection,
    index_key: &str,
    keys: &[Vec<u8>],
    mode: SweepMode,
) -> Result<(), SweepError> {
    for send in [Send::Text, Send::Sha] {
        probe_once(conn, send, index_key, keys, mode).await?;
    }
    Ok(())
}

async fn probe_once(
    conn: &mut Connection,
    send: Send,
    index_key: &str,
    keys: &[Vec<u8>],
    mode: SweepMode,
) -> Result<(), SweepError> {
    let probe = match mode {
        SweepMode::Remove => "probe-remove",
        SweepMode::DryRun => "probe-count",
    };
    let mut cmd = script_call(send, index_key, keys);
    // The bounds are checked, not used: any valid pair.
    cmd.arg("-inf").arg(0).arg(1).arg(probe);
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
            return Ok(())
        }
        Err(e) => return Err(Check::Permission.failed(e)),
    };
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
