"""The Lua scripts of the distributed mode: each a step that must happen whole.

Every script takes the key prefix first and builds its key names from it (one Redis, not a
cluster), then ``now``: Redis's own clock (``TIME``, in ms) when empty, as always outside
tests, which drive the clock. The ARGV listed for each script come after these two. A worker
proves at each step that it still holds the job (``taken[job] == worker``): a worker
declared dead and come back can neither send, nor record, nor requeue what was taken from
it. Key names are listed in ``engine.redis_store``.
"""

from __future__ import annotations

#: ``clock()``: Redis's time in ms, or the time a test passes.
NOW = """
local function clock()
  if ARGV[2] ~= '' then return tonumber(ARGV[2]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: ARGV: campaign, name, spec, then (job, key hash, account, job json, due ms)*. Queues each
#: job neither ok, nor queued, nor taken; a failed one is queued again. Returns {queued,
#: already ok, already queued or taken, failed and queued again, the outcome log's last id}.
SUBMIT = (
    NOW
    + """
local P, cid = ARGV[1], ARGV[3]
local C = P .. 'c:' .. cid
redis.call('HSET', C, 'name', ARGV[4], 'spec', ARGV[5])
redis.call('ZADD', P .. 'campaigns', 'NX', clock(), cid)
local queued, ok, busy, again = 0, 0, 0, 0
for i = 6, #ARGV, 5 do
  local job, kh, body = ARGV[i], ARGV[i + 1], ARGV[i + 3]
  local line = redis.call('HGET', C .. ':done', job)
  local q = C .. ':q:' .. kh
  if line and cjson.decode(line)['status'] == 'ok' then
    ok = ok + 1
  elseif redis.call('HEXISTS', C .. ':taken', job) == 1 then
    busy = busy + 1
  elseif redis.call('ZSCORE', q, job) then
    redis.call('HSET', C .. ':jobs', job, body)
    busy = busy + 1
  else
    if line then
      redis.call('HDEL', C .. ':done', job)
      redis.call('HINCRBY', C, 'failed', -1)
      again = again + 1
    end
    redis.call('HSET', C .. ':jobs', job, body)
    redis.call('HSET', C .. ':keys', kh, ARGV[i + 2])
    redis.call('HDEL', C .. ':progress', job)
    redis.call('ZADD', q, tonumber(ARGV[i + 4]), job)
    redis.call('HINCRBY', C, 'open', 1)
    queued = queued + 1
  end
end
local last = redis.call('XREVRANGE', C .. ':log', '+', '-', 'COUNT', 1)
return {queued, ok, busy, again, last[1] and last[1][1] or '0-0'}
"""
)

#: ARGV: campaign, worker, take id, how many, then key hashes. Takes up to ``how many`` jobs
#: due, key by key. Returns {-2} to a worker no longer registered, else {ms until the next job
#: not yet due (-1: none), then (job, job json, progress)*}. Asked again with the same take id
#: (its reply was lost), it answers what it took the first time.
TAKE = (
    NOW
    + """
local P, cid, wid, id, want = ARGV[1], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
if not redis.call('ZSCORE', P .. 'workers', wid) then return {-2} end
local last = P .. 'w:' .. wid .. ':take'
if redis.call('HGET', last, cid) == id then
  return cjson.decode(redis.call('HGET', last, cid .. ':reply'))
end
local C = P .. 'c:' .. cid
local now = clock()
local out, got, later = {-1}, 0, -1
for i = 7, #ARGV do
  if got >= want then break end
  local q = C .. ':q:' .. ARGV[i]
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', 0, want - got)) do
    redis.call('ZREM', q, job)
    redis.call('HSET', C .. ':taken', job, wid)
    redis.call('SADD', P .. 'w:' .. wid .. ':held', cid .. ':' .. job)
    table.insert(out, job)
    table.insert(out, redis.call('HGET', C .. ':jobs', job) or '')
    table.insert(out, redis.call('HGET', C .. ':progress', job) or '')
    got = got + 1
  end
  local first = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(0, tonumber(first[2]) - now)
    if later < 0 or wait < later then later = wait end
  end
end
out[1] = later
redis.call('HSET', last, cid, id, cid .. ':reply', cjson.encode(out))
return out
"""
)

#: ARGV: campaign, worker, job. An attempt is about to leave: 1, or 0 when the job is no longer
#: this worker's (it must not be sent).
FLIGHT = """
local C = ARGV[1] .. 'c:' .. ARGV[3]
if redis.call('HGET', C .. ':taken', ARGV[5]) ~= ARGV[4] then return 0 end
redis.call('HSET', C .. ':flight', ARGV[5], ARGV[4])
return 1
"""

#: ARGV: campaign, worker, job, progress json. An attempt ended and the job waits for its
#: retry: its progress is kept, it is no longer on the wire. 1, or 0 when not its own.
PROGRESS = """
local C = ARGV[1] .. 'c:' .. ARGV[3]
if redis.call('HGET', C .. ':taken', ARGV[5]) ~= ARGV[4] then return 0 end
redis.call('HSET', C .. ':progress', ARGV[5], ARGV[6])
redis.call('HDEL', C .. ':flight', ARGV[5])
return 1
"""

#: ARGV: campaign, worker, job, line, status. The outcome is recorded, then the job let go
#: of, in one step. 1 recorded; 2 this very line was recorded already (a reply lost); 0 the
#: job is not this worker's: nothing recorded.
FINISH = """
local P, cid, wid, job, line = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local C = P .. 'c:' .. cid
if redis.call('HGET', C .. ':taken', job) ~= wid then
  if redis.call('HGET', C .. ':done', job) == line then return 2 end
  return 0
end
redis.call('HSET', C .. ':done', job, line)
redis.call('XADD', C .. ':log', '*', 'j', job, 'l', line)
redis.call('HDEL', C .. ':taken', job)
redis.call('HDEL', C .. ':flight', job)
redis.call('HDEL', C .. ':progress', job)
redis.call('SREM', P .. 'w:' .. wid .. ':held', cid .. ':' .. job)
redis.call('HINCRBY', C, 'open', -1)
redis.call('HINCRBY', C, ARGV[7], 1)
return 1
"""

#: Back to its queue, due now, with ``progress`` ('' keeps what is stored). Used by
#: GIVE_BACK and REAP.
_REQUEUE = """
local function requeue(P, cid, job, wid, progress, now)
  local C = P .. 'c:' .. cid
  local body = redis.call('HGET', C .. ':jobs', job)
  redis.call('HDEL', C .. ':taken', job)
  redis.call('HDEL', C .. ':flight', job)
  redis.call('SREM', P .. 'w:' .. wid .. ':held', cid .. ':' .. job)
  if progress ~= '' then redis.call('HSET', C .. ':progress', job, progress) end
  if body then redis.call('ZADD', C .. ':q:' .. cjson.decode(body)['k'], now, job) end
end
"""

#: ARGV: campaign, worker, then (job, progress json or '')*. Hands jobs back to their queues.
GIVE_BACK = (
    NOW
    + _REQUEUE
    + """
local P, cid, wid = ARGV[1], ARGV[3], ARGV[4]
local now, n = clock(), 0
for i = 5, #ARGV, 2 do
  if redis.call('HGET', P .. 'c:' .. cid .. ':taken', ARGV[i]) == wid then
    requeue(P, cid, ARGV[i], wid, ARGV[i + 1], now)
    n = n + 1
  end
end
return n
"""
)

#: ARGV: worker, then info fields and values. A heartbeat: the time, or -1 when the worker is
#: not registered (it was declared dead: what it held went to others). With info fields it
#: registers instead.
BEAT = (
    NOW
    + """
local P, wid = ARGV[1], ARGV[3]
if #ARGV > 3 then
  redis.call('HSET', P .. 'worker:' .. wid, unpack(ARGV, 4))
elseif not redis.call('ZSCORE', P .. 'workers', wid) then
  return -1
end
local now = clock()
redis.call('ZADD', P .. 'workers', now, wid)
return now
"""
)

#: A worker gone (declared dead, or leaving): every job it still holds goes back to its queue,
#: one with an attempt on the wire marked sent and ambiguous (that attempt counted), as the
#: exchange may have taken it; its registration goes. Returns the jobs and those on the wire.
_RELEASE = (
    _REQUEUE
    + """
local function release(P, wid, now)
  local held = P .. 'w:' .. wid .. ':held'
  local n, wire = 0, 0
  for _, entry in ipairs(redis.call('SMEMBERS', held)) do
    local cid, job = string.match(entry, '^([^:]+):(.*)$')
    local C = P .. 'c:' .. cid
    if redis.call('HGET', C .. ':taken', job) == wid then
      local progress = ''
      if redis.call('HGET', C .. ':flight', job) == wid then
        local stored = redis.call('HGET', C .. ':progress', job)
        local p = stored and cjson.decode(stored) or {a = 0}
        p['a'] = (p['a'] or 0) + 1
        p['s'] = true
        p['am'] = true
        progress = cjson.encode(p)
        wire = wire + 1
      end
      requeue(P, cid, job, wid, progress, now)
      n = n + 1
    end
  end
  redis.call('DEL', held, P .. 'worker:' .. wid, P .. 'w:' .. wid .. ':take')
  redis.call('ZREM', P .. 'workers', wid)
  redis.call('ZADD', P .. 'dead', now, wid)
  return n, wire
end
"""
)

#: ARGV: worker. A worker leaves; anything it still holds (a job taken as it stopped, whose
#: reply it never read) goes back. Returns {jobs given back, of which on the wire}.
LEAVE = (
    NOW
    + _RELEASE
    + """
local n, wire = release(ARGV[1], ARGV[3], clock())
return {n, wire}
"""
)

#: ARGV: ms without a heartbeat that make a worker dead. Releases every dead worker. Returns
#: {worker, jobs requeued, of which on the wire}*.
REAP = (
    NOW
    + _RELEASE
    + """
local P = ARGV[1]
local now = clock()
local out = {}
local dead = redis.call('ZRANGEBYSCORE', P .. 'workers', '-inf', now - tonumber(ARGV[3]))
for _, wid in ipairs(dead) do
  local n, wire = release(P, wid, now)
  table.insert(out, wid)
  table.insert(out, n)
  table.insert(out, wire)
end
redis.call('ZREMRANGEBYSCORE', P .. 'dead', '-inf', now - 3600000)
return out
"""
)
