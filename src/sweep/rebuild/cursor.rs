//! The rebuild's saved state per primary: where it is kept, its format,
//! and what makes it valid to resume from.
//!
//! A SCAN cursor means something only to the process that returned it,
//! over the keys that were there all along: Redis seeds its hash function
//! at random each time it starts, and slots that moved in bring keys the
//! cursor may already be past. So a saved cursor holds the node's *shape*
//! (configuration epoch and slots) and a *mark*: the nonce of a script
//! unique to the run that saved it, cached on the node by `EVAL`. A
//! restart, a failover behind the same address and `SCRIPT FLUSH` all
//! empty that cache, so `EVALSHA` of the mark answers `NOSCRIPT`, and the
//! node starts over. Starting over is always safe: entries are only ever
//! lowered.

use redis::Value;

use crate::config::SweepSettings;
use crate::due_index::slot_tag;
use crate::store::{Connection, Primary, SlotAssignment, StoreError};

/// How long a saved state is kept: a rebuild resumed later starts over.
const CURSOR_TTL_SECONDS: u64 = 86_400;
/// The format tag of a saved value. (`v1`, before the shape and mark:
/// starts over.)
const CURSOR_FORMAT: &str = "v2";

/// The key holding `address`'s saved state: in the slot `slots` start
/// with (a standalone server: any), so the node itself stores it.
pub fn rebuild_cursor_key(prefix: &str, primary: &Primary) -> String {
    let slot = primary.slots.first().map_or(0, |range| *range.start());
    format!("{prefix}rebuild:{{{}}}:{}", slot_tag(slot), primary.address)
}

/// Where a node's rebuild stood when saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Saved {
    /// Its SCAN cursor: go on from there.
    Cursor(u64),
    /// Its scan ran to the end: every set then there has its entry.
    Done,
}

/// The node's configuration epoch and sorted slots (`-` for a single
/// server): a cursor saved for another layout starts over.
pub(super) fn node_shape(assignment: Option<&SlotAssignment>) -> String {
    let Some(assignment) = assignment else {
        return "-".to_owned();
    };
    let mut slots = assignment.slots.clone();
    slots.sort_by_key(|range| (*range.start(), *range.end()));
    let slots: Vec<String> = slots
        .iter()
        .map(|range| format!("{}-{}", range.start(), range.end()))
        .collect();
    format!("e{}:{}", assignment.config_epoch, slots.join(","))
}

/// The text of the mark script of `nonce`: it only returns itself.
fn mark_script(nonce: &str) -> String {
    format!("return 'token-sweeper index rebuild {nonce}'")
}

/// What the mark script of `nonce` returns.
fn mark_reply(nonce: &str) -> String {
    format!("token-sweeper index rebuild {nonce}")
}

/// A new mark for this run on the node on `conn`: `EVAL` of a script no
/// other run sends, so that the node caches it; returns the
/// `shape@nonce` a saved state carries.
pub(super) async fn new_mark(conn: &mut Connection, shape: &str) -> Result<String, StoreError> {
    let nonce = format!("{:016x}", rand::random::<u64>());
    let mut eval = redis::cmd("EVAL");
    eval.arg(mark_script(&nonce)).arg(0);
    conn.query::<Value>("EVAL (rebuild mark)", &eval).await?;
    Ok(format!("{shape}@{nonce}"))
}

/// The state saved under `key`, when it is valid here: saved for
/// `pattern` and `shape`, by a run whose mark the node still has cached
/// (the same process): `EVALSHA` of the script the nonce names, which
/// must answer exactly its text (so a state naming another cached script
/// is not followed, and no other script runs). Returns it with the
/// `shape@nonce` to save again; `None`: start over.
pub(super) async fn resume_point(
    conn: &mut Connection,
    key: &str,
    shape: &str,
    pattern: &str,
) -> Result<Option<(Saved, String)>, StoreError> {
    let mut get = redis::cmd("GET");
    get.arg(key);
    let saved: Option<String> = conn.query("GET (rebuild cursor)", &get).await?;
    let Some(saved) = saved else { return Ok(None) };
    let Some((state, marked, nonce)) = parse_saved(&saved, shape, pattern) else {
        tracing::warn!(
            key,
            saved,
            shape,
            "rebuild state of another pattern or format, or of other slots or configuration \
             epoch of the node: starting over"
        );
        return Ok(None);
    };
    let sha = redis::Script::new(&mark_script(nonce))
        .get_hash()
        .to_owned();
    let mut evalsha = redis::cmd("EVALSHA");
    evalsha.arg(&sha).arg(0);
    match conn
        .query::<Value>("EVALSHA (rebuild mark)", &evalsha)
        .await
    {
        Ok(Value::BulkString(reply)) if reply == mark_reply(nonce).as_bytes() => {
            Ok(Some((state, marked.to_owned())))
        }
        Ok(other) => {
            tracing::warn!(key, reply = ?other, "the rebuild's mark answered otherwise: starting over");
            Ok(None)
        }
        Err(StoreError::Command { source, .. }) if source.code() == Some("NOSCRIPT") => {
            tracing::warn!(
                key,
                "the node no longer has the saved rebuild's mark (a restart, a failover or \
                 SCRIPT FLUSH since): its SCAN cursor means nothing now, starting over"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `v2 <cursor|done> <shape>@<nonce> <pattern>`: the state, the marked
/// shape and the nonce (16 hex digits), when saved for `shape` and
/// `pattern` (the pattern last: it may hold spaces).
fn parse_saved<'s>(
    saved: &'s str,
    shape: &str,
    pattern: &str,
) -> Option<(Saved, &'s str, &'s str)> {
    let rest = saved.strip_prefix(CURSOR_FORMAT)?.strip_prefix(' ')?;
    let (state, rest) = rest.split_once(' ')?;
    let (marked, saved_pattern) = rest.split_once(' ')?;
    let (saved_shape, nonce) = marked.split_once('@')?;
    let nonce_ok = nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    if saved_shape != shape || saved_pattern != pattern || !nonce_ok {
        return None;
    }
    let state = match state {
        "done" => Saved::Done,
        cursor => Saved::Cursor(cursor.parse().ok()?),
    };
    Some((state, marked, nonce))
}

/// Saves `state` for `marked` (`shape@nonce`) and `settings.pattern` under
/// `key`, for a day.
pub(super) async fn save_state(
    conn: &mut Connection,
    key: &str,
    state: Saved,
    marked: &str,
    settings: &SweepSettings,
) -> Result<(), StoreError> {
    let state = match state {
        Saved::Cursor(cursor) => cursor.to_string(),
        Saved::Done => "done".to_owned(),
    };
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg(format!(
            "{CURSOR_FORMAT} {state} {marked} {}",
            settings.pattern
        ))
        .arg("EX")
        .arg(CURSOR_TTL_SECONDS);
    conn.query::<Value>("SET (rebuild cursor)", &set)
        .await
        .map(drop)
}

/// Deletes the state saved under `key` on `primary`: once a rebuild is
/// complete, a later `--resume` (after writers were off for a while, or
/// keys imported) scans every primary again instead of passing over the
/// ones done. A failure only leaves the state to expire (a day); logged.
pub(super) async fn forget_state(conn: &Connection, primary: &Primary, key: &str) {
    let forgotten = match conn.node(&primary.address).await {
        Ok(mut node_conn) => {
            let mut del = redis::cmd("DEL");
            del.arg(key);
            node_conn
                .query::<Value>("DEL (rebuild cursor)", &del)
                .await
                .map(drop)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = forgotten {
        tracing::warn!(
            key,
            error = %e,
            "cannot delete the state of a complete rebuild; it expires within a day, and a \
             --resume before then passes over this primary"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_resumed_only_for_its_own_pattern_and_shape_with_a_mark() {
        let shape = "e3:0-99,200-299";
        let nonce = "0123456789abcdef";
        let marked = format!("{shape}@{nonce}");
        let saved = format!("v2 1234 {marked} *-tokens");
        assert_eq!(
            parse_saved(&saved, shape, "*-tokens"),
            Some((Saved::Cursor(1234), marked.as_str(), nonce))
        );
        let done = format!("v2 done -@{nonce} a b*");
        let done_marked = format!("-@{nonce}");
        assert_eq!(
            parse_saved(&done, "-", "a b*"),
            Some((Saved::Done, done_marked.as_str(), nonce))
        );
        assert_eq!(parse_saved(&saved, shape, "*-sessions"), None);
        assert_eq!(parse_saved(&saved, "e4:0-99,200-299", "*-tokens"), None);
        assert_eq!(parse_saved(&saved, "e3:0-99", "*-tokens"), None);
        // No mark, a short or non-hex one (a script's SHA), the old
        // format, garbage.
        for bad in [
            "v2 12 e3:0-99,200-299 *-tokens",
            "v2 12 e3:0-99,200-299@ *-tokens",
            "v2 12 e3:0-99,200-299@abc *-tokens",
            "v2 12 e3:0-99,200-299@0123456789abcdef0123456789abcdef01234567 *-tokens",
            "v2 12 e3:0-99,200-299@0123456789abcdeg *-tokens",
            "v1 1234 *-tokens",
            "v2 x e3:0-99,200-299@0123456789abcdef *-tokens",
            "v2 12 e3:0-99,200-299@0123456789abcdef",
        ] {
            assert_eq!(parse_saved(bad, shape, "*-tokens"), None, "{bad}");
        }
        assert_eq!(
            mark_reply(nonce),
            "token-sweeper index rebuild 0123456789abcdef"
        );
        assert!(mark_script(nonce).contains(&mark_reply(nonce)));
    }

    #[test]
    fn a_shape_is_the_epoch_and_the_sorted_slots() {
        let assignment = SlotAssignment {
            primary: true,
            config_epoch: 7,
            slots: vec![200..=299, 0..=99],
            migrations: Vec::new(),
        };
        assert_eq!(node_shape(Some(&assignment)), "e7:0-99,200-299");
        assert_eq!(node_shape(None), "-");
    }
}
