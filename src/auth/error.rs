//! [`AuthError`]: every way an auth operation can fail, as the caller must tell them apart
//! (a 401 for a refused token, a 503 while Redis reconnects, exit 2 for a setting).

use crate::store::StoreError;

/// Why a token was refused or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, wrong algorithm (including `none`), malformed, wrong
    /// issuer, audience or `typ`, not yet valid (`nbf`), or issued in the
    /// future (`iat`): the token was never ours, or is not usable yet.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Correctly signed, but past its `exp` (plus `auth.leeway`), by the
    /// host clock or by Redis `TIME`. Whatever the set holds: a token past
    /// its expiry is reported expired, never revoked.
    #[error("token expired")]
    Expired,
    /// Correctly signed and unexpired, but no longer in the user's set
    /// (logged out, revoked, or dropped by `auth.max_sessions`).
    #[error("token revoked")]
    Revoked,
    /// A claim passed to `issue` would override one the module sets.
    #[error("claim {0:?} is set by token-sweeper and cannot be given as an extra claim")]
    ReservedClaim(String),
    /// The user id is empty.
    #[error("user id must not be empty")]
    EmptyUser,
    /// A lifetime or tolerance the module cannot honour: `auth.ttl`,
    /// `auth.leeway`, or the `ttl` given to [`TokenService::issue`](super::TokenService::issue).
    #[error("{key}: {message}")]
    OutOfRange {
        /// The setting or argument, e.g. `auth.ttl`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The key material is missing, unreadable, too short, or does not
    /// sign and verify a probe token; names the setting.
    #[error("{key}: {message}")]
    KeyMaterial {
        /// The setting, e.g. `auth.private_key_file`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Redis is not reachable right now; a reconnect is under way in the
    /// background, so the same call may succeed a moment later.
    #[error("{0} (reconnecting in the background)")]
    Unavailable(String),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] StoreError),
}
