//! A primary's slots around its sweep: opening it (connect, read the slots
//! it serves, check they are the ones it was chosen for), telling this
//! client's own inability from the node's failure, and confirming at the
//! end that its slots did not move meanwhile. Shared by the full scan's,
//! the index sweep's and the rebuild's nodes.

use super::error::{Check, SweepError};
use crate::store::{Connection, Primary, SlotAssignment, StoreError};

/// `Some(reason)` when the node on `conn`, which served `before` when
/// its sweep started (`None`: not a cluster), moved slots or had one
/// migrating while it was swept: keys may have left ahead of the
/// cursor (or the due read) unseen, so it cannot count as finished.
pub(super) async fn slots_changed(
    conn: &mut Connection,
    before: Option<SlotAssignment>,
) -> Result<Option<String>, StoreError> {
    let Some(before) = before else {
        return Ok(None);
    };
    // A node that answered with a `myself` line before the scan must
    // answer with one after it: `slot_assignment` errors otherwise.
    let after = conn.slot_assignment().await?;
    Ok(if after.as_ref() != Some(&before) {
        Some(
            "its slots or configuration epoch changed during the sweep (resharding or \
             failover)"
                .to_owned(),
        )
    } else if !before.migrations.is_empty() {
        // While slot N moves from A (migrating) to B (importing), each
        // of its keys is on exactly one of them: on A until MIGRATE
        // moves it, then on B (a key created meanwhile is created on B,
        // as A answers ASK for keys it lacks). SCAN is per node and
        // returns what the node holds, whatever the slot: A's scan the
        // keys still on A, which A serves; B's scan those already moved,
        // which B serves after ASKING (see `Found::ScannedOn`); a key
        // moved after A's scan returned it answers ASK there and is
        // swept on B. So while no key moves, each is swept where it
        // lives, exactly once. But a key MIGRATE moves after B's cursor
        // passed it and before A's reached it is seen by neither scan,
        // and the markers look the same whether keys move or the
        // migration is stuck: neither node can count as finished until
        // the markers go. The next sweep sees such a key on B.
        let open: Vec<String> = before.migrations.iter().map(ToString::to_string).collect();
        Some(format!(
            "a slot migration was open during the sweep ({}): keys moving meanwhile may \
             have been missed; one that stays open is stuck (redis-cli --cluster fix)",
            open.join(", ")
        ))
    } else {
        None
    })
}

/// Whether a node's `error` is this client's own inability (its ACL user
/// may not run a command there, its credentials are refused there, its
/// client settings do not work), which another client may not share, as
/// opposed to the node being down, stalled or reconfiguring, which every
/// client sees alike. ACLs and passwords are per node on a cluster.
fn is_own_inability(error: &StoreError) -> bool {
    matches!(error.kind(), "noperm" | "auth" | "config")
}

/// The whole sweep's error when a node's `error` is this client's own
/// inability ([`is_own_inability`]): a refused permission check. Every
/// client would not fail alike there, so this one must not go on as if it
/// could sweep (a daemon would stay counted in the shares and keep this
/// node out of the others'). `None`: the node's own failure.
pub(super) fn own_inability(error: &StoreError) -> Option<SweepError> {
    is_own_inability(error).then(|| SweepError::SafetyCheck {
        check: Check::Permission,
        reason: error.to_string(),
        refusal: Some(error.kind()),
    })
}

/// Why a primary could not be opened for a sweep or a rebuild.
pub(super) enum NotOpened {
    /// Its connection or its slot read failed.
    Failed(StoreError),
    /// It no longer serves what it was chosen for ([`moved_since`]).
    Moved(String),
}

/// Connects to `primary` and reads the slots it serves now, checked
/// against those it was chosen for: the opening of every node's sweep,
/// index sweep and rebuild.
pub(super) async fn open_primary(
    conn: &Connection,
    primary: &Primary,
) -> Result<(Connection, Option<SlotAssignment>), NotOpened> {
    let mut node_conn = conn
        .node(&primary.address)
        .await
        .map_err(NotOpened::Failed)?;
    let assignment = node_conn
        .slot_assignment()
        .await
        .map_err(NotOpened::Failed)?;
    if let Some(reason) = assignment
        .as_ref()
        .and_then(|now| moved_since(primary, now))
    {
        return Err(NotOpened::Moved(reason));
    }
    Ok((node_conn, assignment))
}

/// Why a node, by its own account `now`, no longer serves what `primary`
/// says it did when the sweep chose it; `None` when it still does. Its
/// scan could not cover slots it has lost, and slots that moved to a node
/// already swept would be seen by nobody.
pub(super) fn moved_since(primary: &Primary, now: &SlotAssignment) -> Option<String> {
    let mut expected = primary.slots.clone();
    let mut serves = now.slots.clone();
    // Slot lists compare as sets of ranges: the order is the server's.
    for ranges in [&mut expected, &mut serves] {
        ranges.sort_by_key(|range| (*range.start(), *range.end()));
    }
    if !now.primary {
        Some("it is no longer a primary (failover)".to_owned())
    } else if serves != expected {
        Some("its slots changed since the cluster topology was read".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(primary: bool, slots: Vec<std::ops::RangeInclusive<u16>>) -> SlotAssignment {
        SlotAssignment {
            primary,
            config_epoch: 1,
            slots,
            migrations: Vec::new(),
        }
    }

    #[test]
    fn a_node_still_serves_its_slots_in_any_order_and_nothing_else() {
        let chosen = Primary {
            address: "127.0.0.1:7000".to_owned(),
            slots: vec![0..=99, 200..=299],
        };
        assert_eq!(
            moved_since(&chosen, &assignment(true, vec![200..=299, 0..=99])),
            None
        );
        assert!(moved_since(&chosen, &assignment(true, vec![0..=99]))
            .is_some_and(|reason| reason.contains("slots changed")));
        assert!(moved_since(&chosen, &assignment(true, vec![0..=299])).is_some());
        assert!(
            moved_since(&chosen, &assignment(false, vec![0..=99, 200..=299]))
                .is_some_and(|reason| reason.contains("failover"))
        );
    }
}
