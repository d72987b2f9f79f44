//! The adaptive throttle's metrics (one series per primary): whether it
//! holds the sweep back, the pace, the time throttled, its signal, and
//! whether the sweep is falling behind its period.

use prometheus::{CounterVec, GaugeVec, IntGaugeVec, Opts, Registry};

use crate::sweep::{ThrottleReading, ThrottleState};

/// The adaptive throttle's metrics, by `node` (the primary's `host:port`).
#[derive(Clone)]
pub(super) struct ThrottleMetrics {
    active: IntGaugeVec,
    pace: GaugeVec,
    throttled: CounterVec,
    signal: GaugeVec,
    behind: IntGaugeVec,
}

impl ThrottleMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let name = |n: &str| format!("token_sweeper_{n}");
        let by_node = |n: &str, help: &str| Opts::new(name(n), help);
        let metrics = Self {
            active: IntGaugeVec::new(
                by_node(
                    "throttle_active",
                    "1 while the adaptive throttle holds the sweep of this primary below its \
                     full share of Redis's time (throttled, or at the floor).",
                ),
                &["node"],
            )?,
            pace: GaugeVec::new(
                by_node(
                    "sweep_pace_keys_per_second",
                    "Keys sent to be swept per second on this primary over the throttle's \
                     last window (0 once it ended).",
                ),
                &["node"],
            )?,
            throttled: CounterVec::new(
                by_node(
                    "throttled_seconds_total",
                    "Time the adaptive throttle held the sweep of this primary below its full \
                     share.",
                ),
                &["node"],
            )?,
            signal: GaugeVec::new(
                by_node(
                    "throttle_signal_seconds",
                    "The throttle's latest signal: the 90th percentile round trip of its PING \
                     probe to this primary.",
                ),
                &["node"],
            )?,
            behind: IntGaugeVec::new(
                by_node(
                    "sweep_behind",
                    "1 when the sweep of this primary is falling behind its period: still \
                     running when the period ended, or projected to end after it.",
                ),
                &["node"],
            )?,
        };
        registry.register(Box::new(metrics.active.clone()))?;
        registry.register(Box::new(metrics.pace.clone()))?;
        registry.register(Box::new(metrics.throttled.clone()))?;
        registry.register(Box::new(metrics.signal.clone()))?;
        registry.register(Box::new(metrics.behind.clone()))?;
        Ok(metrics)
    }

    pub(super) fn record(&self, reading: &ThrottleReading) {
        let label = [reading.node.as_str()];
        let active = !reading.ended && reading.state != ThrottleState::FullSpeed;
        self.active.with_label_values(&label).set(i64::from(active));
        self.pace.with_label_values(&label).set(if reading.ended {
            0.0
        } else {
            reading.pace_keys_per_second
        });
        self.throttled
            .with_label_values(&label)
            .inc_by(reading.newly_throttled.as_secs_f64());
        match reading.signal {
            Some(signal) => self
                .signal
                .with_label_values(&label)
                .set(signal.as_secs_f64()),
            // The probe went silent: no value rather than a stale one.
            None => {
                let _ = self.signal.remove_label_values(&label);
            }
        }
        self.behind
            .with_label_values(&label)
            .set(i64::from(reading.behind));
    }

    /// Drops the series of a node that is no longer a primary.
    pub(super) fn forget(&self, node: &str) {
        // Err: no such series; nothing to drop.
        let _ = self.active.remove_label_values(&[node]);
        let _ = self.pace.remove_label_values(&[node]);
        let _ = self.signal.remove_label_values(&[node]);
        let _ = self.behind.remove_label_values(&[node]);
        let _ = self.throttled.remove_label_values(&[node]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use crate::metrics::Metrics;
    use crate::sweep::{ThrottleReading, ThrottleState};

    fn series(scrape: &str, name: &str) -> Option<f64> {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}{{node=\"n:1\"}} ")))
            .map(|value| value.parse().unwrap())
    }

    #[test]
    fn a_reading_sets_the_gauges_and_adds_the_time_throttled() {
        let metrics = Metrics::new().unwrap();
        let mut reading = ThrottleReading {
            node: "n:1".to_owned(),
            state: ThrottleState::Floor,
            pace_keys_per_second: 2000.0,
            signal: Some(Duration::from_millis(3)),
            newly_throttled: Duration::from_millis(250),
            throttled: Duration::from_millis(250),
            behind: true,
            ended: false,
        };
        metrics.record_throttle(&reading);
        metrics.record_throttle(&reading);
        let scrape = metrics.render();
        let name = |n: &str| format!("token_sweeper_{n}");
        assert_eq!(series(&scrape, &name("throttle_active")), Some(1.0));
        assert_eq!(
            series(&scrape, &name("sweep_pace_keys_per_second")),
            Some(2000.0)
        );
        assert_eq!(series(&scrape, &name("throttled_seconds_total")), Some(0.5));
        assert_eq!(
            series(&scrape, &name("throttle_signal_seconds")),
            Some(0.003)
        );
        assert_eq!(series(&scrape, &name("sweep_behind")), Some(1.0));

        // The end: not active, no pace; behind as it ended.
        reading.ended = true;
        reading.behind = false;
        reading.newly_throttled = Duration::ZERO;
        metrics.record_throttle(&reading);
        let scrape = metrics.render();
        assert_eq!(series(&scrape, &name("throttle_active")), Some(0.0));
        assert_eq!(
            series(&scrape, &name("sweep_pace_keys_per_second")),
            Some(0.0)
        );
        assert_eq!(series(&scrape, &name("sweep_behind")), Some(0.0));
        assert_eq!(series(&scrape, &name("throttled_seconds_total")), Some(0.5));
    }
}
