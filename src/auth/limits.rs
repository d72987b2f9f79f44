//! The bounds on lifetimes and tolerances the module can honour.

use std::time::Duration;

use crate::config::ttl_problem;

use super::AuthError;

/// The largest `auth.leeway`: a clock tolerance, not a second lifetime.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// A token lifetime (`auth.ttl`, or the `ttl` given to `issue`) within the
/// bounds of [`ttl_problem`]; `key` names it in the error.
pub(super) fn check_ttl(key: &'static str, ttl: Duration) -> Result<(), AuthError> {
    match ttl_problem(ttl) {
        Some(message) => Err(AuthError::OutOfRange { key, message }),
        None => Ok(()),
    }
}

/// `auth.leeway` in whole seconds (the scripts count in score units) and
/// at most [`MAX_LEEWAY`].
pub(super) fn check_leeway(leeway: Duration) -> Result<(), AuthError> {
    if leeway > MAX_LEEWAY || leeway.subsec_nanos() != 0 {
        return Err(AuthError::OutOfRange {
            key: "auth.leeway",
            message: format!(
                "must be whole seconds, at most {}, got {}",
                humantime::format_duration(MAX_LEEWAY),
                humantime::format_duration(leeway)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leeway_is_whole_seconds_up_to_an_hour() {
        assert!(check_leeway(Duration::ZERO).is_ok());
        assert!(check_leeway(MAX_LEEWAY).is_ok());
        for bad in [
            MAX_LEEWAY + Duration::from_secs(1),
            Duration::from_millis(1500),
        ] {
            assert!(matches!(
                check_leeway(bad),
                Err(AuthError::OutOfRange {
                    key: "auth.leeway",
                    ..
                })
            ));
        }
    }
}
