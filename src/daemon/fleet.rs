//! This daemon's place in the fleet: the name it holds leases under, the
//! registry of daemons it is counted in, and every lease it has taken, so
//! that a failed round, a reload or the shutdown can give them back.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use super::scripts::{DEREGISTER, RELEASE};
use crate::mutex::lock;
use crate::store::{Connection, StoreError};

/// This daemon's place in the fleet, shared by its rounds, reloads and
/// shutdown: its name, the registry it is in, and the leases it holds.
pub(super) struct Fleet {
    /// Unique per process, so only the holder can extend or release.
    pub(super) holder: String,
    /// The registry (`lock.key:daemons`) this daemon may be counted in.
    pub(super) registered: Mutex<Option<String>>,
    /// Every lease key this daemon has taken and not released, across
    /// rounds, so that shutdown can release them even if the round did not
    /// finish.
    pub(super) taken: Mutex<BTreeSet<String>>,
}

/// How long each lease script may take at shutdown (and when a reload
/// changes `lock.key`).
pub(super) const SHUTDOWN_RELEASE: Duration = Duration::from_secs(2);

/// The registry of the daemons sharing `lock_key`.
pub(super) fn registry_of(lock_key: &str) -> String {
    format!("{lock_key}:daemons")
}

impl Fleet {
    /// A new member: host name, process id and a random part, so that two
    /// processes never share a name, even in one container.
    pub(super) fn new() -> Self {
        Self {
            holder: format!(
                "{}:{}:{:016x}",
                hostname(),
                std::process::id(),
                rand::rng().random::<u64>()
            ),
            registered: Mutex::default(),
            taken: Mutex::default(),
        }
    }

    /// Deletes the lease `key` if it is still ours.
    pub(super) async fn release(
        &self,
        conn: &mut Connection,
        key: &str,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let released: i64 = RELEASE
            .run(conn, key, &self.holder, Duration::ZERO, timeout)
            .await?;
        lock(&self.taken).remove(key);
        Ok(released == 1)
    }

    /// Leaves `registry` (`None`: the one it is in, if any), so that the
    /// other daemons' shares cover this daemon's primaries from their next
    /// round.
    pub(super) async fn leave(
        &self,
        conn: &mut Connection,
        registry: Option<&str>,
        timeout: Duration,
    ) {
        let left = {
            let mut registered = lock(&self.registered);
            match (registry, registered.as_deref()) {
                (Some(wanted), Some(current)) if wanted != current => Some(wanted.to_owned()),
                _ => registered.take().or_else(|| registry.map(str::to_owned)),
            }
        };
        let Some(registry) = left else { return };
        match DEREGISTER
            .run::<i64>(conn, &registry, &self.holder, Duration::ZERO, timeout)
            .await
        {
            Ok(1) => tracing::info!(registry, "left the registry of daemons"),
            Ok(_) => {}
            Err(e) => {
                // It expires by itself: at the latest one period on.
                tracing::warn!(error = %e, registry, "cannot leave the registry of daemons");
            }
        }
    }

    /// Releases every lease still ours and leaves the registry: this daemon
    /// stops, or cannot sweep now.
    /// Each script is bounded by `timeout`, and they run at once (each
    /// lease lives on its own primary), so this takes about `timeout` at
    /// most, however many primaries are down.
    pub(super) async fn withdraw(&self, conn: &Connection, timeout: Duration) {
        let keys = lock(&self.taken).clone();
        let releases = keys.iter().map(|key| {
            let mut conn = conn.clone();
            async move {
                match self.release(&mut conn, key, timeout).await {
                    Ok(true) => tracing::info!(key, "released the replica lock"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, key, "cannot release the lease"),
                }
            }
        });
        let leaving = async {
            self.leave(&mut conn.clone(), None, timeout).await;
        };
        futures_util::future::join(futures_util::future::join_all(releases), leaving).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}
