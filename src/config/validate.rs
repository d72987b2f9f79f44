//! What types alone cannot check. Each section checks its own keys (in its
//! file); the one rule here spans two sections. The order is the order of
//! the sections, so the first bad key reported stays the same. Single keys
//! whose whole check is their type (URLs, schedule, algorithm, address, log
//! filter) are checked as they are read.

use super::{ConfigError, Settings};

impl Settings {
    /// Checks what types alone cannot.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        self.sweep.validate()?;
        self.lock.validate()?;
        self.auth.validate()?;
        // A token inside the leeway still verifies; a sweep with less grace
        // would already have removed its session.
        if self.sweep.grace < self.auth.leeway {
            return Err(ConfigError::invalid(
                "sweep.grace",
                format!(
                    "must be at least auth.leeway ({}), or tokens inside the leeway are swept; got {}",
                    humantime::format_duration(self.auth.leeway),
                    humantime::format_duration(self.sweep.grace)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn the_grace_covers_the_leeway() {
        let mut settings = Settings::default();
        settings.auth.leeway = Duration::from_secs(30);
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "sweep.grace: must be at least auth.leeway (30s), or tokens inside the leeway are \
             swept; got 0s"
        );
        settings.sweep.grace = Duration::from_secs(30);
        settings.validate().unwrap();
    }

    #[test]
    fn a_cron_schedule_that_ran_out_is_refused_in_code_too() {
        let mut settings = Settings::default();
        settings.sweep.interval = None;
        settings.sweep.schedule = Some("0 0 0 1 1 * 2020".parse().unwrap());
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("sweep.schedule: \"0 0 0 1 1 * 2020\" never fires: "),
            "{err}"
        );
    }
}
