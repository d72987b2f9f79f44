//! The replica lock: one lease per primary, and the share of the primaries
//! this daemon takes when several daemons sweep one cluster.

use std::sync::Arc;
use std::time::Duration;

use super::fleet::{registry_of, Fleet};
use super::scripts::{LeaseScript, ACQUIRE, KEEP_ALIVE, REGISTER, SETTLE};
use crate::config::LockSettings;
use crate::mutex::lock;
use crate::schedule::Schedule;
use crate::store::{Connection, Primary, StoreError};

/// The replica lock, as leases: one key per primary swept, taken if free
/// (or already ours) once this daemon's checks have passed, kept alive
/// while that primary is swept, then, when it is finished, left to expire
/// 90% into the period so the next period's sweep finds it free. A lease
/// whose primary was not finished, and every lease of a round that failed,
/// is given back at once.
///
/// A single server has one lease, the key `lock.key` itself. A cluster has
/// one per primary, `lock.key:host:port{tag}`, and the daemons register
/// in `lock.key:daemons` so each takes its share of the primaries
/// (different ones for each daemon): N daemons split M primaries. A daemon
/// is registered only while it can sweep: it registers after its checks
/// pass, and leaves the registry when it refuses or fails, stops, changes
/// `lock.key`, or is still sweeping when its period ends (it will skip the
/// next tick); its registration lasts until every daemon has registered in
/// the next period (the next tick, plus `sweep.jitter`, plus `lock.ttl`),
/// so a daemon that dies is counted for one period more, no longer.
pub(super) struct ReplicaLock {
    key: String,
    pub(super) ttl: Duration,
    pub(super) fleet: Arc<Fleet>,
}

/// The lease ttl in force: `lock.ttl`, but never longer than the period.
/// A lease outlives its holder by up to the ttl, so a longer one would keep
/// the fleet off a primary for more than a period after its holder dies
/// (30 s with a 2 s interval); the keep-alive runs every third of the ttl,
/// so a ttl of one period still keeps a running sweep's leases.
fn effective_ttl(ttl: Duration, schedule: &Schedule) -> Duration {
    ttl.min(schedule.period())
}

/// The primaries of `nodes` that the daemon ranked `rank` among `daemons`
/// sweeps: M/N (rounded up) of them, starting at an offset given by the
/// rank. The shares of all ranks cover every primary.
fn share<T: Clone>(nodes: &[T], rank: usize, daemons: usize) -> Vec<T> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let share = nodes.len().div_ceil(daemons.max(1));
    nodes
        .iter()
        .cycle()
        .skip(rank * share % nodes.len())
        .take(share)
        .cloned()
        .collect()
}

impl ReplicaLock {
    /// The lock of `settings` for a round of `schedule`, or `None` when the
    /// lock is off.
    pub(super) fn new(
        settings: &LockSettings,
        schedule: &Schedule,
        fleet: &Arc<Fleet>,
    ) -> Option<Arc<Self>> {
        settings.enabled.then(|| {
            Arc::new(Self {
                key: settings.key.clone(),
                ttl: effective_ttl(settings.ttl, schedule),
                fleet: Arc::clone(fleet),
            })
        })
    }

    /// The longest a lease script may take: the keep-alive runs every
    /// third of the ttl.
    pub(super) fn timeout(&self) -> Duration {
        self.ttl / 3
    }

    async fn run(
        &self,
        conn: &mut Connection,
        key: &str,
        script: &LeaseScript,
        ms: Duration,
    ) -> Result<bool, StoreError> {
        let answer: i64 = script
            .run(conn, key, &self.fleet.holder, ms, self.timeout())
            .await?;
        Ok(answer == 1)
    }

    /// The lease key of a primary: `lock.key` for a single server; in a
    /// cluster `lock.key:host:port{tag}`, hash-tagged into one of that
    /// primary's own slots, so a primary that is down takes only its own
    /// lease with it.
    pub(super) fn key_for(&self, primary: &Primary) -> String {
        if primary.slots.is_empty() {
            self.key.clone()
        } else {
            primary.key_on(&format!("{}:{}", self.key, primary.address))
        }
    }

    /// Takes a lease for the sweep: at least `ttl`, so the keep-alive
    /// (every ttl/3) always finds it, however short the period's lease.
    pub(super) async fn acquire(
        &self,
        conn: &mut Connection,
        key: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let taken = self.run(conn, key, &ACQUIRE, lease.max(self.ttl)).await?;
        if taken {
            lock(&self.fleet.taken).insert(key.to_owned());
        }
        Ok(taken)
    }

    /// After a primary is finished: keep its lease only for what is left
    /// of the period's.
    pub(super) async fn settle(
        &self,
        conn: &mut Connection,
        key: &str,
        left: Duration,
    ) -> Result<bool, StoreError> {
        self.run(conn, key, &SETTLE, left).await
    }

    pub(super) async fn keep_alive(
        &self,
        conn: &mut Connection,
        key: &str,
    ) -> Result<bool, StoreError> {
        self.run(conn, key, &KEEP_ALIVE, self.ttl).await
    }

    pub(super) async fn release(
        &self,
        conn: &mut Connection,
        key: &str,
    ) -> Result<bool, StoreError> {
        self.fleet.release(conn, key, self.timeout()).await
    }

    /// The primaries this daemon should sweep, and whether it registered:
    /// all of them for a single server or a lone daemon; with N live
    /// daemons, its [`share`]. No daemon needs to take more. If the
    /// registry cannot be reached (its primary is down, or has not answered
    /// within a third of the ttl: its writes stall), all of them: the
    /// leases still keep two daemons off one primary.
    pub(super) async fn share_of(
        &self,
        conn: &mut Connection,
        nodes: &[Primary],
        registration: Duration,
    ) -> (Vec<Primary>, bool) {
        if !conn.is_cluster() || nodes.len() < 2 {
            return (nodes.to_vec(), false);
        }
        let registry = registry_of(&self.key);
        // Registered under another lock.key before a reload: leave it.
        let stale = lock(&self.fleet.registered)
            .clone()
            .filter(|registered| *registered != registry);
        if let Some(stale) = stale {
            self.fleet.leave(conn, Some(&stale), self.timeout()).await;
        }
        *lock(&self.fleet.registered) = Some(registry.clone());
        // Bounded like the lease scripts: a stall on the registry's primary
        // must not keep this daemon from the primaries that answer.
        let ranked = REGISTER
            .run(
                conn,
                &registry,
                &self.fleet.holder,
                registration,
                self.timeout(),
            )
            .await;
        let (rank, daemons): (usize, usize) = match ranked {
            Ok(ranked) => ranked,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the other daemons; trying every primary");
                return (nodes.to_vec(), false);
            }
        };
        (share(nodes, rank, daemons), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::testing::every;

    #[test]
    fn the_shares_of_all_daemons_cover_every_primary() {
        let nodes: Vec<u32> = (0..5).collect();
        assert_eq!(share(&nodes, 0, 1), nodes, "a lone daemon sweeps all");
        assert_eq!(share(&nodes, 0, 2), [0, 1, 2]);
        assert_eq!(share(&nodes, 1, 2), [3, 4, 0], "wraps around");
        for daemons in 1..=7 {
            let mut covered: Vec<u32> = (0..daemons)
                .flat_map(|rank| share(&nodes, rank, daemons))
                .collect();
            covered.sort_unstable();
            covered.dedup();
            assert_eq!(covered, nodes, "{daemons} daemons");
            assert_eq!(share(&nodes, 0, daemons).len(), 5_usize.div_ceil(daemons));
        }
        // More daemons than primaries: one each, none left without a share.
        assert_eq!(share(&[7, 8], 3, 4), [8]);
        assert_eq!(share(&nodes, 0, 0), nodes, "no count: all of them");
        assert!(share::<u32>(&[], 0, 3).is_empty());
    }

    #[test]
    fn the_lease_ttl_is_never_longer_than_the_period() {
        let ttl = Duration::from_secs(30);
        assert_eq!(effective_ttl(ttl, &every(2)), Duration::from_secs(2));
        assert_eq!(effective_ttl(ttl, &every(3600)), ttl);
    }

    #[test]
    fn the_lock_is_built_from_its_settings_or_not_at_all() {
        let fleet = Arc::new(Fleet::new());
        // Enabled, with a ttl of 30 s.
        let settings = LockSettings::default();
        let lock = ReplicaLock::new(&settings, &every(6), &fleet);
        let lock = lock.as_deref().map(|lock| (lock.ttl, lock.timeout()));
        assert_eq!(lock, Some((Duration::from_secs(6), Duration::from_secs(2))));
        let off = LockSettings {
            enabled: false,
            ..settings
        };
        assert!(ReplicaLock::new(&off, &every(6), &fleet).is_none());
    }
}
