//! Index sweeps are paced as full scans are: `sweep.max_keys_per_second`
//! with the throttle off and on, and the adaptive throttle (its readings)
//! around their script calls. Only lower bounds on time are asserted: a
//! slow machine makes a sweep longer, never shorter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::{redis_now_ms, settings_for, RedisServer};
use redis::Commands;
use token_sweeper::config::{Settings, ThrottleMode};
use token_sweeper::due_index::{index_key, DEFAULT_PREFIX};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{self, SweepMode, SweepProgress, ThrottleReading};
use tokio_util::sync::CancellationToken;

/// `users` sets, one expired and one live member each, with their entries.
fn seed(conn: &mut redis::Connection, users: usize) {
    let now = redis_now_ms(conn);
    let mut pipe = redis::pipe();
    for user in 0..users {
        let key = format!("u{user}-tokens");
        pipe.zadd(&key, "old", now - 1000)
            .zadd(&key, "new", now + 3_600_000)
            .zadd(index_key(DEFAULT_PREFIX, key.as_bytes()), &key, now - 1000);
    }
    let _: () = pipe.query(conn).unwrap();
}

fn left(conn: &mut redis::Connection, users: usize) -> (u64, u64) {
    let mut total = (0, 0);
    for user in 0..users {
        let key = format!("u{user}-tokens");
        total.0 += conn.zcard::<_, u64>(&key).unwrap();
        let entry: Option<f64> = conn
            .zscore(index_key(DEFAULT_PREFIX, key.as_bytes()), &key)
            .unwrap();
        total.1 += u64::from(entry.is_some());
    }
    total
}

async fn paced_sweep(
    settings: &Settings,
) -> (token_sweeper::sweep::SweepReport, Vec<ThrottleReading>) {
    let readings = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&readings);
    let progress = SweepProgress::default().on_throttle(move |reading| {
        seen.lock().unwrap().push(reading.clone());
    });
    let conn = Connection::connect(&settings.redis).await.unwrap();
    let report = sweep::sweep_index(
        &conn,
        &settings.sweep,
        SweepMode::Remove,
        &progress,
        &CancellationToken::new(),
        true,
    )
    .await
    .unwrap();
    let readings = readings.lock().unwrap().clone();
    (report, readings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_keys_per_second_paces_the_index_sweep_with_the_throttle_off_and_on() {
    for throttle in [ThrottleMode::Off, ThrottleMode::Adaptive] {
        let server = RedisServer::start();
        let mut conn = server.conn();
        seed(&mut conn, 200);
        let mut settings = settings_for(&server);
        settings.sweep.due_index.enabled = true;
        settings.sweep.throttle = throttle;
        settings.sweep.max_keys_per_second = 100;
        let (report, readings) = paced_sweep(&settings).await;
        assert_eq!(
            report.counts.members_removed, 200,
            "{throttle:?}: {report:?}"
        );
        assert_eq!(report.counts.errors, 0, "{report:?}");
        assert_eq!(left(&mut conn, 200), (200, 200), "every entry moved");
        // 200 due keys at 100/s: the last pipeline waits for the keys
        // before it, at least 1.5 s whatever the piece.
        assert!(
            report.duration_seconds >= 1.5,
            "{throttle:?}: {}",
            report.duration_seconds
        );
        match throttle {
            ThrottleMode::Off => assert!(readings.is_empty()),
            ThrottleMode::Adaptive => assert!(
                readings.iter().any(|r| r.ended),
                "the throttle ran and ended: {readings:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_throttle_paces_an_unlimited_index_sweep_to_the_same_result() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    seed(&mut conn, 500);
    let mut settings = settings_for(&server);
    settings.sweep.due_index.enabled = true;
    settings.sweep.throttle = ThrottleMode::Adaptive;
    let (report, readings) = paced_sweep(&settings).await;
    assert_eq!(report.counts.members_removed, 500, "{report:?}");
    assert_eq!(report.counts.due_keys, 500, "each due key sent once");
    assert_eq!(report.counts.index_entries_moved, 500);
    assert_eq!(left(&mut conn, 500), (500, 500));
    let node = format!("127.0.0.1:{}", server.port);
    assert!(
        readings.iter().any(|r| r.ended && r.node == node),
        "{readings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_sweep_with_nothing_due_starts_no_throttle() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let now = redis_now_ms(&mut conn);
    let key = "later-tokens";
    let _: () = conn.zadd(key, "new", now + 3_600_000).unwrap();
    let _: () = conn
        .zadd(
            index_key(DEFAULT_PREFIX, key.as_bytes()),
            key,
            now + 3_600_000,
        )
        .unwrap();
    let mut settings = settings_for(&server);
    settings.sweep.due_index.enabled = true;
    settings.sweep.throttle = ThrottleMode::Adaptive;
    let (report, readings) = paced_sweep(&settings).await;
    assert_eq!(report.counts.due_keys, 0, "{report:?}");
    assert_eq!(report.index.as_ref().unwrap().index_size, Some(1));
    // No probe connection, no first window to wait for: no reading at all.
    assert!(readings.is_empty(), "{readings:?}");
}
