//! The sweep's invariants, each against a private redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{members, redis_now_ms, settings_for, sweep_with, RedisServer};
use rand::{Rng, SeedableRng};
use redis::Commands;
use token_sweeper::config::ScoreUnit;
use token_sweeper::store::Connection;
use token_sweeper::sweep::{
    check_units, sweep_keys, sweep_nodes, Check, Expired, SweepError, SweepMode, SweepProgress,
};

const HOUR_MS: i64 = 3_600_000;

/// A millisecond expiry long past (September 2020): expired whatever the
/// clock, and far above the seconds window that milliseconds sweeps keep.
const LONG_AGO_MS: i64 = 1_600_000_000_000;

/// The scores a milliseconds sweep at `now_ms` (no grace) removes.
fn expired_ms(now_ms: i64) -> Expired {
    Expired::at(
        i128::from(now_ms) * 1000,
        Duration::ZERO,
        ScoreUnit::Milliseconds,
    )
    .unwrap()
}

#[tokio::test]
async fn removes_expired_members_and_keeps_live_ones() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    for user in 0..50 {
        let key = format!("user{user}-tokens");
        let _: () = c.zadd(&key, "old-1", now - HOUR_MS).unwrap();
        let _: () = c.zadd(&key, "old-2", now - 1).unwrap();
        let _: () = c.zadd(&key, "live-1", now + HOUR_MS).unwrap();
        let _: () = c.zadd(&key, "live-2", now + 24 * HOUR_MS).unwrap();
    }

    let report = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap();

    assert_eq!(report.counts.keys_scanned, 50);
    assert_eq!(report.counts.keys_changed, 50);
    assert_eq!(report.counts.members_removed, 100);
    assert_eq!(report.counts.errors, 0);
    for user in 0..50 {
        let left: Vec<String> = c.zrange(format!("user{user}-tokens"), 0, -1).unwrap();
        assert_eq!(left, ["live-1", "live-2"], "user{user}");
    }
}

#[tokio::test]
async fn boundary_members_at_the_cutoff_go_and_one_unit_later_stay() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let mut conn = Connection::connect(&settings_for(&server).redis)
        .await
        .unwrap();
    let cutoff = 1_800_000_000_000_i64;
    let _: () = c.zadd("b-tokens", "below", cutoff - 1).unwrap();
    let _: () = c.zadd("b-tokens", "at", cutoff).unwrap();
    let _: () = c
        .zadd("b-tokens", "fraction-above", cutoff as f64 + 0.5)
        .unwrap();
    let _: () = c.zadd("b-tokens", "above", cutoff + 1).unwrap();

    let outcome = sweep_keys(
        &mut conn,
        &[b"b-tokens".to_vec()],
        expired_ms(cutoff),
        SweepMode::Remove,
    )
    .await
    .unwrap();

    assert_eq!(outcome.counts.members_removed, 2);
    let left: Vec<String> = c.zrange("b-tokens", 0, -1).unwrap();
    assert_eq!(left, ["fraction-above", "above"]);
}

#[tokio::test]
async fn the_cutoff_is_redis_time_and_nothing_above_it_is_removed() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let before = redis_now_ms(&mut c);
    // One member per millisecond from 200 ms ago to 200 ms ahead.
    let mut pipe = redis::pipe();
    for offset in -200..=200_i64 {
        pipe.zadd("dense-tokens", offset, before + offset).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();

    let report = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap();
    let after = redis_now_ms(&mut c);

    assert!(
        (before..=after).contains(&report.cutoff),
        "cutoff {} not within Redis TIME {before}..{after}",
        report.cutoff
    );
    let left = members(&mut c, b"dense-tokens");
    assert!(left.iter().all(|(_, score)| *score > report.cutoff as f64));
    let removed = 401 - left.len() as u64;
    assert_eq!(removed, report.counts.members_removed);
    assert_eq!(removed as i64, report.cutoff - (before - 200) + 1);
}

#[tokio::test]
async fn grace_keeps_recently_expired_tokens() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c
        .zadd("g-tokens", "expired-a-minute-ago", now - 60_000)
        .unwrap();
    let _: () = c
        .zadd("g-tokens", "expired-a-day-ago", now - 24 * HOUR_MS)
        .unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.grace = Duration::from_secs(3600);

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 1);
    let left: Vec<String> = c.zrange("g-tokens", 0, -1).unwrap();
    assert_eq!(left, ["expired-a-minute-ago"]);
}

/// `+inf` never expires. `-inf` is expired, and swept in seconds; in
/// milliseconds it is below the removal floor, so it stays (for the key's
/// TTL to take): the range removed there starts above the seconds window.
#[tokio::test]
async fn infinite_scores_minus_inf_is_expired_plus_inf_never() {
    let server = RedisServer::start();
    let mut c = server.conn();
    for (unit, removed, left) in [
        (ScoreUnit::Seconds, 1, vec!["live", "plus"]),
        (ScoreUnit::Milliseconds, 0, vec!["minus", "live", "plus"]),
    ] {
        let now = redis_now_ms(&mut c);
        let live = match unit {
            ScoreUnit::Seconds => now / 1000 + 3600,
            ScoreUnit::Milliseconds => now + HOUR_MS,
        };
        let _: () = redis::cmd("ZADD")
            .arg("inf-tokens")
            .arg("-inf")
            .arg("minus")
            .arg("+inf")
            .arg("plus")
            .arg(live)
            .arg("live")
            .query(&mut c)
            .unwrap();
        let mut settings = settings_for(&server);
        settings.sweep.score_unit = unit;

        let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

        assert_eq!(report.counts.members_removed, removed, "{unit}");
        let members: Vec<String> = c.zrange("inf-tokens", 0, -1).unwrap();
        assert_eq!(members, left, "{unit}");
        let _: () = c.del("inf-tokens").unwrap();
    }
}

#[tokio::test]
async fn a_set_with_only_expired_members_disappears() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("gone-tokens", "a", now - 10).unwrap();
    let _: () = c.zadd("gone-tokens", "b", now - 20).unwrap();

    sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap();

    let exists: bool = c.exists("gone-tokens").unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn non_matching_keys_and_other_types_are_untouched() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    // A sorted set that does not match the pattern, full of "expired" scores.
    let _: () = c.zadd("leaderboard", "alice", 1).unwrap();
    let _: () = c.zadd("user1-tokens-archive", "x", now - HOUR_MS).unwrap();
    // Matching names, other types.
    let _: () = c.set("str-tokens", "value").unwrap();
    let _: () = c.hset("hash-tokens", "f", "v").unwrap();
    let _: () = c.rpush("list-tokens", "item").unwrap();
    let _: () = c.sadd("set-tokens", "member").unwrap();

    let report = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap();

    assert_eq!(
        report.counts.keys_scanned, 0,
        "TYPE zset filters the others out"
    );
    assert_eq!(report.counts.members_removed, 0);
    let board: Vec<(String, f64)> = c.zrange_withscores("leaderboard", 0, -1).unwrap();
    assert_eq!(board, [("alice".to_owned(), 1.0)]);
    let archive: i64 = c.zcard("user1-tokens-archive").unwrap();
    assert_eq!(archive, 1);
    let s: String = c.get("str-tokens").unwrap();
    assert_eq!(s, "value");
    let h: String = c.hget("hash-tokens", "f").unwrap();
    assert_eq!(h, "v");
    let l: Vec<String> = c.lrange("list-tokens", 0, -1).unwrap();
    assert_eq!(l, ["item"]);
    let m: Vec<String> = c.smembers("set-tokens").unwrap();
    assert_eq!(m, ["member"]);
}

#[tokio::test]
async fn key_ttls_are_kept() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("ttl-tokens", "old", now - HOUR_MS).unwrap();
    let _: () = c.zadd("ttl-tokens", "live", now + HOUR_MS).unwrap();
    let _: () = c.pexpire("ttl-tokens", HOUR_MS).unwrap();
    let _: () = c.zadd("persist-tokens", "old", now - HOUR_MS).unwrap();
    let _: () = c.zadd("persist-tokens", "live", now + HOUR_MS).unwrap();

    let report = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap();

    assert_eq!(report.counts.members_removed, 2);
    let ttl: i64 = c.pttl("ttl-tokens").unwrap();
    assert!(ttl > HOUR_MS - 60_000 && ttl <= HOUR_MS, "pttl {ttl}");
    let no_ttl: i64 = c.pttl("persist-tokens").unwrap();
    assert_eq!(no_ttl, -1, "a key without TTL must not get one");
}

#[tokio::test]
async fn odd_key_names_are_swept_byte_for_byte() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let odd: Vec<Vec<u8>> = vec![
        b"glob*?[x]-tokens".to_vec(),
        b"with space-tokens".to_vec(),
        b"{42}-tokens".to_vec(),
        b"line\nbreak-tokens".to_vec(),
        b"\xff\xfe\x00binary-tokens".to_vec(),
        "ユーザー-tokens".as_bytes().to_vec(),
        b"-tokens".to_vec(),
    ];
    for key in &odd {
        let _: () = c.zadd(key, "old", now - HOUR_MS).unwrap();
        let _: () = c.zadd(key, "live", now + HOUR_MS).unwrap();
    }

    let report = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap();

    assert_eq!(report.counts.keys_scanned, odd.len() as u64);
    assert_eq!(report.counts.members_removed, odd.len() as u64);
    for key in &odd {
        let left: Vec<String> = c.zrange(key, 0, -1).unwrap();
        assert_eq!(left, ["live"], "{}", String::from_utf8_lossy(key));
    }
}

#[tokio::test]
async fn a_pattern_with_glob_characters_matches_only_what_it_says() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    for key in ["tenant-a:u1-tokens", "tenant-b:u1-tokens"] {
        let _: () = c.zadd(key, "old", now - HOUR_MS).unwrap();
    }
    let mut settings = settings_for(&server);
    settings.sweep.pattern = "tenant-a:*-tokens".to_owned();

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 1);
    let b: i64 = c.zcard("tenant-b:u1-tokens").unwrap();
    assert_eq!(b, 1);
}

#[tokio::test]
async fn dry_run_counts_and_changes_nothing() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    for user in 0..20 {
        let key = format!("u{user}-tokens");
        let _: () = c.zadd(&key, "old", now - HOUR_MS).unwrap();
        let _: () = c.zadd(&key, "live", now + HOUR_MS).unwrap();
    }
    let _: () = c.zadd("only-old-tokens", "old", now - HOUR_MS).unwrap();
    let snapshot = |c: &mut redis::Connection| -> Vec<Vec<u8>> {
        let mut keys: Vec<String> = c.keys("*").unwrap();
        keys.sort();
        keys.iter()
            .map(|k| redis::cmd("DUMP").arg(k).query(c).unwrap())
            .collect()
    };
    let before = snapshot(&mut c);

    let report = sweep_with(&settings_for(&server), SweepMode::DryRun)
        .await
        .unwrap();

    assert_eq!(report.mode, SweepMode::DryRun);
    assert_eq!(
        report.counts.members_removed, 21,
        "what a real sweep would remove"
    );
    assert_eq!(report.counts.keys_changed, 21);
    assert_eq!(snapshot(&mut c), before);
}

#[tokio::test]
async fn a_key_that_is_no_longer_a_sorted_set_is_skipped_and_counted() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let _: () = c.zadd("z1-tokens", "old", LONG_AGO_MS).unwrap();
    let _: () = c.set("became-a-string-tokens", "x").unwrap();
    let _: () = c.zadd("z2-tokens", "old", LONG_AGO_MS).unwrap();
    let mut conn = Connection::connect(&settings_for(&server).redis)
        .await
        .unwrap();
    // The batch as SCAN would have returned it before the type changed.
    let batch = [
        b"z1-tokens".to_vec(),
        b"became-a-string-tokens".to_vec(),
        b"z2-tokens".to_vec(),
    ];

    let outcome = sweep_keys(
        &mut conn,
        &batch,
        expired_ms(LONG_AGO_MS),
        SweepMode::Remove,
    )
    .await
    .unwrap();

    assert_eq!(outcome.counts.skipped_wrong_type, 1);
    assert_eq!(outcome.counts.errors, 0);
    assert_eq!(
        outcome.counts.members_removed, 2,
        "the keys around it were swept"
    );
    let s: String = c.get("became-a-string-tokens").unwrap();
    assert_eq!(s, "x");
}

#[tokio::test]
async fn keys_changing_type_during_a_sweep_never_fail_it() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let mut pipe = redis::pipe();
    for user in 0..20_000 {
        pipe.zadd(format!("u{user}-tokens"), "old", LONG_AGO_MS)
            .ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let flipper = {
        let mut c = server.conn();
        std::thread::spawn(move || {
            for i in 0..2_000 {
                let key = format!("u{}-tokens", (i * 7919) % 20_000);
                let _: () = redis::pipe()
                    .atomic()
                    .del(&key)
                    .set(&key, "now a string")
                    .query(&mut c)
                    .unwrap();
            }
        })
    };
    let mut settings = settings_for(&server);
    settings.sweep.batch_size = 50;

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();
    flipper.join().unwrap();

    assert_eq!(report.counts.errors, 0);
    let zsets_left: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100_000)
        .arg("TYPE")
        .arg("zset")
        .query::<(u64, Vec<String>)>(&mut c)
        .unwrap()
        .1;
    assert!(
        zsets_left.is_empty(),
        "every set left was swept: {zsets_left:?}"
    );
}

#[tokio::test]
async fn unit_guard_refuses_seconds_data_swept_as_milliseconds() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now_s = redis_now_ms(&mut c) / 1000;
    for user in 0..10 {
        let key = format!("u{user}-tokens");
        let _: () = c.zadd(&key, "live", now_s + 3600).unwrap();
        let _: () = c.zadd(&key, "old", now_s - 3600).unwrap();
    }
    let mut settings = settings_for(&server);
    settings.sweep.score_unit = ScoreUnit::Milliseconds;

    let err = sweep_with(&settings, SweepMode::Remove).await.unwrap_err();

    assert!(
        matches!(
            err,
            SweepError::UnitGuard {
                seen: ScoreUnit::Seconds,
                suspicious: 10,
                sampled: 10,
                ..
            }
        ),
        "{err}"
    );
    for user in 0..10 {
        let n: i64 = c.zcard(format!("u{user}-tokens")).unwrap();
        assert_eq!(n, 2, "nothing may be deleted when the guard trips");
    }
}

#[tokio::test]
async fn unit_guard_catches_one_bad_set_among_good_ones() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    for user in 0..30 {
        let _: () = c
            .zadd(format!("u{user}-tokens"), "old", now - HOUR_MS)
            .unwrap();
    }
    let _: () = c.zadd("seconds-tokens", "live", now / 1000 + 3600).unwrap();

    let err = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap_err();

    assert!(
        matches!(err, SweepError::UnitGuard { suspicious: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("seconds-tokens"), "{err}");
    let live: i64 = c.zcard("seconds-tokens").unwrap();
    assert_eq!(live, 1);
}

#[tokio::test]
async fn unit_guard_refuses_milliseconds_data_swept_as_seconds() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("ms-tokens", "live", now + HOUR_MS).unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.score_unit = ScoreUnit::Seconds;

    let err = sweep_with(&settings, SweepMode::Remove).await.unwrap_err();

    assert!(
        matches!(
            err,
            SweepError::UnitGuard {
                seen: ScoreUnit::Milliseconds,
                ..
            }
        ),
        "{err}"
    );
}

/// With the guard off, seconds swept as milliseconds still keep their live
/// members: the removal floor is in the command. (Before, they read as
/// January 1970 and went.) Milliseconds data is swept as usual.
#[tokio::test]
async fn unit_guard_can_be_turned_off() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c
        .zadd("s-tokens", "live-in-seconds", now / 1000 + 3600)
        .unwrap();
    let _: () = c.zadd("ms-tokens", "old", now - HOUR_MS).unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.unit_guard = false;

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 1);
    let left: Vec<String> = c.zrange("s-tokens", 0, -1).unwrap();
    assert_eq!(left, ["live-in-seconds"]);
    let ms: i64 = c.zcard("ms-tokens").unwrap();
    assert_eq!(ms, 0);
}

#[tokio::test]
async fn seconds_unit_sweeps_jwt_exp_scores() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now_s = redis_now_ms(&mut c) / 1000;
    let _: () = c.zadd("jwt-tokens", "old", now_s - 10).unwrap();
    let _: () = c.zadd("jwt-tokens", "live", now_s + 10).unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.score_unit = ScoreUnit::Seconds;

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 1);
    assert!((now_s..=now_s + 5).contains(&report.cutoff));
    let left: Vec<String> = c.zrange("jwt-tokens", 0, -1).unwrap();
    assert_eq!(left, ["live"]);
}

#[tokio::test]
async fn many_keys_across_many_scan_pages_and_batches() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let mut pipe = redis::pipe();
    for user in 0..25_000 {
        let key = format!("u{user}-tokens");
        pipe.zadd(&key, "old", now - HOUR_MS).ignore();
        pipe.zadd(&key, "live", now + HOUR_MS).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.scan_count = 100;
    settings.sweep.batch_size = 37;
    settings.sweep.max_in_flight = 3;

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 25_000);
    assert_eq!(report.counts.keys_changed, 25_000);
    let total: i64 = (0..25_000)
        .map(|u| c.zcard::<_, i64>(format!("u{u}-tokens")).unwrap())
        .sum();
    assert_eq!(total, 25_000, "exactly the live member of each set is left");
}

#[tokio::test]
async fn max_keys_per_second_paces_the_sweep() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let mut pipe = redis::pipe();
    for user in 0..300 {
        pipe.zadd(format!("u{user}-tokens"), "old", LONG_AGO_MS)
            .ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.max_keys_per_second = 200;

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 300);
    // A lower bound only: a slow machine makes it longer, never shorter.
    assert!(
        report.duration_seconds >= 1.0,
        "300 keys at 200/s took {}s",
        report.duration_seconds
    );
}

#[tokio::test]
async fn shutdown_stops_the_scan_and_says_so() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let _: () = c.zadd("u-tokens", "old", LONG_AGO_MS).unwrap();
    let settings = settings_for(&server);
    let conn = Connection::connect(&settings.redis).await.unwrap();
    let progress = token_sweeper::sweep::SweepProgress::default();
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();

    let report =
        token_sweeper::sweep::sweep(&conn, &settings.sweep, SweepMode::Remove, &progress, &stop)
            .await
            .unwrap();

    assert!(report.interrupted);
    assert_eq!(report.counts.members_removed, 0);
}

/// Random sets with random scores around now, in both units, mixed with
/// scores in the other unit and around the removal floor (the unit guard
/// off, so that nothing stops the sweep): after one sweep, exactly the
/// members scored at or below the reported cutoff, and above the reported
/// floor if there is one, are gone.
#[tokio::test]
async fn property_exactly_the_members_at_or_below_the_cutoff_are_removed() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for round in 0..12 {
        let unit = if round % 2 == 0 {
            ScoreUnit::Milliseconds
        } else {
            ScoreUnit::Seconds
        };
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        let now = redis_now_ms(&mut c);
        let (center, spread): (f64, f64) = match unit {
            ScoreUnit::Milliseconds => (now as f64, 2_000.0),
            ScoreUnit::Seconds => ((now / 1000) as f64, 3.0),
        };
        // A timestamp in the other unit, a few months either side of now.
        let other_unit = match unit {
            ScoreUnit::Milliseconds => (now / 1000) as f64,
            ScoreUnit::Seconds => now as f64,
        };
        let floor = token_sweeper::sweep::removal_floor(unit).unwrap_or(0) as f64;
        let mut written: Vec<(String, String, f64)> = Vec::new();
        let mut pipe = redis::pipe();
        for user in 0..rng.random_range(1..300) {
            let key = format!("u{round}-{user}-tokens");
            for m in 0..rng.random_range(1..8) {
                let score = match rng.random_range(0..14) {
                    0 => center.floor(), // exactly "now"
                    1 => center + rng.random_range(-spread..spread).round(),
                    2 => other_unit + rng.random_range(-1e7..1e7_f64).round(),
                    // Around the floor (in seconds: around 0).
                    3 => floor + f64::from(rng.random_range(-2..=2)),
                    4 => [0.0, -0.0, -1.0, 1.0][rng.random_range(0..4)],
                    _ => center + rng.random_range(-spread..spread),
                };
                let member = format!("m{m}");
                pipe.zadd(&key, &member, score).ignore();
                written.push((key.clone(), member, score));
            }
        }
        let _: () = pipe.query(&mut c).unwrap();
        let mut settings = settings_for(&server);
        settings.sweep.score_unit = unit;
        settings.sweep.unit_guard = false;
        settings.sweep.batch_size = rng.random_range(1..64);
        settings.sweep.scan_count = rng.random_range(1..200);

        let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

        assert_eq!(
            report.score_floor.is_some(),
            unit == ScoreUnit::Milliseconds,
            "{report:?}"
        );
        let mut expected_removed = 0;
        for (key, member, score) in &written {
            let present: Option<f64> = c.zscore(key, member).unwrap();
            let expired = *score <= report.cutoff as f64
                && report.score_floor.is_none_or(|floor| *score > floor as f64);
            expected_removed += u64::from(expired);
            assert_eq!(
                present.is_none(),
                expired,
                "round {round} ({unit}): {key} {member} score {score} cutoff {} floor {:?}",
                report.cutoff,
                report.score_floor
            );
        }
        assert_eq!(
            report.counts.members_removed, expected_removed,
            "round {round}"
        );
    }
}

/// Sweeps as the README's `token-sweeper` ACL user minus `without`, through
/// the binary; returns (exit code, stderr).
fn sweep_as_user_without(
    server: &RedisServer,
    without: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    common::create_user(server, "token-sweeper", "sweeper-pw", without);
    let url = server.url();
    let mut all = vec![
        ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
    ];
    all.extend_from_slice(env);
    let out = common::run_sweeper(&["sweep"], &all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 9, defect 1: a user created before the guard existed cannot run
/// its read. Seconds-scored data swept as milliseconds would lose every
/// live member; the guard must stop the sweep instead of reading "no answer"
/// as "all clear".
#[test]
fn a_unit_guard_refused_by_acl_stops_the_sweep_before_any_deletion() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now_s = redis_now_ms(&mut c) / 1000;
    for user in 0..20 {
        let key = format!("u{user}-tokens");
        let _: () = c.zadd(&key, "live", now_s + 3600).unwrap();
        let _: () = c.zadd(&key, "old", now_s - 3600).unwrap();
    }

    let (code, err) = sweep_as_user_without(&server, &["zrevrangebyscore"], &[]);

    for user in 0..20 {
        let n: i64 = c.zcard(format!("u{user}-tokens")).unwrap();
        assert_eq!(n, 2, "u{user}-tokens: nothing may be deleted ({err})");
    }
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("unit guard"), "{err}");
    // redis-rs prints the NOPERM code as "NoPerm".
    assert!(err.contains("NoPerm"), "{err}");
    assert!(err.contains("'zrevrangebyscore' command"), "{err}");
}

/// Sets holding only members that say nothing about the unit: `+inf`
/// (never expires) and `-inf` (always expired).
fn seed_infinite_only(c: &mut redis::Connection, prefix: &str, sets: usize) {
    let mut pipe = redis::pipe();
    for n in 0..sets {
        pipe.cmd("ZADD")
            .arg(format!("{prefix}{n}-tokens"))
            .arg("+inf")
            .arg("forever")
            .arg("-inf")
            .arg("revoked")
            .ignore();
    }
    let _: () = pipe.query(c).unwrap();
}

/// No set the guard read had a finite score, and the node has more: the
/// unit of those is unknown, so the guard refuses rather than pass on no
/// evidence.
#[tokio::test]
async fn the_unit_guard_refuses_to_pass_on_no_evidence() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed_infinite_only(&mut c, "inf", 100);
    let mut settings = settings_for(&server);
    settings.sweep.unit_guard_sample = 1;

    let err = sweep_with(&settings, SweepMode::Remove).await.unwrap_err();

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
    let read = token_sweeper::sweep::GUARD_READ_FACTOR;
    assert!(
        err.to_string().contains(&format!(
            "none of the first {read} sets has a score that looks like a timestamp in ms \
                 (0 have scores that look like neither unit"
        )),
        "{err}"
    );
    let revoked: i64 = c.zcard("inf0-tokens").unwrap();
    assert_eq!(revoked, 2, "nothing deleted, not even -inf members");
}

/// The same sets, all of them read: nothing on the node has a score the
/// unit matters for, so the sweep goes ahead (and removes only -inf, which
/// a seconds sweep removes).
#[tokio::test]
async fn the_unit_guard_passes_when_it_read_every_key_and_none_had_a_finite_score() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed_infinite_only(&mut c, "inf", 5);
    let mut settings = settings_for(&server);
    settings.sweep.score_unit = ScoreUnit::Seconds;

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 5);
    let left: Vec<String> = c.zrange("inf0-tokens", 0, -1).unwrap();
    assert_eq!(left, ["forever"]);
}

/// One seconds-scored set among a thousand that say nothing: the guard
/// reads on past them until it finds a score, and trips. Before, it read the
/// first 64 keys SCAN returned and passed on whatever they said (here: most
/// likely nothing), and the seconds set lost its live member.
#[tokio::test]
async fn the_unit_guard_reads_past_sets_with_nothing_to_say() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed_infinite_only(&mut c, "inf", 1000);
    let now_s = redis_now_ms(&mut c) / 1000;
    let _: () = c.zadd("seconds-tokens", "live", now_s + 3600).unwrap();

    let err = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap_err();

    assert!(
        matches!(
            err,
            SweepError::UnitGuard {
                seen: ScoreUnit::Seconds,
                suspicious: 1,
                ..
            }
        ),
        "{err}"
    );
    let live: i64 = c.zcard("seconds-tokens").unwrap();
    assert_eq!(live, 1);
}

/// The guard's read on real replies: a key deleted since SCAN, a key that
/// became a string and a set of infinities are definite "nothing to say";
/// the others give their highest finite score.
#[tokio::test]
async fn the_unit_guard_takes_vanished_retyped_and_infinite_keys_as_nothing_to_say() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.set("now-a-string-tokens", "x").unwrap();
    seed_infinite_only(&mut c, "inf", 1);
    let _: () = c.zadd("a-tokens", "live", now + HOUR_MS).unwrap();
    let _: () = c.zadd("b-tokens", "old", now - HOUR_MS).unwrap();
    let mut conn = Connection::connect(&settings_for(&server).redis)
        .await
        .unwrap();
    let keys: Vec<Vec<u8>> = [
        "deleted-tokens",
        "now-a-string-tokens",
        "inf0-tokens",
        "a-tokens",
        "b-tokens",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    let now_micros = i128::from(now) * 1000;

    let scored = check_units(&mut conn, &keys, ScoreUnit::Milliseconds, now_micros)
        .await
        .unwrap();
    assert_eq!(scored, 2);

    let err = check_units(&mut conn, &keys, ScoreUnit::Seconds, now_micros)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SweepError::UnitGuard {
                seen: ScoreUnit::Milliseconds,
                suspicious: 2,
                sampled: 5,
                ..
            }
        ),
        "{err}"
    );
}

/// The daemon, as the user without the guard's permission: every round
/// fails, counted as the permission error it is (what the operator must
/// fix), `/readyz` names the check, and nothing is deleted.
#[test]
fn the_daemon_counts_a_guard_that_cannot_run_under_its_label_and_deletes_nothing() {
    let server = RedisServer::start();
    common::create_user(
        &server,
        "token-sweeper",
        "sweeper-pw",
        &["zrevrangebyscore"],
    );
    let mut c = server.conn();
    let now_s = redis_now_ms(&mut c) / 1000;
    let _: () = c.zadd("u-tokens", "live", now_s + 3600).unwrap();
    let daemon = common::DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
            ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
        ],
        None,
    );

    common::wait_until(Duration::from_secs(20), "a failed sweep", || {
        daemon.metric("token_sweeper_errors_total{kind=\"noperm\"}") >= 1.0
    });
    let (code, body) = common::http_get(daemon.metrics_port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unit guard could not run"), "{body}");
    let live: i64 = c.zcard("u-tokens").unwrap();
    assert_eq!(live, 1, "{}", daemon.log_text());
}

/// `TIME` refused: the clock check names itself and the reason.
#[test]
fn a_sweeper_user_without_time_stops_at_the_clock_check() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "old", now - HOUR_MS).unwrap();

    let (code, err) = sweep_as_user_without(&server, &["time"], &[]);

    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("clock check could not run"), "{err}");
    assert!(err.contains("'time' command"), "{err}");
    let n: i64 = c.zcard("u-tokens").unwrap();
    assert_eq!(n, 1);
}

/// Runs `token-sweeper sweep` against `server` with the host clock moved by
/// libfaketime (`FAKETIME`, e.g. `-60y`); returns (exit code, stderr).
fn sweep_with_host_clock(
    server: &RedisServer,
    faketime: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let url = server.url();
    let lib = common::libfaketime();
    let mut all = vec![
        ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", faketime),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    all.extend_from_slice(env);
    let out = common::run_sweeper(&["sweep"], &all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A host clock before 1970. Before, it read as 0: with the host clock and
/// no skew check the sweep "succeeded" with a cutoff of 0; with the skew
/// check it refused, but for a 60-year skew.
#[test]
fn a_host_clock_before_1970_stops_the_sweep() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "live", now + HOUR_MS).unwrap();
    let _: () = c.zadd("u-tokens", "scored-zero", 0).unwrap();

    for env in [
        vec![
            ("TOKEN_SWEEPER__SWEEP__CLOCK", "local"),
            ("TOKEN_SWEEPER__SWEEP__MAX_CLOCK_SKEW", "0s"),
        ],
        vec![("TOKEN_SWEEPER__SWEEP__CLOCK", "redis")],
    ] {
        let (code, err) = sweep_with_host_clock(&server, "-60y", &env);
        assert_eq!(code, Some(1), "{env:?}: {err}");
        assert!(err.contains("clock check could not run"), "{env:?}: {err}");
        assert!(err.contains("before 1970"), "{env:?}: {err}");
        let n: i64 = c.zcard("u-tokens").unwrap();
        assert_eq!(n, 2, "{env:?}: nothing deleted");
    }
}

/// A host clock so far ahead (with the skew check off) that the cutoff in
/// milliseconds is past 2^53, where Redis would round it. Before, the sweep
/// used it and removed every live member.
#[test]
fn a_cutoff_redis_cannot_compare_exactly_stops_the_sweep() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "live", now + HOUR_MS).unwrap();

    let (code, err) = sweep_with_host_clock(
        &server,
        "+300000y",
        &[
            ("TOKEN_SWEEPER__SWEEP__CLOCK", "local"),
            ("TOKEN_SWEEPER__SWEEP__MAX_CLOCK_SKEW", "0s"),
        ],
    );

    let n: i64 = c.zcard("u-tokens").unwrap();
    assert_eq!(n, 1, "the live member survives: {err}");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cutoff check could not run"), "{err}");
    assert!(err.contains("2^53"), "{err}");
}

/// There is always a primary: sweeping none is a caller's mistake, never
/// an empty success.
#[tokio::test]
async fn sweeping_no_primaries_is_an_error_not_an_empty_success() {
    let server = RedisServer::start();
    let settings = settings_for(&server);
    let conn = Connection::connect(&settings.redis).await.unwrap();

    let result = sweep_nodes(
        &conn,
        &[],
        &settings.sweep,
        SweepMode::Remove,
        &SweepProgress::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await;

    assert!(
        matches!(
            result,
            Err(SweepError::SafetyCheck {
                check: Check::ClusterTopology,
                ..
            })
        ),
        "{result:?}"
    );
}

// ---- the removal floor: seconds never swept as milliseconds ------------------

/// Runs `token-sweeper sweep <args>` against `server` with `env`; returns
/// (exit code, stdout, stderr).
fn sweep_cli(
    server: &RedisServer,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let url = server.url();
    let mut all = vec![("TOKEN_SWEEPER__REDIS__URL", url.as_str())];
    all.extend_from_slice(env);
    let mut argv = vec!["sweep"];
    argv.extend_from_slice(args);
    let out = common::run_sweeper(&argv, &all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A set written in milliseconds that also holds seconds-scored sessions
/// (a service moving from seconds to milliseconds). Its highest score is in
/// milliseconds, so the unit guard, which reads only that, passes. Before,
/// the sweep then removed every seconds member as January 1970, the live
/// one included, and exited 0; now the range it removes starts above the
/// seconds window, in the dry run's count as in the sweep.
#[test]
fn a_live_seconds_member_in_a_milliseconds_set_survives_the_sweep() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let now_s = now / 1000;
    let _: () = redis::cmd("ZADD")
        .arg("mixed-tokens")
        .arg(now + HOUR_MS)
        .arg("ms-live")
        .arg(now - HOUR_MS)
        .arg("ms-expired")
        .arg(now_s + 3600)
        .arg("s-live")
        .arg(now_s - 3600)
        .arg("s-expired")
        .query(&mut c)
        .unwrap();

    let (code, out, err) = sweep_cli(&server, &["--dry-run", "--json"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let dry: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["members_removed"], 1, "{dry}");

    let (code, out, err) = sweep_cli(&server, &["--json"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["members_removed"], 1, "{report}");
    let floor = report["score_floor"].as_i64().unwrap();
    assert!(floor >= now_s + 3600, "the floor {floor} is above s-live");
    let left: Vec<String> = c.zrange("mixed-tokens", 0, -1).unwrap();
    assert_eq!(left, ["s-expired", "s-live", "ms-live"]);
}

/// 3000 sets in milliseconds and one in seconds that the unit guard does not
/// sample (the last SCAN returns). Before, the guard passed on the sample and
/// the seconds set was deleted whole.
#[tokio::test]
async fn a_seconds_set_outside_the_guards_sample_survives_the_sweep() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let mut pipe = redis::pipe();
    for user in 0..3001 {
        pipe.zadd(format!("u{user}-tokens"), "old", now - HOUR_MS)
            .ignore()
            .zadd(format!("u{user}-tokens"), "live", now + HOUR_MS)
            .ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let settings = settings_for(&server);
    // The key SCAN returns last, as the sweep scans: far outside the
    // guard's first 64. Changing its members leaves it where it is.
    let mut cursor = 0;
    let mut order: Vec<String> = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&settings.sweep.pattern)
            .arg("COUNT")
            .arg(settings.sweep.scan_count)
            .arg("TYPE")
            .arg("zset")
            .query(&mut c)
            .unwrap();
        order.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(order.len(), 3001);
    let seconds_key = order.last().unwrap().clone();
    let _: () = redis::cmd("ZADD")
        .arg(&seconds_key)
        .arg(now / 1000 - 3600)
        .arg("old")
        .arg(now / 1000 + 3600)
        .arg("live")
        .query(&mut c)
        .unwrap();
    assert!(settings.sweep.unit_guard_sample < 1000);

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.counts.members_removed, 3000);
    let left = members(&mut c, seconds_key.as_bytes());
    assert_eq!(
        left,
        [
            (b"old".to_vec(), (now / 1000 - 3600) as f64),
            (b"live".to_vec(), (now / 1000 + 3600) as f64)
        ],
        "{seconds_key}"
    );
}

/// In seconds the other way round is safe by construction: a millisecond
/// timestamp, even one long expired, is a thousand times above any seconds
/// cutoff, so with the guard off nothing in milliseconds is removed.
#[tokio::test]
async fn a_seconds_sweep_never_removes_millisecond_scores() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = redis::cmd("ZADD")
        .arg("mixed-tokens")
        .arg(now + HOUR_MS)
        .arg("ms-live")
        .arg(LONG_AGO_MS)
        .arg("ms-expired")
        .arg(now / 1000 - 3600)
        .arg("s-expired")
        .query(&mut c)
        .unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.score_unit = ScoreUnit::Seconds;
    settings.sweep.unit_guard = false;

    let report = sweep_with(&settings, SweepMode::Remove).await.unwrap();

    assert_eq!(report.score_floor, None);
    assert_eq!(report.counts.members_removed, 1);
    let left: Vec<String> = c.zrange("mixed-tokens", 0, -1).unwrap();
    assert_eq!(left, ["ms-expired", "ms-live"]);
}

// ---- the clock: the earlier of the two ---------------------------------------

/// A host clock 50 s ahead of Redis, inside the default skew limit of a
/// minute, with `sweep.clock = "local"`: a token with 30 s left by Redis
/// TIME (the clock the auth path judges it by) stays. Before, "now" was the
/// host's and the token went. With `sweep.clock = "redis"` the host clock
/// is not used for "now" at all.
#[test]
fn a_host_clock_ahead_within_the_skew_limit_removes_no_live_token() {
    let server = RedisServer::start();
    let mut c = server.conn();
    for clock in ["local", "redis"] {
        let now = redis_now_ms(&mut c);
        let _: () = c
            .zadd("u-tokens", "thirty-seconds-left", now + 30_000)
            .unwrap();
        let _: () = c.zadd("u-tokens", "expired", now - 60_000).unwrap();

        let (code, err) =
            sweep_with_host_clock(&server, "+50s", &[("TOKEN_SWEEPER__SWEEP__CLOCK", clock)]);

        assert_eq!(code, Some(0), "{clock}: {err}");
        let left: Vec<String> = c.zrange("u-tokens", 0, -1).unwrap();
        assert_eq!(left, ["thirty-seconds-left"], "{clock}");
        let _: () = c.del("u-tokens").unwrap();
    }
}

/// A host clock behind Redis, `sweep.clock = "local"`: the host's (earlier)
/// time is "now", so a token that expired by Redis TIME but not yet by the
/// host clock stays until the host clock passes it; one expired by both goes.
#[test]
fn a_host_clock_behind_keeps_what_it_has_not_seen_expire() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "expired-20s-ago", now - 20_000).unwrap();
    let _: () = c.zadd("u-tokens", "expired-2m-ago", now - 120_000).unwrap();

    let (code, err) =
        sweep_with_host_clock(&server, "-50s", &[("TOKEN_SWEEPER__SWEEP__CLOCK", "local")]);

    assert_eq!(code, Some(0), "{err}");
    let left: Vec<String> = c.zrange("u-tokens", 0, -1).unwrap();
    assert_eq!(left, ["expired-20s-ago"]);
}

// ---- the permission check ------------------------------------------------------

/// `INFO commandstats` calls of `command` (lowercase) so far.
fn calls(c: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// The permission check runs the sweep's command on a real key over the
/// range `(0 (0`, which is empty: members at 0, -0, the smallest doubles
/// either side of 0 and the infinities all stay, in a small set (listpack)
/// and a large one (skiplist), even in seconds, where most of them are
/// expired. The checks are run alone ([`prepare`] without `run`).
#[tokio::test]
async fn the_permission_check_removes_nothing_even_at_zero() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let zeroes = ["0", "-0", "5e-324", "-5e-324", "-inf", "+inf"];
    for (key, filler) in [("small-tokens", 0), ("large-tokens", 300)] {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(key);
        for (n, score) in zeroes.iter().enumerate() {
            zadd.arg(score).arg(format!("z{n}"));
        }
        for n in 0..filler {
            zadd.arg(LONG_AGO_MS / 1000 + n).arg(format!("f{n}"));
        }
        let _: () = zadd.query(&mut c).unwrap();
    }
    let encoding = |c: &mut redis::Connection, key: &str| -> String {
        redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query(c)
            .unwrap()
    };
    assert_eq!(encoding(&mut c, "small-tokens"), "listpack");
    assert_eq!(encoding(&mut c, "large-tokens"), "skiplist");
    let before = (
        members(&mut c, b"small-tokens"),
        members(&mut c, b"large-tokens"),
    );
    let mut settings = settings_for(&server);
    settings.sweep.score_unit = ScoreUnit::Seconds;
    settings.sweep.unit_guard_sample = 1;
    let conn = Connection::connect(&settings.redis).await.unwrap();
    let progress = SweepProgress::default();

    for unit_guard in [true, false] {
        settings.sweep.unit_guard = unit_guard;
        let probes = calls(&mut c, "zremrangebyscore");
        let prepared = token_sweeper::sweep::prepare(
            &conn,
            &conn.primaries().await.unwrap(),
            &settings.sweep,
            SweepMode::Remove,
            &progress,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
        drop(prepared);

        assert_eq!(
            calls(&mut c, "zremrangebyscore"),
            probes + 1,
            "guard {unit_guard}: one probe"
        );
        assert_eq!(
            (
                members(&mut c, b"small-tokens"),
                members(&mut c, b"large-tokens")
            ),
            before,
            "guard {unit_guard}"
        );
    }
}

/// The daemon as a user who may read the sets but not remove from them:
/// before, every check passed, it took the lock, and only its first
/// pipeline failed (a period in which a healthy replica skipped the sweep).
/// Now the permission check refuses before the lock: no lease is ever
/// taken (the lock script's `SET` never runs), `lock_held` stays 0, the
/// round counts as `noperm` and `/readyz` names the check.
#[test]
fn a_daemon_that_may_not_remove_never_takes_the_lock() {
    let server = RedisServer::start();
    common::create_user(
        &server,
        "token-sweeper",
        "sweeper-pw",
        &["zremrangebyscore"],
    );
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "old", now - HOUR_MS).unwrap();
    let _: () = c.zadd("u-tokens", "live", now + HOUR_MS).unwrap();
    let daemon = common::DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
            ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s"),
        ],
        None,
    );

    common::wait_until(Duration::from_secs(20), "three refused rounds", || {
        daemon.metric("token_sweeper_errors_total{kind=\"noperm\"}") >= 3.0
    });

    let log = daemon.log_text();
    assert_eq!(calls(&mut c, "set"), 0, "a lease was taken: {log}");
    let holder: Option<String> = c.get("token-sweeper:lock").unwrap();
    assert_eq!(holder, None);
    assert_eq!(daemon.metric("token_sweeper_lock_held"), 0.0);
    assert!(daemon.events("sweep started").is_empty(), "{log}");
    let (code, body) = common::http_get(daemon.metrics_port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("permission check could not run"), "{body}");
    // Redis names the key, not the command: the lock's selector may run
    // ZREMRANGEBYSCORE, on other keys.
    assert!(body.contains("ZREMRANGEBYSCORE failed: NoPerm"), "{body}");
    assert_eq!(c.zcard::<_, i64>("u-tokens").unwrap(), 2);
}

/// The check runs the command of the mode: a dry run needs `ZCOUNT`, not
/// `ZREMRANGEBYSCORE`; a sweep the other way round. A node with no key has
/// nothing to remove and nothing to prove.
#[test]
fn the_permission_check_asks_for_the_modes_command_only_where_there_are_keys() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let user = [
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
    ];

    common::create_user(
        &server,
        "token-sweeper",
        "sweeper-pw",
        &["zremrangebyscore"],
    );
    let (code, _, err) = sweep_cli(&server, &[], &user);
    assert_eq!(code, Some(0), "an empty node: {err}");

    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "old", now - HOUR_MS).unwrap();
    let (code, out, err) = sweep_cli(&server, &["--dry-run", "--json"], &user);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"members_removed\":1"), "{out}");

    let (code, _, err) = sweep_cli(&server, &[], &user);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("permission check could not run"), "{err}");
    assert!(err.contains("ZREMRANGEBYSCORE failed: NoPerm"), "{err}");

    common::create_user(&server, "token-sweeper", "sweeper-pw", &["zcount"]);
    let (code, _, err) = sweep_cli(&server, &["--dry-run"], &user);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("permission check could not run"), "{err}");
    assert!(err.contains("ZCOUNT failed: NoPerm"), "{err}");
    assert!(err.contains("'zcount' command"), "{err}");
    assert_eq!(c.zcard::<_, i64>("u-tokens").unwrap(), 1);
}

/// Seconds-writing services mark "never expires" with far-future values:
/// 2^32 - 1, 4102444800 (2100), 9999999999. The removal floor used to be
/// now + 50 years in seconds (about 3.4e9), so in milliseconds those read
/// as January 1970 and were removed, exit 0 (`members_removed` 3 too many).
/// The floor is now 10^12 (2001 in milliseconds, the year 33658 in seconds),
/// whatever the clock.
#[test]
fn far_future_seconds_placeholders_survive_a_milliseconds_sweep() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = redis::cmd("ZADD")
        .arg("far-tokens")
        .arg(4_102_444_800_i64)
        .arg("y2100")
        .arg(4_294_967_295_i64)
        .arg("u32-max")
        .arg(9_999_999_999_i64)
        .arg("never")
        .arg(now - HOUR_MS)
        .arg("ms-expired")
        .arg(now + HOUR_MS)
        .arg("ms-live")
        .query(&mut c)
        .unwrap();

    for args in [&["--dry-run", "--json"][..], &["--json"]] {
        let (code, out, err) = sweep_cli(&server, args, &[]);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["members_removed"], 1, "{args:?}: {report}");
        assert_eq!(report["score_floor"], 1_000_000_000_000_i64, "{report}");
    }
    let left: Vec<String> = c.zrange("far-tokens", 0, -1).unwrap();
    assert_eq!(left, ["y2100", "u32-max", "never", "ms-live"]);
}

/// The unit guard counted any finite score as evidence, also one that looks
/// like neither unit: sets scored 42 "confirmed" seconds, the guard passed,
/// and the seconds sweep removed them all (42 is long expired). In
/// milliseconds, sets scored 1.1e12 (2004 in ms: above the floor, older than
/// the 20 years a token's expiry plausibly lies back) did the same. Only a
/// score that looks like the configured unit is evidence now; a node whose
/// sets read have only such odd scores is refused, read whole or not.
#[tokio::test]
async fn scores_that_look_like_neither_unit_do_not_confirm_it() {
    for (unit, odd, sets, sample) in [
        (ScoreUnit::Seconds, 42.0, 100, 1),
        (ScoreUnit::Seconds, 42.0, 3, 64),
        (ScoreUnit::Milliseconds, 1.1e12, 100, 1),
        (ScoreUnit::Milliseconds, 1.1e12, 3, 64),
    ] {
        let server = RedisServer::start();
        let mut c = server.conn();
        let mut pipe = redis::pipe();
        for n in 0..sets {
            pipe.zadd(format!("odd{n}-tokens"), "m", odd).ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
        let mut settings = settings_for(&server);
        settings.sweep.score_unit = unit;
        settings.sweep.unit_guard_sample = sample;

        let err = sweep_with(&settings, SweepMode::Remove).await.unwrap_err();

        let case = format!("{unit} {odd} x{sets} sample {sample}");
        assert!(
            matches!(
                err,
                SweepError::SafetyCheck {
                    check: Check::UnitGuard,
                    ..
                }
            ),
            "{case}: {err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("looks like a timestamp in {unit}")),
            "{case}: {err}"
        );
        let left: usize = (0..sets)
            .map(|n| c.zcard::<_, usize>(format!("odd{n}-tokens")).unwrap())
            .sum();
        assert_eq!(left, sets, "{case}: nothing deleted");
    }
}

/// In milliseconds a set whose scores are all at or below the removal floor
/// (a seconds service's "never expires" placeholders) has nothing to say:
/// the sweep removes none of its members whatever the unit. A node of only
/// such sets, read whole, goes ahead and keeps them; it never "confirms"
/// the unit for sets the guard did not read.
#[tokio::test]
async fn sets_below_the_removal_floor_say_nothing_about_the_unit() {
    let server = RedisServer::start();
    let mut c = server.conn();
    for n in 0..3 {
        let _: () = c
            .zadd(format!("never{n}-tokens"), "m", 9_999_999_999_i64)
            .unwrap();
    }
    let report = sweep_with(&settings_for(&server), SweepMode::Remove)
        .await
        .unwrap();
    assert_eq!(report.counts.members_removed, 0);

    for n in 3..100 {
        let _: () = c
            .zadd(format!("never{n}-tokens"), "m", 9_999_999_999_i64)
            .unwrap();
    }
    let mut settings = settings_for(&server);
    settings.sweep.unit_guard_sample = 1;
    let err = sweep_with(&settings, SweepMode::Remove).await.unwrap_err();
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
}

/// An ACL user who may remove from some token sets and not others (Redis 7
/// key selectors). The pipeline's NOPERM ended the node's sweep, and the
/// counts of the keys in the same pipeline that were removed from were
/// dropped with it: `--json` said 0 members removed while Redis had removed
/// some. Every reply of the batch is counted now, then the error returned.
#[test]
fn counts_of_a_pipeline_cut_short_by_noperm_match_what_redis_removed() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let mut pipe = redis::pipe();
    for n in 0..20 {
        pipe.zadd(format!("k{n}-tokens"), "old", now - HOUR_MS)
            .ignore()
            .zadd(format!("k{n}-tokens"), "live", now + HOUR_MS)
            .ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    // Let incremental rehashing finish, so the sweeper's SCAN returns the
    // keys in the order this one does.
    std::thread::sleep(Duration::from_millis(300));
    let (_, order): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("*-tokens")
        .arg("COUNT")
        .arg(1000)
        .arg("TYPE")
        .arg("zset")
        .query(&mut c)
        .unwrap();
    assert_eq!(order.len(), 20);
    // Write access to every key but three in the middle of the SCAN order
    // (the first one is the permission check's): writable keys come before
    // and after them in the one pipeline.
    let denied = &order[8..11];
    let mut rules = Vec::new();
    for arg in common::readme_acl("token-sweeper").into_iter().skip(3) {
        match arg.as_str() {
            a if a.starts_with('>') => rules.push(">sweeper-pw".to_owned()),
            "~*-tokens" => {
                rules.push("%R~*-tokens".to_owned());
                for key in order.iter().filter(|k| !denied.contains(k)) {
                    rules.push(format!("%W~{key}"));
                }
            }
            _ => rules.push(arg),
        }
    }
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("token-sweeper")
        .arg(&rules)
        .query(&mut c)
        .unwrap();

    // One pipeline of all 20 keys: the full-speed path (the adaptive one
    // sends pieces of a few keys, and stops at the first refused piece).
    let (code, out, err) = sweep_cli(
        &server,
        &["--json", "--throttle", "off"],
        &[
            ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
            ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
        ],
    );

    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("NoPerm"), "{err}");
    assert!(!err.contains("permission check"), "past the probe: {err}");
    let mut removed = 0;
    for key in &order {
        let left: i64 = c.zcard(key).unwrap();
        assert_eq!(left, if denied.contains(key) { 2 } else { 1 }, "{key}");
        removed += 2 - left;
    }
    assert_eq!(removed, 17);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["members_removed"], removed, "{report}");
    assert_eq!(report["keys_changed"], removed, "{report}");
}
