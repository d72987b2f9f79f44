//! What a sweep counts, defined once.
//!
//! Every counter is one row of [`count_table!`]: its field (the name in
//! the JSON report, the daemon's log line and [`Counts`]), what it means,
//! how the printed report shows it and which metric it feeds. Everything
//! else is generated from or iterates over that table, so adding a counter
//! is one row, plus the code in the sweep that counts it:
//! - [`Counts`] and [`CountKind`], below;
//! - the atomic [`Counters`] and their snapshot (indexed by [`CountKind`]);
//! - the metrics (`crate::metrics` registers and adds [`CountKind::metric`]);
//! - the printed report (`src/cli/report.rs` prints [`CountKind::printed`]);
//! - the daemon's "sweep finished" line (a callback of [`count_table!`],
//!   since `tracing` needs the field names at compile time).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::mode::SweepMode;

/// The counters, in the order of the JSON report. Calls `$callback!` with
/// `($($args)*)` followed by one row per counter:
/// `/// docs  field / Kind: printed, metric;` (a [`Printed`] and an
/// `Option<`[`CountMetric`]`>`).
macro_rules! count_table {
    ($callback:ident ! ( $($args:tt)* )) => {
        $callback! { ($($args)*)
            /// Keys returned by SCAN (Redis may return a key twice while it rehashes).
            keys_scanned / KeysScanned: Printed::Heading, Some(CountMetric::PerNode {
                name: "keys_scanned_total",
                help: "Keys returned by SCAN, by node.",
            });
            /// Keys that had at least one expired member.
            keys_changed / KeysChanged: Printed::Always("keys changed"), None;
            /// Expired members removed (in a dry run: that would be removed).
            members_removed / MembersRemoved: Printed::ByMode {
                remove: "members removed",
                dry_run: "members expired",
            }, Some(CountMetric::PerNode {
                name: "tokens_removed_total",
                help: "Expired members removed from token sets, by node.",
            });
            /// Keys skipped because they stopped being sorted sets between SCAN and
            /// their pipeline.
            skipped_wrong_type / SkippedWrongType: Printed::Always("skipped (not zset)"),
                Some(CountMetric::Error("wrong_type"));
            /// Keys that had moved to another cluster node (MOVED/ASK) and were
            /// swept there through the cluster client.
            keys_redirected / KeysRedirected: Printed::NonZero("redirected (moved)"), None;
            /// Per-key command errors other than WRONGTYPE.
            errors / Errors: Printed::Always("errors"), Some(CountMetric::Error("command"));
            /// Index mode: keys the due index named as due (an entry may be
            /// early: a due key need not have anything expired).
            due_keys / DueKeys: Printed::NonZero("due keys (index)"), Some(CountMetric::PerNode {
                name: "due_keys_total",
                help: "Keys the due index named as due, by node.",
            });
            /// Index entries an index sweep moved to their key's next expiry.
            index_entries_moved / IndexEntriesMoved: Printed::NonZero("index entries moved"),
                Some(CountMetric::PerNode {
                    name: "index_entries_moved_total",
                    help: "Due index entries moved to their key's next expiry, by node.",
                });
            /// Index entries a full scan added or lowered to their key's next
            /// expiry (repairing the index): none while every writer keeps
            /// the index, so some writer does not.
            index_entries_repaired / IndexEntriesRepaired: Printed::NonZero("index entries repaired"),
                Some(CountMetric::PerNode {
                    name: "index_entries_repaired_total",
                    help: "Due index entries a full scan added or lowered, by node.",
                });
            /// Index entries dropped: their key had nothing unexpired left, was
            /// gone or not a sorted set, or was not a key the sweep may touch.
            index_entries_dropped / IndexEntriesDropped: Printed::NonZero("index entries dropped"),
                Some(CountMetric::PerNode {
                    name: "index_entries_dropped_total",
                    help: "Due index entries dropped, by node.",
                });
        }
    };
}
pub(crate) use count_table;

/// Generates [`Counts`] and [`CountKind`] from [`count_table!`]'s rows.
macro_rules! define_counts {
    (() $(
        $(#[doc = $doc:literal])+
        $field:ident / $kind:ident : $printed:expr, $metric:expr;
    )+) => {
        /// What a sweep, one node of it, or one pipeline counted.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct Counts {
            $( $(#[doc = $doc])+ pub $field: u64, )+
        }

        /// One counter of [`Counts`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum CountKind {
            $( $(#[doc = $doc])+ $kind, )+
        }

        impl CountKind {
            /// Every counter, in the order of [`Counts`]'s fields.
            pub const ALL: [CountKind; COUNT_KINDS] = [$(Self::$kind),+];

            /// The field's name: in [`Counts`], the JSON report and log lines.
            pub fn name(self) -> &'static str {
                match self { $(Self::$kind => stringify!($field),)+ }
            }

            /// How the printed report shows it.
            pub fn printed(self) -> Printed {
                match self { $(Self::$kind => $printed,)+ }
            }

            /// The metric it feeds, if any.
            pub fn metric(self) -> Option<CountMetric> {
                match self { $(Self::$kind => $metric,)+ }
            }
        }

        impl Counts {
            /// The value of one counter.
            pub fn get(&self, kind: CountKind) -> u64 {
                match kind { $(CountKind::$kind => self.$field,)+ }
            }

            fn get_mut(&mut self, kind: CountKind) -> &mut u64 {
                match kind { $(CountKind::$kind => &mut self.$field,)+ }
            }
        }

        const COUNT_KINDS: usize = [$(stringify!($field)),+].len();
    };
}

count_table!(define_counts!());

/// How the printed report of `token-sweeper sweep` shows a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Printed {
    /// In the heading line, not a line of its own.
    Heading,
    /// A line with this label, always.
    Always(&'static str),
    /// A line with this label, when not zero (it only happens on a cluster).
    NonZero(&'static str),
    /// A line whose label says what the mode did.
    ByMode {
        /// When members are removed.
        remove: &'static str,
        /// In a dry run.
        dry_run: &'static str,
    },
}

impl CountKind {
    /// The label of its own line in the printed report for `mode`, if it
    /// has one there with `value`.
    pub fn line_label(self, mode: SweepMode, value: u64) -> Option<&'static str> {
        match self.printed() {
            Printed::Heading => None,
            Printed::Always(label) => Some(label),
            Printed::NonZero(label) => (value > 0).then_some(label),
            Printed::ByMode { remove, dry_run } => Some(match mode {
                SweepMode::Remove => remove,
                SweepMode::DryRun => dry_run,
            }),
        }
    }
}

/// The metric a counter feeds (names without the `token_sweeper_` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountMetric {
    /// A counter of its own with a `node` label, added per primary.
    PerNode {
        /// The metric's name.
        name: &'static str,
        /// Its help text.
        help: &'static str,
    },
    /// `errors_total{kind}` with this kind, added per sweep when not zero.
    Error(&'static str),
}

impl Counts {
    /// Adds every counter of `other` to this one.
    pub fn add(&mut self, other: &Counts) {
        for kind in CountKind::ALL {
            *self.get_mut(kind) += other.get(kind);
        }
    }

    /// `(counter, value)` in the order of the fields.
    pub fn iter(&self) -> impl Iterator<Item = (CountKind, u64)> + '_ {
        CountKind::ALL
            .into_iter()
            .map(|kind| (kind, self.get(kind)))
    }
}

/// [`Counts`] that concurrent tasks add to.
#[derive(Default)]
pub(super) struct Counters([AtomicU64; COUNT_KINDS]);

impl Counters {
    pub(super) fn get(&self, kind: CountKind) -> u64 {
        self.counter(kind).load(Ordering::Relaxed)
    }

    fn counter(&self, kind: CountKind) -> &AtomicU64 {
        // In bounds: one counter per kind, in the order of `ALL`.
        &self.0[kind as usize]
    }

    pub(super) fn add(&self, counts: &Counts) {
        for (kind, n) in counts.iter() {
            self.counter(kind).fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn sub(&self, counts: &Counts) {
        for (kind, n) in counts.iter() {
            self.counter(kind).fetch_sub(n, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> Counts {
        let mut counts = Counts::default();
        for kind in CountKind::ALL {
            *counts.get_mut(kind) = self.get(kind);
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_field_and_its_slot() {
        let counters = Counters::default();
        let mut counts = Counts::default();
        for (n, kind) in (1..).zip(CountKind::ALL) {
            *counts.get_mut(kind) = n;
        }
        assert_eq!(counts.keys_scanned, 1);
        assert_eq!(counts.errors, 6);
        counters.add(&counts);
        counters.add(&counts);
        counters.sub(&counts);
        assert_eq!(counters.snapshot(), counts);
        let names: Vec<_> = CountKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "keys_scanned",
                "keys_changed",
                "members_removed",
                "skipped_wrong_type",
                "keys_redirected",
                "errors",
                "due_keys",
                "index_entries_moved",
                "index_entries_repaired",
                "index_entries_dropped"
            ]
        );
    }

    #[test]
    fn the_printed_report_labels_follow_the_mode_and_the_value() {
        let removed = CountKind::MembersRemoved;
        assert_eq!(
            removed.line_label(SweepMode::Remove, 0),
            Some("members removed")
        );
        assert_eq!(
            removed.line_label(SweepMode::DryRun, 0),
            Some("members expired")
        );
        let redirected = CountKind::KeysRedirected;
        assert_eq!(redirected.line_label(SweepMode::Remove, 0), None);
        assert_eq!(
            redirected.line_label(SweepMode::Remove, 1),
            Some("redirected (moved)")
        );
        assert_eq!(
            CountKind::KeysScanned.line_label(SweepMode::Remove, 9),
            None
        );
    }
}
