//! The `token-sweeper` binary as an operator runs it: configuration, exit
//! codes, messages and output formats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{redis_now_ms, run_sweeper, write_file, RedisServer};
use redis::Commands;
use token_sweeper::config::Settings;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn default_toml_is_the_built_in_defaults() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let from_file = Settings::load_with_env(Some(&file), HashMap::new()).unwrap();
    assert_eq!(from_file, Settings::default());
}

#[test]
fn default_toml_names_every_key() {
    // Every key the settings serialize must be documented in the shipped file
    // (optional secrets appear there commented out).
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))
            .unwrap();
    let mut full = Settings::default();
    full.redis.username = Some("u".into());
    full.redis.password_file = Some("/p".into());
    full.redis.tls_ca_file = Some("/ca".into());
    full.redis.master_name = Some("m".into());
    full.redis.tls_cert_file = Some("/c".into());
    full.redis.tls_key_file = Some("/k".into());
    full.sweep.schedule = Some("0 * * * * *".parse().unwrap());
    full.auth.issuer = Some("i".into());
    full.auth.audience = Some("a".into());
    full.auth.secret_file = Some("/s".into());
    full.auth.private_key_file = Some("/k".into());
    full.auth.public_key_file = Some("/p".into());
    let dumped: toml::Table = toml::from_str(&full.to_redacted_toml().unwrap()).unwrap();
    for (section, keys) in dumped {
        assert!(
            file.contains(&format!("[{section}]")),
            "[{section}] missing"
        );
        for (key, value) in keys.as_table().unwrap() {
            // A nested table (`[sweep.due_index]`): its header and its keys.
            if let Some(nested) = value.as_table() {
                assert!(
                    file.contains(&format!("[{section}.{key}]")),
                    "[{section}.{key}] missing"
                );
                for inner in nested.keys() {
                    assert!(
                        file.contains(&format!("\n{inner} = ")),
                        "{section}.{key}.{inner} is not documented in config/default.toml"
                    );
                }
                continue;
            }
            assert!(
                file.contains(&format!("\n{key} = ")) || file.contains(&format!("# {key} = ")),
                "{section}.{key} is not documented in config/default.toml"
            );
        }
    }
    assert!(file.contains("PASSWORD"), "redis.password is documented");
    assert!(
        file.contains("TOKEN_SWEEPER__AUTH__SECRET"),
        "auth.secret is documented"
    );
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "c.toml",
        "[sweep]\npattern = \"from-file:*\"\nscan_count = 10\n[redis]\nurl = \"redis://file:1\"\n",
    );
    let env = HashMap::from([
        (
            "TOKEN_SWEEPER__SWEEP__SCAN_COUNT".to_owned(),
            "20".to_owned(),
        ),
        ("TOKEN_SWEEPER__SWEEP__GRACE".to_owned(), "90s".to_owned()),
        (
            "TOKEN_SWEEPER__REDIS__PASSWORD".to_owned(),
            "1e5".to_owned(),
        ),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ]);
    let s = Settings::load_with_env(Some(&file), env).unwrap();
    assert_eq!(s.sweep.pattern, "from-file:*");
    assert_eq!(s.sweep.scan_count, 20);
    assert_eq!(s.sweep.grace, Duration::from_secs(90));
    assert_eq!(s.redis.url, "redis://file:1".parse().unwrap());
    assert_eq!(
        s.redis.password.as_ref().map(|p| p.expose()),
        Some("1e5"),
        "a password that looks like a number stays as written"
    );
}

/// Runs `check-config` with the given file text and environment; returns (code, stderr).
fn check_config(toml: Option<&str>, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["check-config"];
    let path;
    if let Some(text) = toml {
        path = write_file(dir.path(), "c.toml", text);
        args.extend(["--config", path.to_str().unwrap()]);
    }
    let out = run_sweeper(&args, env);
    (out.status.code().unwrap(), stdout(&out), stderr(&out))
}

/// Environment variables for one case.
type Env = &'static [(&'static str, &'static str)];

#[test]
fn bad_values_exit_2_with_one_line_naming_the_key() {
    // (file text, environment, expected message)
    let cases: &[(Option<&str>, Env, &str)] = &[
        (
            Some("[sweep]\nscore_unit = \"minutes\"\n"),
            &[],
            "sweep.score_unit: expected \"ms\" or \"s\", got \"minutes\"",
        ),
        (
            None,
            &[("TOKEN_SWEEPER__SWEEP__SCORE_UNIT", "minutes")],
            "sweep.score_unit: expected \"ms\" or \"s\", got \"minutes\"",
        ),
        (
            Some("[sweep]\ngrace = \"soon\"\n"),
            &[],
            "sweep.grace: expected a duration such as \"30s\" or \"5m\", got \"soon\"",
        ),
        (
            Some("[sweep]\nbatch_size = 0\n"),
            &[],
            "sweep.batch_size: must be at least 1, got 0",
        ),
        (
            Some("[sweep]\nbatch_size = \"many\"\n"),
            &[],
            "sweep.batch_size",
        ),
        (
            Some("[sweep]\npatern = \"*-tokens\"\n"),
            &[],
            "unknown field `patern`",
        ),
        (
            None,
            &[("TOKEN_SWEEPER__SWEEP__PATERN", "x")],
            "unknown field `patern`",
        ),
        (
            Some("[redis]\nurl = \"http://localhost\"\n"),
            &[],
            "redis.url: \"http://localhost\" is not a redis:// or rediss:// URL",
        ),
        (
            Some("[log]\nformat = \"xml\"\n"),
            &[],
            "log.format: expected \"text\" or \"json\", got \"xml\"",
        ),
        (Some("[sweep\n"), &[], "c.toml"),
        // Upper bounds: one huge value would hold a node's keys in memory
        // or block Redis for a whole-keyspace SCAN.
        (
            Some("[sweep]\nbatch_size = 10001\n"),
            &[],
            "sweep.batch_size: must be at most 10000, got 10001",
        ),
        (
            None,
            &[("TOKEN_SWEEPER__SWEEP__SCAN_COUNT", "4294967295")],
            "sweep.scan_count: must be at most 100000, got 4294967295",
        ),
        (
            Some("[sweep]\nmax_in_flight = 33\n"),
            &[],
            "sweep.max_in_flight: must be at most 32, got 33",
        ),
        (
            Some("[sweep]\nunit_guard_sample = 10001\n"),
            &[],
            "sweep.unit_guard_sample: must be at most 10000, got 10001",
        ),
        // A hash tag in the lock key would put every cluster lease on one primary.
        (
            Some("[lock]\nkey = \"{sweeper}:lock\"\n"),
            &[],
            "lock.key: must not contain",
        ),
        (
            None,
            &[("TOKEN_SWEEPER__LOCK__KEY", "lock}")],
            "lock.key: must not contain",
        ),
    ];
    for (toml, env, expected) in cases {
        let (code, _, err) = check_config(*toml, env);
        assert_eq!(code, 2, "{toml:?} {env:?}: {err}");
        assert!(err.contains(expected), "{toml:?} {env:?}: got {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    }
}

#[test]
fn the_upper_bounds_themselves_are_accepted() {
    let (code, out, err) = check_config(
        Some("[sweep]\nbatch_size = 10000\nscan_count = 100000\nmax_in_flight = 32\nunit_guard_sample = 10000\n"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("batch_size = 10000\n"), "{out}");
    assert!(out.contains("scan_count = 100000\n"), "{out}");
}

#[test]
fn every_url_setting_is_redacted_in_check_config() {
    let (code, out, err) = check_config(
        None,
        &[
            ("TOKEN_SWEEPER__REDIS__MODE", "sentinel"),
            ("TOKEN_SWEEPER__REDIS__MASTER_NAME", "mymaster"),
            (
                "TOKEN_SWEEPER__REDIS__SENTINELS",
                "redis://:sentinel-secret@s1:26379,redis://admin:other%2Fsecret@s2:26379",
            ),
            (
                "TOKEN_SWEEPER__REDIS__NODES",
                "redis://seed-secret@n1:6379,rediss://u:seed%40secret@n2:6380/0",
            ),
            (
                "TOKEN_SWEEPER__REDIS__URL",
                "unix:///run/redis.sock?user=app&pass=socket-secret&db=2",
            ),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for secret in [
        "sentinel-secret",
        "other%2Fsecret",
        "seed-secret",
        "seed%40secret",
        "socket-secret",
    ] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(
        out.contains(
            r#"sentinels = ["redis://:<redacted>@s1:26379", "redis://admin:<redacted>@s2:26379"]"#
        ),
        "{out}"
    );
    assert!(
        out.contains(
            r#"nodes = ["redis://<redacted>@n1:6379", "rediss://u:<redacted>@n2:6380/0"]"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"url = "unix:///run/redis.sock?user=<redacted>&pass=<redacted>&db=2""#),
        "{out}"
    );

    let (code, out, err) = check_config(
        Some("[redis]\nurl = \"redis+unix:///run/redis.sock?pass=plus-secret\"\n"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("plus-secret"), "{out}");
    assert!(
        out.contains("redis+unix:///run/redis.sock?pass=<redacted>"),
        "{out}"
    );
}

#[test]
fn a_unix_socket_url_carries_its_password_in_the_query_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let server = RedisServer::start_with(&[
        "--unixsocket",
        socket.to_str().unwrap(),
        "--requirepass",
        "sock/et-pw",
    ]);
    let mut c = redis::Client::open(format!("redis://:sock%2Fet-pw@127.0.0.1:{}", server.port))
        .unwrap()
        .get_connection()
        .unwrap();
    // Long expired in milliseconds (2020); a score like 1 is below the
    // seconds window that a milliseconds sweep never removes.
    let _: () = c.zadd("u-tokens", "old", 1_600_000_000_000_i64).unwrap();
    let url = format!("unix://{}?pass=sock%2Fet-pw", socket.display());

    let out = run_sweeper(&["sweep", "--json"], &[("TOKEN_SWEEPER__REDIS__URL", &url)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["members_removed"], 1);

    let wrong = url.replace("sock%2Fet-pw", "wrong%2Fpw");
    let out = run_sweeper(&["sweep"], &[("TOKEN_SWEEPER__REDIS__URL", &wrong)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot connect to Redis at {}", socket.display())),
        "{err}"
    );
    assert!(!err.contains("wrong"), "{err}");

    let (code, out, err) = check_config(None, &[("TOKEN_SWEEPER__REDIS__URL", &url)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("sock%2Fet-pw") && !out.contains("sock/et-pw"),
        "{out}"
    );
    assert!(out.contains("?pass=<redacted>"), "{out}");
}

#[test]
fn a_malformed_url_names_its_key_and_never_prints_its_password() {
    // An unencoded `/` ends the authority: the URL no longer parses, and
    // the password is no longer where a redaction by the first `/` looks.
    let password = "ab/cd+ef=";
    let malformed = format!("redis://admin:{password}@10.0.0.1:6379");
    for (key, env) in [
        (
            "redis.url",
            vec![("TOKEN_SWEEPER__REDIS__URL", malformed.clone())],
        ),
        (
            "redis.sentinels",
            vec![
                ("TOKEN_SWEEPER__REDIS__MODE", "sentinel".to_owned()),
                ("TOKEN_SWEEPER__REDIS__MASTER_NAME", "m".to_owned()),
                ("TOKEN_SWEEPER__REDIS__SENTINELS", malformed.clone()),
            ],
        ),
        (
            "redis.nodes",
            vec![
                ("TOKEN_SWEEPER__REDIS__MODE", "cluster".to_owned()),
                ("TOKEN_SWEEPER__REDIS__NODES", malformed.clone()),
            ],
        ),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for command in ["check-config", "sweep"] {
            let out = run_sweeper(&[command], &env);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{key} {command}: {err}");
            assert!(err.contains(&format!("{key}: ")), "{key} {command}: {err}");
            assert!(!err.contains("cd+ef"), "{key} {command}: {err}");
            assert!(err.contains("percent-encode"), "{key} {command}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
    }
}

#[test]
fn a_missing_config_file_is_a_usage_error() {
    let out = run_sweeper(&["check-config", "--config", "/nonexistent/x.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/x.toml: no such file"));
}

#[test]
fn bad_usage_exits_2() {
    let out = run_sweeper(&["sweep", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_prints_the_effective_settings_with_secrets_redacted() {
    let (code, out, err) = check_config(
        Some("[sweep]\nscore_unit = \"s\"\n"),
        &[
            ("TOKEN_SWEEPER__REDIS__PASSWORD", "hunter2"),
            (
                "TOKEN_SWEEPER__REDIS__URL",
                "redis://admin:urlsecret@10.0.0.1:6380/3",
            ),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("hunter2") && !out.contains("urlsecret"),
        "{out}"
    );
    assert!(out.contains("password = \"<redacted>\""), "{out}");
    assert!(
        out.contains("url = \"redis://admin:<redacted>@10.0.0.1:6380/3\""),
        "{out}"
    );
    assert!(out.contains("score_unit = \"s\""), "{out}");
    // What it prints is itself a valid configuration file.
    let reparsed: Settings = toml::from_str(&out).unwrap();
    assert_eq!(reparsed.sweep.score_unit.as_str(), "s");
}

#[test]
fn sweep_prints_a_summary_and_json() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    for user in 0..5 {
        let key = format!("u{user}-tokens");
        let _: () = c.zadd(&key, "old", now - 1000).unwrap();
        let _: () = c.zadd(&key, "live", now + 3_600_000).unwrap();
    }
    let url = server.url();
    let env = [("TOKEN_SWEEPER__REDIS__URL", url.as_str())];

    let dry = run_sweeper(&["sweep", "--dry-run", "--json"], &env);
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["mode"], "dry_run");
    assert_eq!(report["members_removed"], 5);
    assert_eq!(stdout(&dry).lines().count(), 1, "one JSON object");

    let text = run_sweeper(&["sweep"], &env);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    let out = stdout(&text);
    assert!(out.starts_with("swept 5 keys in "), "{out}");
    assert!(out.contains("members removed     5"), "{out}");
    assert!(out.contains("keys changed        5"), "{out}");
    // Not a terminal: no progress line on stderr (log lines may be there:
    // the throttle logs its changes of state, which a loaded machine makes).
    let err = stderr(&text);
    assert!(!err.contains('\r') && !err.contains("scanned "), "{err}");

    let again = run_sweeper(&["sweep", "--json"], &env);
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["members_removed"], 0);
    assert_eq!(report["keys_scanned"], 5);
}

#[test]
fn unreachable_redis_exits_1_naming_the_address() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let out = run_sweeper(&["sweep"], &[("TOKEN_SWEEPER__REDIS__URL", &url)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot connect to Redis at 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn a_server_that_never_answers_fails_within_the_connect_timeout() {
    // Accepts TCP connections (the kernel does, from the backlog) but never replies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let out = run_sweeper(
        &["sweep"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", &url),
            ("TOKEN_SWEEPER__REDIS__CONNECT_TIMEOUT", "1s"),
        ],
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect to Redis at 127.0.0.1:"));
    // Generous: the point is that it does not hang for the 30s response timeout.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop(silent);
}

#[test]
fn unit_guard_exits_1_with_one_line_and_deletes_nothing() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now_s = redis_now_ms(&mut c) / 1000;
    let _: () = c.zadd("u1-tokens", "live", now_s + 600).unwrap();
    let url = server.url();

    let out = run_sweeper(&["sweep"], &[("TOKEN_SWEEPER__REDIS__URL", &url)]);

    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unit guard: sweep.score_unit is \"ms\""),
        "{err}"
    );
    assert!(err.contains("look like s"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let n: i64 = c.zcard("u1-tokens").unwrap();
    assert_eq!(n, 1);

    let off = run_sweeper(
        &["sweep"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", &url),
            ("TOKEN_SWEEPER__SWEEP__UNIT_GUARD", "false"),
        ],
    );
    assert_eq!(off.status.code(), Some(0), "{}", stderr(&off));
}

#[test]
fn password_from_a_file_and_a_wrong_one_named() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(dir.path(), "good", "s3cret\n");
    let bad = write_file(dir.path(), "bad", "nope\n");
    let url = server.url();

    let ok = run_sweeper(
        &["sweep"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", &url),
            (
                "TOKEN_SWEEPER__REDIS__PASSWORD_FILE",
                good.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    let denied = run_sweeper(
        &["sweep"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", &url),
            ("TOKEN_SWEEPER__REDIS__PASSWORD_FILE", bad.to_str().unwrap()),
        ],
    );
    assert_eq!(denied.status.code(), Some(1));
    let err = stderr(&denied);
    assert!(err.contains(&format!("127.0.0.1:{}", server.port)), "{err}");
    assert!(
        !err.contains("nope"),
        "the password is never printed: {err}"
    );

    let both = run_sweeper(
        &["check-config"],
        &[
            ("TOKEN_SWEEPER__REDIS__PASSWORD", "x"),
            (
                "TOKEN_SWEEPER__REDIS__PASSWORD_FILE",
                good.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(both.status.code(), Some(2));
    assert!(stderr(&both).contains("redis.password_file: set either"));
}

#[test]
fn database_index_from_the_url() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let _: () = redis::cmd("SELECT").arg(2).query(&mut c).unwrap();
    let _: () = c.zadd("db2-tokens", "old", 1_600_000_000_000_i64).unwrap();
    let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();
    let _: () = c.zadd("db0-tokens", "old", 1_600_000_000_000_i64).unwrap();
    let url = format!("{}/2", server.url());

    let out = run_sweeper(&["sweep", "--json"], &[("TOKEN_SWEEPER__REDIS__URL", &url)]);

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["members_removed"], 1);
    let db0: i64 = c.zcard("db0-tokens").unwrap();
    assert_eq!(db0, 1, "database 0 untouched");
}

/// A host clock two hours ahead of Redis: the sweep refuses, deletes nothing.
/// Uses libfaketime on the sweeper (redis-server's jemalloc does not run under it).
#[test]
fn clock_skew_between_host_and_redis_refuses_to_sweep() {
    let lib = common::libfaketime();
    let lib = lib.as_str();
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c
        .zadd("u-tokens", "live-for-an-hour", now + 3_600_000)
        .unwrap();
    let url = server.url();

    for clock in ["redis", "local"] {
        let out = common::sweeper(
            &["sweep"],
            &[
                ("TOKEN_SWEEPER__REDIS__URL", &url),
                ("TOKEN_SWEEPER__SWEEP__CLOCK", clock),
                ("LD_PRELOAD", lib),
                ("FAKETIME", "+2h"),
                ("DONT_FAKE_MONOTONIC", "1"),
            ],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{clock}: {}", stderr(&out));
        assert!(stderr(&out).contains("clock skew"), "{}", stderr(&out));
        let n: i64 = c.zcard("u-tokens").unwrap();
        assert_eq!(n, 1, "{clock}: the live token survives");
    }
}

/// `sweep --json` output: exactly one JSON object on one line.
fn json_object(out: &std::process::Output) -> serde_json::Value {
    let text = stdout(out);
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON line on stdout: {text:?}; stderr: {}",
        stderr(out)
    );
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(value.is_object(), "{value}");
    value
}

#[test]
fn sweep_json_reports_a_failure_to_connect() {
    let url = format!("redis://127.0.0.1:{}", common::free_port());
    for args in [&["sweep", "--json"][..], &["sweep", "--dry-run", "--json"]] {
        let out = run_sweeper(args, &[("TOKEN_SWEEPER__REDIS__URL", &url)]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let report = json_object(&out);
        let error = report["error"].as_str().unwrap();
        assert!(
            error.contains("cannot connect to Redis at 127.0.0.1:"),
            "{error}"
        );
        assert!(stderr(&out).contains(error), "the same error on stderr");
        assert_eq!(report["keys_scanned"], 0);
        assert_eq!(report["members_removed"], 0);
        let mode = if args.contains(&"--dry-run") {
            "dry_run"
        } else {
            "remove"
        };
        assert_eq!(report["mode"], mode);
    }
}

#[test]
fn sweep_json_reports_a_bad_configuration() {
    let out = run_sweeper(
        &["sweep", "--json"],
        &[("TOKEN_SWEEPER__SWEEP__SCORE_UNIT", "minutes")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let report = json_object(&out);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("sweep.score_unit"), "{error}");
    assert_eq!(report["keys_scanned"], 0);
}

#[test]
fn sweep_json_reports_the_unit_guard_and_the_clock_check() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    // Scores in seconds while sweep.score_unit is "ms".
    for user in 0..20 {
        let _: () = c
            .zadd(format!("s{user}-tokens"), "live", now / 1000 + 3600)
            .unwrap();
    }
    let url = server.url();
    let out = run_sweeper(&["sweep", "--json"], &[("TOKEN_SWEEPER__REDIS__URL", &url)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_object(&out);
    assert!(
        report["error"].as_str().unwrap().starts_with("unit guard:"),
        "{report}"
    );
    assert_eq!(report["members_removed"], 0);
    let left: i64 = c.zcard("s0-tokens").unwrap();
    assert_eq!(left, 1, "nothing deleted");

    let lib = common::libfaketime();
    let out = common::sweeper(
        &["sweep", "--json"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", &url),
            ("TOKEN_SWEEPER__SWEEP__UNIT_GUARD", "false"),
            ("LD_PRELOAD", &lib),
            ("FAKETIME", "+2h"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_object(&out);
    assert!(
        report["error"].as_str().unwrap().starts_with("clock skew:"),
        "{report}"
    );
    assert_eq!(report["keys_scanned"], 0);
}

/// Seeds `users` sets `m{n}-tokens`, each with one expired and one live member.
fn seed_many(c: &mut redis::Connection, users: usize) {
    let now = redis_now_ms(c);
    for chunk in (0..users).collect::<Vec<_>>().chunks(5_000) {
        let mut pipe = redis::pipe();
        for user in chunk {
            pipe.cmd("ZADD")
                .arg(format!("m{user}-tokens"))
                .arg(now - 60_000)
                .arg("expired")
                .arg(now + 3_600_000)
                .arg("live")
                .ignore();
        }
        let _: () = pipe.query(c).unwrap();
    }
}

/// Expired members left in the `m{n}-tokens` sets.
fn expired_left(c: &mut redis::Connection, users: usize) -> u64 {
    let mut pipe = redis::pipe();
    for user in 0..users {
        pipe.zscore(format!("m{user}-tokens"), "expired");
    }
    let scores: Vec<Option<f64>> = pipe.query(c).unwrap();
    scores.iter().flatten().count() as u64
}

#[test]
fn sweep_json_reports_the_counts_so_far_when_redis_is_lost_mid_sweep() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let users = 20_000;
    seed_many(&mut c, users);
    let url = server.url();
    let child = common::sweeper(
        &["sweep", "--json"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", &url),
            // About ten seconds for the whole keyspace.
            ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "2000"),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    common::wait_until(Duration::from_secs(10), "some keys swept", || {
        expired_left(&mut c, users) < users as u64 - 500
    });
    // The replies to those removals reach the sweeper well within this.
    std::thread::sleep(Duration::from_millis(200));
    // Drops the sweeper's connection (this one is spared).
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut c)
        .unwrap();
    let out = child.wait_with_output().unwrap();

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_object(&out);
    assert!(report["error"].is_string(), "{report}");
    let removed = users as u64 - expired_left(&mut c, users);
    let reported = report["members_removed"].as_u64().unwrap();
    // Only pipelines whose replies arrived are counted.
    assert!(
        reported >= 500 && reported <= removed,
        "reported {reported}, removed {removed}"
    );
    assert!(report["keys_scanned"].as_u64().unwrap() >= reported);
    assert!(removed < users as u64, "stopped before the end");

    let next = run_sweeper(&["sweep", "--json"], &[("TOKEN_SWEEPER__REDIS__URL", &url)]);
    assert_eq!(next.status.code(), Some(0), "{}", stderr(&next));
    let report = json_object(&next);
    assert_eq!(report["error"], serde_json::Value::Null, "{report}");
    assert_eq!(report["members_removed"], users as u64 - removed);
    assert_eq!(expired_left(&mut c, users), 0);
}

/// SIGTERM (a Kubernetes Job, a systemd timer, `timeout`) stops a one-shot
/// sweep as Ctrl-C does: what is in flight finishes, and the report says
/// what was removed and that it was interrupted.
#[test]
fn sweep_json_stops_gently_on_sigterm_and_reports() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let users = 5_000;
    seed_many(&mut c, users);
    let url = server.url();
    let child = common::sweeper(
        &["sweep", "--json"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", &url),
            ("TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND", "1000"),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    common::wait_until(Duration::from_secs(10), "some keys swept", || {
        expired_left(&mut c, users) < users as u64 - 200
    });
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
    let out = child.wait_with_output().unwrap();

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_object(&out);
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["error"], serde_json::Value::Null, "{report}");
    let removed = users as u64 - expired_left(&mut c, users);
    assert_eq!(report["members_removed"].as_u64().unwrap(), removed);
    assert!(removed < users as u64, "stopped before the end");
}

/// A second Ctrl-C quits at once, and still prints the one JSON object.
#[test]
fn sweep_json_reports_a_second_interrupt() {
    let server = RedisServer::start();
    let mut c = server.conn();
    seed_many(&mut c, 1_000);
    // Writes are held: the sweep's pipelines get no reply.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(60_000)
        .arg("WRITE")
        .query(&mut c)
        .unwrap();
    let url = server.url();
    let mut child = common::sweeper(&["sweep", "--json"], &[("TOKEN_SWEEPER__REDIS__URL", &url)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let interrupt = || {
        let ok = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -INT");
    };
    std::thread::sleep(Duration::from_millis(700));
    interrupt();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "waiting for its batches"
    );
    interrupt();
    let started = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut c).unwrap();

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_object(&out);
    assert!(
        report["error"].as_str().unwrap().contains("interrupted"),
        "{report}"
    );
    assert_eq!(report["members_removed"], 0);
}

#[test]
fn progress_is_drawn_on_a_terminal() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let mut pipe = redis::pipe();
    for user in 0..600 {
        pipe.zadd(format!("u{user}-tokens"), "old", 1).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let url = server.url();
    // `script` runs the command on a pseudo-terminal; pacing makes the sweep
    // last long enough (about 2s) for the display to tick.
    let command = format!(
        "TOKEN_SWEEPER__REDIS__URL={url} TOKEN_SWEEPER__SWEEP__MAX_KEYS_PER_SECOND=300 {} sweep",
        common::bin().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script(1) from util-linux");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\rscanned 6") || text.contains("scanned 600 keys"),
        "{text:?}"
    );
    assert!(text.contains("swept 600 keys"), "{text:?}");
}

/// Values that passed `check-config` and failed only when the daemon ran
/// (or never swept): each is refused when the configuration is read, exit
/// 2, one line naming the key.
/// - `sweep.jitter` as long as the period: every round slept it and no sweep
///   ever ran while `/readyz` said ready. It must be shorter than the
///   interval, or than the shortest gap between two cron ticks (not the
///   gap that comes next: "0 0,1 * * * *" has gaps of 1 and 59 minutes).
/// - `lock.ttl = "500000000y"`: every lease failed ("value is not an integer
///   or out of range"); at most a day.
/// - `sweep.interval = "500000000y"`: no next tick; at most 366 days.
/// - `auth.ttl` not whole seconds or under 1s.
#[test]
fn schedule_lock_and_lifetime_bounds_are_refused_at_config_time() {
    let cases: &[(Env, &str)] = &[
        (
            &[
                ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
                ("TOKEN_SWEEPER__SWEEP__JITTER", "100y"),
            ],
            "sweep.jitter: must be shorter than sweep.interval, 2s, got 36525 days",
        ),
        (
            &[
                ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
                ("TOKEN_SWEEPER__SWEEP__JITTER", "2s"),
            ],
            "sweep.jitter: must be shorter than sweep.interval, 2s, got 2s",
        ),
        (
            &[("TOKEN_SWEEPER__SWEEP__JITTER", "5m")],
            "sweep.jitter: must be shorter than sweep.interval, 5m, got 5m",
        ),
        (
            &[
                ("TOKEN_SWEEPER__SWEEP__SCHEDULE", "0 0,1 * * * *"),
                ("TOKEN_SWEEPER__SWEEP__JITTER", "1m"),
            ],
            "sweep.jitter: must be shorter than the shortest gap between two ticks of \
             sweep.schedule \"0 0,1 * * * *\", 1m, got 1m",
        ),
        (
            &[("TOKEN_SWEEPER__LOCK__TTL", "500000000y")],
            "lock.ttl: must be from 1s to 1 day, got 182625000000 days",
        ),
        (
            &[("TOKEN_SWEEPER__LOCK__TTL", "1day 1s")],
            "lock.ttl: must be from 1s to 1 day, got 1 day 1s",
        ),
        (
            &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "500000000y")],
            "sweep.interval: must be whole seconds, at least 1s and at most 366 days, \
             got 182625000000 days",
        ),
        (
            &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "367days")],
            "sweep.interval: must be whole seconds, at least 1s and at most 366 days, \
             got 367 days",
        ),
        (
            &[("TOKEN_SWEEPER__AUTH__TTL", "1500ms")],
            "auth.ttl: must be whole seconds, at least 1s, got 1s 500ms",
        ),
        (
            &[("TOKEN_SWEEPER__AUTH__TTL", "1ns")],
            "auth.ttl: must be whole seconds, at least 1s, got 1ns",
        ),
        (
            &[("TOKEN_SWEEPER__AUTH__TTL", "3651days")],
            "auth.ttl: 3651 days is longer than the longest token lifetime, 3650 days",
        ),
    ];
    for (env, expected) in cases {
        let (code, out, err) = check_config(None, env);
        assert_eq!(code, 2, "{env:?}: {err}");
        assert!(out.is_empty(), "{env:?}: {out}");
        assert!(
            err.starts_with(&format!("token-sweeper: {expected}")),
            "{env:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    }
    // The daemon itself refuses to start with one (nothing listens at the
    // URL: a daemon that wrongly starts cannot touch a Redis).
    let port = common::free_port().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let out = run_sweeper(
        &["run"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
            ("TOKEN_SWEEPER__SWEEP__JITTER", "100y"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("token-sweeper: sweep.jitter: "));
}

#[test]
fn schedule_lock_and_lifetime_values_inside_the_bounds_are_accepted() {
    let cases: &[Env] = &[
        &[
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "2s"),
            ("TOKEN_SWEEPER__SWEEP__JITTER", "1999ms"),
        ],
        &[
            ("TOKEN_SWEEPER__SWEEP__SCHEDULE", "0 0,1 * * * *"),
            ("TOKEN_SWEEPER__SWEEP__JITTER", "59s"),
        ],
        &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "366days")],
        &[("TOKEN_SWEEPER__LOCK__TTL", "1day")],
        &[("TOKEN_SWEEPER__AUTH__TTL", "1s")],
        &[("TOKEN_SWEEPER__AUTH__TTL", "3650days")],
    ];
    for env in cases {
        let (code, _, err) = check_config(None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
    }
}

/// `sweep.max_clock_skew` had no upper bound: `100y` passed and silently
/// turned the skew check off (as `0s` does on purpose). At most 10 minutes,
/// below the smallest time-zone offset, so a clock set in the wrong zone is
/// always caught; exit 2, one line naming the key.
#[test]
fn a_clock_skew_limit_that_disables_the_check_is_refused() {
    for (value, got) in [("100y", "36525 days"), ("10m 1ms", "10m 1ms"), ("1h", "1h")] {
        let (code, out, err) =
            check_config(None, &[("TOKEN_SWEEPER__SWEEP__MAX_CLOCK_SKEW", value)]);
        assert_eq!(code, 2, "{value}: {err}");
        assert!(out.is_empty(), "{value}: {out}");
        assert!(
            err.starts_with(&format!(
                "token-sweeper: sweep.max_clock_skew: must be at most 10m (0s turns the check \
                 off), got {got}: "
            )),
            "{value}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    }
    for value in ["0s", "1m", "10m"] {
        let (code, out, err) =
            check_config(None, &[("TOKEN_SWEEPER__SWEEP__MAX_CLOCK_SKEW", value)]);
        assert_eq!(code, 0, "{value}: {err}");
        assert!(out.contains("max_clock_skew = "), "{value}: {out}");
    }
}
