//! The rebuild's saved cursor: where it is kept, its format, reading and
//! saving it.

use redis::Value;

use crate::config::SweepSettings;
use crate::due_index::slot_tag;
use crate::store::{Connection, Primary, StoreError};

/// How long a saved cursor is kept: a rebuild resumed later starts over.
const CURSOR_TTL_SECONDS: u64 = 86_400;
/// The format tag of a saved cursor's value.
const CURSOR_FORMAT: &str = "v1";

/// The key holding `address`'s saved cursor: in the slot `slots` start
/// with (a standalone server: any), so the node itself stores it.
pub fn rebuild_cursor_key(prefix: &str, primary: &Primary) -> String {
    let slot = primary.slots.first().map_or(0, |range| *range.start());
    format!("{prefix}rebuild:{{{}}}:{}", slot_tag(slot), primary.address)
}

/// The cursor saved under `key` for `pattern`, or 0.
pub(super) async fn saved_cursor(
    conn: &mut Connection,
    key: &str,
    pattern: &str,
) -> Result<u64, StoreError> {
    let mut get = redis::cmd("GET");
    get.arg(key);
    let saved: Option<String> = conn.query("GET (rebuild cursor)", &get).await?;
    let Some(saved) = saved else { return Ok(0) };
    Ok(parse_cursor(&saved, pattern).unwrap_or_else(|| {
        tracing::warn!(
            key,
            saved,
            "rebuild cursor of another pattern or format: starting over"
        );
        0
    }))
}

/// `v1 <cursor> <pattern>`: the cursor, when saved for `pattern`.
fn parse_cursor(saved: &str, pattern: &str) -> Option<u64> {
    let rest = saved.strip_prefix(CURSOR_FORMAT)?.strip_prefix(' ')?;
    let (cursor, saved_pattern) = rest.split_once(' ')?;
    (saved_pattern == pattern)
        .then(|| cursor.parse().ok())
        .flatten()
}

/// Saves `cursor` for `settings.pattern` under `key`, for a day.
pub(super) async fn save_cursor(
    conn: &mut Connection,
    key: &str,
    cursor: u64,
    settings: &SweepSettings,
) -> Result<(), StoreError> {
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg(format!("{CURSOR_FORMAT} {cursor} {}", settings.pattern))
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
    fn a_cursor_is_resumed_only_for_its_own_pattern() {
        assert_eq!(parse_cursor("v1 1234 *-tokens", "*-tokens"), Some(1234));
        assert_eq!(parse_cursor("v1 0 a b*", "a b*"), Some(0));
        assert_eq!(parse_cursor("v1 1234 *-tokens", "*-sessions"), None);
        assert_eq!(parse_cursor("v2 1234 *-tokens", "*-tokens"), None);
        assert_eq!(parse_cursor("v1 x *-tokens", "*-tokens"), None);
        assert_eq!(parse_cursor("v1 12", "*-tokens"), None);
    }
}
