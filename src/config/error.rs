//! The one error type of the settings: every problem names its key, so an
//! operator can fix it from a single log line.

use std::path::PathBuf;

/// A configuration problem, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value that is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key, e.g. `sweep.score_unit`.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
    /// The file could not be read or is not valid TOML.
    #[error("{path}: {message}")]
    File {
        /// The file as given on the command line.
        path: PathBuf,
        /// What went wrong reading or parsing it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}
