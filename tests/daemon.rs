//! The daemon as deployed: the real binary against private redis-servers,
//! observed through its metrics, its JSON logs and the data in Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    count_members, http_get, run_sweeper, seed, wait_until, write_file, DaemonProcess, RedisServer,
};

const OK: &str = "token_sweeper_sweeps_total{result=\"ok\"}";
const SKIPPED_OVERLAP: &str = "token_sweeper_sweeps_total{result=\"skipped_overlap\"}";
const SKIPPED_LOCKED: &str = "token_sweeper_sweeps_total{result=\"skipped_locked\"}";

#[test]
fn metrics_count_exactly_what_was_removed() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 500);
    let daemon = DaemonProcess::start(
        &server.url(),
        &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h")],
        None,
    );

    wait_until(Duration::from_secs(10), "the start-up sweep", || {
        daemon.metric(OK) >= 1.0
    });
    let scrape = daemon.scrape();

    assert_eq!(count_members(&mut c, "u"), (0, 500));
    let m = |s: &str| common::metric(&scrape, s).unwrap_or(f64::NAN);
    let node = format!("{{node=\"127.0.0.1:{}\"}}", server.port);
    assert_eq!(
        m(&format!("token_sweeper_tokens_removed_total{node}")),
        500.0,
        "{scrape}"
    );
    assert_eq!(m(&format!("token_sweeper_keys_scanned_total{node}")), 500.0);
    assert!(
        m(&format!(
            "token_sweeper_node_last_success_timestamp_seconds{node}"
        )) > 1.7e9
    );
    assert_eq!(m(&format!("token_sweeper_node_unfinished{node}")), 0.0);
    assert_eq!(m("token_sweeper_sweep_duration_seconds_count"), 1.0);
    assert!(m("token_sweeper_batch_duration_seconds_count") >= 1.0);
    assert_eq!(m("token_sweeper_redis_up"), 1.0);
    assert_eq!(m("token_sweeper_lock_held"), 0.0);
    assert_eq!(m("token_sweeper_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(m("token_sweeper_last_success_timestamp_seconds") > 1.7e9);
    assert_eq!(m("token_sweeper_sweeps_total{result=\"error\"}"), 0.0);
    assert_eq!(http_get(daemon.metrics_port, "/readyz").unwrap().0, 200);
    let finished = daemon.events("sweep finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(
        finished[0]["members_removed"], 500,
        "one info line with the numbers"
    );
}

#[test]
fn keeps_sweeping_over_many_interval_ticks() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s"),
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ],
        None,
    );

    // New expired tokens keep arriving; every batch must be swept by a later tick.
    for round in 0..6 {
        seed(&mut c, &format!("r{round}-"), 20);
        wait_until(
            Duration::from_secs(10),
            &format!("round {round} swept"),
            || count_members(&mut c, &format!("r{round}-")).0 == 0,
        );
    }

    // The metrics are recorded when a sweep ends, a moment after its last
    // deletion: wait for the sixth sweep to be counted.
    wait_until(Duration::from_secs(5), "six sweeps counted", || {
        daemon.metric(OK) >= 6.0
    });
    let removed = format!(
        "token_sweeper_tokens_removed_total{{node=\"127.0.0.1:{}\"}}",
        server.port
    );
    assert_eq!(daemon.metric(&removed), 120.0);
}

#[test]
fn cron_schedule_ticks() {
    let server = RedisServer::start();
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__SCHEDULE", "* * * * * *"),
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ],
        None,
    );
    wait_until(Duration::from_secs(15), "five cron sweeps", || {
        daemon.metric(OK) >= 5.0
    });
    let starts = daemon.events("sweep started");
    assert!(starts.iter().all(|e| e["trigger"] == "Schedule"));
}

#[test]
fn scheduled_ticks_come_from_the_scheduler() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__SCHEDULE", "* * * * * *"),
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
            // The loop says at debug level which way each tick came.
            (
                "TOKEN_SWEEPER__LOG__LEVEL",
                "info,token_sweeper::daemon=debug",
            ),
        ],
        None,
    );
    let from_scheduler = |daemon: &DaemonProcess| {
        daemon
            .events("scheduled tick")
            .into_iter()
            .filter(|e| e["source"] == "Scheduler")
            .count()
    };
    wait_until(
        Duration::from_secs(15),
        "five ticks rung by the scheduler",
        || from_scheduler(&daemon) >= 5,
    );
    seed(&mut c, "u", 10);
    wait_until(Duration::from_secs(10), "a later tick's sweep", || {
        count_members(&mut c, "u").0 == 0
    });
    let starts = daemon.events("sweep started");
    assert!(starts.len() >= 5, "{}", daemon.log_text());
    assert!(starts.iter().all(|e| e["trigger"] == "Schedule"));
}

/// Seconds since the epoch of a JSON log event.
fn event_time(event: &serde_json::Value) -> f64 {
    let ts = event["timestamp"].as_str().unwrap();
    let t = chrono::DateTime::parse_from_rfc3339(ts).unwrap();
    t.timestamp_millis() as f64 / 1000.0
}

#[test]
fn two_daemons_on_one_redis_sweep_at_most_once_per_period() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 200);
    let env = [("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s")];
    let a = DaemonProcess::start(&server.url(), &env, None);
    let b = DaemonProcess::start(&server.url(), &env, None);

    wait_until(
        Duration::from_secs(20),
        "both to contend for five periods",
        || {
            a.metric(OK) + b.metric(OK) >= 5.0
                && a.metric(SKIPPED_LOCKED) + b.metric(SKIPPED_LOCKED) >= 4.0
        },
    );

    // Every sweep of either daemon, by the 2-second period it started in.
    let mut starts: Vec<f64> = a
        .events("sweep started")
        .iter()
        .chain(b.events("sweep started").iter())
        .map(event_time)
        .collect();
    starts.sort_by(f64::total_cmp);
    let periods: Vec<i64> = starts.iter().map(|t| (t / 2.0).floor() as i64).collect();
    let mut distinct = periods.clone();
    distinct.dedup();
    assert_eq!(periods, distinct, "two sweeps in one period: {starts:?}");
    assert_eq!(count_members(&mut c, "u"), (0, 200));
}

#[test]
fn sigterm_during_a_long_sweep_exits_0_within_the_timeout() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 20_000);
    let mut daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h"),
            // About 10 s for the whole keyspace.
            ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "2000"),
            ("TOKEN_SWEEPER__SWEEP__SHUTDOWN_TIMEOUT", "3s"),
        ],
        None,
    );
    wait_until(
        Duration::from_secs(10),
        "the sweep to make progress",
        || count_members(&mut c, "u").0 < 19_000,
    );

    daemon.signal("TERM");
    let (code, took) = daemon.wait_exit(Duration::from_secs(10));

    assert_eq!(code, Some(0), "{}", daemon.log_text());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let finished = daemon.events("sweep finished");
    assert_eq!(
        finished.len(),
        1,
        "the running sweep reported: {}",
        daemon.log_text()
    );
    assert_eq!(finished[0]["interrupted"], true);
    let (expired, live) = count_members(&mut c, "u");
    assert!(
        expired > 0,
        "stopped early, the rest is left for the next sweep"
    );
    assert_eq!(live, 20_000, "no live token removed");
    let lock: Option<String> = redis::cmd("GET")
        .arg("token-sweeper:lock")
        .query(&mut c)
        .unwrap();
    assert_eq!(lock, None, "the lock is released on shutdown");
}

/// Starts a daemon whose start-up sweep hangs mid-batch: writes are paused
/// once the sweep has started (its checks include a write, the permission
/// probe, so pausing earlier would hold it up there), and a slow pace
/// leaves most of its ZREMRANGEBYSCORE pipelines to be sent after that:
/// they get no reply while SCAN still works.
fn daemon_stuck_in_a_batch(server: &RedisServer, shutdown_timeout: &str) -> DaemonProcess {
    let mut c = server.conn();
    seed(&mut c, "u", 1_000);
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h"),
            ("TOKEN_SWEEPER__SWEEP__SHUTDOWN_TIMEOUT", shutdown_timeout),
            // 1,000 keys at 100 a second: ten seconds of batches.
            ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "100"),
            ("TOKEN_SWEEPER__LOCK__ENABLED", "false"),
        ],
        None,
    );
    wait_until(Duration::from_secs(10), "the sweep to start", || {
        !daemon.events("sweep started").is_empty()
    });
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(60_000)
        .arg("WRITE")
        .query(&mut c)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    daemon
}

#[test]
fn shutdown_timeout_bounds_a_sweep_stuck_in_a_batch() {
    let server = RedisServer::start();
    let mut daemon = daemon_stuck_in_a_batch(&server, "2s");

    daemon.signal("TERM");
    let (code, took) = daemon.wait_exit(Duration::from_secs(15));

    assert_eq!(code, Some(0), "{}", daemon.log_text());
    assert!(
        took >= Duration::from_millis(1500),
        "it waited for the batch: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "but not past the timeout: {took:?}"
    );
    assert!(daemon
        .log_text()
        .contains("did not finish within sweep.shutdown_timeout"));
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut server.conn())
        .unwrap();
}

#[test]
fn a_second_signal_exits_at_once() {
    let server = RedisServer::start();
    let mut daemon = daemon_stuck_in_a_batch(&server, "60s");

    daemon.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "still waiting for the batch"
    );
    daemon.signal("TERM");
    let (code, took) = daemon.wait_exit(Duration::from_secs(10));

    assert_eq!(code, Some(1), "{}", daemon.log_text());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut server.conn())
        .unwrap();
}

/// Once shutdown began the daemon reads no more controls: reloads asked for
/// after that must not stand in the way of the second stop signal.
#[test]
fn a_second_signal_exits_at_once_after_a_burst_of_reloads() {
    let server = RedisServer::start();
    let mut daemon = daemon_stuck_in_a_batch(&server, "60s");

    daemon.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // Apart, so that each is delivered on its own rather than merged by the
    // kernel into one pending SIGHUP.
    for _ in 0..12 {
        daemon.signal("HUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "still waiting for the batch"
    );
    daemon.signal("TERM");
    let (code, took) = daemon.wait_exit(Duration::from_secs(20));

    assert_eq!(code, Some(1), "{}", daemon.log_text());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        daemon
            .log_text()
            .contains("second stop signal, exiting now"),
        "{}",
        daemon.log_text()
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut server.conn())
        .unwrap();
}

#[test]
fn sighup_reloads_the_pattern_and_a_broken_file_keeps_the_old_config() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "sweeper.toml",
        "[sweep]\npattern = \"a:*-tokens\"\ninterval = \"1s\"\n",
    );
    seed(&mut c, "a:u", 10);
    seed(&mut c, "b:u", 10);
    let daemon = DaemonProcess::start(&server.url(), &[], Some(&config));
    wait_until(Duration::from_secs(10), "a: swept", || {
        count_members(&mut c, "a:u").0 == 0
    });
    let ok_before = daemon.metric(OK);
    wait_until(Duration::from_secs(10), "two more sweeps", || {
        daemon.metric(OK) >= ok_before + 2.0
    });
    assert_eq!(
        count_members(&mut c, "b:u"),
        (10, 10),
        "b: is not in the pattern yet"
    );

    write_file(
        dir.path(),
        "sweeper.toml",
        "[sweep]\npattern = \"b:*-tokens\"\ninterval = \"1s\"\n",
    );
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "b: swept after reload", || {
        count_members(&mut c, "b:u").0 == 0
    });

    write_file(dir.path(), "sweeper.toml", "[sweep\npattern = ");
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "the failed reload logged", || {
        daemon
            .log_text()
            .contains("reload failed, keeping the previous configuration")
    });
    seed(&mut c, "a:v", 5);
    seed(&mut c, "b:v", 5);
    wait_until(Duration::from_secs(10), "b: still swept", || {
        count_members(&mut c, "b:v").0 == 0
    });
    assert_eq!(
        count_members(&mut c, "a:v"),
        (5, 5),
        "the old pattern is kept"
    );
    assert_eq!(http_get(daemon.metrics_port, "/healthz").unwrap().0, 200);
}

#[test]
fn redis_restart_turns_readyz_503_then_200_and_sweeping_resumes() {
    let mut server = RedisServer::start();
    let daemon = DaemonProcess::start(
        &server.url(),
        &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s")],
        None,
    );
    wait_until(Duration::from_secs(10), "ready", || {
        http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });

    server.kill();
    wait_until(Duration::from_secs(10), "readyz 503", || {
        http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 503)
    });
    let (_, reason) = http_get(daemon.metrics_port, "/readyz").unwrap();
    assert_eq!(reason.trim_end().lines().count(), 1, "{reason}");
    assert!(
        reason.contains(&format!("127.0.0.1:{}", server.port)),
        "{reason}"
    );
    assert_eq!(daemon.metric("token_sweeper_redis_up"), 0.0);

    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let mut c = server.conn();
    seed(&mut c, "after", 50);
    wait_until(Duration::from_secs(45), "sweeping to resume", || {
        count_members(&mut c, "after").0 == 0
    });
    wait_until(Duration::from_secs(10), "readyz 200 again", || {
        http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(daemon.metric("token_sweeper_redis_up"), 1.0);
    assert!(daemon.metric("token_sweeper_errors_total{kind=\"connection\"}") >= 1.0);
}

#[test]
fn overlapping_ticks_are_skipped_not_stacked() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 4_000);
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s"),
            // Each sweep takes about 2 s: every other tick lands on a running sweep.
            ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "2000"),
        ],
        None,
    );
    wait_until(
        Duration::from_secs(20),
        "three skipped ticks and two sweeps",
        || daemon.metric(SKIPPED_OVERLAP) >= 3.0 && daemon.metric(OK) >= 2.0,
    );

    // Starts and ends strictly alternate: never two sweeps at once.
    let lifecycle: Vec<String> = daemon
        .logs()
        .into_iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .filter(|m| m == "sweep started" || m == "sweep finished")
        .collect();
    for pair in lifecycle.windows(2) {
        assert_ne!(pair[0], pair[1], "{lifecycle:?}");
    }
    let warnings = daemon
        .log_text()
        .matches("previous sweep still running")
        .count();
    assert!(
        warnings <= daemon.events("sweep started").len(),
        "logged once per sweep, not per tick"
    );
}

#[test]
fn sigusr1_sweeps_now() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h"),
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ],
        None,
    );
    seed(&mut c, "u", 10);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count_members(&mut c, "u").0,
        10,
        "nothing runs before the signal"
    );
    daemon.signal("USR1");
    wait_until(Duration::from_secs(10), "the manual sweep", || {
        count_members(&mut c, "u").0 == 0
    });
}

#[test]
fn a_failed_sweep_makes_readyz_503_with_the_reason() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now_s = common::redis_now_ms(&mut c) / 1000;
    let _: () = redis::cmd("ZADD")
        .arg("s-tokens")
        .arg(now_s + 600)
        .arg("seconds")
        .query(&mut c)
        .unwrap();
    let daemon = DaemonProcess::start(&server.url(), &[], None);
    // Before its first connection the daemon is not ready either: wait for
    // the reason this test is about.
    wait_until(
        Duration::from_secs(10),
        "readyz 503 naming the unit guard",
        || {
            http_get(daemon.metrics_port, "/readyz")
                .is_some_and(|(code, body)| code == 503 && body.contains("unit guard"))
        },
    );
    assert_eq!(
        daemon.metric("token_sweeper_errors_total{kind=\"unit_guard\"}"),
        1.0
    );
    let n: i64 = redis::cmd("ZCARD").arg("s-tokens").query(&mut c).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn healthcheck_subcommand_reports_the_daemon() {
    let server = RedisServer::start();
    let daemon = DaemonProcess::start(&server.url(), &[], None);
    let url = format!("http://127.0.0.1:{}/healthz", daemon.metrics_port);
    let up = run_sweeper(&["healthcheck", "--url", &url], &[]);
    assert_eq!(up.status.code(), Some(0));
    drop(daemon);
    let down = run_sweeper(&["healthcheck", "--url", &url], &[]);
    assert_eq!(down.status.code(), Some(1));
}

#[test]
fn schedule_settings_are_validated() {
    let cases = [
        (
            vec![
                ("TOKEN_SWEEPER__SWEEP__SCHEDULE", "0 * * * * *"),
                ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1m"),
            ],
            "sweep.schedule: sweep.schedule and sweep.interval are both set; set exactly one",
        ),
        (
            vec![("TOKEN_SWEEPER__SWEEP__SCHEDULE", "every monday")],
            "sweep.schedule: \"every monday\" is not a cron expression",
        ),
        (
            vec![("TOKEN_SWEEPER__SWEEP__INTERVAL", "1500ms")],
            "sweep.interval: must be whole seconds, at least 1s",
        ),
        (
            vec![("TOKEN_SWEEPER__METRICS__LISTEN", "localhost")],
            "metrics.listen: \"localhost\" is not an address:port",
        ),
    ];
    for (env, expected) in cases {
        let out = run_sweeper(&["check-config"], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(expected), "{env:?}: {err}");
    }
    // A schedule on its own replaces the default interval.
    let out = run_sweeper(
        &["check-config"],
        &[("TOKEN_SWEEPER__SWEEP__SCHEDULE", "0 */5 * * * *")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("schedule = \"0 */5 * * * *\"") && !text.contains("interval ="),
        "{text}"
    );
}

#[test]
fn an_unreachable_redis_at_start_does_not_stop_the_daemon() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let daemon = DaemonProcess::start(&url, &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s")], None);
    wait_until(Duration::from_secs(10), "a failed sweep", || {
        daemon.metric("token_sweeper_sweeps_total{result=\"error\"}") >= 1.0
    });
    assert_eq!(http_get(daemon.metrics_port, "/readyz").unwrap().0, 503);
    assert_eq!(http_get(daemon.metrics_port, "/healthz").unwrap().0, 200);
}

#[test]
fn a_dead_lock_holder_is_taken_over_within_a_period_plus_the_lock_ttl() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 12_000);
    let env = [
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
        ("TOKEN_SWEEPER__LOCK__TTL", "2s"),
        // About 6 s per full sweep: three periods long. Paced by the rate
        // alone: the adaptive throttle on a loaded test machine would add
        // its own (correct, but unbounded) slowness to the timings below.
        ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "2000"),
        ("TOKEN_SWEEPER__SWEEP__THROTTLE", "off"),
    ];
    let mut holder = DaemonProcess::start(&server.url(), &env, None);
    wait_until(
        Duration::from_secs(10),
        "the holder's sweep to start",
        || !holder.events("sweep started").is_empty(),
    );
    let other = DaemonProcess::start(
        &server.url(),
        &[
            env[0],
            env[1],
            env[2],
            env[3],
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ],
        None,
    );
    // The holder's sweep outlives its 1.8 s lease; the keep-alive must keep
    // the other daemon out for two ticks.
    wait_until(
        Duration::from_secs(10),
        "two ticks skipped as locked",
        || other.metric(SKIPPED_LOCKED) >= 2.0,
    );
    assert!(
        other.events("sweep started").is_empty(),
        "never two sweepers at once"
    );
    assert!(
        holder.events("sweep finished").is_empty(),
        "the holder is still sweeping"
    );

    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    let killed = std::time::Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the other daemon to take over",
        || !other.events("sweep started").is_empty(),
    );
    let took = killed.elapsed();
    // One period (2 s) plus the lock ttl (2 s), and a tick's latency.
    assert!(took < Duration::from_secs(5), "took over after {took:?}");
    wait_until(Duration::from_secs(20), "everything expired swept", || {
        count_members(&mut c, "u").0 == 0
    });
    assert_eq!(count_members(&mut c, "u").1, 12_000);
}

/// `INFO memory`'s `used_memory`.
fn used_memory(c: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// Fills `server` with sets of expired tokens (`fill:<n>-tokens`) until
/// Redis refuses a write with OOM under `maxmemory` and `noeviction`.
fn fill_until_out_of_memory(c: &mut redis::Connection) {
    let headroom = 2 * 1024 * 1024;
    let limit = used_memory(c) + headroom;
    for (key, value) in [
        ("maxmemory-policy", "noeviction".to_owned()),
        ("maxmemory", limit.to_string()),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(key)
            .arg(value)
            .query(c)
            .unwrap();
    }
    let now = common::redis_now_ms(c);
    let probe = |c: &mut redis::Connection| -> redis::RedisResult<()> {
        redis::cmd("SET").arg("probe").arg("x").query(c)
    };
    for batch in 0.. {
        assert!(batch < 10_000, "Redis never ran out of memory");
        let mut pipe = redis::pipe();
        for user in 0..20 {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(format!("fill:{batch}-{user}-tokens"));
            for n in 0..20 {
                zadd.arg(now - 60_000 - n)
                    .arg(format!("expired-token-digest-{n:058}"));
            }
            pipe.add_command(zadd).ignore();
        }
        match pipe.query::<()>(c) {
            Ok(()) => {}
            // redis-rs gives a pipeline's error no code of its own. The
            // pipeline's own request counted towards the limit too: out of
            // memory means a small write is refused once it is gone.
            Err(e)
                if e.to_string()
                    .contains("command not allowed when used memory") =>
            {
                if probe(c).is_err_and(|e| e.code() == Some("OOM")) {
                    return;
                }
            }
            Err(e) => panic!("filling: {e}"),
        }
    }
}

#[test]
fn the_daemon_sweeps_a_redis_that_is_out_of_memory() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "live", 20);
    fill_until_out_of_memory(&mut c);
    let daemon = DaemonProcess::start(
        &server.url(),
        &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s")],
        None,
    );

    wait_until(Duration::from_secs(20), "a successful sweep", || {
        daemon.metric(OK) >= 1.0
    });

    let left: Vec<String> = redis::cmd("KEYS").arg("fill:*").query(&mut c).unwrap();
    assert!(left.is_empty(), "{} filled sets left", left.len());
    assert_eq!(
        count_members(&mut c, "live"),
        (0, 20),
        "no live token removed"
    );
    let _: () = redis::cmd("SET")
        .arg("probe")
        .arg("x")
        .query(&mut c)
        .expect("memory was freed: writes work again");
    assert_eq!(
        daemon.metric("token_sweeper_sweeps_total{result=\"error\"}"),
        0.0
    );
    assert_eq!(http_get(daemon.metrics_port, "/readyz").unwrap().0, 200);
    assert!(daemon.metric("token_sweeper_last_success_timestamp_seconds") > 1.7e9);
}

/// The daemon's `errors_total` series with a non-zero value, as `kind=value`.
fn error_kinds(daemon: &DaemonProcess) -> Vec<String> {
    daemon
        .scrape()
        .lines()
        .filter_map(|l| l.strip_prefix("token_sweeper_errors_total{kind=\""))
        .map(|l| l.replace("\"} ", "="))
        // Every known kind is exposed at 0 from the start.
        .filter(|kv| !kv.ends_with("=0"))
        .collect()
}

#[test]
fn errors_are_counted_by_what_they_are() {
    // The README's user without EVAL (refused by the server: NOPERM), and
    // without SET (refused inside the lease script: an ERR naming the user).
    for without in ["eval", "set"] {
        let server = RedisServer::start();
        let mut acl = redis::cmd("ACL");
        for arg in common::readme_acl("token-sweeper").into_iter().skip(1) {
            let arg = if arg.starts_with('>') {
                ">pw".to_owned()
            } else {
                // The lease commands are granted in the selector.
                arg.split(' ')
                    .filter(|word| *word != format!("+{without}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            acl.arg(arg);
        }
        let _: () = acl.query(&mut server.conn()).unwrap();
        let url = format!("redis://token-sweeper:pw@127.0.0.1:{}", server.port);
        let daemon = DaemonProcess::start(&url, &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s")], None);
        wait_until(Duration::from_secs(10), "a failed sweep", || {
            daemon.metric("token_sweeper_sweeps_total{result=\"error\"}") >= 1.0
        });
        let kinds = error_kinds(&daemon);
        assert!(
            !kinds.is_empty() && kinds.iter().all(|k| k.starts_with("noperm=")),
            "without +{without}: {kinds:?}"
        );
        let (code, reason) = http_get(daemon.metrics_port, "/readyz").unwrap();
        assert_eq!(code, 503);
        assert!(
            reason.contains("lock acquire"),
            "without +{without}: {reason}"
        );
    }

    // The kind of a refusal on an out-of-memory Redis, through the library.
    let oom = RedisServer::start();
    let mut c = oom.conn();
    fill_until_out_of_memory(&mut c);
    let settings = common::settings_for(&oom);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = runtime.block_on(async {
        let mut conn = token_sweeper::store::Connection::connect(&settings.redis)
            .await
            .unwrap();
        let mut set = redis::cmd("SET");
        set.arg("probe").arg("x");
        conn.query::<()>("SET", &set).await.unwrap_err()
    });
    assert_eq!(error.kind(), "oom", "{error}");
}

#[test]
fn a_cron_schedule_that_never_fires_is_refused_at_start() {
    // Nothing listens there: a daemon that wrongly starts cannot touch a Redis.
    let url = format!("redis://127.0.0.1:{}", common::free_port());
    let listen = format!("127.0.0.1:{}", common::free_port());
    for schedule in ["0 0 0 30 2 *", "0 0 0 1 1 * 2020"] {
        let env = [
            ("TOKEN_SWEEPER__SWEEP__SCHEDULE", schedule),
            ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
            ("TOKEN_SWEEPER__METRICS__LISTEN", listen.as_str()),
        ];
        for command in ["check-config", "run"] {
            let mut child = common::sweeper(&[command], &env)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let started = std::time::Instant::now();
            while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {schedule}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(
                err.contains(&format!("sweep.schedule: \"{schedule}\" never fires")),
                "{err}"
            );
        }
    }
}

/// A cron expression (with year) that fires once, `secs` seconds from now.
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
fn a_schedule_that_runs_out_is_reported_not_silent() {
    let server = RedisServer::start();
    let schedule = cron_once_in(8);
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__SCHEDULE", schedule.as_str()),
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ],
        None,
    );
    assert_eq!(daemon.metric("token_sweeper_schedule_armed"), 1.0);
    let next = daemon.metric("token_sweeper_next_sweep_timestamp_seconds");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(next > now && next < now + 10.0, "next {next}, now {now}");
    wait_until(Duration::from_secs(5), "readyz 200 before the tick", || {
        http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert!(daemon.events("sweep started").is_empty());

    wait_until(Duration::from_secs(15), "the one scheduled sweep", || {
        daemon.metric(OK) >= 1.0
    });
    wait_until(Duration::from_secs(5), "readyz 503", || {
        http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 503)
    });
    let (_, reason) = http_get(daemon.metrics_port, "/readyz").unwrap();
    assert_eq!(reason.trim_end().lines().count(), 1, "{reason}");
    assert!(
        reason.contains(&format!("sweep.schedule \"{schedule}\"")),
        "{reason}"
    );
    assert_eq!(daemon.metric("token_sweeper_schedule_armed"), 0.0);
    assert_eq!(
        daemon.metric("token_sweeper_next_sweep_timestamp_seconds"),
        0.0
    );
    assert_eq!(daemon.events("sweep started").len(), 1);
}

#[test]
fn sighup_to_a_schedule_that_cannot_run_keeps_the_old_one() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "sweeper.toml", "[sweep]\ninterval = \"1s\"\n");
    let daemon = DaemonProcess::start(&server.url(), &[], Some(&config));
    seed(&mut c, "a", 10);
    wait_until(Duration::from_secs(10), "a swept", || {
        count_members(&mut c, "a").0 == 0
    });

    write_file(
        dir.path(),
        "sweeper.toml",
        "[sweep]\nschedule = \"0 0 0 30 2 *\"\n",
    );
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "the refused reload", || {
        daemon
            .log_text()
            .contains("reload failed, keeping the previous configuration")
    });
    seed(&mut c, "b", 10);
    wait_until(
        Duration::from_secs(10),
        "b swept on the old schedule",
        || count_members(&mut c, "b").0 == 0,
    );
    assert_eq!(daemon.metric("token_sweeper_schedule_armed"), 1.0);

    // A schedule that can run replaces the old one.
    write_file(
        dir.path(),
        "sweeper.toml",
        "[sweep]\nschedule = \"* * * * * *\"\n",
    );
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "the reload", || {
        daemon.log_text().contains("configuration reloaded")
    });
    seed(&mut c, "c", 10);
    wait_until(
        Duration::from_secs(10),
        "c swept on the new schedule",
        || count_members(&mut c, "c").0 == 0,
    );
    assert_eq!(http_get(daemon.metrics_port, "/readyz").unwrap().0, 200);
}

/// systemd's end of `NOTIFY_SOCKET`: records what the daemon says, and when.
struct FakeSystemd {
    path: std::path::PathBuf,
    heard: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    _dir: tempfile::TempDir,
}

impl FakeSystemd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&heard);
        // Ends with the test process; the socket file goes with the tempdir.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((std::time::Instant::now(), text));
            }
        });
        Self {
            path,
            heard,
            _dir: dir,
        }
    }

    fn said(&self, what: &str) -> bool {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.contains(what))
    }

    fn pings_since(&self, since: std::time::Instant) -> usize {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, m)| *at >= since && m.contains("WATCHDOG=1"))
            .count()
    }
}

#[test]
fn the_watchdog_is_fed_while_the_daemon_works_and_starves_while_it_is_stuck() {
    let server = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut c = server.conn();
    let _: () = redis::cmd("AUTH").arg("pw").query(&mut c).unwrap();
    seed(&mut c, "u", 6_000);
    let dir = tempfile::tempdir().unwrap();
    let password = write_file(dir.path(), "password", "pw\n");
    let config_text = |password: &std::path::Path| {
        format!(
            "[redis]\npassword_file = {:?}\n[sweep]\ninterval = \"1h\"\nmax_keys_per_second = 1000\n",
            password.display().to_string()
        )
    };
    let config = write_file(dir.path(), "sweeper.toml", &config_text(&password));
    let systemd = FakeSystemd::start();
    let notify = systemd.path.display().to_string();
    // Pings due every 0.5 s at the latest.
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("NOTIFY_SOCKET", notify.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
        Some(&config),
    );
    wait_until(Duration::from_secs(10), "READY=1", || {
        systemd.said("READY=1")
    });

    // Healthy, in the middle of a six-second sweep.
    let window = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.events("sweep finished").is_empty(), "still sweeping");
    assert!(systemd.pings_since(window) >= 2, "fed while sweeping");
    // Healthy and idle.
    wait_until(Duration::from_secs(20), "the sweep to end", || {
        !daemon.events("sweep finished").is_empty()
    });
    let window = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert!(systemd.pings_since(window) >= 2, "fed while idle");

    // Stuck: the password file becomes a FIFO nobody writes to, and the
    // reconnect that a reload starts blocks reading it.
    let fifo = dir.path().join("password.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    write_file(dir.path(), "sweeper.toml", &config_text(&fifo));
    daemon.signal("HUP");
    // The reconnect waits 1 s; a ping may still be on its way after that.
    std::thread::sleep(Duration::from_secs(2));
    let stuck = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(systemd.pings_since(stuck), 0, "no ping while stuck");

    // Unstuck: the password arrives (from a thread: opening a FIFO blocks
    // until its reader is there, and a failure here must not hang the test).
    let released = std::time::Instant::now();
    std::thread::spawn(move || std::fs::write(fifo, "pw\n"));
    wait_until(Duration::from_secs(10), "pings again", || {
        systemd.pings_since(released) >= 2
    });
    wait_until(Duration::from_secs(10), "reconnected", || {
        daemon.log_text().contains("Redis connection restored")
    });
}

/// Issue 10, item 1: a replica that refuses to sweep (here its host clock
/// is 1 s ahead of Redis, beyond `max_clock_skew = 500ms`) used to take the
/// lock first, refuse, and keep the lock for the period: ticking first
/// every period, it kept the healthy replica from ever sweeping. Now its
/// checks run before it asks for the lock, so it never holds it, and the
/// healthy replica sweeps every period.
#[test]
fn a_replica_whose_clock_is_ahead_takes_no_lock_and_the_healthy_one_sweeps_every_period() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let env = [
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
        ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ("TOKEN_SWEEPER__SWEEP__MAX_CLOCK_SKEW", "500ms"),
    ];
    let lib = common::libfaketime();
    let mut skewed_env = env.to_vec();
    skewed_env.extend([
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", "+1s"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ]);
    // Started first, so it also contends for the very first period.
    let skewed = DaemonProcess::start(&server.url(), &skewed_env, None);
    let healthy = DaemonProcess::start(&server.url(), &env, None);
    let holder = || -> Option<u32> {
        let holder: Option<String> = redis::cmd("GET")
            .arg("token-sweeper:lock")
            .query(&mut server.conn())
            .unwrap();
        holder.as_deref().and_then(common::holder_pid)
    };

    wait_until(
        Duration::from_secs(10),
        "the skewed replica to refuse",
        || skewed.metric("token_sweeper_errors_total{kind=\"clock_skew\"}") >= 1.0,
    );
    let swept_before = healthy.metric(OK);
    // Five periods: expired tokens keep arriving and are swept every period.
    for period in 0..5 {
        let prefix = format!("p{period}-");
        seed(&mut c, &prefix, 20);
        wait_until(
            Duration::from_secs(5),
            &format!("period {period}'s tokens swept"),
            || {
                assert_ne!(
                    holder(),
                    Some(skewed.pid()),
                    "the skewed replica holds the lock"
                );
                count_members(&mut c, &prefix).0 == 0
            },
        );
    }
    wait_until(Duration::from_secs(5), "the fifth sweep counted", || {
        healthy.metric(OK) >= swept_before + 5.0
    });
    assert_eq!(
        healthy.metric(SKIPPED_LOCKED),
        0.0,
        "{}",
        healthy.log_text()
    );
    assert!(skewed.metric("token_sweeper_errors_total{kind=\"clock_skew\"}") >= 5.0);
    assert_eq!(skewed.metric(OK), 0.0);
    assert_eq!(skewed.metric("token_sweeper_lock_held"), 0.0);
    assert_eq!(http_get(healthy.metrics_port, "/readyz").unwrap().0, 200);
    // The fleet-wide alert of the README, max over the replicas: fresh,
    // although the skewed replica has never succeeded.
    let newest = healthy
        .metric("token_sweeper_last_success_timestamp_seconds")
        .max(skewed.metric("token_sweeper_last_success_timestamp_seconds"));
    assert!(common::unix_now() - newest < 3.0 * 2.0, "{newest}");
}

/// A round used to report a lost connection as "whichever is current":
/// when `/readyz` had already noticed the loss and a new connection was in
/// place, the round's late failure on the old one dropped the new one (a
/// second outage, a second reconnect). Rounds now report the connection
/// they used, and a report about a replaced one is ignored.
#[test]
fn a_late_failure_of_an_old_round_does_not_drop_the_new_connection() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 30);
    // One key a second: the round spends most of its time between batches.
    let daemon = DaemonProcess::start(
        &server.url(),
        &[
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h"),
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
            ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "1"),
            ("TOKEN_SWEEPER__SWEEP__BATCH_SIZE", "1"),
        ],
        None,
    );
    wait_until(Duration::from_secs(10), "connected", || {
        http_get(daemon.metrics_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    daemon.signal("USR1");
    wait_until(Duration::from_secs(10), "two batches swept", || {
        count_members(&mut c, "u").0 <= 28
    });
    // The daemon's connection goes; /readyz notices at once and reconnects
    // while the round waits for its next batch, which then fails.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut c)
        .unwrap();
    http_get(daemon.metrics_port, "/readyz").unwrap();
    wait_until(Duration::from_secs(10), "the round to fail", || {
        daemon.metric("token_sweeper_sweeps_total{result=\"error\"}") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let lost = daemon.events("Redis connection lost; reconnecting with backoff");
    assert_eq!(lost.len(), 1, "{}", daemon.log_text());
    assert_eq!(
        daemon.events("Redis connection restored").len(),
        1,
        "{}",
        daemon.log_text()
    );
    assert_eq!(daemon.metric("token_sweeper_redis_up"), 1.0);
}

/// A reload to a `sweep.jitter` as long as the period is refused and the
/// daemon keeps sweeping on the old settings. (It was taken: each round then
/// slept the jitter, 100 years, and no sweep ever ran while `/readyz` said
/// ready.)
#[test]
fn a_reload_to_a_jitter_as_long_as_the_period_is_refused_and_sweeping_goes_on() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "sweeper.toml", "[sweep]\ninterval = \"1s\"\n");
    let daemon = DaemonProcess::start(&server.url(), &[], Some(&config));
    seed(&mut c, "a", 10);
    wait_until(Duration::from_secs(10), "a swept", || {
        count_members(&mut c, "a").0 == 0
    });

    write_file(
        dir.path(),
        "sweeper.toml",
        "[sweep]\ninterval = \"2s\"\njitter = \"100y\"\n",
    );
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "the refused reload", || {
        events_containing(&daemon, "reload failed").iter().any(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("sweep.jitter: must be shorter than sweep.interval"))
        })
    });
    seed(&mut c, "b", 10);
    wait_until(
        Duration::from_secs(10),
        "b swept on the old settings",
        || count_members(&mut c, "b").0 == 0,
    );
    assert_eq!(count_members(&mut c, "b").1, 10, "no live token removed");
    assert_eq!(http_get(daemon.metrics_port, "/readyz").unwrap().0, 200);
}

/// A tick that lands on a round still waiting out its `sweep.jitter` delay
/// is logged as that, not as "previous sweep still running" (which it is
/// not: it has not read Redis yet). The start-up round waits up to the
/// jitter (59 minutes here); a SIGUSR1 sweep asked for meanwhile is the
/// overlapping tick.
#[test]
fn a_tick_during_the_jitter_delay_is_logged_as_waiting_not_as_running() {
    let server = RedisServer::start();
    // A delay drawn under a few seconds would let the start-up sweep run
    // before the signal: try again with a new daemon (each try has a 1 in
    // 700 chance of that).
    for _attempt in 0..3 {
        let daemon = DaemonProcess::start(
            &server.url(),
            &[
                ("TOKEN_SWEEPER__SWEEP__INTERVAL", "1h"),
                ("TOKEN_SWEEPER__SWEEP__JITTER", "59m"),
            ],
            None,
        );
        std::thread::sleep(Duration::from_millis(300));
        daemon.signal("USR1");
        wait_until(Duration::from_secs(10), "the overlap warning", || {
            daemon.metric(SKIPPED_OVERLAP) >= 1.0 || !daemon.events("sweep started").is_empty()
        });
        if !daemon.events("sweep started").is_empty() {
            continue;
        }
        let warnings = events_containing(&daemon, "previous sweep still");
        assert_eq!(warnings.len(), 1, "{}", daemon.log_text());
        assert!(
            warnings[0]["message"]
                .as_str()
                .unwrap()
                .starts_with("previous sweep still waiting out its sweep.jitter delay"),
            "{}",
            daemon.log_text()
        );
        assert!(
            !daemon.log_text().contains("previous sweep still running"),
            "{}",
            daemon.log_text()
        );
        // Not swept yet, and not failing: the daemon is ready.
        assert_eq!(daemon.metric(OK), 0.0);
        assert_eq!(http_get(daemon.metrics_port, "/readyz").unwrap().0, 200);
        return;
    }
    panic!("three start-up sweeps drew a jitter delay under a few seconds");
}

/// The daemon's log events whose message contains `text`.
fn events_containing(daemon: &DaemonProcess, text: &str) -> Vec<serde_json::Value> {
    daemon
        .logs()
        .into_iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains(text)))
        .collect()
}

/// `lock.ttl` was not bounded by the period: a holder killed mid-sweep kept
/// the lease for the default 30 s (15 periods of 2 s) while the survivor
/// said ready. Now the ttl in force is at most one period, and the survivor
/// sweeps within two periods of the kill.
#[test]
fn a_killed_holder_with_the_default_lock_ttl_is_taken_over_within_two_periods() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed(&mut c, "u", 6_000);
    // lock.ttl left at its default (30s).
    let env = [
        ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
        // About 6 s per full sweep: three periods long.
        ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "1000"),
    ];
    let mut holder = DaemonProcess::start(&server.url(), &env, None);
    wait_until(
        Duration::from_secs(10),
        "the holder's sweep to start",
        || !holder.events("sweep started").is_empty(),
    );
    let other = DaemonProcess::start(
        &server.url(),
        &[
            env[0],
            env[1],
            ("TOKEN_SWEEPER__SWEEP__RUN_ON_START", "false"),
        ],
        None,
    );
    wait_until(Duration::from_secs(10), "a tick skipped as locked", || {
        other.metric(SKIPPED_LOCKED) >= 1.0
    });
    assert!(
        holder.events("sweep finished").is_empty(),
        "the holder is still sweeping"
    );
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    let killed = std::time::Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the other daemon to take over",
        || !other.events("sweep started").is_empty(),
    );
    let took = killed.elapsed();
    // Two periods, and a tick's latency.
    assert!(took < Duration::from_secs(5), "took over after {took:?}");
}

/// An embedding process that drops the daemon's future (aborts its task, a
/// `select!` that picks another branch) gets its port back: the HTTP
/// endpoints do not outlive the daemon they report on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_daemon_stops_its_http_endpoints() {
    use token_sweeper::config::RedisUrl;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = token_sweeper::config::Settings::default();
    settings.metrics.listen = format!("127.0.0.1:{port}").parse().unwrap();
    // Nothing listens there: the daemon keeps retrying, its endpoints up.
    settings.redis.url = RedisUrl::parse("redis://127.0.0.1:1").unwrap();
    settings.sweep.run_on_start = false;
    let (_controls, controls_rx) = tokio::sync::mpsc::channel(1);
    let daemon = token_sweeper::daemon::Daemon {
        config_path: None,
        settings,
        log_level: None,
    };
    let task = tokio::spawn(daemon.run(controls_rx, tokio_util::sync::CancellationToken::new()));
    let accepting = || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !accepting().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "endpoints never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let _ = task.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while accepting().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the HTTP endpoints outlived the dropped daemon"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
