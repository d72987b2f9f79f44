//! Test harness: private `redis-server` processes on free loopback ports, and
//! a way to run the real binary against them.
//!
//! Each test starts its own server, so tests run in parallel and never see
//! each other's data (nor touch the Redis that may run on port 6379).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod invariants;
pub mod proxy;
pub mod sentinel;
pub mod workload;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` owned by one test; killed on drop.
pub struct RedisServer {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its working directory (logs, and anything a test puts beside it).
    pub dir: tempfile::TempDir,
    /// The extra arguments it was started with, reused by a restart.
    extra: Vec<String>,
}

/// `redis-server` from `$REDIS_SERVER`, else from `PATH`.
pub fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A port that was free a moment ago. Another process may take it before the
/// server binds it, so [`RedisServer::start_with`] retries.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl RedisServer {
    /// Starts a server with persistence off.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`["--requirepass", "x"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut last_error = String::new();
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let child = spawn_server(port, dir.path(), &extra);
            let mut server = Self {
                child,
                port,
                dir,
                extra: extra.clone(),
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            // A requirepass server answers NOAUTH: that still means it is up.
            if let Ok(mut conn) = self.client().get_connection() {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query(&mut conn);
                match pong {
                    Ok(_) => return Ok(()),
                    Err(e) if e.code() == Some("NOAUTH") => return Ok(()),
                    Err(_) => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("no PONG within 10s".to_owned())
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A redis-rs client for setting up and inspecting data.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A blocking connection for setting up and inspecting data.
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connection")
    }

    /// Whether the process is still running (not killed, not exited).
    pub fn is_running(&self) -> bool {
        // try_wait needs &mut; a signal-0 probe does not.
        Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server (as a crash would: no save).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis TIME in milliseconds.
pub fn redis_now_ms(conn: &mut redis::Connection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(conn).unwrap();
    secs * 1000 + micros / 1000
}

/// Every member of a sorted set with its score.
pub fn members(conn: &mut redis::Connection, key: &[u8]) -> Vec<(Vec<u8>, f64)> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(conn)
        .unwrap()
}

/// The built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_token-sweeper"))
}

/// A `token-sweeper` command with a clean environment: only the variables
/// given here reach it, so the developer's own TOKEN_SWEEPER__* cannot leak in.
pub fn sweeper(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(bin());
    command.env_clear().args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// Runs the binary and collects its output.
pub fn run_sweeper(args: &[&str], env: &[(&str, &str)]) -> Output {
    sweeper(args, env).output().expect("run token-sweeper")
}

/// The libfaketime library to `LD_PRELOAD` into the sweeper, to give it a
/// host clock of a test's choosing (`FAKETIME=+2h`, with
/// `DONT_FAKE_MONOTONIC=1` so its timeouts still work). Not into
/// redis-server: its jemalloc does not run under it.
pub fn libfaketime() -> String {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path().join("faketime/libfaketime.so.1");
            path.exists().then_some(path)
        })
        .next()
        .expect("libfaketime is missing: apt-get install faketime (.ci/test does)")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Writes `text` to `name` in `dir` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Settings pointing at `server`, with everything else at its default.
pub fn settings_for(server: &RedisServer) -> token_sweeper::config::Settings {
    let mut settings = token_sweeper::config::Settings::default();
    settings.redis.url = server.url().parse().unwrap();
    settings
}

/// Runs one sweep through the library.
pub async fn sweep_with(
    settings: &token_sweeper::config::Settings,
    mode: token_sweeper::sweep::SweepMode,
) -> Result<token_sweeper::sweep::SweepReport, token_sweeper::sweep::SweepError> {
    let conn = token_sweeper::store::Connection::connect(&settings.redis)
        .await
        .expect("connect");
    let progress = token_sweeper::sweep::SweepProgress::default();
    token_sweeper::sweep::sweep(
        &conn,
        &settings.sweep,
        mode,
        &progress,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
}

/// `redis-server` on `port` in `dir` with persistence off, then `extra`
/// (later arguments win, so `--appendonly yes` there turns AOF on).
fn spawn_server(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new(redis_server_bin())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", dir.to_str().expect("utf-8 tempdir")])
        .args(["--logfile", "redis.log"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}. Install it (apt-get install redis-server) or run .ci/test",
                redis_server_bin()
            )
        })
}

impl RedisServer {
    /// Kills the server and starts it again on the same port, in the same
    /// directory, with the same arguments: without persistence its data is
    /// lost, as after a crash; with `--appendonly yes` it is loaded back.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Starts a killed server again (see [`RedisServer::restart`]) and waits
    /// until it answers, its data loaded.
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = spawn_server(self.port, self.dir.path(), &self.extra);
            if self.wait_ready().is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The value of one series (`name{labels}` exactly as exposed) in a scrape.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// A running `token-sweeper run`, logging JSON to a file; killed on drop.
pub struct DaemonProcess {
    pub child: Child,
    pub metrics_port: u16,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl DaemonProcess {
    /// Starts the daemon against `redis_url` with extra environment (and
    /// optionally `--config FILE`), and waits until /healthz answers.
    pub fn start(redis_url: &str, env: &[(&str, &str)], config: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("daemon.log");
        let metrics_port = free_port();
        let listen = format!("127.0.0.1:{metrics_port}");
        let mut args = vec!["run".to_owned()];
        if let Some(config) = config {
            args.extend(["--config".to_owned(), config.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut all_env = vec![
            ("TOKEN_SWEEPER__REDIS__URL", redis_url),
            ("TOKEN_SWEEPER__METRICS__LISTEN", listen.as_str()),
            ("TOKEN_SWEEPER__LOG__FORMAT", "json"),
        ];
        all_env.extend_from_slice(env);
        let child = sweeper(&args, &all_env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Self {
            child,
            metrics_port,
            log_path,
            _dir: dir,
        };
        wait_until(Duration::from_secs(10), "the daemon's /healthz", || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("daemon exited with {status}: {}", daemon.log_text());
            }
            http_get(metrics_port, "/healthz").is_some_and(|(code, _)| code == 200)
        });
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `HUP`, `USR1`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    pub fn scrape(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.scrape(), series).unwrap_or(f64::NAN)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Log events (JSON lines) in order.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Log events whose message is `message`.
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .into_iter()
            .filter(|e| e["message"] == message)
            .collect()
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "daemon still running after {timeout:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `users` sets with one expired and one live member each, keys
/// `{prefix}{n}-tokens`; returns nothing, the caller knows the counts.
pub fn seed(conn: &mut redis::Connection, prefix: &str, users: usize) {
    let now = redis_now_ms(conn);
    let mut pipe = redis::pipe();
    for user in 0..users {
        let key = format!("{prefix}{user}-tokens");
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(now - 60_000)
            .arg("expired")
            .arg(now + 3_600_000)
            .arg("live")
            .ignore();
    }
    let _: () = pipe.query(conn).unwrap();
}

/// Members left in all `{prefix}*-tokens` sets.
pub fn count_members(conn: &mut redis::Connection, prefix: &str) -> (usize, usize) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*-tokens"))
        .query(conn)
        .unwrap();
    let mut expired = 0;
    let mut live = 0;
    for key in keys {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query(conn)
            .unwrap();
        expired += members.iter().filter(|m| *m == "expired").count();
        live += members.iter().filter(|m| *m == "live").count();
    }
    (expired, live)
}

/// The `ACL SETUSER <user> ...` line of the README, split into arguments
/// (a double-quoted selector stays one argument).
pub fn readme_acl(user: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with(&format!("ACL SETUSER {user} ")))
        .unwrap_or_else(|| panic!("README has no ACL SETUSER {user} line"));
    let mut args = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (arg, tail) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap();
            (&quoted[..end], &quoted[end + 1..])
        } else {
            rest.split_at(rest.find(' ').unwrap_or(rest.len()))
        };
        args.push(arg.to_owned());
        rest = tail.trim_start();
    }
    args
}

/// The user name and rules of the README line for `user`, with `password`,
/// minus `without` permissions.
fn readme_rules(user: &str, password: &str, without: &[&str]) -> Vec<String> {
    let mut rules: Vec<String> = readme_acl(user)
        .into_iter()
        .skip(2)
        .map(|arg| {
            if arg.starts_with('>') {
                format!(">{password}")
            } else {
                arg
            }
        })
        .collect();
    rules.extend(without.iter().map(|permission| format!("-{permission}")));
    rules
}

/// Creates `user` from the README line with `password`, minus `without` permissions.
pub fn create_user(server: &RedisServer, user: &str, password: &str, without: &[&str]) {
    let mut c = server.conn();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(readme_rules(user, password, without));
    let _: () = cmd.query(&mut c).unwrap();
}

/// `redis-server` arguments (`--user ...`) that define `user` from the README
/// line with `password` at start-up, so the user survives a restart (an ACL
/// SETUSER made at run time does not).
pub fn user_args(user: &str, password: &str) -> Vec<String> {
    let mut args = vec!["--user".to_owned()];
    args.extend(readme_rules(user, password, &[]));
    args
}

/// The pid in a daemon's lease holder name (`host:pid:random`), as stored
/// in a lease key and in the cluster registry of daemons.
pub fn holder_pid(holder: &str) -> Option<u32> {
    holder.split(':').nth(1)?.parse().ok()
}

/// The host clock in seconds since the epoch, as the daemons stamp their
/// `*_timestamp_seconds` metrics.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
