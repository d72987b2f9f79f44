//! Reading the settings: the built-in defaults (the sections' `Default`
//! impls, which `config/default.toml` mirrors key for key), the TOML file
//! given with `--config`, then environment variables
//! `TOKEN_SWEEPER__<SECTION>__<KEY>`; later layers win. The `config` crate
//! layers them; what it reports is turned into one line naming the key.

use std::collections::HashMap;
use std::path::Path;

use super::{ConfigError, Settings};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "TOKEN_SWEEPER";
/// Separates the prefix, the section and the key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

impl Settings {
    /// Loads defaults, then `file`, then the process environment, and validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars().collect())
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn load_with_env(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            // Checked here because the config crate's "not found" names no path.
            let problem = if !path.exists() {
                Some("no such file")
            } else if !path.is_file() {
                Some("not a regular file")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    message: problem.to_owned(),
                });
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // No `try_parsing`: it would turn a password such as "1e5" into a float and
        // back into "100000". Numbers and booleans are parsed from the string by the
        // typed deserializer instead.
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(Some(env)),
        );
        let layered = builder
            .build()
            .map_err(|e| ConfigError::from_layering(e, file))?;
        let explicit = |key: &str| layered.get::<config::Value>(key).is_ok();
        let (schedule_set, interval_set) = (explicit("sweep.schedule"), explicit("sweep.interval"));
        let mut settings: Self = layered
            .try_deserialize()
            .map_err(|e| ConfigError::from_layering(e, file))?;
        // The built-in default is an interval; a schedule given on its own
        // replaces it. Both given explicitly is a mistake `validate` reports.
        if schedule_set && !interval_set {
            settings.sweep.interval = None;
        }
        settings.validate()?;
        Ok(settings)
    }
}

impl ConfigError {
    /// Turns the `config` crate's error into one line that starts with the key.
    ///
    /// The crate appends "for key `x`" at the end; operators scan for the key
    /// first, so it is moved to the front.
    fn from_layering(err: config::ConfigError, file: Option<&Path>) -> Self {
        match err {
            config::ConfigError::At {
                error,
                key: Some(key),
                ..
            } => Self::invalid(key, error.to_string()),
            config::ConfigError::Type {
                unexpected,
                expected,
                key: Some(key),
                ..
            } => Self::invalid(key, format!("expected {expected}, got {unexpected}")),
            config::ConfigError::NotFound(key) => Self::invalid(key, "missing"),
            config::ConfigError::FileParse { cause, .. } => Self::File {
                path: file.map(Path::to_path_buf).unwrap_or_default(),
                message: one_line(&cause.to_string()),
            },
            // Errors at the top level (an unknown section) carry no key.
            other => Self::invalid("(top level)", other.to_string()),
        }
    }
}

/// Folds the TOML parser's multi-line report (position, source snippet,
/// caret, reason) into "position: reason".
fn one_line(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let first = lines.first().copied().unwrap_or_default();
    // The snippet lines start with a line number or '|'; the reason does not.
    let reason = lines
        .iter()
        .skip(1)
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "));
    match reason {
        Some(reason) => format!("{first}: {reason}"),
        None => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, String> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_with_env(None, env).map_err(|e| e.to_string())
    }

    #[test]
    fn a_typed_value_that_does_not_parse_is_reported_with_its_key_first() {
        for (variable, value, expected) in [
            (
                "TOKEN_SWEEPER__METRICS__LISTEN",
                "localhost:9090",
                "metrics.listen: \"localhost:9090\" is not an address:port",
            ),
            (
                "TOKEN_SWEEPER__AUTH__ALGORITHM",
                "none",
                "auth.algorithm: \"none\" is not a JWT algorithm",
            ),
            (
                "TOKEN_SWEEPER__SWEEP__SCHEDULE",
                "*/5 * * * *",
                "sweep.schedule: \"*/5 * * * *\" is not a cron expression with seconds",
            ),
            (
                "TOKEN_SWEEPER__SWEEP__SCORE_UNIT",
                "us",
                "sweep.score_unit: expected \"ms\" or \"s\", got \"us\"",
            ),
            (
                "TOKEN_SWEEPER__LOG__LEVEL",
                "=^",
                "log.level: \"=^\" is not a log filter",
            ),
        ] {
            let err = load(&[(variable, value)]).unwrap_err();
            assert!(err.starts_with(expected), "{variable}: {err}");
        }
    }

    #[test]
    fn a_schedule_on_its_own_replaces_the_default_interval() {
        let settings = load(&[("TOKEN_SWEEPER__SWEEP__SCHEDULE", "0 */5 * * * *")]).unwrap();
        assert_eq!(settings.sweep.interval, None);
        assert_eq!(
            settings.sweep.schedule.map(|cron| cron.to_string()),
            Some("0 */5 * * * *".to_owned())
        );
        let err = load(&[
            ("TOKEN_SWEEPER__SWEEP__SCHEDULE", "0 */5 * * * *"),
            ("TOKEN_SWEEPER__SWEEP__INTERVAL", "5m"),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            "sweep.schedule: sweep.schedule and sweep.interval are both set; set exactly one"
        );
    }

    #[test]
    fn a_toml_report_is_folded_into_one_line() {
        let report = "TOML parse error at line 1, column 5\n  |\n1 | a = \n  |     ^\nstring values must be quoted\n";
        assert_eq!(
            one_line(report),
            "TOML parse error at line 1, column 5: string values must be quoted"
        );
        assert_eq!(one_line("just this"), "just this");
    }
}
