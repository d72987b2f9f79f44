//! Lowering index entries: each key's entry to its first score above the
//! cutoff, with `ZADD LT` (only ever lowered: only ever early). The full
//! scan's repair of the index, so that sets written by code that does not
//! maintain the index get entries, and the step of `index rebuild`.

use std::collections::HashMap;

use redis::Value;

use super::super::counts::Counts;
use super::super::cutoff::Expired;
use super::super::query::{is_redirect, not_a_cluster, query_each, replied_from, Found, KeyReply};
use super::script::LOWER;
use crate::due_index::index_key;
use crate::store::{Connection, StoreError};

/// The command of the repair, as errors name it.
pub(in crate::sweep) const LOWER_WHAT: &str = "EVAL (lower index entry)";

/// What lowering the entries of some keys did.
#[derive(Default)]
pub(in crate::sweep) struct Lowered {
    /// `index_entries_repaired` (added or lowered) and `errors`.
    pub(in crate::sweep) counts: Counts,
    pub(in crate::sweep) first_error: Option<String>,
}

/// One pipeline of [`LOWER`] over `keys` (found as said), each with its
/// index key under `prefix`, lowering to the first score above the cutoff,
/// or above the score `above` gives the key. Returns what it did and, beside it, the error
/// that ends the node's sweep (NOPERM, READONLY, CLUSTERDOWN, a lost
/// connection), if any.
pub(in crate::sweep) async fn lower_found(
    conn: &mut Connection,
    prefix: &str,
    keys: &[Vec<u8>],
    found: Found<'_>,
    expired: Expired,
    above: &HashMap<Vec<u8>, i64>,
) -> (Lowered, Result<(), StoreError>) {
    let mut lowered = Lowered::default();
    if keys.is_empty() {
        // An empty pipeline is a client error, not nothing to do.
        return (lowered, Ok(()));
    }
    let replies = match query_each(conn, LOWER_WHAT, keys, found, |key| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LOWER)
            .arg(2)
            .arg(index_key(prefix, key))
            .arg(key)
            .arg(above.get(key).copied().unwrap_or(expired.cutoff()));
        cmd
    })
    .await
    {
        Ok(replies) => replies,
        Err(e) => return (lowered, Err(e)),
    };
    let mut stopped = Ok(());
    for KeyReply { reply, redirected } in replies {
        match reply {
            Ok(Value::Int(n)) if n >= 0 => {
                lowered.counts.index_entries_repaired += u64::try_from(n).unwrap_or(0);
            }
            Err(e) if matches!(e.code(), Some("NOPERM" | "READONLY" | "CLUSTERDOWN")) => {
                if stopped.is_ok() {
                    stopped = Err(replied_from(conn, redirected).error(LOWER_WHAT, e));
                }
            }
            Err(e) if !redirected && is_redirect(&e) => {
                lowered.counts.errors += 1;
                lowered
                    .first_error
                    .get_or_insert_with(|| not_a_cluster(conn, LOWER_WHAT));
            }
            other => {
                lowered.counts.errors += 1;
                lowered.first_error.get_or_insert_with(|| match other {
                    Err(e) => format!("{LOWER_WHAT}: {e}"),
                    Ok(value) => format!(
                        "{LOWER_WHAT}: Redis at {} answered {}, not 0 or 1",
                        conn.address(),
                        super::super::query::shape(&value)
                    ),
                });
            }
        }
    }
    (lowered, stopped)
}
