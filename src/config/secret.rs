//! Secrets in the settings (a password, an HMAC secret): held so that no
//! dump, log line or error can print them, and read from a file when the
//! operator mounts them as one.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A secret string: never printed, never serialized in clear.
///
/// `Debug`, `Display` and `Serialize` all write [`Secret::REDACTED`], so a
/// settings dump or a log line cannot leak it by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// What is printed instead of the secret.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Self::REDACTED)
    }
}

/// Reads a secret given either inline or as a file; validation has already
/// made sure not both are set.
pub(crate) fn read_secret(
    file_key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(secret), _) => Ok(Some(secret.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
            .map_err(|e| ConfigError::invalid(file_key, format!("{}: {e}", path.display()))),
        (None, None) => Ok(None),
    }
}

/// A secret set both inline and as a file: refused, naming the file key,
/// since which one wins would be a guess.
pub(super) fn refuse_both(inline_key: &str, file_key: &str, both: bool) -> Result<(), ConfigError> {
    if both {
        return Err(ConfigError::invalid(
            file_key,
            format!("set either {inline_key} or {file_key}, not both"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_secret_prints_redacted_every_way() {
        let secret = Secret::new("hunter2");
        for printed in [
            format!("{secret:?}"),
            serde_json::to_string(&secret).unwrap(),
        ] {
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains(Secret::REDACTED), "{printed}");
        }
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn a_secret_file_loses_its_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, " s3 cret\r\n").unwrap();
        let read = read_secret("auth.secret_file", None, Some(&path)).unwrap();
        assert_eq!(read.unwrap().expose(), " s3 cret");
        let inline = Secret::new("inline");
        let read = read_secret("auth.secret_file", Some(&inline), Some(&path)).unwrap();
        assert_eq!(read, Some(inline));
        let err = read_secret("auth.secret_file", None, Some(&dir.path().join("no")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("auth.secret_file: "), "{err}");
    }
}
