//! Typed settings, their layering and their validation.
//!
//! Layers, later wins: the built-in defaults (the `Default` impls below, which
//! `config/default.toml` mirrors key for key), the TOML file given with
//! `--config`, then environment variables `TOKEN_SWEEPER__<SECTION>__<KEY>`.
//!
//! Every problem is reported as one [`ConfigError`] that names the key and the
//! bad value, so an operator can fix it from a single log line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "TOKEN_SWEEPER";
/// Separates the prefix, the section and the key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// A configuration problem, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value that is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key, e.g. `sweep.score_unit`.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
    /// The file could not be read or is not valid TOML.
    #[error("{path}: {message}")]
    File {
        /// The file as given on the command line.
        path: PathBuf,
        /// What went wrong reading or parsing it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Turns the `config` crate's error into one line that starts with the key.
    ///
    /// The crate appends "for key `x`" at the end; operators scan for the key
    /// first, so it is moved to the front.
    fn from_layering(err: config::ConfigError, file: Option<&Path>) -> Self {
        match err {
            config::ConfigError::At {
                error,
                key: Some(key),
                ..
            } => Self::invalid(key, error.to_string()),
            config::ConfigError::Type {
                unexpected,
                expected,
                key: Some(key),
                ..
            } => Self::invalid(key, format!("expected {expected}, got {unexpected}")),
            config::ConfigError::NotFound(key) => Self::invalid(key, "missing"),
            config::ConfigError::FileParse { cause, .. } => Self::File {
                path: file.map(Path::to_path_buf).unwrap_or_default(),
                message: one_line(&cause.to_string()),
            },
            // Errors at the top level (an unknown section) carry no key.
            other => Self::invalid("(top level)", other.to_string()),
        }
    }
}

/// Folds the TOML parser's multi-line report (position, source snippet,
/// caret, reason) into "position: reason".
fn one_line(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let first = lines.first().copied().unwrap_or_default();
    // The snippet lines start with a line number or '|'; the reason does not.
    let reason = lines
        .iter()
        .skip(1)
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "));
    match reason {
        Some(reason) => format!("{first}: {reason}"),
        None => first.to_owned(),
    }
}

/// A secret string: never printed, never serialized in clear.
///
/// `Debug`, `Display` and `Serialize` all write [`Secret::REDACTED`], so a
/// settings dump or a log line cannot leak it by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// What is printed instead of the secret.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Self::REDACTED)
    }
}

/// Declares a string-valued enum whose parse error reads
/// `expected "a" or "b", got "c"`.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The spelling used in configuration files.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "expected {}, got {other:?}",
                        one_of(&[$($text),+])
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn one_of(choices: &[&str]) -> String {
    let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

string_enum! {
    /// The unit of the scores in the token sets.
    ScoreUnit {
        /// Milliseconds since the Unix epoch (JavaScript's `Date.now()`).
        Milliseconds = "ms",
        /// Seconds since the Unix epoch (a JWT's `exp`).
        Seconds = "s",
    }
}

impl ScoreUnit {
    /// How many microseconds one unit is.
    pub fn micros(self) -> i128 {
        match self {
            Self::Milliseconds => 1_000,
            Self::Seconds => 1_000_000,
        }
    }
}

string_enum! {
    /// How the Redis server is found.
    RedisMode {
        /// One server at `redis.url`.
        Standalone = "standalone",
        /// The primary that `redis.sentinels` name for `redis.master_name`.
        Sentinel = "sentinel",
        /// A Redis Cluster, found through the seed nodes `redis.url` and `redis.nodes`.
        Cluster = "cluster",
    }
}

string_enum! {
    /// Where "now" comes from when computing the cutoff.
    ClockSource {
        /// Redis `TIME`: one clock for every sweeper and every writer.
        Redis = "redis",
        /// The host clock of the sweeper.
        Local = "local",
    }
}

string_enum! {
    /// Log line format.
    LogFormat {
        /// Human-readable lines.
        Text = "text",
        /// One JSON object per line, for log shippers.
        Json = "json",
    }
}

/// Serde adapter for durations written as human strings (`"30s"`, `"5m"`).
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|_| {
            serde::de::Error::custom(format!(
                "expected a duration such as \"30s\" or \"5m\", got {text:?}"
            ))
        })
    }
}

/// [`human_duration`] for optional keys.
mod human_duration_option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::human_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::human_duration::deserialize(d).map(Some)
    }
}

/// How to reach Redis.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS.
    /// Any password in it is redacted when printed; prefer `password`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// `standalone`; `sentinel` to find the primary through `sentinels`;
    /// `cluster` to sweep every primary of a Redis Cluster.
    pub mode: RedisMode,
    /// More seed URLs in cluster mode, besides `url`: any one reachable node
    /// is enough to learn the topology. From the environment as one
    /// comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub nodes: Vec<String>,
    /// Sentinel URLs (`redis://host:26379`), in sentinel mode. From the
    /// environment as one comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub sentinels: Vec<String>,
    /// The master name the sentinels monitor, in sentinel mode.
    pub master_name: Option<String>,
    /// ACL user name; overrides one given in the URL.
    pub username: Option<String>,
    /// Password; set it with `TOKEN_SWEEPER__REDIS__PASSWORD` or `password_file`,
    /// never on the command line.
    pub password: Option<Secret>,
    /// File whose content (trailing newline removed) is the password, e.g. a
    /// mounted Kubernetes secret.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) that sign the server's certificate, for
    /// `rediss://` servers with a private CA (else the system trust store).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (`tls-auth-clients yes`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// How long establishing a connection may take before the address is reported unreachable.
    #[serde(with = "human_duration")]
    pub connect_timeout: Duration,
    /// How long one reply may take. Generous, because a reply to a pipeline
    /// waits behind the other pipelines in flight.
    #[serde(with = "human_duration")]
    pub response_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            mode: RedisMode::Standalone,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            username: None,
            password: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
        }
    }
}

impl RedisSettings {
    /// The password from `password` or `password_file`, whichever is set.
    ///
    /// # Errors
    /// When the password file cannot be read.
    pub fn resolved_password(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            "redis.password_file",
            self.password.as_ref(),
            self.password_file.as_deref(),
        )
    }
}

/// Reads a secret given either inline or as a file; validation has already
/// made sure not both are set.
pub(crate) fn read_secret(
    file_key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(secret), _) => Ok(Some(secret.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
            .map_err(|e| ConfigError::invalid(file_key, format!("{}: {e}", path.display()))),
        (None, None) => Ok(None),
    }
}

/// A TOML list, or (from the environment, where the config crate can only
/// split lists by also re-typing every other variable) a comma-separated string.
fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn serialize_redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// Replaces the password of a Redis URL with [`Secret::REDACTED`].
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => {
            format!("{scheme}://{user}:{}@{host}{path}", Secret::REDACTED)
        }
        // `redis://secret@host` puts the password in the user position.
        None => format!("{scheme}://{}@{host}{path}", Secret::REDACTED),
    }
}

/// What a sweep does and how hard it pushes Redis.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepSettings {
    /// SCAN MATCH pattern of the token sets.
    pub pattern: String,
    /// Unit of the scores (token expiry times).
    pub score_unit: ScoreUnit,
    /// Where "now" comes from.
    pub clock: ClockSource,
    /// Extra time a token is kept after its expiry (cutoff = now - grace).
    #[serde(with = "human_duration")]
    pub grace: Duration,
    /// Refuse to sweep when the Redis clock and the host clock differ by more
    /// than this ("0s" turns the check off). A clock running ahead would
    /// remove live tokens.
    #[serde(with = "human_duration")]
    pub max_clock_skew: Duration,
    /// SCAN COUNT hint: how many slots Redis visits per SCAN call.
    pub scan_count: u32,
    /// Keys per pipeline of ZREMRANGEBYSCORE.
    pub batch_size: u32,
    /// Pipelines sent before waiting for the oldest one's replies (per node).
    pub max_in_flight: u32,
    /// In cluster mode, how many primaries are swept at the same time. Each
    /// primary is its own Redis process, so sweeping them in parallel is what
    /// keeps every one of them busy.
    pub max_parallel_nodes: u32,
    /// Upper bound on keys swept per second; 0 means no limit.
    pub max_keys_per_second: u64,
    /// Check a sample of sets before deleting anything: if their scores look
    /// like the other unit, abort. Turn off only for data that is known odd.
    pub unit_guard: bool,
    /// How many sets the unit guard inspects.
    pub unit_guard_sample: u32,
    /// Daemon schedule as an interval (`"5m"`): whole seconds, at least 1s.
    /// Exactly one of `interval` and `schedule` may be set.
    #[serde(with = "human_duration_option")]
    pub interval: Option<Duration>,
    /// Daemon schedule as a cron expression with seconds, in UTC:
    /// `"0 */5 * * * *"`. Exactly one of `interval` and `schedule` may be set.
    pub schedule: Option<String>,
    /// Sweep once as soon as the daemon starts, before the first tick.
    pub run_on_start: bool,
    /// Delay each scheduled sweep by a random time up to this, so replicas
    /// started together do not all hit Redis at the same instant.
    #[serde(with = "human_duration")]
    pub jitter: Duration,
    /// After SIGTERM/SIGINT, how long a running sweep may take to finish its
    /// batches in flight before the daemon exits anyway.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            pattern: "*-tokens".to_owned(),
            score_unit: ScoreUnit::Milliseconds,
            clock: ClockSource::Redis,
            grace: Duration::ZERO,
            max_clock_skew: Duration::from_secs(60),
            scan_count: 1000,
            batch_size: 1000,
            max_in_flight: 8,
            max_parallel_nodes: 16,
            max_keys_per_second: 0,
            unit_guard: true,
            unit_guard_sample: 64,
            interval: Some(Duration::from_secs(300)),
            schedule: None,
            run_on_start: true,
            jitter: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The replica lock: several daemons on one Redis sweep at most once per period.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockSettings {
    /// Take the lock before each sweep. Turn off only for a single daemon.
    pub enabled: bool,
    /// The Redis key of the lock. Daemons that should share work use the same key.
    pub key: String,
    /// While a sweep runs, the lock is kept alive this long at a time
    /// (renewed every third of it); if the holder dies, another daemon takes
    /// over within the period plus this.
    #[serde(with = "human_duration")]
    pub ttl: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key: "token-sweeper:lock".to_owned(),
            ttl: Duration::from_secs(30),
        }
    }
}

/// The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `address:port` to listen on. Loopback by default; the container image
    /// sets `0.0.0.0:9898`.
    pub listen: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9898".to_owned(),
        }
    }
}

string_enum! {
    /// What the auth module stores as the set member for a token.
    MemberKind {
        /// Lowercase hex SHA-256 of the token: a leaked dump of Redis holds no usable token.
        Sha256 = "sha256",
        /// The raw token, only for compatibility with existing data.
        Token = "token",
        /// The token's `jti` claim.
        Jti = "jti",
    }
}

/// The auth path: issuing, verifying, revoking and listing tokens.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Key of a user's set; `{user}` is replaced by the user id. For Redis
    /// Cluster hash tags write `{{user}}-tokens`, which gives `{42}-tokens`.
    pub key_template: String,
    /// What the member of a token is.
    pub member: MemberKind,
    /// JWT signing algorithm: HS256/384/512, RS256/384/512, PS256/384/512,
    /// ES256/384 or EdDSA. Verification accepts this one only.
    pub algorithm: String,
    /// `iss` written into tokens and required when verifying.
    pub issuer: Option<String>,
    /// `aud` written into tokens and required when verifying.
    pub audience: Option<String>,
    /// Lifetime of issued tokens.
    #[serde(with = "human_duration")]
    pub ttl: Duration,
    /// Clock tolerance for `exp`/`nbf` when verifying. Keep `sweep.grace` at
    /// least this long, or a token inside the leeway may already be swept.
    #[serde(with = "human_duration")]
    pub leeway: Duration,
    /// Keep at most this many sessions per user, dropping those that expire
    /// first (the oldest, with one ttl); 0 = no limit. Sessions with the same
    /// `exp` second tie, and which of them goes is unspecified.
    pub max_sessions: u32,
    /// HMAC secret (HS*): set it with `TOKEN_SWEEPER__AUTH__SECRET` or `secret_file`.
    pub secret: Option<Secret>,
    /// File holding the HMAC secret.
    pub secret_file: Option<PathBuf>,
    /// PEM private key (RS*/PS*/ES*/EdDSA), needed to issue.
    pub private_key_file: Option<PathBuf>,
    /// PEM public key (RS*/PS*/ES*/EdDSA), needed to verify.
    pub public_key_file: Option<PathBuf>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            key_template: "{user}-tokens".to_owned(),
            member: MemberKind::Sha256,
            algorithm: "HS256".to_owned(),
            issuer: None,
            audience: None,
            ttl: Duration::from_secs(24 * 3600),
            leeway: Duration::ZERO,
            max_sessions: 0,
            secret: None,
            secret_file: None,
            private_key_file: None,
            public_key_file: None,
        }
    }
}

impl AuthSettings {
    /// The HMAC secret from `secret` or `secret_file`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn resolved_secret(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            "auth.secret_file",
            self.secret.as_ref(),
            self.secret_file.as_deref(),
        )
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter such as `info` or `token_sweeper=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// All settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[redis]`
    pub redis: RedisSettings,
    /// `[sweep]`
    pub sweep: SweepSettings,
    /// `[lock]`
    pub lock: LockSettings,
    /// `[metrics]`
    pub metrics: MetricsSettings,
    /// `[log]`
    pub log: LogSettings,
    /// `[auth]`
    pub auth: AuthSettings,
}

impl Settings {
    /// Loads defaults, then `file`, then the process environment, and validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars().collect())
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn load_with_env(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            // Checked here because the config crate's "not found" names no path.
            let problem = if !path.exists() {
                Some("no such file")
            } else if !path.is_file() {
                Some("not a regular file")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    message: problem.to_owned(),
                });
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // No `try_parsing`: it would turn a password such as "1e5" into a float and
        // back into "100000". Numbers and booleans are parsed from the string by the
        // typed deserializer instead.
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(Some(env)),
        );
        let layered = builder
            .build()
            .map_err(|e| ConfigError::from_layering(e, file))?;
        let explicit = |key: &str| layered.get::<config::Value>(key).is_ok();
        let (schedule_set, interval_set) = (explicit("sweep.schedule"), explicit("sweep.interval"));
        let mut settings: Self = layered
            .try_deserialize()
            .map_err(|e| ConfigError::from_layering(e, file))?;
        // The built-in default is an interval; a schedule given on its own
        // replaces it. Both given explicitly is a mistake `validate` reports.
        if schedule_set && !interval_set {
            settings.sweep.interval = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(r.url.as_str()) {
            return Err(ConfigError::invalid(
                "redis.url",
                format!(
                    "{:?} is not a redis:// or rediss:// URL: {e}",
                    redact_url(&r.url)
                ),
            ));
        }
        if r.password.is_some() && r.password_file.is_some() {
            return Err(ConfigError::invalid(
                "redis.password_file",
                "set either redis.password or redis.password_file, not both",
            ));
        }
        if r.mode == RedisMode::Sentinel {
            if r.sentinels.is_empty() {
                return Err(ConfigError::invalid(
                    "redis.sentinels",
                    "sentinel mode needs at least one sentinel URL",
                ));
            }
            if r.master_name.as_deref().unwrap_or_default().is_empty() {
                return Err(ConfigError::invalid(
                    "redis.master_name",
                    "sentinel mode needs the master name the sentinels monitor",
                ));
            }
            for sentinel in &r.sentinels {
                if let Err(e) = redis::IntoConnectionInfo::into_connection_info(sentinel.as_str()) {
                    return Err(ConfigError::invalid(
                        "redis.sentinels",
                        format!("{:?} is not a redis:// URL: {e}", redact_url(sentinel)),
                    ));
                }
            }
        }
        if r.mode == RedisMode::Cluster {
            for seed in std::iter::once(&r.url).chain(&r.nodes) {
                let key = if seed == &r.url {
                    "redis.url"
                } else {
                    "redis.nodes"
                };
                match redis::IntoConnectionInfo::into_connection_info(seed.as_str()) {
                    Err(e) => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{:?} is not a redis:// URL: {e}", redact_url(seed)),
                        ))
                    }
                    // Cluster nodes have database 0 only.
                    Ok(info) if info.redis_settings().db() != 0 => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{:?}: Redis Cluster has only database 0", redact_url(seed)),
                        ))
                    }
                    Ok(_) => {}
                }
            }
        }
        let tls_files = [&r.tls_ca_file, &r.tls_cert_file, &r.tls_key_file];
        if tls_files.iter().any(|f| f.is_some()) && !r.url.starts_with("rediss://") {
            return Err(ConfigError::invalid(
                "redis.url",
                "redis.tls_* files are set, but the URL is not rediss:// (TLS)",
            ));
        }
        if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "redis.tls_key_file",
                "set redis.tls_cert_file and redis.tls_key_file together",
            ));
        }
        positive("redis.connect_timeout", r.connect_timeout)?;
        positive("redis.response_timeout", r.response_timeout)?;

        let s = &self.sweep;
        if s.pattern.is_empty() {
            return Err(ConfigError::invalid("sweep.pattern", "must not be empty"));
        }
        at_least_one("sweep.scan_count", s.scan_count.into())?;
        at_least_one("sweep.batch_size", s.batch_size.into())?;
        at_least_one("sweep.max_in_flight", s.max_in_flight.into())?;
        at_least_one("sweep.max_parallel_nodes", s.max_parallel_nodes.into())?;
        if s.unit_guard {
            at_least_one("sweep.unit_guard_sample", s.unit_guard_sample.into())?;
        }
        match (&s.schedule, s.interval) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "sweep.schedule",
                    "sweep.schedule and sweep.interval are both set; set exactly one",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "sweep.schedule",
                    "neither sweep.schedule nor sweep.interval is set; set exactly one",
                ))
            }
            (Some(cron), None) => {
                if let Err(e) = crate::daemon::Schedule::parse_cron(cron) {
                    return Err(ConfigError::invalid(
                        "sweep.schedule",
                        format!("{cron:?} {e}"),
                    ));
                }
            }
            (None, Some(interval)) => {
                if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 {
                    return Err(ConfigError::invalid(
                        "sweep.interval",
                        format!(
                            "must be whole seconds, at least 1s, got {:?}",
                            humantime::format_duration(interval).to_string()
                        ),
                    ));
                }
            }
        }
        positive("sweep.shutdown_timeout", s.shutdown_timeout)?;
        if self.lock.enabled {
            if self.lock.key.is_empty() {
                return Err(ConfigError::invalid("lock.key", "must not be empty"));
            }
            if self.lock.ttl < Duration::from_secs(1) {
                return Err(ConfigError::invalid("lock.ttl", "must be at least 1s"));
            }
        }
        if let Err(e) = self.metrics.listen.parse::<std::net::SocketAddr>() {
            return Err(ConfigError::invalid(
                "metrics.listen",
                format!("{:?} is not an address:port: {e}", self.metrics.listen),
            ));
        }
        let a = &self.auth;
        if !a.key_template.contains("{user}") {
            return Err(ConfigError::invalid(
                "auth.key_template",
                format!("{:?} must contain {{user}}", a.key_template),
            ));
        }
        if let Err(e) = a.algorithm.parse::<jsonwebtoken::Algorithm>() {
            return Err(ConfigError::invalid(
                "auth.algorithm",
                format!(
                    "{:?} is not a JWT algorithm (HS256, RS256, ES256, EdDSA, ...): {e}",
                    a.algorithm
                ),
            ));
        }
        if a.secret.is_some() && a.secret_file.is_some() {
            return Err(ConfigError::invalid(
                "auth.secret_file",
                "set either auth.secret or auth.secret_file, not both",
            ));
        }
        positive("auth.ttl", a.ttl)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("{:?} is not a log filter: {e}", self.log.level),
            ));
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted.
    ///
    /// # Errors
    /// Only if serialization fails, which the types here do not allow.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::invalid("(top level)", e.to_string()))
    }
}

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be longer than 0s"));
    }
    Ok(())
}

fn at_least_one(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1, got 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_only() {
        assert_eq!(
            redact_url("redis://u:p4ss@h:1/2"),
            "redis://u:<redacted>@h:1/2"
        );
        assert_eq!(redact_url("rediss://p4ss@h"), "rediss://<redacted>@h");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_url("redis://:p@ss@h"), "redis://:<redacted>@h");
    }

    #[test]
    fn one_of_lists_choices() {
        assert_eq!(one_of(&["ms", "s"]), r#""ms" or "s""#);
        assert_eq!(one_of(&["a", "b", "c"]), r#""a", "b" or "c""#);
    }
}
