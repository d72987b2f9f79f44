//! Test harness: private `redis-server` processes on free loopback ports, and
//! a way to run the real binary against them.
//!
//! Each test starts its own server, so tests run in parallel and never see
//! each other's data (nor touch the Redis that may run on port 6379).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

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
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let mut command = Command::new(redis_server_bin());
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", dir.path().to_str().expect("utf-8 tempdir")])
                .args(["--logfile", "redis.log"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = command.spawn().unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Install it (apt-get install redis-server) or run .ci/test",
                    redis_server_bin()
                )
            });
            let mut server = Self { child, port, dir };
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

/// Writes `text` to `name` in `dir` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Settings pointing at `server`, with everything else at its default.
pub fn settings_for(server: &RedisServer) -> token_sweeper::config::Settings {
    let mut settings = token_sweeper::config::Settings::default();
    settings.redis.url = server.url();
    settings
}

/// Runs one sweep through the library.
pub async fn sweep_with(
    settings: &token_sweeper::config::Settings,
    mode: token_sweeper::sweep::SweepMode,
) -> Result<token_sweeper::sweep::SweepReport, token_sweeper::sweep::SweepError> {
    let conn = token_sweeper::redis::Connection::connect(&settings.redis)
        .await
        .expect("connect");
    let progress = token_sweeper::sweep::SweepProgress::default();
    token_sweeper::sweep::sweep(
        &conn,
        &settings.sweep,
        mode,
        &progress,
        std::future::pending(),
    )
    .await
}
