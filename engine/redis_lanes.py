"""The Lua scripts of the limiter shared by workers (``engine.redis_limits``), as
``engine.redis_lua``'s: the key prefix, then ``now`` ('' for Redis's clock), then the ARGV
listed.

``lim:NAME`` holds, per lane i, ``f<i>`` (no request before this ms), ``h<i>`` (the worker
holding the lane: admitted, not yet left nor released) and ``s<i>`` (the worker whose request
left last); ``p`` the ms a pause lasts until, ``m`` the margin, ``r`` the lane to try first.
"""

from __future__ import annotations

from engine.redis_lua import NOW

#: A lane's period in ms: the window it stretches (ms), lengthened by the margin (the larger of
#: the caller's and the one stored).
_PERIOD = """
local function margin(L, given)
  return math.max(tonumber(given), tonumber(redis.call('HGET', L, 'm') or '0'))
end
local function period(base, m)
  return math.ceil(tonumber(base) * (1 + m))
end
"""

#: ARGV: limit, lanes, base ms, margin, worker. Returns {lane or -1, ms to wait when -1,
#: the margin in millionths}.
LANE_TAKE = (
    NOW
    + _PERIOD
    + """
local P, L, n = ARGV[1], ARGV[1] .. 'lim:' .. ARGV[3], tonumber(ARGV[4])
local wid, now = ARGV[7], clock()
local m = margin(L, ARGV[6])
local span = period(ARGV[5], m)
local mm = math.floor(m * 1000000 + 0.5)
local paused = tonumber(redis.call('HGET', L, 'p') or '0')
if paused > now then return {-1, paused - now, mm} end
local start = tonumber(redis.call('HGET', L, 'r') or '0') % n
local wait = -1
for k = 0, n - 1 do
  local i = (start + k) % n
  local holder = redis.call('HGET', L, 'h' .. i)
  local free = tonumber(redis.call('HGET', L, 'f' .. i) or '0')
  if holder and not redis.call('ZSCORE', P .. 'workers', holder) then
    -- Its holder was declared dead: its request may have left up to then.
    local died = tonumber(redis.call('ZSCORE', P .. 'dead', holder) or '0')
    free = math.max(free, died + span)
    redis.call('HSET', L, 'f' .. i, free)
    redis.call('HDEL', L, 'h' .. i)
    holder = nil
  end
  if not holder then
    if free <= now then
      redis.call('HSET', L, 'h' .. i, wid, 'r', (i + 1) % n)
      return {i, 0, mm}
    end
    if wait < 0 or free - now < wait then wait = free - now end
  end
end
return {-1, wait, mm}
"""
)

#: ARGV: limit, lane, worker, base ms, margin. The lane's request left: the lane admits
#: nothing for one period from now.
LANE_SENT = (
    NOW
    + _PERIOD
    + """
local L, h = ARGV[1] .. 'lim:' .. ARGV[3], 'h' .. ARGV[4]
if redis.call('HGET', L, h) ~= ARGV[5] then return 0 end
redis.call('HSET', L, 'f' .. ARGV[4], clock() + period(ARGV[6], margin(L, ARGV[7])))
redis.call('HSET', L, 's' .. ARGV[4], ARGV[5])
redis.call('HDEL', L, h)
return 1
"""
)

#: ARGV: exchange, ms. A worker's fastest answer yet, this many ms after its request left:
#: the least of every worker's is kept, per exchange (a campaign).
FASTEST = """
local F = ARGV[1] .. 'fastest:' .. ARGV[3]
local seen = tonumber(redis.call('GET', F) or '-1')
if seen < 0 or tonumber(ARGV[4]) < seen then redis.call('SET', F, ARGV[4]) end
return 1
"""

#: ARGV: limit, lane, worker, ms, exchange. The worker's request that left last on the lane
#: opened its connection and was answered this many ms after it left: it may have arrived as
#: much later than the fastest answer any worker has seen (``FASTEST``) as it took longer, and
#: the lane waits that much longer, unless another request has been admitted on it since.
#: Returns the ms added.
LANE_LATE = """
local L, i = ARGV[1] .. 'lim:' .. ARGV[3], ARGV[4]
local took = tonumber(ARGV[6])
local fastest = tonumber(redis.call('GET', ARGV[1] .. 'fastest:' .. ARGV[7]) or ARGV[6])
local excess = took - fastest
if excess <= 0 or redis.call('HGET', L, 's' .. i) ~= ARGV[5]
    or redis.call('HEXISTS', L, 'h' .. i) == 1 then
  return 0
end
redis.call('HSET', L, 'f' .. i, tonumber(redis.call('HGET', L, 'f' .. i)) + excess)
return excess
"""

#: ARGV: limit, lane, worker. The lane's request never left: free it as it was.
LANE_RELEASE = """
local L = ARGV[1] .. 'lim:' .. ARGV[3]
if redis.call('HGET', L, 'h' .. ARGV[4]) ~= ARGV[5] then return 0 end
redis.call('HDEL', L, 'h' .. ARGV[4])
return 1
"""

#: ARGV: limit, ms. Hold every lane back.
LANE_PAUSE = (
    NOW
    + """
local L = ARGV[1] .. 'lim:' .. ARGV[3]
local till = clock() + tonumber(ARGV[4])
if till > tonumber(redis.call('HGET', L, 'p') or '0') then redis.call('HSET', L, 'p', till) end
return 1
"""
)

#: ARGV: limit, margin seen, margin wanted, base ms. Widens once per margin seen (workers
#: meeting the same 429 widen once), lengthening the waits of lanes not yet free.
LANE_WIDEN = (
    NOW
    + _PERIOD
    + """
local L = ARGV[1] .. 'lim:' .. ARGV[3]
local stored = tonumber(redis.call('HGET', L, 'm') or '0')
if stored > tonumber(ARGV[4]) then return tostring(stored) end
local now = clock()
local longer = period(ARGV[6], tonumber(ARGV[5])) - period(ARGV[6], margin(L, ARGV[4]))
local fields = redis.call('HGETALL', L)
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 1) == 'f' and tonumber(fields[i + 1]) > now then
    redis.call('HSET', L, fields[i], tonumber(fields[i + 1]) + longer)
  end
end
redis.call('HSET', L, 'm', ARGV[5])
return ARGV[5]
"""
)
