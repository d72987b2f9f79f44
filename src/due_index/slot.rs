//! Redis Cluster key slots, and for each slot the smallest decimal hash
//! tag that lands in it.

use std::sync::OnceLock;

/// How many hash slots a Redis Cluster has.
pub const SLOTS: usize = 16384;

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag, or of
/// the whole key without one, modulo 16384.
///
/// ```
/// use token_sweeper::due_index::key_slot;
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

/// The smallest non-negative integer whose decimal text hashes to `slot`
/// (taken modulo 16384, so every `u16` has an answer): the hash tag of the
/// slot's index key. Every slot has one below 110 000; the table is built
/// once, on first use, in about a millisecond.
///
/// ```
/// use token_sweeper::due_index::{key_slot, slot_tag};
///
/// assert_eq!(key_slot(slot_tag(0).to_string().as_bytes()), 0);
/// assert_eq!(key_slot(slot_tag(16383).to_string().as_bytes()), 16383);
/// ```
pub fn slot_tag(slot: u16) -> u32 {
    static TAGS: OnceLock<Vec<u32>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut missing = SLOTS;
        let mut n: u32 = 0;
        while missing > 0 {
            let slot = usize::from(key_slot(n.to_string().as_bytes()));
            if let Some(tag) = tags.get_mut(slot) {
                if *tag == u32::MAX {
                    *tag = n;
                    missing -= 1;
                }
            }
            n += 1;
        }
        tags
    });
    tags.get(usize::from(slot) % SLOTS)
        .copied()
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!((0..=16383).contains(&key_slot(b"\xff\xfe any bytes")));
    }

    #[test]
    fn every_slot_has_the_smallest_tag_that_hashes_to_it() {
        let mut seen = vec![false; SLOTS];
        for slot in 0..16384u16 {
            let tag = slot_tag(slot);
            assert!(tag < 110_000, "slot {slot}: {tag}");
            assert_eq!(key_slot(tag.to_string().as_bytes()), slot);
            // Smallest: no smaller number lands there.
            assert!(!seen[usize::from(slot)]);
            seen[usize::from(slot)] = true;
        }
        for n in 0..2000u32 {
            assert!(slot_tag(key_slot(n.to_string().as_bytes())) <= n);
        }
        // `CLUSTER KEYSLOT 0` is 13907; "0" is the smallest tag there.
        assert_eq!(slot_tag(13907), 0);
        assert_eq!(slot_tag(16384 + 13907), 0);
    }
}
