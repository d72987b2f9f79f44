//! [`Connection`]: one type over the three shapes of link (a server, the
//! cluster client, one node of a cluster), with the calls every caller
//! needs whatever the shape: run a command or pipeline and get an error
//! that names the address, PING.
//!
//! How a connection is made lives elsewhere: [`super::server`] opens one
//! server, [`super::sentinel`] and [`super::cluster`] build on it, and
//! [`super::connect`] picks by `redis.mode`.

use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionInfo, Value};

use super::error::StoreError;
use super::known_nodes::KnownNodes;
use super::server::open_server;
use crate::config::RedisSettings;

/// A connection to Redis: one server, one primary of a cluster, or a
/// cluster as a whole.
///
/// Cheap to clone; clones share sockets. It is a redis-rs
/// [`ConnectionLike`], so commands and pipelines run on it directly.
#[derive(Clone)]
pub struct Connection {
    pub(super) link: Link,
    /// `host:port` (for a whole cluster: its seeds), for error messages.
    pub(super) address: String,
}

/// The three shapes of connection behind one API.
#[derive(Clone)]
pub(super) enum Link {
    /// One server: standalone, or the primary the sentinels named; with
    /// what it was opened with, so that [`Connection::separate`] can open
    /// another socket to exactly that server.
    Server(MultiplexedConnection, Arc<(ConnectionInfo, RedisSettings)>),
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
            Link::Server(conn, _) | Link::Node { direct: conn, .. } => conn.req_packed_command(cmd),
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
            Link::Server(conn, _) | Link::Node { direct: conn, .. } => {
                conn.req_packed_commands(pipeline, offset, count)
            }
            Link::Cluster { client, .. } => client.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Server(conn, _) | Link::Node { direct: conn, .. } => conn.get_db(),
            Link::Cluster { client, .. } => client.get_db(),
        }
    }
}

impl Connection {
    /// Opens a connection to exactly `info`, with the credentials, TLS files
    /// and timeouts of `settings`.
    pub(super) async fn open(
        info: ConnectionInfo,
        settings: &RedisSettings,
    ) -> Result<Self, StoreError> {
        let direct = open_server(info.clone(), settings).await?;
        Ok(Self {
            address: direct.0,
            link: Link::Server(direct.1, Arc::new((info, settings.clone()))),
        })
    }

    /// A new connection of its own (another socket) to the same server or
    /// cluster node as this one, with the same credentials and TLS: for
    /// what must not queue behind this connection's pipelines (the sweep
    /// throttle's latency probe measures what other clients feel). A
    /// whole-cluster client gives a clone: it has no one server.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn separate(&self) -> Result<Self, StoreError> {
        match &self.link {
            Link::Server(_, opened) => Self::open(opened.0.clone(), &opened.1).await,
            Link::Node { .. } => self.node(&self.address).await,
            Link::Cluster { .. } => Ok(self.clone()),
        }
    }

    /// `host:port` of the server (for a cluster client, its seeds).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// True for the cluster client and for connections to one of its primaries.
    pub fn is_cluster(&self) -> bool {
        !matches!(self.link, Link::Server(..))
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
                let pong = client.clone().route_command(ping, routing).await;
                self.context("PING", pong).map(drop)
            }
            _ => self.query::<String>("PING", &ping).await.map(drop),
        }
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

    /// `result` of a request sent on this connection, its error wrapped
    /// as [`Connection::error`] does: for what [`Connection::query`] and
    /// [`Connection::query_pipeline`] do not send (a script invocation, a
    /// routed command).
    ///
    /// # Errors
    /// [`StoreError::Command`] naming `what`, when `result` is an error.
    pub fn context<T>(
        &self,
        what: &'static str,
        result: redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        result.map_err(|source| self.error(what, source))
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
        let reply = cmd.query_async(self).await;
        self.context(what, reply)
    }

    /// Runs a pipeline in one round trip and converts its replies.
    ///
    /// # Errors
    /// [`StoreError::Command`] naming `what`.
    pub async fn query_pipeline<T: redis::FromRedisValue>(
        &mut self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let replies = pipe.query_async(self).await;
        self.context(what, replies)
    }
}
