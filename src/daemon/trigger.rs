//! What starts a round and what it sweeps: its trigger, its kind (an
//! index sweep or a full scan), its `sweep.jitter` delay, and the warning
//! when a tick finds the previous round still running.

use std::time::Duration;

use rand::Rng;

use crate::metrics::{Metrics, SweepResult};

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

/// What a round sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RoundKind {
    /// Every key (`SCAN`): always with the due index off; with it on, on
    /// `sweep.due_index.full_scan`, the safety net that also repairs it.
    Full,
    /// The due keys only, by the due index (`sweep.due_index.enabled`).
    Index,
}

impl RoundKind {
    /// The name in the log and the metrics.
    pub(super) fn name(self) -> &'static str {
        match self {
            RoundKind::Full => "full",
            RoundKind::Index => "index",
        }
    }
}

/// What the loop starts for `trigger` (`None`: nothing happened but a
/// round ending), and of which kind: with the due index on
/// (`index_on`), a full scan that came due (`pending_full`) starts as
/// soon as no round runs, whatever woke the loop, and covers an index tick
/// due with it; otherwise an index sweep. With a round `running`, a
/// trigger is returned to be skipped as an overlap, and the full scan
/// keeps waiting. `None`: nothing to start.
pub(super) fn round_kind(
    trigger: Option<Trigger>,
    running: bool,
    pending_full: bool,
    index_on: bool,
) -> Option<(Trigger, RoundKind)> {
    match trigger {
        _ if running => trigger.map(|t| (t, RoundKind::Index)),
        _ if pending_full && index_on => {
            Some((trigger.unwrap_or(Trigger::Schedule), RoundKind::Full))
        }
        Some(t) if index_on => Some((t, RoundKind::Index)),
        Some(t) => Some((t, RoundKind::Full)),
        None => None,
    }
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

/// Skips `trigger` because a round runs. In index mode a running full scan
/// covers it (`covered`): not an overrun, since the full scan removes all
/// an index sweep would and runs on a plan of its own
/// (`skipped_full_scan`, said once per full scan); otherwise it is an
/// overlap (`skipped_overlap`, warned once per phase of the round).
pub(super) fn skip_while_running(
    trigger: Trigger,
    covered: bool,
    sweep_at: tokio::time::Instant,
    logged: &mut Option<RoundPhase>,
    metrics: &Metrics,
) {
    if covered {
        metrics.count_sweep(SweepResult::SkippedFullScan);
        note_covered(trigger, logged);
    } else {
        metrics.count_sweep(SweepResult::SkippedOverlap);
        warn_overlap(trigger, sweep_at, logged);
    }
}

/// Says, once per full scan, that `trigger` is skipped because a full scan
/// runs (index mode), which covers it.
fn note_covered(trigger: Trigger, logged: &mut Option<RoundPhase>) {
    // An operator's own request is answered each time.
    if logged.replace(RoundPhase::Sweeping).is_none() || trigger == Trigger::Manual {
        tracing::info!(
            ?trigger,
            "a full scan is running and covers this tick; skipping it (logged once per full scan)"
        );
    }
}

/// Warns that `trigger` is skipped because the round that will start (or
/// started) sweeping at `sweep_at` is still running: once per phase of
/// that round (`logged` keeps the last phase warned about).
fn warn_overlap(trigger: Trigger, sweep_at: tokio::time::Instant, logged: &mut Option<RoundPhase>) {
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

    #[test]
    fn a_due_full_scan_waits_for_the_running_round_then_goes_first() {
        use RoundKind::{Full, Index};
        use Trigger::{Manual, Schedule};
        // An index tick while a round runs: an overlap, the full scan waits.
        assert_eq!(
            round_kind(Some(Schedule), true, true, true),
            Some((Schedule, Index))
        );
        assert_eq!(round_kind(None, true, true, true), None);
        // The round ended (no trigger): the waiting full scan starts.
        assert_eq!(round_kind(None, false, true, true), Some((Schedule, Full)));
        // Due with an index tick, or an operator's sweep: one full scan.
        assert_eq!(
            round_kind(Some(Schedule), false, true, true),
            Some((Schedule, Full))
        );
        assert_eq!(
            round_kind(Some(Manual), false, true, true),
            Some((Manual, Full))
        );
        // No full scan due: index sweeps; with the index off, full scans.
        assert_eq!(
            round_kind(Some(Schedule), false, false, true),
            Some((Schedule, Index))
        );
        assert_eq!(
            round_kind(Some(Schedule), false, true, false),
            Some((Schedule, Full))
        );
        assert_eq!(round_kind(None, false, false, true), None);
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
