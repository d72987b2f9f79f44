//! `[sweep.due_index]`: the opt-in due index, read by the auth path (which
//! maintains it) and the sweeper (which sweeps by it): one place both read.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sweep::MAX_INTERVAL;
use super::values::in_days;
use super::ConfigError;
use crate::due_index::{glob_match, index_key_of_slot, DEFAULT_PREFIX};
use crate::schedule::Schedule;

/// The due index: which user keys have an expired member, kept by writers
/// so that a sweep reads only those (see [`crate::due_index`]).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DueIndexSettings {
    /// Maintain the index on every login (auth path) and sweep by it
    /// (sweeper). Off by default.
    pub enabled: bool,
    /// Prefix of the 16384 index keys, `<prefix>{<tag>}`. No `{` or `}`,
    /// and no index key may match `sweep.pattern`.
    pub key_prefix: String,
    /// When the daemon runs a full scan (the safety net, which also
    /// repairs the index) instead of an index sweep: an interval (`"1d"`)
    /// or a cron expression with seconds, as `sweep.interval`/`schedule`.
    #[serde(with = "schedule_text")]
    pub full_scan: Schedule,
}

impl Default for DueIndexSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            key_prefix: DEFAULT_PREFIX.to_owned(),
            full_scan: Schedule::Interval(Duration::from_secs(86_400)),
        }
    }
}

impl DueIndexSettings {
    /// The bounds of `[sweep.due_index]`; `pattern` is `sweep.pattern`.
    pub(super) fn validate(&self, pattern: &str) -> Result<(), ConfigError> {
        if let Schedule::Interval(interval) = self.full_scan {
            if interval < Duration::from_secs(1)
                || interval.subsec_nanos() != 0
                || interval > MAX_INTERVAL
            {
                return Err(ConfigError::invalid(
                    "sweep.due_index.full_scan",
                    format!(
                        "must be whole seconds, at least 1s and at most {}, got {}",
                        in_days(MAX_INTERVAL),
                        in_days(interval)
                    ),
                ));
            }
        }
        if !self.enabled {
            return Ok(());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::invalid(
                "sweep.due_index.key_prefix",
                format!(
                    "must be set and hold no {{ or }}, got {:?}: each index key is the prefix \
                     plus a hash tag of its slot",
                    self.key_prefix
                ),
            ));
        }
        // Writers and sweeper must name the same keys: a trailing newline
        // from a mounted secret would make a second index nobody sweeps.
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::invalid(
                "sweep.due_index.key_prefix",
                format!(
                    "must hold no whitespace or control characters, got {:?}",
                    self.key_prefix
                ),
            ));
        }
        // A full scan would sweep the index itself as token sets: its
        // entries are scored by expiry, so it would drop due entries.
        if let Some(slot) = (0..16384u16).find(|&slot| {
            glob_match(
                pattern.as_bytes(),
                index_key_of_slot(&self.key_prefix, slot).as_bytes(),
            )
        }) {
            return Err(ConfigError::invalid(
                "sweep.due_index.key_prefix",
                format!(
                    "index key {:?} matches sweep.pattern {pattern:?}: the sweep would take the \
                     index for token sets",
                    index_key_of_slot(&self.key_prefix, slot)
                ),
            ));
        }
        Ok(())
    }
}

/// `full_scan`: a human duration, or else a cron expression.
mod schedule_text {
    use serde::{Deserializer, Serializer};

    use super::super::values::from_text;
    use crate::schedule::Schedule;

    pub fn serialize<S: Serializer>(schedule: &Schedule, s: S) -> Result<S::Ok, S::Error> {
        match schedule {
            Schedule::Interval(interval) => {
                s.serialize_str(&humantime::format_duration(*interval).to_string())
            }
            Schedule::Cron(cron) => s.serialize_str(cron.as_str()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        from_text(d, |text| match humantime::parse_duration(text.trim()) {
            Ok(interval) => Ok(Schedule::Interval(interval)),
            Err(_) => Schedule::parse_cron(text)
                .map(Schedule::Cron)
                .map_err(|e| format!("{text:?} is not a duration (\"1d\") and {e}")),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn read(json: serde_json::Value) -> Result<DueIndexSettings, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn full_scan_is_an_interval_or_a_cron_schedule() {
        assert_eq!(
            read(serde_json::json!({ "full_scan": "12h" }))
                .unwrap()
                .full_scan,
            Schedule::Interval(Duration::from_secs(43_200))
        );
        let cron = read(serde_json::json!({ "full_scan": "0 0 3 * * *" })).unwrap();
        assert!(matches!(cron.full_scan, Schedule::Cron(ref c) if c.as_str() == "0 0 3 * * *"));
        let err = read(serde_json::json!({ "full_scan": "daily" })).unwrap_err();
        assert!(err.starts_with("\"daily\" is not a duration"), "{err}");
        let written = toml::to_string(&DueIndexSettings::default()).unwrap();
        assert!(written.contains("full_scan = \"1day\""), "{written}");
    }

    #[test]
    fn the_index_keys_are_out_of_the_sweep_pattern_and_hold_no_hash_tag() {
        let on = DueIndexSettings {
            enabled: true,
            ..DueIndexSettings::default()
        };
        on.validate("*-tokens").unwrap();
        let err = on.validate("*").unwrap_err().to_string();
        assert!(
            err.starts_with("sweep.due_index.key_prefix: index key "),
            "{err}"
        );
        assert!(on.validate("*}").is_err());
        let tagged = DueIndexSettings {
            key_prefix: "due{x}:".to_owned(),
            ..on.clone()
        };
        assert!(tagged.validate("*-tokens").is_err());
        for odd in [
            "token-sweeper:due:\n",
            " due:",
            "due:\t",
            "du e:",
            "due:\u{7f}",
        ] {
            let err = DueIndexSettings {
                key_prefix: odd.to_owned(),
                ..on.clone()
            }
            .validate("*-tokens")
            .unwrap_err()
            .to_string();
            assert!(err.contains("no whitespace or control"), "{odd:?}: {err}");
        }
        // Off, the prefix is not used.
        DueIndexSettings {
            enabled: false,
            ..tagged
        }
        .validate("*")
        .unwrap();
    }
}
