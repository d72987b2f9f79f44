//! token-sweeper keeps Redis JWT allowlists clean.
//!
//! Auth services that make JWTs revocable keep one sorted set per user,
//! `<userId>-tokens`, with the token (or its digest) as member and its expiry
//! as score. Tokens that expire without a logout stay there forever; this
//! crate removes them, in pipelined batches, without ever touching a live one.
//!
//! # Layout
//!
//! | module | concern |
//! | --- | --- |
//! | [`config`] | typed settings: defaults, the TOML file, `TOKEN_SWEEPER__*` environment, validation |
//! | [`schedule`] | when sweeps run: a cron expression or an interval, and its ticks (a leaf) |
//! | [`store`] | connecting (standalone, sentinel, cluster, TLS, ACL user), reconnecting with backoff; errors name the address |
//! | [`sweep`] | the sweep algorithm (per primary on a cluster): `mod.rs` tells its six steps in order, each in a file of its own; no scheduling, no HTTP |
//! | [`daemon`] | the service: schedule, overlap guard, replica lock (per-primary leases on a cluster), reload, shutdown |
//! | [`metrics`] | Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints |
//! | [`logging`] | log format and the level that SIGHUP can change |
//! | [`auth`] | the auth path: issue, verify, revoke, revoke-all, list sessions |
//!
//! The binary (`src/main.rs`) only parses the command line, loads the
//! settings and calls into these modules.
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
pub mod logging;
pub mod metrics;
mod mutex;
pub mod schedule;
pub mod store;
pub mod sweep;
