//! Sentinel mode: finding the primary of `redis.master_name` by asking the
//! sentinels, and confirming it is one (ROLE) before using it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use redis::{ConnectionInfo, Value};

use super::connection::Connection;
use super::error::StoreError;
use super::server::at_address;
use crate::config::{RedisSettings, RedisUrl};
use crate::mutex::lock;

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
pub(super) async fn discover_primary(settings: &RedisSettings) -> Result<Connection, StoreError> {
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
        match open_primary(named, settings).await {
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
) -> Result<Connection, StoreError> {
    let conn = Connection::open(info, settings).await?;
    let mut probe = conn.clone();
    let role: Vec<Value> = probe.query("ROLE", &redis::cmd("ROLE")).await?;
    if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
        return Err(StoreError::NotPrimary {
            address: conn.address.clone(),
        });
    }
    Ok(conn)
}
