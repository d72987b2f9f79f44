//! `[lock]`: the replica lock, so that several daemons on one Redis sweep
//! at most once per period.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{human_duration, in_days};
use super::ConfigError;

/// Longest `lock.ttl`: one day. The lease of a daemon that dies mid-sweep
/// keeps the others from that Redis (or primary) until it expires, so a
/// longer one stops the fleet sweeping for longer than any sweep needs
/// between two renewals (every third of it); and a value near the top of the
/// range does not fit Redis's millisecond expiry, which refused every lease
/// ("value is not an integer or out of range") while check-config passed.
pub const MAX_LOCK_TTL: Duration = Duration::from_secs(86_400);

/// The replica lock: several daemons on one Redis sweep at most once per period.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockSettings {
    /// Take the lock before each sweep. Turn off only for a single daemon.
    pub enabled: bool,
    /// The Redis key of the lock. Daemons that should share work use the same key.
    pub key: String,
    /// While a sweep runs, the lock is kept alive this long at a time
    /// (renewed every third of it); if the holder dies, another daemon takes
    /// over within the period plus this. From 1s to [`MAX_LOCK_TTL`].
    #[serde(with = "human_duration")]
    pub ttl: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key: "token-sweeper:lock".to_owned(),
            ttl: Duration::from_secs(30),
        }
    }
}

impl LockSettings {
    /// The bounds of `[lock]`, checked only while the lock is on.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.key.is_empty() {
            return Err(ConfigError::invalid("lock.key", "must not be empty"));
        }
        if self.key.contains(['{', '}']) {
            return Err(ConfigError::invalid(
                "lock.key",
                format!(
                    "must not contain {{ or }}, got {:?}: on a Redis Cluster each primary's \
                     lease is the key plus a hash tag of its own, and a hash tag in the key \
                     would put every lease on one primary",
                    self.key
                ),
            ));
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > MAX_LOCK_TTL {
            return Err(ConfigError::invalid(
                "lock.ttl",
                format!(
                    "must be from 1s to {}, got {}",
                    in_days(MAX_LOCK_TTL),
                    in_days(self.ttl)
                ),
            ));
        }
        Ok(())
    }
}
