//! Typed settings, their layering and their validation.
//!
//! Every value is parsed into its type once, as the settings are read: the
//! Redis URLs, the cron schedule, the JWT algorithm, the metrics address,
//! the log filter.
//! Past [`Settings::load`] no setting is text to be checked again, and every
//! problem is one [`ConfigError`] that names the key and the bad value, so
//! an operator can fix it from a single log line.
//!
//! The files, from the outside in:
//! - this file: [`Settings`], the six sections together;
//! - `load` and `validate`: reading the layers, and the rules across keys;
//! - one file per section, each with its types, defaults and the checks of
//!   its own keys: `redis` (+ `tls` for its certificate files), `sweep`
//!   (+ `score_unit`, the unit's arithmetic, `throttle`, `due_index`), `lock`, `metrics`, `log`,
//!   `auth`;
//! - what every section uses: `secret` and `url` (values that must never
//!   print in clear), `values` (parsing one value from text) and `error`.
//!
//! Cut by section because that is how an operator reads the file
//! (`config/default.toml`) and how a change arrives: a new key touches its
//! section's file and, only if it constrains another key, `validate`.

use serde::{Deserialize, Serialize};

// The leaves: the error, one-value parsing, values that hide secrets.
mod error;
mod secret;
mod url;
mod values;

// One file per section.
mod auth;
mod due_index;
mod lock;
mod log;
mod metrics;
mod redis;
mod score_unit;
mod sweep;
mod throttle;
mod tls;

// Reading and checking the whole.
mod load;
mod validate;

pub use auth::{ttl_problem, AuthSettings, MemberKind, MAX_TTL};
pub use due_index::DueIndexSettings;
pub use error::ConfigError;
pub use load::{ENV_PREFIX, ENV_SEPARATOR};
pub use lock::{LockSettings, MAX_LOCK_TTL};
pub use log::{LogFilter, LogFormat, LogSettings};
pub use metrics::MetricsSettings;
pub use redis::{RedisMode, RedisSettings};
pub use score_unit::ScoreUnit;
pub use secret::Secret;
pub use sweep::{
    ClockSource, SweepSettings, MAX_BATCH_SIZE, MAX_CLOCK_SKEW, MAX_INTERVAL, MAX_IN_FLIGHT,
    MAX_SCAN_COUNT, MAX_UNIT_GUARD_SAMPLE,
};
pub use throttle::{
    ThrottleMode, MAX_MEMBERS_PER_COMMAND, MAX_THROTTLE_TARGET, MIN_THROTTLE_TARGET,
};
pub use tls::TlsFiles;
pub use url::{redact_url, RedisUrl};
pub use values::in_days;

/// All settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[redis]`
    pub redis: RedisSettings,
    /// `[sweep]`
    pub sweep: SweepSettings,
    /// `[lock]`
    pub lock: LockSettings,
    /// `[metrics]`
    pub metrics: MetricsSettings,
    /// `[log]`
    pub log: LogSettings,
    /// `[auth]`
    pub auth: AuthSettings,
}

impl Settings {
    /// The effective settings as TOML, secrets redacted.
    ///
    /// # Errors
    /// Only if serialization fails, which the types here do not allow.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::invalid("(top level)", e.to_string()))
    }
}
