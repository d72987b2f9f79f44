//! The nodes of a cluster its connections last saw, kept from one
//! connection to the next so that a reconnect can go through them when no
//! configured seed answers, and the check that such a node still belongs
//! to that cluster before anything is sent through it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use redis::{ConnectionInfo, Value};

use super::server::{at_address, open_server, split_address, with_credentials};
use super::topology::ClusterNode;
use crate::config::RedisSettings;
use crate::mutex::lock;

/// `CLUSTER SLOTS`: the slot ranges with the address and id of each node
/// serving them.
pub(super) fn cluster_slots_command() -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    cmd
}

/// A node of a cluster as last seen: where it was, and its id (a random
/// 160-bit name a node keeps across restarts and failovers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KnownNode {
    pub(super) address: String,
    pub(super) id: String,
}

/// The nodes of a cluster that its connection last saw (`CLUSTER SLOTS`
/// when it connected, then every `CLUSTER NODES` read for the primaries):
/// shared by the connection's clones, and kept by a [`super::Reconnecting`] from
/// one connection to the next.
#[derive(Clone, Default)]
pub(super) struct KnownNodes(Arc<Mutex<Vec<KnownNode>>>);

impl KnownNodes {
    /// Replaces what was seen before; a view with no node in it (a reply
    /// that listed none usable) keeps the previous one.
    pub(super) fn remember(&self, nodes: Vec<KnownNode>) {
        if !nodes.is_empty() {
            *lock(&self.0) = nodes;
        }
    }

    /// What was seen last.
    pub(super) fn get(&self) -> Vec<KnownNode> {
        lock(&self.0).clone()
    }
}

/// The nodes of `CLUSTER NODES` worth trying later: every primary and
/// replica with an address, except those the cluster considers failed or
/// not yet joined.
pub(super) fn reachable_nodes(nodes: &[ClusterNode]) -> Vec<KnownNode> {
    nodes
        .iter()
        .filter(|node| {
            !node
                .flags
                .iter()
                .any(|flag| matches!(flag.as_str(), "fail" | "noaddr" | "handshake"))
        })
        .filter(|node| {
            split_address(&node.address).is_some_and(|(host, port)| !host.is_empty() && port != 0)
        })
        .map(|node| KnownNode {
            address: node.address.clone(),
            id: node.id.clone(),
        })
        .collect()
}

/// The nodes (address and id) in a `CLUSTER SLOTS` reply: for each slot
/// range, `[start, end, [host, port, id, ...], ...]`. An entry without a
/// usable host (empty, `?`), port or id is left out: this only feeds the
/// nodes to try when the seeds are down, and the check that a node is
/// still one of this cluster's, which then fails closed.
pub(super) fn nodes_in_slots(reply: &Value) -> Vec<KnownNode> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut nodes: Vec<KnownNode> = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        for node in fields.iter().skip(2) {
            let Value::Array(node) = node else { continue };
            let [Value::BulkString(host), Value::Int(port), Value::BulkString(id), ..] =
                node.as_slice()
            else {
                continue;
            };
            let (Ok(host), Ok(port), Ok(id)) = (
                std::str::from_utf8(host),
                u16::try_from(*port),
                std::str::from_utf8(id),
            ) else {
                continue;
            };
            if host.is_empty() || host == "?" || port == 0 || id.is_empty() {
                continue;
            }
            let address = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if !nodes.iter().any(|known| known.address == address) {
                nodes.push(KnownNode {
                    address,
                    id: id.to_owned(),
                });
            }
        }
    }
    nodes
}

/// Connects to `node` and checks it is still a node of the cluster last
/// seen: its `CLUSTER SLOTS` names one of `ids`. Returns its connection
/// info (with the credentials and TLS of `settings`), or why not, naming
/// it.
pub(super) async fn still_a_node(
    node: &KnownNode,
    ids: &BTreeSet<&str>,
    settings: &RedisSettings,
) -> Result<ConnectionInfo, String> {
    let Some((host, port)) = split_address(&node.address) else {
        return Err(format!("{}: not host:port", node.address));
    };
    let info = at_address(settings.url.connection_info().clone(), host, port);
    let (address, mut conn) = open_server(info.clone(), settings)
        .await
        .map_err(|e| e.to_string())?;
    let slots: Value = cluster_slots_command()
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("{address}: CLUSTER SLOTS failed: {e}"))?;
    if nodes_in_slots(&slots)
        .iter()
        .any(|listed| ids.contains(listed.id.as_str()))
    {
        with_credentials(info, settings).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "{address} is no longer a node of that cluster (it names none of its nodes)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::topology::parse_cluster_nodes;
    use super::super::topology::tests::NODES;
    use super::*;

    #[test]
    fn the_nodes_to_try_later_are_those_with_an_address_not_failed() {
        let fresh = "66d6 :53703@47567 master - 0 0 0 connected\n";
        let nodes = parse_cluster_nodes(&format!("{NODES}{fresh}")).unwrap();
        let known = reachable_nodes(&nodes);
        let known: Vec<(&str, &str)> = known
            .iter()
            .map(|n| (n.address.as_str(), n.id.as_str()))
            .collect();
        assert_eq!(
            known,
            [
                ("127.0.0.1:30004", "07c3"),
                ("127.0.0.1:30002", "67ed"),
                ("127.0.0.1:30003", "292f"),
                ("127.0.0.1:30005", "9fa1"),
            ]
        );
    }

    #[test]
    fn cluster_slots_names_its_nodes_and_what_is_unusable_is_left_out() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let node = |host: &str, port: i64, id: &str| {
            Value::Array(vec![
                bulk(host),
                Value::Int(port),
                bulk(id),
                Value::Array(vec![]),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 30001, "a1"),
                node("127.0.0.1", 30004, "a4"),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("", 30002, "a2"),
                node("?", 30005, "a5"),
                node("127.0.0.1", 0, "a6"),
                node("127.0.0.1", 30007, ""),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(30008)]),
                Value::Nil,
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("::1", 30003, "a3"),
                // A primary listed for two ranges is one node.
                node("127.0.0.1", 30001, "a1"),
            ]),
            Value::Int(7),
        ]);
        let nodes: Vec<(String, String)> = nodes_in_slots(&reply)
            .into_iter()
            .map(|n| (n.address, n.id))
            .collect();
        let expected: Vec<(String, String)> = [
            ("127.0.0.1:30001", "a1"),
            ("127.0.0.1:30004", "a4"),
            ("[::1]:30003", "a3"),
        ]
        .iter()
        .map(|(a, i)| ((*a).to_owned(), (*i).to_owned()))
        .collect();
        assert_eq!(nodes, expected);
        assert!(nodes_in_slots(&Value::Nil).is_empty());
        assert_eq!(
            split_address("[::1]:30003"),
            Some(("::1".to_owned(), 30003))
        );
    }
}
