//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.
//!
//! # Layout
//!
//! What is measured is apart from how it is served: the daemon and the
//! sweep record into [`Metrics`] whether or not anything serves it, and the
//! server's self-protection (connection cap, eviction, timeouts) is tested
//! apart from both. Files import only the ones listed before them.

// The label values of the labelled counters, each listed once.
mod kinds;
// Metrics: the registry, every metric, and recording reports into them.
mod registry;
// The router: /metrics, /healthz, /readyz, and the Readiness the daemon gives it.
mod readiness;
// The open-connection table: admission over the cap and eviction of the oldest idle.
mod connections;
// serve(): the hyper server with its limits, stopped by a CancellationToken.
mod server;
// The adaptive throttle's per-primary series.
mod throttle;
// The due index's per-primary series and the full scans.
mod index;

pub use kinds::{error_kinds, SweepResult, INCOMPLETE};
pub use readiness::Readiness;
pub use registry::Metrics;
pub use server::{serve, HEADER_READ_TIMEOUT, MAX_HTTP_CONNECTIONS};
