//! Pacing an index sweep's script calls: `sweep.max_keys_per_second` in any
//! mode, and with `sweep.throttle = "adaptive"` the full scan's
//! [`Throttle`] (its probe, share and floor), each pipeline of calls a
//! piece of `Step::Keys` whose units are the due keys it carries.
//!
//! With the throttle off and no rate limit, nothing waits: a pipeline
//! holds every due key read (up to 256 slots of 100 keys).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::report::SweepProgress;
use super::super::throttle::{Step, Throttle};
use super::due::DueSlot;
use crate::config::{SweepSettings, ThrottleMode};
use crate::store::Connection;

/// How one primary's index sweep paces its pipelines of script calls.
pub(super) enum Pace<'a> {
    /// No throttle, no rate limit.
    Free,
    /// No throttle; at most `keys_per_second` due keys sent per second,
    /// about ten pipelines a second.
    Capped {
        started: Instant,
        keys_per_second: u64,
        sent: u64,
    },
    /// The adaptive throttle (which applies the rate limit too), started
    /// with the first pipeline: an index sweep with nothing due (most of
    /// them) opens no probe connection and waits for no first window.
    Adaptive {
        throttle: Option<Box<Throttle<'a>>>,
        conn: Connection,
        node: String,
        settings: &'a SweepSettings,
        deadline: Option<Instant>,
        progress: &'a SweepProgress,
    },
}

impl<'a> Pace<'a> {
    /// The pacing `settings` ask for; the adaptive throttle will start its
    /// probe to `conn`'s server (`node`).
    pub(super) fn start(
        conn: &Connection,
        node: &str,
        settings: &'a SweepSettings,
        deadline: Option<Instant>,
        progress: &'a SweepProgress,
    ) -> Self {
        if settings.throttle == ThrottleMode::Adaptive {
            Pace::Adaptive {
                throttle: None,
                conn: conn.clone(),
                node: node.to_owned(),
                settings,
                deadline,
                progress,
            }
        } else if settings.max_keys_per_second > 0 {
            Pace::Capped {
                started: Instant::now(),
                keys_per_second: settings.max_keys_per_second,
                sent: 0,
            }
        } else {
            Pace::Free
        }
    }

    /// Most due keys the next pipeline may carry.
    pub(super) fn piece(&mut self) -> usize {
        match self {
            Pace::Free => usize::MAX,
            // A tenth of a second's worth: a limit of 100/s should not
            // mean a burst of 100 keys and a second of nothing.
            Pace::Capped {
                keys_per_second, ..
            } => usize::try_from(*keys_per_second / 10)
                .unwrap_or(usize::MAX)
                .max(1),
            Pace::Adaptive { .. } => self.throttle().map_or(1, |t| t.piece(Step::Keys).max(1)),
        }
    }

    /// The adaptive throttle, started now if it was not yet.
    fn throttle(&mut self) -> Option<&mut Throttle<'a>> {
        let Pace::Adaptive {
            throttle,
            conn,
            node,
            settings,
            deadline,
            progress,
        } = self
        else {
            return None;
        };
        let started = throttle.get_or_insert_with(|| {
            Box::new(Throttle::start(conn, node, settings, *deadline, progress))
        });
        Some(started)
    }

    /// Waits until a pipeline of `keys` due keys may go, and counts them
    /// as sent. Returns true when `stop` was cancelled meanwhile (then
    /// nothing may be sent).
    pub(super) async fn wait(&mut self, keys: usize, stop: &CancellationToken) -> bool {
        match self {
            Pace::Free => stop.is_cancelled(),
            Pace::Capped {
                started,
                keys_per_second,
                sent,
            } => {
                // The first pipeline goes at once; each next one when the
                // keys sent before it are within the limit.
                let due =
                    *started + Duration::from_secs_f64(*sent as f64 / *keys_per_second as f64);
                *sent += keys as u64;
                tokio::select! {
                    biased;
                    () = stop.cancelled() => true,
                    () = tokio::time::sleep_until(due) => false,
                }
            }
            Pace::Adaptive { .. } => {
                let Some(throttle) = self.throttle() else {
                    return stop.is_cancelled();
                };
                if throttle.wait(stop).await {
                    return true;
                }
                throttle.sweeping(keys);
                false
            }
        }
    }

    /// A pipeline of `keys` due keys sent at `sent` has been answered.
    pub(super) fn worked(&mut self, sent: Instant, keys: usize) {
        if let Pace::Adaptive {
            throttle: Some(throttle),
            ..
        } = self
        {
            throttle.worked(sent, Step::Keys, keys, keys);
        }
    }

    /// The sweep of the primary ended: the time the throttle held it below
    /// its full share (and its last reading).
    pub(super) fn end(self) -> Duration {
        match self {
            Pace::Adaptive {
                throttle: Some(throttle),
                ..
            } => throttle.end(),
            Pace::Adaptive { throttle: None, .. } | Pace::Free | Pace::Capped { .. } => {
                Duration::ZERO
            }
        }
    }
}

/// `due` in pipelines of at most `piece` due keys each (at least one
/// call): a slot with more keys than that is split into calls of its keys
/// (each key's removal and entry move is atomic on its own, so splitting
/// changes nothing), its entries to drop going with its first call.
pub(super) fn pieces(due: Vec<DueSlot>, piece: usize) -> Vec<Vec<DueSlot>> {
    let piece = piece.max(1);
    let mut pipelines = Vec::new();
    let mut current: Vec<DueSlot> = Vec::new();
    let mut keys = 0usize;
    for slot in due {
        let mut parts = Vec::new();
        let mut rest = slot.keys;
        let mut foreign = slot.foreign;
        loop {
            let tail = rest.split_off(rest.len().min(piece));
            parts.push(DueSlot {
                slot: slot.slot,
                index_key: slot.index_key.clone(),
                keys: std::mem::replace(&mut rest, tail),
                foreign: std::mem::take(&mut foreign),
                full: slot.full,
            });
            if rest.is_empty() {
                break;
            }
        }
        for part in parts {
            if !current.is_empty() && keys + part.keys.len() > piece {
                pipelines.push(std::mem::take(&mut current));
                keys = 0;
            }
            keys += part.keys.len();
            current.push(part);
        }
    }
    if !current.is_empty() {
        pipelines.push(current);
    }
    pipelines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(slot: u16, keys: usize, foreign: usize) -> DueSlot {
        DueSlot {
            slot,
            index_key: format!("i{{{slot}}}"),
            keys: (0..keys)
                .map(|k| vec![u8::try_from(k % 256).unwrap_or(0)])
                .collect(),
            foreign: (0..foreign).map(|_| b"x".to_vec()).collect(),
            full: false,
        }
    }

    #[test]
    fn pieces_hold_at_most_the_piece_and_every_key_once() {
        let due = vec![slot(1, 3, 0), slot(2, 7, 2), slot(3, 0, 1), slot(4, 1, 0)];
        let pipelines = pieces(due, 4);
        let sizes: Vec<Vec<usize>> = pipelines
            .iter()
            .map(|p| p.iter().map(|s| s.keys.len()).collect())
            .collect();
        assert_eq!(sizes, [vec![3], vec![4], vec![3, 0, 1]]);
        let foreign: usize = pipelines.iter().flatten().map(|s| s.foreign.len()).sum();
        assert_eq!(foreign, 3, "each entry to drop once");
        let slot2: Vec<_> = pipelines.iter().flatten().filter(|s| s.slot == 2).collect();
        assert_eq!(slot2.len(), 2);
        assert_eq!(slot2[0].foreign.len(), 2, "with the first call");
        // Free: one pipeline, the slots as read.
        assert_eq!(
            pieces(vec![slot(1, 3, 0), slot(2, 7, 2)], usize::MAX).len(),
            1
        );
        assert!(pieces(Vec::new(), 4).is_empty());
    }
}
