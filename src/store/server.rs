//! Opening one server: the ACL user and password, the TLS files and the
//! connect timeout, the same for a standalone server, a sentinel, the
//! primary a sentinel names and each node of a cluster.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo};

use super::error::StoreError;
use crate::config::RedisSettings;

/// Opens one server connection; returns it with its `host:port`.
pub(super) async fn open_server(
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
pub(super) async fn within<T>(
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
pub(super) fn with_credentials(
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
pub(super) fn at_address(info: ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
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

/// `host:port` (`[::1]:port` for IPv6) as its parts.
pub(super) fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

/// The CA and client certificate files, read and checked, when any is
/// configured. Server-name checking stays on: the URL's host must match the
/// certificate.
pub(super) fn tls_certificates(
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
