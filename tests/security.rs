//! Least-privilege ACL users (the exact lines the README gives) and TLS with
//! a test CA generated here, against real redis-servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    count_members, create_user, run_sweeper, seed, wait_until, write_file, DaemonProcess,
    RedisServer,
};

#[test]
fn the_sweeper_runs_as_its_restricted_acl_user() {
    let server = RedisServer::start();
    create_user(&server, "token-sweeper", "sweeper-pw", &[]);
    let mut c = server.conn();
    seed(&mut c, "u", 100);
    let url = server.url();
    let env = [
        ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", "sweeper-pw"),
    ];

    let dry = run_sweeper(&["sweep", "--dry-run"], &env);
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let out = run_sweeper(&["sweep", "--json"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count_members(&mut c, "u"), (0, 100));

    // The daemon takes, keeps and releases its lock with the same user.
    seed(&mut c, "v", 10);
    let mut daemon = DaemonProcess::start(&url, &env[1..], None);
    wait_until(Duration::from_secs(10), "the daemon's sweep", || {
        count_members(&mut c, "v").0 == 0
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).0, Some(0));
    assert!(
        daemon.log_text().contains("released the replica lock"),
        "{}",
        daemon.log_text()
    );

    // Least privilege: it cannot delete a token set.
    let mut restricted = redis::Client::open(format!(
        "redis://token-sweeper:sweeper-pw@127.0.0.1:{}",
        server.port
    ))
    .unwrap()
    .get_connection()
    .unwrap();
    let del: redis::RedisResult<i64> = redis::cmd("DEL").arg("u1-tokens").query(&mut restricted);
    assert_eq!(del.unwrap_err().code(), Some("NOPERM"));
}

#[test]
fn a_sweeper_user_missing_a_permission_fails_naming_it() {
    let server = RedisServer::start();
    create_user(&server, "token-sweeper", "pw", &["zremrangebyscore"]);
    let mut c = server.conn();
    seed(&mut c, "u", 10);
    let url = server.url();

    let out = run_sweeper(
        &["sweep"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
            ("TOKEN_SWEEPER__REDIS__USERNAME", "token-sweeper"),
            ("TOKEN_SWEEPER__REDIS__PASSWORD", "pw"),
        ],
    );

    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // The lock selector allows ZREMRANGEBYSCORE on the lock keys only, so
    // Redis says the keys are not permitted; the message names the command.
    assert!(err.contains("ZREMRANGEBYSCORE failed: NoPerm"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(count_members(&mut c, "u"), (10, 10));
}

#[test]
fn the_auth_module_runs_as_its_restricted_acl_user_and_names_a_missing_permission() {
    let server = RedisServer::start();
    create_user(&server, "token-auth", "auth-pw", &[]);
    let url = server.url();
    let env = [
        ("TOKEN_SWEEPER__REDIS__URL", url.as_str()),
        ("TOKEN_SWEEPER__REDIS__USERNAME", "token-auth"),
        ("TOKEN_SWEEPER__REDIS__PASSWORD", "auth-pw"),
        (
            "TOKEN_SWEEPER__AUTH__SECRET",
            "acl-test-secret-that-is-32-bytes-long",
        ),
        ("TOKEN_SWEEPER__AUTH__MAX_SESSIONS", "2"),
    ];
    let run = |args: &[&str]| {
        let out = run_sweeper(args, &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let first = run(&["tokens", "issue", "--user", "u"]);
    run(&["tokens", "issue", "--user", "u"]);
    run(&["tokens", "issue", "--user", "u"]);
    let sessions: serde_json::Value =
        serde_json::from_str(&run(&["tokens", "list", "--user", "u", "--json"])).unwrap();
    assert_eq!(
        sessions.as_array().unwrap().len(),
        2,
        "max_sessions trimmed in the script"
    );
    // Expires after all the others: never the one trimmed.
    let last = run(&["tokens", "issue", "--user", "u", "--ttl", "48h"]);
    run(&["tokens", "verify", &last]);
    run(&["tokens", "revoke", &first]);
    assert!(run(&["tokens", "revoke-all", "--user", "u"]).starts_with("ended "));

    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("token-auth")
        .arg("-zscore")
        .query(&mut server.conn())
        .unwrap();
    let fresh = run(&["tokens", "issue", "--user", "w"]);
    let denied = run_sweeper(&["tokens", "verify", &fresh], &env);
    assert_eq!(denied.status.code(), Some(1));
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("'zscore' command"), "{err}");
}

/// A test PKI made with openssl: a CA, a server certificate for `localhost`
/// only, a client certificate, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=token-sweeper test {ca}"),
            ]);
        }
        std::fs::write(d.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// redis-server speaking only TLS on a free port; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(pki: &Pki, client_certs: &str) -> Self {
        let port = common::free_port();
        let child = Command::new(common::redis_server_bin())
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .args([
                "--tls-cert-file",
                &pki.arg("server.pem"),
                "--tls-key-file",
                &pki.arg("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &pki.arg("ca.pem"),
                "--tls-auth-clients",
                client_certs,
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(10), "the TLS port", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { child, port }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sweep_tls(url: &str, files: &[(&str, &Path)]) -> (Option<i32>, String) {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(key, path)| {
            (
                format!("TOKEN_SWEEPER__REDIS__{key}"),
                path.display().to_string(),
            )
        })
        .collect();
    let mut env: Vec<(&str, &str)> = vec![
        ("TOKEN_SWEEPER__REDIS__URL", url),
        ("TOKEN_SWEEPER__REDIS__CONNECT_TIMEOUT", "5s"),
    ];
    env.extend(files.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = run_sweeper(&["sweep", "--json"], &env);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_with_a_private_ca_verifies_the_server_and_its_name() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "no");
    let good = format!("rediss://localhost:{}", server.port);

    let (code, err) = sweep_tls(&good, &[("TLS_CA_FILE", &pki.path("ca.pem"))]);
    assert_eq!(code, Some(0), "{err}");

    // Not signed by the configured CA, or not in the system store.
    for files in [vec![("TLS_CA_FILE", pki.path("other-ca.pem"))], vec![]] {
        let files: Vec<(&str, &Path)> = files.iter().map(|(k, p)| (*k, p.as_path())).collect();
        let (code, err) = sweep_tls(&good, &files);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "cannot connect to Redis at localhost:{}",
                server.port
            )),
            "{err}"
        );
        assert!(err.to_lowercase().contains("certificate"), "{err}");
    }

    // The certificate is for localhost, not for 127.0.0.1: server-name checking is on.
    let by_ip = format!("rediss://127.0.0.1:{}", server.port);
    let (code, err) = sweep_tls(&by_ip, &[("TLS_CA_FILE", &pki.path("ca.pem"))]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn tls_client_certificates_when_the_server_requires_them() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "yes");
    let url = format!("rediss://localhost:{}", server.port);

    let (code, err) = sweep_tls(&url, &[("TLS_CA_FILE", &pki.path("ca.pem"))]);
    assert_eq!(code, Some(1), "without a client certificate: {err}");

    let (code, err) = sweep_tls(
        &url,
        &[
            ("TLS_CA_FILE", &pki.path("ca.pem")),
            ("TLS_CERT_FILE", &pki.path("client.pem")),
            ("TLS_KEY_FILE", &pki.path("client.key")),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn tls_files_need_a_rediss_url_and_come_in_pairs() {
    let out = run_sweeper(
        &["check-config"],
        &[("TOKEN_SWEEPER__REDIS__TLS_CA_FILE", "/ca.pem")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("redis.url: redis.tls_* files are set, but the URL is not rediss://"));
    let out = run_sweeper(
        &["check-config"],
        &[
            ("TOKEN_SWEEPER__REDIS__URL", "rediss://localhost"),
            ("TOKEN_SWEEPER__REDIS__TLS_CERT_FILE", "/c.pem"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("redis.tls_key_file: set redis.tls_cert_file and redis.tls_key_file together"));
}

/// `text` percent-encoded for a URL: every byte but the unreserved ones
/// (RFC 3986), in upper-case hex, so it is valid in userinfo and query alike.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One command of the property test: what to run, and what it must exit with.
struct Leak {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Exit codes that mean the command went down the intended path.
    codes: &'static [i32],
}

/// For random passwords drawn from every printable ASCII character, given in
/// every way a password can be given (the password setting, a password file,
/// in a URL percent-encoded or raw, in sentinel and seed URLs, in a unix
/// socket URL's query, in a config file), no command prints it, raw or
/// percent-encoded, on stdout or stderr: not check-config, not a sweep
/// against a refusing or unreachable server, not a malformed URL, not the
/// tokens commands, not sentinel or cluster discovery that fails.
#[test]
fn no_output_ever_contains_a_redis_password() {
    use rand::{Rng, SeedableRng};

    // A live server whose password is never the one given: the handshake
    // is refused (WRONGPASS), the path where a password is most likely to
    // be echoed.
    let server = RedisServer::start_with(&["--requirepass", "the-real-one"]);
    let live = server.port;
    // Ports nobody listens on: connection refused.
    let refused: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ec2e7);

    for round in 0..12 {
        let len = rng.random_range(12..=24);
        let mut password: String = (0..len)
            .map(|_| char::from(rng.random_range(0x20u8..=0x7e)))
            .collect();
        // Every round has the characters that break naive redaction.
        let tricky = ['/', '@', ':', '?', '#', '%', '&', ','];
        password.insert(
            rng.random_range(0..=password.len()),
            tricky[round % tricky.len()],
        );
        let encoded = percent_encode(&password);
        // The HMAC secret of the auth path, also random, must not show either.
        let auth_secret: String = (0..rng.random_range(32..=40))
            .map(|_| char::from(rng.random_range(0x20u8..=0x7e)))
            .collect();
        let file = write_file(dir.path(), &format!("pw{round}"), &format!("{password}\n"));
        let toml_escaped = toml::Value::String(password.clone()).to_string();
        let config_ok = write_file(
            dir.path(),
            &format!("ok{round}.toml"),
            &format!(
                "[redis]\npassword = {toml_escaped}\nurl = \"redis://u:{encoded}@127.0.0.1:{}\"\n",
                refused[0]
            ),
        );
        // Written as is: often not valid TOML, so the parser's error is printed.
        let config_raw = write_file(
            dir.path(),
            &format!("raw{round}.toml"),
            &format!("[redis]\npassword = \"{password}\"\n"),
        );
        let at = |port: u16| format!("redis://u:{encoded}@127.0.0.1:{port}");
        let secret = ("TOKEN_SWEEPER__AUTH__SECRET", auth_secret.clone());
        let fast = ("TOKEN_SWEEPER__REDIS__CONNECT_TIMEOUT", "2s".to_owned());
        let url = |u: String| ("TOKEN_SWEEPER__REDIS__URL", u);
        let pw_env = ("TOKEN_SWEEPER__REDIS__PASSWORD", password.clone());
        let sentinel_env = vec![
            ("TOKEN_SWEEPER__REDIS__MODE", "sentinel".to_owned()),
            ("TOKEN_SWEEPER__REDIS__MASTER_NAME", "mymaster".to_owned()),
            (
                "TOKEN_SWEEPER__REDIS__SENTINELS",
                format!("{},{},{}", at(refused[1]), at(live), at(refused[2])),
            ),
            url(at(refused[0])),
            pw_env.clone(),
            fast.clone(),
        ];
        let cluster_env = vec![
            ("TOKEN_SWEEPER__REDIS__MODE", "cluster".to_owned()),
            url(at(refused[0])),
            (
                "TOKEN_SWEEPER__REDIS__NODES",
                format!("{},{}", at(live), at(refused[1])),
            ),
            fast.clone(),
        ];
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let with_config = |path: &Path| {
            vec![
                "check-config".to_owned(),
                "--config".to_owned(),
                path.display().to_string(),
            ]
        };
        let cases = vec![
            Leak {
                what: "check-config, every URL setting",
                args: args(&["check-config"]),
                env: sentinel_env
                    .iter()
                    .cloned()
                    .chain([(
                        "TOKEN_SWEEPER__REDIS__NODES",
                        format!("{},{}", at(refused[1]), at(live)),
                    )])
                    .collect(),
                codes: &[0],
            },
            Leak {
                what: "check-config, the auth secret",
                args: args(&["check-config"]),
                env: vec![secret.clone(), pw_env.clone()],
                codes: &[0],
            },
            Leak {
                what: "tokens issue, server refuses the password",
                args: args(&["tokens", "issue", "--user", "u"]),
                env: vec![
                    url(format!("redis://127.0.0.1:{live}")),
                    pw_env.clone(),
                    secret.clone(),
                ],
                codes: &[1],
            },
            Leak {
                what: "check-config, a config file",
                args: with_config(&config_ok),
                env: vec![],
                codes: &[0],
            },
            Leak {
                what: "check-config, a config file with the password unescaped",
                args: with_config(&config_raw),
                env: vec![],
                codes: &[0, 2],
            },
            Leak {
                what: "sweep, password setting, server refuses it",
                args: args(&["sweep"]),
                env: vec![url(format!("redis://127.0.0.1:{live}")), pw_env.clone()],
                codes: &[1],
            },
            Leak {
                what: "sweep, password file, nothing listening",
                args: args(&["sweep", "--json"]),
                env: vec![
                    url(format!("redis://127.0.0.1:{}", refused[0])),
                    (
                        "TOKEN_SWEEPER__REDIS__PASSWORD_FILE",
                        file.display().to_string(),
                    ),
                ],
                codes: &[1],
            },
            Leak {
                what: "sweep, password in the URL, server refuses it",
                args: args(&["sweep"]),
                env: vec![url(at(live))],
                codes: &[1],
            },
            Leak {
                what: "sweep, password unencoded in the URL",
                args: args(&["sweep"]),
                env: vec![url(format!(
                    "redis://u:{password}@127.0.0.1:{}",
                    refused[0]
                ))],
                codes: &[1, 2],
            },
            Leak {
                what: "sweep, password in a unix socket URL's query",
                args: args(&["sweep"]),
                env: vec![url(format!(
                    "unix:///nonexistent/redis.sock?user=u&pass={encoded}&db=1"
                ))],
                codes: &[1],
            },
            Leak {
                what: "check-config, password in a redis+unix URL's query",
                args: args(&["check-config"]),
                env: vec![url(format!("redis+unix:///run/redis.sock?pass={encoded}"))],
                codes: &[0],
            },
            Leak {
                what: "tokens list, server refuses the password",
                args: args(&["tokens", "list", "--user", "u"]),
                env: vec![url(at(live)), secret.clone()],
                codes: &[1],
            },
            Leak {
                what: "tokens list, password setting, nothing listening",
                args: args(&["tokens", "list", "--user", "u"]),
                env: vec![url(at(refused[0])), pw_env.clone(), secret.clone()],
                codes: &[1],
            },
            Leak {
                what: "sweep, sentinels unreachable or refusing",
                args: args(&["sweep"]),
                env: sentinel_env.clone(),
                codes: &[1],
            },
            Leak {
                what: "sweep, cluster seeds unreachable or refusing",
                args: args(&["sweep"]),
                env: cluster_env.clone(),
                codes: &[1],
            },
        ];
        let forms = [
            password.clone(),
            encoded.clone(),
            encoded.to_lowercase(),
            auth_secret.clone(),
        ];
        for case in &cases {
            let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = case.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let out = run_sweeper(&args, &env);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let code = out.status.code().unwrap_or(-1);
            assert!(
                case.codes.contains(&code),
                "round {round}, {}: exit {code}: {text}",
                case.what
            );
            for form in &forms {
                assert!(
                    !text.contains(form.as_str()),
                    "round {round}, {}: the password {password:?} is printed as {form:?}:\n{text}",
                    case.what
                );
            }
        }
    }
}

/// Each TLS file is parsed by check-config and at start: an empty, garbage,
/// or wrong-kind file, or a key that is not the certificate's, is one line
/// naming the key, exit 2; not a handshake error later ("UnknownIssuer",
/// "peer sent no certificates") or a connection retried forever.
#[test]
fn tls_files_are_parsed_at_start_naming_the_key() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "yes");
    let url = format!("rediss://localhost:{}", server.port);
    let d = pki.dir.path();
    let empty = write_file(d, "empty.pem", "");
    let text = write_file(d, "text.pem", "not a certificate\n");
    let armored = write_file(
        d,
        "armored.pem",
        "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
    );
    let bad_key = write_file(
        d,
        "bad.key",
        "-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n",
    );
    let missing = d.join("missing.pem");
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let good = [
        ("TLS_CA_FILE", ca.clone()),
        ("TLS_CERT_FILE", cert.clone()),
        ("TLS_KEY_FILE", key.clone()),
    ];
    // (the file replaced, by what, what the one line must say)
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("TLS_CA_FILE", empty.clone(), "redis.tls_ca_file: "),
        ("TLS_CA_FILE", text.clone(), "redis.tls_ca_file: "),
        ("TLS_CA_FILE", armored.clone(), "redis.tls_ca_file: "),
        ("TLS_CA_FILE", pki.path("ca.key"), "redis.tls_ca_file: "),
        ("TLS_CA_FILE", missing.clone(), "redis.tls_ca_file: "),
        ("TLS_CERT_FILE", empty.clone(), "redis.tls_cert_file: "),
        ("TLS_CERT_FILE", text.clone(), "redis.tls_cert_file: "),
        ("TLS_CERT_FILE", armored.clone(), "redis.tls_cert_file: "),
        ("TLS_KEY_FILE", empty.clone(), "redis.tls_key_file: "),
        ("TLS_KEY_FILE", text.clone(), "redis.tls_key_file: "),
        ("TLS_KEY_FILE", bad_key.clone(), "redis.tls_key_file: "),
        ("TLS_KEY_FILE", cert.clone(), "redis.tls_key_file: "),
        // A valid key, but not the one of the client certificate.
        (
            "TLS_KEY_FILE",
            pki.path("other-ca.key"),
            "redis.tls_key_file: ",
        ),
    ];
    let files_env = |files: &[(&str, PathBuf)]| -> Vec<(String, String)> {
        files
            .iter()
            .map(|(k, p)| {
                (
                    format!("TOKEN_SWEEPER__REDIS__{k}"),
                    p.display().to_string(),
                )
            })
            .chain([("TOKEN_SWEEPER__REDIS__URL".to_owned(), url.clone())])
            .collect()
    };
    let run = |args: &[&str], env: &[(String, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = run_sweeper(args, &env);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, err) = run(&["check-config"], &files_env(&good));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(&["sweep"], &files_env(&good));
    assert_eq!(code, Some(0), "the good files connect: {err}");

    for (replaced, file, expected) in &cases {
        let files: Vec<(&str, PathBuf)> = good
            .iter()
            .map(|(k, p)| {
                (
                    *k,
                    if k == replaced {
                        file.clone()
                    } else {
                        p.clone()
                    },
                )
            })
            .collect();
        for command in ["check-config", "sweep"] {
            let (code, err) = run(&[command], &files_env(&files));
            let case = format!("{command} with {replaced} = {}", file.display());
            assert_eq!(code, Some(2), "{case}: {err}");
            assert!(err.contains(expected), "{case}: {err}");
            assert!(err.contains(&file.display().to_string()), "{case}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{case}: {err}");
        }
    }
}

/// A reload that points a TLS setting at a bad file is refused, naming the
/// key, and the daemon keeps the files it has.
#[test]
fn a_reload_with_a_bad_tls_file_keeps_the_previous_configuration() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "no");
    let url = format!("rediss://localhost:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let garbage = write_file(dir.path(), "garbage.pem", "garbage\n");
    let config = |ca: &Path| {
        format!(
            "[redis]\ntls_ca_file = {}\n[sweep]\ninterval = \"1s\"\n",
            toml::Value::String(ca.display().to_string())
        )
    };
    let file = write_file(dir.path(), "c.toml", &config(&pki.path("ca.pem")));
    let daemon = DaemonProcess::start(&url, &[], Some(&file));
    let swept = |daemon: &DaemonProcess| {
        common::metric(
            &daemon.scrape(),
            "token_sweeper_sweeps_total{result=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(10), "a first sweep over TLS", || {
        swept(&daemon) >= 1.0
    });

    write_file(dir.path(), "c.toml", &config(&garbage));
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "the refused reload logged", || {
        daemon.log_text().contains("reload failed")
    });
    let log = daemon.log_text();
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("redis.tls_ca_file: "), "{line}");
    assert!(line.contains("garbage.pem"), "{line}");
    let before = swept(&daemon);
    wait_until(
        Duration::from_secs(10),
        "sweeps go on with the old files",
        || swept(&daemon) >= before + 2.0,
    );
}

/// The daemon's log, through failed connects, reloads that change the mode
/// and the URLs, a reload that is refused, and sentinel discovery that
/// fails, never holds the password (logging at debug, everything included).
#[test]
fn the_daemon_never_logs_a_password() {
    let server = RedisServer::start_with(&["--requirepass", "the-real-one"]);
    let refused = common::free_port();
    let password = "daemon/pa?ss#word@:%&,x";
    let encoded = percent_encode(password);
    let at = |port: u16| format!("redis://u:{encoded}@127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let config = |text: &str| write_file(dir.path(), "c.toml", text);
    let file = config("[sweep]\ninterval = \"1s\"\n");
    let url = at(server.port);
    let daemon = DaemonProcess::start(
        &url,
        &[
            ("TOKEN_SWEEPER__LOG__LEVEL", "debug"),
            ("TOKEN_SWEEPER__REDIS__PASSWORD", password),
            ("TOKEN_SWEEPER__REDIS__CONNECT_TIMEOUT", "1s"),
        ],
        Some(&file),
    );
    let reloads = |daemon: &DaemonProcess, n: usize| {
        wait_until(Duration::from_secs(10), "the reload", || {
            let log = daemon.log_text();
            log.matches("configuration reloaded").count() + log.matches("reload failed").count()
                >= n
        });
    };
    // Sentinel mode: every sentinel refuses or is not there.
    config(&format!(
        "[sweep]\ninterval = \"1s\"\n[redis]\nmode = \"sentinel\"\nmaster_name = \"m\"\n\
         sentinels = [\"{}\", \"{}\"]\n",
        at(refused),
        at(server.port)
    ));
    daemon.signal("HUP");
    reloads(&daemon, 1);
    wait_until(
        Duration::from_secs(10),
        "a failed sentinel discovery",
        || daemon.log_text().contains("sentinel: no primary"),
    );
    // A URL that does not parse: the reload is refused.
    config(&format!(
        "[redis]\nmode = \"cluster\"\nnodes = [\"redis://u:{password}@127.0.0.1:{refused}\"]\n"
    ));
    daemon.signal("HUP");
    reloads(&daemon, 2);
    // Cluster mode with seeds that refuse.
    config(&format!(
        "[redis]\nmode = \"cluster\"\nnodes = [\"{}\"]\n",
        at(refused)
    ));
    daemon.signal("HUP");
    reloads(&daemon, 3);
    wait_until(Duration::from_secs(10), "a failed cluster connect", || {
        daemon.log_text().contains("cluster (seeds")
    });

    let log = daemon.log_text();
    assert!(log.contains("reload failed"), "{log}");
    for form in [password.to_owned(), encoded.clone(), encoded.to_lowercase()] {
        assert!(!log.contains(&form), "{form:?} in the log:\n{log}");
    }
}
