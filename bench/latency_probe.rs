//! The two traffic sources of `bench/latency_bench.py`, in Rust because they
//! must keep a schedule to a few microseconds (the README's "Latency impact"
//! says how Python did at the same job).
//!
//! ```sh
//! cargo build --release --example latency_probe
//! latency_probe probe PORT USERS [INTERVAL_US]   # one ZSCORE every 0.5 ms
//! latency_probe load PORT USERS                  # background ZSCOREs, rate set on stdin
//! ```
//!
//! `probe` is open loop: request k is due at `start + k * interval` and is sent
//! then, whether or not earlier replies have come back (they queue on the same
//! connection, in order). Its latency is measured from when it was DUE, so a
//! sender that falls behind, or a reply stuck behind a busy Redis, counts in
//! full: no coordinated omission. A `mark` line on stdin records the time;
//! end of stdin stops it, and it prints one JSON object: latency percentiles
//! of the requests due between consecutive marks, and the sender's own lag
//! (time sent minus time due: the probe's jitter, not Redis's).
//!
//! `load` sends pipelined `ZSCORE`s for a missing member at a rate read from
//! stdin (`rate N`, commands per second; start at 0), every 0.5 ms as much
//! as is due, and drains the replies on another thread. End of stdin stops it.
//!
//! Both talk only to the loopback port they are given: the bench's private
//! redis-server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The member the probe and the load ask for: a 64-hex digest, like the
/// auth module's, that no set holds (a miss costs Redis the same scan of the
/// set's listpack as a hit).
const MEMBER: &[u8] = b"5f0c6a2b1d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90";

/// Caps the load's commands sent but not yet answered: past it, the load
/// skips (and counts) what is due instead of growing Redis's query buffer
/// without bound when Redis cannot keep up.
const LOAD_MAX_IN_FLIGHT: u64 = 200_000;

/// Distinct commands the load cycles through (random user keys).
const LOAD_RING: usize = 65_536;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: latency_probe probe|load PORT USERS [INTERVAL_US]";
    if args.len() < 4 {
        bail!(usage);
    }
    let port: u16 = args[2].parse().context("PORT")?;
    let users: u64 = args[3].parse().context("USERS")?;
    if users == 0 {
        bail!("USERS must be at least 1");
    }
    // nanosleep wakes up to the thread's timer slack (50 us by default) late;
    // that lateness would be measured as Redis latency. Threads inherit the
    // slack of the thread that creates them, so set it before spawning any.
    // Kept best effort: the lag it leaves is reported either way.
    let _ = std::fs::write("/proc/self/timerslack_ns", "1");
    let stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to redis")?;
    stream.set_nodelay(true)?;
    match args[1].as_str() {
        "probe" => {
            let interval_us: u64 = match args.get(4) {
                Some(s) => s.parse().context("INTERVAL_US")?,
                None => 500,
            };
            probe(stream, users, Duration::from_micros(interval_us.max(1)))
        }
        "load" => load(stream, users),
        _ => bail!(usage),
    }
}

/// A small xorshift: picks user keys without a dependency, the same
/// sequence every run.
struct Keys(u64, u64);

impl Keys {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % self.1
    }

    fn zscore(&mut self, out: &mut Vec<u8>) {
        let key = format!("user{}-tokens", self.next());
        out.extend_from_slice(b"*3\r\n$6\r\nZSCORE\r\n");
        out.extend_from_slice(format!("${}\r\n{key}\r\n", key.len()).as_bytes());
        out.extend_from_slice(format!("${}\r\n", MEMBER.len()).as_bytes());
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads stdin until it ends, recording the time of each `mark` line; the
/// callback sees every other line.
fn read_stdin(marks: &Mutex<Vec<Instant>>, mut other: impl FnMut(&str)) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "mark" {
            if let Ok(mut marks) = marks.lock() {
                marks.push(Instant::now());
            }
        } else {
            other(line.trim());
        }
    }
}

fn probe(stream: TcpStream, users: u64, interval: Duration) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let marks = Arc::new(Mutex::new(Vec::new()));
    // Time for both threads to start before the first request is due.
    let start = Instant::now() + Duration::from_millis(20);
    let due = move |k: u64| start + interval * u32::try_from(k).unwrap_or(u32::MAX);

    let mut writer = stream.try_clone()?;
    let sender_stop = stop.clone();
    let sender = thread::spawn(move || -> std::io::Result<Vec<u32>> {
        let mut keys = Keys(0x9E37_79B9_7F4A_7C15, users);
        let mut lags_us = Vec::new();
        let mut buf = Vec::with_capacity(256);
        let mut k = 0;
        while !sender_stop.load(Ordering::Relaxed) {
            let due = due(k);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            buf.clear();
            keys.zscore(&mut buf);
            writer.write_all(&buf)?;
            lags_us.push(u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX));
            k += 1;
        }
        // A reply no ZSCORE gives: tells the receiver every reply is in.
        writer.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        Ok(lags_us)
    });

    let receiver = thread::spawn(move || -> anyhow::Result<(Vec<Instant>, u64)> {
        let mut reader = BufReader::with_capacity(1 << 16, stream);
        let mut replied = Vec::new();
        let mut errors = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("redis closed the probe's connection");
            }
            let now = Instant::now();
            match line.as_bytes().first() {
                Some(b'+') => break, // +PONG: the sender's last word
                Some(b'$') => {
                    let len: i64 = line[1..].trim().parse().context("bulk length")?;
                    if len >= 0 {
                        let mut skip = vec![0; usize::try_from(len)? + 2];
                        reader.read_exact(&mut skip)?;
                    }
                }
                _ => errors += 1,
            }
            replied.push(now);
        }
        Ok((replied, errors))
    });

    read_stdin(&marks, |_| {});
    stop.store(true, Ordering::Relaxed);
    let lags_us = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let (replied, errors) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    if replied.len() != lags_us.len() {
        bail!(
            "sent {} requests, got {} replies",
            lags_us.len(),
            replied.len()
        );
    }
    let marks = marks.lock().map_err(|_| anyhow::anyhow!("marks"))?.clone();
    let mut bounds = vec![start];
    bounds.extend(marks);
    let last = replied.len() as u64;
    bounds.push(due(last));
    let windows: Vec<serde_json::Value> = bounds
        .windows(2)
        .map(|w| {
            let latencies: Vec<u32> = (0..last)
                .filter(|&k| due(k) >= w[0] && due(k) < w[1])
                .map(|k| {
                    let waited = replied[k as usize].saturating_duration_since(due(k));
                    u32::try_from(waited.as_micros()).unwrap_or(u32::MAX)
                })
                .collect();
            percentiles(latencies)
        })
        .collect();
    let report = serde_json::json!({
        "interval_us": interval.as_micros() as u64,
        "requests": last,
        "errors": errors,
        "timerslack_ns": std::fs::read_to_string("/proc/self/timerslack_ns")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        "send_lag": percentiles(lags_us),
        "windows": windows,
    });
    println!("{report}");
    Ok(())
}

/// Nearest-rank percentiles, in milliseconds.
fn percentiles(mut us: Vec<u32>) -> serde_json::Value {
    us.sort_unstable();
    let at = |q: f64| {
        if us.is_empty() {
            return serde_json::Value::Null;
        }
        let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
        serde_json::json!(f64::from(us[rank - 1]) / 1000.0)
    };
    serde_json::json!({
        "n": us.len(),
        "p50": at(0.5),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": at(1.0),
    })
}

fn load(stream: TcpStream, users: u64) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let rate = Arc::new(AtomicU64::new(0));
    let replies = Arc::new(AtomicU64::new(0));

    let mut reader = stream.try_clone()?;
    let counted = replies.clone();
    // Every reply is one line (`$-1`, or an error), so counting lines counts
    // replies; a closed connection ends the count.
    let receiver = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
            counted.fetch_add(lines as u64, Ordering::Relaxed);
        }
    });

    let (sender_stop, sender_rate, answered) = (stop.clone(), rate.clone(), replies.clone());
    let mut writer = stream;
    let sender = thread::spawn(move || -> std::io::Result<(u64, u64)> {
        // The commands are written once and then sent from this ring, so
        // that the load costs its own process little CPU on a machine whose
        // cores Redis and the sweeper also need.
        let mut keys = Keys(0xD1B5_4A32_D192_ED03, users);
        let mut ring = Vec::with_capacity(LOAD_RING * 100);
        let mut starts = Vec::with_capacity(LOAD_RING + 1);
        for _ in 0..LOAD_RING {
            starts.push(ring.len());
            keys.zscore(&mut ring);
        }
        starts.push(ring.len());
        let tick = Duration::from_micros(500);
        let (mut sent, mut skipped) = (0u64, 0u64);
        // The ring's next command.
        let mut at = 0;
        // Owed commands accrue per tick at the current rate, so a rate change
        // applies from the next tick on; a late tick sends what it owes.
        let mut owed = 0.0f64;
        let mut next = Instant::now();
        while !sender_stop.load(Ordering::Relaxed) {
            next += tick;
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            }
            owed += sender_rate.load(Ordering::Relaxed) as f64 * tick.as_secs_f64();
            let due = owed.floor();
            owed -= due;
            let mut due = due as usize;
            if sent - answered.load(Ordering::Relaxed).min(sent) > LOAD_MAX_IN_FLIGHT {
                skipped += due as u64;
                continue;
            }
            sent += due as u64;
            while due > 0 {
                let end = (at + due).min(LOAD_RING);
                writer.write_all(&ring[starts[at]..starts[end]])?;
                due -= end - at;
                at = end % LOAD_RING;
            }
        }
        writer.shutdown(std::net::Shutdown::Both)?;
        Ok((sent, skipped))
    });

    let marks = Mutex::new(Vec::new());
    read_stdin(&marks, |line| {
        if let Some(n) = line.strip_prefix("rate ") {
            if let Ok(n) = n.trim().parse::<u64>() {
                rate.store(n, Ordering::Relaxed);
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let (sent, skipped) = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let _ = receiver.join();
    println!(
        "{}",
        serde_json::json!({"sent": sent, "skipped": skipped,
                           "replies": replies.load(Ordering::Relaxed)})
    );
    Ok(())
}
