//! `index rebuild`: the due index built from the sets already there, so an
//! existing deployment can switch index mode on without downtime.
//!
//! Per primary: `SCAN ... MATCH sweep.pattern TYPE zset` (as a full scan),
//! and for each key found the full scan's repair ([`lower_found`]): its
//! entry lowered with `ZADD LT` to its first score above the cutoff. Only
//! ever added or lowered, never raised, so it is safe while logins write:
//! an entry a login lowered meanwhile stays where the login put it.
//!
//! The checks are a sweep's, before anything is written: the clock and the
//! cutoff, then per primary its slots, the unit guard on the first keys it
//! scans (a wrong `sweep.score_unit` would give entries in the wrong unit,
//! late by a factor of 1000) and the permission probe of the index script.
//! A cutoff that grows stale during a long rebuild only makes entries early.
//!
//! Resumable: after each page is lowered, the node's SCAN cursor is saved
//! in `<prefix>rebuild:{<tag>}:<address>` (a key of the node's first slot,
//! so written on the node itself; expires after a day), with the pattern it
//! scans; `resume` continues from it. The cursor is saved only once every
//! key before it has its entry, and a page with an error is not passed: the
//! node stops there. A finished node is saved as done, and a resume passes
//! over it; a complete rebuild deletes every state. A state saved for another pattern, other slots or another
//! process of the node is not used (see `cursor.rs`; the scan starts over:
//! redoing is safe).

/// The saved state: its key, format, validity, reading and saving.
mod cursor;
/// One primary's rebuild.
mod node;

pub use cursor::rebuild_cursor_key;

use cursor::forget_state;

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::clock::expired_now;
use super::error::{Check, SweepError};
use super::report::SweepProgress;
use crate::config::SweepSettings;
use crate::store::Connection;
use node::Rebuilder;

/// How a rebuild runs.
#[derive(Clone, Debug, Default)]
pub struct RebuildOptions {
    /// Keys per second over the whole rebuild; 0: unpaced.
    pub keys_per_second: u64,
    /// Stop (resumably) once this many keys were scanned; `None`: no limit.
    pub max_keys: Option<u64>,
    /// Continue each node from its saved cursor, if it has one.
    pub resume: bool,
}

/// One primary's part of a rebuild.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RebuildNode {
    /// The primary's address.
    pub node: String,
    /// The SCAN cursor it started from (0: the beginning).
    pub resumed_from: u64,
    /// The cursor saved when it stopped (0 when finished).
    pub cursor: u64,
    /// Keys SCAN returned.
    pub keys_scanned: u64,
    /// Entries added or lowered.
    pub entries_lowered: u64,
    /// Keys whose entry could not be written.
    pub errors: u64,
    /// Its scan ran to the end, every key's entry written, slots unchanged.
    pub finished: bool,
    /// Finished by an earlier run (`--resume` passed over it): the node
    /// has the same slots and is the same process since.
    pub done_before: bool,
    /// Why it did not finish, when not interrupted.
    pub error: Option<String>,
}

/// What a rebuild did (`index rebuild --json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RebuildReport {
    /// Scores at or below it are expired: entries are the first score above.
    pub cutoff: i64,
    /// `sweep.score_unit`.
    pub score_unit: String,
    /// `sweep.due_index.key_prefix`.
    pub key_prefix: String,
    /// Sums over the nodes.
    pub keys_scanned: u64,
    /// Entries added or lowered.
    pub entries_lowered: u64,
    /// Keys whose entry could not be written.
    pub errors: u64,
    /// Every primary finished: the index covers every set that existed
    /// throughout the rebuild.
    pub complete: bool,
    /// Stopped by a signal or `max_keys`: run again with `resume`.
    pub interrupted: bool,
    /// Wall time.
    pub duration_seconds: f64,
    /// Per primary, by address.
    pub nodes: Vec<RebuildNode>,
}

/// Builds the due index from the sets of every primary of `conn` (see the
/// module's steps). Nodes run one after another, `options.keys_per_second`
/// paces the whole, `stop` ends it after the page in flight (resumably).
///
/// # Errors
/// [`SweepError`] when a check refuses (nothing was written) or the
/// primaries cannot be read.
pub async fn rebuild_index(
    conn: &Connection,
    settings: &SweepSettings,
    options: &RebuildOptions,
    stop: &CancellationToken,
) -> Result<RebuildReport, SweepError> {
    let started = Instant::now();
    let primaries = conn
        .primaries()
        .await
        .map_err(|e| Check::ClusterTopology.failed(e))?;
    if primaries.is_empty() {
        return Err(Check::ClusterTopology.refused("no primary to rebuild".to_owned()));
    }
    let (now_micros, expired) = expired_now(conn, settings).await?;
    let progress = SweepProgress::default();
    let mut nodes = Vec::with_capacity(primaries.len());
    for primary in &primaries {
        nodes.push(
            Rebuilder::start(
                conn, primary, settings, options, now_micros, &progress, stop,
            )
            .await?,
        );
    }
    let pace = Pace {
        started: Instant::now(),
        keys_per_second: options.keys_per_second,
        max_keys: options.max_keys,
    };
    let mut report = RebuildReport {
        cutoff: expired.cutoff(),
        score_unit: settings.score_unit.to_string(),
        key_prefix: settings.due_index.key_prefix.clone(),
        ..RebuildReport::default()
    };
    for node in nodes {
        let done = match node {
            Ok(node) => node.run(expired, &pace, &mut report, stop).await,
            Err(failed) => failed,
        };
        report.keys_scanned += done.keys_scanned;
        report.entries_lowered += done.entries_lowered;
        report.errors += done.errors;
        report.nodes.push(done);
    }
    report.nodes.sort_by(|a, b| a.node.cmp(&b.node));
    report.complete = report.nodes.iter().all(|n| n.finished);
    if report.complete {
        // Done states serve the resumes of an unfinished rebuild only.
        let prefix = &settings.due_index.key_prefix;
        for primary in &primaries {
            forget_state(conn, primary, &rebuild_cursor_key(prefix, primary)).await;
        }
    }
    report.interrupted = !report.complete
        && report
            .nodes
            .iter()
            .any(|n| !n.finished && n.error.is_none());
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The pace and budget of the whole rebuild.
pub(super) struct Pace {
    started: Instant,
    keys_per_second: u64,
    max_keys: Option<u64>,
}

impl Pace {
    /// Waits until `done` keys are within the rate.
    pub(super) async fn wait_for(&self, done: u64) {
        if self.keys_per_second == 0 {
            return;
        }
        let due = Duration::from_secs_f64(done as f64 / self.keys_per_second as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }

    pub(super) fn spent(&self, done: u64) -> bool {
        self.max_keys.is_some_and(|max| done >= max)
    }
}
