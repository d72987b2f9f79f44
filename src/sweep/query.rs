//! One pipeline of one command per key, sent where each key lives: the
//! mechanics the unit guard, the permission check and the removal share,
//! so that a key is read where it is removed.

use std::collections::BTreeSet;

use redis::Value;

use crate::config::SweepSettings;
pub(super) use crate::store::shape;
use crate::store::{key_slot, Connection, StoreError};

/// One key's reply, from where the key lives.
pub(super) struct KeyReply {
    pub(super) reply: redis::RedisResult<Value>,
    /// The key answered MOVED/ASK on the node; `reply` came from the node
    /// it lives on now.
    pub(super) redirected: bool,
}

/// Where the keys given to [`query_each`] were found, which decides how
/// they are sent to the connection's node.
#[derive(Clone, Copy)]
pub(super) enum Found<'a> {
    /// Given by a caller: a key may live on any node, so it is sent as it
    /// is, and a MOVED/ASK reply followed.
    Anywhere,
    /// Returned by SCAN on the connection's node, which was importing the
    /// slots `importing` (its own `[slot-<-id]` markers). Those keys are on
    /// the node, which serves them only right after `ASKING`; sent without
    /// it, they answer MOVED, to the owner, which answers ASK back.
    /// (Sending `ASKING` for a key the node does not hold would sweep an
    /// empty key there instead of the real one on the owner: hence only
    /// for keys SCAN found on the node.)
    ScannedOn {
        /// The slots the node was importing.
        importing: &'a BTreeSet<u16>,
        /// With the due index on, its key prefix: a full scan that removes
        /// also lowers each key's index entry (`index/lower.rs`).
        repair: Option<&'a str>,
    },
}

impl<'a> Found<'a> {
    /// Keys SCAN found on a node importing `importing`, the index repaired
    /// as `settings` say.
    pub(super) fn scanned_on(importing: &'a BTreeSet<u16>, settings: &'a SweepSettings) -> Self {
        let index = &settings.due_index;
        Self::ScannedOn {
            importing,
            repair: index.enabled.then_some(index.key_prefix.as_str()),
        }
    }

    /// The due index's prefix when the keys' entries are to be repaired.
    pub(super) fn repair(self) -> Option<&'a str> {
        match self {
            Self::Anywhere => None,
            Self::ScannedOn { repair, .. } => repair,
        }
    }

    fn needs_asking(self, key: &[u8]) -> bool {
        match self {
            Self::Anywhere => false,
            Self::ScannedOn { importing, .. } => importing.contains(&key_slot(key)),
        }
    }
}

/// Sends `command(key)` for every key in one pipeline on `conn`, and
/// returns the replies in key order. A key `found` on the node in a slot it
/// is importing goes right after its own `ASKING`, in the same pipeline, so
/// that nothing else sharing the connection comes between the two. On a
/// connection to one cluster node, a key that answers MOVED is sent again
/// through the cluster client (which routes by slot) and one that answers
/// ASK goes to the importing node right after `ASKING`; on a single
/// server, MOVED/ASK replies are returned as they are. The sweep and the
/// unit guard both go through here, so a key is read where it is removed.
pub(super) async fn query_each(
    conn: &mut Connection,
    what: &'static str,
    keys: &[Vec<u8>],
    found: Found<'_>,
    command: impl Fn(&[u8]) -> redis::Cmd,
) -> Result<Vec<KeyReply>, StoreError> {
    let mut pipe = redis::pipe();
    let mut asking = Vec::with_capacity(keys.len());
    for key in keys {
        let ask = found.needs_asking(key);
        if ask {
            pipe.cmd("ASKING");
        }
        pipe.add_command(command(key));
        asking.push(ask);
    }
    let sent = keys.len() + asking.iter().filter(|ask| **ask).count();
    let replies: Vec<redis::RedisResult<Value>> =
        match pipe.ignore_errors().query_async(&mut *conn).await {
            Ok(replies) => replies,
            Err(e) => return Err(conn.error(what, e)),
        };
    if replies.len() != sent {
        // The replies would be paired with the wrong keys, or some dropped.
        return Err(conn.bad_reply(
            what,
            format!("{} replies to {sent} commands", replies.len()),
        ));
    }
    let mut replies = replies.into_iter();
    let mut next = || {
        replies
            .next()
            .ok_or_else(|| conn.bad_reply(what, format!("fewer than {sent} replies")))
    };
    let mut own = Vec::with_capacity(keys.len());
    for ask in asking {
        let asked = if ask { Some(next()?) } else { None };
        let reply = next()?;
        own.push(match asked {
            None | Some(Ok(Value::Okay)) => reply,
            // A refused ASKING (an ACL without it) is the key's answer: the
            // command after it could only say MOVED.
            Some(Err(e)) => Err(e),
            Some(Ok(other)) => {
                return Err(conn.bad_reply(what, format!("ASKING answered {}", shape(&other))))
            }
        });
    }
    let cluster = conn.cluster();
    let mut redirects = Vec::new();
    let mut out = Vec::with_capacity(keys.len());
    for (index, (key, reply)) in keys.iter().zip(own).enumerate() {
        if let (Err(e), Some(cluster)) = (&reply, &cluster) {
            let importing = match e.code() {
                // The slot moved for good: the cluster client routes by slot.
                Some("MOVED") => Some(None),
                // The slot is being migrated: the key is at the node named.
                Some("ASK") => Some(e.redirect_node().map(|(node, _slot)| node.to_owned())),
                _ => None,
            };
            if let Some(importing) = importing {
                let mut cluster = cluster.clone();
                let cmd = command(key);
                redirects.push(async move {
                    let reply = match importing {
                        Some(node) => cluster.query_asking::<Value>(&node, &cmd).await,
                        None => cmd.query_async::<Value>(&mut cluster).await,
                    };
                    (index, reply)
                });
            }
        }
        out.push(KeyReply {
            reply,
            redirected: false,
        });
    }
    for (index, reply) in futures_util::future::join_all(redirects).await {
        if let Some(slot) = out.get_mut(index) {
            *slot = KeyReply {
                reply,
                redirected: true,
            };
        }
    }
    Ok(out)
}

pub(super) fn is_redirect(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("MOVED" | "ASK"))
}

/// A MOVED/ASK that could not be followed: `conn` is a single server.
pub(super) fn not_a_cluster(conn: &Connection, what: &str) -> String {
    format!(
        "{what}: MOVED: {} is a Redis Cluster node; set redis.mode = \"cluster\"",
        conn.address()
    )
}

/// The connection a key's reply came from: `conn`, or for a redirected key
/// the cluster client (so errors name where they happened).
pub(super) fn replied_from(conn: &Connection, redirected: bool) -> Connection {
    conn.cluster()
        .filter(|_| redirected)
        .unwrap_or_else(|| conn.clone())
}

#[cfg(test)]
pub(super) mod tests {
    use redis::Value;

    /// A bulk string reply, for tests that decode replies.
    pub(in crate::sweep) fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }
}
