//! The Lua scripts of the writes that must be atomic: `issue` (add a
//! session, drop the expired and the surplus, extend the key's TTL) and
//! `revoke_all`. Each touches the user's key and, with the due index on,
//! its index key, which shares its slot by construction
//! ([`crate::due_index`]), so they run on a cluster too.

/// "Now" in score units from Redis `TIME`, and the cutoff at or below which
/// a member is expired past the leeway: the one definition the scripts share
/// with `clock::is_live` (live = score + leeway > now). Rounded
/// down, like the sweeper's cutoff, so rounding only keeps a session longer.
macro_rules! lua_cutoff {
    () => {
        r"
local function cutoff(per_second, leeway)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * per_second + math.floor(tonumber(t[2]) * per_second / 1000000)
  return now - leeway
end
"
    };
}

/// Adds a session atomically: drops the user's members expired past the
/// leeway, adds this one, trims the others to `max_sessions`, and moves the
/// key's expiry to the new token's (plus leeway) unless it is already later.
/// A key without any TTL (made persistent by someone on purpose) stays
/// persistent.
///
/// Expired means what it means to the sweeper ([`crate::sweep::Expired`]):
/// at or below the cutoff and above the removal floor, which the caller
/// computes with [`crate::sweep::removal_floor`] and passes as the range's
/// `min` (`-inf` in seconds, `(<floor>` in milliseconds): a set scored in
/// milliseconds that also holds live seconds-scored sessions (another
/// service writing seconds, or one migrating) keeps them on every login.
///
/// All or nothing: every argument and the key's type are checked before the
/// first write, the values are bounded so that no later command can fail on
/// them, and the `#!lua` flags make Redis refuse the whole script up front
/// when it is out of memory or a replica, instead of at the first write.
///
/// `max_sessions` never drops the session just added; of the others it
/// drops the ones that expire first. The set holds nothing but expiries, so
/// that is what "oldest" means here: with one `auth.ttl`, the oldest logins.
/// Sessions expiring in the same unit tie, and Redis orders ties by member,
/// which for digests and random `jti`s is arbitrary. It counts and ranks
/// only the members above the removal floor (all of them in seconds): in
/// milliseconds, a member at or below it is foreign data this module never
/// wrote (a seconds-scored session of another service, which ranked by
/// score would look like the oldest of all and be dropped first), so it is
/// neither counted against the limit nor dropped.
///
/// With the due index on, KEYS[2] is the key's index key: once the set is
/// written, its entry is lowered (`ZADD LT`, never raised) to the set's
/// first score above the removal floor, which, with everything at or below
/// the cutoff just removed, is its earliest unexpired expiry. That is the
/// new token's expiry or earlier: the entry is never late for this set, in
/// the same atomic step as the token's `ZADD`, and a set written before the
/// index was turned on gets its entry at its next login.
///
/// KEYS[1] set, KEYS[2] (optional) its index key; ARGV: member, score, expire-at ms, max sessions (0 = no
/// limit), leeway in score units, score units per second (1 or 1000), the
/// `min` of the expired range (`-inf` or `(` and a non-negative integer).
pub(super) const ISSUE: &str = concat!(
    "#!lua\n",
    lua_cutoff!(),
    r"
local function integer(i, low, high)
  local v = tonumber(ARGV[i])
  if v == nil or v ~= math.floor(v) or v < low or v > high then return nil end
  return v
end
local exact = 9007199254740991
local member = ARGV[1]
local score = integer(2, 1, exact)
local expire_at = integer(3, 1, exact)
local max = integer(4, 0, 4294967295)
local leeway = integer(5, 0, exact)
local per_second = integer(6, 1, 1000)
local floor = ARGV[7]
if floor ~= '-inf' then
  local digits = floor and string.match(floor, '^%((%d+)$')
  if digits == nil or tonumber(digits) > exact then floor = nil end
end
if member == nil or member == '' or not (score and expire_at and max and leeway and per_second and floor) then
  return redis.error_reply('ERR token-sweeper issue: argument out of range')
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. kind .. ', not a sorted set')
end
local index = KEYS[2]
if index then
  local index_kind = redis.call('TYPE', index)['ok']
  if index_kind ~= 'zset' and index_kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. index .. ' holds a ' .. index_kind .. ', not a sorted set')
  end
end
local had_ttl = redis.call('PTTL', KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], floor, string.format('%d', cutoff(per_second, leeway)))
redis.call('ZADD', KEYS[1], string.format('%d', score), member)
local dropped = 0
if max > 0 then
  -- Only members above the floor are sessions of this module.
  local over = redis.call('ZCOUNT', KEYS[1], floor, '+inf') - max
  if over > 0 then
    -- The new member is among the first over + 1 at most once.
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], floor, '+inf', 'LIMIT', 0, over + 1)) do
      if dropped < over and other ~= member then
        dropped = dropped + redis.call('ZREM', KEYS[1], other)
      end
    end
  end
end
if index then
  local first = redis.call('ZRANGEBYSCORE', KEYS[1], floor, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] then
    redis.call('ZADD', index, 'LT', first[2], KEYS[1])
  end
end
if had_ttl ~= -1 then
  if redis.call('PTTL', KEYS[1]) >= 0 then
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', expire_at), 'GT')
  else
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', expire_at))
  end
end
return dropped"
);

/// Ends every session of a user; returns how many were live.
///
/// `allow-oom`: it only reads (`TIME`, `ZCOUNT`) and deletes (`DEL`), and
/// "log out everywhere" must work most of all when Redis is out of memory.
/// A `#!lua` script without that flag is refused whole under `maxmemory`
/// with `noeviction`, though deleting is what frees memory. (Not
/// `no-writes`: it writes, so a read-only replica still refuses it.)
///
/// With the due index on, KEYS[2] is the key's index key and the key's
/// entry goes with it (a sorted set only: dropping it is optional, an
/// entry left behind is early, so nothing here can fail halfway).
///
/// KEYS[1] set, KEYS[2] (optional) its index key; ARGV: leeway in score
/// units, score units per second.
pub(super) const REVOKE_ALL: &str = concat!(
    "#!lua flags=allow-oom\n",
    lua_cutoff!(),
    r"
local live = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', cutoff(tonumber(ARGV[2]), tonumber(ARGV[1]))), '+inf')
redis.call('DEL', KEYS[1])
if KEYS[2] and redis.call('TYPE', KEYS[2])['ok'] == 'zset' then
  redis.call('ZREM', KEYS[2], KEYS[1])
end
return live"
);
