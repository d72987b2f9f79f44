//! `check-config`: validate the settings and print them, secrets redacted.

use std::process::ExitCode;

use token_sweeper::auth;
use token_sweeper::config::Settings;

use super::failure::{Failure, OrFail};

/// Proves the key material the way a service proves it at start-up (a
/// probe token signed and verified), so a broken pair fails here, not at
/// the first login. A sweeper-only configuration has none and skips this.
pub fn check_config(settings: &Settings) -> Result<ExitCode, Failure> {
    if auth::key_material_configured(&settings.auth) {
        auth::check_settings(&settings.auth).or_usage()?;
    }
    let text = settings.to_redacted_toml().or_usage()?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
