//! The throttle's decisions, with no I/O: from probe round trips to the
//! share of Redis's time the sweep may take and the size of its pieces.
//!
//! Additive increase, multiplicative decrease (TCP's rule, and what gh-ost
//! and Vitess do in spirit), with a target band and a minimum gap between
//! changes:
//! - every [`MIN_GAP`], if at least [`MIN_SAMPLES`] probes answered, the
//!   signal is their 90th percentile. Its excess over the lowest round trip
//!   seen (the idle round trip: network and Redis's own work, which the
//!   sweep cannot remove) is compared with `throttle_target`;
//! - above the target, the share and the piece are halved (down to
//!   [`MIN_SHARE`] and [`MIN_PIECE`]): a sweep that hurts backs off fast;
//! - below half the target, they grow by a tenth of their range: a sweep
//!   that is gentle enough creeps back, so one quiet window does not undo
//!   the backing off (no oscillation between the extremes);
//! - in between (the band), nothing changes.
//!
//! A percentile and not the mean, because what other clients feel is the
//! tail: a probe that waited for a whole piece of the sweep. The 90th of a
//! window of about 25 probes is its third highest: one unlucky probe (a
//! page fault, the host scheduling) does not count as a signal, three do.

use std::time::Duration;

/// Fewest changes' spacing: decisions are made on a window of probes this
/// long, so each change is judged on what it did (Redis needs a few
/// milliseconds to show it; the probe a window to measure it).
pub const MIN_GAP: Duration = Duration::from_millis(250);

/// Fewest probes a decision is made on; fewer (a stalled probe) holds.
pub const MIN_SAMPLES: usize = 5;

/// Smallest share of Redis's time: below this the floor decides anyway.
pub const MIN_SHARE: f64 = 0.01;

/// Smallest piece: SCAN COUNT and keys per pipeline.
pub const MIN_PIECE: usize = 10;

/// Largest piece. Redis reads a client's pipeline 16 KiB per turn of its
/// event loop (about 200 ZREMRANGEBYSCORE commands) and serves the other
/// clients between turns; a SCAN with COUNT 200 costs about 0.35 ms. Either
/// is what a request arriving meanwhile waits for, and it is about the idle
/// p99 of a loopback request: more would show in other clients' tail.
pub const MAX_PIECE: usize = 200;

/// The piece a sweep starts with: half the largest, so the first window,
/// measured before anything is known, is already a gentle one.
pub const START_PIECE: usize = 100;

/// The controller of one primary's sweep.
#[derive(Clone, Debug)]
pub struct Controller {
    target: Duration,
    max_share: f64,
    max_piece: usize,
    /// The share of Redis's time the sweep may take now.
    share: f64,
    /// SCAN COUNT and keys per pipeline now.
    piece: usize,
    /// The lowest probe round trip seen: the idle one.
    baseline: Option<Duration>,
    /// Probes since the last decision.
    window: Vec<Duration>,
    /// The last signal decided on.
    signal: Option<Duration>,
}

impl Controller {
    /// A controller aiming to keep the probe within `target` of its idle
    /// round trip, taking at most `max_share` (0 to 1] of Redis's time, in
    /// pieces of at most `max_piece` (bounded by [`MAX_PIECE`]).
    pub fn new(target: Duration, max_share: f64, max_piece: usize) -> Self {
        let max_piece = max_piece.clamp(1, MAX_PIECE);
        let max_share = max_share.clamp(MIN_SHARE, 1.0);
        Self {
            target,
            max_share,
            max_piece,
            share: max_share,
            piece: START_PIECE.min(max_piece),
            baseline: None,
            window: Vec::new(),
            signal: None,
        }
    }

    /// One probe's round trip.
    pub fn probed(&mut self, rtt: Duration) {
        self.baseline = Some(self.baseline.map_or(rtt, |b| b.min(rtt)));
        self.window.push(rtt);
    }

    /// The share of Redis's time the sweep may take now.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// The piece (SCAN COUNT, keys per pipeline) now.
    pub fn piece(&self) -> usize {
        self.piece
    }

    /// The lowest round trip seen (the idle one), if any probe answered.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The signal of the last decision: the 90th percentile probe.
    pub fn signal(&self) -> Option<Duration> {
        self.signal
    }

    /// Whether the share is at its maximum: the signal holds nothing back.
    /// (The piece is not counted: it starts below its maximum, and a sweep
    /// warming up is not a throttled one.)
    pub fn at_full_speed(&self) -> bool {
        self.share >= self.max_share
    }

    /// Decides on the probes since the last call (call every [`MIN_GAP`]):
    /// returns whether anything changed. Too few probes (the probe
    /// connection stalled or lost) count as a signal above the target:
    /// not knowing what others feel is no licence to speed up.
    pub fn decide(&mut self) -> bool {
        let mut window = std::mem::take(&mut self.window);
        let (before_share, before_piece) = (self.share, self.piece);
        let over = if window.len() < MIN_SAMPLES {
            true
        } else {
            window.sort_unstable();
            let at = (window.len() * 9 / 10).min(window.len() - 1);
            let signal = window[at];
            self.signal = Some(signal);
            let excess = signal.saturating_sub(self.baseline.unwrap_or(signal));
            if excess < self.target / 2 {
                self.share = (self.share + self.max_share / 10.0).min(self.max_share);
                self.piece = (self.piece + self.max_piece.div_ceil(10)).min(self.max_piece);
                return (self.share, self.piece) != (before_share, before_piece);
            }
            excess > self.target
        };
        if over {
            self.share = (self.share / 2.0).max(MIN_SHARE.min(self.max_share));
            self.piece = (self.piece / 2).max(MIN_PIECE.min(self.max_piece));
        }
        (self.share, self.piece) != (before_share, before_piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn window(c: &mut Controller, rtt: Duration) -> bool {
        for _ in 0..20 {
            c.probed(rtt);
        }
        c.decide()
    }

    #[test]
    fn it_backs_off_fast_when_the_probe_is_slow_and_creeps_back_when_it_is_not() {
        let mut c = Controller::new(MS / 2, 0.5, 200);
        assert_eq!((c.share(), c.piece()), (0.5, START_PIECE));
        // Idle: the baseline is learnt, and the piece grows to its maximum.
        for _ in 0..20 {
            window(&mut c, MS / 5);
        }
        assert!(c.at_full_speed());
        assert_eq!(c.piece(), 200);
        assert_eq!(c.baseline(), Some(MS / 5));
        // 2 ms over the baseline: halved, window after window, to the minima.
        assert!(window(&mut c, MS * 2));
        assert_eq!((c.share(), c.piece()), (0.25, 100));
        for _ in 0..20 {
            window(&mut c, MS * 2);
        }
        assert_eq!((c.share(), c.piece()), (MIN_SHARE, MIN_PIECE));
        assert_eq!(c.signal(), Some(MS * 2));
        // Quiet again: back up a tenth at a time, not at once.
        assert!(window(&mut c, MS / 5));
        assert!(c.share() < 0.1 && c.piece() < 40, "{c:?}");
        for _ in 0..20 {
            window(&mut c, MS / 5);
        }
        assert!(c.at_full_speed());
        assert_eq!(c.piece(), 200);
    }

    #[test]
    fn inside_the_band_nothing_changes() {
        let mut c = Controller::new(MS, 0.5, 200);
        window(&mut c, MS / 10);
        let before = (c.share(), c.piece());
        // 0.7 ms over a 0.1 ms baseline: between half the target and the target.
        assert!(!window(&mut c, MS * 8 / 10));
        assert_eq!((c.share(), c.piece()), before);
    }

    #[test]
    fn a_few_slow_probes_are_not_a_signal_but_a_tenth_of_them_is() {
        let mut c = Controller::new(MS / 2, 0.5, 200);
        window(&mut c, MS / 10);
        let before = c.share();
        for _ in 0..19 {
            c.probed(MS / 10);
        }
        c.probed(MS * 50);
        c.decide();
        assert!(c.share() >= before);
        for _ in 0..17 {
            c.probed(MS / 10);
        }
        for _ in 0..3 {
            c.probed(MS * 50);
        }
        c.decide();
        assert!(c.share() < before);
    }

    #[test]
    fn no_probe_answering_counts_as_too_slow() {
        let mut c = Controller::new(MS / 2, 1.0, 200);
        assert!(c.decide());
        assert_eq!(c.share(), 0.5);
        c.probed(MS);
        assert!(c.decide());
        assert_eq!(c.share(), 0.25);
    }

    #[test]
    fn the_maxima_bound_the_start_and_the_growth() {
        let mut c = Controller::new(MS, 0.2, 30);
        assert_eq!(c.piece(), 30);
        for _ in 0..30 {
            window(&mut c, MS / 10);
        }
        assert_eq!((c.share(), c.piece()), (0.2, 30));
        assert_eq!(Controller::new(MS, 7.0, 10_000).piece(), START_PIECE);
    }
}
