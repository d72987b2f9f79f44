//! The label values `errors_total{kind}` can take, listed once so that every
//! series exists at 0 from start-up.

use std::collections::BTreeSet;

use crate::store::StoreError;
use crate::sweep::{Check, CountKind, CountMetric};

/// The `errors_total` kind of a round that left primaries unfinished.
pub const INCOMPLETE: &str = "incomplete";

/// Every `kind` label value `errors_total` can have: a Redis error's
/// ([`StoreError::KINDS`]), a refusing check's ([`Check::ALL`]), a per-key
/// error's ([`CountMetric::Error`]) and [`INCOMPLETE`]. Each series starts
/// at 0, so the first error of a kind is an increase; a series created by
/// its first error starts at 1 and increase() never sees it.
pub fn error_kinds() -> BTreeSet<&'static str> {
    let per_key = CountKind::ALL
        .iter()
        .filter_map(|kind| match kind.metric() {
            Some(CountMetric::Error(error)) => Some(error),
            _ => None,
        });
    StoreError::KINDS
        .iter()
        .copied()
        .chain(Check::ALL.iter().map(|check| check.label()))
        .chain(per_key)
        .chain([INCOMPLETE])
        .collect()
}
