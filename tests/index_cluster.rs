//! Index mode on a Redis Cluster of 3 primaries: logins through
//! `TokenService` write each entry in its set's own slot, the entries
//! spread over every primary, and an index sweep removes exactly the
//! expired members and moves every entry, per primary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::RedisCluster;
use common::redis_now_ms;
use redis::Commands;
use token_sweeper::auth::TokenService;
use token_sweeper::config::{AuthSettings, Secret};
use token_sweeper::due_index::{index_key, DEFAULT_PREFIX};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{self, SweepMode, SweepProgress};
use tokio_util::sync::CancellationToken;

const USERS: usize = 90;

fn keyslot(conn: &mut redis::cluster::ClusterConnection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(conn)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_index_in_the_right_slot_and_an_index_sweep_removes_exactly_the_expired() {
    let mut cluster = RedisCluster::start(3, 0);
    let mut settings = cluster.settings();
    settings.sweep.due_index.enabled = true;
    settings.auth = AuthSettings {
        secret: Some(Secret::new("a-test-secret-that-is-32-bytes-long!!")),
        ..AuthSettings::default()
    };
    let service = TokenService::connect(&settings).await.unwrap();
    let keys: Vec<String> = (0..USERS)
        .map(|u| service.key_for(&format!("u{u}")))
        .collect();
    for user in 0..USERS {
        service
            .issue(
                &format!("u{user}"),
                Some(Duration::from_secs(3600)),
                Default::default(),
            )
            .await
            .unwrap();
    }

    // Each login wrote its entry, at the set's earliest expiry, in the
    // index key of the set's own slot.
    let mut c = cluster.conn();
    for key in &keys {
        let index = index_key(DEFAULT_PREFIX, key.as_bytes());
        assert_eq!(
            keyslot(&mut c, &index),
            keyslot(&mut c, key),
            "{index} {key}"
        );
        let entry: Option<f64> = c.zscore(&index, key).unwrap();
        let first: Vec<(String, f64)> = c.zrange_withscores(key, 0, 0).unwrap();
        assert_eq!(entry, Some(first[0].1), "{key}");
    }
    // The index keys spread over every primary.
    for primary in cluster.primaries() {
        let index_keys = cluster.keys_on(&primary.address, "token-sweeper:due:*");
        assert!(
            !index_keys.is_empty(),
            "no index key on {}",
            primary.address
        );
    }

    // Two thirds get an expired member (as a writer keeping the contract:
    // the member, then the entry lowered); the rest an entry made early,
    // which costs a visit and must remove nothing.
    let now = redis_now_ms(&mut cluster.nodes[0].conn());
    for (n, key) in keys.iter().enumerate() {
        let index = index_key(DEFAULT_PREFIX, key.as_bytes());
        if n % 3 != 0 {
            let _: () = c.zadd(key, "expired", now - 60_000).unwrap();
        }
        let _: () = redis::cmd("ZADD")
            .arg(&index)
            .arg("LT")
            .arg(now - 60_000)
            .arg(key)
            .query(&mut c)
            .unwrap();
    }
    let expired = keys.len() - keys.len().div_ceil(3);

    let conn = Connection::connect(&settings.redis).await.unwrap();
    let report = sweep::sweep_index(
        &conn,
        &settings.sweep,
        SweepMode::Remove,
        &SweepProgress::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(report.unfinished_nodes.is_empty(), "{report:?}");
    assert_eq!(report.counts.members_removed, expired as u64, "{report:?}");
    assert_eq!(report.counts.due_keys, USERS as u64);
    assert_eq!(report.counts.index_entries_moved, USERS as u64);
    assert_eq!(report.counts.index_entries_dropped, 0);
    assert_eq!(report.counts.errors, 0);
    assert_eq!(report.index.as_ref().unwrap().index_size, USERS as u64);
    // Every primary swept its own share of the entries.
    assert_eq!(report.nodes.len(), 3);
    let mut swept_on = BTreeSet::new();
    for node in &report.nodes {
        assert!(node.finished, "{node:?}");
        assert!(node.counts.due_keys > 0, "{node:?}");
        assert!(node.index.as_ref().unwrap().index_size > 0, "{node:?}");
        swept_on.insert(node.node.clone());
    }
    assert_eq!(swept_on.len(), 3);

    // Exactly the expired members went; every entry is at its set's next
    // expiry, the live session's.
    for key in &keys {
        let members: Vec<(String, f64)> = c.zrange_withscores(key, 0, -1).unwrap();
        assert_eq!(members.len(), 1, "{key}: {members:?}");
        assert!(members[0].1 > now as f64, "{key}: {members:?}");
        let entry: Option<f64> = c
            .zscore(index_key(DEFAULT_PREFIX, key.as_bytes()), key)
            .unwrap();
        assert_eq!(entry, Some(members[0].1), "{key}");
    }
    // Nothing is due now: a second sweep finds no key.
    let again = sweep::sweep_index(
        &conn,
        &settings.sweep,
        SweepMode::Remove,
        &SweepProgress::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(again.counts.due_keys, 0, "{again:?}");
    assert_eq!(again.counts.members_removed, 0);
}
