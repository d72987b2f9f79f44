//! `index rebuild`: the due index built from the existing sets (see
//! [`token_sweeper::sweep::rebuild_index`]), with a progress line on a
//! terminal and, with `--json`, exactly one JSON object on stdout.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use token_sweeper::config::Settings;
use token_sweeper::logging;
use token_sweeper::store::Connection;
use token_sweeper::sweep::{rebuild_index, RebuildOptions, RebuildReport};

use super::args::IndexCommand;
use super::failure::{Failure, OrFail};
use super::report::{print_json, thousands};
use super::runtime;
use super::signals::watch_interrupts;

/// Runs `index <action>`. Exit 0 when the rebuild is complete, 1 when it
/// stopped early (interrupted, `--max-keys`, a node that failed): run it
/// again with `--resume`.
pub fn index_command(action: IndexCommand, settings: &Settings) -> Result<ExitCode, Failure> {
    let IndexCommand::Rebuild {
        keys_per_second,
        max_keys,
        resume,
        json,
    } = action;
    logging::init(&settings.log);
    let options = RebuildOptions {
        keys_per_second,
        max_keys,
        resume,
    };
    let report = runtime()?.block_on(async {
        let stop = CancellationToken::new();
        watch_interrupts(stop.clone(), || {});
        let conn = Connection::connect(&settings.redis).await.or_runtime()?;
        rebuild_index(&conn, &settings.sweep, &options, &stop)
            .await
            .or_runtime()
    })?;
    if json {
        print_json(&report);
    } else {
        print_rebuild(&report);
    }
    Ok(if report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_rebuild(report: &RebuildReport) {
    println!(
        "index rebuild: scanned {} keys, {} entries added or lowered, in {:.2}s{}",
        thousands(report.keys_scanned),
        thousands(report.entries_lowered),
        report.duration_seconds,
        if report.complete {
            ""
        } else if report.interrupted {
            " (stopped early: run again with --resume)"
        } else {
            " (incomplete)"
        }
    );
    for node in &report.nodes {
        let state = match (&node.error, node.finished) {
            (_, true) if node.done_before => "finished (by an earlier run)".to_owned(),
            (_, true) => "finished".to_owned(),
            (Some(error), false) => format!("failed: {error}"),
            (None, false) => format!("stopped at cursor {}", node.cursor),
        };
        println!(
            "  {}: {} keys, {} entries, {}",
            node.node,
            thousands(node.keys_scanned),
            thousands(node.entries_lowered),
            state
        );
    }
}
