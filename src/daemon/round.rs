//! One sweep round, run beside the loop: its `sweep.jitter` delay, the
//! checks, the leases of its share (when the lock is on) and the sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::keeper::{LeaseKeeper, NodeEnded};
use super::lease::ReplicaLock;
use super::outcome::{failed, finished, RoundFailure, RoundSweeps};
use super::trigger::{RoundKind, Trigger};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::mutex::lock;
use crate::schedule::Schedule;
use crate::store::{Connection, ConnectionId, Primary, Reconnecting, StoreError};
use crate::sweep::{self, SweepBy, SweepError, SweepMode, SweepProgress};

/// A round started by the loop, polled beside its other work.
pub(super) type RunningRound =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RoundFailure>> + Send>>;

/// How often index rounds read the size of the due index, for
/// `due_index_entries`.
const INDEX_SIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// When a round of this daemon last read the due index's size, per
/// primary (by address).
pub(super) type IndexSizeRead = Arc<std::sync::Mutex<BTreeMap<String, Instant>>>;

/// Everything one sweep round needs, cloned out of the loop's state so the
/// round can run while the loop keeps answering ticks and signals.
pub(super) struct Round {
    pub(super) settings: Arc<Settings>,
    pub(super) redis: Arc<Reconnecting>,
    pub(super) metrics: Metrics,
    pub(super) lock: Option<Arc<ReplicaLock>>,
    pub(super) schedule: Schedule,
    pub(super) trigger: Trigger,
    pub(super) kind: RoundKind,
    /// When a round last read each primary's due index size: an index
    /// round reads a primary's too (a `ZCARD` per hash slot, as much Redis
    /// time as the rest of a quiet index sweep) until one has read it
    /// whole (every slot, none skipped), then once per
    /// [`INDEX_SIZE_EVERY`]. A primary the last index round did not sweep
    /// (another daemon's share: its series were dropped) is forgotten, so
    /// it is read again as soon as it is swept.
    pub(super) index_size_read: IndexSizeRead,
    /// When the round's `sweep.jitter` delay ends and it starts sweeping
    /// (now, when it has none); the loop reads the same instant to say
    /// which of the two a round that overlaps a tick is doing.
    pub(super) sweep_at: tokio::time::Instant,
    /// Cancelled at shutdown: the round stops waiting, sends no new
    /// batch, and finishes the ones in flight.
    pub(super) stop: CancellationToken,
}

impl Round {
    /// Runs the round to its end; stopped while it waits out its delay, it
    /// sweeps nothing and has not failed.
    pub(super) async fn run(self) -> Result<(), RoundFailure> {
        if self.sweep_at > tokio::time::Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(self.sweep_at) => {}
                () = self.stop.cancelled() => return Ok(()),
            }
        }

        // A loss is reported with the id of the connection it happened on,
        // so a late failure cannot drop a connection made since.
        let (conn, id) = match self.redis.checkout() {
            Ok(checked_out) => checked_out,
            Err(reason) => return Err(failed(&self.metrics, self.kind, "connection", reason)),
        };
        let primaries = match conn.primaries().await {
            Ok(primaries) => {
                self.metrics
                    .expose_nodes(primaries.iter().map(|p| p.address.as_str()));
                primaries
            }
            Err(e) => {
                self.report_loss(&e, id);
                self.withdraw(&conn).await;
                return Err(failed(&self.metrics, self.kind, e.kind(), e.to_string()));
            }
        };
        let swept_nodes = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let progress = {
            let (timer, recorder, swept, throttle, size_read) = (
                self.metrics.clone(),
                self.metrics.clone(),
                Arc::clone(&swept_nodes),
                self.metrics.clone(),
                Arc::clone(&self.index_size_read),
            );
            SweepProgress::with_batch_timer(move |rtt| {
                timer.batch_duration.observe(rtt.as_secs_f64());
            })
            .on_node_end(move |node| {
                recorder.full_scan_ended(Some(&node.node));
                if node.index.as_ref().is_some_and(|i| i.index_size.is_some()) {
                    lock(&size_read).insert(node.node.clone(), Instant::now());
                }
                recorder.record_node(node);
                lock(&swept).insert(node.node.clone());
                // Err: the round no longer listens (no lock, or it ended).
                let _ = ended_tx.send(NodeEnded {
                    node: node.node.clone(),
                    finished: node.finished,
                });
            })
            .on_throttle(move |reading| throttle.record_throttle(reading))
        };
        let swept = self.sweep(&conn, &primaries, &progress, ended).await;
        let swept_nodes = lock(&swept_nodes).clone();
        let no_index = BTreeSet::new();
        let index_kept = match (self.settings.sweep.due_index.enabled, self.kind) {
            (false, _) => Some(&no_index),
            (true, RoundKind::Index) => Some(&swept_nodes),
            // A full scan leaves the last index round's readings.
            (true, RoundKind::Full) => None,
        };
        if let Some(kept) = index_kept {
            lock(&self.index_size_read).retain(|node, _| kept.contains(node));
        }
        self.metrics.retain_nodes(
            primaries.iter().map(|p| p.address.as_str()),
            &swept_nodes,
            index_kept,
        );
        match swept {
            Ok(swept) => finished(&self.metrics, &self.settings.lock.key, self.kind, &swept),
            Err(e) => {
                if let SweepError::Redis(e) = &e {
                    self.report_loss(e, id);
                }
                // Before the failure shows in the metrics and /readyz.
                self.withdraw(&conn).await;
                Err(failed(&self.metrics, self.kind, e.kind(), e.to_string()))
            }
        }
    }

    /// After a refusal or a failure: this daemon holds no lease and is
    /// counted in no share until a round of it can sweep again.
    async fn withdraw(&self, conn: &Connection) {
        if let Some(lock) = &self.lock {
            lock.fleet.withdraw(conn, lock.timeout()).await;
        }
    }

    /// Runs the checks that can refuse, then (under the lock, if enabled)
    /// sweeps the primaries this daemon leases.
    async fn sweep(
        &self,
        conn: &Connection,
        primaries: &[Primary],
        progress: &SweepProgress,
        ended: mpsc::UnboundedReceiver<NodeEnded>,
    ) -> Result<RoundSweeps, SweepError> {
        // Before any lease or registration: a daemon that refuses (clock,
        // unit guard, permission) must not hold what another could sweep.
        // Under the lock, a primary's checks get no longer than a lease
        // script: a stalled primary is left unswept (reported unfinished)
        // instead of holding up the others.
        let node_checks = self.lock.as_ref().map(|lock| lock.timeout());
        let settings = &self.settings.sweep;
        let mode = SweepMode::Remove;
        let read_size = size_due(&lock(&self.index_size_read), primaries, Instant::now());
        let by = match self.kind {
            RoundKind::Full => SweepBy::Scan,
            RoundKind::Index => SweepBy::Index {
                read_size: &read_size,
            },
        };
        let stop = &self.stop;
        let mut prepared = sweep::prepare_by(
            conn,
            primaries,
            settings,
            mode,
            progress,
            stop,
            node_checks,
            by,
        )
        .await?;
        // The period ends at the next tick of the round's own plan (a full
        // scan in index mode: `due_index.full_scan`, not the index sweeps'
        // period it outlasts by design): a sweep still running then, or
        // projected to, is behind (`sweep_behind`). A plan with no next
        // tick (a cron run out) sets no end. A full scan that started late
        // (owed, or after an index round) gets its plan's whole period.
        let full = self.kind == RoundKind::Full && settings.due_index.enabled;
        let plan = if full {
            &settings.due_index.full_scan
        } else {
            &self.schedule
        };
        let now = crate::clock::wall_clock();
        let next = plan
            .next_tick_after(now)
            .and_then(|at| (at - now).to_std().ok());
        if let Some(to_next) = next {
            let period = if full {
                to_next.max(plan.period())
            } else {
                to_next
            };
            prepared.set_deadline(tokio::time::Instant::now() + period);
        }
        match &self.lock {
            Some(lock) => {
                self.sweep_leased(lock, conn, prepared, primaries, ended)
                    .await
            }
            None => {
                let swept = primaries.iter().map(|p| p.address.as_str());
                let swept = swept.filter(|node| prepared.can_sweep(node));
                self.started(primaries.len(), swept);
                let report = prepared.run().await?;
                Ok(RoundSweeps {
                    report: Some(report),
                    skipped: 0,
                })
            }
        }
    }

    /// The sweep of `nodes` primaries starts, checks passed and leases
    /// taken: logged, and in index mode a full scan's start is shown for
    /// the primaries it sweeps (only now: a scan refused at its checks,
    /// retried every other tick, must not look like one running).
    fn started<'n>(&self, nodes: usize, swept: impl Iterator<Item = &'n str>) {
        tracing::info!(trigger = ?self.trigger, kind = self.kind.name(), nodes, "sweep started");
        if self.kind == RoundKind::Full && self.settings.sweep.due_index.enabled {
            self.metrics.full_scan_started(swept);
        }
    }

    /// Sweeps the primaries of this daemon's share that it can lease.
    async fn sweep_leased(
        &self,
        lock: &ReplicaLock,
        conn: &Connection,
        mut prepared: sweep::PreparedSweep<'_>,
        nodes: &[Primary],
        mut ended: mpsc::UnboundedReceiver<NodeEnded>,
    ) -> Result<RoundSweeps, SweepError> {
        let mut conn = conn.clone();
        let to_next_tick = self.schedule.time_to_next_tick();
        // 90% of the time to the next tick, from now (after any jitter): the
        // leases mark this period as swept until just before the next tick,
        // so the next period's sweep finds them free.
        let lease = to_next_tick.mul_f64(0.9);
        let lease_ends = Instant::now() + lease;
        // Counted until every daemon has registered in the next period
        // (each registers up to sweep.jitter after the tick, and its checks
        // take a moment): all of them count this daemon then, and no one
        // counts it in the period after unless it registers again.
        let registration = to_next_tick + self.settings.sweep.jitter + lock.ttl;
        let (share, registered) = lock.share_of(&mut conn, nodes, registration).await;
        let mut held = BTreeMap::new();
        let mut taken = BTreeSet::new();
        let mut skipped = 0;
        for primary in share {
            // One whose checks failed will not be swept: a lease on it would
            // only keep another daemon off it.
            if !prepared.can_sweep(&primary.address) {
                taken.insert(primary.address);
                continue;
            }
            let key = lock.key_for(&primary);
            match lock.acquire(&mut conn, &key, lease).await {
                Ok(true) => {
                    held.insert(primary.address.clone(), key);
                }
                Ok(false) => {
                    skipped += 1;
                    continue;
                }
                // A single server's lock: Redis is failing; nothing to sweep.
                Err(e) if !conn.is_cluster() => return Err(e.into()),
                // A cluster lease lives on its own primary, so that primary
                // is down or failing: its sweep will say how.
                Err(e) => {
                    tracing::warn!(error = %e, node = primary.address, "cannot take the lease")
                }
            }
            taken.insert(primary.address);
        }
        if taken.is_empty() {
            return Ok(RoundSweeps {
                report: None,
                skipped,
            });
        }
        prepared.retain(|node| taken.contains(node));
        self.metrics.set_lock_held(held.len());
        self.started(taken.len(), taken.iter().map(String::as_str));
        let mut keeper = LeaseKeeper {
            lock,
            conn,
            held,
            lease_ends,
            registered,
            metrics: &self.metrics,
        };
        let result = tokio::select! {
            result = prepared.run() => result,
            never = keeper.keep(&mut ended) => match never {},
        };
        // Ends the keeper was not told of before the sweep returned.
        while let Ok(end) = ended.try_recv() {
            keeper.end(end).await;
        }
        // Every primary's end was handled, unless the sweep failed: then
        // whatever is still held goes back.
        keeper.release_all().await;
        Ok(RoundSweeps {
            report: Some(result?),
            skipped,
        })
    }

    /// A lost connection is replaced, unless it has been already.
    fn report_loss(&self, e: &StoreError, id: ConnectionId) {
        if e.is_connection_lost() {
            self.redis.lost_connection(id, &e.to_string());
        }
    }
}

/// The primaries whose due index size an index round reads at `now`: those
/// never read whole, or last read [`INDEX_SIZE_EVERY`] ago or more.
fn size_due(
    read: &BTreeMap<String, Instant>,
    primaries: &[Primary],
    now: Instant,
) -> BTreeSet<String> {
    primaries
        .iter()
        .filter(|p| {
            read.get(&p.address)
                .is_none_or(|at| now.saturating_duration_since(*at) >= INDEX_SIZE_EVERY)
        })
        .map(|p| p.address.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_primarys_size_is_read_until_read_whole_then_hourly() {
        let primary = |address: &str| Primary {
            address: address.to_owned(),
            slots: Vec::new(),
        };
        let primaries = [primary("a:6379"), primary("b:6379"), primary("c:6379")];
        let start = Instant::now();
        let mut read = BTreeMap::new();
        let every: BTreeSet<String> = primaries.iter().map(|p| p.address.clone()).collect();
        assert_eq!(size_due(&read, &primaries, start), every, "none read yet");
        read.insert("a:6379".to_owned(), start);
        read.insert("b:6379".to_owned(), start);
        let later = start + INDEX_SIZE_EVERY - std::time::Duration::from_secs(1);
        assert_eq!(
            size_due(&read, &primaries, later),
            ["c:6379".to_owned()].into()
        );
        let hour = start + INDEX_SIZE_EVERY;
        assert_eq!(size_due(&read, &primaries, hour), every);
    }
}
