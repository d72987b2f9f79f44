//! A primary that refuses this client's password when its node connection
//! opens (WRONGPASS in the handshake) refuses the full scan, the index
//! sweep and the rebuild alike, as a permission-check refusal of kind
//! `auth`: this client's own inability, which another daemon may not share,
//! so this one must not stay counted in the shares. Over RESP2 redis-rs
//! reports it without an error code (`AuthenticationFailed`); it was
//! counted `response` and the primary only skipped, until a review found
//! it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::RedisCluster;
use common::redis_now_ms;
use redis::Commands;
use token_sweeper::config::Secret;
use token_sweeper::store::Connection;
use token_sweeper::sweep::{
    self, rebuild_index, Check, RebuildOptions, SweepError, SweepMode, SweepProgress,
};
use tokio_util::sync::CancellationToken;

fn auth_refusal(what: &str, result: Result<impl std::fmt::Debug, SweepError>) -> Option<String> {
    match result {
        Err(SweepError::SafetyCheck {
            check: Check::Permission,
            refusal: Some("auth"),
            ..
        }) => None,
        Err(e) => Some(format!("{what}: {e:?} (kind {})", e.kind())),
        Ok(report) => Some(format!("{what}: Ok({report:?})")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_refused_at_a_nodes_connect_refuses_all_three_alike_resp2() {
    refused_alike(false).await;
}

/// The same over RESP3 (HELLO carries the password, WRONGPASS keeps its
/// code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_refused_at_a_nodes_connect_refuses_all_three_alike_resp3() {
    refused_alike(true).await;
}

async fn refused_alike(resp3: bool) {
    let cluster = RedisCluster::start(3, 0);
    let mut c = cluster.conn();
    let now = redis_now_ms(&mut cluster.nodes[0].conn());
    for n in 0..300 {
        let _: () = c
            .zadd(format!("p{n}-tokens"), "live", now + 3_600_000)
            .unwrap();
        let _: () = c
            .zadd(format!("p{n}-tokens"), "dead", now - 3_600_000)
            .unwrap();
    }
    drop(c);
    let primaries = cluster.primaries();
    for node in &cluster.nodes {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("pw")
            .query(&mut node.conn())
            .unwrap();
    }
    let mut settings = cluster.settings();
    settings.redis.password = Some(Secret::new("pw"));
    if resp3 {
        let url = format!("{}/?protocol=resp3", cluster.nodes[0].url());
        settings.redis.url = url.parse().unwrap();
        settings.redis.nodes = cluster
            .nodes
            .iter()
            .map(|n| format!("{}/?protocol=resp3", n.url()).parse().unwrap())
            .collect();
    }
    settings.sweep.due_index.enabled = true;
    let conn = Connection::connect(&settings.redis).await.unwrap();
    // One primary changes its password: the open links stay, a new one fails.
    let target = &primaries[1].address;
    let client = redis::Client::open(format!("redis://:pw@{target}")).unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("other")
        .query(&mut client.get_connection().unwrap())
        .unwrap();

    let stop = CancellationToken::new();
    let progress = SweepProgress::default();
    let mut wrong = Vec::new();
    wrong.extend(auth_refusal(
        "full scan",
        sweep::sweep(&conn, &settings.sweep, SweepMode::Remove, &progress, &stop).await,
    ));
    let progress = SweepProgress::default();
    wrong.extend(auth_refusal(
        "index sweep",
        sweep::sweep_index(
            &conn,
            &settings.sweep,
            SweepMode::Remove,
            &progress,
            &stop,
            true,
        )
        .await,
    ));
    wrong.extend(auth_refusal(
        "rebuild",
        rebuild_index(&conn, &settings.sweep, &RebuildOptions::default(), &stop).await,
    ));
    assert!(
        wrong.is_empty(),
        "resp3={resp3}: not refused as auth:\n{}",
        wrong.join("\n")
    );
}
