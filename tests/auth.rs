//! The auth path against a private redis-server: what a login, a request and
//! a logout do, and what an attacker's token does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{redis_now_ms, run_sweeper, settings_for, sweep_with, write_file, RedisServer};
use redis::Commands;
use token_sweeper::auth::{AuthError, Expiry, TokenService};
use token_sweeper::config::{AuthSettings, MemberKind, ScoreUnit, Secret, Settings};
use token_sweeper::store::Reconnecting;
use token_sweeper::sweep::SweepMode;

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn hs256() -> AuthSettings {
    AuthSettings {
        secret: Some(Secret::new(SECRET)),
        ..AuthSettings::default()
    }
}

/// Settings for `server` with these auth settings and score unit.
fn auth_settings_for(server: &RedisServer, auth: &AuthSettings, unit: ScoreUnit) -> Settings {
    let mut settings = settings_for(server);
    settings.auth = auth.clone();
    settings.sweep.score_unit = unit;
    settings
}

async fn service(server: &RedisServer, auth: &AuthSettings, unit: ScoreUnit) -> TokenService {
    TokenService::connect(&auth_settings_for(server, auth, unit))
        .await
        .unwrap()
}

/// Why `TokenService::connect` refuses these auth settings.
async fn refused(server: &RedisServer, auth: &AuthSettings) -> AuthError {
    let settings = auth_settings_for(server, auth, ScoreUnit::Milliseconds);
    match TokenService::connect(&settings).await {
        Ok(_) => panic!("accepted {auth:?}"),
        Err(e) => e,
    }
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
        "ec384" => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
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
    let other = service(
        &server,
        &AuthSettings {
            secret: Some(Secret::new("another-secret-that-is-32-bytes-long!")),
            ..AuthSettings::default()
        },
        ScoreUnit::Milliseconds,
    )
    .await;
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
        algorithm: "RS256".parse().unwrap(),
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
        .all(|s| matches!(s.expires_at, Expiry::At(at) if at > 1.7e9) && s.id().len() == 64));

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
            algorithm: algorithm.parse().unwrap(),
            member: MemberKind::Jti,
            private_key_file: Some(private),
            public_key_file: Some(public.clone()),
            ..AuthSettings::default()
        };
        let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
        let issued = tokens.issue(kind, None, no_claims()).await.unwrap();
        assert!(tokens.verify(&issued.token).await.is_ok(), "{algorithm}");
        assert_eq!(tokens.list(kind).await.unwrap()[0].id(), issued.claims.jti);

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
    let short = AuthSettings {
        secret: Some(Secret::new("short")),
        ..AuthSettings::default()
    };
    let err = refused(&server, &short).await;
    assert_eq!(
        err.to_string(),
        "auth.secret: HS256 needs at least 32 bytes (RFC 7518 section 3.2), got 5"
    );
    let none = refused(&server, &AuthSettings::default()).await;
    assert!(
        none.to_string()
            .starts_with("auth.secret: HS256 needs a secret"),
        "{none}"
    );
    let rsa_without_key = AuthSettings {
        algorithm: "RS256".parse().unwrap(),
        ..AuthSettings::default()
    };
    let err = refused(&server, &rsa_without_key).await;
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

// ---- issue 9, defect 2: one clock -------------------------------------------

/// A login from a host whose clock runs 10 minutes ahead (the real binary
/// under libfaketime) must not remove the user's 5-minute session issued a
/// moment earlier on a correct host, and its own token is stamped with
/// Redis time, so correct hosts accept it.
#[tokio::test]
async fn a_login_from_a_host_whose_clock_runs_ahead_keeps_the_other_sessions() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let short = tokens
        .issue("u", Some(Duration::from_secs(300)), no_claims())
        .await
        .unwrap();

    let url = server.url();
    let lib = common::libfaketime();
    let out = run_sweeper(
        &["tokens", "issue", "--user", "u", "--ttl", "1h", "--json"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
            ("TOKEN_SWEEPER__AUTH__SECRET", SECRET),
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", "+10m"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let skewed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let result = tokens.verify(&short.token).await;
    assert!(result.is_ok(), "the 5-minute session survives: {result:?}");
    let redis_now = redis_now_ms(&mut server.conn()) / 1000;
    let iat = skewed["claims"]["iat"].as_i64().unwrap();
    assert!(
        (redis_now - 5..=redis_now).contains(&iat),
        "iat {iat} is Redis time ({redis_now}), not the host's"
    );
    let token = skewed["token"].as_str().unwrap();
    assert!(tokens.verify(token).await.is_ok());
    assert_eq!(tokens.list("u").await.unwrap().len(), 2);
}

// ---- issue 9, defect 3: max_sessions ----------------------------------------

/// Two logins in the same second with max_sessions = 1: the new one always
/// stays, the older one goes. (It used to be a coin toss on the members'
/// order: the new token came back "revoked" in about half the ties.)
#[tokio::test]
async fn max_sessions_never_drops_the_session_just_issued_on_a_tie() {
    let server = RedisServer::start();
    let auth = AuthSettings {
        max_sessions: 1,
        ..hs256()
    };
    let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
    let mut ties = 0;
    for round in 0..16 {
        let user = format!("tie{round}");
        let older = tokens.issue(&user, None, no_claims()).await.unwrap();
        let newer = tokens.issue(&user, None, no_claims()).await.unwrap();
        if older.claims.exp == newer.claims.exp {
            ties += 1;
        }
        assert_eq!(newer.sessions_dropped, 1, "round {round}");
        let result = tokens.verify(&newer.token).await;
        assert!(result.is_ok(), "round {round}: the new login: {result:?}");
        assert!(
            matches!(tokens.verify(&older.token).await, Err(AuthError::Revoked)),
            "round {round}: the older login"
        );
    }
    assert!(
        ties >= 8,
        "only {ties} of 16 rounds tied: the test proved little"
    );
}

/// max_sessions = 2, two 24 h logins, then a 1 h one: the 1 h session is the
/// one just issued and stays; the older 24 h one goes (it used to drop the
/// new session, whose expiry was the lowest).
#[tokio::test]
async fn max_sessions_drops_the_oldest_other_session_not_a_shorter_new_one() {
    let server = RedisServer::start();
    let auth = AuthSettings {
        max_sessions: 2,
        ..hs256()
    };
    let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
    let day = Duration::from_secs(24 * 3600);
    let first = tokens.issue("u", Some(day), no_claims()).await.unwrap();
    // A minute later, as a second device logging in would be.
    let second = tokens
        .issue("u", Some(day + Duration::from_secs(60)), no_claims())
        .await
        .unwrap();
    let short = tokens
        .issue("u", Some(Duration::from_secs(3600)), no_claims())
        .await
        .unwrap();

    assert_eq!(short.sessions_dropped, 1);
    let result = tokens.verify(&short.token).await;
    assert!(result.is_ok(), "the new 1 h session: {result:?}");
    assert!(tokens.verify(&second.token).await.is_ok());
    assert!(matches!(
        tokens.verify(&first.token).await,
        Err(AuthError::Revoked)
    ));
}

// ---- issue 9, defect 5: restarts --------------------------------------------

/// After a Redis restart, issue and verify recover on their own, and the
/// calls made while Redis was gone or reconnecting open one connection,
/// not one each. (It used to fail on the dead connection forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_and_verify_recover_after_a_redis_restart_without_a_reconnect_storm() {
    let mut server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let before = tokens.issue("u", None, no_claims()).await.unwrap();
    assert!(tokens.verify(&before.token).await.is_ok());

    server.restart();
    let mut c = server.conn();
    let connections = |c: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let at_restart = connections(&mut c);

    // A burst while the link is being replaced: each call fails on the dead
    // connection, fails fast while reconnecting, or reaches the restarted
    // server, which lost the session (no persistence).
    let burst =
        futures_util::future::join_all((0..200).map(|_| tokens.verify(&before.token))).await;
    for result in &burst {
        assert!(
            matches!(
                result,
                Err(AuthError::Redis(_) | AuthError::Unavailable(_) | AuthError::Revoked)
            ),
            "{result:?}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let issued = loop {
        match tokens.issue("u", None, no_claims()).await {
            Ok(issued) => break issued,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(tokens.verify(&issued.token).await.is_ok());
    let more = futures_util::future::join_all((0..200).map(|_| tokens.verify(&issued.token))).await;
    assert!(more.iter().all(Result::is_ok));
    let opened = connections(&mut c) - at_restart;
    assert!(opened <= 2, "{opened} connections opened for 400 calls");
}

// ---- issue 10, item 4: settings changed during a reconnect -------------------

/// A TCP relay to `upstream` that can hold new connections: each one is
/// announced on the returned channel and forwarded only once `release` is
/// set (it starts set).
async fn holding_relay(
    upstream: u16,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    tokio::sync::watch::Sender<bool>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let _ = arrived_tx.send(());
            let mut released = released.clone();
            tokio::spawn(async move {
                let _ = released.wait_for(|go| *go).await;
                let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (port, arrived, release)
}

/// `redis.url` changes (a SIGHUP reload) while a reconnect to the old
/// address is in flight: the connection made with the old settings is
/// discarded and the link comes up on the new address. (It used to install
/// whatever it had connected with, and stay on the old server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_during_a_reconnect_are_not_lost() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    let (relay, mut arrived, release) = holding_relay(old.port).await;
    let mut redis_settings = settings_for(&old).redis;
    redis_settings.url = format!("redis://127.0.0.1:{relay}").parse().unwrap();
    let link = Arc::new(Reconnecting::new(redis_settings.clone(), |_| {}));
    let tokens = TokenService::new(Arc::clone(&link), &hs256(), ScoreUnit::Milliseconds).unwrap();
    link.connect_now().await.unwrap();
    arrived.recv().await.unwrap();

    release.send_replace(false);
    link.lost("test: connection dropped");
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the reconnect reaches the relay")
        .unwrap();
    assert!(link.get().is_err(), "the reconnect is still in flight");
    link.update_settings(settings_for(&new).redis);
    release.send_replace(true);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokens.issue("u", None, no_claims()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_new: i64 = new.conn().zcard("u-tokens").unwrap();
    let on_old: i64 = old.conn().zcard("u-tokens").unwrap();
    assert_eq!(
        (on_new, on_old),
        (1, 0),
        "the session went to {}",
        link.get().unwrap().address()
    );
}

/// A failure reported for a connection that has since been replaced is
/// ignored: a slow request that failed on the old connection cannot take
/// the new one down.
#[tokio::test]
async fn a_late_report_about_a_replaced_connection_is_ignored() {
    let server = RedisServer::start();
    let link = Arc::new(Reconnecting::new(settings_for(&server).redis, |_| {}));
    link.connect_now().await.unwrap();
    let (_, first) = link.checkout().unwrap();
    link.lost_connection(first, "test: first connection lost");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Ok((_, id)) = link.checkout() {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(first, second);

    link.lost_connection(first, "test: a late report about the first one");
    let (_, current) = link.checkout().expect("still up");
    assert_eq!(current, second);
}

// ---- issue 9, defect 8: ttl overflow, all-or-nothing --------------------------

/// Lifetimes beyond the documented maximum are refused before anything is
/// signed or stored: exit 2, no token printed, no key written. (They used to
/// print a token that expired in 1972, or one stored with a score of 3.2e18.)
#[test]
fn tokens_issue_refuses_a_ttl_beyond_the_maximum_and_writes_nothing() {
    let server = RedisServer::start();
    let url = server.url();
    let env = [
        ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
        ("TOKEN_SWEEPER__AUTH__SECRET", SECRET),
    ];
    for ttl in ["18446744072000000000s", "100000000y", "3651days"] {
        let out = run_sweeper(&["tokens", "issue", "--user", "u", "--ttl", ttl], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ttl}: {err}");
        assert!(out.stdout.is_empty(), "{ttl}: printed a token");
        assert!(
            err.contains("ttl: ")
                && err.contains("longer than the longest token lifetime, 3650 days"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let keys: Vec<String> = server.conn().keys("*").unwrap();
    assert!(keys.is_empty(), "{keys:?}");

    let out = run_sweeper(
        &["tokens", "issue", "--user", "u", "--ttl", "3650days"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "the maximum itself is fine");
}

/// With Redis out of memory (noeviction), a login fails as a whole and
/// changes nothing: the set keeps its expired member, its members and its
/// TTL. (Without the script's flags Redis let it run: its first write
/// dropped the expired member, and the rest went past maxmemory.)
#[tokio::test]
async fn a_login_refused_for_lack_of_memory_changes_nothing() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = c.zadd("u-tokens", "expired", now - 60_000).unwrap();
    let _: () = c.zadd("u-tokens", "live", now + 3_600_000).unwrap();
    let _: () = c.pexpire_at("u-tokens", now + 3_600_000).unwrap();
    let before = common::members(&mut c, b"u-tokens");
    let used: String = redis::cmd("INFO").arg("memory").query(&mut c).unwrap();
    let used = used
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .to_owned();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used)
        .query(&mut c)
        .unwrap();

    let err = tokens.issue("u", None, no_claims()).await.unwrap_err();
    assert!(err.to_string().contains("OOM"), "{err}");

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(common::members(&mut c, b"u-tokens"), before);
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("u-tokens")
        .query(&mut c)
        .unwrap();
    assert_eq!(at, now + 3_600_000);
}

// ---- issue 9, defect 9: leeway ----------------------------------------------

/// A token inside the leeway verifies: the stored-score check and the key's
/// TTL honour it. Past the leeway it is expired, never revoked. (It used to
/// come back "revoked": the key had expired with the token.)
#[tokio::test]
async fn a_token_inside_the_leeway_verifies_and_is_expired_after_it() {
    let server = RedisServer::start();
    let auth = AuthSettings {
        leeway: Duration::from_secs(4),
        ..hs256()
    };
    let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
    let issued = tokens
        .issue("u", Some(Duration::from_secs(1)), no_claims())
        .await
        .unwrap();
    let mut c = server.conn();
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("u-tokens")
        .query(&mut c)
        .unwrap();
    assert_eq!(at, ((issued.claims.exp + 4) * 1000) as i64);

    // Past exp (iat + 1) and well inside exp + leeway (iat + 5).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let inside = tokens.verify(&issued.token).await;
    assert!(inside.is_ok(), "inside the leeway: {inside:?}");
    assert_eq!(tokens.list("u").await.unwrap().len(), 1);

    // A login now must not drop it either: it is still live.
    let other = tokens.issue("u", None, no_claims()).await.unwrap();
    assert!(tokens.verify(&issued.token).await.is_ok());

    // iat + 5.4 s at least: past exp + leeway = iat + 5.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let past = tokens.verify(&issued.token).await;
    assert!(matches!(past, Err(AuthError::Expired)), "{past:?}");
    assert!(tokens.verify(&other.token).await.is_ok());
}

/// A token inside the leeway whose member a sweeper without grace already
/// removed is reported expired, not revoked: it is past its `exp`.
#[tokio::test]
async fn an_expired_token_swept_inside_the_leeway_is_expired_not_revoked() {
    let server = RedisServer::start();
    let auth = AuthSettings {
        leeway: Duration::from_secs(30),
        ..hs256()
    };
    let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
    let issued = tokens
        .issue("u", Some(Duration::from_secs(1)), no_claims())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut settings = settings_for(&server);
    settings.sweep.grace = Duration::ZERO;
    let swept = sweep_with(&settings, SweepMode::Remove).await.unwrap();
    assert_eq!(swept.counts.members_removed, 1);

    let result = tokens.verify(&issued.token).await;
    assert!(matches!(result, Err(AuthError::Expired)), "{result:?}");
}

/// The sweeper's grace must cover the leeway when both are in one
/// configuration: otherwise a token inside the leeway may be swept.
#[test]
fn a_grace_shorter_than_the_leeway_is_refused_by_name() {
    let short = run_sweeper(&["check-config"], &[("TOKEN_SWEEPER__AUTH__LEEWAY", "30s")]);
    assert_eq!(short.status.code(), Some(2));
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.starts_with("token-sweeper: sweep.grace: "), "{err}");
    assert!(err.contains("auth.leeway"), "{err}");
    let fine = run_sweeper(
        &["check-config"],
        &[
            ("TOKEN_SWEEPER__AUTH__LEEWAY", "30s"),
            ("TOKEN_SWEEPER__SWEEP__GRACE", "30s"),
        ],
    );
    assert_eq!(
        fine.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
}

// ---- issue 11, item 7: claims -----------------------------------------------

/// Tokens signed with our key whose session is in the set, refused for
/// their claims alone: `nbf` 50 minutes ahead, `iat` a year ahead, a foreign
/// or missing `typ`. (All three used to verify.) The same construction with
/// sound claims verifies, so nothing else refuses them.
#[tokio::test]
async fn nbf_future_iat_and_a_foreign_typ_are_invalid() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut c = server.conn();
    let now = (redis_now_ms(&mut c) / 1000) as u64;
    let mut sign = |typ: Option<&str>, claims: serde_json::Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = typ.map(str::to_owned);
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        let exp = claims["exp"].as_u64().unwrap();
        let _: () = c.zadd("u-tokens", digest, exp * 1000).unwrap();
        token
    };
    let claims = |extra: serde_json::Value| {
        let mut base = serde_json::json!({
            "sub": "u", "iat": now, "exp": now + 3600, "jti": "0123456789abcdef0123456789abcdef"
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    };

    let sound = sign(Some("JWT"), claims(serde_json::json!({})));
    assert!(tokens.verify(&sound).await.is_ok());
    for (what, token) in [
        (
            "nbf in 50 minutes",
            sign(Some("JWT"), claims(serde_json::json!({"nbf": now + 3000}))),
        ),
        (
            "iat in a year",
            sign(
                Some("JWT"),
                claims(serde_json::json!({"iat": now + 365 * 86_400})),
            ),
        ),
        (
            "typ at+jwt",
            sign(Some("at+jwt"), claims(serde_json::json!({}))),
        ),
        ("no typ", sign(None, claims(serde_json::json!({})))),
    ] {
        let result = tokens.verify(&token).await;
        assert!(
            matches!(result, Err(AuthError::Invalid(_))),
            "{what}: {result:?}"
        );
    }
}

// ---- issue 11, item 8: key material -------------------------------------------

/// HS384/HS512 need secrets of at least 48/64 bytes (RFC 7518 section 3.2);
/// they used to accept 32.
#[tokio::test]
async fn hmac_secrets_are_at_least_the_hash_size() {
    let server = RedisServer::start();
    for (algorithm, minimum) in [("HS384", 48), ("HS512", 64)] {
        let short = AuthSettings {
            algorithm: algorithm.parse().unwrap(),
            secret: Some(Secret::new("s".repeat(minimum - 1))),
            ..AuthSettings::default()
        };
        assert_eq!(
            refused(&server, &short).await.to_string(),
            format!(
                "auth.secret: {algorithm} needs at least {minimum} bytes (RFC 7518 section 3.2), got {}",
                minimum - 1
            )
        );
        let enough = AuthSettings {
            secret: Some(Secret::new("s".repeat(minimum))),
            ..short
        };
        let tokens = service(&server, &enough, ScoreUnit::Milliseconds).await;
        let issued = tokens.issue("u", None, no_claims()).await.unwrap();
        assert!(tokens.verify(&issued.token).await.is_ok(), "{algorithm}");
    }
}

/// Keys that cannot work together are refused at start-up and by
/// `check-config` (exit 2, one line naming the key): an RS256 private key
/// and a public key from another pair (sessions that never verify), an
/// ES256 configuration with P-384 keys (which failed only at the first
/// issue), and a P-384 public key alone for ES256. A matching pair passes.
#[tokio::test]
async fn mismatched_or_wrong_curve_keys_are_refused_at_start_and_by_check_config() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = keypair(dir.path(), "rsa");
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_public) = keypair(other_dir.path(), "rsa");
    let (p384_private, p384_public) = keypair(dir.path(), "ec384");
    let config = |algorithm: &str, private: Option<&Path>, public: &Path| AuthSettings {
        algorithm: algorithm.parse().unwrap(),
        private_key_file: private.map(Path::to_path_buf),
        public_key_file: Some(public.to_path_buf()),
        ..AuthSettings::default()
    };
    let check_config = |auth: &AuthSettings| {
        let mut env = vec![(
            "TOKEN_SWEEPER__AUTH__ALGORITHM",
            format!("{:?}", auth.algorithm),
        )];
        if let Some(private) = &auth.private_key_file {
            env.push((
                "TOKEN_SWEEPER__AUTH__PRIVATE_KEY_FILE",
                private.display().to_string(),
            ));
        }
        let public = auth.public_key_file.as_ref().unwrap().display().to_string();
        env.push(("TOKEN_SWEEPER__AUTH__PUBLIC_KEY_FILE", public));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_sweeper(&["check-config"], &env)
    };

    for (auth, key, reason) in [
        (
            config("RS256", Some(&rsa_private), &other_public),
            "auth.public_key_file",
            "the two keys are not one pair",
        ),
        (
            config("ES256", Some(&p384_private), &p384_public),
            "auth.private_key_file",
            "cannot sign ES256 with this key",
        ),
        (
            config("ES256", None, &p384_public),
            "auth.public_key_file",
            "cannot verify ES256 with this key",
        ),
    ] {
        let err = refused(&server, &auth).await.to_string();
        assert!(err.starts_with(&format!("{key}: ")), "{err}");
        assert!(err.contains(reason), "{err}");
        let out = check_config(&auth);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end(), format!("token-sweeper: {err}"));
        assert!(out.stdout.is_empty());
    }

    let sound = config("RS256", Some(&rsa_private), &rsa_public);
    let out = check_config(&sound);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens = service(&server, &sound, ScoreUnit::Milliseconds).await;
    let issued = tokens.issue("u", None, no_claims()).await.unwrap();
    assert!(tokens.verify(&issued.token).await.is_ok());
}

// ---- issue 10, item 8: an empty user ------------------------------------------

/// `tokens list --user ""` is refused as `issue` refuses it (exit 2), and so
/// is `revoke-all`. (`list` used to accept it and read the key "-tokens".)
#[test]
fn an_empty_user_is_refused_by_every_tokens_command() {
    let server = RedisServer::start();
    let url = server.url();
    let env = [
        ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
        ("TOKEN_SWEEPER__AUTH__SECRET", SECRET),
    ];
    for command in ["issue", "list", "revoke-all"] {
        let out = run_sweeper(&["tokens", command, "--user", ""], &env);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            "token-sweeper: user id must not be empty",
            "{command}"
        );
        assert!(out.stdout.is_empty(), "{command}");
    }
}

// ---- the removal floor: a login never drops seconds-scored sessions --------

/// A set scored in milliseconds that also holds sessions in seconds (another
/// service writing seconds, or one moving from seconds to milliseconds).
/// Before, a login's script removed `-inf .. now` in milliseconds: every
/// seconds member, the live one included, while the sweeper refused to
/// touch them. Now the login removes what the sweeper would: the expired
/// millisecond member, and nothing at or below the seconds window.
#[tokio::test]
async fn a_login_keeps_seconds_scored_sessions_in_a_milliseconds_set() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = redis::cmd("ZADD")
        .arg("u-tokens")
        .arg(now / 1000 + 3600)
        .arg("s-live")
        .arg(now / 1000 - 3600)
        .arg("s-expired")
        .arg(now - 60_000)
        .arg("ms-expired")
        .query(&mut c)
        .unwrap();

    let issued = tokens.issue("u", None, no_claims()).await.unwrap();

    let left: Vec<String> = c.zrange("u-tokens", 0, -1).unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(&left[..2], ["s-expired", "s-live"]);
    assert!(tokens.verify(&issued.token).await.is_ok());
}

/// Seconds-writing services mark "never expires" with far-future values
/// (2^32 - 1, 4102444800 = 2100, 9999999999). The login's floor used to be
/// now + 50 years in seconds (about 3.4e9): above it, such a placeholder
/// read as a 1970 millisecond and a login removed it. The floor is now
/// 10^12 whatever the clock, above every such value.
#[tokio::test]
async fn a_login_keeps_far_future_seconds_placeholders_in_a_milliseconds_set() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = redis::cmd("ZADD")
        .arg("u-tokens")
        .arg(4_102_444_800_i64)
        .arg("y2100")
        .arg(4_294_967_295_i64)
        .arg("u32-max")
        .arg(9_999_999_999_i64)
        .arg("never")
        .arg(now - 60_000)
        .arg("ms-expired")
        .query(&mut c)
        .unwrap();

    tokens.issue("u", None, no_claims()).await.unwrap();

    let left: Vec<String> = c.zrange("u-tokens", 0, -1).unwrap();
    assert_eq!(left.len(), 4, "{left:?}");
    assert_eq!(&left[..3], ["y2100", "u32-max", "never"]);
}

/// `auth.max_sessions` ranked every member by score: in milliseconds a live
/// seconds-scored session of another service (below the removal floor)
/// looked like the oldest of all, counted against the limit and was dropped
/// first. Now only members above the floor, this module's own sessions, are
/// counted and ranked.
#[tokio::test]
async fn max_sessions_neither_counts_nor_drops_seconds_scored_sessions() {
    let server = RedisServer::start();
    let auth = AuthSettings {
        max_sessions: 2,
        ..hs256()
    };
    let tokens = service(&server, &auth, ScoreUnit::Milliseconds).await;
    let mut c = server.conn();
    let now_s = redis_now_ms(&mut c) / 1000;
    let _: () = redis::cmd("ZADD")
        .arg("u-tokens")
        .arg(now_s + 3600)
        .arg("s-live")
        .arg(9_999_999_999_i64)
        .arg("s-never")
        .query(&mut c)
        .unwrap();

    let mut issued = Vec::new();
    for i in 0..3 {
        let ttl = Duration::from_secs(3600 + i * 10);
        issued.push(tokens.issue("u", Some(ttl), no_claims()).await.unwrap());
    }

    let dropped: Vec<u64> = issued.iter().map(|t| t.sessions_dropped).collect();
    assert_eq!(dropped, [0, 0, 1], "only the third login is over the limit");
    let left: Vec<String> = c.zrange("u-tokens", 0, -1).unwrap();
    assert_eq!(left.len(), 4, "{left:?}");
    assert_eq!(&left[..2], ["s-live", "s-never"]);
    assert!(matches!(
        tokens.verify(&issued[0].token).await,
        Err(AuthError::Revoked)
    ));
    for token in &issued[1..] {
        assert!(tokens.verify(&token.token).await.is_ok());
    }
}

/// Seconds the other way round: a millisecond score, even one long expired,
/// is far above any seconds cutoff, so a login in seconds keeps it.
#[tokio::test]
async fn a_login_in_seconds_keeps_millisecond_scored_sessions() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Seconds).await;
    let mut c = server.conn();
    let now = redis_now_ms(&mut c);
    let _: () = redis::cmd("ZADD")
        .arg("u-tokens")
        .arg(now + 3_600_000)
        .arg("ms-live")
        .arg(1_600_000_000_000_i64)
        .arg("ms-expired")
        .arg(now / 1000 - 60)
        .arg("s-expired")
        .query(&mut c)
        .unwrap();

    tokens.issue("u", None, no_claims()).await.unwrap();

    let left: Vec<String> = c.zrange("u-tokens", 0, -1).unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(&left[1..], ["ms-expired", "ms-live"]);
}

// ---- bounds: log out everywhere under OOM, lifetimes, odd members ---------

/// The environment of a `tokens` command against `url`.
fn cli_env(url: &str) -> [(&'static str, &str); 2] {
    [
        ("TOKEN_SWEEPER__REDIS__URL", url),
        ("TOKEN_SWEEPER__AUTH__SECRET", SECRET),
    ]
}

/// `tokens <args>`, with `input` on stdin (a token kept out of `ps`).
fn tokens_cli(env: &[(&str, &str)], args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut all = vec!["tokens"];
    all.extend_from_slice(args);
    let mut child = common::sweeper(&all, env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn issue_cli(env: &[(&str, &str)], user: &str) -> String {
    let out = tokens_cli(env, &["issue", "--user", user], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn config_set(c: &mut redis::Connection, key: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query(c)
        .unwrap();
}

/// "Log out everywhere" works when Redis is out of memory (`maxmemory`,
/// `noeviction`): it only deletes, which is what such a Redis needs. So do
/// a single logout (`ZREM`) and requests (`ZSCORE`); a login is refused
/// with OOM and writes nothing (the README's Faults table says so). The
/// revoke-all script used to start with a bare `#!lua`, and Redis refuses
/// a flagged script without `allow-oom` as a whole: revoke-all failed with
/// OOM and the user's tokens kept verifying.
#[test]
fn log_out_everywhere_works_when_redis_is_out_of_memory() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let url = server.url();
    let env = cli_env(&url);
    let mine = [issue_cli(&env, "u"), issue_cli(&env, "u")];
    let other = issue_cli(&env, "v");
    issue_cli(&env, "w");
    let mut c = server.conn();
    let u_before = common::members(&mut c, b"u-tokens");
    assert_eq!(u_before.len(), 2);

    // The smallest limit: every write that needs memory is refused.
    config_set(&mut c, "maxmemory", "1");
    let write: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg(1).query(&mut c);
    assert!(
        matches!(&write, Err(e) if e.code() == Some("OOM")),
        "Redis is out of memory: {write:?}"
    );

    // A login is refused and writes nothing.
    let login = tokens_cli(&env, &["issue", "--user", "u"], "");
    let err = String::from_utf8_lossy(&login.stderr);
    assert_eq!(login.status.code(), Some(1), "{err}");
    assert!(err.contains("OOM"), "{err}");
    assert!(login.stdout.is_empty(), "no token without its session");
    assert_eq!(common::members(&mut c, b"u-tokens"), u_before);

    // A request still verifies.
    let request = tokens_cli(&env, &["verify"], &mine[0]);
    assert_eq!(
        request.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&request.stderr)
    );

    // A logout works.
    let logout = tokens_cli(&env, &["revoke"], &other);
    assert_eq!(
        String::from_utf8_lossy(&logout.stdout).trim(),
        "revoked",
        "{}",
        String::from_utf8_lossy(&logout.stderr)
    );

    // Log out everywhere works, whether Redis has the script cached or not
    // (u's is the first call; w's finds it cached).
    for (user, live) in [("u", 2), ("w", 1)] {
        let all = tokens_cli(&env, &["revoke-all", "--user", user], "");
        let err = String::from_utf8_lossy(&all.stderr);
        assert_eq!(all.status.code(), Some(0), "{user}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&all.stdout).trim(),
            format!("ended {live} active sessions of {user}")
        );
        let exists: bool = c.exists(format!("{user}-tokens")).unwrap();
        assert!(!exists, "{user}: the set is gone");
    }
    for token in mine.iter().chain([&other]) {
        let request = tokens_cli(&env, &["verify"], token);
        assert_eq!(request.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&request.stderr).trim(),
            "token-sweeper: token revoked"
        );
    }
    // Still out of memory all along: nothing above needed any.
    let write: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg(1).query(&mut c);
    assert!(
        matches!(&write, Err(e) if e.code() == Some("OOM")),
        "{write:?}"
    );
    config_set(&mut c, "maxmemory", "0");
}

/// A lifetime under a second or not whole seconds is refused: exit 2, one
/// line, no token, nothing written. (`--ttl 0s` and `1ns` issued a
/// 1-second token and `1500ms` one of 1 s.) A too long one is shown in
/// days, as the limit is, never in humantime's years.
#[test]
fn tokens_issue_refuses_a_ttl_that_is_not_whole_seconds_from_1s() {
    let server = RedisServer::start();
    let url = server.url();
    let env = cli_env(&url);
    let cases = [
        ("0s", "ttl: must be whole seconds, at least 1s, got 0s"),
        ("1ns", "ttl: must be whole seconds, at least 1s, got 1ns"),
        (
            "999ms",
            "ttl: must be whole seconds, at least 1s, got 999ms",
        ),
        (
            "1500ms",
            "ttl: must be whole seconds, at least 1s, got 1s 500ms",
        ),
        (
            "3651days",
            "ttl: 3651 days is longer than the longest token lifetime, 3650 days",
        ),
        (
            "3650days 1s",
            "ttl: 3650 days 1s is longer than the longest token lifetime, 3650 days",
        ),
    ];
    for (ttl, expected) in cases {
        let out = run_sweeper(&["tokens", "issue", "--user", "u", "--ttl", ttl], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ttl}: {err}");
        assert!(out.stdout.is_empty(), "{ttl}: printed a token");
        assert_eq!(
            err.trim_end(),
            format!("token-sweeper: {expected}"),
            "{ttl}"
        );
    }
    let keys: Vec<String> = server.conn().keys("*").unwrap();
    assert!(keys.is_empty(), "{keys:?}");

    // The smallest lifetime is a whole second, as asked.
    let out = run_sweeper(
        &["tokens", "issue", "--user", "u", "--ttl", "1s", "--json"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let claims = &issued["claims"];
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1
    );
}

/// The library refuses the same lifetimes, from `auth.ttl` as from the
/// argument, naming which.
#[tokio::test]
async fn the_library_refuses_a_ttl_that_is_not_whole_seconds_from_1s() {
    let server = RedisServer::start();
    let tokens = service(&server, &hs256(), ScoreUnit::Milliseconds).await;
    for ttl in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(1500),
    ] {
        let err = tokens.issue("u", Some(ttl), no_claims()).await.unwrap_err();
        assert!(
            matches!(&err, AuthError::OutOfRange { key: "ttl", .. }),
            "{ttl:?}: {err}"
        );
    }
    let auth = AuthSettings {
        ttl: Duration::from_millis(1500),
        ..hs256()
    };
    let err = refused(&server, &auth).await;
    assert!(
        matches!(
            &err,
            AuthError::OutOfRange {
                key: "auth.ttl",
                ..
            }
        ),
        "{err}"
    );
    let keys: Vec<String> = server.conn().keys("*").unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// `tokens list` shows a member scored `+inf` as never expiring (text
/// "never", JSON "never"), and lists every member whatever its bytes: one
/// that is not UTF-8 (written by another service) no longer fails the whole
/// listing, and it, a member with a newline or a space and one that itself
/// starts with "hex:" are shown as "hex:" and their bytes, so no id can be
/// mistaken for another.
#[test]
fn tokens_list_shows_never_expiring_and_non_utf8_members() {
    let server = RedisServer::start();
    let url = server.url();
    let env = cli_env(&url);
    let token = issue_cli(&env, "u");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let mut c = server.conn();
    let later = redis_now_ms(&mut c) + 3_600_000;
    let _: () = redis::cmd("ZADD")
        .arg("u-tokens")
        .arg("+inf")
        .arg("forever")
        .arg(later)
        .arg(b"\xff\xfe-binary".as_slice())
        .arg(later)
        .arg("two\nlines")
        .arg(later)
        .arg("hex:abcd")
        .arg("1e300")
        .arg("far")
        .arg(later)
        .arg("two words")
        .query(&mut c)
        .unwrap();

    let text = run_sweeper(&["tokens", "list", "--user", "u"], &env);
    assert_eq!(
        text.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8(text.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    let line_of = |id: &str| {
        lines
            .iter()
            .find(|l| l.split("  ").next() == Some(id))
            .unwrap_or_else(|| panic!("no line for {id:?}: {text}"))
            .to_owned()
    };
    assert_eq!(line_of("forever"), "forever  expires never");
    // Past any calendar date: the number, not a blank.
    assert_eq!(line_of("far"), "far  expires at 1e297 s since the epoch");
    for id in [
        format!("hex:{}", hex::encode(b"\xff\xfe-binary")),
        format!("hex:{}", hex::encode(b"two\nlines")),
        format!("hex:{}", hex::encode(b"two words")),
        format!("hex:{}", hex::encode(b"hex:abcd")),
        digest.clone(),
    ] {
        let expires = line_of(&id)
            .strip_prefix(&format!("{id}  expires "))
            .unwrap()
            .to_owned();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&expires).is_ok(),
            "{id}: {expires:?}"
        );
    }

    let json = run_sweeper(&["tokens", "list", "--user", "u", "--json"], &env);
    assert_eq!(json.status.code(), Some(0));
    let sessions: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 7);
    let expiry_of = |id: &str| {
        sessions
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no session {id:?}: {sessions:?}"))["expires_at"]
            .clone()
    };
    assert_eq!(expiry_of("forever"), "never");
    assert_eq!(expiry_of("far").as_f64(), Some(1e297));
    let binary = format!("hex:{}", hex::encode(b"\xff\xfe-binary"));
    assert_eq!(expiry_of(&binary).as_f64(), Some(later as f64 / 1000.0));
    assert!(expiry_of(&digest).as_f64().unwrap() > 1.7e9);
}
