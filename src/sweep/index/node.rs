//! One primary's index sweep: its checks ([`IndexNode::start`]: slots,
//! unit guard over due keys, permission probe), then its slots' due keys
//! swept index key by index key ([`IndexNode::finish`]).

use tokio_util::sync::CancellationToken;

use super::super::cutoff::Expired;
use super::super::error::{Check, SweepError};
use super::super::guard::{check_batch, no_evidence, GuardSample, GUARD_READ_FACTOR};
use super::super::mode::SweepMode;
use super::super::node::NodeFailed;
use super::super::primary::{open_primary, slots_changed, NotOpened};
use super::super::query::Found;
use super::super::report::{NodeReport, SweepProgress, Tally};
use super::call::probe_commands;
use super::due::{read_due, DueRead, DueSlot};
use super::pace::{pieces, Pace};
use crate::config::SweepSettings;
use crate::store::{Connection, Primary, SlotAssignment, StoreError};

/// Slots read per round trip.
const SLOTS_PER_READ: usize = 256;
/// Due keys read per slot per round, and so per script call: with
/// `max_members_per_command` each, what one call may hold Redis for.
pub(super) const DUE_PER_SLOT: usize = 100;
/// Times a slot is read again in one sweep while it still has due keys
/// and each call makes progress; the rest waits for the next sweep.
const MAX_ROUNDS: usize = 64;

/// One node's index sweep, between its checks and its end.
pub(in crate::sweep) struct IndexNode<'a> {
    pub(in crate::sweep) address: String,
    pub(super) conn: Connection,
    pub(super) settings: &'a SweepSettings,
    /// Whether a call of the sweep script may hold several slots: on a
    /// single server, until it answers `CROSSSLOT` (see `batch.rs`).
    pub(super) pack: bool,
    assignment: Option<SlotAssignment>,
    slots: Vec<u16>,
    /// Where the next read starts in `slots`.
    next: usize,
    /// Read during the checks: swept first.
    pending: Vec<DueSlot>,
    /// Whether the first read of each slot also reads its index key's
    /// size (`ZCARD`), and their sum.
    read_size: bool,
    size: u64,
    /// The oldest due score, from the first read of each slot.
    oldest: Option<f64>,
    /// Why a slot was skipped (the node is then unfinished).
    pub(super) skipped: Option<String>,
    pub(in crate::sweep) tally: Tally<'a>,
}

impl<'a> IndexNode<'a> {
    /// Connects to the node, checks it still serves its slots, reads the
    /// due entries of its first slots, runs the unit guard on their keys
    /// and the permission probe. Outer error: the sweep is refused.
    pub(in crate::sweep) async fn start(
        conn: &Connection,
        primary: &Primary,
        settings: &'a SweepSettings,
        (now_micros, expired): (i128, Expired),
        mode: SweepMode,
        progress: &'a SweepProgress,
        read_size: bool,
    ) -> Result<Result<IndexNode<'a>, NodeFailed>, SweepError> {
        let address = primary.address.as_str();
        let failed = |error: StoreError| NodeFailed::from_error(address, error);
        let (node_conn, assignment) = match open_primary(conn, primary).await {
            Ok(opened) => opened,
            Err(NotOpened::Failed(e)) => return failed(e),
            Err(NotOpened::Moved(reason)) => {
                return Ok(Err(NodeFailed::new(address, reason, None)))
            }
        };
        let slots: Vec<u16> = if primary.slots.is_empty() {
            (0..=16383).collect()
        } else {
            primary
                .slots
                .iter()
                .flat_map(|range| range.clone())
                .collect()
        };
        let mut node = IndexNode {
            address: address.to_owned(),
            conn: node_conn,
            settings,
            // A cluster primary serves slot ranges; a single server, all.
            pack: primary.slots.is_empty(),
            assignment,
            slots,
            next: 0,
            pending: Vec::new(),
            read_size,
            size: 0,
            oldest: None,
            skipped: None,
            tally: Tally {
                progress,
                node: std::sync::Arc::default(),
            },
        };
        // The guard's sample (or, with it off, one key for the probe).
        let sample = if settings.unit_guard {
            usize::try_from(settings.unit_guard_sample).unwrap_or(usize::MAX)
        } else {
            1
        };
        if sample == 0 {
            return Err(Check::UnitGuard.refused("sweep.unit_guard_sample is 0".to_owned()));
        }
        let limit = sample.saturating_mul(GUARD_READ_FACTOR);
        let (mut read, mut seen) = (0usize, GuardSample::default());
        let mut keys: Vec<Vec<u8>> = Vec::new();
        while seen.confirmed < sample && read < limit {
            if keys.len() <= read {
                if node.next >= node.slots.len() {
                    break;
                }
                let chunk = match node.read_next(expired).await {
                    Ok(chunk) => chunk,
                    Err(e) => return failed(e),
                };
                keys.extend(chunk.iter().flat_map(|due| due.keys.iter().cloned()));
                node.pending.extend(chunk);
                continue;
            }
            let end = keys.len().min(read + sample - seen.confirmed).min(limit);
            if settings.unit_guard {
                let unit = settings.score_unit;
                let batch = check_batch(
                    &mut node.conn,
                    &keys[read..end],
                    Found::Anywhere,
                    unit,
                    now_micros,
                )
                .await?;
                seen.confirmed += batch.confirmed;
                seen.unclear += batch.unclear;
            } else {
                seen.confirmed = sample;
            }
            read = end;
        }
        if settings.unit_guard {
            // A skipped slot's keys are not swept by this sweep, so they
            // need no evidence: only keys left unread that will be.
            let read_all = node.next >= node.slots.len()
                && read == keys.len()
                && node.pending.iter().all(|due| !due.full);
            no_evidence(&node.address, read, seen, settings.score_unit, read_all)?;
        }
        if let Some(due) = node.pending.iter().find(|due| !due.keys.is_empty()) {
            let probe = [due.keys[0].clone()];
            let index_key = due.index_key.clone();
            if let Err(e) = probe_commands(&mut node.conn, &index_key, &probe, mode).await? {
                return failed(e);
            }
        }
        Ok(Ok(node))
    }

    /// What the first reads of its slots found of the index: its size
    /// (when asked, and only once every slot was read, none skipped: a
    /// part is not the size) and its oldest due score.
    fn found(&self) -> super::IndexFound {
        let every_slot = self.next >= self.slots.len() && self.skipped.is_none();
        (
            (self.read_size && every_slot).then_some(self.size),
            self.oldest,
        )
    }

    /// Reads the next chunk of slots (their first read: lag, and sizes
    /// when asked).
    async fn read_next(&mut self, expired: Expired) -> Result<Vec<DueSlot>, StoreError> {
        let end = (self.next + SLOTS_PER_READ).min(self.slots.len());
        let slots = self.slots.get(self.next..end).unwrap_or_default().to_vec();
        self.next = end;
        let read = self.read(&slots, expired, self.read_size).await?;
        self.size += read.size;
        if let Some(oldest) = read.oldest {
            self.oldest = Some(self.oldest.map_or(oldest, |o| o.min(oldest)));
        }
        Ok(read.slots)
    }

    async fn read(
        &mut self,
        slots: &[u16],
        expired: Expired,
        sizes: bool,
    ) -> Result<DueRead, StoreError> {
        let index = &self.settings.due_index;
        let read = read_due(
            &mut self.conn,
            &index.key_prefix,
            &self.settings.pattern,
            slots,
            expired,
            DUE_PER_SLOT,
            sizes,
        )
        .await?;
        if let (None, Some((_, why))) = (&self.skipped, read.skipped.first()) {
            self.skipped = Some(why.clone());
        }
        Ok(read)
    }

    /// Sweeps every slot's due keys; then checks the slots did not move.
    pub(in crate::sweep) async fn finish(
        mut self,
        expired: Expired,
        mode: SweepMode,
        stop: &CancellationToken,
        deadline: Option<tokio::time::Instant>,
    ) -> (NodeReport, Option<StoreError>, super::IndexFound) {
        let progress = self.tally.progress;
        let mut pace = Pace::start(&self.conn, &self.address, self.settings, deadline, progress);
        let swept = self.sweep_all(expired, mode, stop, &mut pace).await;
        let throttled = pace.end();
        let found = self.found();
        let (finished, reason, error) = match swept {
            Ok(true) => (false, None, None),
            Ok(false) => match slots_changed(&mut self.conn, self.assignment.take()).await {
                Ok(None) => match self.skipped.take() {
                    None => (true, None, None),
                    Some(why) => (false, Some(why), None),
                },
                Ok(Some(reason)) => (false, Some(reason), None),
                Err(e) => (false, Some(e.to_string()), Some(e)),
            },
            Err(e) => (false, Some(e.to_string()), Some(e)),
        };
        let mut report = NodeReport::new(self.address, &self.tally.node, reason);
        report.finished = finished;
        report.throttled_seconds = throttled.as_secs_f64();
        (report, error, found)
    }

    /// Returns whether `stop` cut it short.
    async fn sweep_all(
        &mut self,
        expired: Expired,
        mode: SweepMode,
        stop: &CancellationToken,
        pace: &mut Pace<'_>,
    ) -> Result<bool, StoreError> {
        loop {
            if stop.is_cancelled() {
                return Ok(true);
            }
            let mut due = if self.pending.is_empty() {
                if self.next >= self.slots.len() {
                    return Ok(false);
                }
                self.read_next(expired).await?
            } else {
                std::mem::take(&mut self.pending)
            };
            for round in 1..=MAX_ROUNDS {
                if due.is_empty() || stop.is_cancelled() {
                    break;
                }
                let full = due.iter().filter(|slot| slot.full).count();
                let Some(again) = self.sweep_paced(due, expired, mode, stop, pace).await? else {
                    return Ok(true);
                };
                if mode == SweepMode::DryRun {
                    // Nothing moved, so a read again would find the same
                    // entries: what lies past them was not counted.
                    if full > 0 {
                        self.skipped.get_or_insert(format!(
                            "dry run: {full} slot(s) had as many due entries as one read \
                             takes ({DUE_PER_SLOT}) or more; only those were counted"
                        ));
                    }
                    break;
                }
                if again.is_empty() {
                    break;
                }
                if round == MAX_ROUNDS {
                    // Still due (a set with more expired members than the
                    // rounds remove): swept on, but not finished.
                    let slots = again.len();
                    self.skipped.get_or_insert(format!(
                        "{slots} slot(s) still had due keys after {MAX_ROUNDS} rounds"
                    ));
                    break;
                }
                due = self.read(&again, expired, false).await?.slots;
            }
        }
    }

    /// `due` in pipelines as `pace` allows; returns the slots to read again
    /// (as [`IndexNode::sweep_slots`]), or `None` when `stop` cut it short.
    async fn sweep_paced(
        &mut self,
        due: Vec<DueSlot>,
        expired: Expired,
        mode: SweepMode,
        stop: &CancellationToken,
        pace: &mut Pace<'_>,
    ) -> Result<Option<Vec<u16>>, StoreError> {
        let mut again = Vec::new();
        for pipeline in pieces(due, pace.piece()) {
            let keys = pipeline.iter().map(|slot| slot.keys.len()).sum();
            if pace.wait(keys, stop).await {
                return Ok(None);
            }
            let sent = tokio::time::Instant::now();
            let more = self.sweep_slots(&pipeline, expired, mode).await;
            pace.worked(sent, keys);
            again.extend(more?);
        }
        again.dedup();
        Ok(Some(again))
    }
}
