//! Hash slots: which slot a key lives in, the slot numbers and ranges a
//! cluster reports, and a [`Primary`] with the slots it serves.
//!
//! Pure arithmetic and parsing, with no connection: the sweep hashes its
//! lease keys into a primary's slots with it, and the topology parser reads
//! `CLUSTER NODES` slot fields with it.

use std::ops::RangeInclusive;

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

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag, or of
/// the whole key without one, modulo 16384.
///
/// ```
/// use token_sweeper::store::key_slot;
///
/// assert_eq!(key_slot(b"foo"), 12182);
/// assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
/// ```
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
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
    fn key_slot_is_crc16_of_the_hash_tag_modulo_16384() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"foo"), 12182);
        // CRC16/XMODEM check value, below 16384 already.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        // The first `{...}` with something in it is the tag.
        assert_eq!(key_slot(b"a{foo}b"), key_slot(b"foo"));
        assert_eq!(key_slot(b"{foo}{bar}"), key_slot(b"foo"));
        // An empty or unclosed tag hashes the whole key.
        assert_ne!(key_slot(b"{}foo"), key_slot(b"foo"));
        assert_ne!(key_slot(b"{foo"), key_slot(b"foo"));
        assert!((0..=LAST_SLOT).contains(&key_slot(b"\xff\xfe any bytes")));
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
