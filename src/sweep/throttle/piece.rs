//! How much work fits in one piece: the budget the controller allows a
//! piece to hold Redis, divided by what a unit of that work has cost.
//!
//! A key's cost is not known in advance (a set of 4 members or of 400, a
//! slow or a fast server), and a SCAN bucket costs another amount than a
//! key of a pipeline, so each kind of step learns its own cost per unit
//! from its round trips: Redis's time for one is its round trip less the
//! network's part (the probe's fastest), an average over recent steps.

use std::time::Duration;

/// A round trip of the sweep, by what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A SCAN page: its COUNT is the buckets Redis walks.
    Scan,
    /// A pipeline of one command per key (a removal, a bound read, a count)
    /// seen for the first time.
    Keys,
    /// A pipeline of keys that had more expired members than the bound:
    /// each removes up to `max_members_per_command`, so a key costs more.
    Revisit,
}

/// The piece of the first step of a kind, before its cost is known: small,
/// so that the first measurement is not itself a long piece.
pub(crate) const FIRST_PIECE: usize = 4;

/// Weight of the newest step in the running cost: a few dozen steps' memory,
/// so that one slow round trip (a page fault, the host scheduling) moves it
/// little and a change in the data (larger sets) is followed within a second.
const NEWEST: f64 = 0.1;

/// The running cost of a unit of each kind of step.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pieces {
    /// Seconds of Redis per SCAN bucket, once measured.
    scan: Option<f64>,
    /// Seconds of Redis per key of a pipeline, once measured.
    keys: Option<f64>,
    /// Seconds of Redis per key revisited, once measured.
    revisit: Option<f64>,
}

impl Pieces {
    /// The units of `step` that fit `budget`, between 1 and `max`.
    pub(crate) fn size(&self, step: Step, budget: Duration, max: usize) -> usize {
        let max = max.max(1);
        match self.cost(step) {
            None => FIRST_PIECE.min(max),
            Some(cost) if cost > 0.0 => {
                let fits = budget.as_secs_f64() / cost;
                // Finite and positive here; `as` saturates at usize::MAX.
                (fits.floor() as usize).clamp(1, max)
            }
            Some(_) => max,
        }
    }

    /// A `step` of `units` held Redis for `busy`. A round trip no slower
    /// than the fastest probe (all network: a distant Redis) counts as
    /// free: the next piece is the largest, and the average corrects it if
    /// that was luck. Not counting it would keep a sweep over a slow link
    /// at its first, smallest piece for good.
    pub(crate) fn measured(&mut self, step: Step, units: usize, busy: Duration) {
        if units == 0 {
            return;
        }
        let sample = busy.as_secs_f64() / units as f64;
        let cost = match step {
            Step::Scan => &mut self.scan,
            Step::Keys => &mut self.keys,
            Step::Revisit => &mut self.revisit,
        };
        *cost = Some(cost.map_or(sample, |c| c + NEWEST * (sample - c)));
    }

    fn cost(&self, step: Step) -> Option<f64> {
        match step {
            Step::Scan => self.scan,
            Step::Keys => self.keys,
            Step::Revisit => self.revisit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn the_first_piece_is_small_then_the_budget_over_the_cost() {
        let mut p = Pieces::default();
        assert_eq!(p.size(Step::Keys, US * 200, 200), FIRST_PIECE);
        // 16 keys took 64 us: 4 us a key, 50 fit 200 us.
        p.measured(Step::Keys, 4, US * 16);
        assert_eq!(p.size(Step::Keys, US * 200, 200), 50);
        // Each kind learns its own cost.
        assert_eq!(p.size(Step::Scan, US * 200, 200), FIRST_PIECE);
        assert_eq!(p.size(Step::Revisit, US * 200, 200), FIRST_PIECE);
        p.measured(Step::Revisit, 2, US * 300);
        assert_eq!(p.size(Step::Revisit, US * 200, 200), 1);
        assert_eq!(p.size(Step::Keys, US * 200, 200), 50);
        p.measured(Step::Scan, 100, US * 100);
        assert_eq!(p.size(Step::Scan, US * 200, 1000), 200);
        // The maximum and the minimum hold.
        assert_eq!(p.size(Step::Scan, US * 200, 150), 150);
        assert_eq!(p.size(Step::Keys, US, 200), 1);
    }

    #[test]
    fn one_slow_round_trip_moves_the_cost_a_little() {
        let mut p = Pieces::default();
        p.measured(Step::Keys, 50, US * 100);
        assert_eq!(p.size(Step::Keys, US * 200, 200), 100);
        p.measured(Step::Keys, 50, US * 5000);
        let after = p.size(Step::Keys, US * 200, 200);
        assert!((15..100).contains(&after), "{after}");
        // A free round trip (all network) lowers the cost, never to zero
        // at once: a distant Redis still gets large pieces.
        p.measured(Step::Keys, 50, Duration::ZERO);
        assert!(p.size(Step::Keys, US * 200, 200) > after);
        let mut far = Pieces::default();
        far.measured(Step::Scan, 4, Duration::ZERO);
        assert_eq!(far.size(Step::Scan, US * 200, 1000), 1000);
    }
}
