//! Whether a sweep removes or only counts, and the command each sends.

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
