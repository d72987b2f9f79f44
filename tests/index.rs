//! The opt-in due index against private redis-servers: its layout, the
//! login path that maintains it, the index sweep's safety and the race
//! with logins, the full scan's repair, and the checks that fail closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{redis_now_ms, settings_for, RedisServer};
use redis::Commands;
use token_sweeper::auth::TokenService;
use token_sweeper::config::{AuthSettings, Secret, Settings, ThrottleMode};
use token_sweeper::due_index::{index_key, index_key_of_slot, key_slot, slot_tag, DEFAULT_PREFIX};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{self, SweepError, SweepMode, SweepProgress, SweepReport};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn indexed(server: &RedisServer) -> Settings {
    let mut settings = settings_for(server);
    settings.sweep.due_index.enabled = true;
    settings.auth = AuthSettings {
        secret: Some(Secret::new(SECRET)),
        ..AuthSettings::default()
    };
    settings
}

async fn index_sweep(settings: &Settings, mode: SweepMode) -> Result<SweepReport, SweepError> {
    let conn = Connection::connect(&settings.redis).await.unwrap();
    let progress = SweepProgress::default();
    sweep::sweep_index(
        &conn,
        &settings.sweep,
        mode,
        &progress,
        &CancellationToken::new(),
        true,
    )
    .await
}

async fn full_scan(settings: &Settings) -> SweepReport {
    common::sweep_with(settings, SweepMode::Remove)
        .await
        .unwrap()
}

fn entry(conn: &mut redis::Connection, key: &str) -> Option<f64> {
    conn.zscore(index_key(DEFAULT_PREFIX, key.as_bytes()), key)
        .unwrap()
}

#[test]
fn the_slot_tags_are_where_cluster_keyslot_says() {
    let node = RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let mut conn = node.conn();
    for slot in [0u16, 1, 93, 5460, 5461, 12182, 13907, 16383] {
        let key = index_key_of_slot(DEFAULT_PREFIX, slot);
        let by_redis: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query(&mut conn)
            .unwrap();
        assert_eq!(by_redis, slot, "{key}");
        let tag: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(slot_tag(slot).to_string())
            .query(&mut conn)
            .unwrap();
        assert_eq!(tag, slot);
    }
    for user_key in ["42-tokens", "{42}-tokens", "alice-tokens", "x{y}z-tokens"] {
        let by_redis: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(user_key)
            .query(&mut conn)
            .unwrap();
        assert_eq!(key_slot(user_key.as_bytes()), by_redis);
        let index = index_key(DEFAULT_PREFIX, user_key.as_bytes());
        let index_slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&index)
            .query(&mut conn)
            .unwrap();
        assert_eq!(index_slot, by_redis, "{user_key} and {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_keep_the_entry_at_the_earliest_expiry_and_revoke_all_drops_it() {
    let server = RedisServer::start();
    let settings = indexed(&server);
    let service = TokenService::connect(&settings).await.unwrap();
    let mut conn = server.conn();
    service
        .issue("42", Some(Duration::from_secs(3600)), Default::default())
        .await
        .unwrap();
    let first = entry(&mut conn, "42-tokens").expect("an entry after the login");
    let scores: Vec<(String, f64)> = conn.zrange_withscores("42-tokens", 0, -1).unwrap();
    assert_eq!(first, scores[0].1);
    // A longer token does not raise it; a shorter one lowers it.
    service
        .issue("42", Some(Duration::from_secs(7200)), Default::default())
        .await
        .unwrap();
    assert_eq!(entry(&mut conn, "42-tokens"), Some(first));
    service
        .issue("42", Some(Duration::from_secs(60)), Default::default())
        .await
        .unwrap();
    let lowered = entry(&mut conn, "42-tokens").unwrap();
    assert!(lowered < first, "{lowered} < {first}");
    service.revoke_all("42").await.unwrap();
    assert_eq!(entry(&mut conn, "42-tokens"), None);
    // Off, nothing is written to the index.
    let mut off = settings.clone();
    off.sweep.due_index.enabled = false;
    let plain = TokenService::connect(&off).await.unwrap();
    plain.issue("7", None, Default::default()).await.unwrap();
    assert_eq!(entry(&mut conn, "7-tokens"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_sweep_removes_only_what_expired_and_moves_the_entry() {
    // Bounded per key (the nth expired score read first) with the
    // adaptive throttle; one removal per key at full speed.
    for throttle in [ThrottleMode::Adaptive, ThrottleMode::Off] {
        removes_only_what_expired_and_moves_the_entry(throttle).await;
    }
}

async fn removes_only_what_expired_and_moves_the_entry(throttle: ThrottleMode) {
    let server = RedisServer::start();
    let mut settings = indexed(&server);
    settings.sweep.throttle = throttle;
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    let key = "u1-tokens";
    let live = now + 3_600_000;
    let _: () = redis::cmd("ZADD")
        .arg(key)
        .arg(now - 60_000)
        .arg("expired")
        .arg(now - 1)
        .arg("just-expired")
        .arg(live)
        .arg("live")
        .arg(live + 1)
        .arg("live-later")
        .arg("+inf")
        .arg("never")
        .arg(1_700_000_000)
        .arg("seconds-looking") // kept: below the ms floor
        .arg("-inf")
        .arg("minus-inf")
        .query(&mut conn)
        .unwrap();
    let index = index_key(DEFAULT_PREFIX, key.as_bytes());
    let _: () = conn.zadd(&index, key, now - 60_000).unwrap();
    // Not due (the entry is in the future): left alone.
    let _: () = conn
        .zadd("u2-tokens", "expired-but-indexed-late", now - 5)
        .unwrap();
    let late = index_key(DEFAULT_PREFIX, b"u2-tokens");
    let _: () = conn.zadd(&late, "u2-tokens", live).unwrap();

    let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(report.counts.due_keys, 1);
    assert_eq!(report.counts.members_removed, 2, "{report:?}");
    assert_eq!(report.counts.index_entries_moved, 1);
    let left: Vec<String> = conn.zrange(key, 0, -1).unwrap();
    let mut left_sorted = left.clone();
    left_sorted.sort();
    assert_eq!(
        left_sorted,
        [
            "live",
            "live-later",
            "minus-inf",
            "never",
            "seconds-looking"
        ],
    );
    // The entry moved to the first score above the cutoff, not to the
    // seconds-looking one, which is never removed and would keep it due.
    assert_eq!(entry(&mut conn, key), Some(live as f64));
    assert_eq!(
        conn.zcard::<_, u64>("u2-tokens").unwrap(),
        1,
        "not due: untouched"
    );
    let index_report = report.index.expect("an index report");
    assert_eq!(index_report.index_size, Some(2));
    assert!(index_report.index_lag_seconds >= 59.0, "{index_report:?}");

    // Nothing due now: a second sweep does nothing; not asked to, it
    // does not read the size (as a one-shot `sweep`).
    let conn = Connection::connect(&settings.redis).await.unwrap();
    let progress = SweepProgress::default();
    let stop = CancellationToken::new();
    let mode = SweepMode::Remove;
    let again = sweep::sweep_index(&conn, &settings.sweep, mode, &progress, &stop, false)
        .await
        .unwrap();
    assert_eq!(
        (again.counts.due_keys, again.counts.members_removed),
        (0, 0)
    );
    assert_eq!(again.index.expect("an index report").index_size, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_exactly_at_the_cutoff_goes_and_one_above_stays() {
    let server = RedisServer::start();
    let mut settings = indexed(&server);
    // A grace of a day: the cutoff is a day back, far from the test's own timing.
    settings.sweep.grace = Duration::from_secs(86_400);
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    let cutoff = now - 86_400_000;
    let key = "edge-tokens";
    let _: () = redis::cmd("ZADD")
        .arg(key)
        .arg(cutoff - 10_000)
        .arg("at-cutoff-ish")
        .arg(cutoff + 60_000)
        .arg("inside-grace")
        .query(&mut conn)
        .unwrap();
    let _: () = conn
        .zadd(
            index_key(DEFAULT_PREFIX, key.as_bytes()),
            key,
            cutoff - 10_000,
        )
        .unwrap();
    let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert!(
        report.cutoff <= cutoff + 1_000 && report.cutoff >= cutoff,
        "{}",
        report.cutoff
    );
    let left: Vec<String> = conn.zrange(key, 0, -1).unwrap();
    assert_eq!(left, ["inside-grace"]);
    assert_eq!(entry(&mut conn, key), Some((cutoff + 60_000) as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing() {
    let server = RedisServer::start();
    let settings = indexed(&server);
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    let _: () = conn.zadd("d-tokens", "old", now - 1000).unwrap();
    let _: () = conn
        .zadd(
            index_key(DEFAULT_PREFIX, b"d-tokens"),
            "d-tokens",
            now - 1000,
        )
        .unwrap();
    let report = index_sweep(&settings, SweepMode::DryRun).await.unwrap();
    assert_eq!(report.counts.members_removed, 1);
    assert_eq!(conn.zcard::<_, u64>("d-tokens").unwrap(), 1);
    assert_eq!(entry(&mut conn, "d-tokens"), Some((now - 1000) as f64));
}

/// A dry run over a slot with more due keys than one read takes (100):
/// nothing moves, so reading it again would find the same entries; it
/// counts those and says the node is unfinished, never finished with
/// part of the count. (From a review: it said finished.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_over_a_full_slot_is_not_finished() {
    let server = RedisServer::start();
    let settings = indexed(&server);
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    for i in 0..250 {
        let key = format!("{{full}}u{i}-tokens");
        let _: () = conn
            .zadd_multiple(&key, &[(now - 60_000, "old"), (now + 3_600_000, "new")])
            .unwrap();
        let _: () = conn
            .zadd(
                index_key(DEFAULT_PREFIX, key.as_bytes()),
                &key,
                now - 60_000,
            )
            .unwrap();
    }
    let dry = index_sweep(&settings, SweepMode::DryRun).await.unwrap();
    assert_eq!(dry.counts.members_removed, 100, "{dry:?}");
    let node = &dry.nodes[0];
    assert!(!node.finished, "{dry:?}");
    let reason = node.unfinished_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("dry run: 1 slot(s)"), "{dry:?}");
    let removed = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(removed.counts.members_removed, 250, "{removed:?}");
    assert!(removed.nodes[0].finished, "{removed:?}");
}

/// One index key of another type, and nothing due anywhere: its slot is
/// skipped (the node unfinished, named), and the unit guard, with nothing
/// to sweep, has nothing to prove. It refused every index round (from a
/// review), so one bad key stopped index mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_slot_with_nothing_due_is_named_not_refused_by_the_unit_guard() {
    let server = RedisServer::start();
    let settings = indexed(&server);
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    for user in 0..20 {
        let key = format!("n{user}-tokens");
        let _: () = conn.zadd(&key, "live", now + 3_600_000).unwrap();
        let _: () = conn
            .zadd(
                index_key(DEFAULT_PREFIX, key.as_bytes()),
                &key,
                now + 3_600_000,
            )
            .unwrap();
    }
    let bad = index_key_of_slot(DEFAULT_PREFIX, 7);
    let _: () = conn.set(&bad, "not a sorted set").unwrap();
    let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(report.counts.members_removed, 0, "{report:?}");
    let node = &report.nodes[0];
    assert!(!node.finished, "{report:?}");
    let reason = node.unfinished_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("slot 7"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_the_sweep_may_not_touch_are_dropped_and_their_keys_left_alone() {
    // Bounded per key (the nth expired score read first) with the
    // adaptive throttle; one removal per key at full speed.
    for throttle in [ThrottleMode::Adaptive, ThrottleMode::Off] {
        drops_entries_it_may_not_touch(throttle).await;
    }
}

async fn drops_entries_it_may_not_touch(throttle: ThrottleMode) {
    let server = RedisServer::start();
    let mut settings = indexed(&server);
    settings.sweep.throttle = throttle;
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    // A sorted set of another application, named in the index by mistake
    // (or by an attacker who can write the index).
    let _: () = conn.zadd("leaderboard", "alice", now - 1000).unwrap();
    let index = index_key(DEFAULT_PREFIX, b"leaderboard");
    let _: () = conn.zadd(&index, "leaderboard", now - 1000).unwrap();
    // A token key filed under another slot's index key.
    let other = index_key_of_slot(DEFAULT_PREFIX, (key_slot(b"x-tokens") + 1) % 16384);
    let _: () = conn.zadd("x-tokens", "old", now - 1000).unwrap();
    let _: () = conn.zadd(&other, "x-tokens", now - 1000).unwrap();
    // A key that is not a sorted set.
    let _: () = conn.set("s-tokens", "a string").unwrap();
    let _: () = conn
        .zadd(
            index_key(DEFAULT_PREFIX, b"s-tokens"),
            "s-tokens",
            now - 1000,
        )
        .unwrap();

    let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(report.counts.members_removed, 0, "{report:?}");
    assert_eq!(report.counts.index_entries_dropped, 3, "{report:?}");
    assert_eq!(conn.zcard::<_, u64>("leaderboard").unwrap(), 1);
    assert_eq!(conn.zcard::<_, u64>("x-tokens").unwrap(), 1);
    assert_eq!(conn.zcard::<_, u64>(&index).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_more_than_the_bound_is_cleaned_in_several_calls() {
    // A script call is atomic: the bound holds at full speed too.
    for throttle in [ThrottleMode::Adaptive, ThrottleMode::Off] {
        cleans_a_key_with_more_than_the_bound_in_several_calls(throttle).await;
    }
}

async fn cleans_a_key_with_more_than_the_bound_in_several_calls(throttle: ThrottleMode) {
    let server = RedisServer::start();
    let mut settings = indexed(&server);
    settings.sweep.max_members_per_command = 10;
    settings.sweep.throttle = throttle;
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    let mut cmd = redis::cmd("ZADD");
    cmd.arg("big-tokens");
    for n in 0..95 {
        cmd.arg(now - 100_000 + n).arg(format!("m{n}"));
    }
    cmd.arg(now + 3_600_000).arg("live");
    let _: () = cmd.query(&mut conn).unwrap();
    let _: () = conn
        .zadd(
            index_key(DEFAULT_PREFIX, b"big-tokens"),
            "big-tokens",
            now - 100_000,
        )
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(report.counts.members_removed, 95, "{throttle:?}");
    let left: Vec<String> = conn.zrange("big-tokens", 0, -1).unwrap();
    assert_eq!(left, ["live"]);
    // 95 expired, at most 10 per removal: 10 removals (unbounded, one),
    // and the permission probe's two over an empty range.
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    let removals = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_zremrangebyscore:calls="))
        .and_then(|rest| rest.split(',').next())
        .map(|calls| calls.parse::<u64>().unwrap());
    assert_eq!(removals, Some(12), "{throttle:?}");
    assert_eq!(
        entry(&mut conn, "big-tokens"),
        Some((now + 3_600_000) as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_still_due_after_the_last_round_leaves_the_node_unfinished() {
    let server = RedisServer::start();
    let mut settings = indexed(&server);
    // One member per call: 70 expired members outlast the 64 rounds.
    settings.sweep.max_members_per_command = 1;
    settings.sweep.throttle = ThrottleMode::Off;
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    let mut cmd = redis::cmd("ZADD");
    cmd.arg("huge-tokens");
    for n in 0..70 {
        cmd.arg(now - 100_000 + n).arg(format!("m{n}"));
    }
    cmd.arg(now + 3_600_000).arg("live");
    let _: () = cmd.query(&mut conn).unwrap();
    let index = index_key(DEFAULT_PREFIX, b"huge-tokens");
    let _: () = conn.zadd(&index, "huge-tokens", now - 100_000).unwrap();
    let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(report.counts.members_removed, 64, "{report:?}");
    assert!(!report.nodes[0].finished, "{report:?}");
    assert_eq!(report.unfinished_nodes.len(), 1, "{report:?}");
    // The next sweep goes on where it stopped.
    let again = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(again.counts.members_removed, 6, "{again:?}");
    assert!(again.nodes[0].finished, "{again:?}");
    assert_eq!(
        entry(&mut conn, "huge-tokens"),
        Some((now + 3_600_000) as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scan_repairs_the_index_by_lowering_only() {
    let server = RedisServer::start();
    let settings = indexed(&server);
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    // Written by code that does not maintain the index.
    let _: () = redis::cmd("ZADD")
        .arg("legacy-tokens")
        .arg(now - 1000)
        .arg("old")
        .arg(now + 60_000)
        .arg("soon")
        .arg(now + 3_600_000)
        .arg("later")
        .query(&mut conn)
        .unwrap();
    // An entry already earlier than the set's next expiry stays as it is.
    let _: () = conn.zadd("early-tokens", "a", now + 3_600_000).unwrap();
    let _: () = conn
        .zadd(
            index_key(DEFAULT_PREFIX, b"early-tokens"),
            "early-tokens",
            now + 5,
        )
        .unwrap();
    let report = full_scan(&settings).await;
    assert_eq!(report.counts.members_removed, 1);
    assert_eq!(report.counts.index_entries_repaired, 1, "{report:?}");
    assert_eq!(report.counts.index_entries_moved, 0, "{report:?}");
    assert_eq!(
        entry(&mut conn, "legacy-tokens"),
        Some((now + 60_000) as f64)
    );
    assert_eq!(entry(&mut conn, "early-tokens"), Some((now + 5) as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_guard_reads_the_due_keys_and_refuses_seconds_in_ms_mode() {
    let server = RedisServer::start();
    let settings = indexed(&server);
    let mut conn = server.conn();
    let now_s = redis_now_ms(&mut conn) / 1000;
    let _: () = conn.zadd("sec-tokens", "a", now_s + 3600).unwrap();
    // Due by the (ms) index; its set is scored in seconds.
    let _: () = conn
        .zadd(index_key(DEFAULT_PREFIX, b"sec-tokens"), "sec-tokens", 5)
        .unwrap();
    let err = index_sweep(&settings, SweepMode::Remove).await.unwrap_err();
    assert!(matches!(err, SweepError::UnitGuard { .. }), "{err}");
    assert_eq!(conn.zcard::<_, u64>("sec-tokens").unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_eval_is_refused_before_anything_changes() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("noeval")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("+@all")
        .arg("-eval")
        .arg("-evalsha")
        .query(&mut conn)
        .unwrap();
    let now = redis_now_ms(&mut conn);
    let _: () = conn.zadd("p-tokens", "old", now - 1000).unwrap();
    let _: () = conn.zadd("p-tokens", "new", now + 3_600_000).unwrap();
    let _: () = conn
        .zadd(
            index_key(DEFAULT_PREFIX, b"p-tokens"),
            "p-tokens",
            now - 1000,
        )
        .unwrap();
    let mut settings = indexed(&server);
    settings.redis.url = format!("redis://noeval:pw@127.0.0.1:{}", server.port)
        .parse()
        .unwrap();
    let err = index_sweep(&settings, SweepMode::Remove).await.unwrap_err();
    assert!(err.to_string().contains("permission"), "{err}");
    assert_eq!(conn.zcard::<_, u64>("p-tokens").unwrap(), 2);
}

/// Many logins, with short and long lifetimes, race repeated index sweeps;
/// after each sweep and at the end, no key's entry is later than any of its
/// unexpired members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_racing_index_sweeps_never_leave_an_entry_late() {
    let server = RedisServer::start();
    let mut settings = indexed(&server);
    settings.sweep.max_members_per_command = 2;
    let service = Arc::new(TokenService::connect(&settings).await.unwrap());
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    // Expired members to sweep while the logins run.
    for user in 0..20 {
        let key = format!("{user}-tokens");
        for n in 0..5 {
            let _: () = conn.zadd(&key, format!("old{n}"), now - 1000 - n).unwrap();
        }
        let _: () = conn
            .zadd(index_key(DEFAULT_PREFIX, key.as_bytes()), &key, now - 1005)
            .unwrap();
    }
    let logins: Vec<_> = (0..8)
        .map(|worker| {
            let service = Arc::clone(&service);
            tokio::spawn(async move {
                for n in 0..60u64 {
                    let user = (worker * 7 + n) % 20;
                    // Lifetimes that go both ways, so a login often adds an
                    // earlier-expiring token than the set's next.
                    let ttl = Duration::from_secs(60 + (n * 37 + worker) % 3600);
                    service
                        .issue(&user.to_string(), Some(ttl), Default::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut sweeps = 0;
    while logins.iter().any(|l| !l.is_finished()) || sweeps < 3 {
        index_sweep(&settings, SweepMode::Remove).await.unwrap();
        sweeps += 1;
    }
    for login in logins {
        login.await.unwrap();
    }
    index_sweep(&settings, SweepMode::Remove).await.unwrap();
    let now = redis_now_ms(&mut conn) as f64;
    for user in 0..20 {
        let key = format!("{user}-tokens");
        let members: Vec<(String, f64)> = conn.zrange_withscores(&key, 0, -1).unwrap();
        let live: Vec<f64> = members
            .iter()
            .map(|(_, s)| *s)
            .filter(|s| *s > now)
            .collect();
        assert!(
            !members.iter().any(|(m, _)| m.starts_with("old")),
            "{key}: {members:?}"
        );
        if let Some(earliest) = live.iter().copied().reduce(f64::min) {
            let score = entry(&mut conn, &key).unwrap_or_else(|| panic!("{key} has no entry"));
            assert!(
                score <= earliest,
                "{key}: entry {score} later than {earliest}"
            );
        }
    }
    assert!(sweeps >= 3);
}

/// A full scan stopped between the bounded steps of a key (more expired
/// members than `max_members_per_command`) leaves the key's entry early,
/// never at its live member with expired ones still there: each step
/// repairs from its own bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scan_stopped_between_bounded_steps_leaves_no_late_entry() {
    let server = RedisServer::start();
    let mut settings = indexed(&server);
    settings.sweep.throttle = ThrottleMode::Adaptive;
    settings.sweep.max_members_per_command = 2;
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    // Written by code that does not maintain the index: no entry.
    for n in 0..5 {
        let _: () = conn
            .zadd("legacy-tokens", format!("old{n}"), now - 10_000 + n)
            .unwrap();
    }
    let _: () = conn.zadd("legacy-tokens", "live", now + 3_600_000).unwrap();
    let rest = Connection::connect(&settings.redis).await.unwrap();
    let stop = CancellationToken::new();
    // Stopped as the first removal's round trip ends.
    let progress = {
        let stop = stop.clone();
        SweepProgress::with_batch_timer(move |_| stop.cancel())
    };
    let report = sweep::sweep(&rest, &settings.sweep, SweepMode::Remove, &progress, &stop)
        .await
        .unwrap();
    assert!(report.interrupted, "{report:?}");
    let left: Vec<(String, f64)> = conn.zrange_withscores("legacy-tokens", 0, -1).unwrap();
    assert_eq!(left.len(), 4, "one bounded step of 2: {left:?}");
    // Its entry is at its first member left, expired: early, so the next
    // index sweep finishes what the stopped scan began.
    let first = left[0].1;
    assert_eq!(entry(&mut conn, "legacy-tokens"), Some(first), "{left:?}");
    let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(report.counts.members_removed, 3, "{report:?}");
    let live = (now + 3_600_000) as f64;
    assert_eq!(entry(&mut conn, "legacy-tokens"), Some(live));
}
