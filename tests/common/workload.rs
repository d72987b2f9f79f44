//! The auth workload of the fault suite: logins, requests, logouts and
//! "log out everywhere" through `token_sweeper::auth::TokenService`, next to
//! a model of what each token must be (live, being revoked, revoked), so
//! that every answer can be judged.
//!
//! Every user belongs to one worker, which runs its operations one at a
//! time: the model never races with itself for a user. A token is marked
//! "being revoked" *before* its ZREM/DEL is sent, so any reader that still
//! sees it live after reading Redis knows that no revocation of it had been
//! sent before that read.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use token_sweeper::auth::{AuthError, Claims, TokenService};
use token_sweeper::config::Settings;
use token_sweeper::store::key_slot;

use super::invariants::{Admin, Violations};

/// Lifetimes of short-lived tokens, seconds: they expire during the run,
/// many of them during a fault.
pub const SHORT_TTLS: [u64; 4] = [2, 3, 4, 5];
/// Lifetime of long-lived tokens: they must survive every fault.
pub const LONG_TTL: u64 = 3600;
/// Longest an operation may take before it counts as failed. Far below
/// `redis.response_timeout`, so a stalled operation does not hold its
/// worker for the whole fault.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Long-lived tokens a user keeps at most; beyond, a login becomes a logout.
const MAX_LONG_PER_USER: usize = 8;

/// Host time in milliseconds; the auth path reads the same clock.
pub fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit in i64")
}

/// Host time in seconds since the epoch, as the metrics show it.
pub fn unix_now() -> f64 {
    now_ms() as f64 / 1000.0
}

/// Where a token is in its life, as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokState {
    /// Issued and acknowledged, no revocation sent.
    Live,
    /// A revoke or revoke-all was sent and not acknowledged (yet): either
    /// outcome is possible until one is.
    Revoking,
    /// A revocation was acknowledged at this instant.
    Revoked(Instant),
}

/// One token the workload holds.
#[derive(Clone, Debug)]
pub struct Tok {
    /// Model id.
    pub id: u64,
    /// `sub`.
    pub user: String,
    /// The user's set.
    pub key: String,
    /// The JWT.
    pub token: String,
    /// The member stored for it (SHA-256 hex of the token).
    pub member: String,
    /// Its score: `exp` in milliseconds.
    pub score: i64,
    /// When `issue` returned it.
    pub issued: Instant,
    /// Live, being revoked, revoked.
    pub state: TokState,
}

/// A time during which acknowledged writes may be lost by Redis itself:
/// asynchronous replication across a failover. Writes acknowledged inside
/// it (on keys of `slots`, or any key when `None`) are uncertain until the
/// window is settled.
#[derive(Clone, Debug)]
pub struct LossyWindow {
    /// Everything acknowledged before this had reached the replica.
    pub from: Instant,
    /// After this no server that can lose writes acknowledges any.
    pub until: Option<Instant>,
    /// The hash slots concerned (cluster), or every key.
    pub slots: Option<Vec<RangeInclusive<u16>>>,
    /// Set once the uncertain writes were checked or redone on the new primary.
    pub settled: bool,
}

impl LossyWindow {
    fn covers(&self, at: Instant, key: &str) -> bool {
        !self.settled
            && at >= self.from
            && self.until.is_none_or(|until| at <= until)
            && self.slots.as_ref().is_none_or(|slots| {
                let slot = key_slot(key.as_bytes());
                slots.iter().any(|range| range.contains(&slot))
            })
    }
}

#[derive(Default)]
struct ModelState {
    tokens: BTreeMap<u64, Tok>,
    next_id: u64,
    windows: Vec<LossyWindow>,
    /// Acknowledged writes that a failover lost, described.
    lost: Vec<String>,
}

/// What must be true of every token the workload was given.
#[derive(Default)]
pub struct Model {
    state: Mutex<ModelState>,
}

/// What a verify must answer, decided just before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Live and unexpired: valid.
    Valid,
    /// Revoked (acknowledged) or expired: anything but valid.
    Rejected(&'static str),
    /// Being revoked, or written inside an unsettled lossy window.
    Either,
}

impl Model {
    fn add(&self, mut tok: Tok) -> Tok {
        let mut state = self.state.lock().unwrap();
        tok.id = state.next_id;
        state.next_id += 1;
        state.tokens.insert(tok.id, tok.clone());
        tok
    }

    fn set_state(&self, id: u64, new: TokState) {
        if let Some(tok) = self.state.lock().unwrap().tokens.get_mut(&id) {
            tok.state = new;
        }
    }

    fn tokens_of(&self, user: &str) -> Vec<Tok> {
        let state = self.state.lock().unwrap();
        state
            .tokens
            .values()
            .filter(|t| t.user == user)
            .cloned()
            .collect()
    }

    /// Every token, for the final check.
    pub fn all(&self) -> Vec<Tok> {
        self.state
            .lock()
            .unwrap()
            .tokens
            .values()
            .cloned()
            .collect()
    }

    /// Tokens that must be in Redis right now, unless expired: live, and
    /// not written inside an unsettled lossy window.
    pub fn live(&self) -> Vec<Tok> {
        let state = self.state.lock().unwrap();
        state
            .tokens
            .values()
            .filter(|t| t.state == TokState::Live && !tolerated(&state.windows, t))
            .cloned()
            .collect()
    }

    /// Whether `id` is still live, not revoked meanwhile, and not in a
    /// lossy window opened meanwhile.
    pub fn still_live(&self, id: u64) -> bool {
        let state = self.state.lock().unwrap();
        state
            .tokens
            .get(&id)
            .is_some_and(|t| t.state == TokState::Live && !tolerated(&state.windows, t))
    }

    /// What a verify of `tok` must answer now.
    pub fn expect(&self, id: u64, now: i64) -> Option<(Tok, Expect)> {
        let state = self.state.lock().unwrap();
        let tok = state.tokens.get(&id)?.clone();
        let expect = if tolerated(&state.windows, &tok) || tok.state == TokState::Revoking {
            Expect::Either
        } else if matches!(tok.state, TokState::Revoked(_)) {
            Expect::Rejected("revoked")
        } else if tok.score <= now {
            Expect::Rejected("expired")
        } else {
            Expect::Valid
        };
        Some((tok, expect))
    }

    /// Opens a lossy window from `from`; returns its index.
    pub fn open_window(&self, from: Instant, slots: Option<Vec<RangeInclusive<u16>>>) -> usize {
        let mut state = self.state.lock().unwrap();
        state.windows.push(LossyWindow {
            from,
            until: None,
            slots,
            settled: false,
        });
        state.windows.len() - 1
    }

    /// Closes window `index` at `until`.
    pub fn close_window(&self, index: usize, until: Instant) {
        self.state.lock().unwrap().windows[index].until = Some(until);
    }

    /// Settles window `index` through `admin` (connected to the new
    /// primary): a login acknowledged inside it whose session is gone was
    /// lost by the failover (recorded, and dropped from the model); a
    /// logout acknowledged inside it is done again, so it holds from now on.
    pub fn settle(&self, index: usize, admin: &mut Admin) {
        let (window, tokens) = {
            let state = self.state.lock().unwrap();
            let window = state.windows[index].clone();
            (window, state.tokens.values().cloned().collect::<Vec<_>>())
        };
        let mut lost = Vec::new();
        let mut lost_logouts = Vec::new();
        for tok in tokens {
            if window.covers(tok.issued, &tok.key) && tok.state == TokState::Live {
                let score: Option<f64> =
                    admin.retry(|a| a.query(redis::cmd("ZSCORE").arg(&tok.key).arg(&tok.member)));
                let now = admin.retry(Admin::time_ms);
                if score.is_none() && tok.score > now {
                    lost.push((
                        tok.id,
                        format!(
                            "login of {} ({} score {}) acknowledged {:?} after the replica had caught up",
                            tok.user,
                            tok.member,
                            tok.score,
                            tok.issued.saturating_duration_since(window.from)
                        ),
                    ));
                }
            }
            if let TokState::Revoked(at) = tok.state {
                if window.covers(at, &tok.key) {
                    let removed: i64 =
                        admin.retry(|a| a.query(redis::cmd("ZREM").arg(&tok.key).arg(&tok.member)));
                    let now = admin.retry(Admin::time_ms);
                    if removed == 1 && tok.score > now {
                        lost_logouts.push(format!(
                            "logout of {} ({} score {}) acknowledged {:?} after the replica had \
                             caught up: the session was back (ended again now)",
                            tok.user,
                            tok.member,
                            tok.score,
                            at.saturating_duration_since(window.from)
                        ));
                    }
                }
            }
        }
        let mut state = self.state.lock().unwrap();
        for (id, what) in lost {
            state.tokens.remove(&id);
            state.lost.push(what);
        }
        state.lost.extend(lost_logouts);
        state.windows[index].settled = true;
    }

    /// Acknowledged writes that failovers lost.
    pub fn lost(&self) -> Vec<String> {
        self.state.lock().unwrap().lost.clone()
    }

    /// Forgets tokens that expired long ago: nothing about them can change.
    fn prune(&self, now: i64) {
        let mut state = self.state.lock().unwrap();
        state.tokens.retain(|_, t| t.score > now - 30_000);
    }
}

fn tolerated(windows: &[LossyWindow], tok: &Tok) -> bool {
    windows.iter().any(|w| {
        w.covers(tok.issued, &tok.key)
            || matches!(tok.state, TokState::Revoked(at) if w.covers(at, &tok.key))
    })
}

/// Counters of what the workload did.
#[derive(Default)]
pub struct Stats {
    /// Logins acknowledged.
    pub issued: AtomicU64,
    /// Requests answered "valid" for live tokens.
    pub verified_valid: AtomicU64,
    /// Requests rejected for revoked or expired tokens, as they must be.
    pub verified_rejected: AtomicU64,
    /// Logouts acknowledged.
    pub revoked: AtomicU64,
    /// "Log out everywhere" acknowledged.
    pub revoked_all: AtomicU64,
    /// Operations that failed or timed out (during faults, that is expected).
    pub errors: AtomicU64,
}

impl Stats {
    /// Total operations answered.
    pub fn operations(&self) -> u64 {
        [
            &self.issued,
            &self.verified_valid,
            &self.verified_rejected,
            &self.revoked,
            &self.revoked_all,
            &self.errors,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// One line.
    pub fn summary(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} operations: {} logins, {} valid requests, {} rejected (revoked/expired) requests, \
             {} logouts, {} log-out-everywhere, {} failed or timed out",
            self.operations(),
            n(&self.issued),
            n(&self.verified_valid),
            n(&self.verified_rejected),
            n(&self.revoked),
            n(&self.revoked_all),
            n(&self.errors)
        )
    }
}

/// An operation that failed, for the check that the auth path works
/// between faults.
#[derive(Clone, Debug)]
pub struct OpError {
    /// When it was sent.
    pub started: Instant,
    /// When it failed.
    pub ended: Instant,
    /// `issue`, `verify`, ...
    pub op: &'static str,
    /// The error.
    pub error: String,
}

/// The workload: a `TokenService` shared by a few workers, and its model.
pub struct Workload {
    settings: Settings,
    service: RwLock<Arc<TokenService>>,
    /// What must be true of the tokens.
    pub model: Model,
    /// What was done.
    pub stats: Stats,
    violations: Arc<Violations>,
    stop: AtomicBool,
    errors: Mutex<Vec<OpError>>,
    probes: AtomicU64,
}

/// A `TokenService` as an application would build one from `settings`.
///
/// This is the one place that builds the service: if its construction
/// changes, change it here.
pub async fn connect_service(settings: &Settings) -> Result<TokenService, String> {
    TokenService::connect(settings)
        .await
        .map_err(|e| e.to_string())
}

/// `f`, or an error once [`OP_TIMEOUT`] has passed.
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, AuthError>>,
) -> Result<T, OpFailure> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(OpFailure::Auth(e)),
        Err(_) => Err(OpFailure::TimedOut),
    }
}

/// Why an operation did not succeed.
#[derive(Debug)]
pub enum OpFailure {
    /// The auth module said no.
    Auth(AuthError),
    /// No answer within [`OP_TIMEOUT`].
    TimedOut,
}

impl std::fmt::Display for OpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auth(e) => write!(f, "{e}"),
            Self::TimedOut => write!(f, "no answer within {OP_TIMEOUT:?}"),
        }
    }
}

impl OpFailure {
    /// A Redis error or a timeout: the fault, not the answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::TimedOut | Self::Auth(AuthError::Redis(_)))
    }
}

impl Workload {
    /// Connects the service; `settings` are kept to build it again.
    pub async fn connect(settings: Settings, violations: Arc<Violations>) -> Arc<Self> {
        let service = connect_service(&settings)
            .await
            .unwrap_or_else(|e| panic!("the workload cannot start: {e}"));
        Arc::new(Self {
            settings,
            service: RwLock::new(Arc::new(service)),
            model: Model::default(),
            stats: Stats::default(),
            violations,
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            probes: AtomicU64::new(0),
        })
    }

    /// The service in use.
    pub fn service(&self) -> Arc<TokenService> {
        Arc::clone(&self.service.read().unwrap())
    }

    /// Replaces the service with a freshly connected one, as an operator
    /// restarting the application would.
    pub async fn rebuild(&self) -> Result<(), String> {
        let service = connect_service(&self.settings).await?;
        *self.service.write().unwrap() = Arc::new(service);
        Ok(())
    }

    /// Starts `workers` workers with two users each; `seed` makes their
    /// choices reproducible (the timing is not).
    pub fn spawn_workers(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        workers: usize,
        seed: u64,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..workers)
            .map(|w| {
                let this = Arc::clone(self);
                let users = vec![format!("w{w}a"), format!("w{w}b")];
                rt.spawn(async move { this.work(users, seed.wrapping_add(w as u64)).await })
            })
            .collect()
    }

    /// Asks the workers to stop after their current operation.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Failed operations sent at or after `from` and failed by `to`.
    pub fn errors_between(&self, from: Instant, to: Instant) -> Vec<OpError> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.started >= from && e.ended <= to)
            .cloned()
            .collect()
    }

    fn failed(&self, op: &'static str, started: Instant, failure: &OpFailure) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        // Only recent errors matter for the between-faults check.
        if errors.len() > 10_000 {
            errors.drain(..5_000);
        }
        errors.push(OpError {
            started,
            ended: Instant::now(),
            op,
            error: failure.to_string(),
        });
    }

    async fn work(self: Arc<Self>, users: Vec<String>, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut round = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            round += 1;
            if round.is_multiple_of(200) {
                self.model.prune(now_ms());
            }
            let user = &users[rng.random_range(0..users.len())];
            let tokens = self.model.tokens_of(user);
            // A revocation that was not acknowledged is retried first, so
            // the model settles once the fault is over.
            if let Some(pending) = tokens.iter().find(|t| t.state == TokState::Revoking) {
                self.revoke(pending).await;
            } else {
                let live: Vec<&Tok> = tokens
                    .iter()
                    .filter(|t| t.state == TokState::Live)
                    .collect();
                let long_live = live.iter().filter(|t| t.score > now_ms() + 600_000).count();
                match rng.random_range(0..100) {
                    0..=24 => {
                        let ttl = SHORT_TTLS[rng.random_range(0..SHORT_TTLS.len())];
                        self.issue(user, ttl).await;
                    }
                    25..=34 if long_live < MAX_LONG_PER_USER => {
                        self.issue(user, LONG_TTL).await;
                    }
                    25..=34 | 85..=98 => {
                        if !live.is_empty() {
                            let tok = live[rng.random_range(0..live.len())];
                            self.revoke(tok).await;
                        }
                    }
                    // Mostly live tokens, as an application sees them; the
                    // rest revoked or expired ones, which must be refused.
                    // A failure is recorded; the fault explains it.
                    35..=64 if !live.is_empty() => {
                        let tok = live[rng.random_range(0..live.len())];
                        let _ = self.verify(tok.id).await;
                    }
                    35..=84 => {
                        if !tokens.is_empty() {
                            let tok = &tokens[rng.random_range(0..tokens.len())];
                            let _ = self.verify(tok.id).await;
                        }
                    }
                    _ => self.revoke_all(user).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn issue(&self, user: &str, ttl: u64) -> Option<Tok> {
        let service = self.service();
        let started = Instant::now();
        let issued =
            bounded(service.issue(user, Some(Duration::from_secs(ttl)), serde_json::Map::new()))
                .await;
        match issued {
            Ok(issued) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                let claims = &issued.claims;
                if claims.sub != user || claims.exp != claims.iat + ttl {
                    self.violations.report(
                        "a login returns the token asked for",
                        format!("user {user} ttl {ttl}s: claims {claims:?}"),
                    );
                }
                let score = i64::try_from(claims.exp * 1000).expect("exp in range");
                Some(self.model.add(Tok {
                    id: 0,
                    user: user.to_owned(),
                    key: service.key_for(user),
                    member: member_of(&issued.token),
                    token: issued.token,
                    score,
                    issued: Instant::now(),
                    state: TokState::Live,
                }))
            }
            Err(e) => {
                self.failed("issue", started, &e);
                None
            }
        }
    }

    async fn revoke(&self, tok: &Tok) {
        let started = Instant::now();
        match self.logout_raw(tok).await {
            Ok(()) => {
                self.stats.revoked.fetch_add(1, Ordering::Relaxed);
            }
            Err(OpFailure::Auth(AuthError::Invalid(e))) => self.violations.report(
                "the auth path accepts its own tokens",
                format!("revoke of {} ({}): invalid: {e}", tok.user, tok.member),
            ),
            Err(e) => self.failed("revoke", started, &e),
        }
    }

    async fn revoke_all(&self, user: &str) {
        let started = Instant::now();
        match self.logout_everywhere_raw(user).await {
            Ok(()) => {
                self.stats.revoked_all.fetch_add(1, Ordering::Relaxed);
            }
            // The tokens stay "being revoked"; single revokes settle them.
            Err(e) => self.failed("revoke-all", started, &e),
        }
    }

    /// Verifies the token `id` and judges the answer against the model;
    /// returns the failure when the answer was not a judgement (Redis
    /// unavailable).
    pub async fn verify(&self, id: u64) -> Result<(), String> {
        let before = now_ms();
        let Some((tok, expect)) = self.model.expect(id, before) else {
            return Ok(());
        };
        let started = Instant::now();
        let result = bounded(self.service().verify(&tok.token)).await;
        self.judge(&tok, expect, before, result, started)
    }

    fn judge(
        &self,
        tok: &Tok,
        expect: Expect,
        before: i64,
        result: Result<Claims, OpFailure>,
        started: Instant,
    ) -> Result<(), String> {
        let describe = || {
            format!(
                "user {} key {} member {} score {} ({:+} ms from now), verify sent at {before}",
                tok.user,
                tok.key,
                tok.member,
                tok.score,
                tok.score - now_ms()
            )
        };
        match result {
            Ok(claims) => {
                if let Expect::Rejected(why) = expect {
                    self.violations.report_once(
                        &format!("verify {}", tok.member),
                        &format!("no {why} token ever verifies"),
                        format!("verified as valid: {}", describe()),
                    );
                } else if claims.sub != tok.user {
                    self.violations.report(
                        "a token verifies as its own user",
                        format!("claims {claims:?}: {}", describe()),
                    );
                } else {
                    self.stats.verified_valid.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(OpFailure::Auth(AuthError::Revoked)) | Err(OpFailure::Auth(AuthError::Expired))
                if expect != Expect::Valid =>
            {
                self.stats.verified_rejected.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(OpFailure::Auth(e @ (AuthError::Revoked | AuthError::Expired))) => {
                // Valid when sent: it may have expired since, and then been
                // swept. Judged on the clock read after the answer.
                let after = now_ms();
                if tok.score > after && self.model.still_live(tok.id) {
                    self.violations.report_once(
                        &format!("verify {}", tok.member),
                        "no live token is ever removed or refused",
                        format!("verify said {e:?} at {after}: {}", describe()),
                    );
                } else {
                    self.stats.verified_rejected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(OpFailure::Auth(AuthError::Invalid(e))) => {
                self.violations.report(
                    "the auth path accepts its own tokens",
                    format!("verify: invalid: {e}: {}", describe()),
                );
                Ok(())
            }
            Err(e) => {
                self.failed("verify", started, &e);
                Err(e.to_string())
            }
        }
    }

    /// One login, request, logout and request again, for a user of its
    /// own: `Ok` when the auth path works end to end, the failure when Redis
    /// is not available to it. Wrong answers are violations.
    pub async fn probe(&self) -> Result<(), String> {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let user = format!("probe{}", n % 4);
        let service = self.service();
        let issued =
            bounded(service.issue(&user, Some(Duration::from_secs(60)), serde_json::Map::new()))
                .await
                .map_err(|e| format!("issue: {e}"))?;
        match bounded(service.verify(&issued.token)).await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => return Err(format!("verify: {e}")),
            Err(e) => {
                self.violations.report(
                    "a token verifies right after its login",
                    format!("user {user}: {e}"),
                );
                return Err(format!("verify: {e}"));
            }
        }
        match bounded(service.revoke(&issued.token)).await {
            Ok(true) => {}
            Ok(false) => self.violations.report(
                "a session exists right after its login",
                format!("user {user}: revoke found no session"),
            ),
            Err(e) => return Err(format!("revoke: {e}")),
        }
        match bounded(service.verify(&issued.token)).await {
            Err(OpFailure::Auth(AuthError::Revoked)) => Ok(()),
            Err(e) if e.is_unavailable() => Err(format!("verify after logout: {e}")),
            other => {
                self.violations.report(
                    "no revoked token ever verifies",
                    format!("user {user}: verify after an acknowledged logout: {other:?}"),
                );
                Err("verify after logout".to_owned())
            }
        }
    }

    /// A long-lived token outside the workers' users, issued now, for
    /// checks during a fault; `None` when the auth path is unavailable.
    pub async fn login(&self, user: &str) -> Option<Tok> {
        self.issue(user, LONG_TTL).await
    }

    /// Verifies `tok` once, returning what the service answered.
    pub async fn verify_raw(&self, tok: &Tok) -> Result<Claims, OpFailure> {
        bounded(self.service().verify(&tok.token)).await
    }

    /// Logs `tok` out once (the model told first, as the workers do),
    /// returning what the service answered.
    pub async fn logout_raw(&self, tok: &Tok) -> Result<(), OpFailure> {
        self.model.set_state(tok.id, TokState::Revoking);
        let answer = bounded(self.service().revoke(&tok.token)).await.map(drop);
        if answer.is_ok() {
            self.model
                .set_state(tok.id, TokState::Revoked(Instant::now()));
        }
        answer
    }

    /// Logs `user` out everywhere once (the model told first), returning
    /// what the service answered.
    pub async fn logout_everywhere_raw(&self, user: &str) -> Result<(), OpFailure> {
        let ids: Vec<u64> = self
            .model
            .tokens_of(user)
            .into_iter()
            .filter(|t| !matches!(t.state, TokState::Revoked(_)))
            .map(|t| t.id)
            .collect();
        for &id in &ids {
            self.model.set_state(id, TokState::Revoking);
        }
        let answer = bounded(self.service().revoke_all(user)).await.map(drop);
        if answer.is_ok() {
            let at = Instant::now();
            for id in ids {
                self.model.set_state(id, TokState::Revoked(at));
            }
        }
        answer
    }

    /// Issues a token for `user` once, returning what the service answered.
    pub async fn issue_raw(&self, user: &str) -> Result<(), OpFailure> {
        bounded(
            self.service()
                .issue(user, Some(Duration::from_secs(60)), serde_json::Map::new()),
        )
        .await
        .map(drop)
    }

    /// With the workers stopped: judges every token of the model once.
    /// Returns how many were judged.
    pub async fn final_check(&self) -> usize {
        let mut judged = 0;
        for tok in self.model.all() {
            // Settle what a fault left pending, then expect the outcome.
            if tok.state == TokState::Revoking {
                self.revoke(&tok).await;
            }
            if self.verify(tok.id).await.is_ok() {
                judged += 1;
            }
        }
        judged
    }
}

/// The member the auth module stores for `token` (`auth.member = "sha256"`).
pub fn member_of(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}
