//! The index sweep's Lua: one script that sweeps the due keys of index
//! keys and moves their entries, and one that lowers one key's entry (the
//! full scan's repair). On a cluster each call holds an index key and
//! user keys of its slot only, so it is atomic there too.

/// Sweeps the due keys of one or more index keys, atomically per call:
/// nothing (a login, a logout) comes between a key's removal and its
/// entry's move, so a login adding an earlier-expiring token cannot race
/// it.
///
/// For each due key: a key of another type (its first command answers
/// `WRONGTYPE`) loses its entry, untouched; otherwise its expired members
/// are removed with exactly the full scan's bounds (`ZREMRANGEBYSCORE key
/// <min> <cutoff>`, `<min>` from [`min_bound`](crate::sweep::min_bound)),
/// at most `limit` of them by score as `bounded.rs` does: a set holding
/// more than `limit` members (`ZCARD`) has its N-th expired score read
/// first, checked to be at or below the cutoff. Since a call is atomic,
/// this bounds how long one holds Redis in every throttle mode. Then the
/// entry is set to the key's first score above the cutoff (members at or
/// below the milliseconds floor, never removed, do not keep an entry due
/// forever; so the first member, unless it is at or below the cutoff), or
/// dropped when there is none (so also for a key gone). A key cut short by `limit` keeps its
/// entry due, so it comes back.
///
/// One call holds groups: an index key and due keys of its slot. On a
/// cluster a call holds one group (one slot); a single server takes many
/// per call, since Lua's own cost per call (~10 us) would otherwise be
/// most of an index sweep's. A server that refuses keys of several slots
/// in one script (a proxy, a cluster node) answers `CROSSSLOT` before
/// running it.
///
/// Checked before any write: every argument (the bounds are passed as
/// text and handed to Redis untouched, so no double rounding) and the
/// group layout. An index key of another type fails its group at its
/// first write, which only ever follows removing expired members. No
/// `TYPE` per key (`ZCARD` answers WRONGTYPE too): each `redis.call`
/// costs Lua ~0.4 us on top of the command (measured: the README's due
/// index section), and the sweep's cost is those calls. Redis runs the whole script or refuses
/// it up front (the `#!lua` header: on a replica; the cluster: keys of
/// one slot, not migrating). Should a command still fail midway, the
/// group stops there and returns what it did with the error, since Redis
/// does not roll back: the caller counts both; the other groups go on.
///
/// `allow-oom`: it only removes members and moves existing entries, and a
/// Redis out of memory needs the sweep most.
///
/// KEYS: per group its index key, then its due keys. ARGV: `<min>`,
/// cutoff (an integer), limit (0: none), mode (`remove`, `count`,
/// `probe-remove`, `probe-count`), then per group: its number of due keys,
/// its number of entries to drop that are not keys to sweep (not of the
/// pattern or the slot: `remove` only), and those entries.
/// Returns the call's totals and, flat, the groups that need a word:
/// `{keys changed, members removed, entries moved, entries dropped, not
/// sorted sets, {group (from 1), keys cut short, error or '', ...}}`, a
/// group listed when it cut keys short or failed. Totals, not a reply per
/// group: a group is mostly one due key, and building and sending seven
/// numbers per group was a tenth of the sweep's Lua time. A `probe-*`
/// mode runs each command the mode sends over an empty range or as a
/// no-op, so that an ACL refusing one answers NOPERM and nothing
/// changes.
pub(super) const SWEEP_DUE: &str = r"#!lua flags=allow-oom
local exact = 9007199254740991
local min = ARGV[1]
if min ~= '-inf' then
  local digits = min and string.match(min, '^%((%d+)$')
  if digits == nil or tonumber(digits) > exact then min = nil end
end
local cutoff = ARGV[2]
if cutoff == nil or string.match(cutoff, '^%-?%d+$') == nil or math.abs(tonumber(cutoff)) > exact then
  cutoff = nil
end
-- A count is a whole number in 0..2^32-1. tonumber, not a pattern: it
-- runs twice per group, and per group is per due key.
local floor = math.floor
local function count(text)
  local n = tonumber(text)
  if n and n >= 0 and n <= 4294967295 and floor(n) == n then return n end
  return nil
end
local limit = count(ARGV[3])
local mode = ARGV[4]
local known = mode == 'remove' or mode == 'count' or mode == 'probe-remove' or mode == 'probe-count'
local out_of_range = redis.error_reply('ERR token-sweeper index sweep: argument out of range')
if not (min and cutoff and limit and known) then return out_of_range end
-- The groups, as parallel arrays (a table per group costs per due key).
local g_index, g_first, g_last, g_drop, g_drop_last = {}, {}, {}, {}, {}
local n_keys, n_argv = #KEYS, #ARGV
local groups, a, k = 0, 5, 1
while a <= n_argv do
  local keys, foreign = count(ARGV[a]), count(ARGV[a + 1])
  if keys == nil or foreign == nil or k + keys > n_keys or a + 1 + foreign > n_argv then
    return out_of_range
  end
  groups = groups + 1
  g_index[groups], g_first[groups], g_last[groups] = KEYS[k], k + 1, k + keys
  g_drop[groups], g_drop_last[groups] = a + 2, a + 1 + foreign
  k, a = k + keys + 1, a + 2 + foreign
end
if groups == 0 or k ~= n_keys + 1 then return out_of_range end
local call, pcall_redis = redis.call, redis.pcall
if mode == 'probe-remove' or mode == 'probe-count' then
  -- ACLs are checked before types: WRONGTYPE means the command was let through.
  local function probe(...)
    local reply = pcall_redis(...)
    if type(reply) == 'table' and reply.err and string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then
      error(reply)
    end
  end
  for g = 1, groups do
    local index = g_index[g]
    probe('ZRANGEBYSCORE', index, '(0', '(0', 'WITHSCORES', 'LIMIT', 0, 1)
    for i = g_first[g], g_last[g] do
      probe('ZRANGEBYSCORE', KEYS[i], '(0', '(0', 'WITHSCORES', 'LIMIT', 0, 1)
      if mode == 'probe-remove' then
        probe('ZCARD', KEYS[i])
        probe('ZREMRANGEBYSCORE', KEYS[i], '(0', '(0')
      else
        probe('ZCOUNT', KEYS[i], '(0', '(0')
      end
    end
    if mode == 'probe-remove' then
      -- XX GT -inf updates nothing; '' is no key this sweep writes.
      probe('ZADD', index, 'XX', 'GT', '-inf', '')
      probe('ZREM', index, '')
    end
  end
  return {0, 0, 0, 0, 0, {}}
end
local removing = mode == 'remove'
local cutoff_number = tonumber(cutoff)
-- After the removal the first member is the next expiry, unless it is at
-- or below the cutoff (at or below the floor, never removed): then the
-- ranged read, dearer. ZRANGEBYSCORE, not ZRANGE 0 0 (0.6 against 0.4 us):
-- the ACL the README gives for index mode has no ZRANGE.
local above = '(' .. cutoff
local function next_expiry(key)
  local first = call('ZRANGEBYSCORE', key, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local score = first[2] and tonumber(first[2])
  if first[2] == nil or (score and score > cutoff_number) then return first end
  return call('ZRANGEBYSCORE', key, above, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
end
-- The group being swept and its counts: upvalues of the functions below,
-- set per group (closures made per group would cost per due key).
local index, changed, removed, moved, dropped, wrongtype, cut
-- The first command on a key: a key of another type answers WRONGTYPE
-- (it loses its entry, untouched); a missing key reads as empty.
local function first_on(key, reply)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then error(reply) end
    wrongtype = wrongtype + 1
    if removing then dropped = dropped + call('ZREM', index, key) end
    return nil
  end
  return reply
end
local function sweep_key(key)
  if key == index then return end
  local upper, more = cutoff, false
  local n
  if removing then
    -- A set of at most `limit` members cannot hold more expired ones:
    -- one removal. Only a larger one reads its N-th expired score.
    local size = first_on(key, pcall_redis('ZCARD', key))
    if size == nil then return end
    if size == 0 then
      -- Gone (revoked, emptied): nothing to remove, no next expiry.
      dropped = dropped + call('ZREM', index, key)
      return
    end
    if limit > 0 and size > limit then
      local nth = call('ZRANGEBYSCORE', key, min, cutoff, 'WITHSCORES', 'LIMIT', limit - 1, 1)
      if nth[2] then
        local score = tonumber(nth[2])
        if nth[2] ~= '-inf' and (score == nil or score > cutoff_number) then
          error('a score read from the expired range is above the cutoff: ' .. nth[2])
        end
        upper, more = nth[2], true
      end
    end
    n = call('ZREMRANGEBYSCORE', key, min, upper)
  else
    n = first_on(key, pcall_redis('ZCOUNT', key, min, cutoff))
    if n == nil then return end
  end
  if n > 0 then
    changed = changed + 1
    removed = removed + n
  end
  if not removing then return end
  if more then
    cut = cut + 1
    return
  end
  local next = next_expiry(key)
  if next[2] then
    call('ZADD', index, next[2], key)
    moved = moved + 1
  else
    dropped = dropped + call('ZREM', index, key)
  end
end
local function sweep_group(g)
  if removing then
    for i = g_drop[g], g_drop_last[g] do dropped = dropped + call('ZREM', index, ARGV[i]) end
  end
  for i = g_first[g], g_last[g] do sweep_key(KEYS[i]) end
end
local totals, notes = {0, 0, 0, 0, 0}, {}
for g = 1, groups do
  index, changed, removed, moved, dropped, wrongtype, cut = g_index[g], 0, 0, 0, 0, 0, 0
  local ok, e = pcall(sweep_group, g)
  local failed = ''
  if not ok then
    failed = type(e) == 'table' and (e.err or 'error') or tostring(e)
  end
  totals[1], totals[2], totals[3] = totals[1] + changed, totals[2] + removed, totals[3] + moved
  totals[4], totals[5] = totals[4] + dropped, totals[5] + wrongtype
  if cut > 0 or failed ~= '' then
    notes[#notes + 1] = g
    notes[#notes + 1] = cut
    notes[#notes + 1] = failed
  end
end
totals[6] = notes
return totals
";

/// The SHA1 of [`SWEEP_DUE`], hex: the index sweep sends `EVALSHA` (the
/// script's text, ~4 KB, once per node, not once per call).
pub(super) fn sweep_due_sha() -> &'static str {
    static SHA: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| redis::Script::new(SWEEP_DUE).get_hash().to_owned());
    &SHA
}

/// Lowers the entry of one key to the key's first score above the cutoff
/// (`ZADD LT`: only ever lowered, so only ever early), or adds it; nothing
/// when the key is not a sorted set or has no such score. The full scan's
/// repair of the index, and the rebuild's step.
///
/// KEYS[1] the index key, KEYS[2] the user key (of its slot). ARGV: cutoff
/// (an integer). Returns 1 when the entry was added or lowered, else 0.
pub(super) const LOWER: &str = r"#!lua flags=allow-oom
local cutoff = ARGV[1]
if cutoff == nil or string.match(cutoff, '^%-?%d+$') == nil then
  return redis.error_reply('ERR token-sweeper index lower: argument out of range')
end
if KEYS[1] == KEYS[2] then return 0 end
local index_kind = redis.call('TYPE', KEYS[1])['ok']
if index_kind ~= 'zset' and index_kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. index_kind .. ', not a sorted set')
end
if redis.call('TYPE', KEYS[2])['ok'] ~= 'zset' then return 0 end
local first = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if first[2] then
  return redis.call('ZADD', KEYS[1], 'LT', 'CH', first[2], KEYS[2])
end
return 0
";
