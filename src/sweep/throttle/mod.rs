//! The adaptive throttle of one primary's sweep (`sweep.throttle =
//! "adaptive"`): it measures what the other clients of that Redis feel and
//! paces the sweep so that they do not feel it much.
//!
//! - **Signal** (`probe.rs`): a PING every few milliseconds on a connection
//!   of its own; its round trip is what another request waits. The first
//!   window, before the sweep sends anything, is the reference.
//! - **Decisions** (`controller.rs`): every 250 ms, AIMD on the share of
//!   Redis's time the sweep may take and on how long one piece of it may
//!   hold Redis (at most half the target), to keep the probe's 90th
//!   percentile within `sweep.throttle_target` of the reference.
//! - **Pieces** (`piece.rs`): the keys of a pipeline, the COUNT of a SCAN
//!   page: as many as fit that budget at what a unit has cost so far.
//! - **Pace** (here): after each round trip of the sweep (a SCAN page, a
//!   pipeline), it idles long enough that its Redis time is at most that
//!   share of the wall time. Redis time is the round trip less the probe's
//!   fastest round trip (the network's part, during which Redis serves
//!   others). The floor (`sweep.throttle_floor`, keys handled per second:
//!   a key counts when SCAN visits it and when it is swept) caps every
//!   pause, so a Redis kept busy by others slows the sweep but never stops
//!   it; `sweep.max_keys_per_second` caps the pace in any mode.
//! - **Reporting**: each decision is a [`ThrottleReading`] for the metrics
//!   (and a debug log line), one info line when the state changes
//!   ([`ThrottleState`]), and "behind" when the sweep runs past the end of
//!   its period or its projected end (from the SCAN cursor) is past it.

pub mod controller;
mod piece;
mod probe;
pub(super) mod reading;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use controller::{Controller, MIN_GAP};
use piece::Pieces;
pub(crate) use piece::Step;
pub use reading::{ThrottleReading, ThrottleState};

use super::report::SweepProgress;
use crate::config::SweepSettings;
use crate::store::Connection;

/// How much pacing a sweep that was late (a sleep rounded up to the
/// timer's millisecond) may make up at once: pauses shorter than the timer
/// average out, while an idle sweep does not bank a burst.
const CREDIT: Duration = Duration::from_millis(2);

/// One primary's throttle, for the length of its sweep.
pub(super) struct Throttle<'a> {
    node: String,
    progress: &'a SweepProgress,
    controller: Controller,
    /// What a unit of each kind of step costs Redis, to size pieces.
    pieces: Pieces,
    /// Most units in one piece: `batch_size`/`scan_count`, and a tenth of
    /// `max_keys_per_second`.
    max_piece: usize,
    /// The probe's round trips; dropping it ends the probe.
    samples: mpsc::Receiver<Duration>,
    /// Keys handled per second the sweep keeps whatever the signal.
    floor: f64,
    /// `sweep.max_keys_per_second` (0: none).
    cap: u64,
    started: Instant,
    /// Where the share lets the next step start.
    share_due: Instant,
    /// By when the floor has the next step start.
    floor_due: Instant,
    /// Keys sent to be swept (the first time), for the cap and the pace.
    swept: u64,
    /// The last decision, and the keys swept by then.
    decided: (Instant, u64),
    /// Waits since the last decision, and how many of them the floor cut short.
    waits: (u32, u32),
    state: ThrottleState,
    throttled: Duration,
    reported_throttled: Duration,
    pace: f64,
    /// When the node's period ends (the daemon's next tick).
    deadline: Option<Instant>,
    /// Share of the node's keyspace the SCAN cursor has passed, if known.
    covered: Option<f64>,
    behind: bool,
}

impl<'a> Throttle<'a> {
    /// Starts the probe on a connection and a thread of its own to
    /// `conn`'s server; it ends when the throttle is dropped. One that
    /// cannot be opened leaves the throttle with no signal, which holds the
    /// sweep at its floor: it still finishes, gently.
    pub(super) fn start(
        conn: &Connection,
        node: &str,
        settings: &SweepSettings,
        deadline: Option<Instant>,
        progress: &'a SweepProgress,
    ) -> Throttle<'a> {
        let (tx, samples) = mpsc::channel(256);
        probe::spawn(conn.clone(), node.to_owned(), tx);
        Self::new(node, settings, deadline, progress, samples)
    }

    /// A throttle fed by `samples` (the probe's round trips), with no probe
    /// of its own.
    fn new(
        node: &str,
        settings: &SweepSettings,
        deadline: Option<Instant>,
        progress: &'a SweepProgress,
        samples: mpsc::Receiver<Duration>,
    ) -> Throttle<'a> {
        let mut max_piece = settings.batch_size.min(settings.scan_count);
        if settings.max_keys_per_second > 0 {
            // About ten pieces a second under a rate limit, as without the
            // throttle: a limit of 100/s should not mean a burst of 100 keys
            // and a second of nothing.
            let per_tenth = u32::try_from(settings.max_keys_per_second / 10).unwrap_or(u32::MAX);
            max_piece = max_piece.min(per_tenth.max(1));
        }
        let max_piece = usize::try_from(max_piece).unwrap_or(1);
        let now = Instant::now();
        Throttle {
            node: node.to_owned(),
            progress,
            controller: Controller::new(
                settings.throttle_target,
                f64::from(settings.throttle_max_share_percent) / 100.0,
            ),
            pieces: Pieces::default(),
            max_piece,
            samples,
            floor: settings.throttle_floor.max(1) as f64,
            cap: settings.max_keys_per_second,
            started: now,
            // The first window measures what others see before the sweep
            // sends anything: the reference of every later one.
            share_due: now + MIN_GAP,
            floor_due: now + MIN_GAP,
            swept: 0,
            decided: (now, 0),
            waits: (0, 0),
            state: ThrottleState::FullSpeed,
            throttled: Duration::ZERO,
            reported_throttled: Duration::ZERO,
            pace: 0.0,
            deadline,
            covered: None,
            behind: false,
        }
    }

    /// The units of the next `step` (SCAN COUNT, keys per pipeline): as
    /// many as the controller's budget allows at their measured cost.
    pub(super) fn piece(&self, step: Step) -> usize {
        self.pieces
            .size(step, self.controller.budget(), self.max_piece)
    }

    /// Waits until the next step may start: decides first if a window has
    /// passed. Returns true when `stop` was cancelled meanwhile.
    pub(super) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        while let Ok(rtt) = self.samples.try_recv() {
            self.controller.probed(rtt);
        }
        let now = Instant::now();
        if now.duration_since(self.decided.0) >= MIN_GAP {
            self.decide(now);
        }
        let mut due = self.share_due.min(self.floor_due);
        self.waits.0 += 1;
        if self.floor_due < self.share_due {
            self.waits.1 += 1;
        }
        if self.cap > 0 {
            let cap_due =
                self.started + Duration::from_secs_f64(self.swept as f64 / self.cap as f64);
            due = due.max(cap_due);
        }
        if due <= now {
            return stop.is_cancelled();
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => true,
            () = tokio::time::sleep_until(due) => false,
        }
    }

    /// A round trip of the sweep that started at `sent`, a `step` of
    /// `units`: the share's pause and the cost of a unit follow from it.
    /// `floor_keys` is what it counts for the floor: the COUNT of a SCAN
    /// page (the keys it visits), the keys of a pipeline the first time
    /// (not again for the removal after a bound read).
    pub(super) fn worked(&mut self, sent: Instant, step: Step, units: usize, floor_keys: usize) {
        let now = Instant::now();
        let rtt = now.duration_since(sent);
        let busy = rtt.saturating_sub(self.controller.fastest().unwrap_or_default());
        self.pieces.measured(step, units, busy);
        let base = self
            .share_due
            .max(sent.checked_sub(CREDIT).unwrap_or(sent))
            .min(sent);
        self.share_due = base + busy.div_f64(self.controller.share());
        if floor_keys > 0 {
            let base = self
                .floor_due
                .max(sent.checked_sub(CREDIT).unwrap_or(sent))
                .min(sent);
            self.floor_due = base + Duration::from_secs_f64(floor_keys as f64 / self.floor);
        }
    }

    /// `keys` are sent to be swept for the first time (as the pacer of a
    /// sweep without the throttle counts them, for `max_keys_per_second`).
    pub(super) fn sweeping(&mut self, keys: usize) {
        self.swept += keys as u64;
    }

    /// A SCAN page's cursor has passed `covered` of the keyspace, if it says.
    pub(super) fn scanned(&mut self, covered: Option<f64>) {
        self.covered = covered;
    }

    fn decide(&mut self, now: Instant) {
        let window = now.duration_since(self.decided.0);
        if self.state != ThrottleState::FullSpeed {
            self.throttled += window;
        }
        self.pace = (self.swept - self.decided.1) as f64 / window.as_secs_f64().max(1e-3);
        self.decided = (now, self.swept);
        self.controller.decide();
        tracing::debug!(
            node = self.node,
            pace_keys_per_second = self.pace.round(),
            signal_us = self.controller.signal().map(|s| s.as_micros()),
            reference_us = self.controller.reference().map(|s| s.as_micros()),
            share = self.controller.share(),
            budget_us = self.controller.budget().as_micros(),
            scan_count = self.piece(Step::Scan),
            keys_per_pipeline = self.piece(Step::Keys),
            "sweep throttle decided"
        );
        let (waits, floored) = std::mem::take(&mut self.waits);
        let state = if self.controller.at_full_speed() {
            ThrottleState::FullSpeed
        } else if floored * 2 > waits {
            ThrottleState::Floor
        } else {
            ThrottleState::Throttled
        };
        if state != self.state {
            tracing::info!(
                node = self.node,
                from = self.state.as_str(),
                to = state.as_str(),
                pace_keys_per_second = self.pace.round(),
                signal_ms = self.controller.signal().map(|s| s.as_secs_f64() * 1e3),
                share = self.controller.share(),
                "sweep throttle changed state"
            );
            self.state = state;
        }
        self.behind = self.is_behind(now);
        self.report(false);
    }

    /// Past the deadline, or projected past it from the share of the
    /// keyspace covered so far (once there is enough to project from).
    fn is_behind(&self, now: Instant) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        if now > deadline {
            return true;
        }
        match self.covered {
            Some(covered) if covered >= 0.01 => {
                let projected = now.duration_since(self.started).div_f64(covered);
                self.started + projected > deadline
            }
            _ => false,
        }
    }

    fn report(&mut self, ended: bool) {
        let reading = ThrottleReading {
            node: self.node.clone(),
            state: self.state,
            pace_keys_per_second: self.pace,
            signal: self.controller.signal(),
            newly_throttled: self.throttled.saturating_sub(self.reported_throttled),
            throttled: self.throttled,
            behind: self.behind,
            ended,
        };
        self.reported_throttled = self.throttled;
        self.progress.throttle_read(&reading);
    }

    /// The node's sweep has ended: the last reading, and the probe stops.
    pub(super) fn end(mut self) -> Duration {
        let now = Instant::now();
        if self.state != ThrottleState::FullSpeed {
            self.throttled += now.duration_since(self.decided.0);
        }
        // Still running when the period ended is behind, whatever the
        // projection said; ending in time is not.
        self.behind = self.deadline.is_some_and(|deadline| now > deadline);
        self.report(true);
        self.throttled
    }
}

/// The share of the keyspace a SCAN `cursor` of a server (not a cluster
/// node) has passed. Redis walks its hash table in reverse-binary order:
/// the cursor's bits reversed count up from 0 to the table's size, so read
/// as a fraction of 2^64 they are how far along the walk is. (A cluster
/// node of Redis 7.4 and later keeps a table per slot and puts the slot in
/// the cursor's low bits, so there the cursor says nothing simple.)
pub(super) fn covered_by(cursor: u64) -> f64 {
    if cursor == 0 {
        return 1.0;
    }
    cursor.reverse_bits() as f64 / 2f64.powi(64)
}

#[cfg(test)]
mod tests;
