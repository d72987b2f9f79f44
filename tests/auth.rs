//! The auth path against a private redis-server: what a login, a request and
//! a logout do, and what an attacker's token does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{redis_now_ms, run_sweeper, settings_for, sweep_with, write_file, RedisServer};
use redis::Commands;
use token_sweeper::auth::{AuthError, TokenService};
use token_sweeper::config::{AuthSettings, MemberKind, ScoreUnit, Secret};
use token_sweeper::redis::Connection;
use token_sweeper::sweep::SweepMode;

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn hs256() -> AuthSettings {
    AuthSettings {
        secret: Some(Secret::new(SECRET)),
        ..AuthSettings::default()
    }
}

async fn service(server: &RedisServer, auth: &AuthSettings, unit: ScoreUnit) -> TokenService {
    let conn = Connection::connect(&settings_for(server).redis)
        .await
        .unwrap();
    TokenService::new(conn, auth, unit).unwrap()
}

fn no_claims() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

/// Generates a key pair with openssl; returns (private PEM path, public PEM path).
fn keypair(dir: &Path, kind: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{kind}.key"));
    let public = dir.join(format!("{kind}.pub"));
    let generate: Vec<&str> = match kind {
        "rsa" => vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        "ec" => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        "ed25519" => vec!["genpkey", "-algorithm", "ED25519"],
        other => panic!("{other}"),
    };
    let ok = Command::new("openssl")
        .args(&generate)
        .args(["-out", private.to_str().unwrap()])
        .status()
        .expect("openssl (apt-get install openssl)")
        .success();
    assert!(ok);
    let ok = Command::new("openssl")
        .args(["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out"])
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (private, public)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

#[tokio::test]
async fn an_issued_token_verifies_and_is_stored_per_the_data_contract() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut extra = no_claims();
    extra.insert("role".into(), "admin".into());

    let issued = tokens.issue("42", None, extra).await.unwrap();
    let claims = tokens.verify(&issued.token).await.unwrap();

    assert_eq!(claims.sub, "42");
    assert_eq!(claims.exp - claims.iat, 24 * 3600);
    assert_eq!(claims.jti.len(), 32, "128-bit hex jti");
    assert_eq!(claims.extra["role"], "admin");
    let mut c = server.conn();
    let members: Vec<(String, f64)> = c.zrange_withscores("42-tokens", 0, -1).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        issued.token.as_bytes(),
    ));
    assert_eq!(members, [(digest, (claims.exp * 1000) as f64)]);
    let pexpiretime: i64 = redis::cmd("PEXPIRETIME")
        .arg("42-tokens")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        pexpiretime,
        (claims.exp * 1000) as i64,
        "key expires with its latest token"
    );
}

#[tokio::test]
async fn a_revoked_token_fails_as_revoked() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let issued = tokens.issue("u1", None, no_claims()).await.unwrap();

    assert!(tokens.revoke(&issued.token).await.unwrap(), "was active");
    assert!(
        !tokens.revoke(&issued.token).await.unwrap(),
        "no longer active"
    );
    assert!(matches!(
        tokens.verify(&issued.token).await,
        Err(AuthError::Revoked)
    ));
}

#[tokio::test]
async fn an_expired_token_fails_as_expired_even_while_still_in_the_set() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let issued = tokens
        .issue("u1", Some(Duration::from_secs(1)), no_claims())
        .await
        .unwrap();
    // A second, long-lived session keeps the set (and its TTL) alive.
    tokens.issue("u1", None, no_claims()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mut c = server.conn();
    let still_there: i64 = c.zcard("u1-tokens").unwrap();
    assert_eq!(still_there, 2, "nothing swept it yet");
    assert!(matches!(
        tokens.verify(&issued.token).await,
        Err(AuthError::Expired)
    ));
    assert!(
        tokens.revoke(&issued.token).await.unwrap(),
        "an expired token can be revoked"
    );
}

#[tokio::test]
async fn tampering_wrong_keys_alg_none_and_algorithm_confusion_are_invalid() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let issued = tokens.issue("alice", None, no_claims()).await.unwrap();
    let parts: Vec<&str> = issued.token.split('.').collect();

    // Payload changed to another user, signature kept.
    let forged_payload = b64(serde_json::to_string(&serde_json::json!({
        "sub": "bob", "iat": issued.claims.iat, "exp": issued.claims.exp, "jti": issued.claims.jti
    }))
    .unwrap()
    .as_bytes());
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    // Signed with another secret.
    let other = TokenService::new(
        Connection::connect(&settings_for(&server).redis)
            .await
            .unwrap(),
        &AuthSettings {
            secret: Some(Secret::new("another-secret-that-is-32-bytes-long!")),
            ..AuthSettings::default()
        },
        ScoreUnit::Milliseconds,
    )
    .unwrap();
    let wrong_key = other.issue("alice", None, no_claims()).await.unwrap().token;
    // alg "none", no signature.
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);

    for (what, token) in [
        ("tampered", &tampered),
        ("wrong key", &wrong_key),
        ("alg none", &none),
    ] {
        let result = tokens.verify(token).await;
        assert!(
            matches!(result, Err(AuthError::Invalid(_))),
            "{what}: {result:?}"
        );
        assert!(
            matches!(tokens.revoke(token).await, Err(AuthError::Invalid(_))),
            "{what}"
        );
    }

    // An RS256 service, and an HS256 token whose HMAC key is the RSA public
    // key (the classic confusion attack).
    let (private, public) = keypair(dir.path(), "rsa");
    let rs256 = AuthSettings {
        algorithm: "RS256".into(),
        private_key_file: Some(private),
        public_key_file: Some(public.clone()),
        ..AuthSettings::default()
    };
    let rsa_tokens = service(&server, &rs256, ScoreUnit::Milliseconds).await;
    let genuine = rsa_tokens.issue("alice", None, no_claims()).await.unwrap();
    assert!(rsa_tokens.verify(&genuine.token).await.is_ok());
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = genuine.token.split('.').nth(1).unwrap();
    let signing_input = format!("{header}.{payload}");
    let signature = hmac_sha256(&std::fs::read(&public).unwrap(), signing_input.as_bytes());
    let confused = format!("{signing_input}.{}", b64(&signature));
    let result = rsa_tokens.verify(&confused).await;
    assert!(matches!(result, Err(AuthError::Invalid(_))), "{result:?}");
    // And the genuine HS256 token of the HMAC service means nothing here.
    assert!(matches!(
        rsa_tokens.verify(&issued.token).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_token_of_user_a_cannot_revoke_user_bs_session() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let a = tokens.issue("a", None, no_claims()).await.unwrap();
    let b = tokens.issue("b", None, no_claims()).await.unwrap();

    assert!(tokens.revoke(&a.token).await.unwrap());
    assert!(
        tokens.verify(&b.token).await.is_ok(),
        "b's session survives a's logout"
    );
    // A token claiming to be b but not signed by us changes nothing.
    let parts: Vec<&str> = a.token.split('.').collect();
    let as_b = b64(serde_json::to_string(&serde_json::json!({
        "sub": "b", "iat": a.claims.iat, "exp": a.claims.exp, "jti": b.claims.jti
    }))
    .unwrap()
    .as_bytes());
    let forged = format!("{}.{as_b}.{}", parts[0], parts[2]);
    assert!(matches!(
        tokens.revoke(&forged).await,
        Err(AuthError::Invalid(_))
    ));
    assert!(tokens.verify(&b.token).await.is_ok());
}

#[tokio::test]
async fn max_sessions_keeps_exactly_the_newest_n() {
    let server = RedisServer::start();
    let auth = AuthSettings {
        max_sessions: 3,
        ..hs256()
    };
    let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
    let mut issued = Vec::new();
    for i in 0..5 {
        // Later logins expire later, as they do with one fixed ttl over time.
        let ttl = Duration::from_secs(3600 + i * 10);
        issued.push(tokens.issue("u", Some(ttl), no_claims()).await.unwrap());
    }

    assert_eq!(issued[3].sessions_dropped, 1);
    for (i, token) in issued.iter().enumerate() {
        let result = tokens.verify(&token.token).await;
        if i < 2 {
            assert!(
                matches!(result, Err(AuthError::Revoked)),
                "session {i}: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "session {i}: {result:?}");
        }
    }
    assert_eq!(tokens.list("u").await.unwrap().len(), 3);
}

#[tokio::test]
async fn the_key_ttl_never_shrinks() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut c = server.conn();
    let long = tokens
        .issue("u", Some(Duration::from_secs(7200)), no_claims())
        .await
        .unwrap();
    tokens
        .issue("u", Some(Duration::from_secs(60)), no_claims())
        .await
        .unwrap();
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("u-tokens")
        .query(&mut c)
        .unwrap();
    assert_eq!(at, (long.claims.exp * 1000) as i64);

    let longer = tokens
        .issue("u", Some(Duration::from_secs(9000)), no_claims())
        .await
        .unwrap();
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("u-tokens")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        at,
        (longer.claims.exp * 1000) as i64,
        "and grows with a later token"
    );

    // A set someone made persistent on purpose stays persistent.
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("p-tokens", "legacy", now + 3_600_000).unwrap();
    tokens.issue("p", None, no_claims()).await.unwrap();
    let ttl: i64 = c.pttl("p-tokens").unwrap();
    assert_eq!(ttl, -1);
}

#[tokio::test]
async fn revoke_all_ends_every_session_and_list_shows_the_active_ones() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut c = server.conn();
    let issued: Vec<_> =
        futures_util::future::try_join_all((0..3).map(|_| tokens.issue("u", None, no_claims())))
            .await
            .unwrap();
    // An expired leftover is not an active session.
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "stale", now - 1000).unwrap();
    let other = tokens.issue("v", None, no_claims()).await.unwrap();

    let sessions = tokens.list("u").await.unwrap();
    assert_eq!(sessions.len(), 3);
    assert!(sessions
        .iter()
        .all(|s| s.expires_at > 1.7e9 && s.id.len() == 64));

    assert_eq!(tokens.revoke_all("u").await.unwrap(), 3);
    for token in &issued {
        assert!(matches!(
            tokens.verify(&token.token).await,
            Err(AuthError::Revoked)
        ));
    }
    assert!(tokens.list("u").await.unwrap().is_empty());
    assert!(
        tokens.verify(&other.token).await.is_ok(),
        "other users untouched"
    );
}

#[tokio::test]
async fn the_sweeper_and_the_module_agree_on_the_unit() {
    for unit in [ScoreUnit::Milliseconds, ScoreUnit::Seconds] {
        let server = RedisServer::start();
        let tokens = service(&server, &hs256(), unit).await;
        let short = tokens
            .issue("u", Some(Duration::from_secs(1)), no_claims())
            .await
            .unwrap();
        let live = tokens.issue("u", None, no_claims()).await.unwrap();
        let mut settings = settings_for(&server);
        settings.sweep.score_unit = unit;

        let before = sweep_with(&settings, SweepMode::Remove).await.unwrap();
        assert_eq!(
            before.counts.members_removed, 0,
            "{unit}: nothing expired yet"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let after = sweep_with(&settings, SweepMode::Remove).await.unwrap();

        assert_eq!(
            after.counts.members_removed, 1,
            "{unit}: the 1s token is swept"
        );
        assert!(matches!(
            tokens.verify(&short.token).await,
            Err(AuthError::Expired)
        ));
        assert!(
            tokens.verify(&live.token).await.is_ok(),
            "{unit}: the live one never"
        );
    }
}

#[tokio::test]
async fn issuer_and_audience_are_written_and_required() {
    let server = RedisServer::start();
    let auth = AuthSettings {
        issuer: Some("https://auth.example".into()),
        audience: Some("api".into()),
        ..hs256()
    };
    let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
    let issued = tokens.issue("u", None, no_claims()).await.unwrap();
    assert_eq!(
        tokens.verify(&issued.token).await.unwrap().aud.as_deref(),
        Some("api")
    );

    let other_audience = service(
        &server,
        &AuthSettings {
            audience: Some("billing".into()),
            ..auth.clone()
        },
        ScoreUnit::Milliseconds,
    )
    .await;
    assert!(matches!(
        other_audience.verify(&issued.token).await,
        Err(AuthError::Invalid(_))
    ));
    let plain = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let no_iss = plain.issue("u", None, no_claims()).await.unwrap();
    assert!(matches!(
        tokens.verify(&no_iss.token).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn ec_and_eddsa_keys_and_jti_members_work() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    for (kind, algorithm) in [("ec", "ES256"), ("ed25519", "EdDSA")] {
        let (private, public) = keypair(dir.path(), kind);
        let auth = AuthSettings {
            algorithm: algorithm.into(),
            member: MemberKind::Jti,
            private_key_file: Some(private),
            public_key_file: Some(public.clone()),
            ..AuthSettings::default()
        };
        let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
        let issued = tokens.issue(kind, None, no_claims()).await.unwrap();
        assert!(tokens.verify(&issued.token).await.is_ok(), "{algorithm}");
        assert_eq!(tokens.list(kind).await.unwrap()[0].id, issued.claims.jti);

        // Verify-only: a public key alone cannot issue.
        let verifier = service(
            &server,
            &AuthSettings {
                private_key_file: None,
                ..auth
            },
            ScoreUnit::Milliseconds,
        )
        .await;
        assert!(verifier.verify(&issued.token).await.is_ok());
        let err = verifier.issue(kind, None, no_claims()).await.unwrap_err();
        assert!(
            err.to_string().starts_with("auth.private_key_file:"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn bad_key_material_and_reserved_claims_are_refused_by_name() {
    let server = RedisServer::start();
    let conn = || async {
        Connection::connect(&settings_for(&server).redis)
            .await
            .unwrap()
    };
    let short = AuthSettings {
        secret: Some(Secret::new("short")),
        ..AuthSettings::default()
    };
    let err = TokenService::new(conn().await, &short, ScoreUnit::Milliseconds)
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "auth.secret: must be at least 32 bytes, got 5"
    );
    let none = TokenService::new(
        conn().await,
        &AuthSettings::default(),
        ScoreUnit::Milliseconds,
    )
    .err()
    .unwrap();
    assert!(
        none.to_string()
            .starts_with("auth.secret: HS256 needs a secret"),
        "{none}"
    );
    let rsa_without_key = AuthSettings {
        algorithm: "RS256".into(),
        ..AuthSettings::default()
    };
    let err = TokenService::new(conn().await, &rsa_without_key, ScoreUnit::Milliseconds)
        .err()
        .unwrap();
    assert!(
        err.to_string().starts_with("auth.public_key_file:"),
        "{err}"
    );

    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut extra = no_claims();
    extra.insert("sub".into(), "someone-else".into());
    assert!(matches!(
        tokens.issue("u", None, extra).await,
        Err(AuthError::ReservedClaim(c)) if c == "sub"
    ));
}

#[test]
fn tokens_cli_issue_verify_list_revoke() {
    let server = RedisServer::start();
    let url = server.url();
    let env = [
        ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
        ("TOKEN_SWEEPER__AUTH__SECRET", SECRET),
    ];
    let issue = run_sweeper(
        &[
            "tokens", "issue", "--user", "cli-user", "--ttl", "2h", "--claim", "role=ops",
        ],
        &env,
    );
    assert_eq!(
        issue.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let token = String::from_utf8(issue.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3);

    // The token comes on stdin, out of `ps` and shell history.
    let verify = |token: &str| {
        use std::io::Write;
        let mut child = common::sweeper(&["tokens", "verify"], &env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = verify(&token);
    assert_eq!(ok.status.code(), Some(0));
    let claims: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(claims["sub"], "cli-user");
    assert_eq!(claims["role"], "ops");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        7200
    );

    let list = run_sweeper(&["tokens", "list", "--user", "cli-user", "--json"], &env);
    let sessions: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 1);

    let revoke = run_sweeper(&["tokens", "revoke", &token], &env);
    assert_eq!(String::from_utf8_lossy(&revoke.stdout).trim(), "revoked");
    let revoked = verify(&token);
    assert_eq!(revoked.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&revoked.stderr).trim(),
        "token-sweeper: token revoked"
    );

    run_sweeper(&["tokens", "issue", "--user", "cli-user"], &env);
    let all = run_sweeper(&["tokens", "revoke-all", "--user", "cli-user"], &env);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout).trim(),
        "ended 1 active sessions of cli-user"
    );

    let printed = run_sweeper(&["check-config"], &env);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        !text.contains(SECRET) && text.contains("secret = \"<redacted>\""),
        "{text}"
    );

    let no_secret = run_sweeper(&["tokens", "list", "--user", "x"], &env[..1]);
    assert_eq!(no_secret.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let secret_file = write_file(dir.path(), "secret", &format!("{SECRET}\n"));
    let from_file = run_sweeper(
        &["tokens", "issue", "--user", "f"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
            (
                "TOKEN_SWEEPER__AUTH__SECRET_FILE",
                secret_file.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(
        from_file.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
}
