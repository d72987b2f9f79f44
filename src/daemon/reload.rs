//! SIGHUP: the configuration file read again and applied all or nothing.

use std::path::Path;
use std::sync::Arc;

use super::fleet::{registry_of, Fleet, SHUTDOWN_RELEASE};
use super::ticker::Ticker;
use crate::config::Settings;
use crate::logging::LogLevel;
use crate::store::Reconnecting;

/// Reads the configuration (`config_path`) again into `settings`; nothing
/// of it applies unless all of it does, and a bad one is logged and leaves
/// the daemon as it was.
pub(super) async fn reload(
    settings: &mut Settings,
    config_path: Option<&Path>,
    log_level: Option<&LogLevel>,
    (ticker, full_ticker): (&mut Ticker, &mut Ticker),
    redis: &Arc<Reconnecting>,
    fleet: &Fleet,
) {
    // Off the runtime's one thread: a file that is slow to read (a hung
    // mount) holds up this loop, which the watchdog then reports, but
    // not the metrics endpoint.
    let path = config_path.map(Path::to_path_buf);
    let loaded = tokio::task::spawn_blocking(move || Settings::load(path.as_deref()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|loaded| loaded.map_err(|e| e.to_string()));
    let new = match loaded {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("reload failed, keeping the previous configuration: {e}");
            return;
        }
    };
    // First, as it is the one step that can still fail: nothing of the
    // new configuration applies unless all of it does.
    let now = crate::clock::wall_clock();
    let full_scan = &new.sweep.due_index.full_scan;
    if *full_scan != full_ticker.schedule && full_scan.next_tick_after(now).is_none() {
        tracing::error!(
            "reload failed, keeping the previous configuration: sweep.due_index.full_scan has \
             no next tick"
        );
        return;
    }
    let schedule = new.sweep.schedule();
    if schedule != ticker.schedule {
        if let Err(reason) = ticker.reschedule(schedule, now) {
            tracing::error!("reload failed, keeping the previous configuration: {reason}");
            return;
        }
    }
    // Only once the sweep's schedule has changed: it cannot fail then,
    // as the full scans' plan was checked first.
    if *full_scan != full_ticker.schedule {
        let _ = full_ticker.reschedule(full_scan.clone(), now);
    }
    if new.metrics.listen != settings.metrics.listen {
        tracing::warn!("metrics.listen changed; it takes effect after a restart");
    }
    if let Some(level) = log_level {
        level.set(&new.log);
    }
    redis.set_max_backoff(ticker.schedule.reconnect_backoff());
    // Leave the registry of the old key now: the daemons still using it
    // should not count this one in their next round.
    if settings.lock.enabled && (!new.lock.enabled || new.lock.key != settings.lock.key) {
        if let Ok((mut conn, _)) = redis.checkout() {
            let registry = registry_of(&settings.lock.key);
            fleet
                .leave(&mut conn, Some(&registry), SHUTDOWN_RELEASE)
                .await;
        }
    }
    redis.update_settings(new.redis.clone());
    *settings = new;
    tracing::info!("configuration reloaded; it applies from the next sweep");
}
