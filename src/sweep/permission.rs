//! The last check before a node may delete: its ACL lets this user run the
//! sweep's own command ([`Check::Permission`]).

use redis::Value;

use super::error::{Check, SweepError};
use super::query::{is_redirect, not_a_cluster, query_each, replied_from, shape, Found, KeyReply};
use crate::store::Connection;

/// [`Check::Permission`] on `key`, a key SCAN `found` on `conn`'s node: the
/// command `what` (one the sweep will send: its mode's, and in a bounded
/// removal the read before it, ZRANGEBYSCORE), over the score range `(0 (0`, which is empty (no
/// score is both above and below 0; 0 and -0 are neither), so it removes
/// and counts nothing, while Redis's ACL check, which comes before the
/// command runs, refuses it with NOPERM if the user may not run it on such
/// keys. Redis checks the ACL before the key's type and before redirecting,
/// so WRONGTYPE (the key changed type since SCAN) and a MOVED/ASK the
/// cluster client followed both mean the node let the command through.
pub(super) async fn check_permission(
    conn: &mut Connection,
    key: &Vec<u8>,
    found: Found<'_>,
    what: &'static str,
) -> Result<(), SweepError> {
    // Errors read "the permission check could not run ...: ZCOUNT failed:
    // ...", so the step is named by its command alone.
    let replies = query_each(conn, what, std::slice::from_ref(key), found, |key| {
        let mut cmd = redis::cmd(what);
        cmd.arg(key).arg("(0").arg("(0");
        cmd
    })
    .await
    .map_err(|e| Check::Permission.failed(e))?;
    // ZCOUNT and ZREMRANGEBYSCORE count nothing, ZRANGEBYSCORE lists
    // nothing: each its own shape, so that a reply meant for another
    // command is not taken for this one's.
    let lists = what == super::bounded::BOUND_READ;
    for KeyReply { reply, redirected } in replies {
        match reply {
            Ok(Value::Int(0)) if !lists => {}
            Ok(Value::Array(items)) if lists && items.is_empty() => {}
            Err(e) if e.code() == Some("WRONGTYPE") => {}
            Err(e) if !redirected && is_redirect(&e) => {
                return Err(Check::Permission.refused(not_a_cluster(conn, what)))
            }
            Err(e) => {
                let e = replied_from(conn, redirected).error(what, e);
                return Err(Check::Permission.failed(e));
            }
            Ok(other) => {
                return Err(Check::Permission.refused(format!(
                    "Redis at {}: {what} answered {} for key {:?}, not 0",
                    replied_from(conn, redirected).address(),
                    shape(&other),
                    String::from_utf8_lossy(key)
                )))
            }
        }
    }
    Ok(())
}
