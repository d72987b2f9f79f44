//! Connecting to Redis.
//!
//! One [`Connection`] is a multiplexed connection: cheap to clone, and every
//! clone pipelines its requests onto the same socket. That is what lets a sweep
//! keep several pipelines in flight without opening more connections.
//!
//! In cluster mode the [`Connection`] is redis-rs's cluster client, which
//! routes keyed commands (the auth path, the lock) by slot. A sweep cannot go
//! through it: SCAN is per node, and the client retries a whole pipeline on
//! the node named by its first MOVED reply. So the sweep asks for the
//! [`Connection::primaries`] and opens a [`Connection::node`] to each, and
//! only keys that answer MOVED/ASK go back through the cluster client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value,
};

use crate::config::{redact_url, RedisMode, RedisSettings};

/// A failure to reach or talk to Redis, naming the address.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The settings do not describe a usable connection.
    #[error("redis.url: {url}: {source}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why redis-rs rejected it.
        source: redis::RedisError,
    },
    /// A secret or certificate file could not be read.
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

/// A connection to Redis: one server, one primary of a cluster, or a
/// cluster as a whole.
///
/// Cheap to clone; clones share sockets. It is a redis-rs
/// [`ConnectionLike`], so commands and pipelines run on it directly.
#[derive(Clone)]
pub struct Connection {
    link: Link,
    /// `host:port` (for a whole cluster: its seeds), for error messages.
    address: String,
}

/// The three shapes of connection behind one API.
#[derive(Clone)]
enum Link {
    /// One server: standalone, or the primary the sentinels named.
    Server(MultiplexedConnection),
    /// The cluster client: routes each keyed command to its slot's primary and
    /// follows MOVED/ASK redirects itself. Keeps the settings to open
    /// [`Link::Node`] connections with the same credentials and TLS.
    Cluster {
        client: ClusterConnection,
        settings: Arc<RedisSettings>,
    },
    /// A direct connection to one primary of a cluster, for what must reach
    /// exactly that node (SCAN, its pipelines), with the cluster client kept
    /// for keys that turn out to live elsewhere.
    Node {
        direct: MultiplexedConnection,
        client: ClusterConnection,
        settings: Arc<RedisSettings>,
    },
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match &mut self.link {
            Link::Server(conn) | Link::Node { direct: conn, .. } => conn.req_packed_command(cmd),
            Link::Cluster { client, .. } => client.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match &mut self.link {
            Link::Server(conn) | Link::Node { direct: conn, .. } => {
                conn.req_packed_commands(pipeline, offset, count)
            }
            Link::Cluster { client, .. } => client.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Server(conn) | Link::Node { direct: conn, .. } => conn.get_db(),
            Link::Cluster { client, .. } => client.get_db(),
        }
    }
}

impl Connection {
    /// Connects with the URL, credentials and timeouts of `settings`: in
    /// sentinel mode to the primary the sentinels name right now, in cluster
    /// mode to the cluster through its seed nodes.
    ///
    /// # Errors
    /// [`RedisError::Connect`] naming the address when Redis cannot be reached
    /// within `connect_timeout` or rejects the credentials.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisError> {
        let info = parse_url(&settings.url)?;
        let info = match settings.mode {
            RedisMode::Standalone => info,
            RedisMode::Cluster => return Self::connect_cluster(settings).await,
            RedisMode::Sentinel => {
                let (host, port) = discover_primary(settings).await?;
                at_address(info, host, port)
            }
        };
        let conn = Self::open(info, settings).await?;
        if settings.mode == RedisMode::Sentinel {
            // The sentinels' view can lag a failover by a moment: make sure
            // this really is the primary before sweeping it.
            let mut probe = conn.clone();
            let role: Vec<Value> = probe.query("ROLE", &redis::cmd("ROLE")).await?;
            if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
                return Err(RedisError::NotPrimary {
                    address: conn.address.clone(),
                });
            }
        }
        Ok(conn)
    }

    /// The cluster client, from the seeds `redis.url` and `redis.nodes`.
    async fn connect_cluster(settings: &RedisSettings) -> Result<Self, RedisError> {
        let seeds = std::iter::once(&settings.url)
            .chain(&settings.nodes)
            .map(|url| with_credentials(parse_url(url)?, settings))
            .collect::<Result<Vec<_>, RedisError>>()?;
        let address = format!(
            "cluster (seeds {})",
            seeds
                .iter()
                .map(|seed| seed.addr().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let tls = seeds
            .first()
            .is_some_and(|seed| matches!(seed.addr(), ConnectionAddr::TcpTls { .. }));
        // redis-rs retries a failing request 16 times with waits from 1.28 s
        // up: over a minute before a command for a dead primary's slot fails.
        // A few quick retries still follow MOVED/ASK (those retry at once)
        // and ride out a failover's few seconds; anything longer is left to
        // the next sweep.
        let mut builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.response_timeout)
            .overall_response_timeout(Some(settings.response_timeout))
            .retries(5)
            .min_retry_wait(100)
            .max_retry_wait(2000);
        if let Some(certificates) = tls_certificates(settings)?.filter(|_| tls) {
            builder = builder.certs(certificates);
        }
        let client = builder.build().map_err(|source| RedisError::InvalidUrl {
            url: redact_url(&settings.url),
            source,
        })?;
        let connecting = client.get_async_connection();
        let client = within(settings.connect_timeout, &address, connecting).await?;
        Ok(Self {
            link: Link::Cluster {
                client,
                settings: Arc::new(settings.clone()),
            },
            address,
        })
    }

    /// Opens a connection to exactly `info`, with the credentials, TLS files
    /// and timeouts of `settings`.
    async fn open(info: ConnectionInfo, settings: &RedisSettings) -> Result<Self, RedisError> {
        let direct = open_server(info, settings).await?;
        Ok(Self {
            address: direct.0,
            link: Link::Server(direct.1),
        })
    }

    /// `host:port` of the server (for a cluster client, its seeds).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// True for the cluster client and for connections to one of its primaries.
    pub fn is_cluster(&self) -> bool {
        !matches!(self.link, Link::Server(_))
    }

    /// The primaries to sweep, in address order: the one server, or every
    /// primary of the cluster that owns slots.
    ///
    /// # Errors
    /// When the cluster cannot say (`CLUSTER NODES` failed).
    pub async fn primaries(&self) -> Result<Vec<Primary>, RedisError> {
        let Link::Cluster { client, .. } = &self.link else {
            return Ok(vec![Primary {
                address: self.address.clone(),
                slots: Vec::new(),
            }]);
        };
        let mut client = client.clone();
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
        let nodes = client
            .route_command(cluster_nodes_command(), routing)
            .await
            .and_then(|value| redis::from_redis_value::<String>(value).map_err(Into::into))
            .map_err(|source| self.error("CLUSTER NODES", source))?;
        let mut primaries: Vec<Primary> = parse_cluster_nodes(&nodes)
            .into_iter()
            .filter(ClusterNode::owns_slots)
            .map(|node| Primary {
                slots: node.slot_ranges(),
                address: node.address,
            })
            .collect();
        primaries.sort_by(|a, b| a.address.cmp(&b.address));
        primaries.dedup_by(|a, b| a.address == b.address);
        Ok(primaries)
    }

    /// PING: on a cluster, one node's answer (redis-rs would ask every
    /// primary, and one primary down would make the whole client look lost).
    ///
    /// # Errors
    /// Why Redis did not answer.
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        let ping = redis::cmd("PING");
        match &self.link {
            Link::Cluster { client, .. } => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                match client.clone().route_command(ping, routing).await {
                    Ok(_) => Ok(()),
                    Err(source) => Err(self.error("PING", source)),
                }
            }
            _ => self.query::<String>("PING", &ping).await.map(drop),
        }
    }

    /// A connection to the primary at `address` (one of [`Connection::primaries`]):
    /// commands on it go to exactly that node. For a single server, itself.
    ///
    /// # Errors
    /// When the node cannot be reached.
    pub async fn node(&self, address: &str) -> Result<Self, RedisError> {
        let (Link::Cluster { client, settings }
        | Link::Node {
            client, settings, ..
        }) = &self.link
        else {
            return Ok(self.clone());
        };
        let Some((host, port)) = split_address(address) else {
            return Err(RedisError::BadNodeAddress {
                address: address.to_owned(),
            });
        };
        let info = at_address(parse_url(&settings.url)?, host, port);
        let (address, direct) = open_server(info, settings).await?;
        Ok(Self {
            link: Link::Node {
                direct,
                client: client.clone(),
                settings: Arc::clone(settings),
            },
            address,
        })
    }

    /// For a connection to one cluster node: the cluster client, which routes
    /// a key to wherever its slot lives now. `None` otherwise.
    pub fn cluster(&self) -> Option<Self> {
        match &self.link {
            Link::Node {
                client, settings, ..
            } => Some(Self {
                link: Link::Cluster {
                    client: client.clone(),
                    settings: Arc::clone(settings),
                },
                address: format!("cluster (redirected from {})", self.address),
            }),
            Link::Cluster { .. } => Some(self.clone()),
            Link::Server(_) => None,
        }
    }

    /// Runs `cmd` on the cluster node at `address` right after `ASKING`, in
    /// one pipeline, so that nothing else sharing the connection comes
    /// between the two: the way to reach a key whose slot is being migrated
    /// to that node (an ASK reply). redis-rs follows ASK itself, but sends
    /// `ASKING` and the command separately, and under concurrency another
    /// request's command can take the `ASKING` meant for this one.
    ///
    /// # Errors
    /// What the node answered, or why it could not be reached; an
    /// invalid-client-config error on a connection that is not to a cluster.
    pub async fn query_asking<T: redis::FromRedisValue>(
        &self,
        address: &str,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let (Link::Cluster { client, .. } | Link::Node { client, .. }) = &self.link else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "ASKING needs a Redis Cluster connection",
            )));
        };
        let Some((host, port)) = split_address(address) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "ASK names a node that is not host:port",
                address.to_owned(),
            )));
        };
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").add_command(cmd.clone());
        let route = SingleNodeRoutingInfo::ByAddress { host, port };
        let replies = client.clone().route_pipeline(pipe, 0, 2, route).await?;
        match replies.into_iter().last() {
            Some(reply) => redis::from_redis_value(reply).map_err(Into::into),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no reply to the command after ASKING",
            ))),
        }
    }

    /// For a connection to one cluster node: the slots it serves, with any
    /// migration in progress (`CLUSTER NODES`, its own line). Two equal
    /// answers around a scan, neither with a migration, mean the scan saw
    /// every key of those slots. `None` for a single server.
    ///
    /// # Errors
    /// When the node does not answer.
    pub async fn slot_assignment(&mut self) -> Result<Option<String>, RedisError> {
        if !matches!(self.link, Link::Node { .. }) {
            return Ok(None);
        }
        let nodes: String = self
            .query("CLUSTER NODES", &cluster_nodes_command())
            .await?;
        Ok(parse_cluster_nodes(&nodes)
            .into_iter()
            .find(|node| node.flags.iter().any(|f| f == "myself"))
            .map(|node| node.slots))
    }

    /// Wraps a redis-rs error with this connection's address and the step that failed.
    pub fn error(&self, what: &'static str, source: redis::RedisError) -> RedisError {
        RedisError::Command {
            address: self.address.clone(),
            what,
            source,
        }
    }

    /// Runs one command and converts its reply.
    ///
    /// # Errors
    /// [`RedisError::Command`] naming `what`.
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        match cmd.query_async(self).await {
            Ok(value) => Ok(value),
            Err(source) => Err(self.error(what, source)),
        }
    }
}

/// `host:port` (`[::1]:port` for IPv6) as its parts.
fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

/// Opens one server connection; returns it with its `host:port`.
async fn open_server(
    info: ConnectionInfo,
    settings: &RedisSettings,
) -> Result<(String, MultiplexedConnection), RedisError> {
    let invalid = |source| RedisError::InvalidUrl {
        url: redact_url(&settings.url),
        source,
    };
    let info = with_credentials(info, settings)?;
    let address = info.addr().to_string();
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let client = match tls_certificates(settings)?.filter(|_| tls) {
        Some(certificates) => Client::build_with_tls(info, certificates),
        None => Client::open(info),
    }
    .map_err(invalid)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout));
    // redis-rs applies the connection timeout to the TCP connect; the
    // handshake (HELLO/AUTH/SELECT) is bounded by the response timeout. An
    // outer bound makes "unreachable" come back within connect_timeout
    // whatever stage hangs.
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    let conn = within(settings.connect_timeout, &address, connecting).await?;
    Ok((address, conn))
}

/// Awaits a connection attempt for at most `timeout`.
async fn within<T>(
    timeout: Duration,
    address: &str,
    connecting: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisError> {
    let failed = |source| RedisError::Connect {
        address: address.to_owned(),
        source,
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(failed(source)),
        Err(_elapsed) => Err(failed(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )))),
    }
}

/// `info` with the user name and password of `settings`, where set.
fn with_credentials(
    info: ConnectionInfo,
    settings: &RedisSettings,
) -> Result<ConnectionInfo, RedisError> {
    let mut redis_info = info.redis_settings().clone();
    if let Some(user) = &settings.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(password) = settings.resolved_password()? {
        redis_info = redis_info.set_password(password.expose());
    }
    Ok(info.set_redis_settings(redis_info))
}

/// `info` pointed at another host and port, keeping its TLS settings.
fn at_address(info: ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match info.addr().clone() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    info.set_addr(addr)
}

fn cluster_nodes_command() -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    cmd
}

/// A primary to sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Primary {
    /// `host:port`, as the cluster announces it (or as configured).
    pub address: String,
    /// The slots it serves (empty for a single server).
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl Primary {
    /// A key prefixed `prefix` whose slot this primary serves, so that a
    /// command on it runs on this primary: for a cluster, `prefix{tag}` with
    /// a hash tag found for one of its slots; for a single server, `prefix`.
    pub fn key_on(&self, prefix: &str) -> String {
        if self.slots.is_empty() {
            return prefix.to_owned();
        }
        // About one try in (16384 / slots served); a primary serves at
        // least one slot, so the search ends within a few hundred thousand.
        (0u32..)
            .map(|n| n.to_string())
            .find(|tag| {
                let slot = key_slot(tag.as_bytes());
                self.slots.iter().any(|range| range.contains(&slot))
            })
            .map(|tag| format!("{prefix}{{{tag}}}"))
            .unwrap_or_else(|| prefix.to_owned())
    }
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag, or of
/// the whole key without one, modulo 16384.
///
/// ```
/// use token_sweeper::redis::key_slot;
///
/// assert_eq!(key_slot(b"foo"), 12182);
/// assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
/// ```
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, PartialEq, Eq)]
struct ClusterNode {
    /// `host:port` clients use.
    address: String,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, ...
    flags: Vec<String>,
    /// The slot fields, space-separated: ranges (`0-5460`) and migrations
    /// (`[93->-<node id>]`, `[93-<-<node id>]`).
    slots: String,
}

impl ClusterNode {
    /// A primary that owns slots. A failed one counts too: its keys are not
    /// swept while it is down, and the sweep must say so rather than skip
    /// it. (After a failover the old primary owns no slots any more.)
    /// The slot ranges (`0-5460`, or a single `93`), without migrations.
    fn slot_ranges(&self) -> Vec<std::ops::RangeInclusive<u16>> {
        self.slots
            .split(' ')
            .filter(|s| !s.is_empty() && !s.starts_with('['))
            .filter_map(|s| {
                let (start, end) = s.split_once('-').unwrap_or((s, s));
                Some(start.parse().ok()?..=end.parse().ok()?)
            })
            .collect()
    }

    fn owns_slots(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
            && self
                .slots
                .split(' ')
                .any(|s| !s.is_empty() && !s.starts_with('['))
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <master>
/// <ping-sent> <pong-recv> <config-epoch> <link-state> <slot> <slot> ...`.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let endpoint = fields.get(1)?;
            let address = endpoint.split(['@', ',']).next()?.to_owned();
            let flags = fields.get(2)?.split(',').map(str::to_owned).collect();
            let slots = fields.get(8..).unwrap_or_default().join(" ");
            Some(ClusterNode {
                address,
                flags,
                slots,
            })
        })
        .collect()
}

fn parse_url(url: &str) -> Result<ConnectionInfo, RedisError> {
    url.into_connection_info()
        .map_err(|source| RedisError::InvalidUrl {
            url: redact_url(url),
            source,
        })
}

/// Asks each sentinel in turn where the primary of `master_name` is.
async fn discover_primary(settings: &RedisSettings) -> Result<(String, u16), RedisError> {
    let name = settings.master_name.clone().unwrap_or_default();
    let mut failures = Vec::new();
    for sentinel_url in &settings.sentinels {
        // Sentinels carry their own credentials in their URLs.
        let sentinel_settings = RedisSettings {
            url: sentinel_url.clone(),
            username: None,
            password: None,
            password_file: None,
            ..settings.clone()
        };
        let asked = async {
            let mut sentinel =
                Connection::open(parse_url(sentinel_url)?, &sentinel_settings).await?;
            let mut ask = redis::cmd("SENTINEL");
            ask.arg("GET-MASTER-ADDR-BY-NAME").arg(&name);
            sentinel
                .query::<Option<(String, u16)>>("SENTINEL GET-MASTER-ADDR-BY-NAME", &ask)
                .await
        };
        match asked.await {
            Ok(Some(primary)) => return Ok(primary),
            Ok(None) => failures.push(format!(
                "{}: no master named {name:?}",
                redact_url(sentinel_url)
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(RedisError::NoPrimary {
        master_name: name,
        reasons: failures.join("; "),
    })
}

/// The CA and client certificate files, read, when any is configured.
/// Server-name checking stays on: the URL's host must match the certificate.
fn tls_certificates(
    settings: &RedisSettings,
) -> Result<Option<redis::TlsCertificates>, RedisError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            RedisError::Secret(crate::config::ConfigError::Invalid {
                key: key.to_owned(),
                message: format!("{}: {e}", path.display()),
            })
        })
    };
    let root_cert = match &settings.tls_ca_file {
        Some(path) => Some(read("redis.tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls_cert_file", cert)?,
            client_key: read("redis.tls_key_file", key)?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

impl RedisError {
    /// True when the connection itself is gone (refused, reset, timed out),
    /// as opposed to Redis answering with an error: the caller should
    /// reconnect rather than retry on the same connection.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::NoPrimary { .. } | Self::NotPrimary { .. } => true,
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
            Self::InvalidUrl { .. } | Self::Secret(_) | Self::BadNodeAddress { .. } => false,
        }
    }
}

impl RedisError {
    /// What kind of failure this is, for the `kind` label of
    /// `errors_total`: `oom`, `noperm`, `auth`, `readonly`, `clusterdown`,
    /// `masterdown`, `loading`, `busy`, `redirect`, `timeout`,
    /// `connection`, `sentinel`, `cluster_topology`, `config`, `response`
    /// (a reply of an unexpected shape) or `command` (any other error reply).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { source, .. } | Self::Command { source, .. } => reply_kind(source),
            Self::NoPrimary { .. } => "sentinel",
            // A server the sentinels named that turned out to be a replica.
            Self::NotPrimary { .. } => "readonly",
            Self::BadNodeAddress { .. } => "cluster_topology",
            Self::InvalidUrl { .. } | Self::Secret(_) => "config",
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

/// A connection for a long-running process: reconnects with backoff after
/// Redis goes away, so callers never hold a dead connection for long.
///
/// `get` hands out a clone of the current connection; whoever sees it fail
/// calls `lost`, which drops it and starts one background reconnect loop
/// (1s, 2s, 4s ... capped at 30s). No loop runs while the connection is healthy.
pub struct Reconnecting {
    settings: Mutex<RedisSettings>,
    state: Mutex<LinkState>,
    /// Called with `true`/`false` whenever the link comes up or goes down.
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

enum LinkState {
    Up(Connection),
    /// Down; `reconnecting` is true while a reconnect loop is running.
    Down {
        reason: String,
        reconnecting: bool,
    },
}

/// Longest wait between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Reconnecting {
    /// Starts disconnected; call [`Reconnecting::connect_now`] or let `lost` reconnect.
    pub fn new(settings: RedisSettings, on_change: impl Fn(bool) + Send + Sync + 'static) -> Self {
        Self {
            settings: Mutex::new(settings),
            state: Mutex::new(LinkState::Down {
                reason: "not connected yet".to_owned(),
                reconnecting: false,
            }),
            on_change: Box::new(on_change),
        }
    }

    /// The current connection, or why there is none.
    ///
    /// # Errors
    /// The reason the link is down.
    pub fn get(&self) -> Result<Connection, String> {
        match &*lock(&self.state) {
            LinkState::Up(conn) => Ok(conn.clone()),
            LinkState::Down { reason, .. } => Err(reason.clone()),
        }
    }

    /// Tries once to connect; on failure starts the reconnect loop.
    ///
    /// # Errors
    /// The connect error.
    pub async fn connect_now(self: &std::sync::Arc<Self>) -> Result<Connection, RedisError> {
        let settings = lock(&self.settings).clone();
        match Connection::connect(&settings).await {
            Ok(conn) => {
                *lock(&self.state) = LinkState::Up(conn.clone());
                (self.on_change)(true);
                Ok(conn)
            }
            Err(e) => {
                self.lost(&e.to_string());
                Err(e)
            }
        }
    }

    /// Reports the connection as lost: drops it and reconnects in the background.
    pub fn lost(self: &std::sync::Arc<Self>, reason: &str) {
        {
            let mut state = lock(&self.state);
            if let LinkState::Down {
                reconnecting: true, ..
            } = *state
            {
                return;
            }
            *state = LinkState::Down {
                reason: reason.to_owned(),
                reconnecting: true,
            };
        }
        (self.on_change)(false);
        tracing::warn!(reason, "Redis connection lost; reconnecting with backoff");
        let this = std::sync::Arc::clone(self);
        tokio::spawn(async move { this.reconnect_loop().await });
    }

    async fn reconnect_loop(&self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            tokio::time::sleep(backoff).await;
            let settings = lock(&self.settings).clone();
            match Connection::connect(&settings).await {
                Ok(conn) => {
                    tracing::info!(address = conn.address(), "Redis connection restored");
                    *lock(&self.state) = LinkState::Up(conn);
                    (self.on_change)(true);
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?backoff, "reconnect failed");
                    *lock(&self.state) = LinkState::Down {
                        reason: e.to_string(),
                        reconnecting: true,
                    };
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// New settings (after a reload) take effect with the next connection;
    /// when they differ, the current one is dropped so that happens now.
    pub fn update_settings(self: &std::sync::Arc<Self>, settings: RedisSettings) {
        let changed = {
            let mut current = lock(&self.settings);
            let changed = *current != settings;
            *current = settings;
            changed
        };
        if changed {
            self.lost("Redis settings changed");
        }
    }

    /// PINGs the current connection (bounded by `timeout`); reports it lost on failure.
    ///
    /// # Errors
    /// Why Redis is not answering.
    pub async fn ping(self: &std::sync::Arc<Self>, timeout: Duration) -> Result<(), String> {
        let mut conn = self.get()?;
        match tokio::time::timeout(timeout, conn.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let reason = e.to_string();
                if e.is_connection_lost() {
                    self.lost(&reason);
                }
                Err(reason)
            }
            Err(_) => {
                let reason = format!("Redis at {}: no PONG within {timeout:?}", conn.address());
                self.lost(&reason);
                Err(reason)
            }
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the
/// states guarded with it (here and in the daemon) are replaced or inserted
/// into whole, never left half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c3 127.0.0.1:30004@31004,host-a slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922 [93->-292f]
292f 127.0.0.1:30003@31003 myself,master - 0 0 3 connected 10923-16383 93
e7d1 127.0.0.1:30001@31001 master,fail - 0 1426238317741 1 connected 0-92 94-5460
9fa1 127.0.0.1:30005@31005 master - 0 1426238317741 5 connected
";

    #[test]
    fn primaries_are_the_masters_owning_slots_even_failed_ones() {
        let nodes = parse_cluster_nodes(NODES);
        let owning: Vec<(&str, Vec<std::ops::RangeInclusive<u16>>)> = nodes
            .iter()
            .filter(|n| n.owns_slots())
            .map(|n| (n.address.as_str(), n.slot_ranges()))
            .collect();
        assert_eq!(
            owning,
            [
                ("127.0.0.1:30002", vec![5461..=10922]),
                ("127.0.0.1:30003", vec![10923..=16383, 93..=93]),
                ("127.0.0.1:30001", vec![0..=92, 94..=5460]),
            ]
        );
        // The migration marker stays in the assignment the sweep compares.
        assert_eq!(nodes[1].slots, "5461-10922 [93->-292f]");
    }

    #[test]
    fn a_key_on_a_primary_hashes_into_its_slots() {
        let primary = Primary {
            address: "127.0.0.1:30003".to_owned(),
            slots: vec![93..=93],
        };
        let key = primary.key_on("token-sweeper:lock:127.0.0.1:30003");
        assert!(
            key.starts_with("token-sweeper:lock:127.0.0.1:30003{"),
            "{key}"
        );
        assert_eq!(key_slot(key.as_bytes()), 93);
        let single = Primary {
            address: "127.0.0.1:6379".to_owned(),
            slots: Vec::new(),
        };
        assert_eq!(single.key_on("token-sweeper:lock"), "token-sweeper:lock");
    }
}
