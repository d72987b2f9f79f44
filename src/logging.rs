//! Log output: `log.level` (overridden by `RUST_LOG`) and `log.format`.
//!
//! The level can change while the daemon runs (SIGHUP); the format is fixed
//! at start, because log shippers parse one format per stream.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, LogSettings};

/// Changes the level of the installed subscriber.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it keeps winning over `log.level`.
    from_env: bool,
}

/// Installs the global subscriber, writing to stderr.
///
/// Returns `None` when a subscriber was already installed (a library caller
/// that set up its own logging).
pub fn init(settings: &LogSettings) -> Option<LogLevel> {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = if from_env {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level))
    } else {
        EnvFilter::new(&settings.level)
    };
    let (filter, handle) = reload::Layer::new(quiet_scheduler(filter, &settings.level));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match settings.format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.ok().map(|()| LogLevel { handle, from_env })
}

impl LogLevel {
    /// Applies `log.level` from reloaded settings (unless `RUST_LOG` rules).
    pub fn set(&self, settings: &LogSettings) {
        if self.from_env {
            tracing::info!("RUST_LOG is set; log.level from the configuration is ignored");
            return;
        }
        // The level was validated when the settings were loaded.
        let filter = quiet_scheduler(EnvFilter::new(&settings.level), &settings.level);
        if let Err(e) = self.handle.reload(filter) {
            tracing::warn!(error = %e, "cannot change the log level");
        }
    }
}

/// tokio-cron-scheduler logs every job it adds at INFO; the daemon adds one
/// job (an alarm) per tick, so keep it at WARN unless the level names it.
fn quiet_scheduler(filter: EnvFilter, level: &str) -> EnvFilter {
    if level.contains("tokio_cron_scheduler") {
        return filter;
    }
    match "tokio_cron_scheduler=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}
