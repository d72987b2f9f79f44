//! How long a [`super::Reconnecting`] waits between connect attempts: kept
//! apart from the reconnect loop, which needs a live Redis to exercise, so
//! that the schedule itself is tested on tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;

/// Longest wait between two reconnect attempts, unless set otherwise.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Shortest time between two connections: a connection that fails right
/// after it was made (a server that accepts and then drops everyone, a
/// replica answering READONLY) is replaced at most this often, however many
/// requests see it fail.
pub const MIN_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// The waits after failed attempts: [`MIN_RECONNECT_INTERVAL`], then
/// doubling up to a cap. The cap is passed at each wait rather than kept,
/// because `set_max_backoff` may lower it while a loop is running and a
/// daemon sweeping every second must not keep waiting 30 s.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            next: MIN_RECONNECT_INTERVAL,
        }
    }

    /// The wait due after the next failure, before any cap: for the log.
    pub(super) fn peek(&self) -> Duration {
        self.next
    }

    /// The wait after a failure, at most `max`; the one after doubles it.
    pub(super) fn next_wait(&mut self, max: Duration) -> Duration {
        let wait = self.next.min(max);
        self.next = (wait * 2).min(max);
        wait
    }
}

/// The wait before a reconnect loop's first attempt: until
/// [`MIN_RECONNECT_INTERVAL`] after the last connection was made, so a link
/// that dies as soon as it is up is not hammered; none if it never was.
pub(super) fn first_wait(connected_at: Option<Instant>, now: Instant) -> Duration {
    connected_at
        .map(|at| (at + MIN_RECONNECT_INTERVAL).saturating_duration_since(now))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn waits_double_from_the_minimum_up_to_the_cap() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait(MAX_BACKOFF)).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 30, 30, 30].map(secs),
            "1 s, 2 s, 4 s ... up to 30 s"
        );
    }

    #[test]
    fn a_lower_cap_applies_from_the_next_wait_and_a_raised_one_grows_again() {
        let mut backoff = Backoff::new();
        assert_eq!(backoff.next_wait(MAX_BACKOFF), secs(1));
        assert_eq!(backoff.next_wait(MAX_BACKOFF), secs(2));
        assert_eq!(backoff.peek(), secs(4));
        assert_eq!(backoff.next_wait(secs(3)), secs(3));
        assert_eq!(backoff.next_wait(secs(3)), secs(3));
        // Raised again: doubling resumes from where the lower cap left it.
        assert_eq!(backoff.next_wait(MAX_BACKOFF), secs(3));
        assert_eq!(backoff.next_wait(MAX_BACKOFF), secs(6));
        // A cap at the minimum (what `set_max_backoff` clamps to) holds it there.
        let mut fast = Backoff::new();
        for _ in 0..4 {
            assert_eq!(
                fast.next_wait(MIN_RECONNECT_INTERVAL),
                MIN_RECONNECT_INTERVAL
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn six_failures_in_a_row_take_a_minute_of_waiting() {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        for _ in 0..6 {
            tokio::time::sleep(backoff.next_wait(MAX_BACKOFF)).await;
        }
        assert_eq!(start.elapsed(), secs(1 + 2 + 4 + 8 + 16 + 30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_attempt_waits_only_for_a_link_that_just_came_up() {
        assert_eq!(first_wait(None, Instant::now()), Duration::ZERO);
        let connected_at = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            first_wait(Some(connected_at), Instant::now()),
            Duration::from_millis(700)
        );
        tokio::time::advance(secs(5)).await;
        assert_eq!(
            first_wait(Some(connected_at), Instant::now()),
            Duration::ZERO
        );
    }
}
