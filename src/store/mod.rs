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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, Value};

use crate::config::{RedisMode, RedisSettings, RedisUrl};
use crate::mutex::lock;

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
    /// [`Link::Node`] connections with the same credentials and TLS, and
    /// the nodes it last saw, for reconnecting.
    Cluster {
        client: ClusterConnection,
        settings: Arc<RedisSettings>,
        known: KnownNodes,
    },
    /// A direct connection to one primary of a cluster, for what must reach
    /// exactly that node (SCAN, its pipelines), with the cluster client kept
    /// for keys that turn out to live elsewhere.
    Node {
        direct: MultiplexedConnection,
        client: ClusterConnection,
        settings: Arc<RedisSettings>,
        known: KnownNodes,
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
    /// [`StoreError::Connect`] naming the address when Redis cannot be reached
    /// within `connect_timeout` or rejects the credentials.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        Self::connect_knowing(settings, &KnownNodes::default()).await
    }

    /// [`Connection::connect`]; in cluster mode, when no seed can be
    /// reached, through the nodes in `known` that are still nodes of that
    /// cluster. A cluster connection keeps `known` up to date.
    async fn connect_knowing(
        settings: &RedisSettings,
        known: &KnownNodes,
    ) -> Result<Self, StoreError> {
        match settings.mode {
            RedisMode::Standalone => {
                Self::open(settings.url.connection_info().clone(), settings).await
            }
            RedisMode::Cluster => Self::connect_cluster(settings, known).await,
            RedisMode::Sentinel => discover_primary(settings).await,
        }
    }

    /// Opens the server at `info` and makes sure it is a primary: a sentinel
    /// can name a replica (its view lags a failover, or it monitors another
    /// server under the same name), and sweeping or writing sessions there
    /// would fail.
    ///
    /// # Errors
    /// [`StoreError::NotPrimary`] when ROLE says anything but `master`.
    async fn open_primary(
        info: ConnectionInfo,
        settings: &RedisSettings,
    ) -> Result<Self, StoreError> {
        let conn = Self::open(info, settings).await?;
        let mut probe = conn.clone();
        let role: Vec<Value> = probe.query("ROLE", &redis::cmd("ROLE")).await?;
        if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
            return Err(StoreError::NotPrimary {
                address: conn.address.clone(),
            });
        }
        Ok(conn)
    }

    /// The cluster client, from the seeds `redis.url` and `redis.nodes`;
    /// when none of them can be reached, from the nodes in `known` that
    /// still answer as nodes of the cluster last seen.
    ///
    /// The seeds are what the operator configured, and often all there is
    /// to a cluster's address for years; but the node behind a seed can
    /// die for good while its replica serves on, and then every reconnect
    /// (a reload, a lost link) would try only the dead seed while the
    /// cluster is healthy. The nodes last seen are tried only after the
    /// seeds, and only those whose `CLUSTER SLOTS` still names a node id
    /// seen then: an address can be taken over by another server, or by a
    /// node of another cluster, and connecting there would sweep (or issue
    /// sessions on) data that is not this cluster's.
    async fn connect_cluster(
        settings: &RedisSettings,
        known: &KnownNodes,
    ) -> Result<Self, StoreError> {
        let seeds = cluster_seeds(settings)?;
        let address = format!("cluster (seeds {})", addresses_of(&seeds));
        let (address, source) =
            match Self::open_cluster(seeds.clone(), address, settings, known).await {
                Ok(conn) => return Ok(conn),
                Err(StoreError::Connect { address, source }) => (address, source),
                Err(e) => return Err(e),
            };
        let last_seen = known.get();
        let seed_addresses: BTreeSet<String> =
            seeds.iter().map(|seed| seed.addr().to_string()).collect();
        let others: Vec<&KnownNode> = last_seen
            .iter()
            .filter(|node| !seed_addresses.contains(&node.address))
            .collect();
        if others.is_empty() {
            return Err(StoreError::Connect { address, source });
        }
        let ids: BTreeSet<&str> = last_seen.iter().map(|node| node.id.as_str()).collect();
        let checks = others
            .into_iter()
            .map(|node| still_a_node(node, &ids, settings));
        let mut members = Vec::new();
        let mut refused = Vec::new();
        for checked in futures_util::future::join_all(checks).await {
            match checked {
                Ok(info) => members.push(info),
                Err(reason) => refused.push(reason),
            }
        }
        if members.is_empty() {
            return Err(StoreError::ClusterUnreachable {
                address,
                source,
                last_seen: refused.join("; "),
            });
        }
        let through = format!(
            "cluster (through {} last seen; seeds {} unreachable)",
            addresses_of(&members),
            addresses_of(&seeds)
        );
        match Self::open_cluster(members, through, settings, known).await {
            Ok(conn) => {
                tracing::warn!(
                    seeds = %addresses_of(&seeds),
                    error = %source,
                    through = %conn.address,
                    "no cluster seed could be reached; connected through the nodes last seen. \
                     Add live nodes to redis.url/redis.nodes"
                );
                Ok(conn)
            }
            Err(e) => Err(StoreError::ClusterUnreachable {
                address,
                source,
                last_seen: e.to_string(),
            }),
        }
    }

    /// A cluster client from `seeds`; on success, remembers the nodes it
    /// lists in `known`.
    async fn open_cluster(
        seeds: Vec<ConnectionInfo>,
        address: String,
        settings: &RedisSettings,
        known: &KnownNodes,
    ) -> Result<Self, StoreError> {
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
        let client = builder.build().map_err(|source| StoreError::Client {
            address: address.clone(),
            source,
        })?;
        let connecting = client.get_async_connection();
        let mut client = within(settings.connect_timeout, &address, connecting).await?;
        // Best effort: the connection works without it, and the nodes
        // remembered before stay until a later read replaces them.
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
        match client.route_command(cluster_slots_command(), routing).await {
            Ok(slots) => known.remember(nodes_in_slots(&slots)),
            Err(e) => tracing::debug!(error = %e, "CLUSTER SLOTS after connecting failed"),
        }
        Ok(Self {
            link: Link::Cluster {
                client,
                settings: Arc::new(settings.clone()),
                known: known.clone(),
            },
            address,
        })
    }

    /// Opens a connection to exactly `info`, with the credentials, TLS files
    /// and timeouts of `settings`.
    async fn open(info: ConnectionInfo, settings: &RedisSettings) -> Result<Self, StoreError> {
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
    /// When the cluster cannot say: `CLUSTER NODES` failed, has a line that
    /// does not parse, or names no primary that serves slots. A cluster
    /// always has one; "none" is a reply the sweep cannot use, never
    /// "nothing to sweep".
    pub async fn primaries(&self) -> Result<Vec<Primary>, StoreError> {
        let Link::Cluster { client, known, .. } = &self.link else {
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
        let nodes = parse_cluster_nodes(&nodes)
            .map_err(|reason| self.bad_reply("CLUSTER NODES", reason))?;
        known.remember(reachable_nodes(&nodes));
        primaries_of(nodes).map_err(|reason| self.bad_reply("CLUSTER NODES", reason))
    }

    /// PING: on a cluster, one node's answer (redis-rs would ask every
    /// primary, and one primary down would make the whole client look lost).
    ///
    /// # Errors
    /// Why Redis did not answer.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
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
    pub async fn node(&self, address: &str) -> Result<Self, StoreError> {
        let (Link::Cluster {
            client,
            settings,
            known,
        }
        | Link::Node {
            client,
            settings,
            known,
            ..
        }) = &self.link
        else {
            return Ok(self.clone());
        };
        let Some((host, port)) = split_address(address) else {
            return Err(StoreError::BadNodeAddress {
                address: address.to_owned(),
            });
        };
        let info = at_address(settings.url.connection_info().clone(), host, port);
        let (address, direct) = open_server(info, settings).await?;
        Ok(Self {
            link: Link::Node {
                direct,
                client: client.clone(),
                settings: Arc::clone(settings),
                known: known.clone(),
            },
            address,
        })
    }

    /// For a connection to one cluster node: the cluster client, which routes
    /// a key to wherever its slot lives now. `None` otherwise.
    pub fn cluster(&self) -> Option<Self> {
        match &self.link {
            Link::Node {
                client,
                settings,
                known,
                ..
            } => Some(Self {
                link: Link::Cluster {
                    client: client.clone(),
                    settings: Arc::clone(settings),
                    known: known.clone(),
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
            // Through `RedisResult` so that an error reply keeps its code
            // (NOPERM, MOVED, ...) instead of becoming a type error.
            Some(reply) => redis::from_redis_value::<redis::RedisResult<T>>(reply)?,
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no reply to the command after ASKING",
            ))),
        }
    }

    /// For a connection to one cluster node: what it says it serves (its
    /// own, `myself`, line of `CLUSTER NODES`). Two equal answers around a
    /// scan, neither with a migration, mean the scan saw every key of those
    /// slots. `None` for a single server, and only for one.
    ///
    /// # Errors
    /// When the node does not answer, or its answer does not parse or has
    /// no line (or several) flagged `myself`: without it nothing proves the
    /// node's scan covered its slots.
    pub async fn slot_assignment(&mut self) -> Result<Option<SlotAssignment>, StoreError> {
        if !matches!(self.link, Link::Node { .. }) {
            return Ok(None);
        }
        let nodes: String = self
            .query("CLUSTER NODES", &cluster_nodes_command())
            .await?;
        own_assignment(&nodes)
            .map(Some)
            .map_err(|reason| self.bad_reply("CLUSTER NODES", reason))
    }

    /// A [`StoreError::BadReply`] from this connection.
    pub fn bad_reply(&self, what: &'static str, reason: String) -> StoreError {
        StoreError::BadReply {
            address: self.address.clone(),
            what,
            reason,
        }
    }

    /// Wraps a redis-rs error with this connection's address and the step that failed.
    pub fn error(&self, what: &'static str, source: redis::RedisError) -> StoreError {
        StoreError::Command {
            address: self.address.clone(),
            what,
            source,
        }
    }

    /// Runs one command and converts its reply.
    ///
    /// # Errors
    /// [`StoreError::Command`] naming `what`.
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
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
) -> Result<(String, MultiplexedConnection), StoreError> {
    let info = with_credentials(info, settings)?;
    let address = info.addr().to_string();
    let invalid = |source| StoreError::Client {
        address: address.clone(),
        source,
    };
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
) -> Result<T, StoreError> {
    let failed = |source| StoreError::Connect {
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
) -> Result<ConnectionInfo, StoreError> {
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

fn cluster_slots_command() -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    cmd
}

/// The seeds `redis.url` and `redis.nodes`, with the credentials of `settings`.
fn cluster_seeds(settings: &RedisSettings) -> Result<Vec<ConnectionInfo>, StoreError> {
    std::iter::once(&settings.url)
        .chain(&settings.nodes)
        .map(|url| with_credentials(url.connection_info().clone(), settings))
        .collect()
}

/// `host:port, host:port` of `nodes`, for messages.
fn addresses_of(nodes: &[ConnectionInfo]) -> String {
    nodes
        .iter()
        .map(|node| node.addr().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node of a cluster as last seen: where it was, and its id (a random
/// 160-bit name a node keeps across restarts and failovers).
#[derive(Clone, Debug, PartialEq, Eq)]
struct KnownNode {
    address: String,
    id: String,
}

/// The nodes of a cluster that its connection last saw (`CLUSTER SLOTS`
/// when it connected, then every `CLUSTER NODES` read for the primaries):
/// shared by the connection's clones, and kept by a [`Reconnecting`] from
/// one connection to the next.
#[derive(Clone, Default)]
struct KnownNodes(Arc<Mutex<Vec<KnownNode>>>);

impl KnownNodes {
    /// Replaces what was seen before; a view with no node in it (a reply
    /// that listed none usable) keeps the previous one.
    fn remember(&self, nodes: Vec<KnownNode>) {
        if !nodes.is_empty() {
            *lock(&self.0) = nodes;
        }
    }

    fn get(&self) -> Vec<KnownNode> {
        lock(&self.0).clone()
    }
}

/// The nodes of `CLUSTER NODES` worth trying later: every primary and
/// replica with an address, except those the cluster considers failed or
/// not yet joined.
fn reachable_nodes(nodes: &[ClusterNode]) -> Vec<KnownNode> {
    nodes
        .iter()
        .filter(|node| {
            !node
                .flags
                .iter()
                .any(|flag| matches!(flag.as_str(), "fail" | "noaddr" | "handshake"))
        })
        .filter(|node| {
            split_address(&node.address).is_some_and(|(host, port)| !host.is_empty() && port != 0)
        })
        .map(|node| KnownNode {
            address: node.address.clone(),
            id: node.id.clone(),
        })
        .collect()
}

/// The nodes (address and id) in a `CLUSTER SLOTS` reply: for each slot
/// range, `[start, end, [host, port, id, ...], ...]`. An entry without a
/// usable host (empty, `?`), port or id is left out: this only feeds the
/// nodes to try when the seeds are down, and the check that a node is
/// still one of this cluster's, which then fails closed.
fn nodes_in_slots(reply: &Value) -> Vec<KnownNode> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut nodes: Vec<KnownNode> = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        for node in fields.iter().skip(2) {
            let Value::Array(node) = node else { continue };
            let [Value::BulkString(host), Value::Int(port), Value::BulkString(id), ..] =
                node.as_slice()
            else {
                continue;
            };
            let (Ok(host), Ok(port), Ok(id)) = (
                std::str::from_utf8(host),
                u16::try_from(*port),
                std::str::from_utf8(id),
            ) else {
                continue;
            };
            if host.is_empty() || host == "?" || port == 0 || id.is_empty() {
                continue;
            }
            let address = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if !nodes.iter().any(|known| known.address == address) {
                nodes.push(KnownNode {
                    address,
                    id: id.to_owned(),
                });
            }
        }
    }
    nodes
}

/// Connects to `node` and checks it is still a node of the cluster last
/// seen: its `CLUSTER SLOTS` names one of `ids`. Returns its connection
/// info (with the credentials and TLS of `settings`), or why not, naming
/// it.
async fn still_a_node(
    node: &KnownNode,
    ids: &BTreeSet<&str>,
    settings: &RedisSettings,
) -> Result<ConnectionInfo, String> {
    let Some((host, port)) = split_address(&node.address) else {
        return Err(format!("{}: not host:port", node.address));
    };
    let info = at_address(settings.url.connection_info().clone(), host, port);
    let (address, mut conn) = open_server(info.clone(), settings)
        .await
        .map_err(|e| e.to_string())?;
    let slots: Value = cluster_slots_command()
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("{address}: CLUSTER SLOTS failed: {e}"))?;
    if nodes_in_slots(&slots)
        .iter()
        .any(|listed| ids.contains(listed.id.as_str()))
    {
        with_credentials(info, settings).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "{address} is no longer a node of that cluster (it names none of its nodes)"
        ))
    }
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
/// use token_sweeper::store::key_slot;
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

/// What a cluster node says it serves: its own (`myself`) line of
/// `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotAssignment {
    /// Flagged `master` (a replica serves no slots).
    pub primary: bool,
    /// Its configuration epoch: a failover or a finished migration to it
    /// raises it, so it tells a reconfiguration even when the slots are
    /// the same again.
    pub config_epoch: u64,
    /// The slots it serves, as ranges in the order listed.
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
    /// Migrations in progress, in the order listed.
    pub migrations: Vec<Migration>,
}

impl SlotAssignment {
    /// The slots the node is importing (`[slot-<-id]`): it serves a key
    /// of one of them, which it holds, only right after `ASKING`.
    pub fn importing(&self) -> BTreeSet<u16> {
        self.migrations
            .iter()
            .filter(|m| m.importing)
            .map(|m| m.slot)
            .collect()
    }
}

/// A slot migration in progress, from a `CLUSTER NODES` line:
/// `[93-<-<node id>]` (importing) or `[93->-<node id>]` (migrating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The slot being moved.
    pub slot: u16,
    /// True when the node imports the slot from `peer`, false when it
    /// migrates it to `peer`.
    pub importing: bool,
    /// The id of the node at the other end.
    pub peer: String,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (direction, preposition) = if self.importing {
            ("importing", "from")
        } else {
            ("migrating", "to")
        };
        write!(
            f,
            "slot {} {direction} {preposition} node {}",
            self.slot, self.peer
        )
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, PartialEq, Eq)]
struct ClusterNode {
    /// The node's id.
    id: String,
    /// `host:port` clients use.
    address: String,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, ...
    flags: Vec<String>,
    config_epoch: u64,
    /// Slot ranges (`0-5460`, or a single `93` as `93..=93`).
    slots: Vec<std::ops::RangeInclusive<u16>>,
    /// Migration markers (`[93->-<node id>]`, `[93-<-<node id>]`).
    migrations: Vec<Migration>,
}

impl ClusterNode {
    fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// A primary that owns slots. A failed one counts too: its keys are not
    /// swept while it is down, and the sweep must say so rather than skip
    /// it. (After a failover the old primary owns no slots any more.)
    fn owns_slots(&self) -> bool {
        self.is_primary() && !self.slots.is_empty()
    }
}

/// The primaries that serve slots, by address, from `CLUSTER NODES`; an
/// error when there are none.
#[cfg(test)]
fn primaries_in(text: &str) -> Result<Vec<Primary>, String> {
    primaries_of(parse_cluster_nodes(text)?)
}

/// The primaries among `nodes` that serve slots, by address; an error when
/// there are none.
fn primaries_of(nodes: Vec<ClusterNode>) -> Result<Vec<Primary>, String> {
    let mut primaries: Vec<Primary> = nodes
        .into_iter()
        .filter(ClusterNode::owns_slots)
        .map(|node| Primary {
            slots: node.slots,
            address: node.address,
        })
        .collect();
    if primaries.is_empty() {
        return Err("no primary serves any slot".to_owned());
    }
    primaries.sort_by(|a, b| a.address.cmp(&b.address));
    primaries.dedup_by(|a, b| a.address == b.address);
    Ok(primaries)
}

/// The node's own line of `CLUSTER NODES`: exactly one must be flagged
/// `myself`.
fn own_assignment(text: &str) -> Result<SlotAssignment, String> {
    let mut mine = parse_cluster_nodes(text)?
        .into_iter()
        .filter(|node| node.flags.iter().any(|f| f == "myself"));
    match (mine.next(), mine.next()) {
        (Some(node), None) => Ok(SlotAssignment {
            primary: node.is_primary(),
            config_epoch: node.config_epoch,
            slots: node.slots,
            migrations: node.migrations,
        }),
        (None, _) => Err("no line flagged myself".to_owned()),
        (Some(_), Some(_)) => Err("more than one line flagged myself".to_owned()),
    }
}

/// The highest hash slot.
const LAST_SLOT: u16 = 16383;

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <master>
/// <ping-sent> <pong-recv> <config-epoch> <link-state> <slot> <slot> ...`.
///
/// Strict: a line that does not have that form is an error naming the line
/// number and what is wrong, never skipped. A skipped line would be a
/// primary (and its slots) the sweep silently leaves out, or the node's own
/// line missing from the check that decides whether its scan was complete.
fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNode>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| parse_node_line(line).map_err(|why| format!("line {}: {why}", n + 1)))
        .collect()
}

fn parse_node_line(line: &str) -> Result<ClusterNode, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [id, endpoint, flags, _primary_id, _ping, _pong, epoch, _link, slot_fields @ ..] =
        fields.as_slice()
    else {
        return Err(format!("{} fields, at least 8 expected", fields.len()));
    };
    let address = endpoint.split(['@', ',']).next().unwrap_or_default();
    if split_address(address).is_none() {
        return Err(format!("address {address:?} is not host:port"));
    }
    let config_epoch = epoch
        .parse()
        .map_err(|_| format!("config epoch {epoch:?} is not a number"))?;
    let mut slots = Vec::new();
    let mut migrations = Vec::new();
    for field in slot_fields {
        if let Some(marker) = field.strip_prefix('[') {
            let migration = [("->-", false), ("-<-", true)]
                .into_iter()
                .find_map(|(arrow, importing)| {
                    let (slot, peer) = marker.split_once(arrow)?;
                    let peer = peer.strip_suffix(']').filter(|peer| !peer.is_empty())?;
                    Some(Migration {
                        slot: parse_slot(slot)?,
                        importing,
                        peer: peer.to_owned(),
                    })
                })
                .ok_or_else(|| {
                    format!("slot migration {field:?} is not [slot->-id] or [slot-<-id]")
                })?;
            migrations.push(migration);
            continue;
        }
        let (start, end) = field.split_once('-').unwrap_or((field, field));
        match (parse_slot(start), parse_slot(end)) {
            (Some(start), Some(end)) if start <= end => slots.push(start..=end),
            _ => {
                return Err(format!(
                    "slot range {field:?} is not slot or slot-slot (0-{LAST_SLOT})"
                ))
            }
        }
    }
    Ok(ClusterNode {
        id: (*id).to_owned(),
        address: address.to_owned(),
        flags: flags.split(',').map(str::to_owned).collect(),
        config_epoch,
        slots,
        migrations,
    })
}

fn parse_slot(text: &str) -> Option<u16> {
    // Digits only: `parse` would also take a sign.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|slot| *slot <= LAST_SLOT)
}

/// Per `redis.master_name`, the sentinel (its URL) whose answer last led to
/// a confirmed primary: asked first the next time, in this process, whoever
/// connects (the daemon's reconnects, the auth path).
static PREFERRED_SENTINEL: Mutex<BTreeMap<String, RedisUrl>> = Mutex::new(BTreeMap::new());

/// Connects to the primary of `redis.master_name`, asking the sentinels in
/// turn: the one that answered well last time first, then the others in
/// their configured order. An answer counts only when the server it names
/// can be reached and says (ROLE) that it is a primary; otherwise the next
/// sentinel is asked, so one stale, misconfigured or lying sentinel first in
/// the list does not stop every connection.
async fn discover_primary(settings: &RedisSettings) -> Result<Connection, StoreError> {
    let name = settings.master_name.clone().unwrap_or_default();
    let info = settings.url.connection_info().clone();
    let preferred = lock(&PREFERRED_SENTINEL).get(&name).cloned();
    let mut sentinels: Vec<&RedisUrl> = settings.sentinels.iter().collect();
    // Stable: the others keep their configured order.
    sentinels.sort_by_key(|url| Some(*url) != preferred.as_ref());
    let mut failures = Vec::new();
    // Several sentinels usually name the same server: one try each round.
    let mut tried = BTreeSet::new();
    for sentinel_url in sentinels {
        // Display is redacted.
        let sentinel = sentinel_url.to_string();
        let (host, port) = match ask_sentinel(sentinel_url, &name, settings).await {
            Ok(Some(primary)) => primary,
            Ok(None) => {
                failures.push(format!("{sentinel}: no master named {name:?}"));
                continue;
            }
            Err(e) => {
                failures.push(format!("{sentinel}: {e}"));
                continue;
            }
        };
        let named = at_address(info.clone(), host, port);
        let address = named.addr().to_string();
        if !tried.insert(address.clone()) {
            failures.push(format!("{sentinel}: names {address} (tried above)"));
            continue;
        }
        match Connection::open_primary(named, settings).await {
            Ok(conn) => {
                if !failures.is_empty() {
                    tracing::warn!(
                        master_name = %name,
                        sentinel = %sentinel,
                        passed_over = %failures.join("; "),
                        "sentinel: found the primary after passing over other sentinels"
                    );
                }
                lock(&PREFERRED_SENTINEL).insert(name, sentinel_url.clone());
                return Ok(conn);
            }
            Err(e) => failures.push(format!("{sentinel}: names {address}: {e}")),
        }
    }
    Err(StoreError::NoPrimary {
        master_name: name,
        reasons: failures.join("; "),
    })
}

/// One sentinel's answer to `SENTINEL GET-MASTER-ADDR-BY-NAME`.
async fn ask_sentinel(
    sentinel_url: &RedisUrl,
    name: &str,
    settings: &RedisSettings,
) -> Result<Option<(String, u16)>, StoreError> {
    // Sentinels carry their own credentials in their URLs.
    let sentinel_settings = RedisSettings {
        url: sentinel_url.clone(),
        username: None,
        password: None,
        password_file: None,
        ..settings.clone()
    };
    let mut sentinel =
        Connection::open(sentinel_url.connection_info().clone(), &sentinel_settings).await?;
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("GET-MASTER-ADDR-BY-NAME").arg(name);
    sentinel
        .query("SENTINEL GET-MASTER-ADDR-BY-NAME", &ask)
        .await
}

/// The CA and client certificate files, read and checked, when any is
/// configured. Server-name checking stays on: the URL's host must match the
/// certificate.
fn tls_certificates(
    settings: &RedisSettings,
) -> Result<Option<redis::TlsCertificates>, StoreError> {
    Ok(settings.tls_files()?.map(|files| redis::TlsCertificates {
        client_tls: files
            .client
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: files.ca,
    }))
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
}

impl StoreError {
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

/// A connection for a long-running process: reconnects with backoff after
/// Redis goes away, so callers never hold a dead connection for long. The
/// daemon and [`crate::auth::TokenService`] both use it.
///
/// [`Reconnecting::checkout`] hands out a clone of the current connection
/// with its [`ConnectionId`]; whoever sees it fail reports it with
/// [`Reconnecting::lost_connection`], which drops it and starts one
/// background reconnect loop. While the link is down, callers get the reason
/// at once, without touching the network: a thousand failing requests start
/// one reconnect, not a thousand. A report about a connection that has
/// already been replaced is ignored, so a slow request that failed on the old
/// connection cannot throw away the new one. Reconnects are at least
/// [`MIN_RECONNECT_INTERVAL`] apart and back off (1 s, 2 s, 4 s ... up to
/// [`Reconnecting::set_max_backoff`], 30 s unless set) while they fail. No task runs while the link is healthy, and the loop
/// ends when the last handle is dropped.
///
/// Settings changed with [`Reconnecting::update_settings`] apply to the next
/// connection; a connection that was being made with the previous settings
/// when they changed is discarded, never installed.
///
/// On a cluster, the nodes the connections saw (at each connect, and each
/// time the primaries are read) are kept from one connection to the next:
/// when no configured seed answers, a reconnect goes through those that are
/// still nodes of that cluster. They are forgotten when the seeds change.
pub struct Reconnecting {
    state: Mutex<ReconnectState>,
    /// Called with `true`/`false` whenever the link comes up or goes down.
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

/// Identifies one connection installed by a [`Reconnecting`], so that a
/// report of its loss cannot take down a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionId(u64);

struct ReconnectState {
    settings: RedisSettings,
    /// The longest wait between two attempts: a daemon sweeping every
    /// second must not wait 30 s to notice Redis is back.
    max_backoff: Duration,
    /// The cluster nodes the connections saw, across connections: when the
    /// seeds are down, a reconnect goes through them. Forgotten when the
    /// seeds change, as they may then name another cluster.
    known: KnownNodes,
    /// Bumped by every change of settings. A connect attempt remembers the
    /// generation it started with and installs its connection only if it is
    /// still current.
    generation: u64,
    link: LinkStatus,
    /// Bumped each time a connection is installed: the id of the current one.
    serial: u64,
    /// When the last connection was installed, to space reconnects out.
    connected_at: Option<tokio::time::Instant>,
}

enum LinkStatus {
    Up(Connection),
    /// Down; `reconnecting` is true while a reconnect loop is running.
    Down {
        reason: String,
        reconnecting: bool,
    },
}

/// Longest wait between two reconnect attempts, unless set otherwise.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Shortest time between two connections: a connection that fails right
/// after it was made (a server that accepts and then drops everyone, a
/// replica answering READONLY) is replaced at most this often, however many
/// requests see it fail.
pub const MIN_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

impl Reconnecting {
    /// Starts disconnected; call [`Reconnecting::connect_now`], or the first
    /// [`Reconnecting::checkout`] starts connecting in the background.
    pub fn new(settings: RedisSettings, on_change: impl Fn(bool) + Send + Sync + 'static) -> Self {
        Self {
            state: Mutex::new(ReconnectState {
                settings,
                max_backoff: MAX_BACKOFF,
                known: KnownNodes::default(),
                generation: 0,
                link: LinkStatus::Down {
                    reason: "not connected yet".to_owned(),
                    reconnecting: false,
                },
                serial: 0,
                connected_at: None,
            }),
            on_change: Box::new(on_change),
        }
    }

    /// Caps the wait between two reconnect attempts (never below
    /// [`MIN_RECONNECT_INTERVAL`]); applies from the next attempt.
    pub fn set_max_backoff(&self, max: Duration) {
        lock(&self.state).max_backoff = max.max(MIN_RECONNECT_INTERVAL);
    }

    /// The current connection, or why there is none.
    ///
    /// # Errors
    /// The reason the link is down.
    pub fn get(&self) -> Result<Connection, String> {
        self.current()
            .map(|(conn, _)| conn)
            .map_err(|(reason, _)| reason)
    }

    /// The current connection and its id, to report it with
    /// [`Reconnecting::lost_connection`] if it fails. When the link is down
    /// and nothing is reconnecting yet (it never connected), starts the
    /// reconnect loop.
    ///
    /// # Errors
    /// The reason the link is down; returned at once.
    pub fn checkout(self: &Arc<Self>) -> Result<(Connection, ConnectionId), String> {
        self.current().map_err(|(reason, reconnecting)| {
            if !reconnecting {
                self.mark_lost(None, &reason);
            }
            reason
        })
    }

    /// The current connection and its id, or why there is none and whether
    /// a reconnect loop is running.
    fn current(&self) -> Result<(Connection, ConnectionId), (String, bool)> {
        let state = lock(&self.state);
        match &state.link {
            LinkStatus::Up(conn) => Ok((conn.clone(), ConnectionId(state.serial))),
            LinkStatus::Down {
                reason,
                reconnecting,
            } => Err((reason.clone(), *reconnecting)),
        }
    }

    /// Tries once to connect; on failure starts the reconnect loop.
    ///
    /// # Errors
    /// The connect error.
    pub async fn connect_now(self: &Arc<Self>) -> Result<Connection, StoreError> {
        match self.connect_current().await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                self.lost(&e.to_string());
                Err(e)
            }
        }
    }

    /// Connects with the current settings and installs the connection,
    /// unless the settings changed meanwhile: then the connection is dropped
    /// and the new settings are tried at once.
    async fn connect_current(&self) -> Result<Connection, StoreError> {
        loop {
            let (settings, known, generation) = {
                let state = lock(&self.state);
                (
                    state.settings.clone(),
                    state.known.clone(),
                    state.generation,
                )
            };
            let connected = Connection::connect_knowing(&settings, &known).await;
            let mut state = lock(&self.state);
            if state.generation != generation {
                tracing::info!(
                    "Redis settings changed while connecting; connecting again with the new ones"
                );
                continue;
            }
            let conn = connected?;
            state.serial += 1;
            state.link = LinkStatus::Up(conn.clone());
            state.connected_at = Some(tokio::time::Instant::now());
            drop(state);
            (self.on_change)(true);
            return Ok(conn);
        }
    }

    /// Reports the connection as lost, whichever it is: drops it and
    /// reconnects in the background.
    pub fn lost(self: &Arc<Self>, reason: &str) {
        self.mark_lost(None, reason);
    }

    /// Reports the connection `id` (from [`Reconnecting::checkout`]) as lost.
    /// Ignored when it has been replaced already, or is being replaced.
    pub fn lost_connection(self: &Arc<Self>, id: ConnectionId, reason: &str) {
        self.mark_lost(Some(id), reason);
    }

    fn mark_lost(self: &Arc<Self>, id: Option<ConnectionId>, reason: &str) {
        let was_up = {
            let mut state = lock(&self.state);
            let was_up = match &state.link {
                LinkStatus::Down {
                    reconnecting: true, ..
                } => return,
                LinkStatus::Up(_) if id.is_some_and(|id| id.0 != state.serial) => return,
                LinkStatus::Up(_) => true,
                LinkStatus::Down { .. } => false,
            };
            state.link = LinkStatus::Down {
                reason: reason.to_owned(),
                reconnecting: true,
            };
            was_up
        };
        if was_up {
            (self.on_change)(false);
            tracing::warn!(reason, "Redis connection lost; reconnecting with backoff");
        }
        let this = Arc::downgrade(self);
        tokio::spawn(Self::reconnect_loop(this));
    }

    /// Holds only a weak reference between attempts, so it ends once every
    /// user of the link has gone.
    async fn reconnect_loop(this: std::sync::Weak<Self>) {
        let mut backoff = MIN_RECONNECT_INTERVAL;
        let first_wait = {
            let Some(strong) = this.upgrade() else { return };
            let state = lock(&strong.state);
            let now = tokio::time::Instant::now();
            state
                .connected_at
                .map(|at| (at + MIN_RECONNECT_INTERVAL).saturating_duration_since(now))
                .unwrap_or_default()
        };
        tokio::time::sleep(first_wait).await;
        loop {
            let Some(strong) = this.upgrade() else { return };
            match strong.connect_current().await {
                Ok(conn) => {
                    tracing::info!(address = conn.address(), "Redis connection restored");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?backoff, "reconnect failed");
                    lock(&strong.state).link = LinkStatus::Down {
                        reason: e.to_string(),
                        reconnecting: true,
                    };
                }
            }
            let max_backoff = lock(&strong.state).max_backoff;
            drop(strong);
            backoff = backoff.min(max_backoff);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// New settings (after a reload) take effect with the next connection;
    /// when they differ, the current one is dropped so that happens now, and
    /// a connection being made with the old ones is discarded.
    pub fn update_settings(self: &Arc<Self>, settings: RedisSettings) {
        let changed = {
            let mut state = lock(&self.state);
            let changed = state.settings != settings;
            if changed {
                if seeds_of(&state.settings) != seeds_of(&settings) {
                    state.known = KnownNodes::default();
                }
                state.settings = settings;
                state.generation += 1;
            }
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
    pub async fn ping(self: &Arc<Self>, timeout: Duration) -> Result<(), String> {
        let (mut conn, id) = self.current().map_err(|(reason, _)| reason)?;
        match tokio::time::timeout(timeout, conn.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let reason = e.to_string();
                if e.is_connection_lost() {
                    self.lost_connection(id, &reason);
                }
                Err(reason)
            }
            Err(_) => {
                let reason = format!("Redis at {}: no PONG within {timeout:?}", conn.address());
                self.lost_connection(id, &reason);
                Err(reason)
            }
        }
    }
}

/// The seed addresses of `settings` (and its mode): a change of these may
/// point at another cluster.
fn seeds_of(settings: &RedisSettings) -> (RedisMode, Vec<String>) {
    let seeds = std::iter::once(&settings.url)
        .chain(&settings.nodes)
        .map(|url| url.connection_info().addr().to_string())
        .collect();
    (settings.mode, seeds)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
        let nodes = parse_cluster_nodes(NODES).unwrap();
        let owning: Vec<(&str, Vec<std::ops::RangeInclusive<u16>>)> = nodes
            .iter()
            .filter(|n| n.owns_slots())
            .map(|n| (n.address.as_str(), n.slots.clone()))
            .collect();
        assert_eq!(
            owning,
            [
                ("127.0.0.1:30002", vec![5461..=10922]),
                ("127.0.0.1:30003", vec![10923..=16383, 93..=93]),
                ("127.0.0.1:30001", vec![0..=92, 94..=5460]),
            ]
        );
        // The migration marker stays for the check that decides "finished".
        assert_eq!(
            nodes[1].migrations,
            [Migration {
                slot: 93,
                importing: false,
                peer: "292f".to_owned()
            }]
        );
        assert_eq!(nodes[2].config_epoch, 3);
    }

    #[test]
    fn a_malformed_cluster_nodes_line_is_an_error_naming_it_never_skipped() {
        let good = "292f 127.0.0.1:30003@31003 myself,master - 0 0 3 connected 0-16383\n";
        assert_eq!(parse_cluster_nodes(good).unwrap().len(), 1);
        for (bad, why) in [
            ("292f 127.0.0.1:30003@31003 myself,master - 0 0", "fields"),
            (
                "292f nowhere@31003 myself,master - 0 0 3 connected 0-1",
                "host:port",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 x connected 0-1",
                "epoch",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected 0-16384",
                "slot range",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected 10-5",
                "slot range",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected +5",
                "slot range",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected [93-x]",
                "migration",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected [93->-]",
                "migration",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected [16384-<-ab]",
                "migration",
            ),
        ] {
            let text = format!("{good}{bad}\n");
            let err = parse_cluster_nodes(&text).unwrap_err();
            assert!(
                err.starts_with("line 2: ") && err.contains(why),
                "{bad}: {err}"
            );
        }
        // Importing and migrating markers both parse.
        let marked =
            "292f 127.0.0.1:30003@31003 myself,master - 0 0 3 connected 1-2 [3-<-ab] [1->-cd]";
        let own = own_assignment(marked).unwrap();
        assert_eq!(own.migrations.len(), 2);
        assert_eq!(own.importing(), BTreeSet::from([3]));
        assert_eq!(
            own.migrations[0].to_string(),
            "slot 3 importing from node ab"
        );
    }

    #[test]
    fn no_primary_serving_slots_is_an_error_not_nothing_to_sweep() {
        let fresh = "66d6 :53703@47567 myself,master - 0 0 0 connected\n";
        assert_eq!(
            primaries_in(fresh).unwrap_err(),
            "no primary serves any slot"
        );
        assert_eq!(primaries_in("").unwrap_err(), "no primary serves any slot");
        let only_replicas_own_nothing = "\
07c3 127.0.0.1:30004@31004 myself,slave e7d1 0 1 4 connected
e7d1 127.0.0.1:30001@31001 master - 0 1 1 connected
";
        assert!(primaries_in(only_replicas_own_nothing).is_err());
        let primaries = primaries_in(NODES).unwrap();
        assert_eq!(primaries.len(), 3);
    }

    #[test]
    fn a_node_answers_for_itself_with_exactly_one_myself_line() {
        let own = own_assignment(NODES).unwrap();
        assert_eq!(
            own,
            SlotAssignment {
                primary: true,
                config_epoch: 3,
                slots: vec![10923..=16383, 93..=93],
                migrations: Vec::new(),
            }
        );
        // Before, a reply without its own line read as "not a cluster node":
        // the node counted as finished whatever its slots did.
        let without_myself = NODES.replace("myself,master", "master");
        assert_eq!(
            own_assignment(&without_myself).unwrap_err(),
            "no line flagged myself"
        );
        let twice = NODES.replace("master,fail", "myself,master");
        assert_eq!(
            own_assignment(&twice).unwrap_err(),
            "more than one line flagged myself"
        );
        let replica = own_assignment(
            &NODES
                .replace("myself,master", "x")
                .replace("slave", "myself,slave"),
        )
        .unwrap();
        assert!(!replica.primary && replica.slots.is_empty());
    }

    #[test]
    fn the_nodes_to_try_later_are_those_with_an_address_not_failed() {
        let fresh = "66d6 :53703@47567 master - 0 0 0 connected\n";
        let nodes = parse_cluster_nodes(&format!("{NODES}{fresh}")).unwrap();
        let known = reachable_nodes(&nodes);
        let known: Vec<(&str, &str)> = known
            .iter()
            .map(|n| (n.address.as_str(), n.id.as_str()))
            .collect();
        assert_eq!(
            known,
            [
                ("127.0.0.1:30004", "07c3"),
                ("127.0.0.1:30002", "67ed"),
                ("127.0.0.1:30003", "292f"),
                ("127.0.0.1:30005", "9fa1"),
            ]
        );
    }

    #[test]
    fn cluster_slots_names_its_nodes_and_what_is_unusable_is_left_out() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let node = |host: &str, port: i64, id: &str| {
            Value::Array(vec![
                bulk(host),
                Value::Int(port),
                bulk(id),
                Value::Array(vec![]),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 30001, "a1"),
                node("127.0.0.1", 30004, "a4"),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("", 30002, "a2"),
                node("?", 30005, "a5"),
                node("127.0.0.1", 0, "a6"),
                node("127.0.0.1", 30007, ""),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(30008)]),
                Value::Nil,
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("::1", 30003, "a3"),
                // A primary listed for two ranges is one node.
                node("127.0.0.1", 30001, "a1"),
            ]),
            Value::Int(7),
        ]);
        let nodes: Vec<(String, String)> = nodes_in_slots(&reply)
            .into_iter()
            .map(|n| (n.address, n.id))
            .collect();
        let expected: Vec<(String, String)> = [
            ("127.0.0.1:30001", "a1"),
            ("127.0.0.1:30004", "a4"),
            ("[::1]:30003", "a3"),
        ]
        .iter()
        .map(|(a, i)| ((*a).to_owned(), (*i).to_owned()))
        .collect();
        assert_eq!(nodes, expected);
        assert!(nodes_in_slots(&Value::Nil).is_empty());
        assert_eq!(
            split_address("[::1]:30003"),
            Some(("::1".to_owned(), 30003))
        );
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
