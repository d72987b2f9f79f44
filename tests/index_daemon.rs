//! The daemon in index mode (`sweep.due_index.enabled`): the real binary
//! against a private redis-server, index sweeps on `sweep.schedule` and
//! full scans (the safety net that repairs the index) on
//! `sweep.due_index.full_scan`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{count_members, redis_now_ms, wait_until, write_file, DaemonProcess, RedisServer};

const OK: &str = "token_sweeper_sweeps_total{result=\"ok\"}";
use redis::Commands;
use token_sweeper::due_index::{index_key, DEFAULT_PREFIX};

fn entry(conn: &mut redis::Connection, key: &str) -> Option<f64> {
    conn.zscore(index_key(DEFAULT_PREFIX, key.as_bytes()), key)
        .unwrap()
}

/// `users` sets `{prefix}{n}-tokens` with one expired and one live member,
/// each with an index entry at its expired member (as a login writes it)
/// when `indexed`; returns the live score.
fn seed(conn: &mut redis::Connection, prefix: &str, users: usize, indexed: bool) -> i64 {
    let now = redis_now_ms(conn);
    let (expired, live) = (now - 60_000, now + 3_600_000);
    for user in 0..users {
        let key = format!("{prefix}{user}-tokens");
        let _: () = conn
            .zadd_multiple(&key, &[(expired, "expired"), (live, "live")])
            .unwrap();
        if indexed {
            let _: () = conn
                .zadd(index_key(DEFAULT_PREFIX, key.as_bytes()), &key, expired)
                .unwrap();
        }
    }
    live
}

/// The daemon's configuration: index mode, index sweeps every 2 s (the
/// lock is on, and a primary's checks get a third of the period), full
/// scans on `full_scan`.
fn config(full_scan: &str) -> String {
    format!(
        "[sweep]\ninterval = \"2s\"\n[sweep.due_index]\nenabled = true\nfull_scan = \"{full_scan}\"\n"
    )
}

#[test]
fn index_rounds_sweep_indexed_keys_and_the_full_scan_cleans_and_indexes_the_rest() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let live = seed(&mut c, "ix", 30, true);
    let plain_live = seed(&mut c, "plain", 1, false);
    assert_eq!(entry(&mut c, "plain0-tokens"), None);
    let dir = tempfile::tempdir().unwrap();
    // No full scan for decades: only index sweeps until the reload.
    let file = write_file(dir.path(), "sweeper.toml", &config("0 0 0 1 1 * 2099"));
    let daemon = DaemonProcess::start(&server.url(), &[], Some(&file));

    wait_until(Duration::from_secs(20), "the index sweeps", || {
        count_members(&mut c, "ix").0 == 0
    });
    // The entries moved to each key's next expiry.
    for user in 0..30 {
        let key = format!("ix{user}-tokens");
        assert_eq!(entry(&mut c, &key), Some(live as f64), "{key}");
    }
    wait_until(
        Duration::from_secs(10),
        "the index sweep's log line",
        || !daemon.events("sweep finished").is_empty(),
    );
    let ok = daemon.metric(OK);
    wait_until(Duration::from_secs(10), "another index sweep", || {
        daemon.metric(OK) > ok
    });
    // Index sweeps never touch a key without an entry.
    assert_eq!(count_members(&mut c, "plain"), (1, 1));
    assert_eq!(entry(&mut c, "plain0-tokens"), None);
    // The metrics of index mode: the index as the last sweep found it
    // (nothing due any more: no lag), what the sweeps did, no full scan.
    let scrape = daemon.scrape();
    let m = |s: &str| common::metric(&scrape, s).unwrap_or(f64::NAN);
    let node = format!("{{node=\"127.0.0.1:{}\"}}", server.port);
    assert_eq!(
        m(&format!("token_sweeper_due_index_entries{node}")),
        30.0,
        "{scrape}"
    );
    assert_eq!(
        m(&format!("token_sweeper_due_index_lag_seconds{node}")),
        0.0
    );
    assert_eq!(m(&format!("token_sweeper_due_keys_total{node}")), 30.0);
    assert_eq!(
        m(&format!("token_sweeper_index_entries_moved_total{node}")),
        30.0
    );
    assert_eq!(
        m(&format!("token_sweeper_index_entries_dropped_total{node}")),
        0.0
    );
    assert_eq!(m(&format!("token_sweeper_keys_scanned_total{node}")), 0.0);
    assert_eq!(m("token_sweeper_full_scans_total{result=\"ok\"}"), 0.0);
    // The first index sweep found the entries a minute overdue.
    let lag = daemon.events("sweep finished")[0]["index_lag_seconds"].as_f64();
    assert!(lag.is_some_and(|lag| lag >= 59.0), "{lag:?}");

    write_file(dir.path(), "sweeper.toml", &config("3s"));
    daemon.signal("HUP");
    wait_until(Duration::from_secs(20), "the full scan", || {
        count_members(&mut c, "plain").0 == 0
    });
    assert_eq!(count_members(&mut c, "plain"), (0, 1));
    assert_eq!(count_members(&mut c, "ix"), (0, 30));
    // The full scan gave the key its entry, at its next expiry.
    assert_eq!(entry(&mut c, "plain0-tokens"), Some(plain_live as f64));

    wait_until(Duration::from_secs(10), "the full scan's log line", || {
        daemon
            .events("sweep finished")
            .iter()
            .any(|e| e["kind"] == "full")
    });
    let finished = daemon.events("sweep finished");
    let first_full = finished.iter().position(|e| e["kind"] == "full").unwrap();
    let (index, full) = finished.split_at(first_full);
    assert!(!index.is_empty(), "{finished:?}");
    for round in index {
        assert_eq!(round["kind"], "index", "{round}");
        assert_eq!(round["keys_scanned"], 0, "an index sweep scans nothing");
    }
    let removed: u64 = index
        .iter()
        .map(|e| e["members_removed"].as_u64().unwrap())
        .sum();
    assert_eq!(removed, 30, "{finished:?}");
    assert_eq!(full[0]["members_removed"], 1, "{finished:?}");
    assert!(
        full[0]["keys_scanned"].as_u64().unwrap() >= 31,
        "{}",
        full[0]
    );
    // One set no writer indexed: repaired, which the alert reads.
    assert_eq!(full[0]["index_entries_repaired"], 1, "{}", full[0]);
    assert_eq!(full[0]["index_entries_moved"], 0, "{}", full[0]);
    wait_until(Duration::from_secs(10), "the full scan counted", || {
        daemon.metric("token_sweeper_full_scans_total{result=\"ok\"}") >= 1.0
    });
    assert_eq!(
        daemon.metric(&format!("token_sweeper_index_entries_repaired_total{node}")),
        1.0
    );
    let started = daemon.events("sweep started");
    assert!(started.iter().any(|e| e["kind"] == "index"));
    assert!(started.iter().any(|e| e["kind"] == "full"));
}

/// A cron expression that fires once, `secs` from now (UTC).
fn cron_once_in(secs: i64) -> String {
    use chrono::{Datelike, Timelike};
    let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
    format!(
        "{} {} {} {} {} * {}",
        at.second(),
        at.minute(),
        at.hour(),
        at.day(),
        at.month(),
        at.year()
    )
}

#[test]
fn a_full_scan_that_failed_runs_again_after_the_next_index_sweep_not_a_period_later() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "ix", 5, true);
    seed(&mut c, "plain", 1, false);
    // A user that may not SCAN: index sweeps work, a full scan is refused
    // by its permission check.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "sw", "on", ">pw", "~*", "+@all", "-scan"])
        .query(&mut c)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One full scan, a few seconds from now, and none after it.
    let file = write_file(dir.path(), "sweeper.toml", &config(&cron_once_in(4)));
    let url = format!("redis://sw:pw@127.0.0.1:{}", server.port);
    let daemon = DaemonProcess::start(&url, &[], Some(&file));
    let failed = || {
        daemon.logs().iter().any(|e| {
            e["round"] == "full"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("sweep failed"))
        })
    };
    for _ in 0..200 {
        if failed() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(failed(), "{}", daemon.log_text());
    assert_eq!(count_members(&mut c, "plain"), (1, 1));
    assert_eq!(count_members(&mut c, "ix"), (0, 5), "index sweeps ran");

    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "sw", "+scan"])
        .query(&mut c)
        .unwrap();
    wait_until(Duration::from_secs(20), "the owed full scan", || {
        count_members(&mut c, "plain").0 == 0
    });
    assert_eq!(count_members(&mut c, "plain"), (0, 1));
    // While it failed, index sweeps still ran between the retries.
    // (A full scan refused by its checks logs no "sweep started".)
    let kinds: Vec<String> = daemon
        .logs()
        .iter()
        .filter_map(|e| {
            let message = e["message"].as_str()?;
            if message == "sweep started" {
                return Some(e["kind"].as_str()?.to_owned());
            }
            (message.starts_with("sweep failed") && e["round"] == "full").then(|| "full".to_owned())
        })
        .collect();
    assert!(
        kinds.iter().filter(|k| *k == "full").count() >= 2,
        "{kinds:?}"
    );
    assert!(
        kinds.windows(2).all(|w| w[0] == "index" || w[1] == "index"),
        "no two full scans in a row: {kinds:?}"
    );
}

/// A full scan runs in place of the index sweeps it outlasts: the index
/// ticks during it are counted as covered (`skipped_full_scan`), not as
/// an overrun (`skipped_overlap`, which alerts), and it is behind only
/// past its own plan's next tick, not the index sweeps' (`sweep_behind`).
#[test]
fn index_ticks_during_a_full_scan_are_covered_not_overrun() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "plain", 1000, false);
    let dir = tempfile::tempdir().unwrap();
    // A full scan a few seconds from now and every minute after, paced
    // to last about 5 s: two index periods or more.
    let second = chrono::Timelike::second(&(chrono::Utc::now() + chrono::Duration::seconds(4)));
    let text = config(&format!("{second} * * * * *")).replace(
        "[sweep.due_index]",
        "max_keys_per_second = 200\n[sweep.due_index]",
    );
    let file = write_file(dir.path(), "sweeper.toml", &text);
    let daemon = DaemonProcess::start(&server.url(), &[], Some(&file));
    let behind = format!(
        "token_sweeper_sweep_behind{{node=\"127.0.0.1:{}\"}}",
        server.port
    );
    let repaired = format!(
        "token_sweeper_index_entries_repaired_total{{node=\"127.0.0.1:{}\"}}",
        server.port
    );
    let started = format!(
        "token_sweeper_full_scan_started_timestamp_seconds{{node=\"127.0.0.1:{}\"}}",
        server.port
    );
    // Before the full scan: the counter its alert reads is there, at 0.
    wait_until(Duration::from_secs(10), "an index round", || {
        common::metric(&daemon.scrape(), &repaired) == Some(0.0)
    });
    let (mut most_behind, mut full_scan_seen) = (0.0f64, false);
    wait_until(Duration::from_secs(30), "the full scan", || {
        let scrape = daemon.scrape();
        most_behind = most_behind.max(common::metric(&scrape, &behind).unwrap_or(0.0));
        full_scan_seen |= common::metric(&scrape, &started).is_some_and(|at| at > 1e9);
        common::metric(&scrape, "token_sweeper_full_scans_total{result=\"ok\"}") == Some(1.0)
    });
    assert!(full_scan_seen, "no full scan start time while it ran");
    assert_eq!(common::metric(&daemon.scrape(), &started), None, "after it");
    assert_eq!(count_members(&mut c, "plain"), (0, 1000));
    let scrape = daemon.scrape();
    let result = |r: &str| {
        common::metric(
            &scrape,
            &format!("token_sweeper_sweeps_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(
        result("skipped_overlap"),
        Some(0.0),
        "{}",
        daemon.log_text()
    );
    assert!(
        result("skipped_full_scan").is_some_and(|n| n >= 1.0),
        "{scrape}"
    );
    assert_eq!(most_behind, 0.0, "{}", daemon.log_text());
}

/// A `full_scan` cron that runs out (a year field) leaves the index with
/// no safety net: `/readyz` says so, as for `sweep.schedule`.
#[test]
fn a_full_scan_plan_that_runs_out_makes_the_daemon_unready() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cron = cron_once_in(3);
    let file = write_file(dir.path(), "sweeper.toml", &config(&cron));
    let daemon = DaemonProcess::start(&server.url(), &[], Some(&file));
    let readyz = || common::http_get(daemon.metrics_port, "/readyz");
    wait_until(Duration::from_secs(10), "ready", || {
        readyz().is_some_and(|(code, _)| code == 200)
    });
    wait_until(Duration::from_secs(20), "the full scan", || {
        daemon.metric("token_sweeper_full_scans_total{result=\"ok\"}") == 1.0
    });
    let (code, body) = readyz().unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body.trim(),
        format!("sweep.due_index.full_scan {cron:?} has no next tick: no full scan is scheduled"),
    );
}
