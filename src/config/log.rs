//! `[log]`: the level filter and the line format.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::values::{from_text, string_enum};

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
    pub level: LogFilter,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: LogFilter(String::from("info")),
            format: LogFormat::Text,
        }
    }
}

/// `log.level`: text that tracing accepts as a filter, checked as it is
/// read. Kept as text, not as the filter itself: a filter can be neither
/// cloned nor compared, and logging builds a fresh one at start and on
/// each reload. Reads as the `str` it holds.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct LogFilter(String);

impl LogFilter {
    /// Checks `text` as a tracing filter.
    ///
    /// # Errors
    /// Why tracing refuses it, quoting it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match tracing_subscriber::EnvFilter::try_new(text) {
            Ok(_) => Ok(Self(text.to_owned())),
            Err(e) => Err(format!("{text:?} is not a log filter: {e}")),
        }
    }
}

impl std::ops::Deref for LogFilter {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for LogFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for LogFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, Self::parse)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_log_filter_is_checked_as_it_is_read() {
        let read: LogFilter = serde_json::from_value("token_sweeper=debug,info".into()).unwrap();
        assert_eq!(&*read, "token_sweeper=debug,info");
        assert_eq!(
            toml::to_string(&LogSettings::default()).unwrap(),
            "level = \"info\"\nformat = \"text\"\n"
        );
        let err = serde_json::from_value::<LogFilter>("=^".into())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("\"=^\" is not a log filter: "), "{err}");
    }
}
