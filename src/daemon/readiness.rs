//! What `/readyz` and the schedule metrics say about the daemon: Redis
//! answers, a sweep is scheduled (with an alarm set for it), and the last
//! round did not fail.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::alarm::Alarm;
use super::ticker::Ticker;
use crate::metrics::{Metrics, Readiness};
use crate::schedule::Schedule;
use crate::store::Reconnecting;

/// `/readyz`: Redis answers, a sweep is scheduled, and the last sweep did not fail.
pub(super) struct DaemonReadiness {
    pub(super) redis: Arc<Reconnecting>,
    pub(super) metrics: Metrics,
    /// Why no sweep is scheduled, while none is.
    pub(super) unscheduled: watch::Receiver<Option<String>>,
    pub(super) last_failure: watch::Receiver<Option<String>>,
}

impl Readiness for DaemonReadiness {
    async fn check(&self) -> Result<(), String> {
        let pinged = self.redis.ping(Duration::from_secs(1)).await;
        self.metrics.set_redis_up(pinged.is_ok());
        pinged?;
        for reason in [&self.unscheduled, &self.last_failure] {
            if let Some(reason) = reason.borrow().as_ref() {
                return Err(reason.clone());
            }
        }
        Ok(())
    }
}

/// Shows the schedule's state in the metrics and `/readyz`: armed when the
/// ticker has a next tick and the scheduler holds an alarm for it. Logs when
/// that stops or starts being so. In index mode, the full scans' plan
/// (`full`) running out is as unready: nothing else repairs the index.
pub(super) fn publish_schedule(
    ticker: &Ticker,
    alarm: &Alarm,
    metrics: &Metrics,
    unscheduled: &watch::Sender<Option<String>>,
    full: Option<&Ticker>,
) {
    let next = ticker.next();
    metrics.set_next_sweep(
        next.map(|t| t.timestamp_millis() as f64 / 1000.0),
        alarm.is_set_for(next),
    );
    let full_unplanned = full.filter(|full| full.next().is_none()).map(|full| {
        let plan = match &full.schedule {
            Schedule::Cron(cron) => cron.as_str().to_owned(),
            Schedule::Interval(every) => humantime::format_duration(*every).to_string(),
        };
        format!("sweep.due_index.full_scan {plan:?} has no next tick: no full scan is scheduled")
    });
    let reason = ticker
        .unarmed_reason()
        .or_else(|| alarm.failure_reason())
        .or(full_unplanned);
    unscheduled.send_if_modified(|current| {
        if *current == reason {
            return false;
        }
        match (&reason, next) {
            (Some(reason), _) => tracing::error!("{reason}; checking again with backoff"),
            (None, Some(next)) => tracing::info!(%next, "a sweep is scheduled again"),
            (None, None) => {}
        }
        current.clone_from(&reason);
        true
    });
}
