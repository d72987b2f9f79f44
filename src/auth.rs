//! The auth path: issue, verify, revoke, revoke-all and list sessions,
//! writing exactly the data the sweeper keeps clean.
//!
//! Per user one sorted set (`auth.key_template`, default `{user}-tokens`);
//! member = SHA-256 hex of the token (or the token, or its `jti`, per
//! `auth.member`); score = the token's `exp` in `sweep.score_unit`; the key's
//! TTL = the latest expiry in the set, never shortened. Every operation
//! touches that one key only, so the layout is cluster-safe (write the
//! template as `{{user}}-tokens` to hash-tag it). Needs Redis 7.0 or later
//! (`PEXPIREAT ... GT`).
//!
//! ```no_run
//! use token_sweeper::auth::TokenService;
//! use token_sweeper::config::Settings;
//! use token_sweeper::redis::Connection;
//!
//! # async fn login() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load(None)?; // TOKEN_SWEEPER__AUTH__SECRET holds the HMAC key
//! let conn = Connection::connect(&settings.redis).await?;
//! let tokens = TokenService::new(conn, &settings.auth, settings.sweep.score_unit)?;
//!
//! let issued = tokens.issue("42", None, serde_json::Map::new()).await?; // on login
//! let claims = tokens.verify(&issued.token).await?;                     // on every request
//! assert_eq!(claims.sub, "42");
//! tokens.revoke(&issued.token).await?;                                   // on logout
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AuthSettings, MemberKind, ScoreUnit};
use crate::redis::{Connection, RedisError};

/// Why a token was refused or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, wrong algorithm (including `none`), malformed, wrong
    /// issuer or audience: the token was never ours.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Correctly signed, but past its `exp` (plus `auth.leeway`).
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
    /// The key material is missing or unreadable; names the setting.
    #[error("{key}: {message}")]
    KeyMaterial {
        /// The setting, e.g. `auth.private_key_file`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// The claims of tokens this module issues.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issued at, seconds since the epoch.
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

/// A freshly issued token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The encoded JWT, for the client.
    pub token: String,
    /// What it says.
    pub claims: Claims,
    /// Older sessions dropped to respect `auth.max_sessions`.
    pub sessions_dropped: u64,
}

/// One active session of a user.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Session {
    /// The stored member: the token's SHA-256 (default), the token, or its `jti`.
    pub id: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: f64,
}

/// Adds a session atomically: drops the user's expired members, adds this
/// one, trims to `max_sessions` (oldest expiry first), and moves the key's
/// expiry to the new token's unless it is already later. A key without any
/// TTL (made persistent by someone on purpose) stays persistent.
///
/// KEYS[1] set; ARGV: member, score, expire-at ms, max sessions (0 = no limit), now score.
const ISSUE: &str = r"
local had_ttl = redis.call('PTTL', KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local dropped = 0
local max = tonumber(ARGV[4])
if max > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n > max then dropped = redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
end
if had_ttl ~= -1 then
  if redis.call('PTTL', KEYS[1]) >= 0 then
    redis.call('PEXPIREAT', KEYS[1], ARGV[3], 'GT')
  else
    redis.call('PEXPIREAT', KEYS[1], ARGV[3])
  end
end
return dropped";

/// Issues, verifies and revokes tokens against the users' sets.
pub struct TokenService {
    conn: Connection,
    key_template: String,
    member: MemberKind,
    unit: ScoreUnit,
    ttl: Duration,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
    max_sessions: u32,
    /// `None` when only a public key is configured: this instance verifies only.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    /// Full validation, for `verify`.
    validation: Validation,
    /// Signature, algorithm, issuer and audience but not expiry: an expired
    /// token can still be revoked.
    revocation: Validation,
    issue_script: redis::Script,
}

/// HMAC keys shorter than this are refused (RFC 7518 3.2: at least the hash size).
const MIN_SECRET_BYTES: usize = 32;

impl TokenService {
    /// Loads the key material named by `settings` and prepares validation.
    ///
    /// # Errors
    /// [`AuthError::KeyMaterial`] naming the setting that is missing or unusable.
    pub fn new(
        conn: Connection,
        settings: &AuthSettings,
        unit: ScoreUnit,
    ) -> Result<Self, AuthError> {
        let algorithm: Algorithm =
            settings
                .algorithm
                .parse()
                .map_err(|_| AuthError::KeyMaterial {
                    key: "auth.algorithm",
                    message: format!("{:?} is not a JWT algorithm", settings.algorithm),
                })?;
        let (encoding, decoding) = load_keys(settings, algorithm)?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = settings.leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub", "iat", "jti"]);
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
            conn,
            key_template: settings.key_template.clone(),
            member: settings.member,
            unit,
            ttl: settings.ttl,
            algorithm,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            max_sessions: settings.max_sessions,
            encoding,
            decoding,
            validation,
            revocation,
            issue_script: redis::Script::new(ISSUE),
        })
    }

    /// The Redis key of a user's set.
    pub fn key_for(&self, user_id: &str) -> String {
        self.key_template.replace("{user}", user_id)
    }

    /// Signs a token for `user_id` (lifetime `ttl`, else `auth.ttl`) and
    /// stores its session, in one round trip.
    ///
    /// # Errors
    /// [`AuthError::ReservedClaim`] when `extra_claims` names a claim set here,
    /// [`AuthError::KeyMaterial`] without a signing key, or a Redis error.
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
        let encoding = self.encoding.as_ref().ok_or(AuthError::KeyMaterial {
            key: "auth.private_key_file",
            message: format!(
                "needed to issue {:?} tokens; only a public key is configured",
                self.algorithm
            ),
        })?;
        let now = unix_now();
        let iat = now.as_secs();
        let exp = iat + ttl.unwrap_or(self.ttl).as_secs().max(1);
        let claims = Claims {
            sub: user_id.to_owned(),
            iat,
            exp,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            extra: extra_claims,
        };
        let token =
            jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding).map_err(|e| {
                AuthError::KeyMaterial {
                    key: "auth.algorithm",
                    message: format!("cannot sign with {:?}: {e}", self.algorithm),
                }
            })?;
        let mut conn = self.conn.clone();
        let mut invocation = self.issue_script.key(self.key_for(user_id));
        invocation
            .arg(self.member_of(&token, &claims))
            .arg(self.score(exp))
            .arg(exp.saturating_mul(1000))
            .arg(self.max_sessions)
            .arg(self.now_score(now));
        let sessions_dropped: u64 = match invocation.invoke_async(&mut conn).await {
            Ok(dropped) => dropped,
            Err(e) => return Err(conn.error("issue (EVALSHA)", e).into()),
        };
        Ok(IssuedToken {
            token,
            claims,
            sessions_dropped,
        })
    }

    /// Checks the signature (algorithm pinned), `exp`, `iss` and `aud`, then
    /// that the session is still in the user's set and unexpired there: one
    /// Redis round trip.
    ///
    /// # Errors
    /// [`AuthError::Invalid`], [`AuthError::Expired`] or [`AuthError::Revoked`].
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.decode(token, &self.validation)?;
        let score: Option<f64> = self.on_session("ZSCORE", token, &claims).await?;
        match score {
            None => Err(AuthError::Revoked),
            // The stored expiry is authoritative too: a session the sweeper
            // would remove is not a live one, whatever the token says.
            Some(score) if score <= self.now_score(unix_now()) as f64 => Err(AuthError::Expired),
            Some(_) => Ok(claims),
        }
    }

    /// The signature and claim checks of [`TokenService::verify`] without the
    /// Redis lookup: it cannot see a logout, so use it only where a revoked
    /// token is acceptable (the benchmark uses it as the baseline).
    ///
    /// # Errors
    /// [`AuthError::Invalid`] or [`AuthError::Expired`].
    pub fn check_signature(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode(token, &self.validation)
    }

    /// Ends the session of `token`. The user is the token's own `sub`, so a
    /// token can only ever revoke itself. Expired tokens can be revoked.
    /// Returns whether the session was still there.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for a token that is not ours, or a Redis error.
    pub async fn revoke(&self, token: &str) -> Result<bool, AuthError> {
        let claims = self.decode(token, &self.revocation)?;
        let removed: u64 = self.on_session("ZREM", token, &claims).await?;
        Ok(removed == 1)
    }

    /// Ends every session of `user_id`; returns how many were active.
    ///
    /// # Errors
    /// A Redis error.
    pub async fn revoke_all(&self, user_id: &str) -> Result<u64, AuthError> {
        if user_id.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        let key = self.key_for(user_id);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZCOUNT")
            .arg(&key)
            .arg(format!("({}", self.now_score(unix_now())))
            .arg("+inf")
            .cmd("DEL")
            .arg(&key)
            .ignore();
        let (active,): (u64,) = match pipe.query_async(&mut conn).await {
            Ok(reply) => reply,
            Err(e) => return Err(conn.error("revoke-all (MULTI)", e).into()),
        };
        Ok(active)
    }

    /// The active sessions of `user_id`, soonest expiry first.
    ///
    /// # Errors
    /// A Redis error.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Session>, AuthError> {
        let mut conn = self.conn.clone();
        let rows: Vec<(String, f64)> = conn
            .query(
                "ZRANGEBYSCORE",
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key_for(user_id))
                    .arg(format!("({}", self.now_score(unix_now())))
                    .arg("+inf")
                    .arg("WITHSCORES"),
            )
            .await?;
        let per_second = (1_000_000 / self.unit.micros()) as f64;
        Ok(rows
            .into_iter()
            .map(|(id, score)| Session {
                id,
                expires_at: score / per_second,
            })
            .collect())
    }

    /// `command <the user's key> <the token's member>`: the one round trip of
    /// `verify` (ZSCORE) and `revoke` (ZREM).
    async fn on_session<T: redis::FromRedisValue>(
        &self,
        command: &'static str,
        token: &str,
        claims: &Claims,
    ) -> Result<T, AuthError> {
        let mut cmd = redis::cmd(command);
        cmd.arg(self.key_for(&claims.sub))
            .arg(self.member_of(token, claims));
        Ok(self.conn.clone().query(command, &cmd).await?)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                _ => Err(AuthError::Invalid(e.to_string())),
            },
        }
    }

    fn member_of(&self, token: &str, claims: &Claims) -> String {
        match self.member {
            MemberKind::Sha256 => hex::encode(Sha256::digest(token.trim().as_bytes())),
            MemberKind::Token => token.trim().to_owned(),
            MemberKind::Jti => claims.jti.clone(),
        }
    }

    /// A JWT `exp` (seconds) as a score.
    fn score(&self, exp_secs: u64) -> u64 {
        match self.unit {
            ScoreUnit::Seconds => exp_secs,
            ScoreUnit::Milliseconds => exp_secs.saturating_mul(1000),
        }
    }

    /// Now as a score, rounded down like the sweeper's cutoff.
    fn now_score(&self, now: Duration) -> u64 {
        match self.unit {
            ScoreUnit::Seconds => now.as_secs(),
            ScoreUnit::Milliseconds => u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The signing key (if any) and the verifying key for `algorithm`.
fn load_keys(
    settings: &AuthSettings,
    algorithm: Algorithm,
) -> Result<(Option<EncodingKey>, DecodingKey), AuthError> {
    use jsonwebtoken::AlgorithmFamily;

    let family = algorithm.family();
    if family == AlgorithmFamily::Hmac {
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
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(AuthError::KeyMaterial {
                key: "auth.secret",
                message: format!(
                    "must be at least {MIN_SECRET_BYTES} bytes, got {}",
                    bytes.len()
                ),
            });
        }
        return Ok((
            Some(EncodingKey::from_secret(bytes)),
            DecodingKey::from_secret(bytes),
        ));
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| AuthError::KeyMaterial {
            key,
            message: format!("{}: {e}", path.display()),
        })
    };
    let public_path = settings
        .public_key_file
        .as_deref()
        .ok_or(AuthError::KeyMaterial {
            key: "auth.public_key_file",
            message: format!("{algorithm:?} needs a PEM public key to verify tokens"),
        })?;
    let public = read("auth.public_key_file", public_path)?;
    let bad_pem = |key: &'static str| {
        move |e: jsonwebtoken::errors::Error| AuthError::KeyMaterial {
            key,
            message: format!("not a {family:?} PEM key for {algorithm:?}: {e}"),
        }
    };
    let decoding = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&public),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&public),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&public),
        AlgorithmFamily::Hmac => unreachable_family(),
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
                    AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&private),
                    AlgorithmFamily::Hmac => unreachable_family(),
                }
                .map_err(bad_pem("auth.private_key_file"))?,
            )
        }
    };
    Ok((encoding, decoding))
}

/// The HMAC family returned above; this arm exists for exhaustiveness.
fn unreachable_family<T>() -> Result<T, jsonwebtoken::errors::Error> {
    Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into())
}
