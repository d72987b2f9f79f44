//! The due index's layout: which index key holds the entry of a user's
//! set, pure arithmetic shared by the sweep (layer 4), the auth path
//! (layer 5) and the settings (layer 2), so it sits below all of them.
//!
//! The index is opt-in (`[sweep.due_index]`). Its entries are the user keys
//! (`<userId>-tokens`), each scored by the key's earliest unexpired expiry,
//! in the unit of the sets (`sweep.score_unit`); writers keep an entry
//! with `ZADD <index key> LT <expiry> <key>` in the same atomic step as the
//! token's `ZADD`. An entry may be early (the sweep visits, finds nothing,
//! moves it), never late.
//!
//! One index key per hash slot, co-located with the sets it describes: the
//! entry of user key `K` lives in `<prefix>{<tag>}`, where `tag` is the
//! smallest non-negative integer, written in decimal, whose own slot is
//! `K`'s slot ([`slot_tag`]). So `K` and its index key always share a slot:
//! the write path is never cross-slot (one script holds both), the 16384
//! index keys spread over the primaries exactly as the data does (no hot
//! key), and a standalone server has the same layout, so moving to a
//! cluster needs no migration.
//!
//! The files: `slot` (CRC16 key slots and the tag table), `glob` (Redis's
//! `MATCH` patterns, so that the index sweep touches only what a full scan
//! would).

mod glob;
mod slot;

pub use glob::glob_match;
pub use slot::{key_slot, slot_tag, SLOTS};

/// The default `sweep.due_index.key_prefix`.
pub const DEFAULT_PREFIX: &str = "token-sweeper:due:";

/// The index key of slot `slot` (`0..16384`): `<prefix>{<tag>}`.
///
/// ```
/// use token_sweeper::due_index::{index_key_of_slot, key_slot};
///
/// let key = index_key_of_slot("token-sweeper:due:", 12182);
/// assert_eq!(key_slot(key.as_bytes()), 12182);
/// ```
pub fn index_key_of_slot(prefix: &str, slot: u16) -> String {
    format!("{prefix}{{{}}}", slot_tag(slot))
}

/// The index key that holds the entry of user key `key`: in `key`'s own
/// slot (its hash tag honoured, as Redis does).
///
/// ```
/// use token_sweeper::due_index::{index_key, key_slot};
///
/// for user_key in ["42-tokens", "{42}-tokens", "alice-tokens"] {
///     let index = index_key("token-sweeper:due:", user_key.as_bytes());
///     assert!(index.starts_with("token-sweeper:due:{"));
///     assert_eq!(key_slot(index.as_bytes()), key_slot(user_key.as_bytes()));
/// }
/// ```
pub fn index_key(prefix: &str, key: &[u8]) -> String {
    index_key_of_slot(prefix, key_slot(key))
}
