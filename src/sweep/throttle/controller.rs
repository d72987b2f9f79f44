//! The throttle's decisions, with no I/O: from probe round trips to the
//! share of Redis's time the sweep may take and how long each piece of it
//! may hold Redis.
//!
//! Additive increase, multiplicative decrease (TCP's rule, and what gh-ost
//! and Vitess do in spirit), with a target band and a minimum gap between
//! changes:
//! - every [`MIN_GAP`], if at least [`MIN_SAMPLES`] probes answered, the
//!   signal is their 90th percentile. Its excess over the reference (the
//!   lowest such percentile of any window, the first of which is measured
//!   before the sweep sends anything: what other clients see without the
//!   sweep, network, host and other traffic included), but never more than
//!   the target above the fastest probe, is compared with `throttle_target`.
//!   The bound is what makes the sweep yield to a Redis that others
//!   already keep busy: one measured busy in the first window would
//!   otherwise be taken as normal;
//! - above the target in two windows running, or above twice the target in
//!   one, the share and the piece's budget are halved (down to
//!   [`MIN_SHARE`] and [`MIN_BUDGET`]): a sweep that hurts backs off fast,
//!   and one window the host's own jitter spoilt does not halve a sweep
//!   that hurts no one;
//! - below half the target, they grow by a tenth of their range: a sweep
//!   that is gentle enough creeps back, so one quiet window does not undo
//!   the backing off (no oscillation between the extremes);
//! - in between (the band), nothing changes.
//!
//! Two knobs, because they act on different things. A request that
//! arrives while Redis runs a piece of the sweep waits for the rest of it:
//! the piece's length bounds the tail others see. The share is how often a
//! request finds Redis busy with the sweep: with Redis otherwise idle it
//! moves the median a little, with Redis already busy it is what queues
//! others behind the sweep. The largest budget is half the target, so a
//! sweep at full speed keeps within its own target by construction.
//!
//! A percentile and not the mean, because what other clients feel is the
//! tail: a probe that waited for a whole piece of the sweep. The 90th of a
//! window of about 50 probes is its fifth highest: one unlucky probe (a
//! page fault, the host scheduling) does not count as a signal, five do.
//! The reference is a percentile too, not the fastest probe ever seen: on
//! a busy host the fastest probe is rare luck, and measuring against it
//! would read the host's own jitter as the sweep's doing.

use std::time::Duration;

/// Fewest changes' spacing: decisions are made on a window of probes this
/// long, so each change is judged on what it did (Redis needs a few
/// milliseconds to show it; the probe a window to measure it).
pub const MIN_GAP: Duration = Duration::from_millis(250);

/// Fewest probes a decision is made on; fewer (a stalled probe) holds.
pub const MIN_SAMPLES: usize = 5;

/// Smallest share of Redis's time: below this the floor decides anyway.
pub const MIN_SHARE: f64 = 0.01;

/// Smallest budget of one piece: a few keys' worth.
pub const MIN_BUDGET: Duration = Duration::from_micros(20);

/// Largest budget of one piece whatever the target: Redis's own fast
/// expiry cycle takes at most 1 ms.
pub const MAX_BUDGET: Duration = Duration::from_millis(1);

/// The controller of one primary's sweep.
#[derive(Clone, Debug)]
pub struct Controller {
    target: Duration,
    max_share: f64,
    max_budget: Duration,
    /// The share of Redis's time the sweep may take now.
    share: f64,
    /// How long one piece may hold Redis now.
    budget: Duration,
    /// The lowest probe round trip of the last window and since: the
    /// network's part of a round trip now, which is not Redis's time. Not
    /// the lowest ever: a network that became slower mid-sweep (a proxy, a
    /// failover to a distant replica) would read as Redis's time, and the
    /// pieces would shrink to one key per round trip.
    fastest: Option<Duration>,
    /// The lowest 90th percentile of a window: what others see anyway.
    reference: Option<Duration>,
    /// Probes since the last decision.
    window: Vec<Duration>,
    /// The last signal decided on.
    signal: Option<Duration>,
    /// Whether the last window was above the target.
    was_over: bool,
}

impl Controller {
    /// A controller aiming to keep the probe's 90th percentile within
    /// `target` of its reference, taking at most `max_share` (0 to 1] of
    /// Redis's time, in pieces of at most half the target.
    pub fn new(target: Duration, max_share: f64) -> Self {
        let max_share = max_share.clamp(MIN_SHARE, 1.0);
        let max_budget = (target / 2).clamp(MIN_BUDGET, MAX_BUDGET);
        Self {
            target,
            max_share,
            max_budget,
            share: max_share,
            // Half the largest: the first windows, measured before anything
            // is known of the cost of a key, are already gentle ones.
            budget: max_budget / 2,
            fastest: None,
            reference: None,
            window: Vec::new(),
            signal: None,
            was_over: false,
        }
    }

    /// One probe's round trip.
    pub fn probed(&mut self, rtt: Duration) {
        self.fastest = Some(self.fastest.map_or(rtt, |b| b.min(rtt)));
        self.window.push(rtt);
    }

    /// The share of Redis's time the sweep may take now.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// How long one piece of the sweep may hold Redis now.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The lowest recent round trip (the network's part), if any probe answered.
    pub fn fastest(&self) -> Option<Duration> {
        self.fastest
    }

    /// The reference the signal is compared with, once a window had one.
    pub fn reference(&self) -> Option<Duration> {
        self.reference
    }

    /// The signal of the last decision: the 90th percentile probe.
    pub fn signal(&self) -> Option<Duration> {
        self.signal
    }

    /// Whether the share is at its maximum: the signal holds nothing back.
    /// (The budget is not counted: it starts below its maximum, and a
    /// sweep warming up is not a throttled one.)
    pub fn at_full_speed(&self) -> bool {
        self.share >= self.max_share
    }

    /// Decides on the probes since the last call (call every [`MIN_GAP`]):
    /// returns whether anything changed. Too few probes (the probe
    /// connection stalled or lost) count as a signal above the target:
    /// not knowing what others feel is no licence to speed up.
    pub fn decide(&mut self) -> bool {
        let mut window = std::mem::take(&mut self.window);
        let before = (self.share, self.budget);
        let over = if window.len() < MIN_SAMPLES {
            // Nothing measured: the last signal is no longer what others see.
            self.signal = None;
            true
        } else {
            window.sort_unstable();
            self.fastest = window.first().copied();
            let at = (window.len() * 9 / 10).min(window.len() - 1);
            let signal = window[at];
            self.signal = Some(signal);
            let reference = self.reference.map_or(signal, |r| r.min(signal));
            self.reference = Some(reference);
            let busy_bound = self.fastest.unwrap_or(signal) + self.target;
            let excess = signal.saturating_sub(reference.min(busy_bound));
            if excess < self.target / 2 {
                self.was_over = false;
                self.share = (self.share + self.max_share / 10.0).min(self.max_share);
                self.budget = (self.budget + self.max_budget / 10).min(self.max_budget);
                return (self.share, self.budget) != before;
            }
            let over_now = excess > self.target;
            let over = over_now && (self.was_over || excess > self.target * 2);
            self.was_over = over_now;
            over
        };
        if over {
            self.share = (self.share / 2.0).max(MIN_SHARE.min(self.max_share));
            self.budget = (self.budget / 2).max(MIN_BUDGET.min(self.max_budget));
        }
        (self.share, self.budget) != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    fn window(c: &mut Controller, rtt: Duration) -> bool {
        for _ in 0..20 {
            c.probed(rtt);
        }
        c.decide()
    }

    #[test]
    fn it_backs_off_fast_when_the_probe_is_slow_and_creeps_back_when_it_is_not() {
        let mut c = Controller::new(MS / 2, 0.5);
        assert_eq!((c.share(), c.budget()), (0.5, US * 125));
        // Idle: the reference is learnt, and the budget grows to half the target.
        for _ in 0..20 {
            window(&mut c, MS / 5);
        }
        assert!(c.at_full_speed());
        assert_eq!(c.budget(), US * 250);
        assert_eq!(c.reference(), Some(MS / 5));
        // 2 ms over the reference: halved, window after window, to the minima.
        assert!(window(&mut c, MS * 2));
        assert_eq!((c.share(), c.budget()), (0.25, US * 125));
        for _ in 0..20 {
            window(&mut c, MS * 2);
        }
        assert_eq!((c.share(), c.budget()), (MIN_SHARE, MIN_BUDGET));
        assert_eq!(c.signal(), Some(MS * 2));
        // The slow windows did not move the reference.
        assert_eq!(c.reference(), Some(MS / 5));
        // Quiet again: back up a tenth at a time, not at once.
        assert!(window(&mut c, MS / 5));
        assert!(c.share() < 0.1 && c.budget() < US * 60, "{c:?}");
        for _ in 0..20 {
            window(&mut c, MS / 5);
        }
        assert!(c.at_full_speed());
        assert_eq!(c.budget(), US * 250);
    }

    #[test]
    fn one_window_a_little_over_waits_for_a_second_one() {
        let mut c = Controller::new(MS, 0.5);
        window(&mut c, MS / 10);
        let before = (c.share(), c.budget());
        // 1.5 ms over: above the target, not twice it. Once is jitter...
        assert!(!window(&mut c, MS * 16 / 10));
        assert_eq!((c.share(), c.budget()), before);
        // ... twice running is a signal.
        assert!(window(&mut c, MS * 16 / 10));
        assert_eq!(c.share(), 0.25);
        // An over window between quiet ones does not count twice.
        let mut c = Controller::new(MS, 0.5);
        window(&mut c, MS / 10);
        window(&mut c, MS * 16 / 10);
        window(&mut c, MS / 10);
        assert!(!window(&mut c, MS * 16 / 10) || c.share() == 0.5);
        assert_eq!(c.share(), 0.5);
    }

    #[test]
    fn a_network_that_slows_down_is_not_taken_for_redis_time() {
        let mut c = Controller::new(MS / 2, 0.5);
        window(&mut c, MS / 10);
        assert_eq!(c.fastest(), Some(MS / 10));
        // 100 ms of network now, both ways: the probe's floor follows.
        window(&mut c, MS * 100);
        assert_eq!(c.fastest(), Some(MS * 100));
        // And back.
        c.probed(MS / 10);
        assert_eq!(c.fastest(), Some(MS / 10));
    }

    #[test]
    fn inside_the_band_nothing_changes() {
        let mut c = Controller::new(MS, 0.5);
        window(&mut c, MS / 10);
        let before = (c.share(), c.budget());
        // 0.7 ms over a 0.1 ms reference: between half the target and the target.
        assert!(!window(&mut c, MS * 8 / 10));
        assert_eq!((c.share(), c.budget()), before);
    }

    #[test]
    fn the_reference_is_a_windows_percentile_not_the_luckiest_probe() {
        let mut c = Controller::new(MS / 2, 0.5);
        // A jittery host: most probes 0.6 ms, a few lucky ones 0.05 ms.
        let jittery = |c: &mut Controller| {
            for i in 0..20 {
                c.probed(if i % 7 == 0 { MS / 20 } else { MS * 6 / 10 });
            }
            c.decide()
        };
        jittery(&mut c);
        for _ in 0..10 {
            jittery(&mut c);
        }
        // Measured against the lucky probes, 0.55 ms over a 0.5 ms target
        // would have halved the share every window.
        assert_eq!(c.fastest(), Some(MS / 20));
        assert_eq!(c.reference(), Some(MS * 6 / 10));
        assert!(c.at_full_speed(), "{c:?}");
    }

    #[test]
    fn a_redis_already_busy_when_the_sweep_starts_is_not_taken_as_normal() {
        let mut c = Controller::new(MS / 2, 0.5);
        // Every window: most probes wait 5 ms behind other clients' work,
        // one in ten gets through at once.
        for _ in 0..3 {
            for i in 0..20 {
                c.probed(if i % 10 == 0 { MS / 10 } else { MS * 5 });
            }
            c.decide();
        }
        assert_eq!(c.reference(), Some(MS * 5));
        assert!(c.share() < 0.1, "{c:?}");
    }

    #[test]
    fn a_few_slow_probes_are_not_a_signal_but_a_tenth_of_them_is() {
        let mut c = Controller::new(MS / 2, 0.5);
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
        let mut c = Controller::new(MS / 2, 1.0);
        assert!(c.decide());
        assert_eq!(c.share(), 0.5);
        c.probed(MS);
        assert!(c.decide());
        assert_eq!(c.share(), 0.25);
        // A signal measured, then the probe silent: no stale signal.
        window(&mut c, MS / 10);
        assert_eq!(c.signal(), Some(MS / 10));
        c.decide();
        assert_eq!(c.signal(), None);
    }

    #[test]
    fn the_budget_is_half_the_target_within_its_bounds() {
        assert_eq!(Controller::new(MS / 2, 0.2).max_budget, US * 250);
        assert_eq!(Controller::new(US * 10, 0.2).max_budget, MIN_BUDGET);
        assert_eq!(Controller::new(MS * 100, 0.2).max_budget, MAX_BUDGET);
        let mut c = Controller::new(MS, 0.2);
        for _ in 0..30 {
            window(&mut c, MS / 10);
        }
        assert_eq!((c.share(), c.budget()), (0.2, MS / 2));
    }
}
