//! Hash slots: which slot a key lives in, the slot numbers and ranges a
//! cluster reports, and a [`Primary`] with the slots it serves.
//!
//! Pure arithmetic and parsing, with no connection: the sweep hashes its
//! lease keys into a primary's slots with it, and the topology parser reads
//! `CLUSTER NODES` slot fields with it.

use std::ops::RangeInclusive;

pub use crate::due_index::key_slot;

/// The highest hash slot.
pub(super) const LAST_SLOT: u16 = 16383;

/// A primary to sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Primary {
    /// `host:port`, as the cluster announces it (or as configured).
    pub address: String,
    /// The slots it serves (empty for a single server).
    pub slots: Vec<RangeInclusive<u16>>,
}

impl Primary {
    /// A key prefixed `prefix` whose slot this primary serves, so that a
    /// command on it runs on this primary: for a cluster, `prefix{tag}` with
    /// a hash tag found for one of its slots; for a single server, `prefix`.
    pub fn key_on(&self, prefix: &str) -> String {
        if self.slots.is_empty() {
            return prefix.to_owned();
        }
        // About one try in (16384 / slots served); a primary serves at
        // least one slot, so the search ends within a few hundred thousand.
        (0u32..)
            .map(|n| n.to_string())
            .find(|tag| {
                let slot = key_slot(tag.as_bytes());
                self.slots.iter().any(|range| range.contains(&slot))
            })
            .map(|tag| format!("{prefix}{{{tag}}}"))
            .unwrap_or_else(|| prefix.to_owned())
    }
}

/// A slot number, `0` to [`LAST_SLOT`].
pub(super) fn parse_slot(text: &str) -> Option<u16> {
    // Digits only: `parse` would also take a sign.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|slot| *slot <= LAST_SLOT)
}

/// A slot range of `CLUSTER NODES`: `0-5460`, or a single `93` as `93..=93`;
/// `None` unless both ends are slots and the range is not reversed.
pub(super) fn parse_slot_range(field: &str) -> Option<RangeInclusive<u16>> {
    let (start, end) = field.split_once('-').unwrap_or((field, field));
    match (parse_slot(start), parse_slot(end)) {
        (Some(start), Some(end)) if start <= end => Some(start..=end),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_on_a_primary_hashes_into_its_slots() {
        let primary = Primary {
            address: "127.0.0.1:30003".to_owned(),
            slots: vec![93..=93],
        };
        let key = primary.key_on("token-sweeper:lock:127.0.0.1:30003");
        assert!(
            key.starts_with("token-sweeper:lock:127.0.0.1:30003{"),
            "{key}"
        );
        assert_eq!(key_slot(key.as_bytes()), 93);
        let single = Primary {
            address: "127.0.0.1:6379".to_owned(),
            slots: Vec::new(),
        };
        assert_eq!(single.key_on("token-sweeper:lock"), "token-sweeper:lock");
    }

    #[test]
    fn slot_ranges_are_one_slot_or_an_ordered_pair_within_the_slots() {
        assert_eq!(parse_slot_range("0-5460"), Some(0..=5460));
        assert_eq!(parse_slot_range("93"), Some(93..=93));
        assert_eq!(parse_slot_range("16383"), Some(16383..=16383));
        assert_eq!(parse_slot_range("7-7"), Some(7..=7));
        for bad in [
            "", "-", "5-", "-5", "10-5", "0-16384", "+5", "1-+2", "a", "1-2-3",
        ] {
            assert_eq!(parse_slot_range(bad), None, "{bad:?}");
        }
        assert_eq!(parse_slot("00093"), Some(93));
        assert_eq!(parse_slot(" 93"), None);
    }
}
