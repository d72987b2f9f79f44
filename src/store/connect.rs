//! [`Connection::connect`]: the one entry point, picking how to connect by
//! `redis.mode`. Above the three ways so that none of them needs to know
//! the others.

use super::connection::Connection;
use super::error::StoreError;
use super::known_nodes::KnownNodes;
use super::sentinel::discover_primary;
use crate::config::{RedisMode, RedisSettings};

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
    pub(super) async fn connect_knowing(
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
}
