//! What a throttle tells the world: its [`ThrottleState`] and, at each
//! decision, a [`ThrottleReading`] (a leaf, so that the sweep's progress
//! can carry readings without knowing the throttle).

use std::time::Duration;

/// Where a throttled sweep stands; the state changes are what is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleState {
    /// At its full share (`throttle_max_share_percent`): the signal
    /// holds nothing back.
    FullSpeed,
    /// Below its full share: the signal was above the target.
    Throttled,
    /// Held up by the floor only: the signal would have it go slower.
    Floor,
}

impl ThrottleState {
    /// For log lines and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullSpeed => "full_speed",
            Self::Throttled => "throttled",
            Self::Floor => "floor",
        }
    }
}

/// What the throttle of one primary says, at each decision and at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleReading {
    /// `host:port` of the primary.
    pub node: String,
    /// Where it stands.
    pub state: ThrottleState,
    /// Keys sent to be swept per second over the last decision window.
    pub pace_keys_per_second: f64,
    /// The latest signal: the probe's 90th percentile round trip.
    pub signal: Option<Duration>,
    /// Time spent throttled since the previous reading.
    pub newly_throttled: Duration,
    /// Time spent throttled in this sweep of the node so far.
    pub throttled: Duration,
    /// Running past its period's end, or projected to.
    pub behind: bool,
    /// The node's sweep has ended: the last reading of it.
    pub ended: bool,
}
