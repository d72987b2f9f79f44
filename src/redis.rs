//! Connecting to Redis.
//!
//! One [`Connection`] is a multiplexed connection: cheap to clone, and every
//! clone pipelines its requests onto the same socket. That is what lets a sweep
//! keep several pipelines in flight without opening more connections.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};

use crate::config::{redact_url, RedisSettings};

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
    /// A secret could not be read.
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

/// A connection to one Redis server.
#[derive(Clone)]
pub struct Connection {
    /// The multiplexed connection; clones share its socket.
    inner: MultiplexedConnection,
    /// `host:port`, for error messages.
    address: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects with the URL, credentials and timeouts of `settings`.
    ///
    /// # Errors
    /// [`RedisError::Connect`] naming the address when Redis cannot be reached
    /// within `connect_timeout` or rejects the credentials.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisError> {
        let invalid = |source| RedisError::InvalidUrl {
            url: redact_url(&settings.url),
            source,
        };
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(invalid)?;
        let mut redis_info = info.redis_settings().clone();
        if let Some(user) = &settings.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = settings.resolved_password()? {
            redis_info = redis_info.set_password(password.expose());
        }
        let info = info.set_redis_settings(redis_info);
        let address = info.addr().to_string();
        let client = Client::open(info).map_err(invalid)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout));
        // redis-rs applies the connection timeout to the TCP connect; the
        // handshake (HELLO/AUTH/SELECT) is bounded by the response timeout. An
        // outer bound makes "unreachable" come back within connect_timeout
        // whatever stage hangs.
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        let inner = match tokio::time::timeout(settings.connect_timeout, connecting).await {
            Ok(Ok(inner)) => inner,
            Ok(Err(source)) => return Err(RedisError::Connect { address, source }),
            Err(_elapsed) => {
                return Err(RedisError::Connect {
                    address,
                    source: redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", settings.connect_timeout),
                    )),
                })
            }
        };
        Ok(Self { inner, address })
    }

    /// `host:port` of the server.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The underlying redis-rs connection, for commands this crate does not wrap.
    pub fn raw(&mut self) -> &mut MultiplexedConnection {
        &mut self.inner
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
        match cmd.query_async(&mut self.inner).await {
            Ok(value) => Ok(value),
            Err(source) => Err(self.error(what, source)),
        }
    }
}
