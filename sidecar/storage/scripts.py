"""The Lua scripts: each change, and each read that decides an answer, is one.

A script runs atomically, so a change checks, writes the secret and its
index, and appends the audit entry as one step. Every script first refuses to
run anywhere but on the primary (``PRIMARY_ONLY``).
"""

from __future__ import annotations

import hashlib
from typing import Final

# Reads that decide a signature or answer a caller come from the current
# primary only (docs/architecture.md §5). A primary demoted by a failover keeps its
# clients' connections and, as a replica, still answers reads and no-writes
# scripts with whatever it had, so every script asks first (a write script
# too: a replica with replica-read-only off would take it). READONLY is
# what a replica answers a write with: redis-py's Sentinel connections take
# it as "this is no longer the primary", drop the connection and ask the
# sentinels again.
PRIMARY_ONLY: Final = """
if not string.find(redis.call('INFO', 'replication'), 'role:master', 1, true) then
  return redis.error_reply('READONLY this node is not the primary')
end
"""

# Server time keeps every replica's timestamps on one clock.
NOW_MS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# A change counts itself against its owner's rate limit in the same call, so a
# limit costs no round trip, and a change refused by it changes nothing else.
# A fixed window, as @atproto/xrpc-server's limiter keeps it: the first change
# starts the counter and its expiry. KEYS[4]: the owner's change counter. The
# last two ARGV, whatever comes before them: the limit (0: none, for operator
# tools) and the window in ms. Answers how far over and when the window ends.
COUNT_CHANGE: Final = """
local limit = tonumber(ARGV[#ARGV - 1])
if limit > 0 then
  local n = redis.call('INCR', KEYS[4])
  local ttl = redis.call('PTTL', KEYS[4])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[4], ARGV[#ARGV])
    ttl = tonumber(ARGV[#ARGV])
  end
  if n > limit then return {'rate_limited', n, ttl, now} end
end
"""

# KEYS: secret hash, index, audit log, change counter. ARGV: name, envelope,
# actor, log cap, the op the audit entry records ('create', or 'import' for a
# token the caller brought: one script for both, so an import can never drift
# from a create), the most secrets the owner may hold, then COUNT_CHANGE's two.
# The quota is counted here, in the same atomic step as the write, so two
# replicas can never both pass it; ZCARD is O(1). An owner above a quota
# lowered since keeps what it has.
CREATE: Final = (
    PRIMARY_ONLY
    + NOW_MS
    + COUNT_CHANGE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local held = redis.call('ZCARD', KEYS[2])
if held >= tonumber(ARGV[6]) then return {'quota', held} end
redis.call('HSET', KEYS[1], 'env', ARGV[2], 'ver', 1, 'created', now)
-- The index score is creation time in microseconds, forced to increase: two
-- creates in one millisecond (or a clock step back) must still list in the
-- order they happened, not by name, which is how a zset breaks score ties.
local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[2], string.format('%d', score), ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'op', ARGV[5], 'name', ARGV[1], 'ver', 1, 'at', now, 'actor', ARGV[3])
return {'ok', 1, now}
"""
)

# rotate never creates: a missing hash is NotFound (docs/architecture.md §5).
# KEYS and ARGV as CREATE's, without the op.
ROTATE: Final = (
    PRIMARY_ONLY
    + NOW_MS
    + COUNT_CHANGE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('HSET', KEYS[1], 'env', ARGV[2], 'rotated', now)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'op', 'rotate', 'name', ARGV[1], 'ver', ver, 'at', now, 'actor', ARGV[3])
return {'ok', ver, now}
"""
)

DELETE: Final = (
    PRIMARY_ONLY
    + NOW_MS
    + COUNT_CHANGE
    + """
local ver = redis.call('HGET', KEYS[1], 'ver')
if not ver then return {'not_found'} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'op', 'delete', 'name', ARGV[1], 'ver', ver, 'at', now, 'actor', ARGV[3])
return {'ok', tonumber(ver), now}
"""
)


# Reads many secrets' env and ver in one command. A pipeline of HMGETs costs
# the client far more per key (each command is packed, parsed and dispatched
# on its own), and this is the sign hot path. KEYS: secret hashes, in order.
# Declared no-writes (Redis 7+, Valkey), so Redis runs it like a read: also
# while writes are paused (CLIENT PAUSE WRITE, which a coordinated FAILOVER
# uses), where an undeclared script would wait with the writes.
READ_ENVELOPES: Final = (
    "#!lua flags=no-writes"
    + PRIMARY_ONLY
    + """
local out = {}
for i, key in ipairs(KEYS) do
  local row = redis.call('HMGET', key, 'env', 'ver')
  out[2 * i - 1] = row[1]
  out[2 * i] = row[2]
end
return out
"""
)
# Sent by hand on the sign path's own connections (see sidecar.storage.sign_reads).
# SHA-1 because EVALSHA names scripts by it; nothing here relies on its strength.
READ_ENVELOPES_SHA: Final = hashlib.sha1(READ_ENVELOPES.encode()).hexdigest()  # noqa: S324

# One page of an owner's secrets in list order (by index score, ties by name),
# in one round trip: for each, name, score, ver, created and rotated (false, a
# nil reply, for a field that is absent). The page starts after the keyset
# cursor (score, name) of the last one the caller saw, never at an offset, so
# a create or delete between pages neither repeats nor skips one that stayed.
# Its cost is O(log n + page): ZRANGE BYSCORE with LIMIT, and one HMGET each.
# The hashes share the index's hash tag, so on a cluster they are in its slot.
# KEYS: index. ARGV: the owner's secret key prefix, the cursor's score ('' for
# the first page) and name, and how many to read.
LIST_PAGE: Final = (
    "#!lua flags=no-writes"
    + PRIMARY_ONLY
    + """
local want = tonumber(ARGV[4])
local names, scores = {}, {}
local function take(reply)
  for i = 1, #reply, 2 do
    if #names < want then
      table.insert(names, reply[i])
      table.insert(scores, reply[i + 1])
    end
  end
end
-- Byte order, as the index orders equal scores; Lua's own < follows the locale.
local function after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local low = '-inf'
if ARGV[2] ~= '' then
  -- Creates force scores to increase, so the secrets present never share one;
  -- ties are still resumed by name, the index's own order for them.
  local tied = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[2], 'BYSCORE', 'WITHSCORES')
  local rest = {}
  for i = 1, #tied, 2 do
    if after(tied[i], ARGV[3]) then
      table.insert(rest, tied[i])
      table.insert(rest, tied[i + 1])
    end
  end
  take(rest)
  low = '(' .. ARGV[2]
end
if #names < want then
  take(redis.call('ZRANGE', KEYS[1], low, '+inf', 'BYSCORE', 'LIMIT', 0, want - #names,
    'WITHSCORES'))
end
local out = {}
for i, name in ipairs(names) do
  local row = redis.call('HMGET', ARGV[1] .. name, 'ver', 'created', 'rotated')
  table.insert(out, name)
  table.insert(out, scores[i])
  for j = 1, 3 do table.insert(out, row[j]) end
end
return out
"""
)

# The re-wrap compare-and-set: replace the envelope only if it is still the one
# that was read and re-sealed, so a rotation in between always wins. `ver` is
# left alone, because the token did not change. An empty actor means no audit.
# KEYS: secret hash, audit log. ARGV: expected envelope, new envelope, name,
# actor, log cap.
REPLACE_ENVELOPE: Final = (
    PRIMARY_ONLY
    + NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'env') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'env', ARGV[2])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'op', 'rewrap', 'name', ARGV[3],
    'ver', redis.call('HGET', KEYS[1], 'ver'), 'at', now, 'actor', ARGV[4])
end
return 1
"""
)

# A service JWT's first use: OK, or false (a nil reply) when it was seen before.
# KEYS: the jti record. ARGV: its expiry, in Unix seconds.
CLAIM_JTI: Final = (
    PRIMARY_ONLY
    + """
return redis.call('SET', KEYS[1], 1, 'NX', 'EXAT', ARGV[1])
"""
)

# How long a rate-limit window has left, and the server's time: {ms left, now}.
# KEYS: the counter.
WINDOW_LEFT: Final = (
    "#!lua flags=no-writes"
    + NOW_MS
    + """
return {redis.call('PTTL', KEYS[1]), now}
"""
)

# Counts one refused credential from a client address: {count, ms left, now}.
# KEYS: the address counter. ARGV: the window in ms.
ADDRESS_FAILED: Final = (
    PRIMARY_ONLY
    + NOW_MS
    + """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl, now}
"""
)
