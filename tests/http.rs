//! The HTTP endpoints under abuse: slow clients, oversized request heads and
//! idle connections must not take the daemon's descriptors or memory, nor
//! keep `/healthz` from answering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{count_members, http_get, run_sweeper, seed, wait_until, DaemonProcess, RedisServer};

/// The cap on open HTTP connections (README, "Metrics and health").
const MAX_CONNECTIONS: usize = 64;
/// The header-read and idle timeout (README, "Metrics and health").
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Descriptors the process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `n` clients that send the start of a request and then nothing more.
fn slow_clients(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                .unwrap();
            stream
        })
        .collect()
}

/// True once the server has closed `stream` (EOF or reset), reading and
/// discarding whatever it sent first; false if it is still open at `deadline`.
fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// Lowers the daemon's descriptor limit, as a host's default of 1,024 would
/// be, only low enough for 300 test clients to reach it.
fn limit_descriptors(pid: u32, limit: usize) {
    let ok = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit(1) from util-linux")
        .success();
    assert!(ok, "prlimit failed");
}

#[test]
fn a_slow_client_flood_during_a_redis_restart_takes_neither_descriptors_nor_health() {
    let mut server = RedisServer::start();
    let daemon = DaemonProcess::start(
        &server.url(),
        &[("TOKEN_SWEEPER__SWEEP__INTERVAL", "1s")],
        None,
    );
    let pid = daemon.pid();
    limit_descriptors(pid, 200);
    let port = daemon.metrics_port;
    let baseline = open_fds(pid);

    let mut flood = slow_clients(port, 300);
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        peak <= baseline + MAX_CONNECTIONS + 2,
        "{peak} descriptors open with 300 slow clients (baseline {baseline})"
    );
    // Answered while the slow clients still hold their connections.
    assert_eq!(
        http_get(port, "/healthz").map(|(code, _)| code),
        Some(200),
        "/healthz during the flood"
    );
    let healthcheck = run_sweeper(
        &[
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{port}/healthz"),
        ],
        &[],
    );
    assert_eq!(
        healthcheck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&healthcheck.stderr)
    );

    // Redis restarts while a second wave arrives: reconnecting needs a
    // descriptor of its own.
    server.restart();
    flood.extend(slow_clients(port, 300));
    let mut c = server.conn();
    seed(&mut c, "after", 10);
    wait_until(
        Duration::from_secs(20),
        "a sweep after the reconnect",
        || count_members(&mut c, "after").0 == 0,
    );
    wait_until(Duration::from_secs(10), "/readyz", || {
        http_get(port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert!(
        !daemon.log_text().contains("Too many open files"),
        "{}",
        daemon.log_text()
    );

    // Every slow client is gone once the header timeout has passed.
    let deadline = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(10);
    let mut still_open = 0;
    for stream in &mut flood {
        if !closed_by(stream, deadline) {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "slow clients still connected");
    // Each was closed by the server, and counted by why.
    let scrape = daemon.scrape();
    let closed: f64 = ["evicted", "refused", "timeout"]
        .iter()
        .map(|reason| {
            let series =
                format!("token_sweeper_http_connections_closed_total{{reason=\"{reason}\"}}");
            common::metric(&scrape, &series).unwrap()
        })
        .sum();
    assert!(closed >= 600.0, "{closed} closed: {scrape}");
    assert!(open_fds(pid) <= baseline + 2, "descriptors given back");
}

#[test]
fn a_request_head_over_the_limit_is_refused() {
    let server = RedisServer::start();
    let daemon = DaemonProcess::start(&server.url(), &[], None);
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.metrics_port)).unwrap();
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: big\r\n".to_vec();
    // 12 KiB of headers and no end of them.
    for n in 0..120 {
        head.extend(format!("X-Pad-{n:03}: {}\r\n", "a".repeat(90)).as_bytes());
    }
    stream.write_all(&head).unwrap();
    stream
        .set_read_timeout(Some(HEADER_TIMEOUT + Duration::from_secs(10)))
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "answer to 12 KiB of headers: {response:?}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let server = RedisServer::start();
    let daemon = DaemonProcess::start(&server.url(), &[], None);
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.metrics_port)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "kept alive: {response}"
    );
    let deadline = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(10);
    assert!(
        closed_by(&mut stream, deadline),
        "still open after the idle timeout"
    );
}
