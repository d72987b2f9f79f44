//! Redis Cluster: the sweep, the auth module, resharding, failover and
//! several daemons, against local clusters of real redis-server processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::{begin_migration, migrate_keys, migrate_slot, slot_of, RedisCluster};
use common::{redis_now_ms, run_sweeper, wait_until, DaemonProcess};
use redis::Commands;
use token_sweeper::auth::{AuthError, TokenService};
use token_sweeper::config::{AuthSettings, RedisMode, ScoreUnit, Secret};
use token_sweeper::store::{Connection, Reconnecting};
use token_sweeper::sweep::{
    check_units, sweep_keys, sweep_nodes, Check, Expired, SweepError, SweepMode, SweepProgress,
};

const HOUR_MS: i64 = 3_600_000;

/// Keys spread over every slot range: plain user ids, hash-tagged ids
/// (`{42}-tokens`, the documented Cluster form), and several users sharing
/// one tag (all in one slot).
fn user_keys(users: usize) -> Vec<String> {
    (0..users)
        .map(|n| match n % 3 {
            0 => format!("user{n}-tokens"),
            1 => format!("{{{n}}}-tokens"),
            _ => format!("{{team{}}}:user{n}-tokens", n % 7),
        })
        .collect()
}

/// Two expired and two live members in every key; returns Redis "now" (ms).
fn seed(cluster: &RedisCluster, keys: &[String]) -> i64 {
    let mut conn = cluster.conn();
    let now = redis_now_ms(&mut cluster.nodes[0].conn());
    for chunk in keys.chunks(500) {
        let mut pipe = redis::cluster::cluster_pipe();
        for key in chunk {
            pipe.cmd("ZADD")
                .arg(key)
                .arg(now - HOUR_MS)
                .arg("expired-1")
                .arg(now - 1_000)
                .arg("expired-2")
                .arg(now + HOUR_MS)
                .arg("live-1")
                .arg(now + 48 * HOUR_MS)
                .arg("live-2")
                .ignore();
        }
        let () = pipe.query(&mut conn).unwrap();
    }
    now
}

/// (expired, live) members left over `keys`, read through the cluster.
fn left(cluster: &RedisCluster, keys: &[String]) -> (usize, usize) {
    let mut conn = cluster.conn();
    let mut expired = 0;
    let mut live = 0;
    for key in keys {
        let members: Vec<String> = conn.zrange(key, 0, -1).unwrap();
        expired += members.iter().filter(|m| m.starts_with("expired")).count();
        live += members.iter().filter(|m| m.starts_with("live")).count();
    }
    (expired, live)
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn sweep_json(cluster: &RedisCluster, extra: &[(&'static str, &str)]) -> serde_json::Value {
    let env = cluster.env();
    let mut env = env_refs(&env);
    env.extend_from_slice(extra);
    let out = run_sweeper(&["sweep", "--json"], &env);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: exit {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report
}

#[test]
fn one_sweep_removes_exactly_the_expired_members_on_every_primary() {
    let mut cluster = RedisCluster::start(3, 0);
    let keys = user_keys(3000);
    seed(&cluster, &keys);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for primary in &primaries {
        let on_node = cluster.keys_on(&primary.address, "*-tokens").len();
        assert!(
            on_node > 500,
            "{} holds only {on_node} keys",
            primary.address
        );
    }
    // A non-token key and a token-named key of the wrong type on some node.
    let mut conn = cluster.conn();
    let _: () = conn.set("session-cache", "x").unwrap();
    let _: () = conn.set("{7}:legacy-tokens", "not a zset").unwrap();

    let report = sweep_json(&cluster, &[]);
    assert_eq!(report["keys_scanned"], 3000, "{report}");
    assert_eq!(report["keys_changed"], 3000, "{report}");
    assert_eq!(report["members_removed"], 6000, "{report}");
    assert_eq!(
        report["skipped_wrong_type"], 0,
        "SCAN TYPE zset skips strings"
    );
    assert_eq!(left(&cluster, &keys), (0, 6000));

    // Per node: every primary was swept to the end, and the per-node
    // numbers add up to what each node holds.
    let nodes = report["nodes"].as_array().unwrap();
    let addresses: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    let expected: Vec<&str> = primaries.iter().map(|p| p.address.as_str()).collect();
    assert_eq!(addresses, expected);
    for node in nodes {
        assert_eq!(node["finished"], true, "{node}");
        let held = cluster
            .keys_on(node["node"].as_str().unwrap(), "*-tokens")
            .into_iter()
            .filter(|key| key != "{7}:legacy-tokens")
            .count();
        assert_eq!(node["keys_scanned"], held as u64, "{node}");
    }
    assert_eq!(report["unfinished_nodes"], serde_json::json!([]));
}

#[test]
fn dry_run_counts_on_every_primary_and_changes_nothing() {
    let cluster = RedisCluster::start(3, 0);
    let keys = user_keys(900);
    seed(&cluster, &keys);
    let env = cluster.env();
    let mut env = env_refs(&env);
    env.push(("TOKEN_SWEEPER__SWEEP__MAX_PARALLEL_NODES", "1"));
    let out = run_sweeper(&["sweep", "--dry-run", "--json"], &env);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["members_removed"], 1800);
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(left(&cluster, &keys), (1800, 1800));

    let out = run_sweeper(&["sweep", "--json"], &env);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["members_removed"], 1800, "one node at a time");
    assert_eq!(left(&cluster, &keys), (0, 1800));
}

#[test]
fn the_unit_guard_of_any_primary_stops_the_sweep_before_any_deletion() {
    let mut cluster = RedisCluster::start(3, 0);
    let keys = user_keys(600);
    let now = seed(&cluster, &keys);
    // One primary's sets hold seconds, not milliseconds: the last node in
    // address order, so the other nodes' guards pass first.
    let last = cluster.primaries().pop().unwrap();
    let mut c = cluster.conn();
    for key in cluster.keys_on(&last.address, "*-tokens") {
        let _: () = c.del(&key).unwrap();
        let _: () = c.zadd(&key, "seconds", now / 1000 + 3600).unwrap();
    }

    let env = cluster.env();
    let mut env = env_refs(&env);
    env.push(("TOKEN_SWEEPER__SWEEP__MAX_PARALLEL_NODES", "1"));
    let out = run_sweeper(&["sweep"], &env);

    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unit guard"), "{stderr}");
    let (expired, _) = left(&cluster, &keys);
    let seeded_expired = 2 * keys.len() - 2 * cluster.keys_on(&last.address, "*-tokens").len();
    assert_eq!(expired, seeded_expired, "nothing deleted anywhere");
}

fn hs256() -> AuthSettings {
    AuthSettings {
        secret: Some(Secret::new("a-test-secret-that-is-32-bytes-long!!")),
        ..AuthSettings::default()
    }
}

#[tokio::test]
async fn the_auth_module_works_unchanged_on_a_cluster() {
    let mut cluster = RedisCluster::start(3, 0);
    let mut settings = cluster.settings();
    // The documented Cluster form: the user id is the hash tag.
    settings.auth = AuthSettings {
        key_template: "{{user}}-tokens".to_owned(),
        ..hs256()
    };
    let service = TokenService::connect(&settings).await.unwrap();
    let claims = serde_json::Map::new();

    // Enough users to land on every primary.
    let mut tokens = BTreeMap::new();
    for user in 0..60 {
        let user = format!("u{user}");
        let a = service.issue(&user, None, claims.clone()).await.unwrap();
        let b = service.issue(&user, None, claims.clone()).await.unwrap();
        tokens.insert(user, (a, b));
    }
    let mut c = cluster.conn();
    let mut nodes_used = BTreeSet::new();
    for primary in cluster.primaries() {
        if !cluster.keys_on(&primary.address, "{u*}-tokens").is_empty() {
            nodes_used.insert(primary.address);
        }
    }
    assert_eq!(nodes_used.len(), 3, "users on every primary");

    for (user, (a, b)) in &tokens {
        assert_eq!(&service.verify(&a.token).await.unwrap().sub, user);
        service.revoke(&a.token).await.unwrap();
        assert!(matches!(
            service.verify(&a.token).await,
            Err(AuthError::Revoked)
        ));
        assert_eq!(service.list(user).await.unwrap().len(), 1);
        assert_eq!(service.revoke_all(user).await.unwrap(), 1);
        assert!(matches!(
            service.verify(&b.token).await,
            Err(AuthError::Revoked)
        ));
        let exists: bool = c.exists(format!("{{{user}}}-tokens")).unwrap();
        assert!(!exists);
    }
}

/// The slot of the primary `address` that holds the most `*-tokens` keys,
/// with those keys.
fn busiest_slot(cluster: &mut RedisCluster, address: &str) -> (u16, Vec<String>) {
    let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for key in cluster.keys_on(address, "*-tokens") {
        by_slot
            .entry(slot_of(&mut cluster.nodes[0].conn(), &key))
            .or_default()
            .push(key);
    }
    let busiest = by_slot
        .into_iter()
        .max_by_key(|(_, keys)| keys.len())
        .unwrap();
    assert!(busiest.1.len() >= 2, "a slot with several keys");
    busiest
}

/// Half-migrates the busiest slot of the primary `from` to the primary
/// `to`: the slot stays MIGRATING/IMPORTING, the first half of its keys are
/// on `to` (`from` answers ASK for them), the rest still on `from`. Returns
/// the slot's keys and how many moved.
fn half_migrate(cluster: &mut RedisCluster, from: &str, to: &str) -> (Vec<String>, usize) {
    let (slot, keys) = busiest_slot(cluster, from);
    begin_migration(cluster, slot, from, to);
    let moved = keys.len() / 2;
    migrate_keys(cluster, from, to, &keys[..moved]);
    (keys, moved)
}

#[test]
fn a_slot_migration_during_a_sweep_removes_nothing_live_and_the_next_sweep_finishes() {
    let mut cluster = RedisCluster::start(3, 0);
    let mut keys = user_keys(6000);
    // 1500 users in one slot, so that migrating it takes a while.
    let hot: Vec<String> = (0..1500).map(|n| format!("{{hot}}:u{n}-tokens")).collect();
    keys.extend(hot.iter().cloned());
    seed(&cluster, &keys);
    let slot = slot_of(&mut cluster.nodes[0].conn(), "{hot}");
    let primaries = cluster.primaries();
    let owner =
        |address: &str, cluster: &mut RedisCluster| !cluster.keys_on(address, "{hot}*").is_empty();
    let from = primaries
        .iter()
        .find(|p| owner(&p.address, &mut cluster))
        .unwrap()
        .address
        .clone();
    let to = primaries
        .iter()
        .find(|p| p.address != from)
        .unwrap()
        .address
        .clone();

    // A paced sweep (about 2.5 s per primary) in the background...
    let env = cluster.env();
    let mut env = env_refs(&env);
    env.push(("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "1000"));
    env.push(("TOKEN_SWEEPER__SWEEP__BATCH_SIZE", "50"));
    let sweep = std::thread::scope(|scope| {
        let sweeping = scope.spawn(|| run_sweeper(&["sweep", "--json"], &env));
        // ... while the hot slot moves.
        std::thread::sleep(Duration::from_millis(300));
        migrate_slot(&mut cluster, slot, &from, &to);
        assert!(
            !sweeping.is_finished(),
            "the migration must overlap the sweep"
        );
        sweeping.join().unwrap()
    });
    let first: serde_json::Value = serde_json::from_slice(&sweep.stdout).unwrap();

    let total_expired = 2 * keys.len();
    let (expired_after_first, live) = left(&cluster, &keys);
    assert_eq!(live, 2 * keys.len(), "no live member removed: {first}");
    assert_eq!(
        first["members_removed"].as_u64().unwrap() as usize,
        total_expired - expired_after_first,
        "the report counts each removal once: {first}"
    );
    let unfinished: BTreeSet<&str> = first["unfinished_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        unfinished,
        BTreeSet::from([from.as_str(), to.as_str()]),
        "the nodes whose slots moved are named: {first}"
    );
    assert_eq!(sweep.status.code(), Some(1), "an incomplete sweep exits 1");

    let second = sweep_json(&cluster, &[]);
    assert_eq!(
        second["unfinished_nodes"],
        serde_json::json!([]),
        "{second}"
    );
    assert_eq!(left(&cluster, &keys), (0, 2 * keys.len()));
    assert_eq!(
        first["members_removed"].as_u64().unwrap() + second["members_removed"].as_u64().unwrap(),
        total_expired as u64,
        "every expired member counted exactly once over the two sweeps"
    );
}

#[test]
fn a_killed_primary_is_replaced_by_its_replica_and_the_daemon_keeps_sweeping() {
    let mut cluster = RedisCluster::start(3, 1);
    let keys = user_keys(1500);
    seed(&cluster, &keys);
    let daemon = cluster.daemon(&[
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h"),
        ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ("TOKEN_SWEEPER__REDIS__CONNECT_TIMEOUT", "1s"),
        ("TOKEN_SWEEPER__REDIS__RESPONSE_TIMEOUT", "2s"),
    ]);

    daemon.signal("USR1");
    wait_until(Duration::from_secs(20), "the first sweep", || {
        daemon.metric("token_sweeper_sweeps_total{result=\"ok\"}") == 1.0
    });
    assert_eq!(left(&cluster, &keys), (0, 3000));

    // Kill the primary of the first seed; its replica takes over.
    let victim = cluster.primaries()[0].clone();
    cluster.node(&victim.address).kill();
    wait_until(
        Duration::from_secs(30),
        "the replica to be promoted",
        || {
            let primaries = cluster.primaries();
            primaries.len() == 3 && primaries.iter().all(|p| p.address != victim.address)
        },
    );
    cluster.wait_healthy(3);
    let survivor = cluster.primaries()[0].address.clone();
    let now = redis_now_ms(&mut cluster.node(&survivor).conn());
    let mut c = cluster.conn();
    for key in &keys {
        let _: () = c.zadd(key, "expired-again", now - 1).unwrap();
    }

    // Sweeps may fail while the daemon's view catches up; one succeeds.
    wait_until(
        Duration::from_secs(60),
        "a complete sweep after the failover",
        || {
            daemon.signal("USR1");
            std::thread::sleep(Duration::from_millis(1500));
            daemon.metric("token_sweeper_sweeps_total{result=\"ok\"}") >= 2.0
        },
    );
    assert_eq!(left(&cluster, &keys), (0, 3000), "{}", daemon.log_text());
    let scrape = daemon.scrape();
    let new_primaries = cluster.primaries();
    for primary in &new_primaries {
        let series = format!(
            "token_sweeper_node_unfinished{{node=\"{}\"}}",
            primary.address
        );
        assert_eq!(common::metric(&scrape, &series), Some(0.0), "{scrape}");
    }
    // Issue 11, item 6: the dead primary's series used to stay, frozen
    // (its last success) or stuck at 1 (unfinished), so its alert fired
    // forever. A node that is no longer a primary has none.
    for series in [
        last_success_series(&victim.address),
        format!(
            "token_sweeper_node_unfinished{{node=\"{}\"}}",
            victim.address
        ),
    ] {
        assert_eq!(common::metric(&scrape, &series), None, "{series}: {scrape}");
    }
    wait_until(Duration::from_secs(10), "/readyz", || {
        common::http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
}

#[test]
fn two_daemons_split_the_primaries_between_them() {
    let mut cluster = RedisCluster::start(3, 0);
    let keys = user_keys(1500);
    seed(&cluster, &keys);
    let env = [
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
        ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ("TOKEN_SWEEPER__LOCK__TTL", "3s"),
    ];
    let a = cluster.daemon(&env);
    let b = cluster.daemon(&env);
    let primaries: Vec<String> = cluster.primaries().into_iter().map(|p| p.address).collect();

    // The nodes each daemon has swept, from its per-node metrics.
    let swept_by = |daemon: &DaemonProcess| -> BTreeSet<String> {
        let scrape = daemon.scrape();
        primaries
            .iter()
            .filter(|node| {
                let series =
                    format!("token_sweeper_node_last_success_timestamp_seconds{{node=\"{node}\"}}");
                // The series exists at 0 for every primary from the first
                // round on: only a time means swept.
                common::metric(&scrape, &series).is_some_and(|at| at > 0.0)
            })
            .cloned()
            .collect()
    };
    wait_until(
        Duration::from_secs(30),
        "both daemons to sweep primaries",
        || !swept_by(&a).is_empty() && !swept_by(&b).is_empty(),
    );
    let (by_a, by_b) = (swept_by(&a), swept_by(&b));
    let all: BTreeSet<String> = by_a.union(&by_b).cloned().collect();
    assert_eq!(all.len(), 3, "a: {by_a:?}, b: {by_b:?}");
    assert_eq!(left(&cluster, &keys), (0, 3000));

    // Within one period, the primaries' leases are held by both daemons:
    // each took its share instead of one taking all. Each lease lives on
    // its own primary (`token-sweeper:lock:<node>{tag}`).
    let mut holders = || -> BTreeSet<u32> {
        let mut pids = BTreeSet::new();
        for node in &primaries {
            let pattern = format!("token-sweeper:lock:{node}{{*");
            for key in cluster.keys_on(node, &pattern) {
                let holder: Option<String> = cluster.node(node).conn().get(&key).unwrap();
                pids.extend(holder.and_then(|h| h.split(':').nth(1)?.parse::<u32>().ok()));
            }
        }
        pids
    };
    wait_until(
        Duration::from_secs(20),
        "leases held by both daemons at once",
        || holders() == BTreeSet::from([a.pid(), b.pid()]),
    );
}

#[tokio::test]
async fn the_readme_acl_users_work_on_a_cluster_and_a_missing_permission_is_named() {
    let cluster = RedisCluster::start(3, 0);
    for node in &cluster.nodes {
        common::create_user(node, "token-sweeper", "sweeper-pw", &[]);
        common::create_user(node, "token-auth", "auth-pw", &[]);
    }
    let keys = user_keys(600);
    seed(&cluster, &keys);
    let user = [
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
    ];
    let env = cluster.env();
    let mut env = env_refs(&env);
    env.extend(user);

    // The one-shot sweep and the daemon with its per-primary leases.
    let out = run_sweeper(&["sweep", "--dry-run"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = cluster.daemon(&user);
    wait_until(Duration::from_secs(20), "the daemon's sweep", || {
        daemon.metric("token_sweeper_sweeps_total{result=\"ok\"}") >= 1.0
    });
    assert_eq!(left(&cluster, &keys), (0, 1200), "{}", daemon.log_text());
    // Its lease scripts, leaving the registry at shutdown included, need
    // nothing beyond the README's ACL line.
    assert!(registered(&cluster).contains(&daemon.pid()));
    let mut daemon = daemon;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)).0, Some(0));
    assert_eq!(
        registered(&cluster),
        BTreeSet::new(),
        "{}",
        daemon.log_text()
    );
    assert!(
        !daemon.log_text().contains("cannot"),
        "every lease script ran: {}",
        daemon.log_text()
    );
    drop(daemon);

    // The auth module as its user, with the hash-tagged template.
    let mut settings = cluster.settings();
    settings.redis.username = Some("token-auth".to_owned());
    settings.redis.password = Some(Secret::new("auth-pw"));
    settings.auth = AuthSettings {
        key_template: "{{user}}-tokens".to_owned(),
        ..hs256()
    };
    let service = TokenService::connect(&settings).await.unwrap();
    for user in ["alice", "bob", "carol", "dave"] {
        let issued = service
            .issue(user, None, serde_json::Map::new())
            .await
            .unwrap();
        assert_eq!(service.verify(&issued.token).await.unwrap().sub, user);
        assert_eq!(service.list(user).await.unwrap().len(), 1);
        assert_eq!(service.revoke_all(user).await.unwrap(), 1);
    }

    // One permission fewer on every node: the sweep says which.
    for node in &cluster.nodes {
        common::create_user(node, "token-sweeper", "sweeper-pw", &["cluster|nodes"]);
    }
    let out = run_sweeper(&["sweep"], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'cluster|nodes' command"), "{err}");
}

#[tokio::test]
async fn keys_that_answer_moved_or_ask_are_swept_through_the_cluster_once() {
    let mut cluster = RedisCluster::start(3, 0);
    let keys = user_keys(900);
    let now = seed(&cluster, &keys);
    let primaries = cluster.primaries();
    let (a, b) = (primaries[0].address.clone(), primaries[1].address.clone());
    let conn = Connection::connect(&cluster.settings().redis)
        .await
        .unwrap();
    let mut on_a = conn.node(&a).await.unwrap();
    let expired = Expired::at(
        i128::from(now - 1) * 1000,
        Duration::ZERO,
        ScoreUnit::Milliseconds,
    )
    .unwrap();

    // MOVED: node A is sent keys that live on node B.
    let b_keys: Vec<Vec<u8>> = cluster
        .keys_on(&b, "*-tokens")
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let outcome = sweep_keys(&mut on_a, &b_keys, expired, SweepMode::Remove)
        .await
        .unwrap();
    assert_eq!(outcome.counts.keys_redirected, b_keys.len() as u64);
    assert_eq!(outcome.counts.members_removed, 2 * b_keys.len() as u64);
    assert_eq!(outcome.counts.errors, 0, "{:?}", outcome.first_error);

    // ASK: a slot of node A half migrated to node B.
    let (slot_keys, moved) = half_migrate(&mut cluster, &a, &b);
    let moved = &slot_keys[..moved];
    let mut target = cluster.node(&b).conn();
    let mut source = cluster.node(&a).conn();

    let batch: Vec<Vec<u8>> = slot_keys.iter().map(|k| k.clone().into_bytes()).collect();
    let outcome = sweep_keys(&mut on_a, &batch, expired, SweepMode::Remove)
        .await
        .unwrap();
    assert_eq!(outcome.counts.keys_redirected, moved.len() as u64);
    assert_eq!(outcome.counts.members_removed, 2 * slot_keys.len() as u64);
    assert_eq!(outcome.counts.errors, 0, "{:?}", outcome.first_error);
    for key in moved {
        // The target serves the importing slot only right after ASKING.
        let (_, members): ((), Vec<String>) = redis::pipe()
            .cmd("ASKING")
            .cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(&mut target)
            .unwrap();
        assert_eq!(members, ["live-1", "live-2"], "{key} on the target");
    }
    for key in &slot_keys[moved.len()..] {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(&mut source)
            .unwrap();
        assert_eq!(members, ["live-1", "live-2"], "{key} on the source");
    }
}

#[test]
fn a_primary_that_is_down_is_named_unfinished_and_the_others_are_swept() {
    // Without full coverage required, the other primaries keep serving.
    let mut cluster = RedisCluster::start_with(3, 0, &["--cluster-require-full-coverage", "no"]);
    let keys = user_keys(900);
    seed(&cluster, &keys);
    let primaries = cluster.primaries();
    let down = primaries[2].address.clone();
    let down_keys = cluster.keys_on(&down, "*-tokens");
    cluster.node(&down).kill();
    let alive_keys: Vec<String> = keys
        .iter()
        .filter(|k| !down_keys.contains(k))
        .cloned()
        .collect();

    let env = cluster.env();
    let env = env_refs(&env);
    let out = run_sweeper(&["sweep", "--json"], &env);
    assert_eq!(out.status.code(), Some(1), "an incomplete sweep exits 1");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["unfinished_nodes"],
        serde_json::json!([down]),
        "{report}"
    );
    assert_eq!(
        report["members_removed"],
        2 * alive_keys.len() as u64,
        "{report}"
    );
    assert_eq!(left(&cluster, &alive_keys), (0, 2 * alive_keys.len()));

    // The daemon says the same in its metrics and /readyz.
    let daemon = cluster.daemon(&[
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h"),
        ("TOKEN_SWEEPER__REDIS__CONNECT_TIMEOUT", "1s"),
    ]);
    wait_until(Duration::from_secs(20), "an incomplete sweep", || {
        daemon.metric("token_sweeper_sweeps_total{result=\"incomplete\"}") >= 1.0
    });
    let unfinished =
        |node: &str| daemon.metric(&format!("token_sweeper_node_unfinished{{node=\"{node}\"}}"));
    assert_eq!(unfinished(&down), 1.0, "{}", daemon.scrape());
    assert_eq!(unfinished(&primaries[0].address), 0.0);
    let (code, body) = common::http_get(daemon.metrics_port, "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains(&down), "{body}");
}

/// Issue 11, item 9: a sampled key that answers MOVED or ASK used to read no
/// score, and a sample of such keys passed. The guard now reads each where
/// it lives, as the sweep removes it there.
#[tokio::test]
async fn the_unit_guard_follows_moved_and_ask_to_a_definite_score() {
    let mut cluster = RedisCluster::start(3, 0);
    let keys = user_keys(300);
    let now_ms = redis_now_ms(&mut cluster.nodes[0].conn());
    let now_micros = i128::from(now_ms) * 1000;
    let mut c = cluster.conn();
    for key in &keys {
        // JWT `exp`: seconds.
        let _: () = c.zadd(key, "live", now_ms / 1000 + 3600).unwrap();
    }
    let primaries = cluster.primaries();
    let (a, b) = (primaries[0].address.clone(), primaries[1].address.clone());
    let conn = Connection::connect(&cluster.settings().redis)
        .await
        .unwrap();
    let mut on_a = conn.node(&a).await.unwrap();
    let bytes =
        |keys: &[String]| -> Vec<Vec<u8>> { keys.iter().map(|k| k.clone().into_bytes()).collect() };
    let is_seconds_in_every = |err: &SweepError, n: usize| {
        matches!(
            err,
            SweepError::UnitGuard {
                seen: ScoreUnit::Seconds,
                suspicious,
                sampled,
                ..
            } if *suspicious == n && *sampled == n
        )
    };

    // MOVED: node A is asked about keys that live on node B.
    let b_keys = bytes(&cluster.keys_on(&b, "*-tokens"));
    let err = check_units(&mut on_a, &b_keys, ScoreUnit::Milliseconds, now_micros)
        .await
        .unwrap_err();
    assert!(is_seconds_in_every(&err, b_keys.len()), "{err}");
    let scored = check_units(&mut on_a, &b_keys, ScoreUnit::Seconds, now_micros)
        .await
        .unwrap();
    assert_eq!(scored, b_keys.len(), "every redirected key gave its score");

    // ASK: a slot of node A half migrated to node B; node A answers ASK for
    // the keys already on B.
    let (slot_keys, moved) = half_migrate(&mut cluster, &a, &b);
    let asked = bytes(&slot_keys[..moved]);
    let err = check_units(&mut on_a, &asked, ScoreUnit::Milliseconds, now_micros)
        .await
        .unwrap_err();
    assert!(is_seconds_in_every(&err, asked.len()), "{err}");
    let all = bytes(&slot_keys);
    let scored = check_units(&mut on_a, &all, ScoreUnit::Seconds, now_micros)
        .await
        .unwrap();
    assert_eq!(scored, all.len());

    // A cluster node configured as a single server cannot follow MOVED: the
    // guard refuses, saying what to set, instead of passing.
    let mut single_settings = cluster.settings();
    single_settings.redis.mode = RedisMode::Standalone;
    single_settings.redis.url = format!("redis://{a}").parse().unwrap();
    let mut single = Connection::connect(&single_settings.redis).await.unwrap();
    let err = check_units(&mut single, &b_keys, ScoreUnit::Milliseconds, now_micros)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SweepError::SafetyCheck {
                check: Check::UnitGuard,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("set redis.mode = \"cluster\""),
        "{err}"
    );
}

/// ACLs are per node in a cluster. One primary refusing the guard's read
/// stops the sweep before any primary deletes; before, the guard read the
/// refusal as "nothing to say" and every primary was swept.
#[test]
fn a_unit_guard_refused_on_one_primary_stops_the_sweep_on_every_primary() {
    let cluster = RedisCluster::start(3, 0);
    let keys = user_keys(600);
    seed(&cluster, &keys);
    // The last primary in address order, so the others' guards pass first.
    let last = cluster.primaries().pop().unwrap().address;
    for node in &cluster.nodes {
        let refused: &[&str] = if format!("127.0.0.1:{}", node.port) == last {
            &["zrevrangebyscore"]
        } else {
            &[]
        };
        common::create_user(node, "token-sweeper", "sweeper-pw", refused);
    }
    let env = cluster.env();
    let mut env = env_refs(&env);
    env.extend([
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
        ("TOKEN_SWEEPER__SWEEP__MAX_PARALLEL_NODES", "1"),
    ]);

    let out = run_sweeper(&["sweep"], &env);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        left(&cluster, &keys),
        (2 * keys.len(), 2 * keys.len()),
        "nothing deleted on any primary: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("token-sweeper: "))
        .unwrap_or_default();
    assert!(line.contains("unit guard could not run"), "{stderr}");
    assert!(line.contains(&last), "{stderr}");
    assert!(line.contains("'zrevrangebyscore' command"), "{stderr}");
}

/// A primary whose slots moved between the topology read and its sweep:
/// its scan cannot cover slots it lost (and a slot that moved to a node
/// already swept would be seen by nobody), so it is not finished. Before,
/// both nodes of the move reported finished.
#[tokio::test]
async fn a_primary_whose_slots_moved_since_the_topology_was_read_is_not_finished() {
    let mut cluster = RedisCluster::start(3, 0);
    let keys = user_keys(300);
    seed(&cluster, &keys);
    let settings = cluster.settings();
    let conn = Connection::connect(&settings.redis).await.unwrap();
    let read_before = conn.primaries().await.unwrap();
    let (from, to) = (
        read_before[0].address.clone(),
        read_before[1].address.clone(),
    );
    let (slot, _) = busiest_slot(&mut cluster, &from);
    migrate_slot(&mut cluster, slot, &from, &to);

    let report = sweep_nodes(
        &conn,
        &read_before,
        &settings.sweep,
        SweepMode::Remove,
        &SweepProgress::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();

    for node in &report.nodes {
        let moved = node.node == from || node.node == to;
        assert_eq!(node.finished, !moved, "{node:?}");
        if moved {
            let reason = node.unfinished_reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains("since the cluster topology was read"),
                "{node:?}"
            );
        }
    }
    assert_eq!(report.unfinished_nodes.len(), 2, "{report:?}");
    let (_, live) = left(&cluster, &keys);
    assert_eq!(live, 2 * keys.len());

    // Read afresh, the topology is swept to the end everywhere.
    let report = sweep_nodes(
        &conn,
        &conn.primaries().await.unwrap(),
        &settings.sweep,
        SweepMode::Remove,
        &SweepProgress::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(report.unfinished_nodes.is_empty(), "{report:?}");
    assert_eq!(left(&cluster, &keys), (0, 2 * keys.len()));
}

/// Issue 11, item 4: a migration left open (slot IMPORTING on one primary,
/// MIGRATING on another, some of its keys moved). The keys SCAN finds on the
/// importing node answer MOVED there without `ASKING`; following that
/// through the cluster client (to the owner, which answers ASK) lost
/// `ASKING` under concurrency, and those keys kept their expired members,
/// sweep after sweep. Now every key is swept where it lives, and the two
/// nodes of the open migration are named unfinished, with the slot.
#[test]
fn a_stuck_migration_leaves_no_expired_member_on_either_node() {
    let mut cluster = RedisCluster::start(3, 0);
    // Many users in one slot, so that many keys sit on the importing node.
    let stuck: Vec<String> = (0..240).map(|n| format!("{{stuck}}:u{n}-tokens")).collect();
    let mut keys = user_keys(600);
    keys.extend(stuck.iter().cloned());
    let now = seed(&cluster, &keys);
    let slot = slot_of(&mut cluster.nodes[0].conn(), "{stuck}");
    let primaries = cluster.primaries();
    let from = primaries
        .iter()
        .find(|p| !cluster.keys_on(&p.address, "{stuck}*").is_empty())
        .unwrap()
        .address
        .clone();
    let to = primaries
        .iter()
        .find(|p| p.address != from)
        .unwrap()
        .address
        .clone();
    begin_migration(&mut cluster, slot, &from, &to);
    migrate_keys(&mut cluster, &from, &to, &stuck[..160]);
    // Sessions created since the migration began live only on the
    // importing node (the owner answers ASK for keys it does not have).
    let created: Vec<String> = (0..40)
        .map(|n| format!("{{stuck}}:new{n}-tokens"))
        .collect();
    let mut target = cluster.node(&to).conn();
    for key in &created {
        let ((), ()): ((), ()) = redis::pipe()
            .cmd("ASKING")
            .cmd("ZADD")
            .arg(key)
            .arg(now - HOUR_MS)
            .arg("expired-1")
            .arg(now - 1_000)
            .arg("expired-2")
            .arg(now + HOUR_MS)
            .arg("live-1")
            .arg(now + 48 * HOUR_MS)
            .arg("live-2")
            .query(&mut target)
            .unwrap();
    }
    keys.extend(created.iter().cloned());
    assert_eq!(cluster.keys_on(&to, "{stuck}*").len(), 200);
    assert_eq!(cluster.keys_on(&from, "{stuck}*").len(), 80);

    let report = sweep_json(&cluster, &[]);

    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["keys_scanned"], keys.len() as u64, "{report}");
    assert_eq!(report["members_removed"], 2 * keys.len() as u64, "{report}");
    assert_eq!(report["keys_redirected"], 0, "swept where SCAN found them");
    assert_eq!(
        members_on(&mut cluster, &to, "{stuck}*", true),
        (0, 400),
        "on the importing node"
    );
    assert_eq!(
        members_on(&mut cluster, &from, "{stuck}*", false),
        (0, 160),
        "on the owner"
    );
    let others: Vec<String> = keys
        .iter()
        .filter(|k| !k.starts_with("{stuck}"))
        .cloned()
        .collect();
    assert_eq!(left(&cluster, &others), (0, 2 * others.len()));

    // While the slot stays open, keys can move between the two nodes'
    // scans: those two are not finished, and say why; the third is.
    for node in report["nodes"].as_array().unwrap() {
        let address = node["node"].as_str().unwrap();
        let open = address == from || address == to;
        assert_eq!(node["finished"], !open, "{node}");
        if open {
            let reason = node["unfinished_reason"].as_str().unwrap();
            assert!(reason.contains(&format!("slot {slot}")), "{reason}");
        }
    }

    // A user without `asking` (ACLs are per node): the importing node's
    // keys are refused with the permission named, not followed elsewhere.
    let mut target = cluster.node(&to).conn();
    for key in cluster.keys_on(&to, "{stuck}*") {
        let ((), ()): ((), ()) = redis::pipe()
            .cmd("ASKING")
            .cmd("ZADD")
            .arg(&key)
            .arg(now - HOUR_MS)
            .arg("expired-again")
            .query(&mut target)
            .unwrap();
    }
    for node in &cluster.nodes {
        common::create_user(node, "token-sweeper", "sweeper-pw", &["asking"]);
    }
    let out = run_sweeper(
        &["sweep", "--json"],
        &[
            env_refs(&cluster.env()).as_slice(),
            &[
                ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
                ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
            ],
        ]
        .concat(),
    );
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains("'asking' command"), "{output}");
    assert_eq!(
        members_on(&mut cluster, &to, "{stuck}*", true),
        (200, 400),
        "{output}"
    );
}

/// (expired, live) members in the keys matching `pattern` on the node at
/// `address`, read there (after `ASKING` for a slot it is importing).
fn members_on(
    cluster: &mut RedisCluster,
    address: &str,
    pattern: &str,
    asking: bool,
) -> (usize, usize) {
    let keys = cluster.keys_on(address, pattern);
    let mut conn = cluster.node(address).conn();
    let (mut expired, mut live) = (0, 0);
    for key in keys {
        let mut pipe = redis::pipe();
        if asking {
            pipe.cmd("ASKING").ignore();
        }
        let (members,): (Vec<String>,) = pipe
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap();
        expired += members.iter().filter(|m| m.starts_with("expired")).count();
        live += members.iter().filter(|m| m.starts_with("live")).count();
    }
    (expired, live)
}

/// Issue 11, item 5: with one seed configured, after that node died and its
/// replica took over, every reconnect (here: a reload that changes a Redis
/// setting) tried only the dead seed: no sweep, and `/readyz` "cannot
/// connect", while the cluster was healthy. Reconnects now also go through
/// the nodes the daemon last saw.
#[test]
fn with_its_only_seed_dead_the_daemon_reconnects_through_the_nodes_it_last_saw() {
    let mut cluster = RedisCluster::start(3, 1);
    let keys = user_keys(600);
    seed(&cluster, &keys);
    let only_seed = cluster.primaries()[0].address.clone();
    let dir = tempfile::tempdir().unwrap();
    let config = |response_timeout: &str| {
        format!(
            "[redis]\nmode = \"cluster\"\nconnect_timeout = \"1s\"\n\
             response_timeout = \"{response_timeout}\"\n[sweep]\ninterval = \"1s\"\n"
        )
    };
    let path = common::write_file(dir.path(), "sweeper.toml", &config("2s"));
    // No redis.nodes: the one seed is all the configuration names.
    let daemon = DaemonProcess::start(&format!("redis://{only_seed}"), &[], Some(&path));
    let ok = || daemon.metric("token_sweeper_sweeps_total{result=\"ok\"}");
    wait_until(Duration::from_secs(20), "a first sweep", || ok() >= 1.0);
    assert_eq!(left(&cluster, &keys), (0, 2 * keys.len()));

    cluster.node(&only_seed).kill();
    wait_until(
        Duration::from_secs(30),
        "the replica to be promoted",
        || {
            let primaries = cluster.primaries();
            primaries.len() == 3 && primaries.iter().all(|p| p.address != only_seed)
        },
    );
    cluster.wait_healthy(3);

    // A reload that changes a Redis setting: the daemon reconnects.
    std::fs::write(&path, config("3s")).unwrap();
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "the reload", || {
        !daemon
            .events("configuration reloaded; it applies from the next sweep")
            .is_empty()
    });
    let survivor = cluster.primaries()[0].address.clone();
    let now = redis_now_ms(&mut cluster.node(&survivor).conn());
    let mut c = cluster.conn();
    for key in &keys {
        let _: () = c.zadd(key, "expired-again", now - 1).unwrap();
    }
    let before = ok();
    wait_until(
        Duration::from_secs(40),
        "sweeps after the reconnect",
        || ok() >= before + 2.0 && left(&cluster, &keys) == (0, 2 * keys.len()),
    );
    wait_until(Duration::from_secs(10), "/readyz", || {
        common::http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    // It says so, naming the dead seed, so that the operator adds live ones.
    let around = daemon.events(
        "no cluster seed could be reached; connected through the nodes last seen. Add live \
         nodes to redis.url/redis.nodes",
    );
    assert!(
        around
            .iter()
            .any(|e| e["seeds"].as_str() == Some(only_seed.as_str())),
        "{}",
        daemon.log_text()
    );
}

/// The nodes last seen are only a way around dead seeds, never a way to
/// another cluster: a node reached there that names none of the nodes seen
/// (here one reset and made a cluster of its own, as when an address is
/// reused) is refused, and after the seeds change (which may name another
/// cluster) the nodes seen through the old ones are not tried.
#[tokio::test]
async fn a_reconnect_never_goes_through_a_node_that_left_the_cluster() {
    let mut cluster = RedisCluster::start(3, 0);
    let primaries: Vec<String> = cluster.primaries().into_iter().map(|p| p.address).collect();
    let mut settings = cluster.settings().redis;
    settings.url = format!("redis://{}", primaries[0]).parse().unwrap();
    settings.nodes = Vec::new();
    settings.connect_timeout = Duration::from_secs(1);
    let redis = std::sync::Arc::new(Reconnecting::new(settings.clone(), |_| {}));
    let conn = redis.connect_now().await.unwrap();
    assert_eq!(conn.primaries().await.unwrap().len(), 3);

    // Seeds that name another (here: no) cluster: nothing seen through the
    // old seeds is tried.
    let mut elsewhere = settings.clone();
    elsewhere.url = format!("redis://127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    redis.update_settings(elsewhere);
    let err = redis.connect_now().await.unwrap_err().to_string();
    assert!(!err.contains("last seen"), "{err}");
    redis.update_settings(settings);
    redis.connect_now().await.unwrap();

    // The second primary leaves: emptied, reset (a new node id), and made a
    // one-node cluster of its own, holding a token set. The others die.
    let left_node = primaries[1].clone();
    let mut other = cluster.node(&left_node).conn();
    let () = redis::cmd("FLUSHALL").query(&mut other).unwrap();
    let () = redis::cmd("CLUSTER")
        .arg("RESET")
        .arg("HARD")
        .query(&mut other)
        .unwrap();
    let () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query(&mut other)
        .unwrap();
    wait_until(Duration::from_secs(10), "the one-node cluster", || {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut other).unwrap();
        info.contains("cluster_state:ok")
    });
    let _: () = other.zadd("foreign-tokens", "expired", 1).unwrap();
    cluster.node(&primaries[0]).kill();
    cluster.node(&primaries[2]).kill();

    let err = redis.connect_now().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("{left_node} is no longer a node of that cluster")),
        "{err}"
    );
    assert!(redis.get().is_err());
    let members: Vec<String> = other.zrange("foreign-tokens", 0, -1).unwrap();
    assert_eq!(members, ["expired"]);
}

/// The sweep schedule of the fleet tests below: short periods, so that a
/// test watches several of them.
const PERIOD: Duration = Duration::from_secs(2);
const OK: &str = "token_sweeper_sweeps_total{result=\"ok\"}";

/// Environment for a daemon of those fleets, with `lock.ttl`. The sweep
/// runs at full speed: these tests bound what happens within a 2 s period,
/// and the adaptive throttle's pace depends, by design, on how loaded the
/// machine running them is (it has its own tests).
fn fleet_env(ttl: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TOKEN_SWEEPER__SWEEP__THROTTLE", "off".to_owned()),
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s".to_owned()),
        ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false".to_owned()),
        ("TOKEN_SWEEPER__LOCK__TTL", ttl.to_owned()),
    ]
}

/// One fleet test at a time: each bounds what happens within a 2 s period,
/// and several 3-node clusters with their daemons at once on a 2-core
/// machine delay rounds by more than the bound allows, with no fault of the
/// daemons (a round came 3.1 s after the last on a loaded CI run). The
/// other tests of this file still run beside them.
fn fleet_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed holding it poisons it; the next still runs.
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn last_success_series(node: &str) -> String {
    format!("token_sweeper_node_last_success_timestamp_seconds{{node=\"{node}\"}}")
}

/// When any of `daemons` last finished `node`: the README's fleet-wide
/// `max by (node) (token_sweeper_node_last_success_timestamp_seconds)`
/// (0 when none has).
fn last_swept(daemons: &[&DaemonProcess], node: &str) -> f64 {
    daemons
        .iter()
        .filter_map(|d| common::metric(&d.scrape(), &last_success_series(node)))
        .fold(0.0, f64::max)
}

/// The pids of the daemons in the registry of daemons now.
fn registered(cluster: &RedisCluster) -> BTreeSet<u32> {
    let names: Vec<String> = cluster
        .conn()
        .zrange("token-sweeper:lock:daemons", 0, -1)
        .unwrap();
    names.iter().filter_map(|n| common::holder_pid(n)).collect()
}

/// The pids holding a lease on any of `primaries` now.
fn lease_holders(cluster: &mut RedisCluster, primaries: &[String]) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for node in primaries {
        let pattern = format!("token-sweeper:lock:{node}{{*");
        for key in cluster.keys_on(node, &pattern) {
            let holder: Option<String> = cluster.node(node).conn().get(&key).unwrap();
            pids.extend(holder.as_deref().and_then(common::holder_pid));
        }
    }
    pids
}

/// For `window`, checks every 100 ms that each of `nodes` was finished by
/// one of `daemons` at most `bound` ago (after running `also`); panics
/// naming the first that was not.
fn assert_swept_within(
    daemons: &[&DaemonProcess],
    nodes: &[String],
    bound: Duration,
    window: Duration,
    mut also: impl FnMut(),
) {
    let end = std::time::Instant::now() + window;
    while std::time::Instant::now() < end {
        also();
        for node in nodes {
            let ago = common::unix_now() - last_swept(daemons, node);
            assert!(
                ago <= bound.as_secs_f64(),
                "{node} last swept {ago:.1} s ago, more than {bound:?}:\n{}",
                daemons
                    .iter()
                    .map(|d| d.log_text())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until each of `nodes` has been finished by one of `daemons`.
fn wait_all_swept(daemons: &[&DaemonProcess], nodes: &[String]) {
    wait_until(Duration::from_secs(20), "every primary swept once", || {
        nodes.iter().all(|node| last_swept(daemons, node) > 0.0)
    });
}

/// Issue 11, item 1: a daemon that refuses to sweep (its clock 1 s ahead of
/// Redis, beyond max_clock_skew) used to register and lease its share
/// before refusing, and keep both: its primaries were never swept while it
/// ran, and the others reported ready. Now it neither registers nor
/// leases, and the healthy daemons' shares cover every primary. A daemon
/// that starts refusing later (a reload to a stale score unit) leaves the
/// registry at once, and its primary is swept within two periods.
#[test]
fn a_daemon_that_refuses_is_counted_in_no_share_and_every_primary_is_swept() {
    let mut cluster = RedisCluster::start(3, 0);
    seed(&cluster, &user_keys(300));
    let primaries: Vec<String> = cluster.primaries().into_iter().map(|p| p.address).collect();
    // A long ttl: a registration left behind would outlast several periods.
    let _turn = fleet_turn();
    let mut env = fleet_env("5s");
    env.push(("TOKEN_SWEEPER__SWEEP__MAX_CLOCK_SKEW", "500ms".to_owned()));
    let env = env_refs(&env);
    let lib = common::libfaketime();
    let mut skewed_env = env.clone();
    skewed_env.extend([
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", "+1s"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ]);
    let skewed = cluster.daemon(&skewed_env);
    let a = cluster.daemon(&env);
    // b reads its score unit from a file, to be reloaded with a stale one.
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_file(dir.path(), "sweeper.toml", "[sweep]\nscore_unit = \"ms\"\n");
    let cluster_env = cluster.env();
    let mut b_env = env_refs(&cluster_env);
    b_env.extend_from_slice(&env);
    let b = DaemonProcess::start(&cluster.nodes[0].url(), &b_env, Some(&config));
    let healthy = [&a, &b];

    wait_until(
        Duration::from_secs(10),
        "the skewed daemon to refuse",
        || skewed.metric("token_sweeper_errors_total{kind=\"clock_skew\"}") >= 1.0,
    );
    wait_all_swept(&healthy, &primaries);
    // Every primary swept at least once every two periods, for five.
    assert_swept_within(
        &healthy,
        &primaries,
        PERIOD * 2 + Duration::from_secs(1),
        PERIOD * 5,
        || {
            assert!(
                !registered(&cluster).contains(&skewed.pid()),
                "the skewed daemon registered"
            );
            assert!(
                !lease_holders(&mut cluster, &primaries).contains(&skewed.pid()),
                "the skewed daemon holds a lease"
            );
        },
    );
    assert!(skewed.metric("token_sweeper_errors_total{kind=\"clock_skew\"}") >= 5.0);
    assert_eq!(skewed.metric(OK), 0.0);

    // b's unit guard refuses from its next round on: the sets hold ms.
    common::write_file(dir.path(), "sweeper.toml", "[sweep]\nscore_unit = \"s\"\n");
    b.signal("HUP");
    wait_until(Duration::from_secs(10), "b's unit guard to refuse", || {
        b.metric("token_sweeper_errors_total{kind=\"unit_guard\"}") >= 1.0
    });
    assert!(
        !registered(&cluster).contains(&b.pid()),
        "b left the registry"
    );
    assert!(!lease_holders(&mut cluster, &primaries).contains(&b.pid()));
    assert_swept_within(
        &healthy,
        &primaries,
        PERIOD * 2 + Duration::from_secs(1),
        PERIOD * 4,
        || {
            assert!(
                !registered(&cluster).contains(&b.pid()),
                "b registered while refusing"
            );
        },
    );
}

/// Issue 11, item 2: a graceful shutdown released the leases but left the
/// daemon in the registry, so the others kept counting it and its primary
/// went unswept until the registration expired. Now it leaves the
/// registry, the others take its share from their next round, and a
/// restarted daemon joins without a primary going unswept for two periods.
/// Per-node series: a daemon shows `node_unfinished` only for what it swept
/// in its last round, `node_last_success` for every primary.
#[test]
fn a_stopped_daemon_leaves_the_registry_and_its_share_is_taken_within_two_periods() {
    let mut cluster = RedisCluster::start(3, 0);
    seed(&cluster, &user_keys(300));
    let primaries: Vec<String> = cluster.primaries().into_iter().map(|p| p.address).collect();
    // A long ttl: without leaving, the registration would outlast several periods.
    let _turn = fleet_turn();
    let env = fleet_env("5s");
    let env = env_refs(&env);
    let a = cluster.daemon(&env);
    let b = cluster.daemon(&env);
    let mut c = cluster.daemon(&env);
    wait_until(
        Duration::from_secs(20),
        "three registered daemons, each sweeping a primary",
        || registered(&cluster).len() == 3 && [&a, &b, &c].iter().all(|d| d.metric(OK) >= 2.0),
    );
    let scrape = c.scrape();
    let (c_node, _) = primaries
        .iter()
        .map(|node| {
            (
                node,
                common::metric(&scrape, &last_success_series(node)).unwrap_or(0.0),
            )
        })
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap();
    let c_node = c_node.clone();

    c.signal("TERM");
    let (code, _) = c.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let stopped = common::unix_now();
    assert!(
        !registered(&cluster).contains(&c.pid()),
        "the stopped daemon left the registry"
    );
    assert!(!lease_holders(&mut cluster, &primaries).contains(&c.pid()));
    wait_until(
        Duration::from_secs(15),
        "its primary swept by another daemon",
        || last_swept(&[&a, &b], &c_node) > stopped,
    );
    let took = last_swept(&[&a, &b], &c_node) - stopped;
    assert!(
        took <= (PERIOD * 2).as_secs_f64(),
        "{c_node} swept {took:.1} s after the stop: {}{}",
        a.log_text(),
        b.log_text()
    );

    // A rolling restart: the new daemon joins, and no primary goes two
    // periods unswept meanwhile. (Its lock.key comes from a file, for the
    // reload below.)
    let dir = tempfile::tempdir().unwrap();
    let key = |key: &str| format!("[lock]\nkey = \"{key}\"\n");
    let config = common::write_file(dir.path(), "sweeper.toml", &key("token-sweeper:lock"));
    let cluster_env = cluster.env();
    let mut c2_env = env_refs(&cluster_env);
    c2_env.extend_from_slice(&env);
    let mut c2 = DaemonProcess::start(&cluster.nodes[0].url(), &c2_env, Some(&config));
    let fleet = [&a, &b, &c2];
    assert_swept_within(
        &fleet,
        &primaries,
        PERIOD * 2 + Duration::from_secs(1),
        PERIOD * 4,
        || {},
    );
    // Back to one primary each: a and b swept two between them while c
    // was away; what they no longer sweep has no node_unfinished left.
    wait_until(
        Duration::from_secs(10),
        "node_unfinished only for the primary each daemon sweeps",
        || {
            fleet.iter().all(|d| {
                d.scrape()
                    .lines()
                    .filter(|l| l.starts_with("token_sweeper_node_unfinished{"))
                    .count()
                    <= 1
            })
        },
    );
    for daemon in fleet {
        let scrape = daemon.scrape();
        for node in &primaries {
            assert!(
                common::metric(&scrape, &last_success_series(node)).is_some(),
                "{node} has a last success on every daemon (0 until it sweeps it): {scrape}"
            );
        }
    }

    // A reload to another lock.key leaves the old registry at once; the
    // daemon registers in the new one with its next round, and leaves that
    // one when it stops.
    assert!(registered(&cluster).contains(&c2.pid()));
    common::write_file(dir.path(), "sweeper.toml", &key("other-fleet"));
    c2.signal("HUP");
    wait_until(Duration::from_secs(5), "the reload", || {
        !c2.events("configuration reloaded; it applies from the next sweep")
            .is_empty()
    });
    assert!(
        !registered(&cluster).contains(&c2.pid()),
        "left the old registry"
    );
    let in_new =
        |cluster: &RedisCluster| -> usize { cluster.conn().zcard("other-fleet:daemons").unwrap() };
    wait_until(Duration::from_secs(10), "c2 in the new registry", || {
        in_new(&cluster) == 1
    });
    c2.signal("TERM");
    assert_eq!(c2.wait_exit(Duration::from_secs(15)).0, Some(0));
    assert_eq!(in_new(&cluster), 0, "left the new registry on shutdown");
}

/// Issue 11, item 3: the keep-alive held every lease of a round until its
/// slowest primary was done, so a fast primary sharing a round with a slow
/// one was swept only once per slow sweep. Now each lease is settled when
/// its own primary is finished, and a daemon still sweeping when its period
/// ends leaves the registry, so the other daemon sweeps the fast primaries
/// every period while the slow one is swept.
#[test]
fn a_slow_primary_does_not_keep_the_fast_ones_from_being_swept_every_period() {
    let mut cluster = RedisCluster::start(3, 0);
    seed(&cluster, &user_keys(150));
    // 4000 sets in one slot: 10 s at 400 keys/s, five periods.
    let slow_keys: Vec<String> = (0..4000).map(|n| format!("{{slow}}:u{n}-tokens")).collect();
    seed(&cluster, &slow_keys);
    let primaries: Vec<String> = cluster.primaries().into_iter().map(|p| p.address).collect();
    let slow = primaries
        .iter()
        .find(|node| !cluster.keys_on(node, "{slow}*").is_empty())
        .unwrap()
        .clone();
    let fast: Vec<String> = primaries.iter().filter(|n| **n != slow).cloned().collect();
    let _turn = fleet_turn();
    let mut env = fleet_env("2s");
    env.push((
        "TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND",
        "400".to_owned(),
    ));
    let env = env_refs(&env);
    let a = cluster.daemon(&env);
    let b = cluster.daemon(&env);

    wait_all_swept(&[&a, &b], &fast);
    // Every period (a period missed would be twice that), while the slow
    // primary's first sweep runs.
    assert_swept_within(&[&a, &b], &fast, PERIOD + PERIOD / 2, PERIOD * 3, || {});
    assert_eq!(
        last_swept(&[&a, &b], &slow),
        0.0,
        "the slow primary's sweep lasted the whole watch"
    );
}

/// Issue 11, item 9 (first half): a daemon's registration used to last two
/// leases plus lock.ttl from when it registered, after its jitter; with
/// sweep.jitter larger than lock.ttl, one that registered late in a period
/// expired before the other daemons had registered in the next, so they
/// counted different numbers of daemons in one period and their shares
/// could leave a primary out. Now every registration lasts until the next
/// tick plus the jitter (plus lock.ttl): every daemon of the next period
/// still counts it.
#[test]
fn a_registration_outlasts_the_next_periods_jitter() {
    let cluster = RedisCluster::start(3, 0);
    seed(&cluster, &user_keys(90));
    let jitter_ms = 1900;
    let _turn = fleet_turn();
    let mut env = fleet_env("1s");
    env.push(("TOKEN_SWEEPER__SWEEP__JITTER", format!("{jitter_ms}ms")));
    let env = env_refs(&env);
    let daemons = [cluster.daemon(&env), cluster.daemon(&env)];
    let period_ms = PERIOD.as_millis() as i64;

    // Every registration seen over six periods: (earliest it can have
    // happened, its expiry), in Redis milliseconds.
    let mut conn = cluster.conn();
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    let mut registrations = Vec::new();
    // Registrations already there when the watch starts are not counted:
    // when they happened is not known.
    let mut polled_at = None;
    let end = std::time::Instant::now() + PERIOD * 6;
    while std::time::Instant::now() < end {
        let now = redis_now_ms(&mut cluster.nodes[0].conn());
        let members: Vec<(String, f64)> = conn
            .zrange_withscores("token-sweeper:lock:daemons", 0, -1)
            .unwrap();
        for (name, expiry) in members {
            let expiry = expiry as i64;
            match (seen.insert(name.clone(), expiry), polled_at) {
                (Some(before), _) if before == expiry => {}
                (_, Some(earliest)) => registrations.push((name, earliest, expiry)),
                (_, None) => {}
            }
        }
        polled_at = Some(now);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(registrations.len() >= 8, "{registrations:?}");
    for (name, earliest, expiry) in &registrations {
        let next_tick = (earliest.div_euclid(period_ms) + 1) * period_ms;
        assert!(
            *expiry >= next_tick + jitter_ms,
            "{name} registered after {earliest} expires at {expiry}, before every daemon has \
             registered in the next period (tick {next_tick} + jitter {jitter_ms} ms): {}",
            daemons
                .iter()
                .map(|d| d.log_text())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A write stall (`CLIENT PAUSE ... WRITE`) on the primary holding the
/// registry of daemons used to hold every round: the registration had no
/// timeout, and neither had that primary's permission check (a write), so
/// no primary was swept until the stall ended (or redis.response_timeout,
/// 30 s) while /readyz said ready. Now both are bounded like the lease
/// scripts (a third of the ttl): the stalled primary is reported unfinished
/// and the others are swept every period.
#[test]
fn a_write_stall_on_the_registrys_primary_leaves_the_others_swept_every_period() {
    let mut cluster = RedisCluster::start(3, 0);
    seed(&cluster, &user_keys(300));
    let primaries: Vec<String> = cluster.primaries().into_iter().map(|p| p.address).collect();
    let _turn = fleet_turn();
    let env = fleet_env("2s");
    let env = env_refs(&env);
    let a = cluster.daemon(&env);
    let b = cluster.daemon(&env);
    wait_all_swept(&[&a, &b], &primaries);
    let stalled = primaries
        .iter()
        .find(|n| !cluster.keys_on(n, "token-sweeper:lock:daemons").is_empty())
        .unwrap()
        .clone();
    let others: Vec<String> = primaries
        .iter()
        .filter(|n| **n != stalled)
        .cloned()
        .collect();

    let pause = PERIOD * 6;
    let mut node = cluster.node(&stalled).conn();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("WRITE")
        .query(&mut node)
        .unwrap();
    let paused = std::time::Instant::now();
    // Every period (a missed one would be twice that), for most of the stall.
    assert_swept_within(&[&a, &b], &others, PERIOD + PERIOD / 2, PERIOD * 4, || {});
    assert!(paused.elapsed() < pause, "the watch outlasted the stall");
    let unfinished = format!("token_sweeper_node_unfinished{{node=\"{stalled}\"}}");
    assert!(
        [&a, &b].iter().any(|d| d.metric(&unfinished) == 1.0),
        "the stalled primary is reported unfinished"
    );
}

/// A daemon that can check every primary but may not SCAN one (ACLs are
/// per node) used to get a node failure, not a refusal: it stayed
/// registered, kept leasing that primary as its share, and the primary was
/// never swept while a healthy daemon could. Now such a failure (NOPERM,
/// auth, config: its own inability, not the node's) is a refusal: it
/// registers and leases nothing, and the healthy daemon sweeps that
/// primary within two periods.
#[test]
fn a_daemon_that_may_not_scan_one_primary_leaves_it_to_the_others() {
    let mut cluster = RedisCluster::start(3, 0);
    seed(&cluster, &user_keys(300));
    let primaries: Vec<String> = cluster.primaries().into_iter().map(|p| p.address).collect();
    for node in &cluster.nodes {
        common::create_user(node, "token-sweeper", "sweeper-pw", &[]);
    }
    // A long ttl: a registration or lease left behind would outlast periods.
    let _turn = fleet_turn();
    let env = fleet_env("5s");
    let env = env_refs(&env);
    let healthy = cluster.daemon(&env);
    let mut limited_env = env.clone();
    limited_env.extend([
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
    ]);
    let limited = cluster.daemon(&limited_env);
    // A primary in the limited daemon's share only: it sweeps it, the
    // healthy one does not (any more: alone at first, it swept them all).
    let swept_by = |d: &DaemonProcess, node: &str| {
        let last = common::metric(&d.scrape(), &last_success_series(node)).unwrap_or(0.0);
        common::unix_now() - last < (PERIOD * 2).as_secs_f64()
    };
    let mut target = None;
    wait_until(
        Duration::from_secs(20),
        "a primary only the limited daemon sweeps",
        || {
            target = (registered(&cluster).len() == 2 && healthy.metric(OK) >= 2.0)
                .then(|| {
                    primaries
                        .iter()
                        .find(|n| swept_by(&limited, n) && !swept_by(&healthy, n))
                        .cloned()
                })
                .flatten();
            target.is_some()
        },
    );
    let target = target.unwrap();
    common::create_user(
        cluster.node(&target),
        "token-sweeper",
        "sweeper-pw",
        &["scan"],
    );
    wait_until(
        Duration::from_secs(10),
        "the limited daemon to refuse",
        || limited.metric("token_sweeper_errors_total{kind=\"noperm\"}") >= 1.0,
    );
    // Fleet-wide, as the README's alert reads it; only the healthy daemon
    // can sweep the target now.
    assert_swept_within(
        &[&healthy, &limited],
        std::slice::from_ref(&target),
        PERIOD * 2 + Duration::from_secs(1),
        PERIOD * 5,
        || {
            assert!(
                !registered(&cluster).contains(&limited.pid()),
                "the limited daemon registered"
            );
        },
    );
    assert!(!lease_holders(&mut cluster, &primaries).contains(&limited.pid()));
    let (code, body) = common::http_get(limited.metrics_port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("NOPERM") || body.contains("scan"), "{body}");
}
