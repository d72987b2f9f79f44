//! Whether a sweep removes or only counts, and the command each sends;
//! whether it finds its keys by a full scan or by the due index.

use std::collections::BTreeSet;

use serde::Serialize;

/// Whether the sweep deletes or only counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    /// `ZREMRANGEBYSCORE`: expired members are removed.
    Remove,
    /// `ZCOUNT`: expired members are counted; nothing changes.
    DryRun,
}

impl SweepMode {
    /// The command the sweep sends per key.
    pub(super) fn command(self) -> &'static str {
        match self {
            Self::Remove => "ZREMRANGEBYSCORE",
            Self::DryRun => "ZCOUNT",
        }
    }
}

/// How a sweep finds the keys it sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepBy<'a> {
    /// `SCAN` of every key: a full scan.
    Scan,
    /// The due index (`sweep.due_index`): due keys only.
    Index {
        /// The addresses of the primaries that also read their index's
        /// size for [`IndexReport::index_size`](crate::sweep::IndexReport::index_size): one `ZCARD` per index
        /// key, so per hash slot, about as much Redis time as the rest of
        /// a quiet index sweep. Per primary, so that one primary failing
        /// to read its own does not make the others read theirs again.
        read_size: &'a BTreeSet<String>,
    },
}
