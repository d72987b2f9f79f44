//! The Lua scripts behind the replica lock and the registry of daemons, and
//! the one way they are sent.
//!
//! Every lease script goes as a plain `EVAL` (the source each time, a few
//! hundred bytes), not as `redis::Script` (`EVALSHA`, then `SCRIPT LOAD` and
//! again on `NOSCRIPT`), for two reasons:
//! - in a cluster, redis-rs sends `SCRIPT LOAD` to every node and needs all
//!   of them to answer, so after a failover (the new primary has no script
//!   cached) one node that is down would cost the leases on the primaries
//!   that answer; a lease must depend on its own primary only;
//! - the documented ACL of the daemon grants `+eval` and neither `+evalsha`
//!   nor `+script|load`: an upgrade must need no ACL change.
//!
//! Each script is bounded in time by the caller's timeout, whole.

use std::time::Duration;

use crate::store::{Connection, StoreError};
use crate::sweep;

/// A lease script and the step it is named by in errors.
pub(super) struct LeaseScript {
    /// The step, as errors and logs name it (`lock acquire`, ...).
    what: &'static str,
    source: &'static str,
}

impl LeaseScript {
    /// Runs the script on `key` with `holder` and `ms`. A script that has
    /// not answered within `timeout` is given up on: a primary that is down
    /// or stalled (`CLIENT PAUSE ... WRITE` holds every script) must not
    /// hold up the leases on the others, nor the round.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut Connection,
        key: &str,
        holder: &str,
        ms: Duration,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let ms = u64::try_from(ms.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(self.source).arg(1).arg(key).arg(holder).arg(ms);
        match tokio::time::timeout(timeout, conn.query::<T>(self.what, &cmd)).await {
            Ok(answer) => answer,
            Err(_) => Err(conn.error(self.what, sweep::no_answer_within(timeout))),
        }
    }
}

/// A lease script: Redis 7 script flags (a shebang, which must be the first
/// line) with `allow-oom`. Without it, Redis refuses a script's first write
/// when used memory is over `maxmemory` (`noeviction`, the natural policy
/// for an allowlist), so every round would fail on its lease exactly when
/// a sweep, which only frees memory, is most needed. These scripts write a
/// few bytes at most (one lease key, one registry member). A replica still
/// refuses them with READONLY, which is how a failover is noticed.
macro_rules! lease_script {
    ($what:literal, $body:literal) => {
        LeaseScript {
            what: $what,
            source: concat!("#!lua flags=allow-oom\n", $body),
        }
    };
}

/// Takes the lease if it is free or already ours, for `ARGV[2]` ms.
pub(super) const ACQUIRE: LeaseScript = lease_script!(
    "lock acquire",
    r"local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0"
);

/// While ours, makes sure it lives at least `ARGV[2]` ms more.
pub(super) const KEEP_ALIVE: LeaseScript = lease_script!(
    "lock keep-alive",
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1"
);

/// When a primary is finished: if still ours, let the lease live only
/// until the end of the period's lease (`ARGV[2]` ms from now), or delete
/// it if that has passed.
pub(super) const SETTLE: LeaseScript = lease_script!(
    "lock settle",
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1"
);

/// Deletes it only if ours.
pub(super) const RELEASE: LeaseScript = lease_script!(
    "lock release",
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"
);

/// Registers `ARGV[1]` as a live daemon for `ARGV[2]` ms (score = expiry on
/// the Redis clock), forgets expired ones, and returns this daemon's rank
/// among the live ones (by name, so stable across rounds) and their number.
pub(super) const REGISTER: LeaseScript = lease_script!(
    "lock register",
    r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
local daemons = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(daemons)
for i, name in ipairs(daemons) do
  if name == ARGV[1] then return {i - 1, #daemons} end
end
return {0, #daemons}"
);

/// Removes `ARGV[1]` from the registry. (Scored `-inf`, then every `-inf`
/// removed: live members are scored with their expiry, so only this one
/// goes. That is `ZREM` with the commands the documented ACL of earlier
/// versions already grants, so an upgrade needs no ACL change.)
pub(super) const DEREGISTER: LeaseScript = lease_script!(
    "lock deregister",
    r"redis.call('ZADD', KEYS[1], 'XX', '-inf', ARGV[1])
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '-inf')"
);
