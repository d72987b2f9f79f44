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
        Some("OOM") => "oom",
        Some("NOPERM") => "noperm",
        // A command refused inside a script comes back as ERR, not NOPERM.
        Some("ERR")
            if e.detail()
                .is_some_and(|d| d.contains("user executing the script can't")) =>
        {
            "noperm"
        }
        Some("NOAUTH" | "WRONGPASS") => "auth",
        Some("READONLY") => "readonly",
        Some("CLUSTERDOWN") => "clusterdown",
        Some("MASTERDOWN") => "masterdown",
        Some("LOADING") => "loading",
        Some("BUSY") => "busy",
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CROSSSLOT") => "redirect",
        Some(_) => "command",
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
