//! The command line, as clap parses it: the subcommands and their flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use token_sweeper::config::ThrottleMode;

/// Keeps Redis JWT allowlists clean.
#[derive(Parser)]
#[command(name = "token-sweeper", version, about)]
pub struct Cli {
    /// TOML configuration file; environment variables TOKEN_SWEEPER__<SECTION>__<KEY> override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Override sweep.throttle for this run: "off" clears a backlog at
        /// full speed, "adaptive" yields to the other clients of Redis.
        #[arg(long, value_name = "adaptive|off")]
        throttle: Option<ThrottleMode>,
        /// With sweep.due_index.enabled: a full scan (which also repairs
        /// the index) instead of a sweep of the due keys.
        #[arg(long)]
        full: bool,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// The due index ([sweep.due_index]): build it from the existing sets.
    Index {
        #[command(subcommand)]
        action: IndexCommand,
    },
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
    /// Write the man pages (DIR/man) and bash, zsh and fish completions
    /// (DIR/completions), for packaging: see deploy/debian/build-deb.
    #[command(hide = true)]
    Generate {
        /// Where to write them; created if missing.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
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

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Build the due index from the existing sets: SCAN every primary and
    /// lower each key's entry to its next expiry (ZADD LT: safe while
    /// logins write). Paced and resumable.
    Rebuild {
        /// Keys per second over the whole rebuild (0: unpaced).
        #[arg(long, default_value_t = 5000)]
        keys_per_second: u64,
        /// Stop after about this many keys (the cursor is saved: --resume).
        #[arg(long)]
        max_keys: Option<u64>,
        /// Continue each primary from the cursor an earlier run saved
        /// (kept for a day), and pass over those it finished; a primary
        /// restarted or resharded since starts over.
        #[arg(long)]
        resume: bool,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
}
