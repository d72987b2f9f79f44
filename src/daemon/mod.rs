//! The long-running service: schedule, overlap guard, replica lock, reload
//! and shutdown around [`crate::sweep::sweep`].
//!
//! This file holds the loop ([`Daemon::run`]), read from top to bottom: start
//! up, react, shut down. Each thing the loop drives lives in a file of its
//! own (listed below, each importing only the ones above it).
//!
//! One loop owns all state and reacts to a control message (sweep now,
//! reload), the stop token, the end of the running sweep, an alarm from the
//! scheduler, its own wake-up, and nothing else.
//!
//! **One way to stop: a `CancellationToken`.** When the caller cancels it,
//! the loop schedules no more; the running round, on a child token, sends
//! no new batch and finishes those in flight; then the leases go back, and
//! the HTTP endpoints, on a token of their own, stop last.
//!
//! **The scheduler is the alarm; the loop's plan is the authority.** The
//! `Ticker` plans each tick on the wall clock. For the planned tick the loop
//! sets an `Alarm`: a one-shot job in tokio-cron-scheduler that, when it
//! fires, sends its id into the loop and nothing more. The loop then asks the
//! `Ticker` whether the tick is due, so an alarm that rings early, twice, or
//! for a plan since replaced can start no sweep early or extra, and the
//! scheduler never runs a sweep itself (it prevents no overlap). The loop
//! also wakes by itself at least every second and every quarter of
//! `WatchdogSec`: that feeds systemd's watchdog from the loop's own progress,
//! and takes a tick the scheduler failed to fire, `ALARM_GRACE` after it
//! (at once when no alarm is set).
//!
//! Why one one-shot per planned tick and not the crate's other jobs: its
//! repeated jobs compute each next tick from the previous one and stop
//! firing for good once that falls behind (tokio-cron-scheduler issue #113);
//! a cron job computes its own next tick, which after the clock steps back
//! waits for the old time. A one-shot rings for exactly the tick the loop
//! planned, for an interval or a cron schedule alike. The crate keeps its
//! times in whole seconds, adding the whole seconds of the delay to the
//! current (truncated) second, so a plain delay fires up to ~1.5 s early:
//! the delay is counted from the start of the current second and rounded
//! up, so the job is never due before the tick. It polls every 500 ms, so
//! its alarms come up to half a second late.
//!
//! A new alarm is added before the old one is removed, so a reschedule never
//! leaves the scheduler without one for a moment. Adding one is bounded in
//! time; one that fails or hangs is tried again with backoff (1 s doubling to
//! 1 min), shown as `schedule_armed` 0 and in `/readyz`, and meanwhile the
//! loop's own check takes the tick on time.

// The plan of ticks, checked against every alarm and wake-up (a leaf).
mod ticker;
// The scheduler's one-shot alarms that wake the loop for a planned tick.
mod alarm;
// systemd's READY/STOPPING and the watchdog the loop feeds.
mod systemd;
// The lease Lua scripts and the one way they are sent (plain EVAL).
mod scripts;
// This daemon's name, registry and taken leases, shared by rounds and shutdown.
mod fleet;
// The replica lock: a lease per primary and this daemon's share.
mod lease;
// A round's leases while it sweeps: kept alive, settled, given back.
mod keeper;
// What starts a round and what it sweeps: trigger, kind, jitter, overlap.
mod trigger;
// In index mode: the full scans' plan, and a full scan pending or owed.
mod full_scans;
// What a round ends with: its counts, its log line, its failure.
mod outcome;
// One sweep round beside the loop: jitter, checks, leases, sweep.
mod round;
// What `/readyz` and the schedule metrics say.
mod readiness;
// SIGHUP: the configuration read again, applied all or nothing.
mod reload;
#[cfg(test)]
mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use self::alarm::{Alarm, TickSource};
use self::fleet::{Fleet, SHUTDOWN_RELEASE};
use self::full_scans::FullScans;
use self::lease::ReplicaLock;
use self::readiness::{publish_schedule, DaemonReadiness};
use self::reload::reload;
use self::round::{IndexSizeRead, Round, RunningRound};
use self::systemd::{notify_systemd, Watchdog};
use self::ticker::{Ticker, ALARM_GRACE};
use self::trigger::{jitter_delay, round_kind, skip_while_running, RoundKind, RoundPhase, Trigger};
use crate::config::Settings;
use crate::logging::LogLevel;
use crate::metrics::Metrics;
use crate::store::Reconnecting;

/// What the outside world (signals, tests) asks of a running daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Sweep now (SIGUSR1), still under the overlap guard and the lock.
    SweepNow,
    /// Reload the configuration file (SIGHUP).
    Reload,
}

/// A daemon failure that stops it from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The scheduler (tokio-cron-scheduler) could not be created or started.
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics address could not be bound.
    #[error("metrics.listen: cannot listen on {address}: {source}")]
    Listen {
        /// The configured address.
        address: String,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// The daemon's configuration source and live handles.
pub struct Daemon {
    /// The file to re-read on reload; `None` means defaults and environment only.
    pub config_path: Option<PathBuf>,
    /// The settings in force.
    pub settings: Settings,
    /// Where log level changes go on reload.
    pub log_level: Option<LogLevel>,
}

impl Daemon {
    /// Runs until `stop` is cancelled (or the sender of `controls` is
    /// dropped): then it schedules no more, lets the running sweep finish
    /// the batches in flight (for up to `sweep.shutdown_timeout`), gives
    /// its leases back, and returns.
    ///
    /// Tells systemd READY once the metrics endpoint listens and the schedule
    /// is armed, and STOPPING when shutdown begins (both no-ops outside systemd).
    ///
    /// # Errors
    /// [`DaemonError`] when it cannot start; once running, Redis outages and
    /// bad reloads are logged and survived, never returned.
    pub async fn run(
        mut self,
        mut controls: mpsc::Receiver<Control>,
        stop: CancellationToken,
    ) -> Result<(), DaemonError> {
        let metrics = Metrics::new()?;
        let up_metrics = metrics.clone();
        let redis = Arc::new(Reconnecting::new(self.settings.redis.clone(), move |up| {
            up_metrics.set_redis_up(up);
        }));
        redis.set_max_backoff(self.settings.sweep.schedule().reconnect_backoff());
        let address = self.settings.metrics.listen;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::Listen {
                address: address.to_string(),
                source,
            })?;
        let (last_failure_tx, last_failure) = watch::channel(None::<String>);
        let (unscheduled_tx, unscheduled) = watch::channel(None::<String>);
        let mut watchdog = Watchdog::new(sd_notify::watchdog_enabled());
        // Before the endpoints answer, so that their first answer is true.
        let mut ticker = Ticker::new(self.settings.sweep.schedule(), crate::clock::wall_clock());
        // With the due index on, the full scans' plan (`due_index.full_scan`).
        let mut full_scans = FullScans::new(
            self.settings.sweep.due_index.full_scan.clone(),
            crate::clock::wall_clock(),
        );
        // Room for a few alarms: more are never pending in a healthy loop,
        // and one dropped is a tick the loop's own check takes.
        let (rings_tx, mut rings) = mpsc::channel(8);
        // The loop waits for the scheduler at most this long per pass, so
        // it still passes (and pings the watchdog) often enough.
        let mut alarm =
            Alarm::start(JobScheduler::new().await?, rings_tx, watchdog.max_sleep()).await?;
        alarm.follow(ticker.next(), Instant::now()).await;
        let full = self.settings.sweep.due_index.enabled;
        let full = full.then_some(&full_scans.ticker);
        publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx, full);
        // Not a child of `stop`: the endpoints answer until the leases are
        // given back, and stop last. The guard stops them too when this
        // future is dropped instead of returning (aborted, a `select!`
        // elsewhere, a panic), so an embedding process never keeps a server
        // for a daemon that is gone.
        let http_stop = CancellationToken::new();
        let _http_stop_on_drop = http_stop.clone().drop_guard();
        let http = tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            DaemonReadiness {
                redis: Arc::clone(&redis),
                metrics: metrics.clone(),
                unscheduled,
                last_failure,
            },
            http_stop.clone(),
        ));
        tracing::info!("metrics at http://{address}/metrics, health at /healthz and /readyz");

        if let Err(e) = redis.connect_now().await {
            tracing::warn!("{e}; will keep retrying");
        }

        let fleet = Arc::new(Fleet::new());
        // Cancelled with `stop`, or when the controls' sender is gone: the
        // running round stops sending batches and finishes those in flight.
        let rounds_stop = stop.child_token();
        // A failed round's failure is what `/readyz` reports.
        let mut running: Option<RunningRound> = None;
        // When the running round starts (or started) sweeping, and what the
        // overlap warning last said about it.
        let mut sweep_at = tokio::time::Instant::now();
        let mut overlap_logged: Option<RoundPhase> = None;
        let mut pending_start = self.settings.sweep.run_on_start;
        // The kind of the last round started.
        let mut running_kind = RoundKind::Index;
        // Whether it is a full scan of index mode (which repairs the index;
        // with the index off, every round scans and none repairs).
        let mut running_full_scan = false;
        let index_size_read = IndexSizeRead::default();

        notify_systemd(&[sd_notify::NotifyState::Ready]);
        let mut alarm_missed = false;

        loop {
            // Every pass of the loop is progress; it passes at least every
            // `watchdog.max_sleep()`, and not at all while it is stuck.
            watchdog.alive(Instant::now());
            let trigger = if std::mem::take(&mut pending_start) {
                Some(Trigger::Start)
            } else {
                // With an alarm set, the loop's own check leaves it time to
                // ring; without one, it takes the tick on time.
                let grace = if alarm.is_set_for(ticker.next()) {
                    ALARM_GRACE
                } else {
                    Duration::ZERO
                };
                let now = crate::clock::wall_clock();
                let sleep = ticker
                    .sleep_late(now, grace)
                    .min(full_scans.ticker.sleep_late(now, Duration::ZERO))
                    .min(watchdog.max_sleep());
                let tick = ticker.next();
                let trigger = tokio::select! {
                    control = controls.recv() => match control {
                        Some(Control::SweepNow) => Some(Trigger::Manual),
                        Some(Control::Reload) => {
                            reload(
                                &mut self.settings,
                                self.config_path.as_deref(),
                                self.log_level.as_ref(),
                                (&mut ticker, &mut full_scans.ticker),
                                &redis,
                                &fleet,
                            )
                            .await;
                            None
                        }
                        None => break,
                    },
                    () = stop.cancelled() => break,
                    Some(job) = rings.recv() => {
                        alarm.rang(job);
                        let due = ticker.poll(crate::clock::wall_clock());
                        if due {
                            TickSource::Scheduler.log(tick, &mut alarm_missed);
                        }
                        due.then_some(Trigger::Schedule)
                    },
                    () = tokio::time::sleep(sleep) => {
                        let due = ticker.poll_late(crate::clock::wall_clock(), grace);
                        if due {
                            TickSource::Loop { alarm_set: !grace.is_zero() }
                                .log(tick, &mut alarm_missed);
                        }
                        due.then_some(Trigger::Schedule)
                    },
                    end = async {
                        match running.as_mut() {
                            Some(round) => round.await,
                            None => std::future::pending().await,
                        }
                    }, if running.is_some() => {
                        running = None;
                        metrics.full_scan_ended(None);
                        let whole = end.as_ref().is_err_and(|failure| failure.whole);
                        full_scans.ended(running_full_scan, whole);
                        let _ = last_failure_tx.send(end.err().map(|failure| failure.reason));
                        None
                    },
                };
                let full_runs = running.is_some() && running_full_scan;
                let index_on = self.settings.sweep.due_index.enabled;
                full_scans.poll(crate::clock::wall_clock(), index_on, full_runs);
                // Keeps the alarm on the plan, whatever changed it (a tick,
                // a reload, the clock), and retries one not yet taken.
                alarm.follow(ticker.next(), Instant::now()).await;
                let full = index_on.then_some(&full_scans.ticker);
                publish_schedule(&ticker, &alarm, &metrics, &unscheduled_tx, full);
                // Progress too: waiting on the scheduler (at most
                // `watchdog.max_sleep()`) never doubles the gap between pings.
                watchdog.alive(Instant::now());
                trigger
            };
            let index_on = self.settings.sweep.due_index.enabled;
            let triggered = trigger.is_some();
            let full_due = full_scans.due(triggered, running.is_some(), running_kind, index_on);
            let Some((trigger, kind)) = round_kind(trigger, running.is_some(), full_due, index_on)
            else {
                continue;
            };
            if running.is_some() {
                let covered = running_full_scan;
                skip_while_running(trigger, covered, sweep_at, &mut overlap_logged, &metrics);
                continue;
            }
            overlap_logged = None;
            if kind == RoundKind::Full && index_on {
                full_scans.started();
            }
            running_kind = kind;
            running_full_scan = kind == RoundKind::Full && index_on;
            let settings = Arc::new(self.settings.clone());
            let delay = jitter_delay(trigger, settings.sweep.jitter);
            if !delay.is_zero() {
                tracing::info!(?trigger, ?delay, "sweep waits out its sweep.jitter delay");
            }
            sweep_at = tokio::time::Instant::now() + delay;
            let lock = ReplicaLock::new(&settings.lock, &ticker.schedule, &fleet);
            running = Some(Box::pin(
                Round {
                    settings,
                    redis: Arc::clone(&redis),
                    metrics: metrics.clone(),
                    lock,
                    schedule: ticker.schedule.clone(),
                    trigger,
                    kind,
                    index_size_read: Arc::clone(&index_size_read),
                    sweep_at,
                    stop: rounds_stop.clone(),
                }
                .run(),
            ));
        }

        tracing::info!("shutting down");
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        alarm.stop().await;
        rounds_stop.cancel();
        if let Some(round) = running.take() {
            let timeout = self.settings.sweep.shutdown_timeout;
            match tokio::time::timeout(timeout, round).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        ?timeout,
                        "sweep did not finish within sweep.shutdown_timeout"
                    );
                }
            }
        }
        // Another daemon need not wait for the leases to expire, and from
        // their next round the others' shares cover this daemon's primaries.
        if let Ok((conn, _)) = redis.checkout() {
            fleet.withdraw(&conn, SHUTDOWN_RELEASE).await;
        }
        http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
        tracing::info!("stopped");
        Ok(())
    }
}
