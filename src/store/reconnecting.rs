//! [`Reconnecting`]: the connection a long-running process holds, which
//! replaces itself after Redis goes away. The rules that keep a thousand
//! failing requests from starting a thousand reconnects (checkout ids,
//! generations of settings) live here; the waits in [`super::backoff`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::backoff::{first_wait, Backoff, MAX_BACKOFF, MIN_RECONNECT_INTERVAL};
use super::connection::Connection;
use super::error::StoreError;
use super::known_nodes::KnownNodes;
use crate::config::{RedisMode, RedisSettings};
use crate::mutex::lock;

/// A connection for a long-running process: reconnects with backoff after
/// Redis goes away, so callers never hold a dead connection for long. The
/// daemon and [`crate::auth::TokenService`] both use it.
///
/// [`Reconnecting::checkout`] hands out a clone of the current connection
/// with its [`ConnectionId`]; whoever sees it fail reports it with
/// [`Reconnecting::lost_connection`], which drops it and starts one
/// background reconnect loop. While the link is down, callers get the reason
/// at once, without touching the network: a thousand failing requests start
/// one reconnect, not a thousand. A report about a connection that has
/// already been replaced is ignored, so a slow request that failed on the old
/// connection cannot throw away the new one. Reconnects are at least
/// [`MIN_RECONNECT_INTERVAL`] apart and back off (1 s, 2 s, 4 s ... up to
/// [`Reconnecting::set_max_backoff`], 30 s unless set) while they fail. No task runs while the link is healthy, and the loop
/// ends when the last handle is dropped.
///
/// Settings changed with [`Reconnecting::update_settings`] apply to the next
/// connection; a connection that was being made with the previous settings
/// when they changed is discarded, never installed.
///
/// On a cluster, the nodes the connections saw (at each connect, and each
/// time the primaries are read) are kept from one connection to the next:
/// when no configured seed answers, a reconnect goes through those that are
/// still nodes of that cluster. They are forgotten when the seeds change.
pub struct Reconnecting {
    state: Mutex<ReconnectState>,
    /// Called with `true`/`false` whenever the link comes up or goes down.
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

/// Identifies one connection installed by a [`Reconnecting`], so that a
/// report of its loss cannot take down a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionId(u64);

struct ReconnectState {
    settings: RedisSettings,
    /// The longest wait between two attempts: a daemon sweeping every
    /// second must not wait 30 s to notice Redis is back.
    max_backoff: Duration,
    /// The cluster nodes the connections saw, across connections: when the
    /// seeds are down, a reconnect goes through them. Forgotten when the
    /// seeds change, as they may then name another cluster.
    known: KnownNodes,
    /// Bumped by every change of settings. A connect attempt remembers the
    /// generation it started with and installs its connection only if it is
    /// still current.
    generation: u64,
    link: LinkStatus,
    /// Bumped each time a connection is installed: the id of the current one.
    serial: u64,
    /// When the last connection was installed, to space reconnects out.
    connected_at: Option<tokio::time::Instant>,
}

enum LinkStatus {
    Up(Connection),
    /// Down; `reconnecting` is true while a reconnect loop is running.
    Down {
        reason: String,
        reconnecting: bool,
    },
}

impl Reconnecting {
    /// Starts disconnected; call [`Reconnecting::connect_now`], or the first
    /// [`Reconnecting::checkout`] starts connecting in the background.
    pub fn new(settings: RedisSettings, on_change: impl Fn(bool) + Send + Sync + 'static) -> Self {
        Self {
            state: Mutex::new(ReconnectState {
                settings,
                max_backoff: MAX_BACKOFF,
                known: KnownNodes::default(),
                generation: 0,
                link: LinkStatus::Down {
                    reason: "not connected yet".to_owned(),
                    reconnecting: false,
                },
                serial: 0,
                connected_at: None,
            }),
            on_change: Box::new(on_change),
        }
    }

    /// Caps the wait between two reconnect attempts (never below
    /// [`MIN_RECONNECT_INTERVAL`]); applies from the next attempt.
    pub fn set_max_backoff(&self, max: Duration) {
        lock(&self.state).max_backoff = max.max(MIN_RECONNECT_INTERVAL);
    }

    /// The current connection, or why there is none.
    ///
    /// # Errors
    /// The reason the link is down.
    pub fn get(&self) -> Result<Connection, String> {
        self.current()
            .map(|(conn, _)| conn)
            .map_err(|(reason, _)| reason)
    }

    /// The current connection and its id, to report it with
    /// [`Reconnecting::lost_connection`] if it fails. When the link is down
    /// and nothing is reconnecting yet (it never connected), starts the
    /// reconnect loop.
    ///
    /// # Errors
    /// The reason the link is down; returned at once.
    pub fn checkout(self: &Arc<Self>) -> Result<(Connection, ConnectionId), String> {
        self.current().map_err(|(reason, reconnecting)| {
            if !reconnecting {
                self.mark_lost(None, &reason);
            }
            reason
        })
    }

    /// The current connection and its id, or why there is none and whether
    /// a reconnect loop is running.
    fn current(&self) -> Result<(Connection, ConnectionId), (String, bool)> {
        let state = lock(&self.state);
        match &state.link {
            LinkStatus::Up(conn) => Ok((conn.clone(), ConnectionId(state.serial))),
            LinkStatus::Down {
                reason,
                reconnecting,
            } => Err((reason.clone(), *reconnecting)),
        }
    }

    /// Tries once to connect; on failure starts the reconnect loop.
    ///
    /// # Errors
    /// The connect error.
    pub async fn connect_now(self: &Arc<Self>) -> Result<Connection, StoreError> {
        match self.connect_current().await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                self.lost(&e.to_string());
                Err(e)
            }
        }
    }

    /// Connects with the current settings and installs the connection,
    /// unless the settings changed meanwhile: then the connection is dropped
    /// and the new settings are tried at once.
    async fn connect_current(&self) -> Result<Connection, StoreError> {
        loop {
            let (settings, known, generation) = {
                let state = lock(&self.state);
                (
                    state.settings.clone(),
                    state.known.clone(),
                    state.generation,
                )
            };
            let connected = Connection::connect_knowing(&settings, &known).await;
            let mut state = lock(&self.state);
            if state.generation != generation {
                tracing::info!(
                    "Redis settings changed while connecting; connecting again with the new ones"
                );
                continue;
            }
            let conn = connected?;
            state.serial += 1;
            state.link = LinkStatus::Up(conn.clone());
            state.connected_at = Some(tokio::time::Instant::now());
            drop(state);
            (self.on_change)(true);
            return Ok(conn);
        }
    }

    /// Reports the connection as lost, whichever it is: drops it and
    /// reconnects in the background.
    pub fn lost(self: &Arc<Self>, reason: &str) {
        self.mark_lost(None, reason);
    }

    /// Reports the connection `id` (from [`Reconnecting::checkout`]) as lost.
    /// Ignored when it has been replaced already, or is being replaced.
    pub fn lost_connection(self: &Arc<Self>, id: ConnectionId, reason: &str) {
        self.mark_lost(Some(id), reason);
    }

    fn mark_lost(self: &Arc<Self>, id: Option<ConnectionId>, reason: &str) {
        let was_up = {
            let mut state = lock(&self.state);
            let was_up = match &state.link {
                LinkStatus::Down {
                    reconnecting: true, ..
                } => return,
                LinkStatus::Up(_) if id.is_some_and(|id| id.0 != state.serial) => return,
                LinkStatus::Up(_) => true,
                LinkStatus::Down { .. } => false,
            };
            state.link = LinkStatus::Down {
                reason: reason.to_owned(),
                reconnecting: true,
            };
            was_up
        };
        if was_up {
            (self.on_change)(false);
            tracing::warn!(reason, "Redis connection lost; reconnecting with backoff");
        }
        let this = Arc::downgrade(self);
        tokio::spawn(Self::reconnect_loop(this));
    }

    /// Holds only a weak reference between attempts, so it ends once every
    /// user of the link has gone.
    async fn reconnect_loop(this: std::sync::Weak<Self>) {
        let mut backoff = Backoff::new();
        let wait = {
            let Some(strong) = this.upgrade() else { return };
            let state = lock(&strong.state);
            first_wait(state.connected_at, tokio::time::Instant::now())
        };
        tokio::time::sleep(wait).await;
        loop {
            let Some(strong) = this.upgrade() else { return };
            match strong.connect_current().await {
                Ok(conn) => {
                    tracing::info!(address = conn.address(), "Redis connection restored");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, backoff = ?backoff.peek(), "reconnect failed");
                    lock(&strong.state).link = LinkStatus::Down {
                        reason: e.to_string(),
                        reconnecting: true,
                    };
                }
            }
            let max_backoff = lock(&strong.state).max_backoff;
            drop(strong);
            tokio::time::sleep(backoff.next_wait(max_backoff)).await;
        }
    }

    /// New settings (after a reload) take effect with the next connection;
    /// when they differ, the current one is dropped so that happens now, and
    /// a connection being made with the old ones is discarded.
    pub fn update_settings(self: &Arc<Self>, settings: RedisSettings) {
        let changed = {
            let mut state = lock(&self.state);
            let changed = state.settings != settings;
            if changed {
                if seeds_of(&state.settings) != seeds_of(&settings) {
                    state.known = KnownNodes::default();
                }
                state.settings = settings;
                state.generation += 1;
            }
            changed
        };
        if changed {
            self.lost("Redis settings changed");
        }
    }

    /// PINGs the current connection (bounded by `timeout`); reports it lost on failure.
    ///
    /// # Errors
    /// Why Redis is not answering.
    pub async fn ping(self: &Arc<Self>, timeout: Duration) -> Result<(), String> {
        let (mut conn, id) = self.current().map_err(|(reason, _)| reason)?;
        match tokio::time::timeout(timeout, conn.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let reason = e.to_string();
                if e.is_connection_lost() {
                    self.lost_connection(id, &reason);
                }
                Err(reason)
            }
            Err(_) => {
                let reason = format!("Redis at {}: no PONG within {timeout:?}", conn.address());
                self.lost_connection(id, &reason);
                Err(reason)
            }
        }
    }
}

/// The seed addresses of `settings` (and its mode): a change of these may
/// point at another cluster.
fn seeds_of(settings: &RedisSettings) -> (RedisMode, Vec<String>) {
    let seeds = std::iter::once(&settings.url)
        .chain(&settings.nodes)
        .map(|url| url.connection_info().addr().to_string())
        .collect();
    (settings.mode, seeds)
}
