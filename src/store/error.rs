//! The one error type of the store, and how callers read it: whether to
//! reconnect ([`StoreError::is_connection_lost`]) and which `kind` label
//! it counts under in `errors_total` ([`StoreError::kind`]).

/// A failure to reach or talk to Redis, naming the address.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redis-rs could not set up a client with the settings (the URLs
    /// parsed and the TLS files were checked when the settings were read,
    /// so this is what those checks cannot see).
    #[error("cannot set up a Redis client for {address}: {source}")]
    Client {
        /// `host:port` (for a cluster, its seeds).
        address: String,
        /// What redis-rs reported.
        source: redis::RedisError,
    },
    /// A password or TLS file could not be read or is not usable (it
    /// changed since the settings were read), naming its key.
    #[error(transparent)]
    Secret(#[from] crate::config::ConfigError),
    /// The server could not be reached, or the handshake (AUTH, SELECT) failed.
    #[error("cannot connect to Redis at {address}: {source}")]
    Connect {
        /// `host:port` that was tried.
        address: String,
        /// What redis-rs reported.
        source: redis::RedisError,
    },
    /// No seed of a cluster could be reached, nor any of the nodes it
    /// listed when it was last reached.
    #[error("cannot connect to Redis at {address}: {source}; nor through the nodes last seen: {last_seen}")]
    ClusterUnreachable {
        /// The seeds that were tried.
        address: String,
        /// Why the seeds could not be reached.
        source: redis::RedisError,
        /// What each node last seen answered.
        last_seen: String,
    },
    /// No sentinel could name the primary.
    #[error("sentinel: no primary for {master_name:?}: {reasons}")]
    NoPrimary {
        /// `redis.master_name`.
        master_name: String,
        /// What each sentinel said.
        reasons: String,
    },
    /// The server the sentinels named is not (or no longer) a primary.
    #[error("Redis at {address} is not a primary (a failover is under way?)")]
    NotPrimary {
        /// `host:port` of the server.
        address: String,
    },
    /// The cluster named a node by an address that is not `host:port`.
    #[error("cluster: node address {address:?} is not host:port")]
    BadNodeAddress {
        /// What the cluster said.
        address: String,
    },
    /// Redis answered, but not with what the step needs (a malformed
    /// `CLUSTER NODES`, a reply of the wrong shape).
    #[error("Redis at {address}: {what}: unexpected reply: {reason}")]
    BadReply {
        /// `host:port` of the server.
        address: String,
        /// The command or step, e.g. `CLUSTER NODES`.
        what: &'static str,
        /// What was wrong with the reply (never its content: it may hold tokens).
        reason: String,
    },
    /// A command failed on an established connection.
    #[error("Redis at {address}: {what} failed: {source}")]
    Command {
        /// `host:port` of the server.
        address: String,
        /// The command or step that failed, e.g. `SCAN`.
        what: &'static str,
        /// What redis-rs reported.
        source: redis::RedisError,
    },
}

impl StoreError {
    /// Every value [`StoreError::kind`] can return. The metrics start an
    /// `errors_total` series at 0 for each, so that the first error of a
    /// kind shows as an increase (a series born at 1 has none).
    pub const KINDS: &'static [&'static str] = &[
        "oom",
        "noperm",
        "auth",
        "readonly",
        "clusterdown",
        "masterdown",
        "loading",
        "busy",
        "redirect",
        "command",
        "timeout",
        "connection",
        "sentinel",
        "cluster_topology",
        "config",
        "response",
    ];

    /// True when the connection itself is gone (refused, reset, timed out),
    /// as opposed to Redis answering with an error: the caller should
    /// reconnect rather than retry on the same connection.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::ClusterUnreachable { .. }
            | Self::NoPrimary { .. }
            | Self::NotPrimary { .. } => true,
            Self::Command { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_timeout()
                    || source.is_connection_refusal()
                    // The server became a replica (failover): reconnecting
                    // finds the new primary.
                    || source.code() == Some("READONLY")
                    // The cluster is reconfiguring (failover, lost quorum).
                    || source.code() == Some("CLUSTERDOWN")
                    || source.kind() == redis::ErrorKind::ClusterConnectionNotFound
            }
            Self::Client { .. }
            | Self::Secret(_)
            | Self::BadNodeAddress { .. }
            | Self::BadReply { .. } => false,
        }
    }

    /// What kind of failure this is, for the `kind` label of
    /// `errors_total`: `oom`, `noperm`, `auth`, `readonly`, `clusterdown`,
    /// `masterdown`, `loading`, `busy`, `redirect`, `timeout`,
    /// `connection`, `sentinel`, `cluster_topology`, `config`, `response`
    /// (a reply of an unexpected shape) or `command` (any other error reply).
    /// Always one of [`StoreError::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { source, .. }
            | Self::ClusterUnreachable { source, .. }
            | Self::Command { source, .. } => reply_kind(source),
            Self::NoPrimary { .. } => "sentinel",
            // A server the sentinels named that turned out to be a replica.
            Self::NotPrimary { .. } => "readonly",
            Self::BadNodeAddress { .. }
            | Self::BadReply {
                what: "CLUSTER NODES",
                ..
            } => "cluster_topology",
            Self::BadReply { .. } => "response",
            Self::Client { .. } | Self::Secret(_) => "config",
        }
    }
}

/// The `kind` of a redis-rs error: by the reply's error code where there is
/// one, else by what happened to the connection.
fn reply_kind(e: &redis::RedisError) -> &'static str {
    match e.code() {
        Some(code) => code_kind(code, e.detail()),
        // A password refused in the handshake: over RESP2 redis-rs gives
        // it no code (over RESP3 it is WRONGPASS).
        None if e.kind() == redis::ErrorKind::AuthenticationFailed => "auth",
        None if e.is_timeout() => "timeout",
        None if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == redis::ErrorKind::ClusterConnectionNotFound =>
        {
            "connection"
        }
        None => "response",
    }
}

/// The `kind` of an error reply by its code (and, for `ERR`, its detail).
fn code_kind(code: &str, detail: Option<&str>) -> &'static str {
    match code {
        "OOM" => "oom",
        "NOPERM" => "noperm",
        // A command refused inside a script comes back as ERR, not NOPERM.
        "ERR" if detail.is_some_and(|d| d.contains("user executing the script can't")) => "noperm",
        "NOAUTH" | "WRONGPASS" => "auth",
        "READONLY" => "readonly",
        "CLUSTERDOWN" => "clusterdown",
        "MASTERDOWN" => "masterdown",
        "LOADING" => "loading",
        "BUSY" => "busy",
        "MOVED" | "ASK" | "TRYAGAIN" | "CROSSSLOT" => "redirect",
        _ => "command",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn io(kind: std::io::ErrorKind) -> redis::RedisError {
        redis::RedisError::from(std::io::Error::new(kind, "test"))
    }

    /// Every kind a `StoreError` can have is in `KINDS`, and every entry of
    /// `KINDS` is one that some error has: a new kind left out of the list
    /// would start its series at 1, where an alert's increase() misses it.
    #[test]
    fn kinds_lists_every_kind_and_nothing_else() {
        let mut seen = BTreeSet::new();
        for (code, detail) in [
            ("OOM", None),
            ("NOPERM", None),
            ("ERR", Some("the user executing the script can't run this")),
            ("ERR", Some("unknown command")),
            ("NOAUTH", None),
            ("WRONGPASS", None),
            ("READONLY", None),
            ("CLUSTERDOWN", None),
            ("MASTERDOWN", None),
            ("LOADING", None),
            ("BUSY", None),
            ("MOVED", None),
            ("ASK", None),
            ("TRYAGAIN", None),
            ("CROSSSLOT", None),
            ("SOMETHINGNEW", None),
        ] {
            seen.insert(code_kind(code, detail));
        }
        assert_eq!(code_kind("ERR", None), "command");
        // A password refused in a RESP2 handshake: no code.
        let refused = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "test"));
        assert_eq!(reply_kind(&refused), "auth");
        let address = || "10.0.0.1:6379".to_owned();
        let errors = [
            StoreError::Command {
                address: address(),
                what: "SCAN",
                source: io(std::io::ErrorKind::TimedOut),
            },
            StoreError::Connect {
                address: address(),
                source: io(std::io::ErrorKind::ConnectionRefused),
            },
            StoreError::ClusterUnreachable {
                address: address(),
                source: redis::RedisError::from((redis::ErrorKind::Parse, "test")),
                last_seen: String::new(),
            },
            StoreError::NoPrimary {
                master_name: "m".to_owned(),
                reasons: String::new(),
            },
            StoreError::NotPrimary { address: address() },
            StoreError::BadNodeAddress { address: address() },
            StoreError::BadReply {
                address: address(),
                what: "CLUSTER NODES",
                reason: String::new(),
            },
            StoreError::BadReply {
                address: address(),
                what: "TIME",
                reason: String::new(),
            },
            StoreError::Client {
                address: address(),
                source: redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "test")),
            },
        ];
        for e in &errors {
            seen.insert(e.kind());
        }
        let kinds: BTreeSet<&str> = StoreError::KINDS.iter().copied().collect();
        assert_eq!(kinds.len(), StoreError::KINDS.len(), "a kind listed twice");
        assert_eq!(seen, kinds);
    }
}
