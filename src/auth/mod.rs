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
//! restarts and failovers: it holds a [`Reconnecting`] link, a call that
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

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{
    in_days, ttl_problem, AuthSettings, MemberKind, RedisSettings, ScoreUnit, Settings,
};
use crate::store::{Connection, Reconnecting, StoreError};
use crate::sweep::{min_bound, removal_floor};

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
    /// `auth.leeway`, or the `ttl` given to [`TokenService::issue`].
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

/// The claims of tokens this module issues.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issued at, seconds since the epoch (Redis `TIME`).
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Random 128-bit id, hex.
    pub jti: String,
    /// Issuer, when `auth.issuer` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, when `auth.audience` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Whatever else the caller put in.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

const RESERVED: &[&str] = &["sub", "iat", "exp", "jti", "iss", "aud", "nbf"];

/// The largest `auth.leeway`: a clock tolerance, not a second lifetime.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The `typ` header of every token issued, and the only one accepted.
const TYP: &str = "JWT";

/// A freshly issued token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The encoded JWT, for the client.
    pub token: String,
    /// What it says.
    pub claims: Claims,
    /// Other sessions dropped to respect `auth.max_sessions`.
    pub sessions_dropped: u64,
}

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

/// "Now" in score units from Redis `TIME`, and the cutoff at or below which
/// a member is expired past the leeway: the one definition the scripts share
/// with [`TokenService::is_live`] (live = score + leeway > now). Rounded
/// down, like the sweeper's cutoff, so rounding only keeps a session longer.
macro_rules! lua_cutoff {
    () => {
        r"
local function cutoff(per_second, leeway)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * per_second + math.floor(tonumber(t[2]) * per_second / 1000000)
  return now - leeway
end
"
    };
}

/// Adds a session atomically: drops the user's members expired past the
/// leeway, adds this one, trims the others to `max_sessions`, and moves the
/// key's expiry to the new token's (plus leeway) unless it is already later.
/// A key without any TTL (made persistent by someone on purpose) stays
/// persistent.
///
/// Expired means what it means to the sweeper ([`crate::sweep::Expired`]):
/// at or below the cutoff and above the removal floor, which the caller
/// computes with [`crate::sweep::removal_floor`] and passes as the range's
/// `min` (`-inf` in seconds, `(<floor>` in milliseconds): a set scored in
/// milliseconds that also holds live seconds-scored sessions (another
/// service writing seconds, or one migrating) keeps them on every login.
///
/// All or nothing: every argument and the key's type are checked before the
/// first write, the values are bounded so that no later command can fail on
/// them, and the `#!lua` flags make Redis refuse the whole script up front
/// when it is out of memory or a replica, instead of at the first write.
///
/// `max_sessions` never drops the session just added; of the others it
/// drops the ones that expire first. The set holds nothing but expiries, so
/// that is what "oldest" means here: with one `auth.ttl`, the oldest logins.
/// Sessions expiring in the same unit tie, and Redis orders ties by member,
/// which for digests and random `jti`s is arbitrary. It counts and ranks
/// only the members above the removal floor (all of them in seconds): in
/// milliseconds, a member at or below it is foreign data this module never
/// wrote (a seconds-scored session of another service, which ranked by
/// score would look like the oldest of all and be dropped first), so it is
/// neither counted against the limit nor dropped.
///
/// KEYS[1] set; ARGV: member, score, expire-at ms, max sessions (0 = no
/// limit), leeway in score units, score units per second (1 or 1000), the
/// `min` of the expired range (`-inf` or `(` and a non-negative integer).
const ISSUE: &str = concat!(
    "#!lua\n",
    lua_cutoff!(),
    r"
local function integer(i, low, high)
  local v = tonumber(ARGV[i])
  if v == nil or v ~= math.floor(v) or v < low or v > high then return nil end
  return v
end
local exact = 9007199254740991
local member = ARGV[1]
local score = integer(2, 1, exact)
local expire_at = integer(3, 1, exact)
local max = integer(4, 0, 4294967295)
local leeway = integer(5, 0, exact)
local per_second = integer(6, 1, 1000)
local floor = ARGV[7]
if floor ~= '-inf' then
  local digits = floor and string.match(floor, '^%((%d+)$')
  if digits == nil or tonumber(digits) > exact then floor = nil end
end
if member == nil or member == '' or not (score and expire_at and max and leeway and per_second and floor) then
  return redis.error_reply('ERR token-sweeper issue: argument out of range')
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. kind .. ', not a sorted set')
end
local had_ttl = redis.call('PTTL', KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], floor, string.format('%d', cutoff(per_second, leeway)))
redis.call('ZADD', KEYS[1], string.format('%d', score), member)
local dropped = 0
if max > 0 then
  -- Only members above the floor are sessions of this module.
  local over = redis.call('ZCOUNT', KEYS[1], floor, '+inf') - max
  if over > 0 then
    -- The new member is among the first over + 1 at most once.
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], floor, '+inf', 'LIMIT', 0, over + 1)) do
      if dropped < over and other ~= member then
        dropped = dropped + redis.call('ZREM', KEYS[1], other)
      end
    end
  end
end
if had_ttl ~= -1 then
  if redis.call('PTTL', KEYS[1]) >= 0 then
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', expire_at), 'GT')
  else
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', expire_at))
  end
end
return dropped"
);

/// Ends every session of a user; returns how many were live.
///
/// `allow-oom`: it only reads (`TIME`, `ZCOUNT`) and deletes (`DEL`), and
/// "log out everywhere" must work most of all when Redis is out of memory.
/// A `#!lua` script without that flag is refused whole under `maxmemory`
/// with `noeviction`, though deleting is what frees memory. (Not
/// `no-writes`: it writes, so a read-only replica still refuses it.)
///
/// KEYS[1] set; ARGV: leeway in score units, score units per second.
const REVOKE_ALL: &str = concat!(
    "#!lua flags=allow-oom\n",
    lua_cutoff!(),
    r"
local live = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', cutoff(tonumber(ARGV[2]), tonumber(ARGV[1]))), '+inf')
redis.call('DEL', KEYS[1])
return live"
);

/// Issues, verifies and revokes tokens against the users' sets.
///
/// Share one per process (in an `Arc`): every call pipelines onto the one
/// connection it keeps, and that connection is replaced in the background
/// after Redis restarts or fails over.
pub struct TokenService {
    redis: Arc<Reconnecting>,
    key_template: String,
    member: MemberKind,
    unit: ScoreUnit,
    ttl: Duration,
    leeway: Duration,
    issuer: Option<String>,
    audience: Option<String>,
    max_sessions: u32,
    keys: Keys,
    /// Full validation, for `verify`.
    validation: Validation,
    /// Signature, algorithm, issuer, audience and `nbf` but not expiry: an
    /// expired token can still be revoked.
    revocation: Validation,
    issue_script: redis::Script,
    revoke_all_script: redis::Script,
}

impl TokenService {
    /// Checks the key material (signing and verifying a probe token) and the
    /// auth settings, then connects to Redis with `settings.redis`. The
    /// usual way to make one.
    ///
    /// # Errors
    /// [`AuthError::KeyMaterial`] or [`AuthError::OutOfRange`] naming the
    /// setting, before Redis is tried; [`AuthError::Redis`] when Redis cannot
    /// be reached now (so a misconfigured URL shows at start-up, not as a
    /// 503 on the first login).
    pub async fn connect(settings: &Settings) -> Result<Self, AuthError> {
        let redis = Arc::new(Reconnecting::new(settings.redis.clone(), |_| {}));
        let service = Self::new(
            Arc::clone(&redis),
            &settings.auth,
            settings.sweep.score_unit,
        )?;
        redis.connect_now().await?;
        Ok(service)
    }

    /// Like [`TokenService::connect`], on a [`Reconnecting`] link the caller
    /// made (to share it, or to watch it with its `on_change` callback).
    /// Does not connect: if the link is not up, the first call starts
    /// connecting in the background and fails with [`AuthError::Unavailable`].
    ///
    /// # Errors
    /// [`AuthError::KeyMaterial`] or [`AuthError::OutOfRange`] naming the
    /// setting that is missing or unusable.
    pub fn new(
        redis: Arc<Reconnecting>,
        settings: &AuthSettings,
        unit: ScoreUnit,
    ) -> Result<Self, AuthError> {
        let keys = Keys::load(settings)?;
        check_ttl("auth.ttl", settings.ttl)?;
        if settings.leeway > MAX_LEEWAY || settings.leeway.subsec_nanos() != 0 {
            return Err(AuthError::OutOfRange {
                key: "auth.leeway",
                message: format!(
                    "must be whole seconds, at most {}, got {}",
                    humantime::format_duration(MAX_LEEWAY),
                    humantime::format_duration(settings.leeway)
                ),
            });
        }
        let mut validation = Validation::new(keys.algorithm);
        validation.leeway = settings.leeway.as_secs();
        // jsonwebtoken checks `nbf` only when asked; a token that is not
        // valid yet is not valid.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &settings.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        let mut revocation = validation.clone();
        revocation.validate_exp = false;
        Ok(Self {
            redis,
            key_template: settings.key_template.clone(),
            member: settings.member,
            unit,
            ttl: settings.ttl,
            leeway: settings.leeway,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            max_sessions: settings.max_sessions,
            keys,
            validation,
            revocation,
            issue_script: redis::Script::new(ISSUE),
            revoke_all_script: redis::Script::new(REVOKE_ALL),
        })
    }

    /// The Redis key of a user's set.
    pub fn key_for(&self, user_id: &str) -> String {
        self.key_template.replace("{user}", user_id)
    }

    /// Signs a token for `user_id` (lifetime `ttl`, else `auth.ttl`; `iat`
    /// and `exp` from Redis `TIME`) and stores its session: two round trips
    /// (`TIME`, then one script). Nothing is stored unless the whole script
    /// succeeds, and no token is returned unless it is stored.
    ///
    /// # Errors
    /// [`AuthError::EmptyUser`], [`AuthError::ReservedClaim`] when
    /// `extra_claims` names a claim set here, [`AuthError::OutOfRange`] for a
    /// `ttl` that [`ttl_problem`] refuses, [`AuthError::KeyMaterial`] without a signing
    /// key, or a Redis error.
    pub async fn issue(
        &self,
        user_id: &str,
        ttl: Option<Duration>,
        extra_claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<IssuedToken, AuthError> {
        if user_id.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        if let Some(name) = extra_claims.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(AuthError::ReservedClaim(name.clone()));
        }
        let ttl = ttl.unwrap_or(self.ttl);
        check_ttl("ttl", ttl)?;
        let encoding = self.keys.encoding.as_ref().ok_or(AuthError::KeyMaterial {
            key: "auth.private_key_file",
            message: format!(
                "needed to issue {:?} tokens; only a public key is configured",
                self.keys.algorithm
            ),
        })?;
        let key = self.key_for(user_id);
        let now = self
            .round_trip(|mut conn| async move {
                conn.query::<(u64, u64)>("TIME", &redis::cmd("TIME"))
                    .await
                    .map(RedisTime::from)
            })
            .await?;
        let iat = now.secs();
        // Bounded by MAX_TTL above; checked all the same, so that no value
        // can ever wrap into a token that expired long ago.
        let overflow = || AuthError::OutOfRange {
            key: "ttl",
            message: format!("{} overflows the token's expiry", in_days(ttl)),
        };
        let exp = iat.checked_add(ttl.as_secs()).ok_or_else(overflow)?;
        let expire_at_ms = exp
            .checked_add(self.leeway.as_secs())
            .and_then(|at| at.checked_mul(1000))
            .ok_or_else(overflow)?;
        let score = self.unit.from_unix_secs(exp).ok_or_else(overflow)?;
        let claims = Claims {
            sub: user_id.to_owned(),
            iat,
            exp,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            extra: extra_claims,
        };
        let header = Header::new(self.keys.algorithm);
        let token = jsonwebtoken::encode(&header, &claims, encoding).map_err(|e| {
            AuthError::KeyMaterial {
                key: self.keys.signing_key,
                message: format!("cannot sign {:?}: {e}", self.keys.algorithm),
            }
        })?;
        let mut invocation = self.issue_script.key(key);
        invocation
            .arg(self.member_of(&token, &claims))
            .arg(score)
            .arg(expire_at_ms)
            .arg(self.max_sessions)
            .arg(self.leeway_units())
            .arg(self.unit.per_second())
            .arg(min_bound(removal_floor(self.unit)));
        let sessions_dropped: u64 = self
            .round_trip(|mut conn| async move {
                match invocation.invoke_async(&mut conn).await {
                    Ok(dropped) => Ok(dropped),
                    Err(e) => Err(conn.error("issue (EVALSHA)", e)),
                }
            })
            .await?;
        Ok(IssuedToken {
            token,
            claims,
            sessions_dropped,
        })
    }

    /// Checks the signature (algorithm and `typ` pinned), `exp` and `nbf`
    /// (host clock, `auth.leeway`), `iss` and `aud`; then, in one round trip
    /// (`ZSCORE` and `TIME` pipelined), that `iat` is not beyond the leeway
    /// in the future and that the session is still in the user's set and
    /// unexpired there, by Redis `TIME`.
    ///
    /// # Errors
    /// [`AuthError::Invalid`], [`AuthError::Expired`] or
    /// [`AuthError::Revoked`]; a token past its expiry (by either clock) is
    /// always `Expired`, never `Revoked`, whether or not the sweeper has
    /// removed its session yet.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.decode(token, &self.validation)?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZSCORE")
            .arg(self.key_for(&claims.sub))
            .arg(self.member_of(token, &claims))
            .cmd("TIME");
        let (score, now): (Option<f64>, (u64, u64)) = self
            .round_trip(|mut conn| async move {
                match pipe.query_async(&mut conn).await {
                    Ok(reply) => Ok(reply),
                    Err(e) => Err(conn.error("verify (ZSCORE, TIME)", e)),
                }
            })
            .await?;
        let now = RedisTime::from(now);
        self.check_times(&claims, now)?;
        match score {
            // Past `exp` but inside the leeway, and gone: swept (by a sweeper
            // with less grace than this leeway) or revoked, which the set
            // cannot tell apart. It is past its expiry, so it is expired.
            None if claims.exp as f64 * 1e6 <= now.micros => Err(AuthError::Expired),
            None => Err(AuthError::Revoked),
            // The stored expiry is authoritative too: a session the sweeper
            // may remove is not a live one, whatever the token says.
            Some(score) if !self.is_live(score, now) => Err(AuthError::Expired),
            Some(_) => Ok(claims),
        }
    }

    /// The signature and claim checks of [`TokenService::verify`] without the
    /// Redis lookup (the `iat` check on the host clock): it cannot see a
    /// logout, so use it only where a revoked token is acceptable (the
    /// benchmark uses it as the baseline).
    ///
    /// # Errors
    /// [`AuthError::Invalid`] or [`AuthError::Expired`].
    pub fn check_signature(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.decode(token, &self.validation)?;
        self.check_times(&claims, RedisTime::host())?;
        Ok(claims)
    }

    /// Ends the session of `token`. The user is the token's own `sub`, so a
    /// token can only ever revoke itself. Expired tokens can be revoked.
    /// Returns whether the session was still there.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for a token that is not ours, or a Redis error.
    pub async fn revoke(&self, token: &str) -> Result<bool, AuthError> {
        let claims = self.decode(token, &self.revocation)?;
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.key_for(&claims.sub))
            .arg(self.member_of(token, &claims));
        let removed: u64 = self
            .round_trip(|mut conn| async move { conn.query("ZREM", &zrem).await })
            .await?;
        Ok(removed == 1)
    }

    /// Ends every session of `user_id`; returns how many were live. One
    /// script: the count and the deletion see the same set.
    ///
    /// # Errors
    /// [`AuthError::EmptyUser`] or a Redis error.
    pub async fn revoke_all(&self, user_id: &str) -> Result<u64, AuthError> {
        if user_id.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        let mut invocation = self.revoke_all_script.key(self.key_for(user_id));
        invocation
            .arg(self.leeway_units())
            .arg(self.unit.per_second());
        self.round_trip(|mut conn| async move {
            match invocation.invoke_async(&mut conn).await {
                Ok(live) => Ok(live),
                Err(e) => Err(conn.error("revoke-all (EVALSHA)", e)),
            }
        })
        .await
    }

    /// The live sessions of `user_id` (those that would verify), soonest
    /// expiry first.
    ///
    /// # Errors
    /// [`AuthError::EmptyUser`] or a Redis error.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Session>, AuthError> {
        if user_id.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(self.key_for(user_id))
            .arg("-inf")
            .arg("+inf")
            .arg("WITHSCORES")
            .cmd("TIME");
        // Members as bytes: the set is shared with whatever else writes it,
        // and one member that is not UTF-8 must not hide all the others.
        type Rows = Vec<(Vec<u8>, f64)>;
        let (rows, now): (Rows, (u64, u64)) = self
            .round_trip(|mut conn| async move {
                match pipe.query_async(&mut conn).await {
                    Ok(reply) => Ok(reply),
                    Err(e) => Err(conn.error("list (ZRANGEBYSCORE, TIME)", e)),
                }
            })
            .await?;
        let now = RedisTime::from(now);
        let per_second = self.unit.per_second() as f64;
        Ok(rows
            .into_iter()
            .filter(|(_, score)| self.is_live(*score, now))
            .map(|(member, score)| Session {
                member,
                expires_at: if score == f64::INFINITY {
                    Expiry::Never
                } else {
                    Expiry::At(score / per_second)
                },
            })
            .collect())
    }

    /// Runs one Redis step on the current connection. A connection found
    /// lost is reported (once: later reports about the same connection are
    /// ignored) and replaced in the background; while there is none, fails
    /// at once with [`AuthError::Unavailable`].
    async fn round_trip<T, F, Fut>(&self, step: F) -> Result<T, AuthError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let (conn, id) = self.redis.checkout().map_err(AuthError::Unavailable)?;
        match step(conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if e.is_connection_lost() {
                    self.redis.lost_connection(id, &e.to_string());
                }
                Err(e.into())
            }
        }
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            match jsonwebtoken::decode::<Claims>(token.trim(), &self.keys.decoding, validation) {
                Ok(data) => data,
                Err(e) => {
                    return match e.kind() {
                        ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                        _ => Err(AuthError::Invalid(e.to_string())),
                    }
                }
            };
        if data.header.typ.as_deref() != Some(TYP) {
            return Err(AuthError::Invalid(format!(
                "typ {:?} is not {TYP:?}",
                data.header.typ.unwrap_or_default()
            )));
        }
        Ok(data.claims)
    }

    /// `iat` no later than now plus the leeway, and `exp` plus the leeway
    /// still ahead of now.
    fn check_times(&self, claims: &Claims, now: RedisTime) -> Result<(), AuthError> {
        let leeway = self.leeway.as_micros() as f64;
        let at = |secs: u64| secs as f64 * 1e6;
        // `iat` is whole seconds: against now rounded up, a token stamped a
        // moment ago by a clock a few milliseconds ahead (another cluster
        // node's TIME) is not "from the future"; a second ahead is.
        let this_second = (now.micros / 1e6).ceil() * 1e6;
        if at(claims.iat) > this_second + leeway {
            return Err(AuthError::Invalid(format!(
                "iat {} is more than the leeway ({}) in the future",
                claims.iat,
                humantime::format_duration(self.leeway)
            )));
        }
        if at(claims.exp) + leeway <= now.micros {
            return Err(AuthError::Expired);
        }
        Ok(())
    }

    /// Whether a member scored `score` verifies at `now`: score + leeway >
    /// now (the scripts' `cutoff` is the same line).
    fn is_live(&self, score: f64, now: RedisTime) -> bool {
        self.unit.to_unix_micros(score) + self.leeway.as_micros() as f64 > now.micros
    }

    fn member_of(&self, token: &str, claims: &Claims) -> String {
        match self.member {
            MemberKind::Sha256 => hex::encode(Sha256::digest(token.trim().as_bytes())),
            MemberKind::Token => token.trim().to_owned(),
            MemberKind::Jti => claims.jti.clone(),
        }
    }

    /// `auth.leeway` in score units (whole seconds, checked in `new`).
    fn leeway_units(&self) -> u64 {
        self.leeway.as_secs() * self.unit.per_second()
    }
}

fn check_ttl(key: &'static str, ttl: Duration) -> Result<(), AuthError> {
    match ttl_problem(ttl) {
        Some(message) => Err(AuthError::OutOfRange { key, message }),
        None => Ok(()),
    }
}

/// A moment, in microseconds since the epoch.
#[derive(Clone, Copy, Debug)]
struct RedisTime {
    micros: f64,
}

impl RedisTime {
    /// The host clock, for the one check that runs without Redis.
    fn host() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            micros: since.as_micros() as f64,
        }
    }

    /// Whole seconds, rounded down.
    fn secs(self) -> u64 {
        (self.micros / 1e6) as u64
    }
}

impl From<(u64, u64)> for RedisTime {
    /// The reply to `TIME`: seconds and microseconds.
    fn from((secs, micros): (u64, u64)) -> Self {
        Self {
            micros: secs as f64 * 1e6 + micros as f64,
        }
    }
}

/// Whether `settings` name any key material: the signal that this
/// configuration is meant for the auth path, and that `check-config` should
/// run [`check_settings`].
pub fn key_material_configured(settings: &AuthSettings) -> bool {
    settings.secret.is_some()
        || settings.secret_file.is_some()
        || settings.private_key_file.is_some()
        || settings.public_key_file.is_some()
}

/// Exactly the checks of [`TokenService::new`], without Redis: key lengths
/// per algorithm, a probe token signed with the private key (or secret) and
/// verified with the public key, `auth.ttl` and `auth.leeway` within bounds.
///
/// # Errors
/// The first problem, naming its setting.
pub fn check_settings(settings: &AuthSettings) -> Result<(), AuthError> {
    // Never connected: a link that is not used does not connect.
    let unused = Arc::new(Reconnecting::new(RedisSettings::default(), |_| {}));
    TokenService::new(unused, settings, ScoreUnit::Milliseconds).map(drop)
}

/// The key material for one algorithm, proven usable by a probe.
struct Keys {
    algorithm: Algorithm,
    /// `None` when only a public key is configured: this instance verifies only.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    /// The setting that holds the signing key, for error messages.
    signing_key: &'static str,
}

impl Keys {
    /// Loads the key material named by `settings` and proves it with a probe.
    fn load(settings: &AuthSettings) -> Result<Self, AuthError> {
        let algorithm = settings.algorithm;
        let keys = if algorithm.family() == AlgorithmFamily::Hmac {
            Self::hmac(settings, algorithm)?
        } else {
            Self::pem(settings, algorithm)?
        };
        keys.probe()?;
        Ok(keys)
    }

    fn hmac(settings: &AuthSettings, algorithm: Algorithm) -> Result<Self, AuthError> {
        let key = if settings.secret.is_none() && settings.secret_file.is_some() {
            "auth.secret_file"
        } else {
            "auth.secret"
        };
        let secret = settings
            .resolved_secret()
            .map_err(|e| AuthError::KeyMaterial {
                key: "auth.secret_file",
                message: e.to_string(),
            })?
            .ok_or(AuthError::KeyMaterial {
                key: "auth.secret",
                message: format!(
                    "{algorithm:?} needs a secret: set TOKEN_SWEEPER__AUTH__SECRET or auth.secret_file"
                ),
            })?;
        let bytes = secret.expose().as_bytes();
        // RFC 7518 section 3.2: a key of at least the hash output size.
        let minimum = match algorithm {
            Algorithm::HS512 => 64,
            Algorithm::HS384 => 48,
            _ => 32,
        };
        if bytes.len() < minimum {
            return Err(AuthError::KeyMaterial {
                key,
                message: format!(
                    "{algorithm:?} needs at least {minimum} bytes (RFC 7518 section 3.2), got {}",
                    bytes.len()
                ),
            });
        }
        Ok(Self {
            algorithm,
            encoding: Some(EncodingKey::from_secret(bytes)),
            decoding: DecodingKey::from_secret(bytes),
            signing_key: key,
        })
    }

    fn pem(settings: &AuthSettings, algorithm: Algorithm) -> Result<Self, AuthError> {
        let family = algorithm.family();
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| AuthError::KeyMaterial {
                key,
                message: format!("{}: {e}", path.display()),
            })
        };
        let bad_pem = |key: &'static str| {
            move |e: jsonwebtoken::errors::Error| AuthError::KeyMaterial {
                key,
                message: format!("not a {family:?} PEM key for {algorithm:?}: {e}"),
            }
        };
        let public_path = settings
            .public_key_file
            .as_deref()
            .ok_or(AuthError::KeyMaterial {
                key: "auth.public_key_file",
                message: format!("{algorithm:?} needs a PEM public key to verify tokens"),
            })?;
        let public = read("auth.public_key_file", public_path)?;
        let decoding = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&public),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&public),
            _ => DecodingKey::from_ed_pem(&public),
        }
        .map_err(bad_pem("auth.public_key_file"))?;
        let encoding = match &settings.private_key_file {
            None => None,
            Some(path) => {
                let private = read("auth.private_key_file", path)?;
                Some(
                    match family {
                        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&private),
                        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&private),
                        _ => EncodingKey::from_ed_pem(&private),
                    }
                    .map_err(bad_pem("auth.private_key_file"))?,
                )
            }
        };
        Ok(Self {
            algorithm,
            encoding,
            decoding,
            signing_key: "auth.private_key_file",
        })
    }

    /// Signs a probe with the signing key and verifies it with the verifying
    /// key, so that keys from different pairs, or a key for another curve
    /// (a P-384 key for ES256), fail at start-up and not at the first login.
    /// With a public key only, checks that the verifier accepts it.
    fn probe(&self) -> Result<(), AuthError> {
        const PROBE: &[u8] = b"token-sweeper key probe";
        let algorithm = self.algorithm;
        let verifying_key = if algorithm.family() == AlgorithmFamily::Hmac {
            self.signing_key
        } else {
            "auth.public_key_file"
        };
        let unusable = |key: &'static str, what: &str, e: jsonwebtoken::errors::Error| {
            AuthError::KeyMaterial {
                key,
                message: format!("cannot {what} {algorithm:?} with this key: {e}"),
            }
        };
        let Some(encoding) = &self.encoding else {
            // No signature to check; "AAAA" only has to decode. An error
            // (rather than `false`) means the key itself is refused.
            return jsonwebtoken::crypto::verify("AAAA", PROBE, &self.decoding, algorithm)
                .map(drop)
                .map_err(|e| unusable(verifying_key, "verify", e));
        };
        let signature = jsonwebtoken::crypto::sign(PROBE, encoding, algorithm)
            .map_err(|e| unusable(self.signing_key, "sign", e))?;
        match jsonwebtoken::crypto::verify(&signature, PROBE, &self.decoding, algorithm) {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthError::KeyMaterial {
                key: verifying_key,
                message: format!(
                    "does not verify a {algorithm:?} signature made with {}: the two keys are not one pair",
                    self.signing_key
                ),
            }),
            Err(e) => Err(unusable(verifying_key, "verify", e)),
        }
    }
}
