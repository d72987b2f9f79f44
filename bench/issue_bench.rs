//! Login cost of the due index: `TokenService::issue` throughput with the
//! index off and on, against a Redis the caller started (bench/index_bench.py
//! runs it against its private redis-server).
//!
//! ```sh
//! cargo run --release --example issue_bench -- redis://127.0.0.1:PORT [SECONDS] [CALLERS]
//! ```
//!
//! Prints one JSON object per mode: `{"index": bool, "issues_per_second": f64,
//! "p50_us": f64, "p99_us": f64}`. Users are spread over 100,000 keys (with
//! a one-hour TTL), each mode on keys of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use token_sweeper::auth::TokenService;
use token_sweeper::config::{AuthSettings, Secret, Settings};

const USERS: u64 = 100_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: issue_bench REDIS_URL [SECONDS] [CALLERS]"))?;
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let callers: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&url, seconds, callers))
}

async fn run(url: &str, seconds: u64, callers: u64) -> anyhow::Result<()> {
    for index in [false, true] {
        let mut settings = Settings::default();
        settings.redis.url = url.parse().map_err(anyhow::Error::msg)?;
        settings.auth = AuthSettings {
            secret: Some(Secret::new("benchmark-secret-of-32-bytes-or-more")),
            ttl: Duration::from_secs(3600),
            ..AuthSettings::default()
        };
        settings.sweep.due_index.enabled = index;
        let service = Arc::new(TokenService::connect(&settings).await?);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let service = Arc::clone(&service);
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut n = caller;
                    while Instant::now() < deadline {
                        let user = format!("{}{}", if index { "on" } else { "off" }, n % USERS);
                        let started = Instant::now();
                        service.issue(&user, None, serde_json::Map::new()).await?;
                        latencies.push(started.elapsed());
                        n += callers;
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        println!(
            "{}",
            serde_json::json!({
                "index": index,
                "callers": callers,
                "issues_per_second": latencies.len() as f64 / seconds as f64,
                "p50_us": pct(0.50),
                "p99_us": pct(0.99),
            })
        );
    }
    Ok(())
}
