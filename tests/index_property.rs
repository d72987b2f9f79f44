//! The due index's property test: random interleavings (seeded and
//! reproducible: `INDEX_PROPERTY_SEED=<n>`; the seed is printed) of logins
//! (`TokenService::issue`), writes by other code following the data
//! contract (`ZADD` + `ZADD LT` on the index key, millisecond expiries),
//! logouts, revoke-alls, index sweeps, full scans, a login racing an index
//! sweep, and clock advances.
//!
//! The clock is Redis's own (`TIME`, which the sweep and the login path both
//! read; redis-server cannot run under libfaketime): the clock advances are
//! real sleeps, and the tokens live 1 to 3 s (logins: whole seconds, the
//! least `issue` allows) or 150 to 2500 ms (contract writes).
//!
//! Checked after every step: no member the test added and did not revoke
//! has vanished while its expiry was after the step's cutoff (a sweep's
//! reported cutoff; for other steps Redis `TIME` after the step, above any
//! cutoff of the step). After the run, a full cycle: Redis time past every
//! expiry, then one index sweep, and no set may hold a member at or below
//! that sweep's cutoff. Each user also holds a one-hour session (from the
//! start, and again after a revoke-all), so its set outlives its short
//! sessions: the key's TTL, which writers move to the latest expiry,
//! cannot clear them in the sweep's place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{redis_now_ms, settings_for, RedisServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use token_sweeper::auth::{IssuedToken, TokenService};
use token_sweeper::config::{AuthSettings, Secret, Settings, ThrottleMode};
use token_sweeper::due_index::{index_key, DEFAULT_PREFIX};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{self, SweepMode, SweepProgress, SweepReport};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";
const USERS: u32 = 8;
const STEPS: usize = 90;

/// A member the test put in a set.
struct Tracked {
    key: String,
    member: String,
    score: f64,
    /// The token, for a logout (logins only).
    token: Option<String>,
    /// Removed on purpose (logout, revoke-all): may vanish.
    revoked: bool,
}

struct World {
    settings: Settings,
    service: TokenService,
    conn: redis::Connection,
    tracked: Vec<Tracked>,
    log: Vec<String>,
}

impl World {
    fn members(&mut self, key: &str) -> BTreeMap<String, f64> {
        redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query::<Vec<(String, f64)>>(&mut self.conn)
            .unwrap()
            .into_iter()
            .collect()
    }

    async fn index_sweep(&self) -> SweepReport {
        let conn = Connection::connect(&self.settings.redis).await.unwrap();
        let progress = SweepProgress::default();
        sweep::sweep_index(
            &conn,
            &self.settings.sweep,
            SweepMode::Remove,
            &progress,
            &CancellationToken::new(),
            true,
        )
        .await
        .unwrap()
    }

    async fn full_scan(&self) -> SweepReport {
        common::sweep_with(&self.settings, SweepMode::Remove)
            .await
            .unwrap()
    }

    /// A login of `user`; tracks the member it added.
    async fn login(&mut self, user: u32, ttl_secs: u64) {
        let issued = self
            .service
            .issue(
                &user.to_string(),
                Some(Duration::from_secs(ttl_secs)),
                Default::default(),
            )
            .await
            .unwrap();
        self.track_login(user, issued);
    }

    /// The member a login stored (`auth.member = "sha256"`, the default),
    /// scored by its `exp` in milliseconds.
    fn track_login(&mut self, user: u32, issued: IssuedToken) {
        self.tracked.push(Tracked {
            key: format!("{user}-tokens"),
            member: hex::encode(Sha256::digest(issued.token.as_bytes())),
            score: (issued.claims.exp * 1000) as f64,
            token: Some(issued.token),
            revoked: false,
        });
    }

    /// Another writer, as the README's data contract says: the token, the
    /// index entry and the key's expiry (`NX`, then only ever later) in
    /// one MULTI/EXEC.
    fn contract_write(&mut self, user: u32, ttl_ms: i64, n: usize) {
        let key = format!("{user}-tokens");
        let score = redis_now_ms(&mut self.conn) + ttl_ms;
        let member = format!("contract-{n}");
        let _: () = redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(score)
            .arg(&member)
            .ignore()
            .cmd("ZADD")
            .arg(index_key(DEFAULT_PREFIX, key.as_bytes()))
            .arg("LT")
            .arg(score)
            .arg(&key)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(score)
            .arg("NX")
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(score)
            .arg("GT")
            .ignore()
            .query(&mut self.conn)
            .unwrap();
        self.tracked.push(Tracked {
            key,
            member,
            score: score as f64,
            token: None,
            revoked: false,
        });
    }

    /// Every tracked member not revoked whose expiry is after `cutoff` is
    /// still in its set, or its whole set is gone by the key's TTL (which
    /// writers move to the latest expiry: so every member of it expired by
    /// Redis time, read after the sets).
    fn check_live(&mut self, cutoff: f64, step: &str) {
        let keys: BTreeSet<String> = self.tracked.iter().map(|t| t.key.clone()).collect();
        let sets: BTreeMap<String, BTreeMap<String, f64>> = keys
            .into_iter()
            .map(|key| {
                let members = self.members(&key);
                (key, members)
            })
            .collect();
        let after = redis_now_ms(&mut self.conn) as f64;
        for t in self
            .tracked
            .iter()
            .filter(|t| !t.revoked && t.score > cutoff)
        {
            let set = &sets[&t.key];
            let gone_by_ttl = set.is_empty() && t.score <= after;
            assert!(
                set.contains_key(&t.member) || gone_by_ttl,
                "live member {} of {} (expiry {}) vanished at step {step}, cutoff {cutoff}, \
                 Redis time after {after}; steps so far: {:?}",
                t.member,
                t.key,
                t.score,
                self.log
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_never_remove_a_live_member_and_leave_nothing_expired() {
    let seed: u64 = std::env::var("INDEX_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("INDEX_PROPERTY_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let server = RedisServer::start();
    let mut settings = settings_for(&server);
    settings.sweep.due_index.enabled = true;
    // The throttle's pauses are not under test here, only slow.
    settings.sweep.throttle = ThrottleMode::Off;
    settings.auth = AuthSettings {
        secret: Some(Secret::new(SECRET)),
        ..AuthSettings::default()
    };
    let service = TokenService::connect(&settings).await.unwrap();
    let mut world = World {
        settings,
        service,
        conn: server.conn(),
        tracked: Vec::new(),
        log: Vec::new(),
    };
    // A long session per user keeps each set alive past its short ones, so
    // that the key's TTL cannot clear them in the sweep's place.
    for user in 0..USERS {
        world.login(user, 3600).await;
    }
    let started = Instant::now();
    for step in 0..STEPS {
        let user = rng.random_range(0..USERS);
        let choice = rng.random_range(0..100);
        let mut cutoff = None;
        let name = match choice {
            0..=24 => {
                let ttl = rng.random_range(1..=3);
                world.login(user, ttl).await;
                format!("login {user} {ttl}s")
            }
            25..=39 => {
                let ttl = rng.random_range(150..=2500);
                world.contract_write(user, ttl, step);
                format!("write {user} {ttl}ms")
            }
            40..=47 => {
                let live: Vec<usize> = (0..world.tracked.len())
                    .filter(|&i| !world.tracked[i].revoked && world.tracked[i].token.is_some())
                    .collect();
                if live.is_empty() {
                    "logout (none)".to_owned()
                } else {
                    let i = live[rng.random_range(0..live.len())];
                    let token = world.tracked[i].token.clone().unwrap();
                    world.service.revoke(&token).await.unwrap();
                    world.tracked[i].revoked = true;
                    format!("logout {}", world.tracked[i].key)
                }
            }
            48..=51 => {
                world.service.revoke_all(&user.to_string()).await.unwrap();
                let key = format!("{user}-tokens");
                for t in world.tracked.iter_mut().filter(|t| t.key == key) {
                    t.revoked = true;
                }
                // And back, with a long session again.
                world.login(user, 3600).await;
                format!("revoke-all {user}")
            }
            52..=69 => {
                cutoff = Some(world.index_sweep().await.cutoff);
                "index sweep".to_owned()
            }
            70..=74 => {
                let report = world.full_scan().await;
                // Every writer here keeps the index: a full scan finds no
                // entry to add or lower (what the IndexNotMaintained alert
                // relies on).
                assert_eq!(
                    report.counts.index_entries_repaired, 0,
                    "seed {seed}: {report:?}; steps: {:?}",
                    world.log
                );
                cutoff = Some(report.cutoff);
                "full scan".to_owned()
            }
            75..=81 => {
                // A login racing an index sweep of the same keys.
                let id = user.to_string();
                let (report, issued) = tokio::join!(
                    world.index_sweep(),
                    world
                        .service
                        .issue(&id, Some(Duration::from_secs(1)), Default::default())
                );
                world.track_login(user, issued.unwrap());
                // The login removes its user's expired members by its own,
                // later, clock: the step's cutoff is Redis time after it.
                assert!(report.counts.errors == 0, "{report:?}");
                format!("race {user}")
            }
            _ => {
                let ms = rng.random_range(50..=700);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("sleep {ms}ms")
            }
        };
        world.log.push(name.clone());
        // Without a sweep's own cutoff: Redis time now, above any cutoff
        // of the step (a login removes its user's expired members).
        // Checked before the step's check reads the sets.
        let cutoff = match cutoff {
            Some(cutoff) => cutoff as f64,
            None => redis_now_ms(&mut world.conn) as f64,
        };
        world.check_live(cutoff, &name);
    }
    // The full cycle: past every expiry, then one index sweep.
    // The one-hour sessions stay: past every short one's expiry.
    let long = (redis_now_ms(&mut world.conn) + 600_000) as f64;
    let last = world
        .tracked
        .iter()
        .map(|t| t.score)
        .filter(|&score| score < long)
        .fold(0.0, f64::max);
    loop {
        let now = redis_now_ms(&mut world.conn) as f64;
        if now > last + 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis((last - now) as u64 + 20)).await;
    }
    let report = world.index_sweep().await;
    let cutoff = report.cutoff as f64;
    assert!(cutoff >= last, "{cutoff} < {last}");
    let mut left = Vec::new();
    for user in 0..USERS {
        let key = format!("{user}-tokens");
        for (member, score) in world.members(&key) {
            if score <= cutoff {
                left.push(format!("{key} {member} {score}"));
            }
        }
    }
    assert!(
        left.is_empty(),
        "seed {seed}: expired members left after a full cycle: {left:?}; steps: {:?}",
        world.log
    );
    // The long sessions are all still there.
    world.check_live(cutoff, "the full cycle");
    let removed = world.tracked.iter().filter(|t| !t.revoked).count();
    println!(
        "seed {seed}: {STEPS} steps, {} members tracked ({removed} not revoked), {:.1}s",
        world.tracked.len(),
        started.elapsed().as_secs_f64()
    );
}
