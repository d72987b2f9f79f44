//! Reading the due index of some slots: one pipeline of
//! `ZRANGEBYSCORE <index key> -inf <cutoff> WITHSCORES LIMIT 0 <n>` (and,
//! on the first pass, `ZCARD` for the index size), entries sorted into the
//! keys the sweep may touch and the entries to drop.

use redis::Value;

use super::super::cutoff::Expired;
use super::super::query::shape;
use crate::due_index::{glob_match, index_key_of_slot, key_slot};
use crate::store::{Connection, StoreError};

/// The command of the read, as errors name it.
pub(super) const DUE_READ: &str = "ZRANGEBYSCORE (due index)";

/// The due entries of one slot's index key.
pub(super) struct DueSlot {
    pub(super) slot: u16,
    pub(super) index_key: String,
    /// Due keys of this slot that match `sweep.pattern`: what a full scan
    /// would sweep, so what the index sweep may touch.
    pub(super) keys: Vec<Vec<u8>>,
    /// Entries naming anything else (another slot, not the pattern): they
    /// can never be swept by this index key, so they are dropped.
    pub(super) foreign: Vec<Vec<u8>>,
    /// The read hit its limit: more may be due.
    pub(super) full: bool,
}

/// What one read of some slots found.
#[derive(Default)]
pub(super) struct DueRead {
    /// The slots with due entries.
    pub(super) slots: Vec<DueSlot>,
    /// Sum of `ZCARD` of the slots' index keys (when asked).
    pub(super) size: u64,
    /// The lowest due score seen.
    pub(super) oldest: Option<f64>,
    /// Slots whose index key answered an error (MOVED/ASK: not here, or
    /// migrating; WRONGTYPE), with the first message: the node cannot
    /// count as finished.
    pub(super) skipped: Vec<(u16, String)>,
}

/// Reads the due entries of `slots` on `conn`'s node, at most `limit` per
/// slot, in one round trip; with `sizes`, also each index key's size.
///
/// # Errors
/// The pipeline failing as a whole (connection lost, timeout), or a reply
/// of the wrong shape; NOPERM on any index key (the node's sweep ends).
pub(super) async fn read_due(
    conn: &mut Connection,
    prefix: &str,
    pattern: &str,
    slots: &[u16],
    expired: Expired,
    limit: usize,
    sizes: bool,
) -> Result<DueRead, StoreError> {
    let mut pipe = redis::pipe();
    for &slot in slots {
        let index = index_key_of_slot(prefix, slot);
        if sizes {
            pipe.cmd("ZCARD").arg(&index);
        }
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(expired.cutoff())
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
    }
    let replies: Vec<redis::RedisResult<Value>> =
        match pipe.ignore_errors().query_async(&mut *conn).await {
            Ok(replies) => replies,
            Err(e) => return Err(conn.error(DUE_READ, e)),
        };
    let per_slot = if sizes { 2 } else { 1 };
    if replies.len() != slots.len() * per_slot {
        return Err(conn.bad_reply(
            DUE_READ,
            format!(
                "{} replies to {} commands",
                replies.len(),
                slots.len() * per_slot
            ),
        ));
    }
    let mut read = DueRead::default();
    let mut replies = replies.into_iter();
    for &slot in slots {
        if sizes {
            match replies.next() {
                Some(Ok(Value::Int(n))) => read.size += u64::try_from(n).unwrap_or(0),
                Some(Err(e)) => {
                    skip_or_stop(conn, &mut read, slot, e)?;
                    // Its ZRANGEBYSCORE answered the same; not read.
                    replies.next();
                    continue;
                }
                Some(Ok(other)) => {
                    return Err(
                        conn.bad_reply(DUE_READ, format!("ZCARD answered {}", shape(&other)))
                    )
                }
                None => return Err(conn.bad_reply(DUE_READ, "too few replies".to_owned())),
            }
        }
        let entries = match replies.next() {
            Some(Ok(value)) => pairs(&value)
                .ok_or_else(|| conn.bad_reply(DUE_READ, format!("answered {}", shape(&value))))?,
            Some(Err(e)) => {
                skip_or_stop(conn, &mut read, slot, e)?;
                continue;
            }
            None => return Err(conn.bad_reply(DUE_READ, "too few replies".to_owned())),
        };
        if entries.is_empty() {
            continue;
        }
        let mut due = DueSlot {
            slot,
            index_key: index_key_of_slot(prefix, slot),
            keys: Vec::new(),
            foreign: Vec::new(),
            full: entries.len() >= limit,
        };
        for (key, score) in entries {
            read.oldest = Some(read.oldest.map_or(score, |oldest| oldest.min(score)));
            if key_slot(&key) == slot && glob_match(pattern.as_bytes(), &key) {
                due.keys.push(key);
            } else {
                due.foreign.push(key);
            }
        }
        read.slots.push(due);
    }
    Ok(read)
}

/// A slot's error: NOPERM (and the like) ends the node; anything else
/// skips the slot, remembered so the node is not counted finished.
fn skip_or_stop(
    conn: &Connection,
    read: &mut DueRead,
    slot: u16,
    e: redis::RedisError,
) -> Result<(), StoreError> {
    if matches!(e.code(), Some("NOPERM" | "READONLY" | "CLUSTERDOWN")) {
        return Err(conn.error(DUE_READ, e));
    }
    read.skipped
        .push((slot, format!("{DUE_READ} slot {slot}: {e}")));
    Ok(())
}

/// `(member, score)` pairs of a WITHSCORES reply: RESP2's flat array or
/// RESP3's array of pairs; `None` for any other shape.
fn pairs(value: &Value) -> Option<Vec<(Vec<u8>, f64)>> {
    let Value::Array(items) = value else {
        return None;
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    if items.iter().all(|item| matches!(item, Value::Array(_))) {
        for item in items {
            let Value::Array(pair) = item else {
                return None;
            };
            let [member, score] = pair.as_slice() else {
                return None;
            };
            out.push((bytes(member)?, number(score)?));
        }
    } else {
        if items.len() % 2 != 0 {
            return None;
        }
        for pair in items.chunks(2) {
            out.push((bytes(&pair[0])?, number(&pair[1])?));
        }
    }
    Some(out)
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::Double(value) => Some(*value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::query::tests::bulk;

    #[test]
    fn withscores_replies_are_read_in_both_protocols() {
        let resp2 = Value::Array(vec![bulk("a-tokens"), bulk("5"), bulk("b"), bulk("inf")]);
        assert_eq!(
            pairs(&resp2),
            Some(vec![
                (b"a-tokens".to_vec(), 5.0),
                (b"b".to_vec(), f64::INFINITY)
            ])
        );
        let resp3 = Value::Array(vec![Value::Array(vec![bulk("a"), Value::Double(1.5)])]);
        assert_eq!(pairs(&resp3), Some(vec![(b"a".to_vec(), 1.5)]));
        assert_eq!(pairs(&Value::Array(vec![bulk("a")])), None);
        assert_eq!(pairs(&Value::Int(1)), None);
        assert_eq!(pairs(&Value::Array(vec![bulk("a"), bulk("soon")])), None);
    }
}
