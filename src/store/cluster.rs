//! Cluster mode: the cluster client (from the seeds, else through the
//! nodes last seen), the primaries a sweep visits, a direct connection to
//! one of them, and the ASK path for a key whose slot is moving.

use std::collections::BTreeSet;
use std::sync::Arc;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, ConnectionInfo};

use super::connection::{Connection, Link};
use super::error::StoreError;
use super::known_nodes::{
    cluster_slots_command, nodes_in_slots, reachable_nodes, still_a_node, KnownNode, KnownNodes,
};
use super::server::{
    at_address, open_server, split_address, tls_certificates, with_credentials, within,
};
use super::slots::Primary;
use super::topology::{
    cluster_nodes_command, own_assignment, parse_cluster_nodes, primaries_of, SlotAssignment,
};
use crate::config::RedisSettings;

impl Connection {
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
    pub(super) async fn connect_cluster(
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
            .and_then(|value| redis::from_redis_value::<String>(value).map_err(Into::into));
        let nodes = self.context("CLUSTER NODES", nodes)?;
        let nodes = parse_cluster_nodes(&nodes)
            .map_err(|reason| self.bad_reply("CLUSTER NODES", reason))?;
        known.remember(reachable_nodes(&nodes));
        primaries_of(nodes).map_err(|reason| self.bad_reply("CLUSTER NODES", reason))
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
            Link::Server(..) => None,
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
