//! Why a sweep stops: [`SweepError`], and the checks that can refuse one ([`Check`]).

use std::time::Duration;

use crate::config::ScoreUnit;
use crate::store::StoreError;

/// Why a sweep stopped before finishing.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The connection failed (unreachable, timed out, closed), or a command
    /// outside the safety checks failed. When the connection was lost during
    /// a safety check, this variant (not [`SweepError::SafetyCheck`]) says
    /// so, naming the check in the failed step, so that a daemon reconnects.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// A safety check could not get the answer it needs (a refused command,
    /// a reply of the wrong shape, an impossible clock); nothing was deleted.
    #[error("{check} could not run, so nothing was deleted: {reason}")]
    SafetyCheck {
        /// The check.
        check: Check,
        /// Why it could not run.
        reason: String,
        /// When Redis refused the check's command: the kind of refusal
        /// ([`StoreError::kind`]: `noperm`, `oom`, ...), which is what an
        /// operator has to fix.
        refusal: Option<&'static str>,
    },
    /// The sampled scores contradict `sweep.score_unit`; nothing was deleted.
    #[error(
        "unit guard: sweep.score_unit is \"{configured}\" but {suspicious} of {sampled} sampled \
         sets have scores that look like {seen} (key {example_key:?} has {example_score}); \
         nothing was deleted. Fix sweep.score_unit, or set sweep.unit_guard = false if the data \
         is known to be right"
    )]
    UnitGuard {
        /// The unit in the configuration.
        configured: ScoreUnit,
        /// The unit the data looks like.
        seen: ScoreUnit,
        /// Sets whose scores look like `seen`.
        suspicious: usize,
        /// Sets inspected.
        sampled: usize,
        /// One offending key (lossily decoded for printing).
        example_key: String,
        /// Its highest finite score.
        example_score: f64,
    },
    /// The Redis clock and the host clock disagree.
    #[error(
        "clock skew: Redis TIME and the host clock differ by {skew:?}, more than \
         sweep.max_clock_skew ({max:?}); nothing was deleted. Fix the clocks (NTP) or raise \
         sweep.max_clock_skew"
    )]
    ClockSkew {
        /// How far apart the clocks are.
        skew: Duration,
        /// The configured limit.
        max: Duration,
    },
}

impl SweepError {
    /// What failed, for the `kind` label of `errors_total`: the Redis
    /// error's kind (`connection`, `noperm`, `oom`, ...; also when Redis
    /// refused a safety check's command, since that is what has to be
    /// fixed), else the check that refused (`unit_guard`, `clock_skew`,
    /// `clock`, `cutoff`, `cluster_topology`, `permission`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(e) => e.kind(),
            Self::SafetyCheck {
                refusal: Some(kind),
                ..
            } => kind,
            Self::SafetyCheck { check, .. } => check.label(),
            Self::UnitGuard { .. } => Check::UnitGuard.label(),
            Self::ClockSkew { .. } => Check::ClockSkew.label(),
        }
    }
}

/// The checks that run before a sweep deletes anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Reading "now": Redis `TIME` or the host clock.
    Clock,
    /// Comparing the Redis clock with the host clock.
    ClockSkew,
    /// Turning "now" and the grace into the score cutoff.
    Cutoff,
    /// Reading the primaries of a cluster from `CLUSTER NODES`.
    ClusterTopology,
    /// Reading sampled scores to confirm `sweep.score_unit`.
    UnitGuard,
    /// Running the sweep's own command (`ZREMRANGEBYSCORE`, or `ZCOUNT` in a
    /// dry run) on a sampled key over an empty score range: proves the ACL
    /// user may run it there before anything commits to the sweep.
    Permission,
}

impl Check {
    /// Every check. With [`crate::store::StoreError::KINDS`], the `kind`
    /// values of [`SweepError::kind`]: the metrics start an `errors_total`
    /// series at 0 for each.
    pub const ALL: [Check; 6] = [
        Self::Clock,
        Self::ClockSkew,
        Self::Cutoff,
        Self::ClusterTopology,
        Self::UnitGuard,
        Self::Permission,
    ];

    /// A short name for metrics labels: `clock`, `clock_skew`, `cutoff`,
    /// `cluster_topology`, `unit_guard`, `permission`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Clock => "clock",
            Self::ClockSkew => "clock_skew",
            Self::Cutoff => "cutoff",
            Self::ClusterTopology => "cluster_topology",
            Self::UnitGuard => "unit_guard",
            Self::Permission => "permission",
        }
    }

    /// The check stopped on `error`. A lost connection stays
    /// [`SweepError::Redis`], which a daemon answers by reconnecting; any
    /// other failure (Redis answered, but not with what the check needs) is
    /// [`SweepError::SafetyCheck`]. Either way the sweep stops here.
    pub(super) fn failed(self, error: StoreError) -> SweepError {
        if error.is_connection_lost() {
            SweepError::Redis(error)
        } else {
            SweepError::SafetyCheck {
                check: self,
                reason: error.to_string(),
                refusal: Some(error.kind()),
            }
        }
    }

    pub(super) fn refused(self, reason: String) -> SweepError {
        SweepError::SafetyCheck {
            check: self,
            reason,
            refusal: None,
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Clock => "the clock check",
            Self::ClockSkew => "the clock skew check",
            Self::Cutoff => "the cutoff check",
            Self::ClusterTopology => "the cluster topology check",
            Self::UnitGuard => "the unit guard",
            Self::Permission => "the permission check",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// `Check::ALL` holds every check: the match below stops compiling
    /// when a check is added, and the assertion fails until it is in ALL.
    #[test]
    fn all_holds_every_check() {
        let position = |check: Check| match check {
            Check::Clock => 0,
            Check::ClockSkew => 1,
            Check::Cutoff => 2,
            Check::ClusterTopology => 3,
            Check::UnitGuard => 4,
            Check::Permission => 5,
        };
        let mut found = [false; Check::ALL.len()];
        for check in Check::ALL {
            found[position(check)] = true;
        }
        assert_eq!(found, [true; Check::ALL.len()]);
    }

    /// Every kind a `SweepError` can have is a store kind or a check's label.
    #[test]
    fn every_kind_is_listed() {
        let listed = |kind: &str| {
            StoreError::KINDS.contains(&kind) || Check::ALL.iter().any(|c| c.label() == kind)
        };
        let mut errors = vec![
            SweepError::Redis(StoreError::NotPrimary {
                address: "a:1".to_owned(),
            }),
            SweepError::UnitGuard {
                configured: ScoreUnit::Seconds,
                seen: ScoreUnit::Milliseconds,
                suspicious: 1,
                sampled: 1,
                example_key: String::new(),
                example_score: 0.0,
            },
            SweepError::ClockSkew {
                skew: Duration::from_secs(10),
                max: Duration::from_secs(1),
            },
        ];
        for check in Check::ALL {
            errors.push(check.refused("because".to_owned()));
            for refusal in StoreError::KINDS {
                errors.push(SweepError::SafetyCheck {
                    check,
                    reason: String::new(),
                    refusal: Some(*refusal),
                });
            }
        }
        for e in &errors {
            assert!(listed(e.kind()), "{} is in no list of kinds", e.kind());
        }
    }

    #[test]
    fn every_safety_check_names_itself_and_has_a_label() {
        for (check, label) in [
            (Check::Clock, "clock"),
            (Check::ClockSkew, "clock_skew"),
            (Check::Cutoff, "cutoff"),
            (Check::ClusterTopology, "cluster_topology"),
            (Check::UnitGuard, "unit_guard"),
            (Check::Permission, "permission"),
        ] {
            assert_eq!(check.label(), label);
            let message = check.refused("because".to_owned()).to_string();
            assert!(message.contains(&label.replace('_', " ")), "{message}");
            assert!(
                message.ends_with("nothing was deleted: because"),
                "{message}"
            );
        }
    }
}
