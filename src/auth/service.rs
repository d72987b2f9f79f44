//! [`TokenService`]: the operations of the auth path, each one or two
//! round trips on the one reconnecting connection the service keeps.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{
    in_days, AuthSettings, DueIndexSettings, MemberKind, RedisSettings, ScoreUnit, Settings,
};
use crate::due_index::index_key;
use crate::store::Reconnecting;
use crate::sweep::{min_bound, removal_floor};

use super::claims::check_extra;
use super::clock::{check_times, is_live, RedisTime};
use super::jwt::Jwt;
use super::limits::{check_leeway, check_ttl};
use super::scripts::{ISSUE, REVOKE_ALL};
use super::{AuthError, Claims, Expiry, IssuedToken, Session};

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
    jwt: Jwt,
    issue_script: redis::Script,
    revoke_all_script: redis::Script,
    /// The due index's key prefix, when this service maintains it.
    due_index: Option<String>,
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
        )?
        .maintain_due_index(&settings.sweep.due_index);
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
        let jwt = Jwt::new(settings)?;
        check_ttl("auth.ttl", settings.ttl)?;
        check_leeway(settings.leeway)?;
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
            jwt,
            issue_script: redis::Script::new(ISSUE),
            revoke_all_script: redis::Script::new(REVOKE_ALL),
            due_index: None,
        })
    }

    /// Maintains the due index as `settings` say (nothing when it is off):
    /// every login lowers its key's entry to the set's earliest unexpired
    /// expiry, in the same script as the token's `ZADD`; "log out
    /// everywhere" drops the entry with the set. [`TokenService::connect`]
    /// does this from `sweep.due_index`; a service made with
    /// [`TokenService::new`] calls it itself.
    #[must_use]
    pub fn maintain_due_index(mut self, settings: &DueIndexSettings) -> Self {
        self.due_index = settings.enabled.then(|| settings.key_prefix.clone());
        self
    }

    /// The script invocation on a user's `key`, with its index key second
    /// when this service maintains the index.
    fn on_key<'a>(&self, script: &'a redis::Script, key: String) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        if let Some(prefix) = &self.due_index {
            let index = index_key(prefix, key.as_bytes());
            invocation.key(key).key(index);
        } else {
            invocation.key(key);
        }
        invocation
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
    /// `ttl` that [`ttl_problem`](crate::config::ttl_problem) refuses, [`AuthError::KeyMaterial`] without a signing
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
        check_extra(&extra_claims)?;
        let ttl = ttl.unwrap_or(self.ttl);
        check_ttl("ttl", ttl)?;
        let signer = self.jwt.signer()?;
        let key = self.key_for(user_id);
        let now: (u64, u64) = self
            .round_trip("TIME", Request::Cmd(&redis::cmd("TIME")))
            .await?;
        let now = RedisTime::from(now);
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
        let token = signer.sign(&claims)?;
        let mut invocation = self.on_key(&self.issue_script, key);
        invocation
            .arg(self.member_of(&token, &claims))
            .arg(score)
            .arg(expire_at_ms)
            .arg(self.max_sessions)
            .arg(self.leeway_units())
            .arg(self.unit.per_second())
            .arg(min_bound(removal_floor(self.unit)));
        let sessions_dropped: u64 = self
            .round_trip("issue (EVALSHA)", Request::Script(&invocation))
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
        let claims = self.jwt.decode(token)?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZSCORE")
            .arg(self.key_for(&claims.sub))
            .arg(self.member_of(token, &claims))
            .cmd("TIME");
        let (score, now): (Option<f64>, (u64, u64)) = self
            .round_trip("verify (ZSCORE, TIME)", Request::Pipeline(&pipe))
            .await?;
        let now = RedisTime::from(now);
        check_times(&claims, now, self.leeway)?;
        match score {
            // Past `exp` but inside the leeway, and gone: swept (by a sweeper
            // with less grace than this leeway) or revoked, which the set
            // cannot tell apart. It is past its expiry, so it is expired.
            None if claims.exp as f64 * 1e6 <= now.micros => Err(AuthError::Expired),
            None => Err(AuthError::Revoked),
            // The stored expiry is authoritative too: a session the sweeper
            // may remove is not a live one, whatever the token says.
            Some(score) if !is_live(score, self.unit, self.leeway, now) => Err(AuthError::Expired),
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
        let claims = self.jwt.decode(token)?;
        check_times(&claims, RedisTime::host(), self.leeway)?;
        Ok(claims)
    }

    /// Ends the session of `token`. The user is the token's own `sub`, so a
    /// token can only ever revoke itself. Expired tokens can be revoked.
    /// Returns whether the session was still there.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for a token that is not ours, or a Redis error.
    pub async fn revoke(&self, token: &str) -> Result<bool, AuthError> {
        let claims = self.jwt.decode_revocable(token)?;
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.key_for(&claims.sub))
            .arg(self.member_of(token, &claims));
        let removed: u64 = self.round_trip("ZREM", Request::Cmd(&zrem)).await?;
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
        let mut invocation = self.on_key(&self.revoke_all_script, self.key_for(user_id));
        invocation
            .arg(self.leeway_units())
            .arg(self.unit.per_second());
        self.round_trip("revoke-all (EVALSHA)", Request::Script(&invocation))
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
            .round_trip("list (ZRANGEBYSCORE, TIME)", Request::Pipeline(&pipe))
            .await?;
        let now = RedisTime::from(now);
        let per_second = self.unit.per_second() as f64;
        Ok(rows
            .into_iter()
            .filter(|(_, score)| is_live(*score, self.unit, self.leeway, now))
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

    /// Sends one request on the current connection. A connection found
    /// lost is reported (once: later reports about the same connection are
    /// ignored) and replaced in the background; while there is none, fails
    /// at once with [`AuthError::Unavailable`]. `what` names the step in the
    /// error.
    async fn round_trip<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        request: Request<'_>,
    ) -> Result<T, AuthError> {
        let (mut conn, id) = self.redis.checkout().map_err(AuthError::Unavailable)?;
        let reply = match request {
            Request::Cmd(cmd) => cmd.query_async(&mut conn).await,
            Request::Pipeline(pipe) => pipe.query_async(&mut conn).await,
            Request::Script(script) => script.invoke_async(&mut conn).await,
        };
        reply.map_err(|source| {
            let e = conn.error(what, source);
            if e.is_connection_lost() {
                self.redis.lost_connection(id, &e.to_string());
            }
            e.into()
        })
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

/// One request, as [`TokenService::round_trip`] sends it.
enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
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
