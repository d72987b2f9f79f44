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

/// Sends a probe every [`PROBE_EVERY`] on `conn` and each round trip to
/// `samples`, until the receiver goes. A failed probe (the connection lost)
/// sends nothing: too few samples hold the sweep back (the controller
/// counts a silent probe as a slow one), and the next tick opens a new
/// connection beside `origin`'s, so that a dropped probe connection (a
/// `CLIENT KILL`, an idle timeout) does not hold the rest of the sweep at
/// its floor.
async fn run(mut conn: Connection, origin: &Connection, samples: mpsc::Sender<Duration>) {
    let mut lost = false;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    // After a stall, one probe at once and then the cadence again, not a
    // burst of the missed ones.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if lost {
            match origin.separate().await {
                Ok(fresh) => {
                    conn = fresh;
                    lost = false;
                }
                Err(_) if samples.is_closed() => return,
                // Still unreachable: silent, and the next tick tries again.
                Err(_) => continue,
            }
        }
        let sent = Instant::now();
        let rtt = match tokio::time::timeout(PROBE_LIMIT, conn.ping()).await {
            Ok(Ok(())) => sent.elapsed(),
            Ok(Err(_)) => {
                // Lost: nothing to measure; the next tick reconnects.
                if samples.is_closed() {
                    return;
                }
                lost = true;
                continue;
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
