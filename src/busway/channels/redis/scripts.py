"""The Lua scripts a Redis channel runs on the server, each in one atomic step.

Every script gets KEYS = {stream, delayed set} and ARGV[1] = the group, except ``RETIRE`` and
``CLAIM``.
"""

from __future__ import annotations

# ``oldest``: the oldest entry a group has not acknowledged: its oldest pending entry, else
# the first after the last one it was given (or the id after that, still to come).
_GROUPS = """
local function groups(stream)
  local found = {}
  if redis.call('EXISTS', stream) == 0 then return found end
  for _, fields in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local named = {}
    for i = 1, #fields, 2 do named[fields[i]] = fields[i + 1] end
    found[named['name']] = named
  end
  return found
end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function oldest(stream, name, group)
  local pending = redis.call('XPENDING', stream, name)
  if pending[2] then return pending[2] end
  local last = group['last-delivered-id']
  local after = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)[1]
  if after then return after[1] end
  local ms, seq = split(last)
  return string.format('%.0f-%.0f', ms, seq + 1)
end
"""

PREPARE = (
    _GROUPS
    + """
local keep, keep_ms, keep_seq
for name, group in pairs(groups(KEYS[1])) do
  local id = oldest(KEYS[1], name, group)
  local ms, seq = split(id)
  if not keep or ms < keep_ms or (ms == keep_ms and seq < keep_seq) then
    keep, keep_ms, keep_seq = id, ms, seq
  end
end
if keep then redis.call('XTRIM', KEYS[1], 'MINID', keep) end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
  local a = string.find(member, '\\n', 1, true)
  local b = string.find(member, '\\n', a + 1, true)
  redis.call('XADD', KEYS[1], '*', 'headers', string.sub(member, a + 1, b - 1),
             'body', string.sub(member, b + 1))
end
if #due > 0 then redis.call('ZREM', KEYS[2], unpack(due)) end
return redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or false
"""
)
"""Before a read: drop the head of the stream that every group has acknowledged, move the
due delayed messages in, and tell when the next one is due. A delayed member is
"<unique>\\n<headers JSON>\\n<body>": JSON text never holds a raw newline."""

DEPTH = (
    _GROUPS
    + """
local delayed = redis.call('ZCARD', KEYS[2])
local group = groups(KEYS[1])[ARGV[1]]
if not group or not group['lag'] then
  return redis.call('XLEN', KEYS[1]) + delayed  -- no group yet, or its lag is unknown
end
return group['lag'] + group['pending'] + delayed
"""
)
"""Messages the group has not handled yet (not acknowledged: lag + pending), and delayed."""

HEADS = (
    _GROUPS
    + """
local group, head = groups(KEYS[1])[ARGV[1]], nil
if group then
  head = oldest(KEYS[1], ARGV[1], group)
  if not redis.call('XRANGE', KEYS[1], head, head)[1] then head = nil end
else
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  head = first and first[1]
end
return {head or false, redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or false}
"""
)
"""The id of the oldest message the group has not handled yet, and the earliest delayed
time, if any."""

RETIRE = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if pending.err or #pending > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""
"""At close: forget this consumer, unless it still has pending entries (they would be lost).
KEYS = {stream}, ARGV = {group, consumer}."""

CLAIM = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                           'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  counts[i] = pending[1] and pending[1][4] or 1
end
return {claimed[1], claimed[2], counts}
"""
"""``XAUTOCLAIM`` of the entries idle for long enough, and how many times each was delivered
(this claim included). KEYS = {stream}, ARGV = {group, consumer, min idle ms, cursor, count}."""
