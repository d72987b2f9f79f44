//! The throttle's signal: a PING on a connection of its own to the primary
//! being swept, every [`PROBE_EVERY`], timed from when it was sent.
//!
//! Its own connection, because the sweep's connection carries the sweep's
//! pipelines, and a PING queued behind them would time the sweep, not what
//! another client of Redis waits. Its own thread (with a runtime of its
//! own), because on the sweep's runtime a probe's reply would wait for the
//! sweep's tasks to yield (decoding a pipeline's replies takes a while), and
//! the probe would time this process's scheduling, not Redis. PING, because it reaches Redis's main
//! thread like any command and needs no key (and so no ACL key pattern):
//! what it waits for there is what a verify's ZSCORE waits for.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::store::Connection;

/// Probe cadence: 200 PINGs a second cost Redis about 0.2 ms a second, and
/// give a decision window ([`super::controller::MIN_GAP`]) about 50
/// samples, enough for its 90th percentile to be more than luck.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);

/// A probe not answered within this is recorded as having taken it: a
/// stalled Redis is the strongest signal there is, not a missing one.
pub const PROBE_LIMIT: Duration = Duration::from_secs(1);

/// Starts the probe of `conn`'s server on a thread of its own: opens its
/// connection there ([`Connection::separate`]) and sends each round trip to
/// `samples` until the receiver goes. A connection that cannot be opened
/// (or a thread that cannot start) leaves `samples` silent, which holds the
/// sweep at its floor.
pub fn spawn(conn: Connection, node: String, samples: mpsc::Sender<Duration>) {
    let started = std::thread::Builder::new()
        .name("sweep-probe".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::warn!(node, error = %e, "sweep throttle: cannot start the probe; sweeping at the floor");
                    return;
                }
            };
            runtime.block_on(async move {
                match conn.separate().await {
                    Ok(probe) => run(probe, &conn, samples).await,
                    Err(e) => tracing::warn!(
                        node,
                        error = %e,
                        "sweep throttle: cannot open the probe connection; sweeping at the floor"
                    ),
                }
            });
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "sweep throttle: cannot start the probe thread; sweeping at the floor");
    }
}

/// Longest wait between two attempts to reopen a lost probe connection.
const MAX_RECONNECT_GAP: Duration = Duration::from_secs(1);

/// Sends a probe every [`PROBE_EVERY`] on `conn` and each round trip to
/// `samples`, until the receiver goes. A failed probe sends nothing: too few
/// samples hold the sweep back (the controller counts a silent probe as a
/// slow one).
/// - The connection lost (a `CLIENT KILL`, an idle timeout): a new one is
///   opened beside `origin`'s, at once and then at doubling gaps up to
///   [`MAX_RECONNECT_GAP`], so a dropped probe does not hold the rest of the
///   sweep at its floor, and an unreachable server is not hammered.
/// - Redis answering PING with an error (an ACL without `+ping`, a renamed
///   command): reconnecting would not help, so the probe says so once and
///   stops; the sweep runs at its floor, and the log says why.
async fn run(mut conn: Connection, origin: &Connection, samples: mpsc::Sender<Duration>) {
    let mut lost: Option<(Instant, Duration)> = None;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    // After a stall, one probe at once and then the cadence again, not a
    // burst of the missed ones.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if samples.is_closed() {
            return;
        }
        if let Some((retry_at, gap)) = lost {
            if Instant::now() < retry_at {
                continue;
            }
            match origin.separate().await {
                Ok(fresh) => {
                    conn = fresh;
                    lost = None;
                }
                Err(_) => {
                    let gap = (gap * 2).min(MAX_RECONNECT_GAP);
                    lost = Some((Instant::now() + gap, gap));
                    continue;
                }
            }
        }
        let sent = Instant::now();
        let rtt = match tokio::time::timeout(PROBE_LIMIT, conn.ping()).await {
            Ok(Ok(())) => sent.elapsed(),
            Ok(Err(e)) if e.is_connection_lost() => {
                lost = Some((Instant::now(), PROBE_EVERY));
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    node = origin.address(),
                    error = %e,
                    "sweep throttle: Redis refuses the probe's PING (the sweeper's ACL needs +ping); \
                     sweeping at the floor"
                );
                return;
            }
            Err(_) => PROBE_LIMIT,
        };
        // Full (the sweep is busy between decisions): this sample is
        // dropped, the window has plenty. Closed: the sweep is over.
        if let Err(mpsc::error::TrySendError::Closed(_)) = samples.try_send(rtt) {
            return;
        }
    }
}
