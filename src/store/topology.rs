//! Cluster topology as `CLUSTER NODES` tells it: which primaries serve
//! slots (what a sweep visits), and what one node says it serves itself
//! (what decides whether its scan saw every key).
//!
//! Parsed strictly, with no connection, so that the rules that decide what
//! gets swept are unit-tested here rather than only against a live cluster.

use std::collections::BTreeSet;

use super::server::split_address;
use super::slots::{parse_slot, parse_slot_range, Primary, LAST_SLOT};

/// `CLUSTER NODES`: the whole topology, as the node asked sees it.
pub(super) fn cluster_nodes_command() -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    cmd
}

/// What a cluster node says it serves: its own (`myself`) line of
/// `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotAssignment {
    /// Flagged `master` (a replica serves no slots).
    pub primary: bool,
    /// Its configuration epoch: a failover or a finished migration to it
    /// raises it, so it tells a reconfiguration even when the slots are
    /// the same again.
    pub config_epoch: u64,
    /// The slots it serves, as ranges in the order listed.
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
    /// Migrations in progress, in the order listed.
    pub migrations: Vec<Migration>,
}

impl SlotAssignment {
    /// The slots the node is importing (`[slot-<-id]`): it serves a key
    /// of one of them, which it holds, only right after `ASKING`.
    pub fn importing(&self) -> BTreeSet<u16> {
        self.migrations
            .iter()
            .filter(|m| m.importing)
            .map(|m| m.slot)
            .collect()
    }
}

/// A slot migration in progress, from a `CLUSTER NODES` line:
/// `[93-<-<node id>]` (importing) or `[93->-<node id>]` (migrating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The slot being moved.
    pub slot: u16,
    /// True when the node imports the slot from `peer`, false when it
    /// migrates it to `peer`.
    pub importing: bool,
    /// The id of the node at the other end.
    pub peer: String,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (direction, preposition) = if self.importing {
            ("importing", "from")
        } else {
            ("migrating", "to")
        };
        write!(
            f,
            "slot {} {direction} {preposition} node {}",
            self.slot, self.peer
        )
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ClusterNode {
    /// The node's id.
    pub(super) id: String,
    /// `host:port` clients use.
    pub(super) address: String,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, ...
    pub(super) flags: Vec<String>,
    /// Raised by a failover or a finished migration to the node.
    config_epoch: u64,
    /// The slots it serves, each field parsed into a range (`0-5460` as
    /// `0..=5460`, a single `93` as `93..=93`), in the order listed.
    slots: Vec<std::ops::RangeInclusive<u16>>,
    /// Migration markers (`[93->-<node id>]`, `[93-<-<node id>]`).
    migrations: Vec<Migration>,
}

impl ClusterNode {
    /// Flagged `master`, whether or not it serves slots or is failing.
    fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// A primary that owns slots. A failed one counts too: its keys are not
    /// swept while it is down, and the sweep must say so rather than skip
    /// it. (After a failover the old primary owns no slots any more.)
    fn owns_slots(&self) -> bool {
        self.is_primary() && !self.slots.is_empty()
    }
}

/// The primaries that serve slots, by address, from `CLUSTER NODES`; an
/// error when there are none.
#[cfg(test)]
fn primaries_in(text: &str) -> Result<Vec<Primary>, String> {
    primaries_of(parse_cluster_nodes(text)?)
}

/// The primaries among `nodes` that serve slots, by address; an error when
/// there are none.
pub(super) fn primaries_of(nodes: Vec<ClusterNode>) -> Result<Vec<Primary>, String> {
    let mut primaries: Vec<Primary> = nodes
        .into_iter()
        .filter(ClusterNode::owns_slots)
        .map(|node| Primary {
            slots: node.slots,
            address: node.address,
        })
        .collect();
    if primaries.is_empty() {
        return Err("no primary serves any slot".to_owned());
    }
    primaries.sort_by(|a, b| a.address.cmp(&b.address));
    primaries.dedup_by(|a, b| a.address == b.address);
    Ok(primaries)
}

/// The node's own line of `CLUSTER NODES`: exactly one must be flagged
/// `myself`.
pub(super) fn own_assignment(text: &str) -> Result<SlotAssignment, String> {
    let mut mine = parse_cluster_nodes(text)?
        .into_iter()
        .filter(|node| node.flags.iter().any(|f| f == "myself"));
    match (mine.next(), mine.next()) {
        (Some(node), None) => Ok(SlotAssignment {
            primary: node.is_primary(),
            config_epoch: node.config_epoch,
            slots: node.slots,
            migrations: node.migrations,
        }),
        (None, _) => Err("no line flagged myself".to_owned()),
        (Some(_), Some(_)) => Err("more than one line flagged myself".to_owned()),
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <master>
/// <ping-sent> <pong-recv> <config-epoch> <link-state> <slot> <slot> ...`.
///
/// Strict: a line that does not have that form is an error naming the line
/// number and what is wrong, never skipped. A skipped line would be a
/// primary (and its slots) the sweep silently leaves out, or the node's own
/// line missing from the check that decides whether its scan was complete.
pub(super) fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNode>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| parse_node_line(line).map_err(|why| format!("line {}: {why}", n + 1)))
        .collect()
}

fn parse_node_line(line: &str) -> Result<ClusterNode, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [id, endpoint, flags, _primary_id, _ping, _pong, epoch, _link, slot_fields @ ..] =
        fields.as_slice()
    else {
        return Err(format!("{} fields, at least 8 expected", fields.len()));
    };
    let address = endpoint.split(['@', ',']).next().unwrap_or_default();
    if split_address(address).is_none() {
        return Err(format!("address {address:?} is not host:port"));
    }
    let config_epoch = epoch
        .parse()
        .map_err(|_| format!("config epoch {epoch:?} is not a number"))?;
    let mut slots = Vec::new();
    let mut migrations = Vec::new();
    for field in slot_fields {
        if let Some(marker) = field.strip_prefix('[') {
            let migration = [("->-", false), ("-<-", true)]
                .into_iter()
                .find_map(|(arrow, importing)| {
                    let (slot, peer) = marker.split_once(arrow)?;
                    let peer = peer.strip_suffix(']').filter(|peer| !peer.is_empty())?;
                    Some(Migration {
                        slot: parse_slot(slot)?,
                        importing,
                        peer: peer.to_owned(),
                    })
                })
                .ok_or_else(|| {
                    format!("slot migration {field:?} is not [slot->-id] or [slot-<-id]")
                })?;
            migrations.push(migration);
            continue;
        }
        let Some(range) = parse_slot_range(field) else {
            return Err(format!(
                "slot range {field:?} is not slot or slot-slot (0-{LAST_SLOT})"
            ));
        };
        slots.push(range);
    }
    Ok(ClusterNode {
        id: (*id).to_owned(),
        address: address.to_owned(),
        flags: flags.split(',').map(str::to_owned).collect(),
        config_epoch,
        slots,
        migrations,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;

    /// A cluster seen from 127.0.0.1:30003: a replica with a hostname, a primary
    /// migrating slot 93 to it, a failed primary, and one owning no slots.
    pub(in crate::store) const NODES: &str = "\
07c3 127.0.0.1:30004@31004,host-a slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922 [93->-292f]
292f 127.0.0.1:30003@31003 myself,master - 0 0 3 connected 10923-16383 93
e7d1 127.0.0.1:30001@31001 master,fail - 0 1426238317741 1 connected 0-92 94-5460
9fa1 127.0.0.1:30005@31005 master - 0 1426238317741 5 connected
";

    #[test]
    fn primaries_are_the_masters_owning_slots_even_failed_ones() {
        let nodes = parse_cluster_nodes(NODES).unwrap();
        let owning: Vec<(&str, Vec<std::ops::RangeInclusive<u16>>)> = nodes
            .iter()
            .filter(|n| n.owns_slots())
            .map(|n| (n.address.as_str(), n.slots.clone()))
            .collect();
        assert_eq!(
            owning,
            [
                ("127.0.0.1:30002", vec![5461..=10922]),
                ("127.0.0.1:30003", vec![10923..=16383, 93..=93]),
                ("127.0.0.1:30001", vec![0..=92, 94..=5460]),
            ]
        );
        // The migration marker stays for the check that decides "finished".
        assert_eq!(
            nodes[1].migrations,
            [Migration {
                slot: 93,
                importing: false,
                peer: "292f".to_owned()
            }]
        );
        assert_eq!(nodes[2].config_epoch, 3);
    }

    #[test]
    fn a_malformed_cluster_nodes_line_is_an_error_naming_it_never_skipped() {
        let good = "292f 127.0.0.1:30003@31003 myself,master - 0 0 3 connected 0-16383\n";
        assert_eq!(parse_cluster_nodes(good).unwrap().len(), 1);
        for (bad, why) in [
            ("292f 127.0.0.1:30003@31003 myself,master - 0 0", "fields"),
            (
                "292f nowhere@31003 myself,master - 0 0 3 connected 0-1",
                "host:port",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 x connected 0-1",
                "epoch",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected 0-16384",
                "slot range",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected 10-5",
                "slot range",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected +5",
                "slot range",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected [93-x]",
                "migration",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected [93->-]",
                "migration",
            ),
            (
                "292f 127.0.0.1:30003@31003 master - 0 0 3 connected [16384-<-ab]",
                "migration",
            ),
        ] {
            let text = format!("{good}{bad}\n");
            let err = parse_cluster_nodes(&text).unwrap_err();
            assert!(
                err.starts_with("line 2: ") && err.contains(why),
                "{bad}: {err}"
            );
        }
        // Importing and migrating markers both parse.
        let marked =
            "292f 127.0.0.1:30003@31003 myself,master - 0 0 3 connected 1-2 [3-<-ab] [1->-cd]";
        let own = own_assignment(marked).unwrap();
        assert_eq!(own.migrations.len(), 2);
        assert_eq!(own.importing(), BTreeSet::from([3]));
        assert_eq!(
            own.migrations[0].to_string(),
            "slot 3 importing from node ab"
        );
    }

    #[test]
    fn no_primary_serving_slots_is_an_error_not_nothing_to_sweep() {
        let fresh = "66d6 :53703@47567 myself,master - 0 0 0 connected\n";
        assert_eq!(
            primaries_in(fresh).unwrap_err(),
            "no primary serves any slot"
        );
        assert_eq!(primaries_in("").unwrap_err(), "no primary serves any slot");
        let only_replicas_own_nothing = "\
07c3 127.0.0.1:30004@31004 myself,slave e7d1 0 1 4 connected
e7d1 127.0.0.1:30001@31001 master - 0 1 1 connected
";
        assert!(primaries_in(only_replicas_own_nothing).is_err());
        let primaries = primaries_in(NODES).unwrap();
        assert_eq!(primaries.len(), 3);
    }

    #[test]
    fn a_node_answers_for_itself_with_exactly_one_myself_line() {
        let own = own_assignment(NODES).unwrap();
        assert_eq!(
            own,
            SlotAssignment {
                primary: true,
                config_epoch: 3,
                slots: vec![10923..=16383, 93..=93],
                migrations: Vec::new(),
            }
        );
        // Before, a reply without its own line read as "not a cluster node":
        // the node counted as finished whatever its slots did.
        let without_myself = NODES.replace("myself,master", "master");
        assert_eq!(
            own_assignment(&without_myself).unwrap_err(),
            "no line flagged myself"
        );
        let twice = NODES.replace("master,fail", "myself,master");
        assert_eq!(
            own_assignment(&twice).unwrap_err(),
            "more than one line flagged myself"
        );
        let replica = own_assignment(
            &NODES
                .replace("myself,master", "x")
                .replace("slave", "myself,slave"),
        )
        .unwrap();
        assert!(!replica.primary && replica.slots.is_empty());
    }

    #[test]
    fn primaries_come_sorted_by_address_once_each_whatever_the_endpoint_form() {
        let text = "\
b2 [::1]:30002@31002,host-b master - 0 0 2 connected 100-200
a1 127.0.0.1:30001@31001,host-a master - 0 0 1 connected 0-99
a1 127.0.0.1:30001@31001 master - 0 0 1 connected 0-99
";
        let primaries = primaries_in(text).unwrap();
        let addresses: Vec<&str> = primaries.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(addresses, ["127.0.0.1:30001", "[::1]:30002"]);
        assert_eq!(primaries[1].slots, vec![100..=200]);
    }
}
