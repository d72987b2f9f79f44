//! The table of open HTTP connections, oldest first: who is admitted over
//! the cap, and which connection is evicted to make room (the oldest one
//! not answering a request). Pure bookkeeping, so it is tested here without
//! sockets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The open HTTP connections, oldest first.
pub(super) struct Connections {
    max: usize,
    table: Mutex<ConnectionTable>,
}

#[derive(Default)]
struct ConnectionTable {
    next_id: u64,
    /// By id; ids only grow, so the first entry is the oldest connection.
    open: BTreeMap<u64, Arc<Slot>>,
}

/// One open connection, as the table sees it.
#[derive(Default)]
pub(super) struct Slot {
    /// True while a request on it is being answered.
    pub(super) answering: AtomicBool,
    /// Told when the connection must close to make room.
    pub(super) evict: Notify,
}

/// A connection let in; leaves the table when dropped.
pub(super) struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    pub(super) slot: Arc<Slot>,
}

pub(super) enum Admission {
    /// Under the cap.
    Admitted(Admitted),
    /// At the cap: the oldest connection not answering a request was closed.
    Evicted(Admitted),
    /// At the cap, every connection answering a request: close the new one.
    Refused,
}

impl Connections {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            table: Mutex::new(ConnectionTable::default()),
        }
    }

    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let mut table = crate::mutex::lock(&self.table);
        let mut evicted = false;
        if table.open.len() >= self.max {
            let idle = table
                .open
                .iter()
                .find(|(_, slot)| !slot.answering.load(Ordering::Relaxed))
                .map(|(&id, _)| id);
            let Some(victim) = idle.and_then(|id| table.open.remove(&id)) else {
                return Admission::Refused;
            };
            victim.evict.notify_one();
            evicted = true;
        }
        let id = table.next_id;
        table.next_id += 1;
        let slot = Arc::new(Slot::default());
        table.open.insert(id, Arc::clone(&slot));
        let admitted = Admitted {
            connections: Arc::clone(self),
            id,
            slot,
        };
        if evicted {
            Admission::Evicted(admitted)
        } else {
            Admission::Admitted(admitted)
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        crate::mutex::lock(&self.connections.table)
            .open
            .remove(&self.id);
    }
}

/// Marks a slot as answering a request until dropped (also when the answer
/// is abandoned half-way).
pub(super) struct Answering(Arc<Slot>);

impl Answering {
    pub(super) fn mark(slot: &Arc<Slot>) -> Self {
        slot.answering.store(true, Ordering::Relaxed);
        Self(Arc::clone(slot))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> (Admitted, bool) {
        match admission {
            Admission::Admitted(a) => (a, false),
            Admission::Evicted(a) => (a, true),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn over_the_cap_the_oldest_idle_connection_makes_room() {
        let connections = Arc::new(Connections::new(3));
        let (first, _) = admitted(connections.admit());
        let (second, _) = admitted(connections.admit());
        let (third, evicted) = admitted(connections.admit());
        assert!(!evicted);

        // The oldest is answering a request: the next oldest goes.
        let busy = Answering::mark(&first.slot);
        let (fourth, evicted) = admitted(connections.admit());
        assert!(evicted);
        let open: Vec<u64> = crate::mutex::lock(&connections.table)
            .open
            .keys()
            .copied()
            .collect();
        assert_eq!(open, [first.id, third.id, fourth.id]);
        drop(second);

        // Every one answering: the newcomer is refused.
        let _busy = [&third, &fourth].map(|a| Answering::mark(&a.slot));
        assert!(matches!(connections.admit(), Admission::Refused));

        // Done answering: the oldest goes again.
        drop(busy);
        let (_, evicted) = admitted(connections.admit());
        assert!(evicted);
        assert!(!crate::mutex::lock(&connections.table)
            .open
            .contains_key(&first.id));
    }

    #[test]
    fn a_closed_connection_leaves_the_table() {
        let connections = Arc::new(Connections::new(1));
        let (only, _) = admitted(connections.admit());
        drop(only);
        let (_, evicted) = admitted(connections.admit());
        assert!(!evicted, "room again");
    }
}
