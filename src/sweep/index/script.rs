//! The index sweep's Lua: one script per index key that sweeps its due
//! keys and moves their entries, and one that lowers one key's entry (the
//! full scan's repair). Each runs on an index key and user keys of its
//! slot only, so it is atomic on a cluster too.

/// Sweeps the due keys of one index key, atomically per call: nothing
/// (a login, a logout) comes between a key's removal and its entry's move,
/// so a login adding an earlier-expiring token cannot race it.
///
/// For each due key: a key that is not a sorted set (gone, or another
/// type) loses its entry; otherwise its expired members are removed with
/// exactly the full scan's bounds (`ZREMRANGEBYSCORE key <min> <cutoff>`,
/// `<min>` from [`min_bound`](crate::sweep::min_bound)), at most `limit`
/// of them by score as `bounded.rs` does (the N-th expired score read
/// first, checked to be at or below the cutoff); then the entry is set to
/// the key's first score above the cutoff (members at or below the
/// milliseconds floor, never removed, do not keep an entry due forever),
/// or dropped when there is none. A key cut short by `limit` keeps its
/// entry due, so it comes back.
///
/// Checked before any write: every argument (the bounds are passed as
/// text and handed to Redis untouched, so no double rounding), the index
/// key's type, each key's type before its commands. Redis runs the whole
/// script or refuses it up front (the `#!lua` header: on a replica; the
/// cluster: keys of one slot, not migrating). Should a command still fail
/// midway, the script stops there and returns what it did with the error,
/// since Redis does not roll back: the caller counts both.
///
/// `allow-oom`: it only removes members and moves existing entries, and a
/// Redis out of memory needs the sweep most.
///
/// KEYS[1] the index key, KEYS[2..] due keys of its slot. ARGV: `<min>`,
/// cutoff (an integer), limit (0: none), mode (`remove`, `count`,
/// `probe-remove`, `probe-count`), then entries to drop that are not keys
/// to sweep (not of the pattern or the slot: `remove` only).
/// Returns `{keys changed, members removed, entries moved, entries dropped,
/// not sorted sets, keys cut short, error or ''}`. A `probe-*` mode runs
/// each command the mode sends over an empty range or as a no-op, so that
/// an ACL refusing one answers NOPERM and nothing changes.
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
local limit = tonumber(ARGV[3])
if limit ~= nil and (limit < 0 or limit ~= math.floor(limit) or limit > 4294967295) then limit = nil end
local mode = ARGV[4]
local known = mode == 'remove' or mode == 'count' or mode == 'probe-remove' or mode == 'probe-count'
if not (min and cutoff and limit and known) then
  return redis.error_reply('ERR token-sweeper index sweep: argument out of range')
end
local index = KEYS[1]
local index_kind = redis.call('TYPE', index)['ok']
if index_kind ~= 'zset' and index_kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. index .. ' holds a ' .. index_kind .. ', not a sorted set')
end
if mode == 'probe-remove' or mode == 'probe-count' then
  -- ACLs are checked before types: WRONGTYPE means the command was let through.
  local function probe(...)
    local reply = redis.pcall(...)
    if type(reply) == 'table' and reply.err and string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then
      error(reply)
    end
  end
  probe('ZRANGEBYSCORE', index, '(0', '(0', 'WITHSCORES', 'LIMIT', 0, 1)
  for i = 2, #KEYS do
    probe('TYPE', KEYS[i])
    probe('ZRANGEBYSCORE', KEYS[i], '(0', '(0', 'WITHSCORES', 'LIMIT', 0, 1)
    if mode == 'probe-remove' then
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
  return {0, 0, 0, 0, 0, 0, ''}
end
local removing = mode == 'remove'
local changed, removed, moved, dropped, wrongtype, cut = 0, 0, 0, 0, 0, 0
local function sweep_key(key)
  if key == index then return end
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'zset' then
    if kind ~= 'none' then wrongtype = wrongtype + 1 end
    if removing then dropped = dropped + redis.call('ZREM', index, key) end
    return
  end
  local upper, more = cutoff, false
  if removing and limit > 0 then
    local nth = redis.call('ZRANGEBYSCORE', key, min, cutoff, 'WITHSCORES', 'LIMIT', limit - 1, 1)
    if nth[2] then
      local score = tonumber(nth[2])
      if nth[2] ~= '-inf' and (score == nil or score > tonumber(cutoff)) then
        error('a score read from the expired range is above the cutoff: ' .. nth[2])
      end
      upper, more = nth[2], true
    end
  end
  local n
  if removing then
    n = redis.call('ZREMRANGEBYSCORE', key, min, upper)
  else
    n = redis.call('ZCOUNT', key, min, cutoff)
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
  local next = redis.call('ZRANGEBYSCORE', key, '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if next[2] then
    redis.call('ZADD', index, next[2], key)
    moved = moved + 1
  else
    dropped = dropped + redis.call('ZREM', index, key)
  end
end
local failed = ''
local ok, e = pcall(function()
  if removing then
    for i = 5, #ARGV do dropped = dropped + redis.call('ZREM', index, ARGV[i]) end
  end
  for i = 2, #KEYS do sweep_key(KEYS[i]) end
end)
if not ok then
  failed = type(e) == 'table' and (e.err or 'error') or tostring(e)
end
return {changed, removed, moved, dropped, wrongtype, cut, failed}
";

/// Lowers the entry of one key to the key's first score above the cutoff
/// (`ZADD LT`: only ever lowered, so only ever early), or adds it; nothing
/// when the key is not a sorted set or has no such score. The full scan's
/// repair of the index, and the rebuild's step.
///
/// The SHA1 of [`SWEEP_DUE`], hex: the index sweep sends `EVALSHA` (the
/// script's text, ~4 KB, once per node, not once per call).
pub(super) fn sweep_due_sha() -> &'static str {
    static SHA: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| redis::Script::new(SWEEP_DUE).get_hash().to_owned());
    &SHA
}

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
