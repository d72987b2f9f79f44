//! `run`: the daemon, stopped by the root cancellation token that the
//! first SIGTERM/SIGINT cancels.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use token_sweeper::config::Settings;
use token_sweeper::daemon::Daemon;
use token_sweeper::logging;

use super::failure::{Failure, OrFail};
use super::runtime;
use super::signals::forward_signals;

/// Runs the daemon until a stop signal.
pub fn run_daemon(config_path: Option<PathBuf>, settings: Settings) -> Result<ExitCode, Failure> {
    let log_level = logging::init(&settings.log);
    runtime()?.block_on(async {
        let stop = CancellationToken::new();
        let (controls_tx, controls) = tokio::sync::mpsc::channel(8);
        // The signal task holds the only sender: if it ends, the daemon
        // reads the channel closed and stops, rather than running on deaf.
        forward_signals(controls_tx, stop.clone()).or_runtime()?;
        let daemon = Daemon {
            config_path,
            settings,
            log_level,
        };
        daemon.run(controls, stop).await.or_runtime()
    })?;
    Ok(ExitCode::SUCCESS)
}
