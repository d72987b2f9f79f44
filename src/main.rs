//! The `token-sweeper` command: parses the command line, loads the settings
//! and calls into the library. Exit codes: 0 success, 1 runtime failure,
//! 2 bad usage or configuration.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use token_sweeper::auth::{self, AuthError, Expiry, TokenService};
use token_sweeper::config::Settings;
use token_sweeper::daemon::{Control, Daemon};
use token_sweeper::store::Connection;
use token_sweeper::sweep::{self, Counts, SweepMode, SweepProgress, SweepReport};
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
    /// Issue, verify, revoke and list tokens (the auth path, for operators).
    Tokens {
        #[command(subcommand)]
        action: TokensCommand,
    },
    /// Exit 0 if the daemon's /healthz answers 200 (for container HEALTHCHECKs).
    Healthcheck {
        /// Defaults to /healthz on metrics.listen (0.0.0.0 is asked as 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Sign a token for a user and store its session; prints the token.
    Issue {
        /// The user id (the `sub` claim).
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. "24h" (default: auth.ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Extra claim, repeatable; VALUE is JSON if it parses, else a string.
        #[arg(long = "claim", value_name = "KEY=VALUE")]
        claims: Vec<String>,
        /// Print the token with its claims as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a token (signature, expiry, session); prints its claims.
    Verify {
        /// The token; read from stdin when absent or "-".
        token: Option<String>,
    },
    /// End the session of a token (the user comes from the token itself).
    Revoke {
        /// The token; read from stdin when absent or "-".
        token: Option<String>,
    },
    /// End every session of a user.
    RevokeAll {
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// List a user's active sessions.
    List {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
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
    let settings = Settings::load(cli.config.as_deref()).map_err(|e| Failure::Usage(e.into()));
    let outcome = match cli.command.unwrap_or(Command::Run) {
        // Its own path: `--json` prints its object even when the settings
        // do not load.
        Command::Sweep { dry_run, json } => sweep_command(settings, dry_run, json),
        command => settings.and_then(|settings| run(command, cli.config, settings)),
    };
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
        Command::Tokens { action } => {
            logging::init(&settings.log);
            runtime()?.block_on(tokens(action, &settings))
        }
        Command::Healthcheck { url } => {
            let url = url
                .unwrap_or_else(|| format!("http://{}/healthz", settings.metrics.local_address()));
            let status =
                runtime()?.block_on(metrics::http_get_status(&url, Duration::from_secs(3)));
            match status {
                Ok(200) => Ok(ExitCode::SUCCESS),
                Ok(code) => Err(Failure::Runtime(anyhow::anyhow!("{url}: HTTP {code}"))),
                Err(e) => Err(Failure::Runtime(anyhow::anyhow!(e))),
            }
        }
        Command::CheckConfig => {
            // Key material is proven the way a service proves it at start-up
            // (a probe token signed and verified), so a broken pair fails
            // here, not at the first login. A sweeper-only configuration has
            // none and skips this.
            if auth::key_material_configured(&settings.auth) {
                auth::check_settings(&settings.auth).map_err(|e| Failure::Usage(e.into()))?;
            }
            let text = settings
                .to_redacted_toml()
                .map_err(|e| Failure::Usage(e.into()))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { dry_run, json } => sweep_command(Ok(settings), dry_run, json),
    }
}

/// `sweep`: one sweep now. With `--json`, stdout gets exactly one JSON
/// object whatever happens: the report, or the error with what had been
/// done by then.
fn sweep_command(
    settings: Result<Settings, Failure>,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let output = SweepOutput {
        mode: if dry_run {
            SweepMode::DryRun
        } else {
            SweepMode::Remove
        },
        json,
        started: Instant::now(),
        progress: Arc::new(SweepProgress::default()),
    };
    let swept = settings.and_then(|settings| {
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
}

/// The `sweep --json` object of a sweep that succeeded: the report, and a
/// null `error`, so that a script can always read `.error`.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a SweepReport,
    error: Option<String>,
}

/// The `sweep --json` object of a sweep that failed or never started: the
/// error and what had been done when it stopped.
#[derive(serde::Serialize)]
struct JsonFailure {
    mode: SweepMode,
    error: String,
    #[serde(flatten)]
    counts: Counts,
    first_error: Option<String>,
    duration_seconds: f64,
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
            });
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("token-sweeper: cannot encode the report: {e}"),
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Self::Usage(e) | Self::Runtime(e)) = self;
        e.fmt(f)
    }
}

async fn sweep_once(settings: &Settings, output: &SweepOutput) -> Result<SweepReport, Failure> {
    let quitting = output.clone();
    let interrupted = watch_interrupts(move || {
        quitting.print_failure("interrupted twice: quit before the batches in flight finished");
    });
    let conn = Connection::connect(&settings.redis)
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    let progress = &output.progress;
    let display = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(Arc::clone(progress))));
    let result = sweep::sweep(&conn, &settings.sweep, output.mode, progress, interrupted).await;
    if let Some(display) = display {
        display.abort();
        eprint!("\r\x1b[2K");
    }
    result.map_err(|e| Failure::Runtime(e.into()))
}

/// Watches Ctrl-C from now on. The future returned completes on the first,
/// so the sweep stops sending and finishes what is in flight; the second
/// exits at once, after `on_quit`.
///
/// The watching runs in a task of its own: the sweep polls the future only
/// between SCAN pages, and a sweep stuck on a batch must still quit on the
/// second Ctrl-C.
fn watch_interrupts(on_quit: impl FnOnce() + Send + 'static) -> impl Future<Output = ()> {
    let (interrupt, mut interrupted) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        // Without a signal handler, never interrupt: `interrupt` is dropped.
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!(
            "token-sweeper: interrupted, finishing the batches in flight (Ctrl-C again to quit now)"
        );
        let _ = interrupt.send(true);
        let _ = tokio::signal::ctrl_c().await;
        on_quit();
        std::process::exit(1);
    });
    async move {
        if interrupted.wait_for(|&stop| stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
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

fn print_report(report: &SweepReport) {
    let removed = match report.mode {
        SweepMode::Remove => "members removed    ",
        SweepMode::DryRun => "members expired    ",
    };
    println!(
        "swept {} keys in {:.2}s ({}/s){}",
        thousands(report.counts.keys_scanned),
        report.duration_seconds,
        thousands(report.keys_per_second as u64),
        if report.interrupted {
            ", interrupted before the end"
        } else {
            ""
        }
    );
    println!(
        "  keys changed        {}",
        thousands(report.counts.keys_changed)
    );
    println!("  {removed} {}", thousands(report.counts.members_removed));
    println!(
        "  skipped (not zset)  {}",
        thousands(report.counts.skipped_wrong_type)
    );
    if report.counts.keys_redirected > 0 {
        println!(
            "  redirected (moved)  {}",
            thousands(report.counts.keys_redirected)
        );
    }
    println!("  errors              {}", thousands(report.counts.errors));
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
    if report.nodes.len() > 1 {
        for node in &report.nodes {
            let state = match &node.unfinished_reason {
                Some(reason) => format!("NOT FINISHED: {reason}"),
                None if node.finished => "finished".to_owned(),
                None => "interrupted".to_owned(),
            };
            println!(
                "  node {:<21} {} keys, {} removed, {state}",
                node.node,
                thousands(node.counts.keys_scanned),
                thousands(node.counts.members_removed),
            );
        }
    }
    if !report.unfinished_nodes.is_empty() {
        println!(
            "  unfinished nodes    {} (the next sweep covers them)",
            report.unfinished_nodes.join(", ")
        );
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

/// Exit 2 for what the caller asked wrongly (settings, arguments), 1 for the
/// rest: Redis trouble and refused tokens.
fn auth_failure(e: AuthError) -> Failure {
    match e {
        AuthError::KeyMaterial { .. }
        | AuthError::OutOfRange { .. }
        | AuthError::EmptyUser
        | AuthError::ReservedClaim(_) => Failure::Usage(e.into()),
        _ => Failure::Runtime(e.into()),
    }
}

async fn tokens(action: TokensCommand, settings: &Settings) -> Result<ExitCode, Failure> {
    let runtime_error = |e: anyhow::Error| Failure::Runtime(e);
    let service = TokenService::connect(settings)
        .await
        .map_err(auth_failure)?;
    match action {
        TokensCommand::Issue {
            user,
            ttl,
            claims,
            json,
        } => {
            let extra = parse_claims(&claims).map_err(Failure::Usage)?;
            let issued = service
                .issue(&user, ttl, extra)
                .await
                .map_err(auth_failure)?;
            if json {
                let out = serde_json::json!({
                    "token": issued.token,
                    "claims": issued.claims,
                    "sessions_dropped": issued.sessions_dropped,
                });
                println!("{}", json_line(&out)?);
            } else {
                println!("{}", issued.token);
            }
        }
        TokensCommand::Verify { token } => {
            let token = token_argument(token).map_err(|e| runtime_error(e.into()))?;
            let claims = service
                .verify(&token)
                .await
                .map_err(|e| runtime_error(e.into()))?;
            println!("{}", json_line(&claims)?);
        }
        TokensCommand::Revoke { token } => {
            let token = token_argument(token).map_err(|e| runtime_error(e.into()))?;
            let was_active = service
                .revoke(&token)
                .await
                .map_err(|e| runtime_error(e.into()))?;
            println!(
                "{}",
                if was_active {
                    "revoked"
                } else {
                    "not active (already revoked or expired)"
                }
            );
        }
        TokensCommand::RevokeAll { user } => {
            let ended = service.revoke_all(&user).await.map_err(auth_failure)?;
            println!("ended {ended} active sessions of {user}");
        }
        TokensCommand::List { user, json } => {
            let sessions = service.list(&user).await.map_err(auth_failure)?;
            if json {
                println!("{}", json_line(&sessions)?);
            } else {
                for session in &sessions {
                    println!(
                        "{}  expires {}",
                        session.id(),
                        expiry_text(session.expires_at)
                    );
                }
                eprintln!("{} active sessions", sessions.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An expiry for `tokens list`: RFC 3339 (UTC), "never" for a `+inf`
/// score, and the seconds since the epoch for a score past the dates chrono
/// can write (some 260 000 years ahead), rather than nothing.
fn expiry_text(expiry: Expiry) -> String {
    match expiry {
        Expiry::Never => "never".to_owned(),
        Expiry::At(secs) => chrono::DateTime::from_timestamp_millis((secs * 1000.0) as i64)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| format!("at {secs:e} s since the epoch")),
    }
}

fn json_line<T: serde::Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string(value).map_err(|e| Failure::Runtime(e.into()))
}

/// `KEY=VALUE` pairs; VALUE is taken as JSON when it parses, else as a string.
fn parse_claims(
    pairs: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, anyhow::Error> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--claim {pair:?}: expected KEY=VALUE"))?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
            Ok((key.to_owned(), value))
        })
        .collect()
}

/// The token from the command line, or from stdin for "-" or none (keeps it
/// out of shell history and `ps`).
fn token_argument(token: Option<String>) -> std::io::Result<String> {
    match token {
        Some(token) if token != "-" => Ok(token),
        _ => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            Ok(text.trim().to_owned())
        }
    }
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
///
/// The task that reads the signals never waits on the daemon: once shutdown
/// has begun the daemon reads no more controls, and a task blocked on a full
/// channel would never see the second stop signal. So the second stop is
/// decided here, and reloads and sweeps are handed over when the daemon
/// takes them, several of one kind in the meantime counting as one (one
/// reload reads the file as it is by then; one extra sweep does what any
/// number would).
fn forward_signals(controls: tokio::sync::mpsc::Sender<Control>) -> std::io::Result<()> {
    use futures_util::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    tokio::spawn(async move {
        let mut pending = PendingControls::default();
        let mut daemon_gone = false;
        loop {
            tokio::select! {
                signal = signals.next() => match signal {
                    Some(SIGHUP) => pending.ask(Control::Reload),
                    Some(SIGUSR1) => pending.ask(Control::SweepNow),
                    Some(_) if pending.stopping => {
                        eprintln!("token-sweeper: second stop signal, exiting now");
                        std::process::exit(1);
                    }
                    Some(_) => pending.ask(Control::Shutdown),
                    None => return,
                },
                permit = controls.reserve(), if !daemon_gone && pending.any() => match permit {
                    Ok(permit) => {
                        if let Some(control) = pending.take() {
                            permit.send(control);
                        }
                    }
                    // Keep reading signals: a second stop must still exit.
                    Err(_) => daemon_gone = true,
                },
            }
        }
    });
    Ok(())
}

/// Controls asked for by signals and not yet taken by the daemon.
#[derive(Default)]
struct PendingControls {
    /// A stop signal came; the next one exits.
    stopping: bool,
    shutdown: bool,
    reload: bool,
    sweep_now: bool,
}

impl PendingControls {
    /// Notes `control` for the daemon. After a stop, reloads and sweeps are
    /// dropped: the daemon would not read them.
    fn ask(&mut self, control: Control) {
        match control {
            Control::Shutdown => {
                *self = Self {
                    stopping: true,
                    shutdown: true,
                    ..Self::default()
                }
            }
            _ if self.stopping => {}
            Control::Reload => self.reload = true,
            Control::SweepNow => self.sweep_now = true,
        }
    }

    fn any(&self) -> bool {
        self.shutdown || self.reload || self.sweep_now
    }

    /// The next control to hand over: shutdown first; then a reload, so
    /// that a sweep asked for with it runs the new settings.
    fn take(&mut self) -> Option<Control> {
        if std::mem::take(&mut self.shutdown) {
            Some(Control::Shutdown)
        } else if std::mem::take(&mut self.reload) {
            Some(Control::Reload)
        } else {
            std::mem::take(&mut self.sweep_now).then_some(Control::SweepNow)
        }
    }
}
