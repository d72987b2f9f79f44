//! What must stay true while faults are injected, and the threads that keep
//! checking it: canary sets written straight into Redis, a checker reading
//! them and the workload's live tokens back every ~200 ms, and a record of
//! every violation with what is needed to debug it.
//!
//! The checker never raises a false alarm from its own timing: it reads the
//! members first and Redis `TIME` after, so a member found missing whose
//! score is above that time was removed while it was still in the future
//! (the sweeper's cutoff is at most Redis' time when it ran, which was
//! before the read). A member found missing is read again on a fresh
//! connection before it is reported: a removed member never comes back, so
//! finding it then means the first read came from a stale server (a
//! demoted primary in a failover), not that it was removed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;

use super::sentinel::MASTER_NAME;
use super::workload::Workload;

/// Every violation seen, with the phase of the run it was seen in.
pub struct Violations {
    started: Instant,
    phase: Mutex<String>,
    list: Mutex<Vec<String>>,
    /// What [`Violations::report_once`] has reported.
    reported: Mutex<std::collections::BTreeSet<String>>,
}

impl Violations {
    /// An empty record; times are relative to now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            phase: Mutex::new("start".to_owned()),
            list: Mutex::new(Vec::new()),
            reported: Mutex::default(),
        })
    }

    /// Names what the run is doing (`fault redis-kill`, `recovering ...`).
    pub fn set_phase(&self, phase: impl Into<String>) {
        let phase = phase.into();
        eprintln!("[{:7.1}s] {phase}", self.started.elapsed().as_secs_f64());
        *self.phase.lock().unwrap() = phase;
    }

    /// What the run is doing.
    pub fn phase(&self) -> String {
        self.phase.lock().unwrap().clone()
    }

    /// Records that `invariant` did not hold, with `detail`.
    pub fn report(&self, invariant: &str, detail: impl std::fmt::Display) {
        let line = format!(
            "[{:.1}s, {}] {invariant}: {detail}",
            self.started.elapsed().as_secs_f64(),
            self.phase()
        );
        eprintln!("VIOLATION {line}");
        self.list.lock().unwrap().push(line);
    }

    /// [`Violations::report`], once per `subject` (a member stays missing
    /// for every later check).
    pub fn report_once(&self, subject: &str, invariant: &str, detail: impl std::fmt::Display) {
        if self.reported.lock().unwrap().insert(subject.to_owned()) {
            self.report(invariant, detail);
        }
    }

    /// How many so far.
    pub fn count(&self) -> usize {
        self.list.lock().unwrap().len()
    }

    /// All of them, in order.
    pub fn list(&self) -> Vec<String> {
        self.list.lock().unwrap().clone()
    }
}

/// Where the test's own (default-user, direct) connections go.
#[derive(Clone, Debug)]
pub enum Target {
    /// One server on this loopback port.
    Server(u16),
    /// The primary that the sentinel on this port names (checked with ROLE).
    Sentinel(u16),
    /// A cluster, through any of these nodes.
    Cluster(Vec<u16>),
}

/// A blocking connection for the harness, reconnected after any error.
pub struct Admin {
    target: Target,
    conn: Option<Box<dyn redis::ConnectionLike>>,
}

/// How long one reply may take: longer than any stall the suite injects.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

fn server_conn(port: u16) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    conn.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    Ok(conn)
}

fn harness_error(what: &'static str, detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, what, detail))
}

impl Admin {
    /// Not connected yet; connects on first use.
    pub fn new(target: Target) -> Self {
        Self { target, conn: None }
    }

    fn connect(&self) -> redis::RedisResult<Box<dyn redis::ConnectionLike>> {
        match &self.target {
            Target::Server(port) => Ok(Box::new(server_conn(*port)?)),
            Target::Sentinel(port) => {
                let (_, primary): (String, u16) = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME)
                    .query(&mut server_conn(*port)?)?;
                let mut conn = server_conn(primary)?;
                let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn)?;
                match role.first() {
                    Some(redis::Value::BulkString(r)) if r == b"master" => Ok(Box::new(conn)),
                    other => Err(harness_error(
                        "not the primary",
                        format!("127.0.0.1:{primary} answers ROLE {other:?}"),
                    )),
                }
            }
            Target::Cluster(ports) => {
                let urls: Vec<String> = ports
                    .iter()
                    .map(|p| format!("redis://127.0.0.1:{p}"))
                    .collect();
                let conn = redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(ADMIN_TIMEOUT)
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()?
                    .get_connection()?;
                Ok(Box::new(conn))
            }
        }
    }

    /// Runs `cmd`; any error drops the connection, so the next call
    /// connects afresh (to the current primary).
    pub fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let result = cmd.query(self.conn.as_mut().expect("connected").as_mut());
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Drops the connection: the next query connects afresh.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// Redis `TIME` in milliseconds.
    pub fn time_ms(&mut self) -> redis::RedisResult<i64> {
        let (secs, micros): (i64, i64) = self.query(&redis::cmd("TIME"))?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// `f` until it succeeds; panics after 30 s (the harness cannot go on).
    pub fn retry<T>(&mut self, mut f: impl FnMut(&mut Self) -> redis::RedisResult<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match f(self) {
                Ok(value) => return value,
                Err(e) if Instant::now() > deadline => {
                    panic!("the harness cannot reach Redis ({:?}): {e}", self.target)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// A member written straight into Redis that must stay until its score passes.
#[derive(Clone, Debug)]
pub struct Canary {
    /// Its set.
    pub key: String,
    /// The member.
    pub member: String,
    /// Its score (ms; may be `+inf`).
    pub score: f64,
}

/// The canary sets: long-lived and `+inf` members seeded at the start, and
/// short-lived "edge" members added all along that expire a moment later,
/// so that a cutoff off by a little shows too.
pub struct Canaries {
    keys: Vec<String>,
    list: Mutex<Vec<Canary>>,
    /// Held while writing; `true` while paused (see [`Canaries::pause`]).
    paused: Mutex<bool>,
    next: AtomicU64,
}

impl Canaries {
    /// Canaries in `keys` (each must match the sweep pattern).
    pub fn new(keys: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            keys,
            list: Mutex::new(Vec::new()),
            paused: Mutex::new(false),
            next: AtomicU64::new(0),
        })
    }

    /// `canary0-tokens` ... for a single primary.
    pub fn default_keys() -> Vec<String> {
        (0..6).map(|n| format!("canary{n}-tokens")).collect()
    }

    /// The canary sets.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Seeds `per_key` members a day in the future and one at `+inf` in each set.
    pub fn seed_long(&self, admin: &mut Admin, per_key: usize) {
        let now = admin.retry(Admin::time_ms);
        let mut seeded = Vec::new();
        for key in &self.keys {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(key).arg("+inf").arg("forever");
            seeded.push(Canary {
                key: key.clone(),
                member: "forever".to_owned(),
                score: f64::INFINITY,
            });
            for i in 0..per_key {
                let score = now + 86_400_000 + i as i64;
                zadd.arg(score).arg(format!("long-{i}"));
                seeded.push(Canary {
                    key: key.clone(),
                    member: format!("long-{i}"),
                    score: score as f64,
                });
            }
            let _: i64 = admin.retry(|a| a.query(&zadd));
        }
        self.list.lock().unwrap().extend(seeded);
    }

    /// Adds one edge member expiring 0.3 to 3 s from now (Redis time);
    /// recorded only once Redis acknowledged it.
    pub fn add_edge(&self, admin: &mut Admin) -> redis::RedisResult<()> {
        let paused = self.paused.lock().unwrap();
        if *paused {
            return Ok(());
        }
        let now = admin.time_ms()?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = &self.keys[n as usize % self.keys.len()];
        let score = now + rand::rng().random_range(300..3000);
        let member = format!("edge-{n}");
        let _: i64 = admin.query(redis::cmd("ZADD").arg(key).arg(score).arg(&member))?;
        drop(paused);
        let mut list = self.list.lock().unwrap();
        // Edges that expired a while ago have been checked enough.
        list.retain(|c| c.score > (now - 10_000) as f64);
        list.push(Canary {
            key: key.clone(),
            member,
            score: score as f64,
        });
        Ok(())
    }

    /// Stops adding edges, once the one being written is acknowledged: no
    /// canary is acknowledged while a failover may lose it.
    pub fn pause(&self) {
        *self.paused.lock().unwrap() = true;
    }

    /// Adds edges again.
    pub fn resume(&self) {
        *self.paused.lock().unwrap() = false;
    }

    /// The canaries that must be present until their score passes.
    pub fn snapshot(&self) -> Vec<Canary> {
        self.list.lock().unwrap().clone()
    }

    /// Seeds one expired member (a minute old) in every canary set; returns
    /// them. Retries until Redis takes them.
    pub fn seed_dead(&self, admin: &mut Admin) -> Vec<(String, String)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let now = admin.retry(Admin::time_ms);
        self.keys
            .iter()
            .map(|key| {
                let member = format!("dead-{n}");
                let _: i64 = admin
                    .retry(|a| a.query(redis::cmd("ZADD").arg(key).arg(now - 60_000).arg(&member)));
                (key.clone(), member)
            })
            .collect()
    }

    /// Which of `dead` are still there; `None` when Redis did not answer.
    pub fn still_there(admin: &mut Admin, dead: &[(String, String)]) -> Option<Vec<String>> {
        let mut left = Vec::new();
        for (key, member) in dead {
            let score: Option<f64> = admin
                .query(redis::cmd("ZSCORE").arg(key).arg(member))
                .ok()?;
            if score.is_some() {
                left.push(format!("{key} {member}"));
            }
        }
        Some(left)
    }
}

/// Counters of the checker.
#[derive(Default)]
pub struct CheckerStats {
    /// Complete rounds.
    pub rounds: AtomicU64,
    /// Members found where they must be.
    pub members_checked: AtomicU64,
    /// Reads that failed (Redis down, stalled...).
    pub failed_reads: AtomicU64,
    /// Members missing on a first read and present on the second.
    pub stale_reads: AtomicU64,
}

impl CheckerStats {
    /// One line.
    pub fn summary(&self) -> String {
        format!(
            "{} checker rounds, {} member checks, {} failed reads, {} stale reads",
            self.rounds.load(Ordering::Relaxed),
            self.members_checked.load(Ordering::Relaxed),
            self.failed_reads.load(Ordering::Relaxed),
            self.stale_reads.load(Ordering::Relaxed)
        )
    }
}

/// The checker and canary-writer threads; stopped by [`Checker::stop`].
pub struct Checker {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// What it did.
    pub stats: Arc<CheckerStats>,
}

/// Whether process `pid` is gone or a zombie (exited, not yet reaped).
pub fn process_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

impl Checker {
    /// Starts checking every ~200 ms and adding an edge canary every ~250 ms.
    pub fn start(
        target: Target,
        workload: Arc<Workload>,
        canaries: Arc<Canaries>,
        violations: Arc<Violations>,
        daemon_pid: u32,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CheckerStats::default());
        let checking = {
            let (stop, stats, target, canaries) = (
                Arc::clone(&stop),
                Arc::clone(&stats),
                target.clone(),
                Arc::clone(&canaries),
            );
            std::thread::spawn(move || {
                let mut admin = Admin::new(target);
                let mut exit_reported = false;
                while !stop.load(Ordering::SeqCst) {
                    if check_round(&mut admin, &workload, &canaries, &violations, &stats).is_err() {
                        stats.failed_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    if !exit_reported && process_exited(daemon_pid) {
                        exit_reported = true;
                        violations.report(
                            "the daemon never exits on its own",
                            format!("process {daemon_pid} is gone"),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let writing = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut admin = Admin::new(target);
                while !stop.load(Ordering::SeqCst) {
                    // Fails while Redis is down or refuses writes: no canary then.
                    let _ = canaries.add_edge(&mut admin);
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        Self {
            stop,
            threads: vec![checking, writing],
            stats,
        }
    }

    /// Stops both threads and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            thread.join().expect("checker thread");
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a checked member is.
#[derive(Clone, Debug)]
enum Source {
    Canary,
    /// A live token of the model, by id, and its user.
    Token(u64, String),
}

/// One round: every canary and every live token of the model must be in
/// Redis with its score, unless that score has passed.
///
/// # Errors
/// When Redis could not be read: `TIME` (nothing is judged then), or some
/// sets (the others are judged).
pub fn check_round(
    admin: &mut Admin,
    workload: &Workload,
    canaries: &Canaries,
    violations: &Violations,
    stats: &CheckerStats,
) -> redis::RedisResult<()> {
    let mut by_key: BTreeMap<String, Vec<(String, f64, Source)>> = BTreeMap::new();
    for canary in canaries.snapshot() {
        by_key
            .entry(canary.key)
            .or_default()
            .push((canary.member, canary.score, Source::Canary));
    }
    for tok in workload.model.live() {
        by_key.entry(tok.key).or_default().push((
            tok.member,
            tok.score as f64,
            Source::Token(tok.id, tok.user),
        ));
    }
    let mut missing = Vec::new();
    // A key that cannot be read now (its cluster primary is down) is
    // skipped; the others are still judged. A removal is permanent, so a
    // later round sees what this one could not.
    let mut unread = None;
    for (key, expected) in &by_key {
        let mut zmscore = redis::cmd("ZMSCORE");
        zmscore.arg(key);
        for (member, _, _) in expected {
            zmscore.arg(member);
        }
        let scores: Vec<Option<f64>> = match admin.query(&zmscore) {
            Ok(scores) => scores,
            Err(e) => {
                unread = Some(e);
                continue;
            }
        };
        for ((member, score, source), found) in expected.iter().zip(scores) {
            match found {
                Some(found) if found == *score => {
                    stats.members_checked.fetch_add(1, Ordering::Relaxed);
                }
                Some(found) => violations.report_once(
                    &format!("{key} {member}"),
                    "scores never change",
                    format!("{key} {member}: expected {score}, found {found} ({source:?})"),
                ),
                None => missing.push((key.clone(), member.clone(), *score, source.clone())),
            }
        }
    }
    // After every read above: any member removed before a read was removed
    // at a Redis time at most this.
    let now = admin.time_ms()?;
    for (key, member, score, source) in missing {
        if score <= now as f64 {
            continue;
        }
        admin.reset();
        let again: Option<f64> = admin.query(redis::cmd("ZSCORE").arg(&key).arg(&member))?;
        if again.is_some() {
            stats.stale_reads.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let what = match &source {
            Source::Canary => "canary".to_owned(),
            Source::Token(id, user) => {
                if !workload.model.still_live(*id) {
                    continue;
                }
                format!("live token of {user}")
            }
        };
        violations.report_once(
            &format!("{key} {member}"),
            "no member whose score is in the future is ever removed",
            format!(
                "{key} {member} ({what}) is gone; its score {score} is {} ms after Redis TIME {now} read after it was found missing",
                score - now as f64
            ),
        );
    }
    match unread {
        Some(e) => Err(e),
        None => {
            stats.rounds.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}
