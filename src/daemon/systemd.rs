//! systemd: the READY/STOPPING notifications and the watchdog, which the
//! daemon's loop feeds from its own passes. No-ops outside systemd.

use std::time::{Duration, Instant};

use super::ticker::MAX_SLEEP;

/// Tells systemd `state`; outside systemd, nothing happens.
pub(super) fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

/// systemd's watchdog (`WatchdogSec=`), fed by the daemon loop itself:
/// pinged from the loop's own passes, never from a task of its own, so a
/// loop that is stuck (while the rest of the process may still run) stops
/// the pings and systemd restarts the daemon.
pub(super) struct Watchdog {
    /// A quarter of the watchdog interval: the loop passes and pings at
    /// least this often, so two pings are at most half the interval apart.
    every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Watchdog {
    pub(super) fn new(interval: Option<Duration>) -> Self {
        Self {
            every: interval.map(|interval| interval / 4),
            last_ping: None,
        }
    }

    /// The longest the loop may sleep.
    pub(super) fn max_sleep(&self) -> Duration {
        self.every.map_or(MAX_SLEEP, |every| every.min(MAX_SLEEP))
    }

    /// Called by the loop on every pass; pings when a ping is due and
    /// returns whether it did.
    pub(super) fn alive(&mut self, now: Instant) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        if self
            .last_ping
            .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return false;
        }
        self.last_ping = Some(now);
        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_from_the_loop_often_enough() {
        let mut watchdog = Watchdog::new(Some(Duration::from_secs(2)));
        // A loop that passes at least every max_sleep pings at least every
        // half interval.
        assert_eq!(watchdog.max_sleep(), Duration::from_millis(500));
        let start = Instant::now();
        assert!(watchdog.alive(start));
        assert!(!watchdog.alive(start + Duration::from_millis(100)));
        assert!(watchdog.alive(start + Duration::from_millis(500)));
        // No watchdog: nothing to ping, the loop still wakes every second.
        let mut off = Watchdog::new(None);
        assert!(!off.alive(start));
        assert_eq!(off.max_sleep(), MAX_SLEEP);
        assert_eq!(
            Watchdog::new(Some(Duration::from_secs(60))).max_sleep(),
            MAX_SLEEP
        );
    }
}
