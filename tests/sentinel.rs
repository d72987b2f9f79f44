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
