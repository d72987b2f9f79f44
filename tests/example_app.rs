//! Drives the example auth service (examples/auth_service) over HTTP against
//! a private redis-server, the way a client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "../examples/auth_service/app.rs"]
mod app;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::{settings_for, wait_until, RedisServer};
use token_sweeper::auth::TokenService;
use token_sweeper::config::{AuthSettings, Secret};

/// One HTTP/1.1 request; returns (status, JSON body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Serves the example's router, built as its main.rs builds it, on a free
/// port; returns the port.
async fn serve_example(server: &RedisServer) -> u16 {
    let mut settings = settings_for(server);
    settings.auth = AuthSettings {
        secret: Some(Secret::new("example-service-secret-32-bytes-long")),
        ..AuthSettings::default()
    };
    let tokens = Arc::new(TokenService::connect(&settings).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = axum::serve(listener, app::router(tokens));
    tokio::spawn(async move { serving.await });
    port
}

/// `POST /login` for `user`; returns (status, body).
fn login(port: u16, user: &str) -> (u16, serde_json::Value) {
    request(
        port,
        "POST",
        "/login",
        None,
        &format!(r#"{{"user":"{user}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_me_sessions_logout_and_logout_all_over_http() {
    let server = RedisServer::start();
    let port = serve_example(&server).await;

    let blocking = tokio::task::spawn_blocking(move || {
        let login = |user: &str| {
            let (status, body) = login(port, user);
            assert_eq!(status, 200, "{body}");
            body["token"].as_str().unwrap().to_owned()
        };
        let laptop = login("ana");
        let phone = login("ana");
        let other = login("ben");

        let (status, me) = request(port, "GET", "/me", Some(&laptop), "");
        assert_eq!((status, me["sub"].as_str()), (200, Some("ana")));
        let (status, _) = request(port, "GET", "/me", None, "");
        assert_eq!(status, 401);
        let (status, body) = request(port, "GET", "/me", Some("not.a.jwt"), "");
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid token"))
        );

        let (_, sessions) = request(port, "GET", "/sessions", Some(&phone), "");
        assert_eq!(sessions.as_array().unwrap().len(), 2);

        let (status, body) = request(port, "POST", "/logout", Some(&laptop), "");
        assert_eq!((status, body["revoked"].as_bool()), (200, Some(true)));
        let (status, body) = request(port, "GET", "/me", Some(&laptop), "");
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("token revoked"))
        );
        let (status, _) = request(port, "GET", "/me", Some(&phone), "");
        assert_eq!(status, 200, "the other device stays logged in");

        let relogin = login("ana");
        let (status, body) = request(port, "POST", "/logout-all", Some(&phone), "");
        assert_eq!((status, body["ended"].as_u64()), (200, Some(2)));
        for token in [&phone, &relogin] {
            let (status, _) = request(port, "GET", "/me", Some(token), "");
            assert_eq!(status, 401);
        }
        let (status, _) = request(port, "GET", "/me", Some(&other), "");
        assert_eq!(status, 200, "another user's session is untouched");
    });
    blocking.await.unwrap();

    // What the service wrote is what the sweeper reads: one set per user,
    // 64-hex members, millisecond scores.
    let mut c = server.conn();
    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg("ben-tokens")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut c)
        .unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].0.len(), 64);
    assert!(members[0].1 > 1.7e12);
}

/// A Redis restart under the running service: logins answer 503 while Redis
/// is gone and 200 again once it is back, without restarting the service
/// (issue 9, defect 5: it used to answer 503 until restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_recovers_from_a_redis_restart_without_being_restarted() {
    let mut server = RedisServer::start();
    let port = serve_example(&server).await;
    let before = tokio::task::spawn_blocking(move || login(port, "ana"))
        .await
        .unwrap();
    assert_eq!(before.0, 200, "{}", before.1);

    server.kill();
    let down = tokio::task::spawn_blocking(move || login(port, "ana"))
        .await
        .unwrap();
    assert_eq!(
        (down.0, down.1["error"].as_str()),
        (503, Some("session store unavailable"))
    );
    server.restart();

    tokio::task::spawn_blocking(move || {
        wait_until(
            Duration::from_secs(15),
            "a login to succeed after the restart",
            || login(port, "ana").0 == 200,
        );
        let (_, body) = login(port, "ben");
        let token = body["token"].as_str().unwrap().to_owned();
        let (status, me) = request(port, "GET", "/me", Some(&token), "");
        assert_eq!((status, me["sub"].as_str()), (200, Some("ben")));
    })
    .await
    .unwrap();
}
