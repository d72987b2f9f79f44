//! The rebuild's saved cursor: where it is kept, its format, reading and
//! saving it.

use redis::Value;

use crate::config::SweepSettings;
use crate::due_index::slot_tag;
use crate::store::{Connection, Primary, SlotAssignment, StoreError};

/// How long a saved cursor is kept: a rebuild resumed later starts over.
const CURSOR_TTL_SECONDS: u64 = 86_400;
/// The format tag of a saved cursor's value.
/// (`v1`, before the shape: starts over.)
const CURSOR_FORMAT: &str = "v2";

/// The key holding `address`'s saved cursor: in the slot `slots` start
/// with (a standalone server: any), so the node itself stores it.
pub fn rebuild_cursor_key(prefix: &str, primary: &Primary) -> String {
    let slot = primary.slots.first().map_or(0, |range| *range.start());
    format!("{prefix}rebuild:{{{}}}:{}", slot_tag(slot), primary.address)
}

/// What a saved cursor is valid for: the node's configuration epoch and
/// slots when it was saved (`-` for a single server). A SCAN cursor only
/// covers keys that were there all along: after slots moved in (a
/// resharding between two runs, which also raises the epoch), keys of
/// theirs may sit before it, so a cursor of another shape starts over.
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

/// The cursor saved under `key` for `shape` and `pattern`, or 0.
pub(super) async fn saved_cursor(
    conn: &mut Connection,
    key: &str,
    shape: &str,
    pattern: &str,
) -> Result<u64, StoreError> {
    let mut get = redis::cmd("GET");
    get.arg(key);
    let saved: Option<String> = conn.query("GET (rebuild cursor)", &get).await?;
    let Some(saved) = saved else { return Ok(0) };
    Ok(parse_cursor(&saved, shape, pattern).unwrap_or_else(|| {
        tracing::warn!(
            key,
            saved,
            shape,
            "rebuild cursor of another pattern, format, or slots and configuration epoch of \
             the node: starting over"
        );
        0
    }))
}

/// `v2 <cursor> <shape> <pattern>`: the cursor, when saved for `shape`
/// and `pattern` (the pattern last: it may hold spaces).
fn parse_cursor(saved: &str, shape: &str, pattern: &str) -> Option<u64> {
    let rest = saved.strip_prefix(CURSOR_FORMAT)?.strip_prefix(' ')?;
    let (cursor, rest) = rest.split_once(' ')?;
    let (saved_shape, saved_pattern) = rest.split_once(' ')?;
    (saved_shape == shape && saved_pattern == pattern)
        .then(|| cursor.parse().ok())
        .flatten()
}

/// Saves `cursor` for `shape` and `settings.pattern` under `key`, for a
/// day.
pub(super) async fn save_cursor(
    conn: &mut Connection,
    key: &str,
    cursor: u64,
    shape: &str,
    settings: &SweepSettings,
) -> Result<(), StoreError> {
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg(format!(
            "{CURSOR_FORMAT} {cursor} {shape} {}",
            settings.pattern
        ))
        .arg("EX")
        .arg(CURSOR_TTL_SECONDS);
    conn.query::<Value>("SET (rebuild cursor)", &set)
        .await
        .map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_resumed_only_for_its_own_pattern_and_shape() {
        let shape = "e3:0-99,200-299";
        let saved = "v2 1234 e3:0-99,200-299 *-tokens";
        assert_eq!(parse_cursor(saved, shape, "*-tokens"), Some(1234));
        assert_eq!(parse_cursor("v2 0 - a b*", "-", "a b*"), Some(0));
        assert_eq!(parse_cursor(saved, shape, "*-sessions"), None);
        assert_eq!(parse_cursor(saved, "e4:0-99,200-299", "*-tokens"), None);
        assert_eq!(parse_cursor(saved, "e3:0-99", "*-tokens"), None);
        assert_eq!(parse_cursor("v1 1234 *-tokens", shape, "*-tokens"), None);
        assert_eq!(
            parse_cursor("v2 x e3:0-99,200-299 *-tokens", shape, "*-tokens"),
            None
        );
        assert_eq!(
            parse_cursor("v2 12 e3:0-99,200-299", shape, "*-tokens"),
            None
        );
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
