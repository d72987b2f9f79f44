//! `sweep.score_unit` and its arithmetic: every conversion between a score
//! and a time lives here, so the sweep and the auth path cannot round a
//! score differently.

use super::values::string_enum;

string_enum! {
    /// The unit of the scores in the token sets.
    ScoreUnit {
        /// Milliseconds since the Unix epoch (JavaScript's `Date.now()`).
        Milliseconds = "ms",
        /// Seconds since the Unix epoch (a JWT's `exp`).
        Seconds = "s",
    }
}

impl ScoreUnit {
    /// How many microseconds one unit is.
    pub fn micros(self) -> i128 {
        match self {
            Self::Milliseconds => 1_000,
            Self::Seconds => 1_000_000,
        }
    }

    /// How many units make a second.
    pub fn per_second(self) -> u64 {
        match self {
            Self::Milliseconds => 1_000,
            Self::Seconds => 1,
        }
    }

    /// The score of `micros` microseconds since the epoch, rounded down
    /// (towards the past, also before 1970): a cutoff rounded so only keeps
    /// a member longer.
    pub fn from_unix_micros(self, micros: i128) -> i128 {
        micros.div_euclid(self.micros())
    }

    /// The score of `secs` whole seconds since the epoch; `None` when it
    /// does not fit.
    pub fn from_unix_secs(self, secs: u64) -> Option<u64> {
        secs.checked_mul(self.per_second())
    }

    /// A score as microseconds since the epoch.
    pub fn to_unix_micros(self, score: f64) -> f64 {
        score * self.micros() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_spell_as_configured_and_refuse_others() {
        assert_eq!("ms".parse(), Ok(ScoreUnit::Milliseconds));
        assert_eq!("s".parse(), Ok(ScoreUnit::Seconds));
        assert_eq!(
            "sec".parse::<ScoreUnit>(),
            Err(r#"expected "ms" or "s", got "sec""#.to_owned())
        );
        assert_eq!(ScoreUnit::Milliseconds.to_string(), "ms");
    }

    #[test]
    fn scores_round_towards_the_past() {
        let now = 1_700_000_000_999_999;
        assert_eq!(
            ScoreUnit::Seconds.from_unix_micros(now),
            1_700_000_000,
            "the second that has begun"
        );
        assert_eq!(
            ScoreUnit::Milliseconds.from_unix_micros(now),
            1_700_000_000_999
        );
        assert_eq!(ScoreUnit::Milliseconds.from_unix_micros(-1), -1);
        assert_eq!(ScoreUnit::Seconds.from_unix_micros(-1), -1);
    }

    #[test]
    fn seconds_and_scores_convert_both_ways() {
        for unit in [ScoreUnit::Seconds, ScoreUnit::Milliseconds] {
            let score = unit.from_unix_secs(1_700_000_000).unwrap_or_default();
            assert_eq!(unit.to_unix_micros(score as f64), 1_700_000_000e6);
            assert_eq!(
                i128::from(unit.per_second()) * unit.micros(),
                1_000_000,
                "{unit}"
            );
        }
        assert_eq!(ScoreUnit::Milliseconds.from_unix_secs(u64::MAX), None);
        assert_eq!(ScoreUnit::Seconds.from_unix_secs(u64::MAX), Some(u64::MAX));
    }
}
