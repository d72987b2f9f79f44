//! The leases of a round while it sweeps: kept alive, settled or given
//! back as each primary ends, and the registry left if the sweep outlives
//! its period.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio::sync::mpsc;

use super::lease::ReplicaLock;
use crate::metrics::Metrics;
use crate::store::Connection;

/// A primary's sweep ended (told by the sweep as it happens).
pub(super) struct NodeEnded {
    pub(super) node: String,
    pub(super) finished: bool,
}

/// The leases of one round while it sweeps.
pub(super) struct LeaseKeeper<'a> {
    pub(super) lock: &'a ReplicaLock,
    pub(super) conn: Connection,
    /// Lease key by primary (`host:port`), for the primaries still being swept.
    pub(super) held: BTreeMap<String, String>,
    /// When the period's lease ends (just before the next tick).
    pub(super) lease_ends: Instant,
    /// Whether this round registered in the registry of daemons.
    pub(super) registered: bool,
    pub(super) metrics: &'a Metrics,
}

impl LeaseKeeper<'_> {
    /// Runs beside the sweep; never returns. Extends the leases still held
    /// every third of the ttl; settles or releases each as its primary
    /// ends; and if the sweep is still running when the period's lease
    /// ends, leaves the registry: the loop will skip the next tick, so the
    /// other daemons' shares must cover this daemon's primaries then (the
    /// ones it is still sweeping stay leased).
    pub(super) async fn keep(
        &mut self,
        ended: &mut mpsc::UnboundedReceiver<NodeEnded>,
    ) -> std::convert::Infallible {
        let every = self.lock.ttl / 3;
        let mut next_keep_alive = Instant::now() + every;
        let mut warned = BTreeSet::new();
        loop {
            tokio::select! {
                Some(end) = ended.recv() => self.end(end).await,
                () = tokio::time::sleep_until(next_keep_alive.into()) => {
                    next_keep_alive = Instant::now() + every;
                    self.keep_alive(&mut warned).await;
                }
                () = tokio::time::sleep_until(self.lease_ends.into()), if self.registered => {
                    self.registered = false;
                    tracing::info!(
                        "the sweep outlives its period; leaving the registry so that the other \
                         daemons cover this daemon's primaries at the next tick"
                    );
                    let timeout = self.lock.timeout();
                    self.lock.fleet.leave(&mut self.conn, None, timeout).await;
                }
            }
        }
    }

    async fn keep_alive(&mut self, warned: &mut BTreeSet<String>) {
        for key in self.held.values() {
            match self.lock.keep_alive(&mut self.conn, key).await {
                Ok(true) => {}
                // Not fatal: a second sweeper is redundant work, never a wrong deletion.
                Ok(false) => {
                    if warned.insert(key.clone()) {
                        tracing::warn!(key, "lost a lease during a sweep");
                    }
                }
                Err(e) => tracing::warn!(error = %e, key, "cannot extend a lease"),
            }
        }
    }

    /// A primary's sweep ended: a finished one keeps its lease until the
    /// period's lease ends (the period counts as swept); any other gives
    /// it back at once.
    pub(super) async fn end(&mut self, end: NodeEnded) {
        let Some(key) = self.held.remove(&end.node) else {
            return;
        };
        self.metrics.set_lock_held(self.held.len());
        if end.finished {
            let left = self.lease_ends.saturating_duration_since(Instant::now());
            if let Err(e) = self.lock.settle(&mut self.conn, &key, left).await {
                tracing::warn!(error = %e, key, "cannot settle the lease");
            }
        } else if let Err(e) = self.lock.release(&mut self.conn, &key).await {
            tracing::warn!(error = %e, key, "cannot release the lease");
        }
    }

    /// Gives back every lease still held.
    pub(super) async fn release_all(&mut self) {
        for (_, key) in std::mem::take(&mut self.held) {
            if let Err(e) = self.lock.release(&mut self.conn, &key).await {
                tracing::warn!(error = %e, key, "cannot release the lease");
            }
        }
        self.metrics.set_lock_held(0);
    }
}
