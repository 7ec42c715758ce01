-- Make one course's gate agree with the ledger (Postgres), without disturbing grabs in flight.
-- KEYS: course info hash, holders hash, pending zset, waiting zset
-- ARGV[1..6]: capacity, status, opens_at ms, pending timeout ms, hold seconds (0: free course),
--   the course's version the caller saw in the gate before it read Postgres (0: none)
-- ARGV[7] = n, then n pairs (resident, booking id): the active bookings in Postgres
-- then m, then m pairs (resident, booking id): holders that were settled (not pending) in a
--   snapshot taken before Postgres was read
-- then w, then w pairs (resident, waitlist id): the residents waiting in Postgres
-- A sync never writes back what it read before a newer change. Every write that applies a
-- change Postgres already committed moves the course's version on (free.lua freeing a seat, a
-- resident leaving the queue, a sync); if the version is no longer the one seen before Postgres
-- was read, such a write may have come after that read, so this sync changes nothing (the caller
-- reads again). Grabs and promotions need no version: the gate takes their seats before their
-- rows are written, and a young pending holder is never given back.
-- A holder missing from Postgres is given back when it was settled in the snapshot (its row is
-- gone) or pending for longer than the pending timeout by Redis's clock, the clock that stamped
-- the mark (its writer died); a younger pending holder is a grab still being written and stays.
-- Bookings Postgres has and the gate lacks are restored.
-- Waiters Postgres has are added (one who left is dropped when a promotion finds out).
-- An applied sync that changed anything a grab is decided on (status, opening time, seats left,
-- holders, the waitlist emptied) announces the course (booking:course-changed:<db>), so that
-- every process forgets what it remembered of it (see memory.py): capacity increases, reopening,
-- cancellation, a new opening time and the reconciler's give-backs all come this way.
-- Returns {seats left, seats given back, holders restored, applied (1) or not (0)}; seats left
-- is -1 when a sync that changed nothing found no course in the gate.
if redis.replicate_commands then redis.replicate_commands() end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[6]) then
  return {tonumber(redis.call('HGET', KEYS[1], 'left') or '-1'), 0, 0, 0}
end
local was = redis.call('HMGET', KEYS[1], 'status', 'opens_at', 'left')
local waited = redis.call('ZCARD', KEYS[4])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local capacity = tonumber(ARGV[1])
local stale_before = now_ms - tonumber(ARGV[4])
local function pairs_at(at)
  local found = {}
  for _ = 1, tonumber(ARGV[at]) do
    found[ARGV[at + 1]] = ARGV[at + 2]
    at = at + 2
  end
  return found, at + 1
end
local ledger, at = pairs_at(7)
local settled, at_waiting = pairs_at(at)
local waiters = pairs_at(at_waiting)

local given_back, restored = 0, 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
else
  local holders = redis.call('HGETALL', KEYS[2])
  for i = 1, #holders, 2 do
    local resident, booking = holders[i], holders[i + 1]
    if ledger[resident] == booking then
      redis.call('ZREM', KEYS[3], resident)
    else
      local since = redis.call('ZSCORE', KEYS[3], resident)
      local stale
      if since then stale = tonumber(since) < stale_before else stale = settled[resident] == booking end
      if stale then
        redis.call('HDEL', KEYS[2], resident)
        redis.call('ZREM', KEYS[3], resident)
        given_back = given_back + 1
      end
    end
  end
end
for resident, booking in pairs(ledger) do
  if redis.call('HGET', KEYS[2], resident) ~= booking then
    redis.call('HSET', KEYS[2], resident, booking)
    redis.call('ZREM', KEYS[3], resident)
    restored = restored + 1
  end
end
if ARGV[2] ~= 'published' then
  redis.call('DEL', KEYS[4])
else
  for resident, place in pairs(waiters) do
    if redis.call('HEXISTS', KEYS[2], resident) == 0 then
      redis.call('ZADD', KEYS[4], 'NX', place, resident)
    end
  end
  for _, resident in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    if redis.call('HEXISTS', KEYS[2], resident) == 1 then redis.call('ZREM', KEYS[4], resident) end
  end
end
local left = capacity - redis.call('HLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'capacity', capacity, 'status', ARGV[2], 'opens_at', ARGV[3],
           'left', left, 'hold_s', ARGV[5], 'version', version + 1)
if given_back + restored > 0 or was[1] ~= ARGV[2] or tonumber(was[2]) ~= tonumber(ARGV[3])
    or tonumber(was[3]) ~= left or (waited > 0 and redis.call('ZCARD', KEYS[4]) == 0) then
  redis.call('PUBLISH', 'booking:course-changed', string.match(KEYS[1], '{(.-)}'))
end
return {left, given_back, restored, 1}
