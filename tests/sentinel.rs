//! Sentinel mode: the daemon finds the primary through a real sentinel and
//! follows a failover by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::sentinel::Sentinel;
use common::{count_members, free_port, run_sweeper, seed, wait_until, DaemonProcess, RedisServer};

#[test]
fn the_daemon_finds_the_primary_and_follows_a_failover() {
    let primary = RedisServer::start();
    let replica_of = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
    let sentinel = Sentinel::start(primary.port);
    wait_until(
        Duration::from_secs(15),
        "the sentinel to see the replica",
        || sentinel.replicas() == 1,
    );
    let sentinels = format!("redis://127.0.0.1:{}", sentinel.port);
    let env = [
        ("TOKEN_SWEEPER__REDIS__MODE", "sentinel"),
        ("TOKEN_SWEEPER__REDIS__SENTINELS", sentinels.as_str()),
        ("TOKEN_SWEEPER__REDIS__MASTER_NAME", "mymaster"),
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s"),
    ];
    // redis.url only gives the scheme and credentials in sentinel mode.
    let daemon = DaemonProcess::start("redis://ignored-host:1", &env, None);

    let mut p = primary.conn();
    seed(&mut p, "before", 20);
    wait_until(
        Duration::from_secs(10),
        "a sweep through the sentinel",
        || count_members(&mut p, "before").0 == 0,
    );

    sentinel.failover();
    wait_until(
        Duration::from_secs(30),
        "the replica to be promoted",
        || {
            sentinel
                .master()
                .is_some_and(|(_, port)| port == replica.port)
        },
    );
    let mut r = replica.conn();
    wait_until(
        Duration::from_secs(30),
        "the new primary to accept writes",
        || {
            redis::cmd("SET")
                .arg("probe")
                .arg("1")
                .query::<()>(&mut r)
                .is_ok()
        },
    );
    seed(&mut r, "after", 20);
    wait_until(Duration::from_secs(45), "sweeping the new primary", || {
        count_members(&mut r, "after").0 == 0
    });
    assert_eq!(count_members(&mut r, "after").1, 20, "live tokens kept");
    let _ = daemon;

    // The one-shot sweep finds the new primary too.
    let out = run_sweeper(
        &["sweep", "--json"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", "redis://x:1"),
            env[0],
            env[1],
            env[2],
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sentinel_settings_are_validated() {
    let out = run_sweeper(
        &["check-config"],
        &[("TOKEN_SWEEPER__REDIS__MODE", "sentinel")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("redis.sentinels: sentinel mode needs at least one sentinel URL"));
    let out = run_sweeper(
        &["check-config"],
        &[
            ("TOKEN_SWEEPER__REDIS__MODE", "sentinel"),
            (
                "TOKEN_SWEEPER__REDIS__SENTINELS",
                "redis://a:1, redis://b:2",
            ),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis.master_name:"));
    let out = run_sweeper(
        &["sweep"],
        &[
            ("TOKEN_SWEEPER__REDIS__MODE", "sentinel"),
            (
                "TOKEN_SWEEPER__REDIS__SENTINELS",
                &format!("redis://127.0.0.1:{}", free_port()),
            ),
            ("TOKEN_SWEEPER__REDIS__MASTER_NAME", "mymaster"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sentinel: no primary for \"mymaster\""),
        "{err}"
    );
}

/// Connections a sentinel has accepted so far.
fn connections_received(sentinel: &Sentinel) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut sentinel.conn().unwrap())
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The real primary with a replica, one honest sentinel, and two that name
/// the wrong server under the same master name: one the replica, one a port
/// where nothing listens.
struct LyingSentinels {
    primary: RedisServer,
    _replica: RedisServer,
    honest: Sentinel,
    names_the_replica: Sentinel,
    names_a_dead_port: Sentinel,
}

impl LyingSentinels {
    fn start() -> Self {
        let primary = RedisServer::start();
        let replica_of = primary.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
        let mut r = replica.conn();
        wait_until(Duration::from_secs(10), "the replica to sync", || {
            redis::cmd("ROLE")
                .query::<Vec<redis::Value>>(&mut r)
                .is_ok_and(|role| {
                    role.get(3) == Some(&redis::Value::BulkString(b"connected".to_vec()))
                })
        });
        Self {
            honest: Sentinel::start(primary.port),
            names_the_replica: Sentinel::start(replica.port),
            names_a_dead_port: Sentinel::start(free_port()),
            primary,
            _replica: replica,
        }
    }

    /// `redis.sentinels` with the liars first.
    fn liars_first(&self) -> String {
        [
            &self.names_a_dead_port,
            &self.names_the_replica,
            &self.honest,
        ]
        .map(|s| format!("redis://127.0.0.1:{}", s.port))
        .join(",")
    }
}

#[test]
fn sentinels_whose_answer_is_not_a_primary_are_passed_over() {
    let fleet = LyingSentinels::start();
    let sentinels = fleet.liars_first();
    let env = [
        ("TOKEN_SWEEPER__REDIS__URL", "redis://ignored-host:1"),
        ("TOKEN_SWEEPER__REDIS__MODE", "sentinel"),
        ("TOKEN_SWEEPER__REDIS__SENTINELS", sentinels.as_str()),
        ("TOKEN_SWEEPER__REDIS__MASTER_NAME", "mymaster"),
    ];
    let mut p = fleet.primary.conn();

    seed(&mut p, "once", 10);
    let out = run_sweeper(&["sweep", "--json"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["members_removed"], 10, "{report}");
    assert_eq!(count_members(&mut p, "once"), (0, 10));

    // The auth path finds the same primary.
    let mut auth_env = env.to_vec();
    auth_env.push((
        "TOKEN_SWEEPER__AUTH__SECRET",
        "a-secret-of-at-least-32-bytes-long!!",
    ));
    let issued = run_sweeper(&["tokens", "issue", "--user", "42"], &auth_env);
    assert_eq!(
        issued.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let sessions: i64 = redis::cmd("ZCARD").arg("42-tokens").query(&mut p).unwrap();
    assert_eq!(sessions, 1, "the session is on the primary");

    // And so does the daemon, sweep after sweep.
    let mut daemon_env = env[1..].to_vec();
    daemon_env.push(("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s"));
    let daemon = DaemonProcess::start("redis://ignored-host:1", &daemon_env, None);
    seed(&mut p, "daemon", 10);
    wait_until(Duration::from_secs(15), "the daemon to sweep", || {
        count_members(&mut p, "daemon").0 == 0
    });
    drop(daemon);
}

/// The sentinel that led to the primary is asked first the next time: a
/// dead or lying sentinel first in the list costs one detour, not one per
/// connection.
#[tokio::test]
async fn the_sentinel_that_answered_well_is_asked_first_next_time() {
    let fleet = LyingSentinels::start();
    let mut settings = token_sweeper::config::Settings::default().redis;
    settings.mode = token_sweeper::config::RedisMode::Sentinel;
    settings.master_name = Some("mymaster".to_owned());
    settings.sentinels = fleet
        .liars_first()
        .split(',')
        .map(|url| url.parse().unwrap())
        .collect();

    let first = token_sweeper::store::Connection::connect(&settings)
        .await
        .unwrap();
    assert_eq!(first.address(), format!("127.0.0.1:{}", fleet.primary.port));
    let asked_before = connections_received(&fleet.names_the_replica);
    let second = token_sweeper::store::Connection::connect(&settings)
        .await
        .unwrap();
    assert_eq!(second.address(), first.address());
    // One more: this test's own INFO.
    assert_eq!(
        connections_received(&fleet.names_the_replica),
        asked_before + 1,
        "the lying sentinel was not asked again"
    );
}

#[test]
fn when_no_sentinel_leads_to_a_primary_each_reason_is_named() {
    let fleet = LyingSentinels::start();
    let dead = free_port();
    let sentinels = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{},redis://user:sekrit@127.0.0.1:{dead}",
        fleet.names_a_dead_port.port, fleet.names_the_replica.port
    );
    let out = run_sweeper(
        &["sweep"],
        &[
            ("TOKEN_SWEEPER__REDIS__MODE", "sentinel"),
            ("TOKEN_SWEEPER__REDIS__SENTINELS", &sentinels),
            ("TOKEN_SWEEPER__REDIS__MASTER_NAME", "mymaster"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sentinel: no primary for \"mymaster\""),
        "{err}"
    );
    assert!(err.contains("is not a primary"), "the replica: {err}");
    assert!(err.contains("cannot connect"), "the dead ports: {err}");
    assert!(!err.contains("sekrit"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
