//! `sweep`: one sweep now, with a progress line on a terminal. With
//! `--json`, stdout gets exactly one JSON object whatever happens: the
//! report, or the error with what had been done by then.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use token_sweeper::config::{Settings, ThrottleMode};
use token_sweeper::logging;
use token_sweeper::store::Connection;
use token_sweeper::sweep::{self, SweepMode, SweepProgress, SweepReport};

use super::failure::{Failure, OrFail};
use super::report::{print_json, print_report, thousands, JsonFailure, JsonReport};
use super::runtime;
use super::signals::watch_interrupts;

/// Runs the command; `settings` may have failed to load, so that `--json`
/// prints its object then too. `throttle` overrides `sweep.throttle`;
/// `full` asks for a full scan when the due index is on.
pub fn sweep_command(
    settings: Result<Settings, Failure>,
    dry_run: bool,
    json: bool,
    throttle: Option<ThrottleMode>,
    full: bool,
) -> Result<ExitCode, Failure> {
    let throttled = Arc::new(Mutex::new(Duration::ZERO));
    let held = Arc::clone(&throttled);
    let output = SweepOutput {
        mode: if dry_run {
            SweepMode::DryRun
        } else {
            SweepMode::Remove
        },
        json,
        started: Instant::now(),
        // The throttle's time is in the report; a sweep that fails has
        // none, so it is summed here for the failure's object.
        progress: Arc::new(SweepProgress::default().on_throttle(move |reading| {
            if let Ok(mut held) = held.lock() {
                *held += reading.newly_throttled;
            }
        })),
        throttled,
        full,
    };
    let swept = settings.and_then(|mut settings| {
        if let Some(throttle) = throttle {
            settings.sweep.throttle = throttle;
        }
        logging::init(&settings.log);
        runtime()?.block_on(sweep_once(&settings, &output))
    });
    let report = match swept {
        Ok(report) => report,
        Err(failure) => {
            output.print_failure(&failure.to_string());
            return Err(failure);
        }
    };
    output.print_report(&report);
    if report.counts.errors > 0 || report.interrupted || !report.unfinished_nodes.is_empty() {
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// What a one-shot sweep prints, and what it has counted so far.
#[derive(Clone)]
struct SweepOutput {
    mode: SweepMode,
    json: bool,
    started: Instant,
    progress: Arc<SweepProgress>,
    /// Time the throttle held the sweep back so far, over every node.
    throttled: Arc<Mutex<Duration>>,
    /// A full scan even with the due index on.
    full: bool,
}

impl SweepOutput {
    fn print_report(&self, report: &SweepReport) {
        if self.json {
            print_json(&JsonReport {
                report,
                error: None,
            });
        } else {
            print_report(report);
        }
    }

    /// In `--json` mode, the object for a failure (the error itself goes to
    /// stderr either way).
    fn print_failure(&self, error: &str) {
        if self.json {
            print_json(&JsonFailure {
                mode: self.mode,
                error: error.to_owned(),
                counts: self.progress.counts(),
                first_error: self.progress.first_error(),
                duration_seconds: self.started.elapsed().as_secs_f64(),
                throttled_seconds: self.throttled.lock().map_or(0.0, |held| held.as_secs_f64()),
            });
        }
    }
}

async fn sweep_once(settings: &Settings, output: &SweepOutput) -> Result<SweepReport, Failure> {
    let stop = CancellationToken::new();
    let quitting = output.clone();
    watch_interrupts(stop.clone(), move || {
        quitting.print_failure("interrupted twice: quit before the batches in flight finished");
    });
    let conn = Connection::connect(&settings.redis).await.or_runtime()?;
    let progress = &output.progress;
    let display = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(Arc::clone(progress))));
    let result = if settings.sweep.due_index.enabled && !output.full {
        // The size costs a ZCARD per hash slot: the daemon's metric
        // reads it hourly; a one-shot sweep reports what it swept.
        let read_size = false;
        sweep::sweep_index(
            &conn,
            &settings.sweep,
            output.mode,
            progress,
            &stop,
            read_size,
        )
        .await
    } else {
        sweep::sweep(&conn, &settings.sweep, output.mode, progress, &stop).await
    };
    if let Some(display) = display {
        display.abort();
        eprint!("\r\x1b[2K");
    }
    result.or_runtime()
}

/// Redraws one status line on stderr until aborted.
async fn show_progress(progress: Arc<SweepProgress>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let scanned = progress.keys_scanned();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r\x1b[2Kscanned {} keys ({}/s), {} expired members",
            thousands(scanned),
            thousands((scanned as f64 / secs) as u64),
            thousands(progress.members_removed()),
        );
        let _ = std::io::stderr().flush();
    }
}
