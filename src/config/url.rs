//! Redis URLs (`redis.url`, `redis.nodes`, `redis.sentinels`): parsed once
//! when the settings are read, and printed only with every part that can
//! hold a secret redacted. Its own file because redaction must work on text
//! that does not parse as much as on text that does.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::values::from_text;
use super::Secret;

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
        from_text(d, |text| Self::parse(text.trim()))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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
}
