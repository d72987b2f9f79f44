//! Fault injection: the real daemon sweeping every second and an auth
//! workload (through `TokenService`, in this process) against real
//! redis-servers, while faults are injected one after another: Redis killed
//! and restarted, paused, put to sleep, out of memory, permissions taken
//! away, connections killed, a network that delays, stalls, cuts and
//! refuses, a sentinel failover, a cluster primary killed.
//!
//! What must hold, checked all along by [`common::invariants`] and after
//! each fault here:
//! - no member whose score is in the future is ever removed (canary sets
//!   and the workload's live tokens, read against Redis `TIME`);
//! - no revoked token and no expired token ever verifies;
//! - after each fault ends, the daemon sweeps again within two periods, and
//!   `/readyz` and the metrics tell the truth at each step;
//! - the auth path works again within [`AUTH_RECOVERY`] of the fault's end,
//!   and every operation succeeds between faults;
//! - the daemon never exits on its own.
//!
//! `cargo test --test faults` runs each fault briefly. The soak mode cycles
//! through them for as long as asked and reports what it did:
//! `TOKEN_SWEEPER_SOAK_SECS=1800 cargo test --release --test faults -- --ignored soak --nocapture`.
//! `TOKEN_SWEEPER_FAULTS_SEED` fixes the workload's choices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{parse_nodes, RedisCluster};
use common::invariants::{check_round, Admin, Canaries, Checker, Target, Violations};
use common::proxy::Proxy;
use common::sentinel::{Sentinel, MASTER_NAME};
use common::workload::{unix_now, OpFailure, Workload};
use common::{http_get, user_args, wait_until, DaemonProcess, RedisServer};
use token_sweeper::auth::AuthError;
use token_sweeper::config::{RedisMode, RedisSettings, Secret, Settings};
use token_sweeper::store::key_slot;

/// The daemon's sweep period.
const PERIOD: Duration = Duration::from_secs(1);
/// On top of two periods: a tick's latency (the scheduler polls every
/// 500 ms), the sweep itself and the scrape.
const TICK_SLACK: Duration = Duration::from_secs(1);
/// How long after a fault the auth path may still fail.
const AUTH_RECOVERY: Duration = Duration::from_secs(5);
/// How long the suite watches the workload between faults.
const STEADY: Duration = Duration::from_millis(1500);
/// How long a fault with a duration lasts.
const HOLD: Duration = Duration::from_secs(3);

const SWEEPER_PASSWORD: &str = "sweeper-pw";
const AUTH_PASSWORD: &str = "auth-pw";
const JWT_SECRET: &str = "fault-suite-secret-of-at-least-32-bytes";

const OK: &str = "token_sweeper_sweeps_total{result=\"ok\"}";
const LAST_SUCCESS: &str = "token_sweeper_last_success_timestamp_seconds";
const REDIS_UP: &str = "token_sweeper_redis_up";

fn errors_of(kind: &str) -> String {
    format!("token_sweeper_errors_total{{kind=\"{kind}\"}}")
}

/// Arguments of every data node: AOF written before each reply (so a
/// SIGKILL loses nothing acknowledged), DEBUG from loopback, the policy an
/// allowlist needs, and the README's two ACL users.
fn node_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--enable-debug-command",
        "local",
        "--maxmemory-policy",
        "noeviction",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    args.extend(user_args("token-sweeper", SWEEPER_PASSWORD));
    args.extend(user_args("token-auth", AUTH_PASSWORD));
    args
}

/// The daemon's environment besides its Redis address. Full speed: the
/// invariants bound recovery to a few 1 s periods, and the adaptive
/// throttle, by design, spends a 250 ms first window and one round trip at
/// a time per sweep, which over the 50 ms proxy delay alone takes most of
/// that bound (its own behaviour under faults: tests/throttle.rs).
fn daemon_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TOKEN_SWEEPER__SWEEP__THROTTLE", "off"),
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", SWEEPER_PASSWORD),
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s"),
        ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "true"),
    ]
}

/// The auth path's settings, as the README's `token-auth` user.
fn auth_settings(redis: impl FnOnce(&mut RedisSettings)) -> Settings {
    let mut settings = Settings::default();
    settings.redis.username = Some("token-auth".to_owned());
    settings.redis.password = Some(Secret::new(AUTH_PASSWORD));
    settings.auth.secret = Some(Secret::new(JWT_SECRET));
    redis(&mut settings.redis);
    settings
}

/// Whether `text` says that a permission was missing (Redis' NOPERM code,
/// or its message "no permissions to run ...").
fn names_permission(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("noperm") || text.contains("permission")
}

fn seed() -> u64 {
    std::env::var("TOKEN_SWEEPER_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::try_from(common::workload::now_ms()).unwrap())
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// One `INFO <section>` field of the server on `port`.
fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    let mut conn = Admin::new(Target::Server(port));
    let info: String = conn.query(redis::cmd("INFO").arg(section)).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// Waits until the replica on `replica` has everything the primary on
/// `primary` had acknowledged; returns an instant such that every write
/// acknowledged before it is on the replica.
fn replicated_up_to_now(primary: u16, replica: u16) -> Instant {
    let from = Instant::now();
    let offset = |port, field| -> i64 {
        info_field(port, "replication", field)
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let target = offset(primary, "master_repl_offset");
    assert!(target >= 0, "no replication offset on 127.0.0.1:{primary}");
    wait_until(Duration::from_secs(10), "the replica to catch up", || {
        offset(replica, "slave_repl_offset") >= target
    });
    from
}

/// Whether the server on `port` answers `ROLE` with `role` (`master`, `slave`).
fn has_role(port: u16, role: &str) -> bool {
    let mut conn = Admin::new(Target::Server(port));
    conn.query::<Vec<redis::Value>>(&redis::cmd("ROLE"))
        .ok()
        .and_then(|r| match r.into_iter().next() {
            Some(redis::Value::BulkString(r)) => Some(r == role.as_bytes()),
            _ => None,
        })
        .unwrap_or(false)
}

/// How long each part took to come back after one fault.
struct Recovery {
    fault: String,
    daemon: Option<Duration>,
    auth: Option<Duration>,
    rebuilt: bool,
}

/// What every topology shares: the daemon, the workload and its model, the
/// canaries and the checker, and the record of violations.
struct Suite {
    violations: Arc<Violations>,
    workload: Arc<Workload>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    canaries: Arc<Canaries>,
    checker: Checker,
    admin: Admin,
    daemon: DaemonProcess,
    faults: BTreeMap<String, u64>,
    recoveries: Vec<Recovery>,
    notes: Vec<String>,
    started: Instant,
    // Last, so the workers' tasks end before anything they use is dropped.
    rt: tokio::runtime::Runtime,
}

impl Suite {
    /// Seeds the canaries, waits for the daemon's first sweep, starts the
    /// workload and the checker, and watches one steady window.
    fn start(
        target: Target,
        canary_keys: Vec<String>,
        daemon: DaemonProcess,
        settings: Settings,
    ) -> Self {
        let violations = Violations::new();
        let mut admin = Admin::new(target.clone());
        let canaries = Canaries::new(canary_keys);
        canaries.seed_long(&mut admin, 20);
        let deadline = Instant::now() + Duration::from_secs(15);
        while daemon.metric(OK) < 1.0 {
            assert!(
                Instant::now() < deadline,
                "no sweep within 15 s of the daemon's start: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let workload = rt.block_on(Workload::connect(settings, Arc::clone(&violations)));
        let seed = seed();
        eprintln!("workload seed {seed} (TOKEN_SWEEPER_FAULTS_SEED)");
        let workers = workload.spawn_workers(&rt, 3, seed);
        let checker = Checker::start(
            target,
            Arc::clone(&workload),
            Arc::clone(&canaries),
            Arc::clone(&violations),
            daemon.pid(),
        );
        let mut suite = Self {
            violations,
            workload,
            workers,
            canaries,
            checker,
            admin,
            daemon,
            faults: BTreeMap::new(),
            recoveries: Vec::new(),
            notes: Vec::new(),
            started: Instant::now(),
            rt,
        };
        std::thread::sleep(Duration::from_secs(1));
        suite.steady();
        suite
    }

    fn begin(&mut self, fault: &str) {
        *self.faults.entry(fault.to_owned()).or_default() += 1;
        self.violations.set_phase(format!("fault {fault}"));
    }

    fn note(&mut self, note: String) {
        eprintln!("  {note}");
        self.notes.push(note);
    }

    fn readyz(&self) -> (u16, String) {
        http_get(self.daemon.metrics_port, "/readyz")
            .map(|(code, body)| (code, body.trim().to_owned()))
            .unwrap_or((0, "no answer".to_owned()))
    }

    /// A counter, 0 when absent (a series appears with its first event).
    fn count(&self, series: &str) -> f64 {
        common::metric(&self.daemon.scrape(), series).unwrap_or(0.0)
    }

    /// The daemon's last log lines, for a report.
    fn log_tail(&self) -> String {
        let text = self.daemon.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(4)..].join("\n    ")
    }

    /// The daemon's log lines from `since` on.
    fn log_since(&self, since: chrono::DateTime<chrono::Utc>) -> String {
        self.daemon
            .log_text()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|e| {
                        chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str()?).ok()
                    })
                    .is_some_and(|t| t >= since)
            })
            .collect::<Vec<_>>()
            .join("\n    ")
    }

    /// Polls `check` until it holds or `within` passes; reports `invariant`
    /// with the last reason otherwise.
    fn expect_within(
        &mut self,
        within: Duration,
        invariant: &str,
        mut check: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let why = match check(self) {
                Ok(()) => return true,
                Err(why) => why,
            };
            if Instant::now() > deadline {
                let tail = self.log_tail();
                self.violations.report(
                    invariant,
                    format!("not within {within:?}: {why}; daemon log:\n    {tail}"),
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/readyz` 503 and `redis_up` 0: what the daemon must say while it
    /// cannot reach Redis.
    fn shows_redis_down(&mut self) -> Result<(), String> {
        let (code, body) = self.readyz();
        let up = self.daemon.metric(REDIS_UP);
        if code == 503 && up == 0.0 {
            Ok(())
        } else {
            Err(format!("/readyz {code} {body:?}, redis_up {up}"))
        }
    }

    /// Every `dead` member swept, a sweep finished after `since` (unix
    /// seconds), `/readyz` 200 and `redis_up` 1.
    fn shows_sweeping(&mut self, dead: &[(String, String)], since: f64) -> Result<(), String> {
        let left =
            Canaries::still_there(&mut self.admin, dead).ok_or("the harness cannot read Redis")?;
        let last = self.daemon.metric(LAST_SUCCESS);
        let (code, body) = self.readyz();
        let up = self.daemon.metric(REDIS_UP);
        if left.is_empty() && last >= since && code == 200 && up == 1.0 {
            Ok(())
        } else {
            Err(format!(
                "expired members left: {left:?}; last success {last:.3} vs {since:.3}; \
                 /readyz {code} {body:?}; redis_up {up}"
            ))
        }
    }

    /// After a fault that ended at `ended`: the daemon sweeps again within
    /// two periods and says so, the auth path works again, and then every
    /// operation succeeds for a while.
    fn recover(&mut self, fault: &str, ended: Instant) {
        self.violations.set_phase(format!("after {fault}"));
        // The auth path is probed alongside, so its recovery is timed even
        // while the daemon is still being waited for.
        let workload = Arc::clone(&self.workload);
        let auth_probe = self.rt.spawn(async move {
            loop {
                match workload.probe().await {
                    Ok(()) => return Ok(ended.elapsed()),
                    Err(e) if ended.elapsed() > AUTH_RECOVERY => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let since = unix_now() - ended.elapsed().as_secs_f64();
        let dead = self.canaries.seed_dead(&mut self.admin);
        let daemon_ok = self.expect_within(
            (2 * PERIOD + TICK_SLACK).saturating_sub(ended.elapsed()),
            "after a fault the daemon sweeps again within two periods, and /readyz and redis_up say so",
            |s| s.shows_sweeping(&dead, since),
        );
        let daemon = if daemon_ok {
            Some(ended.elapsed())
        } else {
            // Let it come back (or not) before the next fault, so that each
            // fault is judged on its own.
            let later = Instant::now() + Duration::from_secs(60);
            let mut back = None;
            while Instant::now() < later {
                if self.shows_sweeping(&dead, since).is_ok() {
                    back = Some(ended.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            self.note(format!(
                "{fault}: the daemon swept again only after {back:?} (None: not within 60 s)"
            ));
            back
        };

        let probed = self.rt.block_on(auth_probe).unwrap();
        let auth = probed.as_ref().ok().copied();
        let rebuilt = auth.is_none();
        if let Err(last) = probed {
            self.violations.report(
                "after a fault the auth path works again (TokenService reconnects)",
                format!("still failing {AUTH_RECOVERY:?} after the fault: {last}"),
            );
            // As an operator would: restart the application, so the next
            // fault is judged on its own.
            let rebuilt = self.rt.block_on(self.workload.rebuild());
            let probed = rebuilt.and_then(|()| self.rt.block_on(self.workload.probe()));
            if let Err(e) = probed {
                panic!("a freshly connected TokenService does not work after {fault}: {e}");
            }
        }
        eprintln!(
            "  {fault}: daemon sweeping again after {daemon:?}, auth path after {auth:?}{}",
            if rebuilt { " (service rebuilt)" } else { "" }
        );
        self.recoveries.push(Recovery {
            fault: fault.to_owned(),
            daemon,
            auth,
            rebuilt,
        });
        self.steady();
    }

    /// A window without faults: every auth operation succeeds, `/readyz` is 200.
    fn steady(&mut self) {
        self.violations.set_phase("steady");
        let from = Instant::now();
        std::thread::sleep(STEADY);
        let errors = self.workload.errors_between(from, Instant::now());
        if let Some(first) = errors.first() {
            self.violations.report(
                "between faults every auth operation succeeds",
                format!(
                    "{} failed in {STEADY:?}; the first, {:?} in: {} {}",
                    errors.len(),
                    first.started - from,
                    first.op,
                    first.error
                ),
            );
        }
        let (code, body) = self.readyz();
        if code != 200 {
            self.violations
                .report("between faults /readyz is 200", format!("{code} {body:?}"));
        }
    }

    /// Stops the workload, judges every token and canary once more, checks
    /// that the daemon still runs, prints what happened, and fails on any
    /// violation.
    /// Stops the workers, after their current operation.
    fn stop_workers(&mut self) {
        self.workload.stop();
        for worker in std::mem::take(&mut self.workers) {
            self.rt.block_on(worker).unwrap();
        }
    }

    /// Stops the workers and the checker.
    fn stop(&mut self) {
        self.stop_workers();
        self.checker.stop();
    }

    fn finish(mut self) {
        self.violations.set_phase("final check");
        self.stop_workers();
        let judged = self.rt.block_on(self.workload.final_check());
        self.checker.stop();
        self.admin.retry(|a| {
            check_round(
                a,
                &self.workload,
                &self.canaries,
                &self.violations,
                &self.checker.stats,
            )
        });
        if let Ok(Some(status)) = self.daemon.child.try_wait() {
            self.violations.report(
                "the daemon never exits on its own",
                format!("exited with {status}: {}", self.log_tail()),
            );
        }

        let mut report = format!(
            "{:.0} s, {} faults injected:",
            self.started.elapsed().as_secs_f64(),
            self.faults.values().sum::<u64>()
        );
        for (fault, n) in &self.faults {
            report += &format!(" {fault} x{n},");
        }
        report += &format!(
            "\nworkload: {}\nfinal check: {judged} tokens judged\n{}\ndaemon: {} ok sweeps",
            self.workload.stats.summary(),
            self.checker.stats.summary(),
            self.daemon.metric(OK)
        );
        // The slowest recovery of each fault, in the order first injected.
        let mut worst: Vec<(&str, Option<Duration>, Option<Duration>, usize)> = Vec::new();
        for r in &self.recoveries {
            let at = match worst.iter().position(|w| w.0 == r.fault) {
                Some(at) => at,
                None => {
                    worst.push((&r.fault, Some(Duration::ZERO), Some(Duration::ZERO), 0));
                    worst.len() - 1
                }
            };
            let w = &mut worst[at];
            w.1 = w.1.zip(r.daemon).map(|(a, b)| a.max(b));
            w.2 = w.2.zip(r.auth).map(|(a, b)| a.max(b));
            w.3 += usize::from(r.rebuilt);
        }
        let secs = |d: Option<Duration>| {
            d.map_or("never".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
        };
        report +=
            "\nslowest recovery after each fault (\"never\": not within 60 s for the daemon, \
             5 s for the auth path, which is then rebuilt):";
        for (fault, daemon, auth, rebuilt) in worst {
            report += &format!(
                "\n  {fault:<34} daemon sweeping again after {:>6}, auth path after {:>6}{}",
                secs(daemon),
                secs(auth),
                if rebuilt > 0 {
                    format!(" (service rebuilt {rebuilt}x)")
                } else {
                    String::new()
                }
            );
        }
        for note in self.notes.iter().take(20) {
            report += &format!("\n  note: {note}");
        }
        let lost = self.workload.model.lost();
        let logouts = lost.iter().filter(|l| l.starts_with("logout")).count();
        report += &format!(
            "\nacknowledged writes lost by failovers (asynchronous replication): {} logins, {logouts} logouts",
            lost.len() - logouts
        );
        for what in lost.iter().take(10) {
            report += &format!("\n  {what}");
        }
        let violations = self.violations.list();
        report += &format!("\nviolations: {}", violations.len());
        eprintln!("\n== fault suite report\n{report}");
        assert!(
            violations.is_empty(),
            "{} invariant violations:\n{}\n\n{report}",
            violations.len(),
            violations.join("\n")
        );
    }
}

/// The faults of a single Redis reached through the proxy.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `CLIENT KILL USER` of the sweeper's and the auth path's connections.
    ClientKill,
    /// `CLIENT PAUSE ... WRITE`.
    PauseWrites,
    /// `DEBUG SLEEP`: Redis answers nothing.
    DebugSleep,
    /// SIGKILL, down for a while, restarted with its AOF.
    RedisKill,
    /// `maxmemory` below usage, `noeviction`.
    OutOfMemory,
    /// A permission taken from the sweeper's ACL user, then given back.
    SweeperAcl(&'static str),
    /// A permission taken from the auth path's ACL user, then given back.
    AuthAcl(&'static str),
    /// 50 ms added each way.
    NetworkDelay,
    /// Nothing forwarded, connections kept open.
    NetworkStall,
    /// Every connection closed.
    NetworkCut,
    /// Every connection closed and new ones refused for a while.
    NetworkPartition,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Self::ClientKill => "client-kill".to_owned(),
            Self::PauseWrites => "client-pause-write".to_owned(),
            Self::DebugSleep => "debug-sleep".to_owned(),
            Self::RedisKill => "redis-sigkill-restart".to_owned(),
            Self::OutOfMemory => "maxmemory-noeviction".to_owned(),
            Self::SweeperAcl(p) => format!("acl-sweeper-minus-{p}"),
            Self::AuthAcl(p) => format!("acl-auth-minus-{p}"),
            Self::NetworkDelay => "proxy-delay-50ms".to_owned(),
            Self::NetworkStall => "proxy-stall".to_owned(),
            Self::NetworkCut => "proxy-cut".to_owned(),
            Self::NetworkPartition => "proxy-partition".to_owned(),
        }
    }
}

/// What CI runs, in order.
const CI_FAULTS: &[Fault] = &[
    Fault::ClientKill,
    Fault::PauseWrites,
    Fault::DebugSleep,
    Fault::RedisKill,
    Fault::OutOfMemory,
    Fault::SweeperAcl("zremrangebyscore"),
    Fault::SweeperAcl("zrevrangebyscore"),
    Fault::SweeperAcl("time"),
    Fault::AuthAcl("zscore"),
    Fault::NetworkDelay,
    Fault::NetworkStall,
    Fault::NetworkCut,
    Fault::NetworkPartition,
];

/// What the soak cycles through.
const SOAK_FAULTS: &[Fault] = &[
    Fault::ClientKill,
    Fault::PauseWrites,
    Fault::DebugSleep,
    Fault::RedisKill,
    Fault::OutOfMemory,
    Fault::SweeperAcl("zremrangebyscore"),
    Fault::SweeperAcl("zrevrangebyscore"),
    Fault::SweeperAcl("time"),
    Fault::SweeperAcl("scan"),
    Fault::AuthAcl("zscore"),
    Fault::AuthAcl("evalsha"),
    Fault::NetworkDelay,
    Fault::NetworkStall,
    Fault::NetworkCut,
    Fault::NetworkPartition,
];

/// One redis-server (AOF on), the daemon and the auth path reaching it
/// through a proxy, the harness reaching it directly.
struct Standalone {
    suite: Suite,
    proxy: Proxy,
    server: RedisServer,
}

impl Standalone {
    fn start() -> Self {
        let args = node_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = RedisServer::start_with(&args);
        // Ballast outside the sweep pattern, so that `maxmemory` can be set
        // below usage however much the sweeper frees.
        let _: () = redis::cmd("SET")
            .arg("ballast")
            .arg(vec![b'x'; 16 << 20])
            .query(&mut server.conn())
            .unwrap();
        let proxy = Proxy::start(server.port);
        let daemon = DaemonProcess::start(&proxy.url(), &daemon_env(), None);
        let url = proxy.url();
        let settings = auth_settings(|redis| redis.url = url.parse().unwrap());
        let suite = Suite::start(
            Target::Server(server.port),
            Canaries::default_keys(),
            daemon,
            settings,
        );
        Self {
            suite,
            proxy,
            server,
        }
    }

    fn inject(&mut self, fault: Fault) {
        let name = fault.name();
        self.suite.begin(&name);
        let ended = match fault {
            Fault::ClientKill => self.client_kill(),
            Fault::PauseWrites => self.pause_writes(),
            Fault::DebugSleep => self.debug_sleep(),
            Fault::RedisKill => self.redis_kill(),
            Fault::OutOfMemory => self.out_of_memory(),
            Fault::SweeperAcl(permission) => self.sweeper_acl(permission),
            Fault::AuthAcl(permission) => self.auth_acl(permission),
            Fault::NetworkDelay => self.network_delay(),
            Fault::NetworkStall => self.network_stall(),
            Fault::NetworkCut => self.network_cut(),
            Fault::NetworkPartition => self.network_partition(),
        };
        self.suite.recover(&name, ended);
    }

    fn admin(&mut self, cmd: &redis::Cmd) -> redis::Value {
        self.suite.admin.retry(|a| a.query(cmd))
    }

    fn client_kill(&mut self) -> Instant {
        let mut killed = Vec::new();
        for user in ["token-sweeper", "token-auth"] {
            let n = self.admin(redis::cmd("CLIENT").arg("KILL").arg("USER").arg(user));
            killed.push(format!("{user}: {n:?}"));
        }
        self.suite
            .note(format!("client-kill: connections killed {killed:?}"));
        Instant::now()
    }

    fn pause_writes(&mut self) -> Instant {
        let connection_errors = self.suite.count(&errors_of("connection"));
        // Redis ends the pause by itself after 10 s, should the test die.
        self.admin(redis::cmd("CLIENT").arg("PAUSE").arg(10_000).arg("WRITE"));
        std::thread::sleep(HOLD);
        let after = self.suite.count(&errors_of("connection"));
        self.admin(redis::cmd("CLIENT").arg("UNPAUSE"));
        if after > connection_errors {
            self.suite.violations.report(
                "errors_total says what failed: a write pause is not a connection error",
                format!(
                    "kind=\"connection\" went {connection_errors} -> {after} while Redis answered"
                ),
            );
        }
        Instant::now()
    }

    fn debug_sleep(&mut self) -> Instant {
        let mut conn = self.server.conn();
        let sleeper = std::thread::spawn(move || {
            let _: () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(HOLD.as_secs())
                .query(&mut conn)
                .unwrap();
        });
        self.suite.expect_within(
            Duration::from_millis(2800),
            "a Redis that does not answer shows in /readyz (503) and redis_up (0)",
            Suite::shows_redis_down,
        );
        sleeper.join().unwrap();
        Instant::now()
    }

    fn redis_kill(&mut self) -> Instant {
        self.server.kill();
        let killed = Instant::now();
        self.suite.expect_within(
            HOLD,
            "Redis down shows in /readyz (503) and redis_up (0) within a few seconds",
            Suite::shows_redis_down,
        );
        sleep_until(killed + HOLD);
        self.server.start_again();
        Instant::now()
    }

    fn out_of_memory(&mut self) -> Instant {
        let tok = self
            .suite
            .rt
            .block_on(self.suite.workload.login("oom-probe"))
            .expect("a login works before the fault");
        let everywhere_tok = self
            .suite
            .rt
            .block_on(self.suite.workload.login("oom-probe-2"))
            .expect("a login works before the fault");
        let dead = self.suite.canaries.seed_dead(&mut self.suite.admin);
        let connection_errors = self.suite.count(&errors_of("connection"));
        let used: i64 = info_field(self.server.port, "memory", "used_memory")
            .and_then(|v| v.parse().ok())
            .expect("used_memory");
        let limit = used - (8 << 20);
        self.admin(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(limit));
        let since = unix_now();
        let started = Instant::now();

        // The fault is real: Redis refuses a plain write.
        let write: redis::RedisResult<()> = self
            .suite
            .admin
            .query(redis::cmd("SET").arg("oom-check").arg(1));
        assert!(
            matches!(&write, Err(e) if e.code() == Some("OOM")),
            "maxmemory {limit} below used {used} did not refuse a write: {write:?}"
        );
        // A login is refused whole (its script has no allow-oom flag), and
        // leaves nothing behind.
        let login = self
            .suite
            .rt
            .block_on(self.suite.workload.issue_raw("oom-check"));
        let left_behind: i64 = self
            .suite
            .admin
            .query(redis::cmd("EXISTS").arg("oom-check-tokens"))
            .unwrap_or(-1);
        if login.is_ok() || left_behind != 0 {
            self.suite.violations.report(
                "a login is refused while Redis is out of memory, and writes nothing",
                format!("the login answered {login:?}; its key exists: {left_behind}"),
            );
        }
        // Requests are still authenticated: ZSCORE needs no memory.
        if let Err(e) = self.suite.rt.block_on(self.suite.workload.verify_raw(&tok)) {
            self.suite.violations.report(
                "requests are still authenticated while Redis is out of memory",
                format!("verify of a live token: {e}"),
            );
        }
        // Logging out only deletes: it works, and the token stops verifying.
        let logout = self.suite.rt.block_on(self.suite.workload.logout_raw(&tok));
        let after = self.suite.rt.block_on(self.suite.workload.verify_raw(&tok));
        if logout.is_err() || after.is_ok() {
            self.suite.violations.report(
                "a logout works while Redis is out of memory",
                format!("logout answered {logout:?}; verify after it answered {after:?}"),
            );
        }
        let everywhere = self
            .suite
            .rt
            .block_on(self.suite.workload.logout_everywhere_raw("oom-probe-2"));
        let after = self
            .suite
            .rt
            .block_on(self.suite.workload.verify_raw(&everywhere_tok));
        if everywhere.is_err() || after.is_ok() {
            self.suite.violations.report(
                "log out everywhere works while Redis is out of memory",
                format!("revoke-all answered {everywhere:?}; verify after it answered {after:?}"),
            );
        }
        // Deleting is exactly what an out-of-memory Redis needs.
        self.suite.expect_within(
            2 * PERIOD + TICK_SLACK,
            "the daemon keeps sweeping while Redis is out of memory",
            |s| s.shows_sweeping(&dead, since),
        );
        sleep_until(started + HOLD);
        let after = self.suite.count(&errors_of("connection"));
        if after > connection_errors {
            self.suite.violations.report(
                "errors_total says what failed: an OOM refusal is not a connection error",
                format!(
                    "kind=\"connection\" went {connection_errors} -> {after} while Redis answered"
                ),
            );
        }
        self.admin(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0));
        Instant::now()
    }

    /// Whether the daemon is between sweeps (its last lifecycle line is not
    /// "sweep started"): a sweep that starts after this reads Redis after it.
    fn daemon_idle(&self) -> bool {
        let last = self.suite.daemon.logs().into_iter().rev().find_map(|e| {
            let message = e["message"].as_str()?.to_owned();
            if message == "sweep started" {
                Some(true)
            } else if message == "sweep finished" || message.starts_with("sweep failed") {
                Some(false)
            } else {
                None
            }
        });
        last != Some(true)
    }

    fn sweeper_acl(&mut self, permission: &str) -> Instant {
        let before = (
            self.suite.count(&errors_of("connection")),
            self.suite.count(&errors_of("noperm")),
        );
        self.admin(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("token-sweeper")
                .arg(format!("-{permission}")),
        );
        let started = Instant::now();
        // A sweep may have passed its checks just before the change and log
        // "sweep started" only after it, so "between sweeps" alone can be
        // read before that sweep begins removing. A sweep refused for the
        // missing permission comes after any such sweep (sweeps never
        // overlap): from then on, expired members seeded must stay for the
        // whole fault.
        wait_until(
            Duration::from_secs(10),
            "a sweep refused for the permission, and the daemon between sweeps",
            || self.suite.count(&errors_of("noperm")) > before.1 && self.daemon_idle(),
        );
        let dead = self.suite.canaries.seed_dead(&mut self.suite.admin);
        // For the whole fault: nothing deleted, and by two periods /readyz
        // says why.
        let mut shown = Err("not asked yet".to_owned());
        let mut deleted = None;
        while started.elapsed() < HOLD {
            if deleted.is_none() {
                deleted = Canaries::still_there(&mut self.suite.admin, &dead)
                    .filter(|left| left.len() < dead.len());
            }
            if shown.is_err() {
                let (code, body) = self.suite.readyz();
                let up = self.suite.daemon.metric(REDIS_UP);
                shown = if code == 503 && names_permission(&body) && up == 1.0 {
                    Ok(())
                } else {
                    Err(format!("/readyz {code} {body:?}, redis_up {up}"))
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(left) = deleted {
            self.suite.violations.report(
                "a sweep that cannot run one of its steps deletes nothing (fail closed)",
                format!(
                    "without +{permission}, expired members were removed: {dead:?} seeded, {left:?} left; daemon log:\n    {}",
                    self.suite.log_tail()
                ),
            );
        }
        if let Err(why) = shown {
            self.suite.violations.report(
                "a missing permission shows in /readyz (503, naming NOPERM) while redis_up stays 1",
                format!(
                    "not within {HOLD:?}: {why}; daemon log:\n    {}",
                    self.suite.log_tail()
                ),
            );
        }
        let after = (
            self.suite.count(&errors_of("connection")),
            self.suite.count(&errors_of("noperm")),
        );
        if after.0 > before.0 || after.1 <= before.1 {
            self.suite.violations.report(
                "errors_total says what failed: a missing permission counts as kind=\"noperm\", not \"connection\"",
                format!("(connection, noperm) went {before:?} -> {after:?}"),
            );
        }
        self.admin(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("token-sweeper")
                .arg(format!("+{permission}")),
        );
        Instant::now()
    }

    fn auth_acl(&mut self, permission: &str) -> Instant {
        let tok = self
            .suite
            .rt
            .block_on(self.suite.workload.login("acl-probe"))
            .expect("a login works before the fault");
        self.admin(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("token-auth")
                .arg(format!("-{permission}")),
        );
        let started = Instant::now();
        let since = unix_now();
        let dead = self.suite.canaries.seed_dead(&mut self.suite.admin);
        let answer = match permission {
            "zscore" => self
                .suite
                .rt
                .block_on(self.suite.workload.verify_raw(&tok))
                .map(drop),
            _ => self
                .suite
                .rt
                .block_on(self.suite.workload.issue_raw("acl-check")),
        };
        let names_cause = matches!(&answer,
            Err(OpFailure::Auth(AuthError::Redis(e))) if names_permission(&e.to_string()));
        if !names_cause {
            self.suite.violations.report(
                "an operation the auth path cannot perform is an error naming the cause, never a verdict",
                format!("without +{permission}: {answer:?}"),
            );
        }
        self.suite.expect_within(
            2 * PERIOD + TICK_SLACK,
            "a fault of the auth path does not stop the daemon",
            |s| s.shows_sweeping(&dead, since),
        );
        sleep_until(started + HOLD);
        self.admin(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("token-auth")
                .arg(format!("+{permission}")),
        );
        Instant::now()
    }

    fn network_delay(&mut self) -> Instant {
        self.proxy.set_delay(Duration::from_millis(50));
        let started = Instant::now();
        let since = unix_now();
        let dead = self.suite.canaries.seed_dead(&mut self.suite.admin);
        self.suite.expect_within(
            HOLD,
            "a slow network does not stop the daemon, and /readyz says it is ready",
            |s| s.shows_sweeping(&dead, since),
        );
        sleep_until(started + HOLD);
        self.proxy.set_delay(Duration::ZERO);
        Instant::now()
    }

    fn network_stall(&mut self) -> Instant {
        self.proxy.stall();
        let started = Instant::now();
        self.suite.expect_within(
            HOLD,
            "an unreachable Redis shows in /readyz (503) and redis_up (0)",
            Suite::shows_redis_down,
        );
        sleep_until(started + HOLD);
        self.proxy.resume();
        Instant::now()
    }

    fn network_cut(&mut self) -> Instant {
        let cut = self.proxy.cut_all();
        assert!(cut >= 1, "the proxy had no connection to cut");
        self.suite
            .note(format!("proxy-cut: {cut} connections closed"));
        Instant::now()
    }

    fn network_partition(&mut self) -> Instant {
        self.proxy.set_refusing(true);
        self.proxy.cut_all();
        let started = Instant::now();
        self.suite.expect_within(
            HOLD,
            "an unreachable Redis shows in /readyz (503) and redis_up (0)",
            Suite::shows_redis_down,
        );
        sleep_until(started + HOLD);
        self.proxy.set_refusing(false);
        Instant::now()
    }
}

#[test]
fn standalone_faults_one_after_another() {
    let mut setup = Standalone::start();
    for &fault in CI_FAULTS {
        setup.inject(fault);
    }
    let stats = setup.proxy.stats();
    setup.suite.note(format!("proxy: {stats:?}"));
    setup.suite.finish();
}

/// The suite's checks can fail: a member removed early, a logout undone and
/// the daemon gone are each reported.
#[test]
fn the_checks_catch_what_they_guard_against() {
    let mut setup = Standalone::start();
    let suite = &mut setup.suite;
    std::thread::sleep(Duration::from_secs(1));
    suite.violations.set_phase("sabotage");

    // What a sweeper whose cutoff ran 10 minutes ahead would do: edge
    // canaries and short-lived tokens go before their time.
    let now = suite.admin.retry(Admin::time_ms);
    let mut keys = suite.canaries.keys().to_vec();
    keys.extend((0..3).flat_map(|w| [format!("w{w}a-tokens"), format!("w{w}b-tokens")]));
    for key in &keys {
        let _: i64 = suite.admin.retry(|a| {
            a.query(
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(now + 600_000),
            )
        });
    }

    // A logout undone behind the auth path's back.
    let mut undone = None;
    wait_until(
        Duration::from_secs(20),
        "a revoked, unexpired token",
        || {
            undone = suite.workload.model.all().into_iter().find(|t| {
                matches!(t.state, common::workload::TokState::Revoked(_))
                    && t.score > common::workload::now_ms() + 2_000
            });
            undone.is_some()
        },
    );
    let undone = undone.unwrap();
    let _: i64 = suite.admin.retry(|a| {
        a.query(
            redis::cmd("ZADD")
                .arg(&undone.key)
                .arg(undone.score)
                .arg(&undone.member),
        )
    });
    let _ = suite.rt.block_on(suite.workload.verify(undone.id));

    // The daemon gone.
    suite.daemon.child.kill().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    suite.stop();

    let seen = suite.violations.list();
    for expected in [
        "no member whose score is in the future is ever removed: canary",
        "no member whose score is in the future is ever removed: w",
        "no revoked token ever verifies",
        "the daemon never exits on its own",
    ] {
        let (invariant, subject) = expected.split_once(": ").unwrap_or((expected, ""));
        assert!(
            seen.iter()
                .any(|v| v.contains(&format!("{invariant}: {subject}"))),
            "not reported: {expected}\n{}",
            seen.join("\n")
        );
    }
}

/// `TOKEN_SWEEPER_SOAK_SECS=1800 cargo test --release --test faults -- --ignored soak --nocapture`
#[test]
#[ignore = "soak: set TOKEN_SWEEPER_SOAK_SECS and run with --ignored"]
fn soak() {
    let secs: u64 = std::env::var("TOKEN_SWEEPER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let mut setup = Standalone::start();
    let deadline = Instant::now() + Duration::from_secs(secs);
    for &fault in SOAK_FAULTS.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        setup.inject(fault);
    }
    let stats = setup.proxy.stats();
    setup.suite.note(format!("proxy: {stats:?}"));
    setup.suite.finish();
}

#[test]
fn sentinel_failovers() {
    let args = node_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = RedisServer::start_with(&args);
    let first_port = first.port.to_string();
    let mut replica_args = args.clone();
    replica_args.extend(["--replicaof", "127.0.0.1", &first_port]);
    let second = RedisServer::start_with(&replica_args);
    let mut nodes = [first, second];
    // Sentinel mode confirms the primary with ROLE: the README's users must
    // be able to run it.
    let mut findings = Vec::new();
    for user in ["token-sweeper", "token-auth"] {
        let dry: String = redis::cmd("ACL")
            .arg("DRYRUN")
            .arg(user)
            .arg("ROLE")
            .query(&mut nodes[0].conn())
            .unwrap();
        if dry != "OK" {
            findings.push(format!("{user}: ACL DRYRUN ROLE: {dry}"));
        }
    }
    let sentinel = Sentinel::start(nodes[0].port);
    wait_until(
        Duration::from_secs(15),
        "the sentinel to see the replica",
        || {
            sentinel.replicas() == 1
                && info_field(nodes[1].port, "replication", "master_link_status").as_deref()
                    == Some("up")
        },
    );
    let sentinels = sentinel.url();
    let mut env = daemon_env();
    env.extend([
        ("TOKEN_SWEEPER__REDIS__MODE", "sentinel"),
        ("TOKEN_SWEEPER__REDIS__SENTINELS", sentinels.as_str()),
        ("TOKEN_SWEEPER__REDIS__MASTER_NAME", MASTER_NAME),
    ]);
    // redis.url only gives the scheme in sentinel mode.
    let daemon = DaemonProcess::start("redis://ignored-host:1", &env, None);
    let settings = auth_settings(|redis| {
        redis.mode = RedisMode::Sentinel;
        redis.sentinels = vec![sentinels.parse().unwrap()];
        redis.master_name = Some(MASTER_NAME.to_owned());
    });
    let mut suite = Suite::start(
        Target::Sentinel(sentinel.port),
        Canaries::default_keys(),
        daemon,
        settings,
    );
    for finding in findings {
        suite.violations.report(
            "the README's ACL users can run what sentinel mode needs (ROLE, to confirm the primary)",
            finding,
        );
    }

    // 1. The primary is killed; the sentinel promotes the replica.
    let name = "sentinel-primary-sigkill";
    suite.begin(name);
    suite.canaries.pause();
    let from = replicated_up_to_now(nodes[0].port, nodes[1].port);
    let window = suite.workload.model.open_window(from, None);
    nodes[0].kill();
    suite.workload.model.close_window(window, Instant::now());
    suite.expect_within(
        Duration::from_secs(3),
        "a primary down shows in /readyz (503) and redis_up (0)",
        Suite::shows_redis_down,
    );
    let promoted = nodes[1].port;
    wait_until(Duration::from_secs(30), "the replica promoted", || {
        sentinel.master().is_some_and(|(_, p)| p == promoted) && has_role(promoted, "master")
    });
    let ended = Instant::now();
    suite.workload.model.settle(window, &mut suite.admin);
    suite.canaries.resume();
    suite.recover(name, ended);

    // The killed server comes back (with its AOF) and the sentinel makes it
    // a replica of the new primary.
    suite.violations.set_phase("old primary rejoining");
    nodes[0].start_again();
    let rejoined = nodes[0].port;
    wait_until(
        Duration::from_secs(60),
        "the old primary to rejoin as a replica",
        || {
            has_role(rejoined, "slave")
                && info_field(rejoined, "replication", "master_port") == Some(promoted.to_string())
                && info_field(rejoined, "replication", "master_link_status").as_deref()
                    == Some("up")
                && sentinel.replicas() == 1
        },
    );
    suite.steady();

    // 2. SENTINEL FAILOVER back: the old primary stays up, and takes writes
    // until the sentinel demotes it.
    let name = "sentinel-failover-command";
    suite.begin(name);
    suite.canaries.pause();
    let from = replicated_up_to_now(promoted, rejoined);
    let window = suite.workload.model.open_window(from, None);
    sentinel.failover();
    wait_until(Duration::from_secs(60), "the failover back", || {
        sentinel.master().is_some_and(|(_, p)| p == rejoined)
            && has_role(rejoined, "master")
            && has_role(promoted, "slave")
    });
    let ended = Instant::now();
    suite.workload.model.close_window(window, ended);
    suite.workload.model.settle(window, &mut suite.admin);
    suite.canaries.resume();
    suite.recover(name, ended);
    suite.finish();
}

/// `"0-5460"` or `"93"` as a range.
fn slot_range(text: &str) -> RangeInclusive<u16> {
    match text.split_once('-') {
        Some((a, b)) => a.parse().unwrap()..=b.parse().unwrap(),
        None => {
            let slot = text.parse().unwrap();
            slot..=slot
        }
    }
}

/// The port of the replica of the primary on `port`.
fn replica_of(port: u16) -> u16 {
    let line = info_field(port, "replication", "slave0").expect("the primary has a replica");
    line.split(',')
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("slave0 names a port")
}

fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn cluster_primary_killed_and_replica_promoted() {
    let args = node_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = RedisCluster::start_with(3, 1, &args);
    // Two canary sets on each primary, hash-tagged into its slots.
    let mut canary_keys = Vec::new();
    for primary in cluster.primaries() {
        let ranges: Vec<RangeInclusive<u16>> =
            primary.slots.iter().map(|s| slot_range(s)).collect();
        canary_keys.extend(
            (0u32..)
                .filter(|n| {
                    let slot = key_slot(n.to_string().as_bytes());
                    ranges.iter().any(|r| r.contains(&slot))
                })
                .take(2)
                .map(|n| format!("canary{{{n}}}-tokens")),
        );
    }
    let daemon = cluster.daemon(&daemon_env());
    let urls: Vec<String> = cluster.nodes.iter().map(RedisServer::url).collect();
    let settings = auth_settings(|redis| {
        redis.mode = RedisMode::Cluster;
        redis.url = urls[0].parse().unwrap();
        redis.nodes = urls.iter().map(|url| url.parse().unwrap()).collect();
    });
    let ports = cluster.nodes.iter().map(|n| n.port).collect();
    let mut suite = Suite::start(Target::Cluster(ports), canary_keys, daemon, settings);

    // The first primary is killed, its replica promoted; then the promoted
    // one is killed, and the first (restarted, now its replica) takes over.
    for round in 1..=2 {
        let name = format!("cluster-primary-sigkill-{round}");
        suite.begin(&name);
        let victim = cluster.primaries()[0].clone();
        let victim_port = port_of(&victim.address);
        let replica = replica_of(victim_port);
        let slots: Vec<RangeInclusive<u16>> = victim.slots.iter().map(|s| slot_range(s)).collect();
        suite.canaries.pause();
        let from = replicated_up_to_now(victim_port, replica);
        let window = suite.workload.model.open_window(from, Some(slots));
        let unhappy = |s: &Suite| {
            s.count("token_sweeper_sweeps_total{result=\"incomplete\"}")
                + s.count("token_sweeper_sweeps_total{result=\"error\"}")
        };
        let unhappy_before = unhappy(&suite);
        let killed_at = chrono::Utc::now();
        cluster.node(&victim.address).kill();
        suite.workload.model.close_window(window, Instant::now());
        // A sweep that ran into the dead primary must say so when it ends
        // (/readyz 503 naming it, or an incomplete sweep counted), even if
        // it ends after the promotion: it read the topology before.
        let tell = |suite: &Suite| {
            let (code, body) = suite.readyz();
            if code == 503 && body.contains(&victim.address) {
                Some(format!("/readyz 503 {body:?}"))
            } else if unhappy(suite) > unhappy_before {
                Some("an incomplete or failed sweep counted".to_owned())
            } else {
                None
            }
        };
        let mut told = None;
        let promoted = format!("127.0.0.1:{replica}");
        wait_until(Duration::from_secs(30), "the replica promoted", || {
            told = told.take().or_else(|| tell(&suite));
            let topology = parse_nodes(&common::cluster::cluster_nodes(
                cluster.nodes.iter().find(|n| n.port == replica).unwrap(),
            ));
            topology
                .iter()
                .any(|n| n.address == promoted && n.primary && !n.slots.is_empty())
        });
        cluster.wait_healthy(3);
        let ended = Instant::now();
        while told.is_none() && ended.elapsed() < 2 * PERIOD + TICK_SLACK {
            told = tell(&suite);
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(how) = told {
            suite.note(format!("{name}: while {} was down: {how}", victim.address));
        } else {
            suite.violations.report(
                "a primary that cannot be swept shows in /readyz or sweeps_total",
                format!(
                    "{} was down until its replica took over, and neither /readyz named it nor an incomplete sweep was counted; the daemon's log since:\n    {}",
                    victim.address,
                    suite.log_since(killed_at)
                ),
            );
        }
        suite.workload.model.settle(window, &mut suite.admin);
        suite.canaries.resume();
        suite.recover(&name, ended);

        suite.violations.set_phase("killed primary rejoining");
        cluster.node(&victim.address).start_again();
        cluster.wait_healthy(3);
        wait_until(
            Duration::from_secs(30),
            "the old primary to replicate",
            || {
                info_field(victim_port, "replication", "master_link_status").as_deref()
                    == Some("up")
            },
        );
        suite.steady();
    }
    suite.finish();
}
