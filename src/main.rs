//! The `token-sweeper` command: parses the command line, loads the settings
//! and calls into the library. Exit codes: 0 success, 1 runtime failure,
//! 2 bad usage or configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use token_sweeper::config::Settings;
use token_sweeper::daemon::{Control, Daemon};
use token_sweeper::redis::Connection;
use token_sweeper::sweep::{self, SweepMode, SweepProgress, SweepReport};
use token_sweeper::{logging, metrics};

/// Keeps Redis JWT allowlists clean.
#[derive(Parser)]
#[command(name = "token-sweeper", version, about)]
struct Cli {
    /// TOML configuration file; environment variables TOKEN_SWEEPER__<SECTION>__<KEY> override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: sweep on the configured schedule, serve /metrics (the default).
    Run,
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
    /// Exit 0 if the daemon's /healthz answers 200 (for container HEALTHCHECKs).
    Healthcheck {
        /// Defaults to /healthz on metrics.listen (0.0.0.0 is asked as 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
    },
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
        .and_then(|settings| run(cli.command.unwrap_or(Command::Run), cli.config, settings));
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

fn run(
    command: Command,
    config_path: Option<PathBuf>,
    settings: Settings,
) -> Result<ExitCode, Failure> {
    match command {
        Command::Run => {
            let log_level = logging::init(&settings.log);
            runtime()?.block_on(async {
                let (controls_tx, controls) = tokio::sync::mpsc::channel(8);
                forward_signals(controls_tx).map_err(|e| Failure::Runtime(e.into()))?;
                let daemon = Daemon {
                    config_path,
                    settings,
                    log_level,
                };
                daemon
                    .run(controls)
                    .await
                    .map_err(|e| Failure::Runtime(e.into()))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { url } => {
            let url = url.unwrap_or_else(|| {
                let listen = settings.metrics.listen.replace("0.0.0.0:", "127.0.0.1:");
                format!("http://{listen}/healthz")
            });
            let status =
                runtime()?.block_on(metrics::http_get_status(&url, Duration::from_secs(3)));
            match status {
                Ok(200) => Ok(ExitCode::SUCCESS),
                Ok(code) => Err(Failure::Runtime(anyhow::anyhow!("{url}: HTTP {code}"))),
                Err(e) => Err(Failure::Runtime(anyhow::anyhow!(e))),
            }
        }
        Command::CheckConfig => {
            let text = settings
                .to_redacted_toml()
                .map_err(|e| Failure::Usage(e.into()))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { dry_run, json } => {
            logging::init(&settings.log);
            let mode = if dry_run {
                SweepMode::DryRun
            } else {
                SweepMode::Remove
            };
            let report = runtime()?.block_on(sweep_once(&settings, mode))?;
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

/// One thread: the sweep is I/O-bound on one connection, and on a small
/// machine the second core is better left to Redis.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))
}

/// SIGTERM/SIGINT: shut down (a second one exits at once); SIGHUP: reload;
/// SIGUSR1: sweep now.
fn forward_signals(controls: tokio::sync::mpsc::Sender<Control>) -> std::io::Result<()> {
    use futures_util::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    tokio::spawn(async move {
        let mut stopping = false;
        while let Some(signal) = signals.next().await {
            let control = match signal {
                SIGHUP => Control::Reload,
                SIGUSR1 => Control::SweepNow,
                _ if stopping => {
                    eprintln!("token-sweeper: second stop signal, exiting now");
                    std::process::exit(1);
                }
                _ => {
                    stopping = true;
                    Control::Shutdown
                }
            };
            if controls.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
