//! The auth path: issue, verify, revoke, revoke-all and list sessions,
//! writing exactly the data the sweeper keeps clean.
//!
//! Per user one sorted set (`auth.key_template`, default `{user}-tokens`);
//! member = SHA-256 hex of the token (or the token, or its `jti`, per
//! `auth.member`); score = the token's `exp` in `sweep.score_unit`; the key's
//! TTL = the latest expiry in the set plus `auth.leeway`, never shortened.
//! Every operation touches that one key only, so the layout is cluster-safe
//! (write the template as `{{user}}-tokens` to hash-tag it). Needs Redis 7.0
//! or later (`PEXPIREAT ... GT`, script flags).
//!
//! **One clock.** Like the sweeper, the auth path reads "now" from Redis
//! `TIME`: `issue` stamps `iat`/`exp` from it and its script drops expired
//! members by it, and `verify` reads it in the same round trip as the
//! session, so a host whose clock runs ahead or behind can neither remove
//! another login's live session nor mistake an expired token for a revoked
//! one. Only the signature check before the round trip (`exp` and `nbf`,
//! done by `jsonwebtoken` so that an expired token costs Redis nothing) uses
//! the host clock, with `auth.leeway`.
//!
//! **Reconnecting.** A [`TokenService`] keeps working through Redis
//! restarts and failovers: it holds a [`Reconnecting`](crate::store::Reconnecting) link, a call that
//! finds the connection gone fails with [`AuthError::Unavailable`] (a 503 for
//! an HTTP service) and one background task reconnects with backoff; calls
//! made meanwhile fail at once without touching the network.
//!
//! ```no_run
//! use token_sweeper::auth::TokenService;
//! use token_sweeper::config::Settings;
//!
//! # async fn login() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load(None)?; // TOKEN_SWEEPER__AUTH__SECRET holds the HMAC key
//! let tokens = TokenService::connect(&settings).await?; // share it, e.g. in an Arc
//!
//! let issued = tokens.issue("42", None, serde_json::Map::new()).await?; // on login
//! let claims = tokens.verify(&issued.token).await?;                     // on every request
//! assert_eq!(claims.sub, "42");
//! tokens.revoke(&issued.token).await?;                                   // on logout
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! One file per idea, each importing only the ones listed before it:
//! what can go wrong, what a token says, the checks on it, then the
//! service that puts them together with Redis.

// AuthError: refused tokens, bad settings, Redis trouble.
mod error;
// Claims, IssuedToken, and the claims an extra claim may not override.
mod claims;
// Session and Expiry: what `list` returns and how it serializes.
mod session;
// Bounds on auth.ttl and auth.leeway.
mod limits;
// The `iat`/`exp` checks and liveness of a score, on Redis TIME.
mod clock;
// Key material: loading the secret or PEM pair, proving it with a probe.
mod keys;
// Signing and decoding: algorithm and `typ` pinned, nbf/exp/iss/aud checked.
mod jwt;
// The ISSUE and REVOKE_ALL Lua scripts, atomic per user key.
mod scripts;
// TokenService: issue, verify, revoke, revoke-all, list, on one reconnecting link.
mod service;

pub use claims::{Claims, IssuedToken};
pub use error::AuthError;
pub use limits::MAX_LEEWAY;
pub use service::{check_settings, key_material_configured, TokenService};
pub use session::{Expiry, Session, HEX_MARKER};
