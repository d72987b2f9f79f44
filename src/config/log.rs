//! `[log]`: the level filter and the line format.

use serde::{Deserialize, Serialize};

use super::values::string_enum;
use super::ConfigError;

string_enum! {
    /// Log line format.
    LogFormat {
        /// Human-readable lines.
        Text = "text",
        /// One JSON object per line, for log shippers.
        Json = "json",
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter such as `info` or `token_sweeper=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl LogSettings {
    /// `level` must be a filter tracing accepts. Kept as text, not as the
    /// parsed filter: a filter cannot be cloned or compared, and `RUST_LOG`
    /// replaces it when logging starts.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("{:?} is not a log filter: {e}", self.level),
            ));
        }
        Ok(())
    }
}
