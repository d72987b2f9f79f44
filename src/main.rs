//! The `token-sweeper` command: parses the command line, loads the settings
//! and calls into the library. Exit codes: 0 success, 1 runtime failure,
//! 2 bad usage or configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use token_sweeper::config::{LogFormat, LogSettings, Settings};
use token_sweeper::redis::Connection;
use token_sweeper::sweep::{self, SweepMode, SweepProgress, SweepReport};

/// Keeps Redis JWT allowlists clean.
#[derive(Parser)]
#[command(name = "token-sweeper", version, about)]
struct Cli {
    /// TOML configuration file; environment variables TOKEN_SWEEPER__<SECTION>__<KEY> override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sweep once now, print what was removed, and exit.
    Sweep {
        /// Count what would be removed (ZCOUNT) without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
}

/// A failure at the binary's edge, with the exit code it maps to.
enum Failure {
    /// Exit 2.
    Usage(anyhow::Error),
    /// Exit 1.
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = Settings::load(cli.config.as_deref())
        .map_err(|e| Failure::Usage(e.into()))
        .and_then(|settings| run(cli.command, settings));
    match outcome {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            eprintln!("token-sweeper: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("token-sweeper: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command, settings: Settings) -> Result<ExitCode, Failure> {
    match command {
        Command::CheckConfig => {
            let text = settings
                .to_redacted_toml()
                .map_err(|e| Failure::Usage(e.into()))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { dry_run, json } => {
            init_logging(&settings.log);
            let mode = if dry_run {
                SweepMode::DryRun
            } else {
                SweepMode::Remove
            };
            // One thread: the sweep is I/O-bound on one connection, and on a
            // small machine the second core is better left to Redis.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Runtime(e.into()))?;
            let report = runtime.block_on(sweep_once(&settings, mode))?;
            print_report(&report, json);
            if report.errors > 0 || report.interrupted {
                Ok(ExitCode::from(1))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

async fn sweep_once(settings: &Settings, mode: SweepMode) -> Result<SweepReport, Failure> {
    let conn = Connection::connect(&settings.redis)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    let progress = Arc::new(SweepProgress::default());
    let display = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(Arc::clone(&progress))));
    let result = sweep::sweep(&conn, &settings.sweep, mode, &progress, interrupted()).await;
    if let Some(display) = display {
        display.abort();
        eprint!("\r\x1b[2K");
    }
    result.map_err(|e| Failure::Runtime(e.into()))
}

/// Completes on the first Ctrl-C, so the sweep stops sending and finishes what
/// is in flight; a second Ctrl-C exits at once.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handler could be installed: never interrupt.
        std::future::pending::<()>().await;
    }
    eprintln!(
        "token-sweeper: interrupted, finishing the batches in flight (Ctrl-C again to quit now)"
    );
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(1);
    });
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

fn print_report(report: &SweepReport, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("token-sweeper: cannot encode the report: {e}"),
        }
        return;
    }
    let removed = match report.mode {
        SweepMode::Remove => "members removed    ",
        SweepMode::DryRun => "members expired    ",
    };
    println!(
        "swept {} keys in {:.2}s ({}/s){}",
        thousands(report.keys_scanned),
        report.duration_seconds,
        thousands(report.keys_per_second as u64),
        if report.interrupted {
            ", interrupted before the end"
        } else {
            ""
        }
    );
    println!("  keys changed        {}", thousands(report.keys_changed));
    println!("  {removed} {}", thousands(report.members_removed));
    println!(
        "  skipped (not zset)  {}",
        thousands(report.skipped_wrong_type)
    );
    println!("  errors              {}", thousands(report.errors));
    println!(
        "  cutoff              {} ({})",
        report.cutoff, report.score_unit
    );
    if report.mode == SweepMode::DryRun {
        println!("  dry run: nothing was removed");
    }
    if let Some(first) = &report.first_error {
        println!("  first error         {first}");
    }
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn init_logging(log: &LogSettings) {
    // RUST_LOG wins over log.level so one run can be debugged without editing files.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
