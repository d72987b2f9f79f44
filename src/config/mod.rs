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
    pub url: RedisUrl,
    /// `standalone`; `sentinel` to find the primary through `sentinels`;
    /// `cluster` to sweep every primary of a Redis Cluster.
    pub mode: RedisMode,
    /// More seed URLs in cluster mode, besides `url`: any one reachable node
    /// is enough to learn the topology. From the environment as one
    /// comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub nodes: Vec<RedisUrl>,
    /// Sentinel URLs (`redis://host:26379`), in sentinel mode. From the
    /// environment as one comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub sentinels: Vec<RedisUrl>,
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
            url: RedisUrl::default(),
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

/// The files of `redis.tls_*`, read and parsed: what a TLS connection is
/// set up with.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The PEM text of `redis.tls_ca_file`: one or more CA certificates.
    pub ca: Option<Vec<u8>>,
    /// The PEM texts of `redis.tls_cert_file` and `redis.tls_key_file`: a
    /// certificate chain and the private key of its first certificate.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("client", &self.client.as_ref().map(|_| Secret::REDACTED))
            .finish()
    }
}

impl RedisSettings {
    /// The TLS files, read and checked the way the TLS library will use
    /// them, or `None` when none is set: the CA file holds at least one
    /// certificate and nothing that fails to parse as one, the certificate
    /// file likewise, and the key file holds a private key that is the key
    /// of the certificate. Each problem names its key and file; without
    /// these checks an empty CA file is silently ignored (the handshake then
    /// fails with "UnknownIssuer") and a bad client certificate shows as the
    /// server's "peer sent no certificates".
    ///
    /// # Errors
    /// The first file that cannot be read or is not what its key needs.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))
        };
        let certificates = |key: &str, path: &Path, pem: &[u8]| {
            let bad =
                |what: String| ConfigError::invalid(key, format!("{}: {what}", path.display()));
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(bad(
                    "no certificate in it (a PEM -----BEGIN CERTIFICATE----- block)".to_owned(),
                ));
            }
            for (n, cert) in certs.iter().enumerate() {
                // Parses the certificate as X.509, which PEM armour alone does not.
                rustls::RootCertStore::empty()
                    .add(cert.clone())
                    .map_err(|e| bad(format!("certificate {} is not valid X.509: {e}", n + 1)))?;
            }
            Ok(certs)
        };
        let ca = match &self.tls_ca_file {
            Some(path) => {
                let pem = read("redis.tls_ca_file", path)?;
                certificates("redis.tls_ca_file", path, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let client = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read("redis.tls_cert_file", cert_path)?;
                let chain = certificates("redis.tls_cert_file", cert_path, &cert_pem)?;
                let key_pem = read("redis.tls_key_file", key_path)?;
                let bad_key = |what: String| {
                    ConfigError::invalid(
                        "redis.tls_key_file",
                        format!("{}: {what}", key_path.display()),
                    )
                };
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    let why = match e {
                        rustls::pki_types::pem::Error::NoItemsFound => String::new(),
                        other => format!(": {other}"),
                    };
                    bad_key(format!(
                        "no private key in it (an unencrypted PEM PKCS#8, PKCS#1 or SEC1 key){why}"
                    ))
                })?;
                let provider = rustls::crypto::ring::default_provider();
                match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
                    Ok(_) => {}
                    Err(rustls::Error::InconsistentKeys(_)) => {
                        return Err(bad_key(format!(
                            "is not the key of the certificate in redis.tls_cert_file ({})",
                            cert_path.display()
                        )))
                    }
                    Err(e) => return Err(bad_key(format!("not a usable private key: {e}"))),
                }
                Some((cert_pem, key_pem))
            }
            // Validation reports a certificate without its key and the reverse.
            _ => None,
        };
        if ca.is_none() && client.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsFiles { ca, client }))
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
/// split lists by also re-typing every other variable) a comma-separated
/// string; each item parsed.
fn list_or_comma_separated<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    let items = match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    items
        .iter()
        .map(|item| item.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// A Redis URL of the settings (`redis.url`, `redis.nodes`,
/// `redis.sentinels`): parsed once, when the settings are read, and only
/// ever printed redacted.
///
/// `Display`, `Debug` and `Serialize` all write [`redact_url`]'s form, and
/// the error for a URL that does not parse shows that form too, so neither
/// `check-config`, an error message nor a log line can show a password the
/// URL holds. Connecting uses [`RedisUrl::connection_info`].
#[derive(Clone)]
pub struct RedisUrl {
    text: String,
    info: redis::ConnectionInfo,
}

impl RedisUrl {
    /// Where Redis is by default.
    pub const DEFAULT: &'static str = "redis://127.0.0.1:6379";

    /// Parses a `redis://`, `rediss://` or `unix://` URL as redis-rs does.
    ///
    /// # Errors
    /// One line saying why, with the URL redacted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let redacted = redact_url(text);
        // The url crate says what is wrong ("invalid port number"); redis-rs
        // only says "did not parse". Neither message quotes the input.
        let reason = match url::Url::parse(text) {
            Err(e) => e.to_string(),
            Ok(_) => match redis::IntoConnectionInfo::into_connection_info(text) {
                Ok(info) => {
                    return Ok(Self {
                        text: text.to_owned(),
                        info,
                    })
                }
                // The detail, when there is one, quotes part of the URL
                // (the `protocol` value): leave it out.
                Err(e) => match e.detail() {
                    Some(detail) => e.to_string().replace(detail, Secret::REDACTED),
                    None => e.to_string(),
                },
            },
        };
        let hint = if text.contains('@') {
            " (percent-encode / ? # @ : % and spaces in a user name or password, e.g. / as %2F)"
        } else {
            ""
        };
        Err(format!(
            "{redacted:?} is not a redis:// or rediss:// URL: {reason}{hint}"
        ))
    }

    /// What redis-rs connects with: address, credentials, database, TLS.
    pub fn connection_info(&self) -> &redis::ConnectionInfo {
        &self.info
    }

    /// True for `rediss://` (TLS).
    pub fn is_tls(&self) -> bool {
        matches!(self.info.addr(), redis::ConnectionAddr::TcpTls { .. })
    }
}

impl Default for RedisUrl {
    fn default() -> Self {
        match Self::parse(Self::DEFAULT) {
            Ok(url) => url,
            // A constant that parses: the unit test `the_default_url_parses`
            // runs exactly this.
            Err(e) => unreachable!("{e}"),
        }
    }
}

impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.text))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisUrl")
            .field(&redact_url(&self.text))
            .finish()
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redact_url(&self.text))
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(text.trim()).map_err(serde::de::Error::custom)
    }
}

/// A Redis URL with everything that can hold a secret replaced by
/// [`Secret::REDACTED`]: the password (the whole user part when it has no
/// `:`), and every query value but a `db` number or a `protocol` version
/// (unix socket URLs carry `pass=` there).
///
/// Written for URLs that do not parse as much as for those that do: the
/// user part ends at the *last* `@` (a password may hold `/`, `?`, `@`), a
/// port that is not a number is redacted (a password that lost its `@`),
/// an `@` after a `?` or `#` leaves nothing but the scheme, and text with
/// no `://` that is not a unix socket URL is redacted whole.
pub fn redact_url(url: &str) -> String {
    const REDACTED: &str = Secret::REDACTED;
    let (scheme, separator, rest) = match url.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => (scheme, "://", rest),
        _ => match url.split_once(':') {
            Some((scheme, rest)) if scheme.ends_with("unix") && is_scheme(scheme) => {
                (scheme, ":", rest)
            }
            _ => return REDACTED.to_owned(),
        },
    };
    let mut out = format!("{scheme}{separator}");
    let tail = match rest.rfind('@') {
        None => rest,
        // Either a password holding `?` or `#`, or an `@` in the query:
        // no part can be told apart from a secret.
        Some(at) if rest.find(['?', '#']).is_some_and(|q| q < at) => {
            return out + REDACTED;
        }
        Some(at) => {
            match rest[..at].split_once(':') {
                Some((user, _password)) => out += &format!("{user}:{REDACTED}@"),
                // `redis://secret@host` puts the password in the user position.
                None => out += &format!("{REDACTED}@"),
            }
            &rest[at + 1..]
        }
    };
    let (tail, fragment) = match tail.split_once('#') {
        Some((tail, fragment)) => (tail, Some(fragment)),
        None => (tail, None),
    };
    let (host_path, query) = match tail.split_once('?') {
        Some((host_path, query)) => (host_path, Some(query)),
        None => (tail, None),
    };
    let (authority, path) = host_path.split_at(host_path.find('/').unwrap_or(host_path.len()));
    // `[::1]:6379`: the port follows the bracket.
    let port_at = if authority.starts_with('[') {
        authority.find("]:").map(|i| i + 1)
    } else {
        authority.find(':')
    };
    match port_at {
        Some(i) if !authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            out += &format!("{}:{REDACTED}", &authority[..i]);
        }
        _ => out += authority,
    }
    out += path;
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                // Only values that cannot be a secret: a short number, or
                // a protocol redis-rs knows.
                Some(("db", value))
                    if (1..=4).contains(&value.len())
                        && value.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    pair.to_owned()
                }
                Some(("protocol", "2" | "3" | "resp2" | "resp3")) => pair.to_owned(),
                Some((key, _))
                    if ["db", "protocol", "user", "username", "pass", "password"]
                        .contains(&key) =>
                {
                    format!("{key}={REDACTED}")
                }
                _ => REDACTED.to_owned(),
            })
            .collect();
        out += &format!("?{}", pairs.join("&"));
    }
    if let Some(fragment) = fragment {
        out += "#";
        out += if fragment == "insecure" {
            fragment
        } else {
            REDACTED
        };
    }
    out
}

/// A URL scheme (RFC 3986): a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Largest `sweep.scan_count`. One SCAN call runs to its end inside Redis's
/// single thread, visiting about COUNT buckets of the keyspace: every other
/// client waits that long (100 000 buckets: a few milliseconds), and the
/// reply holds up to that many keys. A huge COUNT walks the whole keyspace in
/// one call and returns every key at once.
pub const MAX_SCAN_COUNT: u32 = 100_000;

/// Largest `sweep.batch_size`. Redis's pipelining guide suggests batches of
/// about 10 000 commands; a longer pipeline only grows the buffers on both
/// sides, its replies included.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// Largest `sweep.max_in_flight`. Redis runs one command at a time, so more
/// pipelines in flight only hide network latency, while each holds a batch
/// of keys: a primary's sweep holds about (2 × max_in_flight + 1) batches,
/// at the two maxima 650 000 keys (some 65 MB with 100-byte keys).
pub const MAX_IN_FLIGHT: u32 = 32;

/// Longest `sweep.interval`: 366 days. A sweep less than once a year is
/// no sweep; a yearly cron schedule is the way to ask for one. The bound
/// keeps every tick the interval plans inside the calendar (an interval of
/// 500000000y has no next tick), so such a value is refused here, when the
/// configuration is read, and not found out when the daemon runs.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 86_400);

/// Longest `lock.ttl`: one day. The lease of a daemon that dies mid-sweep
/// keeps the others from that Redis (or primary) until it expires, so a
/// longer one stops the fleet sweeping for longer than any sweep needs
/// between two renewals (every third of it); and a value near the top of the
/// range does not fit Redis's millisecond expiry, which refused every lease
/// ("value is not an integer or out of range") while check-config passed.
pub const MAX_LOCK_TTL: Duration = Duration::from_secs(86_400);

/// Largest `sweep.max_clock_skew` (`0s` turns the check off). Every UTC
/// offset is a whole number of quarter hours, so a host whose clock is set
/// in local time or the wrong time zone (or not moved for daylight saving)
/// is off by at least 15 minutes: a limit below that catches it, while an
/// NTP-synced clock is off by milliseconds, far inside it. A larger limit
/// would be the check turned off without saying so (`100y` used to pass),
/// and would let a clock that far ahead remove live tokens.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);

/// Largest `sweep.unit_guard_sample`. The sampled keys are held until each
/// has been read; a few dozen already tell seconds from milliseconds.
pub const MAX_UNIT_GUARD_SAMPLE: u32 = 10_000;

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
    /// than this ("0s" turns the check off), at most [`MAX_CLOCK_SKEW`]. A
    /// clock running ahead would remove live tokens.
    #[serde(with = "human_duration")]
    pub max_clock_skew: Duration,
    /// SCAN COUNT hint: how many slots Redis visits per SCAN call, at most
    /// [`MAX_SCAN_COUNT`].
    pub scan_count: u32,
    /// Keys per pipeline of ZREMRANGEBYSCORE, at most [`MAX_BATCH_SIZE`].
    pub batch_size: u32,
    /// Pipelines sent before waiting for the oldest one's replies (per
    /// node), at most [`MAX_IN_FLIGHT`].
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
    /// How many sets the unit guard inspects, at most [`MAX_UNIT_GUARD_SAMPLE`].
    pub unit_guard_sample: u32,
    /// Daemon schedule as an interval (`"5m"`): whole seconds, from 1s to
    /// [`MAX_INTERVAL`]. Exactly one of `interval` and `schedule` may be set.
    #[serde(with = "human_duration_option")]
    pub interval: Option<Duration>,
    /// Daemon schedule as a cron expression with seconds, in UTC:
    /// `"0 */5 * * * *"`. Exactly one of `interval` and `schedule` may be set.
    pub schedule: Option<String>,
    /// Sweep once as soon as the daemon starts, before the first tick.
    pub run_on_start: bool,
    /// Delay each scheduled sweep by a random time up to this, so replicas
    /// started together do not all hit Redis at the same instant. Shorter
    /// than the interval, or than the shortest gap between two ticks of the
    /// cron schedule (over the next two years), so every tick can sweep.
    #[serde(with = "human_duration")]
    pub jitter: Duration,
    /// After SIGTERM/SIGINT, how long a running sweep may take to finish its
    /// batches in flight before the daemon exits anyway.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
}

/// The longest token lifetime `issue` accepts (10 years, 3650 days). It keeps
/// every score and key expiry exact (far below 2^53 milliseconds) and well
/// inside the 50 years ahead that the sweeper's unit guard takes for a
/// plausible expiry, so a long-lived token can never make a set look like
/// the other unit.
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// What is wrong with a token lifetime (`auth.ttl`, the `ttl` of
/// `TokenService::issue`, `--ttl`), or `None` when it is one a token can
/// have: whole seconds (`exp` is whole seconds: 1.5 s would silently become
/// 1 s), at least one second (a lifetime of 0 would issue a token that is
/// expired as it is handed out), at most [`MAX_TTL`]. Long values are
/// written in days, as the limit is.
pub fn ttl_problem(ttl: Duration) -> Option<String> {
    if ttl > MAX_TTL {
        Some(format!(
            "{} is longer than the longest token lifetime, {}",
            in_days(ttl),
            in_days(MAX_TTL)
        ))
    } else if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 {
        Some(format!(
            "must be whole seconds, at least 1s, got {}",
            in_days(ttl)
        ))
    } else {
        None
    }
}

impl SweepSettings {
    /// When sweeps run, from `schedule` or `interval` (validation makes sure
    /// exactly one is set).
    pub fn schedule(&self) -> crate::schedule::Schedule {
        use crate::schedule::Schedule;
        match (&self.schedule, self.interval) {
            (Some(cron), _) => Schedule::Cron(cron.clone()),
            (None, Some(interval)) => Schedule::Interval(interval),
            // Validation rejects this; five minutes is the documented default.
            (None, None) => Schedule::Interval(Duration::from_secs(300)),
        }
    }
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
    /// over within the period plus this. From 1s to [`MAX_LOCK_TTL`].
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
    /// Lifetime of issued tokens: whole seconds, from 1s to 3650 days
    /// ([`MAX_TTL`]; see [`ttl_problem`]).
    #[serde(with = "human_duration")]
    pub ttl: Duration,
    /// Clock tolerance, whole seconds up to 1h: a token verifies until `exp`
    /// plus this (stored-score check and key TTL included), and `nbf`/`iat`
    /// may be this far ahead. `sweep.grace` must be at least this long.
    #[serde(with = "human_duration")]
    pub leeway: Duration,
    /// Keep at most this many sessions per user; 0 = no limit. A login never
    /// drops its own session; of the others it drops those that expire first
    /// (the oldest logins, with one ttl). Ties go in the members' order.
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
        }
        if r.mode == RedisMode::Cluster {
            // The URLs parsed when they were read; what is left is what a
            // cluster allows.
            for (key, seed) in std::iter::once(("redis.url", &r.url))
                .chain(r.nodes.iter().map(|seed| ("redis.nodes", seed)))
            {
                if seed.connection_info().redis_settings().db() != 0 {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{:?}: Redis Cluster has only database 0", seed.to_string()),
                    ));
                }
            }
        }
        let tls_files = [&r.tls_ca_file, &r.tls_cert_file, &r.tls_key_file];
        if tls_files.iter().any(|f| f.is_some()) && !r.url.is_tls() {
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
        r.tls_files()?;
        positive("redis.connect_timeout", r.connect_timeout)?;
        positive("redis.response_timeout", r.response_timeout)?;

        let s = &self.sweep;
        if s.pattern.is_empty() {
            return Err(ConfigError::invalid("sweep.pattern", "must not be empty"));
        }
        if s.max_clock_skew > MAX_CLOCK_SKEW {
            return Err(ConfigError::invalid(
                "sweep.max_clock_skew",
                format!(
                    "must be at most {} (0s turns the check off), got {}: a clock set in the \
                     wrong time zone is off by 15 minutes or more",
                    in_days(MAX_CLOCK_SKEW),
                    in_days(s.max_clock_skew)
                ),
            ));
        }
        between_one_and("sweep.scan_count", s.scan_count, MAX_SCAN_COUNT)?;
        between_one_and("sweep.batch_size", s.batch_size, MAX_BATCH_SIZE)?;
        between_one_and("sweep.max_in_flight", s.max_in_flight, MAX_IN_FLIGHT)?;
        // Not bounded: each primary is its own Redis process, and the
        // cluster's size bounds how many run at once.
        between_one_and("sweep.max_parallel_nodes", s.max_parallel_nodes, u32::MAX)?;
        // The bound holds with the guard off too: it is one reload from on.
        if s.unit_guard || s.unit_guard_sample > MAX_UNIT_GUARD_SAMPLE {
            between_one_and(
                "sweep.unit_guard_sample",
                s.unit_guard_sample,
                MAX_UNIT_GUARD_SAMPLE,
            )?;
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
                if let Err(e) = crate::schedule::Schedule::parse_cron(cron) {
                    return Err(ConfigError::invalid(
                        "sweep.schedule",
                        format!("{cron:?} {e}"),
                    ));
                }
            }
            (None, Some(interval)) => {
                if interval < Duration::from_secs(1)
                    || interval.subsec_nanos() != 0
                    || interval > MAX_INTERVAL
                {
                    return Err(ConfigError::invalid(
                        "sweep.interval",
                        format!(
                            "must be whole seconds, at least 1s and at most {}, got {}",
                            in_days(MAX_INTERVAL),
                            in_days(interval)
                        ),
                    ));
                }
            }
        }
        // Each scheduled sweep first waits a random time up to the jitter; a
        // jitter as long as the gap to the next tick makes every tick land on
        // a round still waiting, and no sweep ever runs.
        let schedule = s.schedule();
        let (limit, what) = match (&schedule, schedule.shortest_gap(wall_clock())) {
            (crate::schedule::Schedule::Interval(_), Some(gap)) => {
                (gap, "sweep.interval".to_owned())
            }
            (_, Some(gap)) => (
                gap,
                format!(
                    "the shortest gap between two ticks of sweep.schedule {:?}",
                    s.schedule.as_deref().unwrap_or_default()
                ),
            ),
            // Not two ticks within the next two years (Feb 29 only): the
            // interval's bound, so the jitter stays a delay and never an end
            // to sweeping.
            (_, None) => (
                MAX_INTERVAL,
                "the longest sweep.interval (the schedule has no two ticks within two years)"
                    .to_owned(),
            ),
        };
        if s.jitter >= limit {
            return Err(ConfigError::invalid(
                "sweep.jitter",
                format!(
                    "must be shorter than {what}, {}, got {}: each sweep first waits up to the jitter",
                    in_days(limit),
                    in_days(s.jitter)
                ),
            ));
        }
        positive("sweep.shutdown_timeout", s.shutdown_timeout)?;
        if self.lock.enabled {
            if self.lock.key.is_empty() {
                return Err(ConfigError::invalid("lock.key", "must not be empty"));
            }
            if self.lock.key.contains(['{', '}']) {
                return Err(ConfigError::invalid(
                    "lock.key",
                    format!(
                        "must not contain {{ or }}, got {:?}: on a Redis Cluster each primary's \
                         lease is the key plus a hash tag of its own, and a hash tag in the key \
                         would put every lease on one primary",
                        self.lock.key
                    ),
                ));
            }
            if self.lock.ttl < Duration::from_secs(1) || self.lock.ttl > MAX_LOCK_TTL {
                return Err(ConfigError::invalid(
                    "lock.ttl",
                    format!(
                        "must be from 1s to {}, got {}",
                        in_days(MAX_LOCK_TTL),
                        in_days(self.lock.ttl)
                    ),
                ));
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
        if let Some(problem) = ttl_problem(a.ttl) {
            return Err(ConfigError::invalid("auth.ttl", problem));
        }
        // A token inside the leeway still verifies; a sweep with less grace
        // would already have removed its session.
        if self.sweep.grace < a.leeway {
            return Err(ConfigError::invalid(
                "sweep.grace",
                format!(
                    "must be at least auth.leeway ({}), or tokens inside the leeway are swept; got {}",
                    humantime::format_duration(a.leeway),
                    humantime::format_duration(self.sweep.grace)
                ),
            ));
        }
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

/// A duration for an error message: under a day as humantime writes it
/// ("1s 500ms"), from a day on in days and the rest ("3651 days",
/// "3650 days 1s"), never in humantime's months and years (which are not
/// whole days: "9years 11months 28days 11h 24m").
pub fn in_days(duration: Duration) -> String {
    const DAY: u64 = 86_400;
    let days = duration.as_secs() / DAY;
    if days == 0 {
        return humantime::format_duration(duration).to_string();
    }
    let rest = duration - Duration::from_secs(days * DAY);
    let unit = if days == 1 { "day" } else { "days" };
    if rest.is_zero() {
        format!("{days} {unit}")
    } else {
        format!("{days} {unit} {}", humantime::format_duration(rest))
    }
}

/// The host clock for the schedule bounds, without `chrono::Utc::now`'s
/// panics. A clock before 1970 or past chrono's range (the year 262143) is
/// for the sweep's clock check to refuse, in one line naming it, not a
/// panic while the configuration is read. The bounds then count from the
/// epoch, which every interval and cron schedule ticks after as well.
fn wall_clock() -> chrono::DateTime<chrono::Utc> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|since| {
            chrono::DateTime::from_timestamp(
                i64::try_from(since.as_secs()).ok()?,
                since.subsec_nanos(),
            )
        })
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
}

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be longer than 0s"));
    }
    Ok(())
}

fn between_one_and(key: &str, value: u32, max: u32) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1, got 0"));
    }
    if value > max {
        return Err(ConfigError::invalid(
            key,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
        assert_eq!(redact_url("redis://[::1]:6379/0"), "redis://[::1]:6379/0");
        assert_eq!(redact_url("redis://:p@ss@h"), "redis://:<redacted>@h");
        assert_eq!(redact_url("http://localhost"), "http://localhost");
        assert_eq!(
            redact_url("rediss://:pw@h:6380/#insecure"),
            "rediss://:<redacted>@h:6380/#insecure"
        );
    }

    #[test]
    fn redact_url_finds_passwords_that_break_the_url() {
        // `/` in the password: the user part still ends at the last `@`.
        assert_eq!(
            redact_url("redis://u:ab/cd+ef=@h:6379/1"),
            "redis://u:<redacted>@h:6379/1"
        );
        // `?` or `#` before the `@`: nothing can be told apart.
        assert_eq!(redact_url("redis://u:a?b@h"), "redis://<redacted>");
        assert_eq!(redact_url("redis://u:a#b@h"), "redis://<redacted>");
        // An `@` in a query: the same.
        assert_eq!(
            redact_url("unix:///s.sock?user=a@b&pass=x"),
            "unix://<redacted>"
        );
        // A password that lost its `@` shows as a port.
        assert_eq!(redact_url("redis://:sec:ret"), "redis://:<redacted>");
        assert_eq!(redact_url("redis://h:sec"), "redis://h:<redacted>");
        // Not a URL at all: may be a secret in the wrong setting.
        assert_eq!(redact_url("hunter2"), "<redacted>");
        assert_eq!(redact_url("hunter:2"), "<redacted>");
    }

    #[test]
    fn redact_url_hides_query_values_but_db_and_protocol() {
        assert_eq!(
            redact_url("unix:///run/r.sock?user=u&pass=s3cret&db=2"),
            "unix:///run/r.sock?user=<redacted>&pass=<redacted>&db=2"
        );
        assert_eq!(
            redact_url("redis+unix:/run/r.sock?pass=s3cret"),
            "redis+unix:/run/r.sock?pass=<redacted>"
        );
        assert_eq!(
            redact_url("redis://h/?protocol=resp3&password=x&x=y"),
            "redis://h/?protocol=resp3&password=<redacted>&<redacted>"
        );
        assert_eq!(
            redact_url("unix:///s?db=secret&protocol=s3cret&db=12345"),
            "unix:///s?db=<redacted>&protocol=<redacted>&db=<redacted>"
        );
    }

    #[test]
    fn the_default_url_parses() {
        let url = RedisUrl::parse(RedisUrl::DEFAULT).unwrap();
        assert_eq!(url.to_string(), RedisUrl::DEFAULT);
        assert_eq!(RedisUrl::default(), url);
    }

    #[test]
    fn a_url_prints_redacted_every_way() {
        let url = RedisUrl::parse("redis://u:s3cret@h:1/2").unwrap();
        for printed in [
            url.to_string(),
            format!("{url:?}"),
            serde_json::to_string(&url).unwrap(),
        ] {
            assert!(!printed.contains("s3cret"), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
        assert_eq!(
            url.connection_info().redis_settings().password(),
            Some("s3cret")
        );
        let err = RedisUrl::parse("redis://u:s3/cret@h:1").unwrap_err();
        assert!(!err.contains("cret"), "{err}");
        assert!(err.contains("invalid port number"), "{err}");
        let err = RedisUrl::parse("redis://h/?protocol=s3cret").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn in_days_never_writes_months_or_years() {
        assert_eq!(in_days(Duration::ZERO), "0s");
        assert_eq!(in_days(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(in_days(Duration::from_secs(86_399)), "23h 59m 59s");
        assert_eq!(in_days(Duration::from_secs(86_400)), "1 day");
        assert_eq!(in_days(Duration::from_secs(3651 * 86_400)), "3651 days");
        assert_eq!(
            in_days(Duration::from_secs(3650 * 86_400 + 1)),
            "3650 days 1s"
        );
    }

    #[test]
    fn one_of_lists_choices() {
        assert_eq!(one_of(&["ms", "s"]), r#""ms" or "s""#);
        assert_eq!(one_of(&["a", "b", "c"]), r#""a", "b" or "c""#);
    }
}
