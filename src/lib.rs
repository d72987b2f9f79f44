//! token-sweeper keeps Redis JWT allowlists clean.
//!
//! Auth services that make JWTs revocable keep one sorted set per user,
//! `<userId>-tokens`, with the token (or its digest) as member and its expiry
//! as score. Tokens that expire without a logout stay there forever; this
//! crate removes them, in pipelined batches, without ever touching a live one.
//!
//! # Layout
//!
//! A folder per concern; each `mod.rs` is that concern's table of contents.
//! Modules only import the layers below them (checked by `tests/layout.rs`):
//!
//! | layer | module | concern |
//! | --- | --- | --- |
//! | 0 | [`clock`] | the host clock, read one way (no panics, one answer before 1970) |
//! | 1 | [`due_index`] | the opt-in due index's layout: one index key per hash slot, beside the sets it describes; key slots and Redis glob patterns (pure) |
//! | 1 | [`schedule`] | when sweeps run: a cron expression or an interval, parsed once, and its ticks |
//! | 2 | [`config`] | typed settings: defaults, the TOML file, `TOKEN_SWEEPER__*` environment; a file per section, cross-key rules in `validate.rs`, secrets redacted |
//! | 3 | [`store`] | connecting (standalone, sentinel, cluster, TLS, ACL user), reconnecting with backoff, `TIME`; errors name the address |
//! | 3 | [`logging`] | log format and the level that SIGHUP can change |
//! | 4 | [`sweep`] | the sweep (per primary on a cluster): `mod.rs` tells its six steps in order, each in a file of its own; no scheduling, no HTTP |
//! | 5 | [`metrics`] | Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints |
//! | 5 | [`auth`] | the auth path: issue, verify, revoke, revoke-all, list sessions |
//! | 6 | [`daemon`] | the service: ticker and alarms, rounds, replica leases (per primary on a cluster), reload, systemd |
//!
//! The binary (`src/main.rs` and `src/cli/`) parses the command line, loads
//! the settings and calls into these modules. Everything that runs until
//! told to stop takes one `tokio_util::sync::CancellationToken`: the
//! binary's root token, cancelled by the first SIGTERM/SIGINT, or a child of
//! it, so there is one way to stop a task and one meaning of it (finish the
//! batches in flight, hand back the leases, then return).
//!
//! # One sweep from code
//!
//! ```no_run
//! use token_sweeper::{config::Settings, store::Connection, sweep};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load(None)?;
//! let conn = Connection::connect(&settings.redis).await?;
//! let progress = sweep::SweepProgress::default();
//! // Cancelled (from another task), it stops after the batches in flight.
//! let stop = tokio_util::sync::CancellationToken::new();
//! let report = sweep::sweep(
//!     &conn,
//!     &settings.sweep,
//!     sweep::SweepMode::Remove,
//!     &progress,
//!     &stop,
//! )
//! .await?;
//! println!("removed {} expired tokens", report.counts.members_removed);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod auth;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod due_index;
pub mod logging;
pub mod metrics;
mod mutex;
pub mod schedule;
pub mod store;
pub mod sweep;
