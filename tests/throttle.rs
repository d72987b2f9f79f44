//! The adaptive throttle (`sweep.throttle = "adaptive"`, the default) and
//! its bounded removal, against private redis-servers: it yields when
//! Redis is slow and comes back when it is not, never stops, says when it
//! falls behind, and never removes a live member however many commands a
//! set takes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{count_members, create_user, redis_now_ms, seed, settings_for, RedisServer};
use redis::Commands;
use token_sweeper::config::{Settings, ThrottleMode};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{
    self, Check, SweepError, SweepMode, SweepProgress, SweepReport, ThrottleReading, ThrottleState,
};
use tokio_util::sync::CancellationToken;

/// A millisecond expiry long past (September 2020).
const LONG_AGO_MS: i64 = 1_600_000_000_000;

/// Calls of `command` since the last `CONFIG RESETSTAT`.
fn calls(c: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    let prefix = format!("cmdstat_{}:calls=", command.to_lowercase());
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// `n` expired members (distinct scores, so no ties) and `live` live ones in `key`.
fn fill(c: &mut redis::Connection, key: &str, n: i64, live: i64) {
    let now = redis_now_ms(c);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(key);
        for i in chunk {
            cmd.arg(LONG_AGO_MS + i).arg(format!("old-{i}"));
        }
        let _: () = cmd.query(c).unwrap();
    }
    for i in 0..live {
        let _: () = c.zadd(key, format!("live-{i}"), now + 3_600_000).unwrap();
    }
}

/// One library sweep of `settings`, with every throttle reading sent to the
/// returned receiver; the deadline, if any, is set before it runs.
async fn sweep_reading(
    settings: &Settings,
    deadline: Option<tokio::time::Instant>,
    readings: mpsc::Sender<ThrottleReading>,
) -> Result<SweepReport, SweepError> {
    let conn = Connection::connect(&settings.redis).await.unwrap();
    let progress = SweepProgress::default().on_throttle(move |r| {
        let _ = readings.send(r.clone());
    });
    let nodes = conn.primaries().await.unwrap();
    let stop = CancellationToken::new();
    let mut prepared = sweep::prepare(
        &conn,
        &nodes,
        &settings.sweep,
        SweepMode::Remove,
        &progress,
        &stop,
    )
    .await?;
    if let Some(deadline) = deadline {
        prepared.set_deadline(deadline);
    }
    prepared.run().await
}

#[tokio::test]
async fn a_set_of_100k_expired_members_is_cleaned_in_bounded_commands() {
    let server = RedisServer::start();
    let mut c = server.conn();
    fill(&mut c, "big-tokens", 100_000, 10);
    seed(&mut c, "u", 20);
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.max_members_per_command = 1000;
    let (tx, _rx) = mpsc::channel();

    let report = sweep_reading(&settings, None, tx).await.unwrap();

    assert_eq!(report.counts.members_removed, 100_000 + 20);
    assert_eq!(report.counts.errors, 0);
    // Each set changed counts once, however many commands it took.
    assert_eq!(report.counts.keys_changed, 1 + 20);
    let left: Vec<String> = c.zrange("big-tokens", 0, -1).unwrap();
    assert_eq!(left.len(), 10);
    assert!(left.iter().all(|m| m.starts_with("live-")), "{left:?}");
    assert_eq!(count_members(&mut c, "u"), (0, 20));
    // 100 commands of 1000 for the big set (no two members share a score),
    // and one more that finds it clean; one each for the small sets; one
    // for the permission check.
    let removals = calls(&mut c, "ZREMRANGEBYSCORE");
    assert!(
        (121..=122).contains(&removals),
        "{removals} ZREMRANGEBYSCORE"
    );
    assert!(calls(&mut c, "ZRANGEBYSCORE") >= 100);

    // Off: today's sweep, one command per key whatever its size.
    fill(&mut c, "big-tokens", 100_000, 0);
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    settings.sweep.throttle = ThrottleMode::Off;
    let (tx, rx) = mpsc::channel();
    let report = sweep_reading(&settings, None, tx).await.unwrap();
    assert_eq!(report.counts.members_removed, 100_000);
    // One per key, and the permission check's over an empty range.
    assert_eq!(calls(&mut c, "ZREMRANGEBYSCORE"), 21 + 1);
    assert_eq!(calls(&mut c, "ZRANGEBYSCORE"), 0);
    assert_eq!(report.throttled_seconds, 0.0);
    assert!(rx.try_recv().is_err(), "no throttle with throttle = off");
}

#[tokio::test]
async fn bounded_removal_never_removes_a_live_member_while_logins_race_it() {
    let server = RedisServer::start();
    let mut c = server.conn();
    fill(&mut c, "race-tokens", 50_000, 0);
    let mut settings = settings_for(&server);
    // Many small steps: many chances for a login to land between a read
    // of the bound and its removal.
    settings.sweep.max_members_per_command = 100;
    let done = Arc::new(AtomicBool::new(false));
    let logins = {
        let done = Arc::clone(&done);
        let mut c = server.conn();
        std::thread::spawn(move || {
            let mut added = Vec::new();
            let mut n = 0_u64;
            while !done.load(Ordering::Relaxed) || n < 1000 {
                let now = redis_now_ms(&mut c);
                // A login: a live token. Every tenth logs out again.
                let member = format!("login-{n}");
                let _: () = c.zadd("race-tokens", &member, now + 60_000).unwrap();
                if n % 10 == 9 {
                    let _: () = c.zrem("race-tokens", &member).unwrap();
                } else {
                    added.push(member);
                }
                n += 1;
            }
            added
        })
    };
    let (tx, _rx) = mpsc::channel();

    let report = sweep_reading(&settings, None, tx).await;
    done.store(true, Ordering::Relaxed);
    let added = logins.join().unwrap();

    let report = report.unwrap();
    assert_eq!(report.counts.members_removed, 50_000);
    let left: Vec<String> = c.zrange("race-tokens", 0, -1).unwrap();
    assert_eq!(left.len(), added.len(), "live members lost");
    for member in &added {
        let score: Option<f64> = c.zscore("race-tokens", member).unwrap();
        assert!(score.is_some(), "{member} was removed");
    }
}

// Two workers: the test reads the readings blocking, the sweep runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throttle_yields_when_redis_is_slow_and_comes_back_when_it_is_not() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let mut c = server.conn();
    seed(&mut c, "u", 200_000);
    let mut settings = settings_for(&server);
    settings.sweep.throttle_floor = 1000;
    // A target far above what a loaded test machine adds to a PING by
    // itself (a few ms at worst), and far below what the load adds.
    settings.sweep.throttle_target = Duration::from_millis(10);
    // Other clients keep Redis busy: 30 ms of DEBUG SLEEP, then 5 ms free.
    let load_on = Arc::new(AtomicBool::new(true));
    let load = {
        let on = Arc::clone(&load_on);
        let mut c = server.conn();
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let _: () = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg("0.03")
                    .query(&mut c)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (tx, rx) = mpsc::channel();
    let sweeping = tokio::spawn(async move { sweep_reading(&settings, None, tx).await });

    // Not a timing: a bound on a test that would otherwise hang on a bug.
    let next = || {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("a throttle reading")
    };
    // Loaded: it backs off, to the floor.
    let mut loaded = Vec::new();
    loop {
        let reading = next();
        assert!(!reading.ended, "ended while loaded: {reading:?}");
        loaded.push(reading.clone());
        if reading.state == ThrottleState::Floor {
            break;
        }
    }
    load_on.store(false, Ordering::Relaxed);
    load.join().unwrap();
    // Free again: back to its full share, faster than at the floor.
    let floor_pace = loaded.last().unwrap().pace_keys_per_second;
    let mut free = Vec::new();
    loop {
        let reading = next();
        free.push(reading.clone());
        if reading.state == ThrottleState::FullSpeed || reading.ended {
            break;
        }
    }
    let report = sweeping.await.unwrap().unwrap();

    let back = free.last().unwrap();
    assert_eq!(back.state, ThrottleState::FullSpeed, "{free:?}");
    assert!(
        free.iter()
            .any(|r| r.pace_keys_per_second > floor_pace * 2.0),
        "floor {floor_pace}, then {free:?}"
    );
    let signal = |r: &ThrottleReading| r.signal.unwrap_or_default();
    assert!(
        signal(loaded.last().unwrap()) > signal(back),
        "{loaded:?} {back:?}"
    );
    // It finished, everything expired gone, everything live kept, and the
    // report says how long it was held back.
    assert_eq!(report.counts.members_removed, 200_000);
    assert!(report.nodes.iter().all(|n| n.finished));
    assert!(report.throttled_seconds > 0.0);
    assert_eq!(report.throttled_seconds, report.nodes[0].throttled_seconds);
    assert_eq!(count_members(&mut c, "u"), (0, 200_000));
}

#[tokio::test]
async fn a_sweep_past_its_period_says_it_is_behind_and_one_in_time_does_not() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 2000);
    let settings = settings_for(&server);

    let (tx, rx) = mpsc::channel();
    let report = sweep_reading(&settings, Some(tokio::time::Instant::now()), tx)
        .await
        .unwrap();
    assert_eq!(report.counts.members_removed, 2000);
    let last = rx.try_iter().last().unwrap();
    assert!(last.ended && last.behind, "{last:?}");

    seed(&mut c, "u", 2000);
    let (tx, rx) = mpsc::channel();
    let in_an_hour = tokio::time::Instant::now() + Duration::from_secs(3600);
    sweep_reading(&settings, Some(in_an_hour), tx)
        .await
        .unwrap();
    let last = rx.try_iter().last().unwrap();
    assert!(last.ended && !last.behind, "{last:?}");
}

#[tokio::test]
async fn a_user_who_may_not_read_the_bound_is_refused_before_anything_is_removed() {
    let server = RedisServer::start();
    create_user(&server, "token-sweeper", "pw", &["zrangebyscore"]);
    let mut c = server.conn();
    seed(&mut c, "u", 10);
    let mut settings = settings_for(&server);
    settings.redis.username = Some("token-sweeper".to_owned());
    settings.redis.password = Some(token_sweeper::config::Secret::new("pw"));

    let (tx, _rx) = mpsc::channel();
    let err = sweep_reading(&settings, None, tx).await.unwrap_err();
    match &err {
        SweepError::SafetyCheck { check, reason, .. } => {
            assert_eq!(*check, Check::Permission);
            assert!(reason.contains("ZRANGEBYSCORE"), "{reason}");
            assert!(reason.to_lowercase().contains("noperm"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count_members(&mut c, "u"), (10, 10));

    // With the throttle off the bounded read is not needed, nor checked.
    settings.sweep.throttle = ThrottleMode::Off;
    let (tx, _rx) = mpsc::channel();
    sweep_reading(&settings, None, tx).await.unwrap();
    assert_eq!(count_members(&mut c, "u"), (0, 10));
}

/// The probe's connection killed mid-sweep (`CLIENT KILL`, an idle timeout
/// on a proxy): the probe opens another, and the sweep gets its signal back
/// instead of finishing at its floor for want of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_probe_connection_is_reopened() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 40_000);
    let mut settings = settings_for(&server);
    // Slow enough to outlast the kill and a few windows after it (4 s at
    // most speed), and a floor high enough to end soon on a loaded machine.
    settings.sweep.max_keys_per_second = 10_000;
    settings.sweep.throttle_floor = 8_000;
    let (tx, rx) = mpsc::channel();
    let sweeping = tokio::spawn(async move { sweep_reading(&settings, None, tx).await });
    let next = || {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a throttle reading")
    };
    // A first signal, then the probe's connection (the one whose last
    // command is PING) killed.
    while next().signal.is_none() {}
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    let probe: Vec<&str> = clients
        .lines()
        .filter(|line| line.contains(" cmd=ping"))
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(probe.len(), 1, "{clients}");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(probe[0])
        .query(&mut c)
        .unwrap();
    // The windows after it still have their signal: a new connection
    // within a tick, not a probe silent (and a sweep at its floor) for the
    // rest of the sweep.
    for _ in 0..8 {
        let reading = next();
        assert!(!reading.ended, "ended too soon to tell: {reading:?}");
        assert!(reading.signal.is_some(), "{reading:?}");
    }
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    assert!(clients.contains(" cmd=ping"), "{clients}");
    let report = sweeping.await.unwrap().unwrap();
    assert_eq!(report.counts.members_removed, 40_000);
    assert_eq!(count_members(&mut c, "u"), (0, 40_000));
}

/// A sweeper user without `+ping` (the README's ACL line trimmed): the
/// probe is refused, says so, and stops; the sweep finishes at its floor
/// without opening a connection per probe tick.
#[tokio::test]
async fn a_probe_refused_by_the_acl_stops_instead_of_reconnecting_every_tick() {
    let server = RedisServer::start();
    create_user(&server, "token-sweeper", "pw", &["ping"]);
    let mut c = server.conn();
    seed(&mut c, "u", 3_000);
    let mut settings = settings_for(&server);
    settings.redis.username = Some("token-sweeper".to_owned());
    settings.redis.password = Some(token_sweeper::config::Secret::new("pw"));
    settings.sweep.throttle_floor = 4_000;
    let connections = |c: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = connections(&mut c);

    let (tx, rx) = mpsc::channel();
    let report = sweep_reading(&settings, None, tx).await.unwrap();
    assert_eq!(report.counts.members_removed, 3_000);
    assert_eq!(count_members(&mut c, "u"), (0, 3_000));
    // At the floor (no signal), about a second and a half: a probe
    // reconnecting every 5 ms tick would have opened hundreds.
    let opened = connections(&mut c) - before;
    assert!(opened < 10, "{opened} connections opened");
    assert!(rx.try_iter().all(|r| r.signal.is_none()));
}

/// A primary that starts refusing writes mid-sweep while still answering
/// reads (`min-replicas-to-write` unmet: NOREPLICAS; a failed save:
/// MISCONF): the bounded removal stops coming back to a key whose removal
/// was refused, so the sweep ends, saying so, instead of reading and
/// failing on the same key until shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_mid_sweep_end_it_instead_of_looping() {
    let server = RedisServer::start();
    let mut c = server.conn();
    fill(&mut c, "big-tokens", 200_000, 10);
    let mut settings = settings_for(&server);
    // 20,000 bounded commands: long enough to be refused part-way.
    settings.sweep.max_members_per_command = 10;
    let (tx, _rx) = mpsc::channel();
    let sweeping = tokio::spawn(async move { sweep_reading(&settings, None, tx).await });
    common::wait_until(Duration::from_secs(30), "some members removed", || {
        c.zcard::<_, u64>("big-tokens").unwrap() < 200_000
    });
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg(1)
        .query(&mut c)
        .unwrap();
    // Not a timing: a bound on a test that would otherwise hang on the bug.
    let ended = tokio::time::timeout(Duration::from_secs(120), sweeping)
        .await
        .expect("the sweep ended")
        .unwrap();
    let left: u64 = c.zcard("big-tokens").unwrap();
    assert!(left > 10, "refused before the end: {left} left");
    match ended {
        Ok(report) => assert!(report.counts.errors > 0, "{report:?}"),
        Err(e) => assert!(e.to_string().contains("NOREPLICAS"), "{e}"),
    }
    let live: u64 = c.zcount("big-tokens", "(1700000000000", "+inf").unwrap();
    assert_eq!(live, 10);
}
