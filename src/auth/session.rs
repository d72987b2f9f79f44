//! What `list` returns: a user's sessions, and how they print and serialize.

use serde::Serialize;

/// One active session of a user.
///
/// Serialized as `{"id": ..., "expires_at": ...}`: `id` is
/// [`Session::id`], and `expires_at` is seconds since the epoch, or the
/// string `"never"` for a member scored `+inf` (JSON has no infinity, and
/// `null` would read as "unknown", or as 0, "long expired").
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// The stored member, byte for byte: the token's SHA-256 (default), the
    /// token, or its `jti`; or anything another service wrote into the set.
    pub member: Vec<u8>,
    /// When the session expires.
    pub expires_at: Expiry,
}

/// When a session expires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expiry {
    /// Seconds since the epoch (the score over the score unit).
    At(f64),
    /// Never: the member is scored `+inf` (written by something else: this
    /// module never does). It verifies until revoked, and no sweep removes it.
    Never,
}

/// What starts [`Session::id`] for a member that is shown in hex.
pub const HEX_MARKER: &str = "hex:";

impl Session {
    /// The member as text that cannot be mistaken: the member itself when
    /// it is printable ASCII without spaces and does not start with
    /// [`HEX_MARKER`] (every member this module writes: hex digests, `jti`s,
    /// JWTs); otherwise `hex:` and its bytes in lowercase hex. So bytes that
    /// are not UTF-8, control characters (a newline, a terminal escape) and
    /// spaces never reach a terminal or a line-based listing as they are,
    /// and an id starting with `hex:` is always hex.
    pub fn id(&self) -> String {
        let plain = !self.member.is_empty()
            && self.member.iter().all(u8::is_ascii_graphic)
            && !self.member.starts_with(HEX_MARKER.as_bytes());
        match std::str::from_utf8(&self.member) {
            Ok(text) if plain => text.to_owned(),
            _ => format!("{HEX_MARKER}{}", hex::encode(&self.member)),
        }
    }
}

impl Serialize for Session {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("Session", 2)?;
        out.serialize_field("id", &self.id())?;
        out.serialize_field("expires_at", &self.expires_at)?;
        out.end()
    }
}

impl Serialize for Expiry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::At(secs) => s.serialize_f64(*secs),
            Self::Never => s.serialize_str("never"),
        }
    }
}
