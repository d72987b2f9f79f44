//! One sweep round, run beside the loop: its `sweep.jitter` delay, the
//! checks, the leases of its share (when the lock is on) and the sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::keeper::{LeaseKeeper, NodeEnded};
use super::lease::ReplicaLock;
use super::outcome::{failed, finished, RoundFailure, RoundSweeps};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::mutex::lock;
use crate::schedule::Schedule;
use crate::store::{Connection, ConnectionId, Primary, Reconnecting, StoreError};
use crate::sweep::{self, SweepError, SweepMode, SweepProgress};

/// Why a sweep was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trigger {
    /// `sweep.run_on_start`.
    Start,
    /// A tick of the schedule.
    Schedule,
    /// An operator asked (SIGUSR1).
    Manual,
}

/// What a round that a tick overlaps is doing, for the overlap warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RoundPhase {
    /// Waiting out its `sweep.jitter` delay: it has not read Redis yet.
    Waiting,
    /// Sweeping (checks, lease and the sweep itself).
    Sweeping,
}

/// The random delay before a round sweeps: up to `sweep.jitter` for the
/// scheduled rounds and the start-up one, so replicas started together
/// spread out; none for a sweep an operator asked for now (SIGUSR1).
/// Validation keeps the jitter shorter than the shortest gap between ticks,
/// so a scheduled round has finished waiting by the next tick; the start-up
/// round, which does not start on a tick, may still be waiting then.
pub(super) fn jitter_delay(trigger: Trigger, jitter: Duration) -> Duration {
    if trigger == Trigger::Manual || jitter.is_zero() {
        return Duration::ZERO;
    }
    let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

/// Warns that `trigger` is skipped because the round that will start (or
/// started) sweeping at `sweep_at` is still running: once per phase of
/// that round (`logged` keeps the last phase warned about).
pub(super) fn warn_overlap(
    trigger: Trigger,
    sweep_at: tokio::time::Instant,
    logged: &mut Option<RoundPhase>,
) {
    let now = tokio::time::Instant::now();
    let phase = if now < sweep_at {
        RoundPhase::Waiting
    } else {
        RoundPhase::Sweeping
    };
    if *logged == Some(phase) {
        return;
    }
    *logged = Some(phase);
    match phase {
        RoundPhase::Waiting => tracing::warn!(
            ?trigger,
            sweeps_in = %humantime::format_duration(Duration::from_millis(
                u64::try_from((sweep_at - now).as_millis()).unwrap_or(u64::MAX)
            )),
            "previous sweep still waiting out its sweep.jitter delay; skipping \
             this tick (logged once per delay)"
        ),
        RoundPhase::Sweeping => tracing::warn!(
            ?trigger,
            "previous sweep still running; skipping this tick (logged once per sweep)"
        ),
    }
}

/// A round started by the loop, polled beside its other work.
pub(super) type RunningRound =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RoundFailure>> + Send>>;

/// Everything one sweep round needs, cloned out of the loop's state so the
/// round can run while the loop keeps answering ticks and signals.
pub(super) struct Round {
    pub(super) settings: Arc<Settings>,
    pub(super) redis: Arc<Reconnecting>,
    pub(super) metrics: Metrics,
    pub(super) lock: Option<Arc<ReplicaLock>>,
    pub(super) schedule: Schedule,
    pub(super) trigger: Trigger,
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
            Err(reason) => return Err(failed(&self.metrics, "connection", reason)),
        };
        let primaries = match conn.primaries().await {
            Ok(primaries) => primaries,
            Err(e) => {
                self.report_loss(&e, id);
                self.withdraw(&conn).await;
                return Err(failed(&self.metrics, e.kind(), e.to_string()));
            }
        };
        let swept_nodes = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let progress = {
            let (timer, recorder, swept, throttle) = (
                self.metrics.clone(),
                self.metrics.clone(),
                Arc::clone(&swept_nodes),
                self.metrics.clone(),
            );
            SweepProgress::with_batch_timer(move |rtt| {
                timer.batch_duration.observe(rtt.as_secs_f64());
            })
            .on_node_end(move |node| {
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
        self.metrics.retain_nodes(
            primaries.iter().map(|p| p.address.as_str()),
            &lock(&swept_nodes),
        );
        match swept {
            Ok(swept) => finished(&self.metrics, &self.settings.lock.key, &swept),
            Err(e) => {
                if let SweepError::Redis(e) = &e {
                    self.report_loss(e, id);
                }
                // Before the failure shows in the metrics and /readyz.
                self.withdraw(&conn).await;
                Err(failed(&self.metrics, e.kind(), e.to_string()))
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
        let mut prepared = sweep::prepare_within(
            conn,
            primaries,
            &self.settings.sweep,
            SweepMode::Remove,
            progress,
            &self.stop,
            self.lock.as_ref().map(|lock| lock.timeout()),
        )
        .await?;
        // The period ends at the next tick: a sweep still running then, or
        // projected to, is behind (`sweep_behind`).
        prepared.set_deadline(tokio::time::Instant::now() + self.schedule.time_to_next_tick());
        match &self.lock {
            Some(lock) => {
                self.sweep_leased(lock, conn, prepared, primaries, ended)
                    .await
            }
            None => {
                self.log_start(primaries.len());
                let report = prepared.run().await?;
                Ok(RoundSweeps {
                    report: Some(report),
                    skipped: 0,
                })
            }
        }
    }

    fn log_start(&self, nodes: usize) {
        tracing::info!(trigger = ?self.trigger, nodes, "sweep started");
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
        self.log_start(taken.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_operator_sweeps_without_the_jitter_delay() {
        let jitter = Duration::from_millis(300);
        assert_eq!(jitter_delay(Trigger::Manual, jitter), Duration::ZERO);
        assert_eq!(
            jitter_delay(Trigger::Schedule, Duration::ZERO),
            Duration::ZERO
        );
        for trigger in [Trigger::Start, Trigger::Schedule] {
            for _ in 0..100 {
                assert!(jitter_delay(trigger, jitter) <= jitter);
            }
        }
        // A huge jitter cannot overflow the milliseconds.
        assert!(jitter_delay(Trigger::Schedule, Duration::MAX) <= Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overlap_is_warned_about_once_per_phase_of_the_round() {
        let sweep_at = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut logged = None;
        warn_overlap(Trigger::Schedule, sweep_at, &mut logged);
        assert_eq!(logged, Some(RoundPhase::Waiting));
        tokio::time::advance(Duration::from_secs(5)).await;
        warn_overlap(Trigger::Schedule, sweep_at, &mut logged);
        assert_eq!(logged, Some(RoundPhase::Sweeping));
    }
}
