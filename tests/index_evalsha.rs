//! The index sweep sends its script by `EVALSHA`, falls back to `EVAL` on
//! `NOSCRIPT`, and the README's ACL for index mode (the sweeper's line plus
//! the index selector) is exactly enough: without `evalsha` (or `eval`) the
//! sweep is refused before anything changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{redis_now_ms, settings_for, RedisServer};
use redis::Commands;
use token_sweeper::config::{Settings, ThrottleMode};
use token_sweeper::due_index::{index_key, index_key_of_slot, key_slot, DEFAULT_PREFIX};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{
    self, rebuild_index, RebuildOptions, SweepBy, SweepError, SweepMode, SweepProgress, SweepReport,
};
use tokio_util::sync::CancellationToken;

fn indexed(server: &RedisServer) -> Settings {
    let mut settings = settings_for(server);
    settings.sweep.due_index.enabled = true;
    settings
}

/// `users` sets `{prefix}{n}-tokens`, one expired and one live member
/// each, and their entries at the expired one.
fn seed(conn: &mut redis::Connection, prefix: &str, users: usize) {
    let now = redis_now_ms(conn);
    for user in 0..users {
        let key = format!("{prefix}{user}-tokens");
        let _: () = conn
            .zadd_multiple(&key, &[(now - 1000, "old"), (now + 3_600_000, "new")])
            .unwrap();
        let _: () = conn
            .zadd(index_key(DEFAULT_PREFIX, key.as_bytes()), &key, now - 1000)
            .unwrap();
    }
}

fn members(conn: &mut redis::Connection, prefix: &str, users: usize) -> u64 {
    (0..users)
        .map(|user| {
            conn.zcard::<_, u64>(format!("{prefix}{user}-tokens"))
                .unwrap()
        })
        .sum()
}

/// `calls` and `failed_calls` of `command` in `INFO commandstats`.
fn calls(conn: &mut redis::Connection, command: &str) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let Some(line) = info
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
    else {
        return (0, 0);
    };
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map_or(0, |v| v.parse().unwrap())
    };
    (field("calls"), field("failed_calls"))
}

async fn index_sweep(settings: &Settings) -> Result<SweepReport, SweepError> {
    let conn = Connection::connect(&settings.redis).await.unwrap();
    sweep::sweep_index(
        &conn,
        &settings.sweep,
        SweepMode::Remove,
        &SweepProgress::default(),
        &CancellationToken::new(),
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_sends_evalsha_and_falls_back_to_eval_when_the_cache_was_flushed() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    seed(&mut conn, "a", 20);
    let settings = indexed(&server);
    let redis = Connection::connect(&settings.redis).await.unwrap();
    let nodes = redis.primaries().await.unwrap();
    let progress = SweepProgress::default();
    let stop = CancellationToken::new();
    let prepared = sweep::prepare_by(
        &redis,
        &nodes,
        &settings.sweep,
        SweepMode::Remove,
        &progress,
        &stop,
        None,
        SweepBy::Index {
            read_size: &BTreeSet::new(),
        },
    )
    .await
    .unwrap();
    // The checks cached the script (their EVAL probe); a restart or a
    // failover to a node that never saw it, between the checks and the
    // sweep, is this.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let report = prepared.run().await.unwrap();
    assert_eq!(report.counts.members_removed, 20, "{report:?}");
    assert_eq!(report.counts.errors, 0, "{report:?}");
    assert_eq!(members(&mut conn, "a", 20), 20);
    let (_, sha_failed) = calls(&mut conn, "evalsha");
    let (eval, eval_failed) = calls(&mut conn, "eval");
    assert!(sha_failed >= 1, "the first EVALSHA answered NOSCRIPT");
    assert_eq!(
        (eval, eval_failed),
        (sha_failed, 0),
        "each went again as EVAL, once"
    );

    // Cached now: the next sweep sends EVALSHA only (the probe's EVAL aside).
    seed(&mut conn, "b", 20);
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let report = index_sweep(&settings).await.unwrap();
    assert_eq!(report.counts.members_removed, 20, "{report:?}");
    let (sha, sha_failed) = calls(&mut conn, "evalsha");
    assert!(sha >= 2 && sha_failed == 0, "{sha} {sha_failed}");
    assert_eq!(calls(&mut conn, "eval"), (1, 0), "the permission probe's");
}

/// The selector the README adds to the sweeper's ACL line for index mode.
fn readme_index_selector() -> String {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("`\"(~*-tokens ~token-sweeper:due:*"))
        .expect("README has the index mode selector");
    line.trim_start_matches("`\"")
        .split("\"`")
        .next()
        .unwrap()
        .to_owned()
}

/// The README's sweeper user plus its index selector, the selector minus
/// `without` (a selector's commands are its own: the root's do not count).
fn index_user(server: &RedisServer, without: &[&str]) -> Settings {
    index_user_with(server, without, &[])
}

/// [`index_user`] with `extra` selectors besides.
fn index_user_with(server: &RedisServer, without: &[&str], extra: &[String]) -> Settings {
    let mut rules = common::readme_acl("token-sweeper");
    let mut selector = readme_index_selector();
    for permission in without {
        let granted = format!(" +{permission} ");
        assert!(selector.contains(&granted), "{selector}");
        selector = selector.replace(&granted, " ");
    }
    rules.push(selector);
    rules.extend(extra.iter().cloned());
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("token-sweeper").arg("reset");
    for rule in rules.into_iter().skip(3) {
        cmd.arg(if rule.starts_with('>') {
            ">pw".to_owned()
        } else {
            rule
        });
    }
    let _: () = cmd.query(&mut server.conn()).unwrap();
    let mut settings = indexed(server);
    settings.redis.url = format!("redis://token-sweeper:pw@127.0.0.1:{}", server.port)
        .parse()
        .unwrap();
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_command_of_the_sweep_the_permission_probe_refuses_before_anything_changes() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    seed(&mut conn, "z", 5);
    // The due read and each key's next expiry, then per key: ZCARD, ZADD
    // or ZREM (the entry). (ZREMRANGEBYSCORE on the sets is the full
    // scan's, granted by the line itself.)
    for missing in ["zrangebyscore", "zcard", "zadd", "zrem"] {
        let settings = index_user(&server, &[missing]);
        let redis = Connection::connect(&settings.redis).await.unwrap();
        // Not reading the index size, whose ZCARD would be refused first.
        let swept = sweep::sweep_index(
            &redis,
            &settings.sweep,
            SweepMode::Remove,
            &SweepProgress::default(),
            &CancellationToken::new(),
            false,
        )
        .await;
        let err = match swept {
            Err(err) => err,
            Ok(report) => panic!("without {missing} the sweep ran: {report:?}"),
        };
        assert!(err.to_string().contains("permission"), "{missing}: {err}");
        assert_eq!(members(&mut conn, "z", 5), 10, "{missing}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_is_enough_and_without_evalsha_nothing_changes() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    seed(&mut conn, "u", 5);
    for missing in ["evalsha", "eval"] {
        let settings = index_user(&server, &[missing]);
        let err = index_sweep(&settings).await.unwrap_err();
        assert!(err.to_string().contains("permission"), "{missing}: {err}");
        assert_eq!(members(&mut conn, "u", 5), 10, "{missing}");
    }
    let settings = index_user(&server, &[]);
    let report = index_sweep(&settings).await.unwrap();
    assert_eq!(report.counts.members_removed, 5, "{report:?}");
    assert_eq!(members(&mut conn, "u", 5), 5);
}

/// A group that fails midway inside a packed call (its index key refuses
/// ZADD to this user, after the removal): the call's other group is
/// swept, the failure is counted and named, the node is not finished, the
/// failed key's entry stays due (early, never late), and nothing live
/// goes. (From a review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_failing_midway_in_a_packed_call_is_reported_and_leaves_the_node_unfinished() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    // Two keys of two slots; the probe runs on the lower slot's.
    let (mut first, mut second) = ("{ta}u-tokens", "{tb}u-tokens");
    if key_slot(second.as_bytes()) < key_slot(first.as_bytes()) {
        (first, second) = (second, first);
    }
    for key in [first, second] {
        let _: () = conn
            .zadd_multiple(key, &[(now - 60_000, "old"), (now + 3_600_000, "new")])
            .unwrap();
        let _: () = conn
            .zadd(index_key(DEFAULT_PREFIX, key.as_bytes()), key, now - 60_000)
            .unwrap();
    }
    let first_index = index_key_of_slot(DEFAULT_PREFIX, key_slot(first.as_bytes()));
    let second_index = index_key(DEFAULT_PREFIX, second.as_bytes());
    // ZADD on the index granted for the probe's slot only.
    let mut settings = index_user_with(&server, &["zadd"], &[format!("(~{first_index} +zadd)")]);
    settings.sweep.throttle = ThrottleMode::Off;
    let report = index_sweep(&settings).await.unwrap();
    // Both expired members went (the second's before its refused ZADD).
    assert_eq!(report.counts.members_removed, 2, "{report:?}");
    assert_eq!(report.counts.errors, 1, "{report:?}");
    assert!(!report.nodes[0].finished, "{report:?}");
    let first_error = report.first_error.clone().unwrap_or_default();
    assert!(first_error.contains(&second_index), "{first_error}");
    for key in [first, second] {
        let left: Vec<String> = conn.zrange(key, 0, -1).unwrap();
        assert_eq!(left, ["new"], "{key}");
    }
    // The failed key's entry: still due (early), not dropped (late).
    let entry: Option<f64> = conn.zscore(&second_index, second).unwrap();
    assert_eq!(entry, Some((now - 60_000) as f64));
    let entry: Option<f64> = conn
        .zscore(index_key(DEFAULT_PREFIX, first.as_bytes()), first)
        .unwrap();
    assert_eq!(entry, Some((now + 3_600_000) as f64));
}

/// The README's lines are enough for `index rebuild` and its resume: the
/// saved state (GET, SET) and the run's mark (EVAL, EVALSHA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_is_enough_for_a_rebuild_and_its_resume() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    for user in 0..300 {
        let _: () = conn
            .zadd(format!("r{user}-tokens"), "live", now + 3_600_000)
            .unwrap();
    }
    let mut settings = index_user(&server, &[]);
    settings.sweep.scan_count = 50;
    let redis = Connection::connect(&settings.redis).await.unwrap();
    let stop = CancellationToken::new();
    let first = RebuildOptions {
        max_keys: Some(100),
        ..RebuildOptions::default()
    };
    let partial = rebuild_index(&redis, &settings.sweep, &first, &stop)
        .await
        .unwrap();
    assert!(
        !partial.complete && partial.nodes[0].error.is_none(),
        "{partial:?}"
    );
    let resume = RebuildOptions {
        resume: true,
        ..RebuildOptions::default()
    };
    let report = rebuild_index(&redis, &settings.sweep, &resume, &stop)
        .await
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert_ne!(report.nodes[0].resumed_from, 0, "{report:?}");
    assert_eq!(partial.entries_lowered + report.entries_lowered, 300);
}

/// Index entries of `users` sets `{prefix}{n}-tokens` at or below `score`:
/// due ones.
fn due_entries(conn: &mut redis::Connection, prefix: &str, users: usize, score: i64) -> usize {
    (0..users)
        .filter(|user| {
            let key = format!("{prefix}{user}-tokens");
            let entry: Option<f64> = conn
                .zscore(index_key(DEFAULT_PREFIX, key.as_bytes()), &key)
                .unwrap();
            entry.is_some_and(|entry| entry <= score as f64)
        })
        .count()
}

/// Seeds 300 users `{prefix}{n}-tokens`, resets the command stats and
/// runs an index sweep at full speed (the adaptive throttle's pieces, a
/// pipeline each, would hold fewer keys than a call may); checks it
/// removed exactly the expired members and moved every entry.
async fn sweep_300_at_full_speed(
    server: &RedisServer,
    conn: &mut redis::Connection,
    prefix: &str,
) -> SweepReport {
    seed(conn, prefix, 300);
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(conn).unwrap();
    let mut settings = indexed(server);
    settings.sweep.throttle = ThrottleMode::Off;
    let report = index_sweep(&settings).await.unwrap();
    assert_eq!(report.counts.members_removed, 300, "{report:?}");
    assert_eq!(report.counts.index_entries_moved, 300, "{report:?}");
    assert_eq!(report.counts.errors, 0, "{report:?}");
    assert_eq!(members(conn, prefix, 300), 300);
    let now = redis_now_ms(conn);
    assert_eq!(due_entries(conn, prefix, 300, now), 0);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_takes_the_due_keys_of_many_slots_per_call() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let report = sweep_300_at_full_speed(&server, &mut conn, "p").await;
    // The size of every slot's index key, not only of those the checks
    // read (the unit guard's 64 keys come from the first few reads).
    let index = report.index.as_ref().expect("an index report");
    assert_eq!(index.index_size, Some(300), "{report:?}");
    // ~300 slots with due keys, read 256 slots at a time (64 reads of a
    // few due keys each): one call per read (and the permission probe's),
    // not one per slot.
    let slots: std::collections::BTreeSet<u16> = (0..300)
        .map(|user| token_sweeper::due_index::key_slot(format!("p{user}-tokens").as_bytes()))
        .collect();
    let (sha, sha_failed) = calls(&mut conn, "evalsha");
    assert!(slots.len() > 250, "{}", slots.len());
    assert!(sha <= 65 && sha_failed == 0, "{sha} {sha_failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_keys_of_several_slots_in_a_script_is_swept_one_slot_per_call() {
    // A cluster node that serves every slot, taken for a single server
    // (as behind a proxy): it answers CROSSSLOT to a script over keys of
    // several slots, without running it.
    let bus = common::free_port().to_string();
    let server = RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
    ]);
    let mut conn = server.conn();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query(&mut conn)
        .unwrap();
    common::wait_until(
        std::time::Duration::from_secs(10),
        "cluster_state:ok",
        || {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap();
            info.contains("cluster_state:ok")
        },
    );
    let report = sweep_300_at_full_speed(&server, &mut conn, "q").await;
    assert!(report.nodes.iter().all(|node| node.finished), "{report:?}");
    // Refused as packed once, then one call per slot with due keys.
    let slots: std::collections::BTreeSet<u16> = (0..300)
        .map(|user| token_sweeper::due_index::key_slot(format!("q{user}-tokens").as_bytes()))
        .collect();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    assert!(rejected(&info, "evalsha") > 0, "{info}");
    let (sha, _) = calls(&mut conn, "evalsha");
    assert!(
        sha >= slots.len() as u64,
        "{sha} calls for {} slots",
        slots.len()
    );
}

/// `rejected_calls` of `command` in `INFO commandstats` text.
fn rejected(info: &str, command: &str) -> u64 {
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .and_then(|line| {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix("rejected_calls="))
        })
        .map_or(0, |v| v.parse().unwrap())
}
