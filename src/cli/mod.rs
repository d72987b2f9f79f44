//! The binary's side of the command line: each subcommand in a file of its
//! own, so `main.rs` only parses, loads the settings and dispatches. None
//! of this is library API: what a subcommand needs from the crate goes
//! through the library's public modules.
//!
//! Files import only the ones listed before them.

// The command line as clap parses it.
pub mod args;
// Failure and its exit codes; the one helper that wraps errors.
pub mod failure;
// What `sweep` prints: the text report and the --json objects.
mod report;
// Signals: the root cancellation token, reload and sweep-now controls.
mod signals;
// `run`: the daemon.
pub mod daemon;
// `sweep`: one sweep now, with progress and Ctrl-C handling.
pub mod sweep;
// `tokens ...`: the auth path for operators.
pub mod tokens;
// `index rebuild`.
pub mod index;
// `check-config`.
pub mod check_config;
// `healthcheck`: a minimal HTTP client for container health checks.
pub mod healthcheck;
// `generate` (hidden): man pages and completions for the package.
pub mod generate;

use failure::{Failure, OrFail};

/// One thread: the sweep is I/O-bound on one connection, and on a small
/// machine the second core is better left to Redis.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .or_runtime()
}
