//! The index sweep on hostile data: odd scores (infinities, zeros, at the
//! cutoff and the floor and either side), strings and missing keys, a key
//! listed as its own index, entries of other slots or patterns, a full
//! slot, keys cut short; RESP2 and RESP3, several bounds, both throttle
//! modes. Written by a hostile review of the leaner sweep script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{redis_now_ms, settings_for, RedisServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Commands;
use token_sweeper::config::{Settings, ThrottleMode};
use token_sweeper::due_index::{index_key, DEFAULT_PREFIX};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{self, SweepError, SweepMode, SweepProgress, SweepReport};
use tokio_util::sync::CancellationToken;

const FLOOR: f64 = 1_000_000_000_000.0;

async fn index_sweep(settings: &Settings, mode: SweepMode) -> Result<SweepReport, SweepError> {
    let conn = Connection::connect(&settings.redis).await.unwrap();
    sweep::sweep_index(
        &conn,
        &settings.sweep,
        mode,
        &SweepProgress::default(),
        &CancellationToken::new(),
        true,
    )
    .await
}

fn score_arg(score: f64) -> String {
    if score == f64::INFINITY {
        "+inf".to_owned()
    } else if score == f64::NEG_INFINITY {
        "-inf".to_owned()
    } else {
        format!("{score}")
    }
}

fn zadd(conn: &mut redis::Connection, key: &str, member: &str, score: f64) {
    let _: () = redis::cmd("ZADD")
        .arg(key)
        .arg(score_arg(score))
        .arg(member)
        .query(conn)
        .unwrap();
}

fn zset(conn: &mut redis::Connection, key: &str) -> BTreeMap<Vec<u8>, f64> {
    let kind: String = redis::cmd("TYPE").arg(key).query(conn).unwrap();
    if kind != "zset" {
        return BTreeMap::new();
    }
    let pairs: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(conn)
        .unwrap();
    pairs
        .into_iter()
        .map(|(m, s)| {
            let s = match s.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                s => s.parse().unwrap(),
            };
            (m, s)
        })
        .collect()
}

fn digest(conn: &mut redis::Connection) -> String {
    redis::cmd("DEBUG").arg("DIGEST").query(conn).unwrap()
}

/// The data: what it holds, for the checks.
struct World {
    /// User keys of the pattern (zsets), with an entry in their own slot's
    /// index or not.
    user_keys: BTreeSet<String>,
    indexed: BTreeSet<String>,
    /// Every index key written.
    index_keys: BTreeSet<String>,
}

/// Keys `{t<tag>}u<i>-tokens`: the same tag, the same slot. Odd scores
/// (infinities, at and around the milliseconds floor, huge, fractional),
/// keys cut short (more expired members than the bound), full slots (more
/// than 100 due entries), entries naming strings, missing keys, keys of
/// another slot, keys not of the pattern, entries early.
fn seed(conn: &mut redis::Connection, rng: &mut StdRng) -> World {
    let now = redis_now_ms(conn) as f64;
    let expired = |j: f64| now - 60_000.0 - j;
    let live = |j: f64| now + 3_600_000.0 + j;
    let odd = [
        f64::NEG_INFINITY,
        f64::INFINITY,
        0.0,
        -0.0,
        5.0,
        -1e300,
        1e300,
        FLOOR,
        FLOOR - 0.5,
        FLOOR + 0.5,
        now - 60_000.25,
        now + 3_600_000.125,
    ];
    let mut world = World {
        user_keys: BTreeSet::new(),
        indexed: BTreeSet::new(),
        index_keys: BTreeSet::new(),
    };
    // tag -> keys per slot: one slot of 230 (three reads), a few small.
    let mut layout: Vec<(String, usize)> = vec![("big".to_owned(), 230)];
    for t in 0..12 {
        layout.push((format!("s{t}"), rng.random_range(1..=6)));
    }
    for (tag, n) in &layout {
        for i in 0..*n {
            let key = format!("{{t{tag}}}u{i}-tokens");
            let index = index_key(DEFAULT_PREFIX, key.as_bytes());
            world.index_keys.insert(index.clone());
            let roll: f64 = rng.random();
            if roll < 0.05 {
                // A string with an entry: dropped, untouched.
                let _: () = conn.set(&key, "not a set").unwrap();
                zadd(conn, &index, &key, expired(1.0));
                continue;
            }
            if roll < 0.10 {
                // An entry and no key.
                zadd(conn, &index, &key, expired(2.0));
                continue;
            }
            let mut first_expired = None;
            let members = rng.random_range(0..6);
            for m in 0..members {
                let score = match rng.random_range(0..3) {
                    0 => expired(f64::from(m)),
                    1 => live(f64::from(m)),
                    _ => odd[rng.random_range(0..odd.len())],
                };
                zadd(conn, &key, &format!("m{m}"), score);
                if score > FLOOR && score <= now - 60_000.0 {
                    first_expired = Some(first_expired.map_or(score, |f: f64| f.min(score)));
                }
            }
            if i == 0 && tag == "big" {
                // Cut short: 40 expired members above the floor.
                for m in 0..40 {
                    zadd(conn, &key, &format!("x{m}"), expired(f64::from(m) + 0.5));
                }
                first_expired = Some(expired(39.5));
            }
            if members == 0 && !(i == 0 && tag == "big") {
                // Nothing: the key does not exist (an entry, no key).
                zadd(conn, &index, &key, expired(3.0));
                continue;
            }
            world.user_keys.insert(key.clone());
            if rng.random::<f64>() < 0.1 {
                // Not indexed at all: the index sweep must leave it alone.
                continue;
            }
            world.indexed.insert(key.clone());
            // Due: at its first expired member, or early (due, nothing
            // expired).
            let entry = first_expired.unwrap_or_else(|| expired(7.0));
            zadd(conn, &index, &key, entry);
        }
    }
    // Foreign entries: a key of another slot (of the pattern, with an
    // expired member: a full scan would sweep it, the index sweep must
    // not), a name not of the pattern.
    let other = "{tother}victim-tokens";
    zadd(conn, other, "old", expired(0.0));
    zadd(conn, other, "new", live(0.0));
    world.user_keys.insert(other.to_owned());
    let host = index_key(DEFAULT_PREFIX, b"{ts0}u0-tokens");
    zadd(conn, &host, other, expired(4.0));
    zadd(conn, &host, "{ts0}not-of-the-pattern", expired(5.0));
    let _: () = conn
        .zadd("{ts0}not-of-the-pattern", "m", expired(0.0))
        .unwrap();
    world
}

/// The checks after one remove sweep of `report`, against `before`.
fn check(
    conn: &mut redis::Connection,
    world: &World,
    before: &BTreeMap<String, BTreeMap<Vec<u8>, f64>>,
    report: &SweepReport,
    what: &str,
) {
    let cutoff = report.cutoff as f64;
    let floor = report.score_floor.map_or(f64::NEG_INFINITY, |f| f as f64);
    let finished = report.nodes.iter().all(|node| node.finished);
    for key in &world.user_keys {
        let was = &before[key];
        let now = zset(conn, key);
        for (member, score) in &now {
            assert_eq!(
                was.get(member),
                Some(score),
                "{what}: {key} {member:?} added or rescored"
            );
        }
        for (member, score) in was {
            if !now.contains_key(member) {
                assert!(
                    *score > floor && *score <= cutoff,
                    "{what}: {key} lost {member:?} at {score}, not expired \
                     (cutoff {cutoff}, floor {floor}): {report:?}"
                );
                assert!(
                    world.indexed.contains(key),
                    "{what}: {key} has no entry of its slot, yet lost {member:?}"
                );
            }
        }
        if !world.indexed.contains(key) {
            continue;
        }
        let entry: Option<f64> = conn
            .zscore(index_key(DEFAULT_PREFIX, key.as_bytes()), key)
            .unwrap();
        let still_expired = now.values().any(|s| *s > floor && *s <= cutoff);
        let next = now
            .values()
            .copied()
            .filter(|s| *s > cutoff)
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.min(s))));
        if still_expired {
            assert!(
                entry.is_some_and(|e| e <= cutoff),
                "{what}: {key} still holds expired members and its entry \
                 {entry:?} is not due (late)"
            );
            assert!(!finished, "{what}: {key} still expired, node finished");
        } else if let Some(next) = next {
            // Swept, or left due (unfinished): never after its next expiry.
            assert!(
                entry.is_some_and(|e| e <= next),
                "{what}: {key} entry {entry:?} after its next expiry {next} (late)"
            );
            if finished {
                assert_eq!(entry, Some(next), "{what}: {key}");
            }
        } else if finished {
            assert_eq!(entry, None, "{what}: {key} nothing above the cutoff");
        }
    }
    if finished {
        for index in &world.index_keys {
            let due: Vec<(Vec<u8>, f64)> = conn
                .zrangebyscore_withscores(index, "-inf", cutoff)
                .unwrap();
            assert!(
                due.is_empty(),
                "{what}: finished, yet {index} still has due entries {due:?}"
            );
        }
    }
}

/// Random odd data, a full slot, keys cut short, wrong types, foreign
/// entries; RESP2 and RESP3, several bounds and both throttle modes: no
/// member that had not expired goes, no entry is ever late, and a node
/// reported finished left nothing due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_data_never_removes_a_live_member_nor_leaves_an_entry_late() {
    for seed_n in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed_n);
        let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
        let mut conn = server.conn();
        let world = seed(&mut conn, &mut rng);
        let mut settings = settings_for(&server);
        if seed_n % 2 == 1 {
            settings.redis.url = format!("redis://127.0.0.1:{}/?protocol=resp3", server.port)
                .parse()
                .unwrap();
        }
        settings.sweep.due_index.enabled = true;
        // The guard is not under review (and infinities are no evidence).
        settings.sweep.unit_guard = false;
        settings.sweep.max_members_per_command = [0, 1, 3, 10][(seed_n % 4) as usize];
        settings.sweep.throttle = if seed_n % 3 == 0 {
            ThrottleMode::Adaptive
        } else {
            ThrottleMode::Off
        };
        let what = format!(
            "seed {seed_n}, limit {}, {:?}, resp{}",
            settings.sweep.max_members_per_command,
            settings.sweep.throttle,
            if seed_n % 2 == 1 { 3 } else { 2 }
        );
        // A dry run changes nothing.
        let digest_before = digest(&mut conn);
        let dry = index_sweep(&settings, SweepMode::DryRun).await.unwrap();
        assert_eq!(digest(&mut conn), digest_before, "{what}: dry run wrote");
        assert_eq!(dry.counts.errors, 0, "{what}: {dry:?}");
        for round in 0..80 {
            let before: BTreeMap<String, BTreeMap<Vec<u8>, f64>> = world
                .user_keys
                .iter()
                .map(|k| (k.clone(), zset(&mut conn, k)))
                .collect();
            let report = index_sweep(&settings, SweepMode::Remove).await.unwrap();
            assert_eq!(report.counts.errors, 0, "{what}: {report:?}");
            check(
                &mut conn,
                &world,
                &before,
                &report,
                &format!("{what}, round {round}"),
            );
            if report.nodes.iter().all(|n| n.finished) {
                break;
            }
            assert!(round < 79, "{what}: never finished");
        }
        if seed_n % 2 == 1 {
            // The sweeper's connections spoke RESP3 (HELLO 3).
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut conn)
                .unwrap();
            assert!(info.contains("cmdstat_hello:"), "{what}: no HELLO sent");
        }
        // The victim of another slot, named by a foreign entry: untouched.
        assert_eq!(
            zset(&mut conn, "{tother}victim-tokens").len(),
            2,
            "{what}: a key named by another slot's index was swept"
        );
    }
}
