//! `[redis]`: how to reach Redis (one server, sentinels or a cluster), with
//! which credentials, and the rules that tie its keys together.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::{read_secret, refuse_both};
use super::values::{human_duration, list_or_comma_separated, positive, string_enum};
use super::{ConfigError, RedisUrl, Secret};

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

    /// The rules between `[redis]` keys: one source for the password, what
    /// sentinel and cluster mode need, TLS files only with a TLS URL (and
    /// files that the TLS library will take).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        refuse_both(
            "redis.password",
            "redis.password_file",
            self.password.is_some() && self.password_file.is_some(),
        )?;
        if self.mode == RedisMode::Sentinel {
            if self.sentinels.is_empty() {
                return Err(ConfigError::invalid(
                    "redis.sentinels",
                    "sentinel mode needs at least one sentinel URL",
                ));
            }
            if self.master_name.as_deref().unwrap_or_default().is_empty() {
                return Err(ConfigError::invalid(
                    "redis.master_name",
                    "sentinel mode needs the master name the sentinels monitor",
                ));
            }
        }
        if self.mode == RedisMode::Cluster {
            // The URLs parsed when they were read; what is left is what a
            // cluster allows.
            for (key, seed) in std::iter::once(("redis.url", &self.url))
                .chain(self.nodes.iter().map(|seed| ("redis.nodes", seed)))
            {
                if seed.connection_info().redis_settings().db() != 0 {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{:?}: Redis Cluster has only database 0", seed.to_string()),
                    ));
                }
            }
        }
        let tls_files = [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file];
        if tls_files.iter().any(|f| f.is_some()) && !self.url.is_tls() {
            return Err(ConfigError::invalid(
                "redis.url",
                "redis.tls_* files are set, but the URL is not rediss:// (TLS)",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "redis.tls_key_file",
                "set redis.tls_cert_file and redis.tls_key_file together",
            ));
        }
        self.tls_files()?;
        positive("redis.connect_timeout", self.connect_timeout)?;
        positive("redis.response_timeout", self.response_timeout)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refused(settings: RedisSettings) -> String {
        settings.validate().unwrap_err().to_string()
    }

    #[test]
    fn each_mode_gets_what_it_needs() {
        RedisSettings::default().validate().unwrap();
        let sentinel = RedisSettings {
            mode: RedisMode::Sentinel,
            ..RedisSettings::default()
        };
        assert_eq!(
            refused(sentinel.clone()),
            "redis.sentinels: sentinel mode needs at least one sentinel URL"
        );
        assert_eq!(
            refused(RedisSettings {
                sentinels: vec!["redis://s:26379".parse().unwrap()],
                ..sentinel
            }),
            "redis.master_name: sentinel mode needs the master name the sentinels monitor"
        );
        assert_eq!(
            refused(RedisSettings {
                mode: RedisMode::Cluster,
                nodes: vec!["redis://u:pw@n:7000/3".parse().unwrap()],
                ..RedisSettings::default()
            }),
            "redis.nodes: \"redis://u:<redacted>@n:7000/3\": Redis Cluster has only database 0"
        );
    }

    #[test]
    fn tls_files_need_a_tls_url_and_come_in_pairs() {
        assert_eq!(
            refused(RedisSettings {
                tls_ca_file: Some("/ca.pem".into()),
                ..RedisSettings::default()
            }),
            "redis.url: redis.tls_* files are set, but the URL is not rediss:// (TLS)"
        );
        assert_eq!(
            refused(RedisSettings {
                url: "rediss://h:6380".parse().unwrap(),
                tls_cert_file: Some("/c.pem".into()),
                ..RedisSettings::default()
            }),
            "redis.tls_key_file: set redis.tls_cert_file and redis.tls_key_file together"
        );
        assert_eq!(
            refused(RedisSettings {
                password: Some(Secret::new("p")),
                password_file: Some("/p".into()),
                ..RedisSettings::default()
            }),
            "redis.password_file: set either redis.password or redis.password_file, not both"
        );
    }
}
