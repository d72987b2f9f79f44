//! Redis's glob patterns (`SCAN ... MATCH`, `KEYS`), matched here, so that
//! a key read from the due index is swept only if a full scan with
//! `sweep.pattern` would have swept it.

/// Whether `text` matches the Redis glob `pattern`: `*` any run of bytes,
/// `?` one byte, `[abc]`, `[^abc]` and `[a-z]` one byte of (or not of) a
/// class, `\x` the byte `x` itself. Byte-wise and case-sensitive, as Redis.
///
/// ```
/// use token_sweeper::due_index::glob_match;
///
/// assert!(glob_match(b"*-tokens", b"42-tokens"));
/// assert!(!glob_match(b"*-tokens", b"42-tokens:old"));
/// assert!(glob_match(b"user:[0-9]?", b"user:7a"));
/// ```
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // The classic two-cursor match with one backtrack point: on a mismatch
    // after a `*`, that `*` takes one byte more. Linear in practice, never
    // exponential, whatever the pattern.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if let Some(next) = step(pattern, p, text[t]) {
            p = next;
            t += 1;
        } else if pattern.get(p) == Some(&b'*') {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// If the pattern element at `p` (not `*`) matches `byte`, where the next
/// element starts.
fn step(pattern: &[u8], p: usize, byte: u8) -> Option<usize> {
    match *pattern.get(p)? {
        b'*' => None,
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        b'[' => class(pattern, p + 1, byte),
        other => (other == byte).then_some(p + 1),
    }
}

/// A `[...]` class starting after its `[` at `p`: where the pattern goes
/// on after the class if `byte` is in it (or out of it, after `^`). An
/// unclosed class runs to the end of the pattern, as in Redis.
fn class(pattern: &[u8], mut p: usize, byte: u8) -> Option<usize> {
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut found = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            found |= pattern[p + 1] == byte;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' {
            let (low, high) = (
                pattern[p].min(pattern[p + 2]),
                pattern[p].max(pattern[p + 2]),
            );
            found |= (low..=high).contains(&byte);
            p += 3;
        } else {
            found |= pattern[p] == byte;
            p += 1;
        }
    }
    // Past the `]` (or at the end of an unclosed class).
    let next = (p + 1).min(pattern.len());
    (found != negate).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_redis_scan_match() {
        for (pattern, text, expected) in [
            ("*-tokens", "42-tokens", true),
            ("*-tokens", "{42}-tokens", true),
            ("*-tokens", "-tokens", true),
            ("*-tokens", "42-token", false),
            ("*-tokens", "token-sweeper:due:{0}", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]x", "bx", true),
            ("[^abc]x", "bx", false),
            ("[^abc]x", "dx", true),
            ("[a-c]", "b", true),
            ("[c-a]", "b", true),
            ("[a-c]", "d", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("user:*:tokens", "user:1:2:tokens", true),
            ("**", "anything", true),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern:?} {text:?}"
            );
        }
    }
}
