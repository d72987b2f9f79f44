//! One primary's rebuild: its checks, then page by page its keys' entries
//! lowered and its cursor saved.

use std::collections::{BTreeSet, HashMap};

use tokio_util::sync::CancellationToken;

use super::super::cutoff::Expired;
use super::super::error::{Check, SweepError};
use super::super::guard::guard_node;
use super::super::index::{lower_found, probe_commands};
use super::super::mode::SweepMode;
use super::super::primary::{open_primary, own_inability, slots_changed, NotOpened};
use super::super::query::Found;
use super::super::report::{SweepProgress, Tally};
use super::super::scan::Scanner;
use super::cursor::{new_mark, node_shape, rebuild_cursor_key, resume_point, save_state, Saved};
use super::{Pace, RebuildNode, RebuildOptions, RebuildReport};
use crate::config::SweepSettings;
use crate::store::{Connection, Primary, SlotAssignment, StoreError};

/// One primary, checked, ready to rebuild.
pub(super) struct Rebuilder<'a> {
    primary: Primary,
    assignment: Option<SlotAssignment>,
    importing: BTreeSet<u16>,
    scanner: Scanner<'a>,
    cursor_key: String,
    /// What its saved state is valid for: the node's shape and this run's
    /// mark (see `cursor.rs`).
    marked: String,
    report: RebuildNode,
    interrupted: bool,
}

impl<'a> Rebuilder<'a> {
    /// The node's checks: slots, saved state, unit guard, permission probe,
    /// and the first save of its state (the state key's permission) before
    /// any entry is written. Outer error: the rebuild is refused; inner: the
    /// node does not run (it failed, or an earlier run finished it).
    pub(super) async fn start(
        conn: &Connection,
        primary: &Primary,
        settings: &'a SweepSettings,
        options: &RebuildOptions,
        now_micros: i128,
        progress: &'a SweepProgress,
        stop: &CancellationToken,
    ) -> Result<Result<Rebuilder<'a>, RebuildNode>, SweepError> {
        let mut report = RebuildNode {
            node: primary.address.clone(),
            ..RebuildNode::default()
        };
        let failed = |report: &RebuildNode, error: StoreError| match own_inability(&error) {
            Some(refused) => Err(refused),
            None => Ok(Err(RebuildNode {
                error: Some(error.to_string()),
                ..report.clone()
            })),
        };
        let (mut node_conn, assignment) = match open_primary(conn, primary).await {
            Ok(opened) => opened,
            Err(NotOpened::Failed(e)) => return failed(&report, e),
            Err(NotOpened::Moved(reason)) => {
                report.error = Some(reason);
                return Ok(Err(report));
            }
        };
        let importing = assignment
            .as_ref()
            .map(SlotAssignment::importing)
            .unwrap_or_default();
        let prefix = &settings.due_index.key_prefix;
        let cursor_key = rebuild_cursor_key(prefix, primary);
        let shape = node_shape(assignment.as_ref());
        let resumed = if options.resume {
            match resume_point(&mut node_conn, &cursor_key, &shape, &settings.pattern).await {
                Ok(resumed) => resumed,
                Err(e) => return failed(&report, e),
            }
        } else {
            None
        };
        let (state, marked) = match resumed {
            Some(resumed) => resumed,
            None => match new_mark(&mut node_conn, &shape).await {
                Ok(marked) => (Saved::Cursor(0), marked),
                Err(e) => return failed(&report, e),
            },
        };
        let Saved::Cursor(cursor) = state else {
            // Finished by an earlier run, in this process of the node,
            // with these slots: every set then there has its entry, and
            // logins keep the entries of the sets since.
            report.finished = true;
            report.done_before = true;
            return Ok(Err(report));
        };
        report.resumed_from = cursor;
        let tally = Tally {
            progress,
            node: std::sync::Arc::default(),
        };
        let mut scanner = Scanner::new(node_conn.clone(), settings, tally);
        scanner.cursor = report.resumed_from;
        let found = Found::ScannedOn {
            importing: &importing,
            repair: Some(prefix),
        };
        let scanned = if settings.unit_guard {
            guard_node(&mut scanner, now_micros, found, stop).await?
        } else {
            scanner.fill(1, stop).await
        };
        let interrupted = match scanned {
            Ok(interrupted) => interrupted,
            Err(e) => return failed(&report, e),
        };
        if let (false, Some(key)) = (interrupted, scanner.pending.first()) {
            let index = crate::due_index::index_key(prefix, key);
            let probed = probe_commands(
                &mut node_conn,
                &index,
                std::slice::from_ref(key),
                SweepMode::Remove,
            )
            .await?;
            if let Err(e) = probed {
                return failed(&report, e);
            }
        }
        if let Err(e) = save_state(
            &mut node_conn,
            &cursor_key,
            Saved::Cursor(report.resumed_from),
            &marked,
            settings,
        )
        .await
        {
            return Err(Check::Permission.failed(e));
        }
        report.cursor = report.resumed_from;
        Ok(Ok(Rebuilder {
            primary: primary.clone(),
            assignment,
            importing,
            scanner,
            cursor_key,
            marked,
            report,
            interrupted,
        }))
    }

    /// Lowers the entries of every key pending, saves the cursor, scans the
    /// next page; until the end, an error, `stop` or the budget.
    pub(super) async fn run(
        mut self,
        expired: Expired,
        pace: &Pace,
        total: &mut RebuildReport,
        stop: &CancellationToken,
    ) -> RebuildNode {
        let settings = self.scanner.settings;
        let prefix = settings.due_index.key_prefix.as_str();
        let found = Found::ScannedOn {
            importing: &self.importing,
            repair: Some(prefix),
        };
        let mut conn = self.scanner.conn.clone();
        let mut interrupted = self.interrupted;
        while !interrupted {
            let keys = std::mem::take(&mut self.scanner.pending);
            self.report.keys_scanned += keys.len() as u64;
            if !keys.is_empty() {
                let (lowered, stopped) =
                    lower_found(&mut conn, prefix, &keys, found, expired, &HashMap::new()).await;
                self.report.entries_lowered += lowered.counts.index_entries_repaired;
                self.report.errors += lowered.counts.errors;
                // The cursor is not moved past a key without its entry.
                if let Err(e) = stopped {
                    self.report.error = Some(e.to_string());
                    return self.report;
                }
                if let Some(first) = lowered.first_error {
                    self.report.error = Some(first);
                    return self.report;
                }
                pace.wait_for(total.keys_scanned + self.report.keys_scanned)
                    .await;
            }
            if self.scanner.finished {
                return self.finish().await;
            }
            let at = Saved::Cursor(self.scanner.cursor);
            if let Err(e) =
                save_state(&mut conn, &self.cursor_key, at, &self.marked, settings).await
            {
                self.report.error = Some(e.to_string());
                return self.report;
            }
            self.report.cursor = self.scanner.cursor;
            if pace.spent(total.keys_scanned + self.report.keys_scanned) {
                interrupted = true;
                continue;
            }
            match self.scanner.next_page(stop).await {
                Ok(cut) => interrupted = cut,
                Err(e) => {
                    self.report.error = Some(e.to_string());
                    return self.report;
                }
            }
        }
        self.report
    }

    /// The scan ran to the end: the node is finished if its slots did not
    /// move meanwhile, nor had one migrating (keys a migration moved may
    /// have passed both nodes' cursors: [`slots_changed`]), and its state
    /// saved as done.
    async fn finish(mut self) -> RebuildNode {
        let mut conn = self.scanner.conn.clone();
        match slots_changed(&mut conn, self.assignment.take()).await {
            Ok(None) => {}
            Ok(Some(reason)) => {
                self.report.error = Some(format!(
                    "{}: {reason}; run it again once its slots settle",
                    self.primary.address
                ));
                return self.report;
            }
            Err(e) => {
                self.report.error = Some(e.to_string());
                return self.report;
            }
        }
        // Kept as done, not deleted: a resume passes over this node
        // instead of scanning it again.
        let settings = self.scanner.settings;
        let (key, marked) = (&self.cursor_key, &self.marked);
        if let Err(e) = save_state(&mut conn, key, Saved::Done, marked, settings).await {
            self.report.error = Some(e.to_string());
            return self.report;
        }
        self.report.cursor = 0;
        self.report.finished = true;
        self.report
    }
}
