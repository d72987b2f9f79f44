//! The `token-sweeper` command: parses the command line, loads the settings
//! and calls into the library (each subcommand in [`cli`]). Exit codes:
//! 0 success, 1 runtime failure, 2 bad usage or configuration.

use std::process::ExitCode;

use clap::Parser;
use token_sweeper::config::Settings;

mod cli;

use cli::args::{Cli, Command};
use cli::failure::OrFail;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no settings: packaging runs it with no configuration at hand.
    if let Some(Command::Generate { dir }) = &cli.command {
        return cli::generate::generate(dir).unwrap_or_else(cli::failure::Failure::exit);
    }
    let settings = Settings::load(cli.config.as_deref()).or_usage();
    let outcome = match cli.command.unwrap_or(Command::Run) {
        // Its own path: `--json` prints its object even when the settings
        // do not load.
        Command::Sweep {
            dry_run,
            json,
            throttle,
            full,
        } => cli::sweep::sweep_command(settings, dry_run, json, throttle, full),
        command => settings.and_then(|settings| match command {
            Command::Run => cli::daemon::run_daemon(cli.config, settings),
            Command::Tokens { action } => cli::tokens::tokens_command(action, &settings),
            Command::Healthcheck { url } => cli::healthcheck::healthcheck(url, &settings),
            Command::CheckConfig => cli::check_config::check_config(&settings),
            Command::Index { action } => cli::index::index_command(action, &settings),
            Command::Generate { dir } => cli::generate::generate(&dir),
            Command::Sweep {
                dry_run,
                json,
                throttle,
                full,
            } => cli::sweep::sweep_command(Ok(settings), dry_run, json, throttle, full),
        }),
    };
    outcome.unwrap_or_else(cli::failure::Failure::exit)
}
