//! Verify benchmark: verifications per second and p99 latency of
//! `TokenService::verify` with 1, 8 and 64 concurrent callers against a
//! private redis-server, next to the plain signature check without Redis.
//!
//! ```sh
//! cargo run --release --example verify_bench [-- SECONDS_PER_RUN]
//! ```
//!
//! Also counts Redis commands per verification (INFO stats), which must be 2:
//! `ZSCORE` and `TIME`, pipelined in one round trip.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use token_sweeper::auth::TokenService;
use token_sweeper::config::{AuthSettings, RedisSettings, Secret, Settings};
use token_sweeper::store::Connection;

const USERS: usize = 1_000;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile_dir()?;
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", &dir])
        .stdout(Stdio::null())
        .spawn()?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(port, seconds));
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("verify-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir.display().to_string())
}

async fn run(port: u16, seconds: u64) -> anyhow::Result<()> {
    let redis_settings = RedisSettings {
        url: format!("redis://127.0.0.1:{port}")
            .parse()
            .map_err(anyhow::Error::msg)?,
        ..RedisSettings::default()
    };
    let conn = loop {
        match Connection::connect(&redis_settings).await {
            Ok(conn) => break conn,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let settings = Settings {
        redis: redis_settings,
        auth: AuthSettings {
            secret: Some(Secret::new("benchmark-secret-of-32-bytes-or-more")),
            ..AuthSettings::default()
        },
        ..Settings::default()
    };
    let service = Arc::new(TokenService::connect(&settings).await?);
    let mut tokens = Vec::with_capacity(USERS);
    for user in 0..USERS {
        tokens.push(
            service
                .issue(&format!("user{user}"), None, serde_json::Map::new())
                .await?
                .token,
        );
    }
    let tokens = Arc::new(tokens);

    println!(
        "{USERS} users, HS256, {seconds}s per run, {} cores, redis-server on loopback",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| check | callers | verifications/s | p50 us | p99 us | Redis commands per verification |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for with_redis in [false, true] {
        for callers in [1, 8, 64] {
            let commands_before = total_commands(&conn).await?;
            let (count, mut latencies) = measure(
                Arc::clone(&service),
                Arc::clone(&tokens),
                callers,
                seconds,
                with_redis,
            )
            .await;
            let commands = total_commands(&conn).await? - commands_before - 1;
            latencies.sort_unstable();
            let pct = |p: f64| {
                latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
            };
            println!(
                "| {} | {callers} | {:.0} | {:.1} | {:.1} | {:.2} |",
                if with_redis {
                    "verify (signature + Redis)"
                } else {
                    "signature only"
                },
                count as f64 / seconds as f64,
                pct(0.50).as_secs_f64() * 1e6,
                pct(0.99).as_secs_f64() * 1e6,
                commands as f64 / count as f64,
            );
        }
    }
    Ok(())
}

/// `callers` tasks verify tokens round-robin for `seconds`; returns the count
/// and every latency.
async fn measure(
    service: Arc<TokenService>,
    tokens: Arc<Vec<String>>,
    callers: usize,
    seconds: u64,
    with_redis: bool,
) -> (u64, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let service = Arc::clone(&service);
            let tokens = Arc::clone(&tokens);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = caller;
                while Instant::now() < deadline {
                    let token = &tokens[i % tokens.len()];
                    let started = Instant::now();
                    let ok = if with_redis {
                        service.verify(token).await.is_ok()
                    } else {
                        service.check_signature(token).is_ok()
                    };
                    latencies.push(started.elapsed());
                    assert!(ok, "a valid token failed to verify");
                    i += callers;
                    if !with_redis && i % 64 == 0 {
                        // Let the other callers run: the signature check never awaits.
                        tokio::task::yield_now().await;
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        if let Ok(latencies) = task.await {
            all.extend(latencies);
        }
    }
    (all.len() as u64, all)
}

async fn total_commands(conn: &Connection) -> anyhow::Result<u64> {
    let mut conn = conn.clone();
    let info: String = conn.query("INFO", redis::cmd("INFO").arg("stats")).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no total_commands_processed in INFO stats"))
}
