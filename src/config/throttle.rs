//! The `[sweep]` keys of the adaptive throttle: whether it runs, and the
//! bounds it keeps a sweep within (see `sweep::throttle` for how).

use std::time::Duration;

use super::values::string_enum;
use super::{ConfigError, SweepSettings};

string_enum! {
    /// How a sweep paces itself against the other clients of its Redis.
    ThrottleMode {
        /// Measure what other clients feel (a probe's round trip on a
        /// connection of its own) and yield to them: small pieces of work,
        /// at most `throttle_max_share_percent` of Redis's time, less when
        /// the probe's latency rises, never below `throttle_floor`.
        Adaptive = "adaptive",
        /// Full speed: `max_in_flight` pipelines of `batch_size` keys, as
        /// fast as Redis answers (for a backlog or a maintenance window).
        Off = "off",
    }
}

/// Smallest `sweep.throttle_target`: below this a probe's round trip on a
/// loaded host is noise, and the sweep would sit at its floor for nothing.
pub const MIN_THROTTLE_TARGET: Duration = Duration::from_micros(50);

/// Largest `sweep.throttle_target`: a second of added latency is an outage
/// for an auth path, not a target.
pub const MAX_THROTTLE_TARGET: Duration = Duration::from_secs(1);

/// Largest `sweep.max_members_per_command`. A ZREMRANGEBYSCORE costs about
/// 0.3 µs of Redis's one thread per member removed; a million members is
/// the 300 ms stall the bound is there to prevent.
pub const MAX_MEMBERS_PER_COMMAND: u32 = 1_000_000;

impl SweepSettings {
    /// The throttle's own rules, called from the section's validation.
    pub(super) fn validate_throttle(&self) -> Result<(), ConfigError> {
        if self.throttle_target < MIN_THROTTLE_TARGET || self.throttle_target > MAX_THROTTLE_TARGET
        {
            return Err(ConfigError::invalid(
                "sweep.throttle_target",
                format!(
                    "must be from {MIN_THROTTLE_TARGET:?} to {MAX_THROTTLE_TARGET:?}, got {:?}",
                    self.throttle_target
                ),
            ));
        }
        if !(1..=100).contains(&self.throttle_max_share_percent) {
            return Err(ConfigError::invalid(
                "sweep.throttle_max_share_percent",
                format!(
                    "must be from 1 to 100, got {}",
                    self.throttle_max_share_percent
                ),
            ));
        }
        if self.throttle_floor == 0 {
            // A floor of zero would let a busy Redis stop the sweep for good.
            return Err(ConfigError::invalid(
                "sweep.throttle_floor",
                "must be at least 1 key per second: the sweep must always progress",
            ));
        }
        super::values::between_one_and(
            "sweep.max_members_per_command",
            self.max_members_per_command,
            MAX_MEMBERS_PER_COMMAND,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_throttle_keys_have_bounds() {
        let ok = SweepSettings::default();
        ok.validate_throttle().unwrap();
        assert_eq!(ok.throttle, ThrottleMode::Adaptive);
        let bad = [
            SweepSettings {
                throttle_target: Duration::from_micros(10),
                ..ok.clone()
            },
            SweepSettings {
                throttle_max_share_percent: 0,
                ..ok.clone()
            },
            SweepSettings {
                throttle_max_share_percent: 101,
                ..ok.clone()
            },
            SweepSettings {
                throttle_floor: 0,
                ..ok.clone()
            },
            SweepSettings {
                max_members_per_command: 0,
                ..ok.clone()
            },
        ];
        for settings in bad {
            assert!(settings.validate_throttle().is_err(), "{settings:?}");
        }
        assert_eq!("off".parse::<ThrottleMode>(), Ok(ThrottleMode::Off));
        assert!("slow".parse::<ThrottleMode>().is_err());
    }
}
