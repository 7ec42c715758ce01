-- Make one course's gate agree with the ledger (Postgres), without disturbing grabs in flight.
-- KEYS: course info hash, holders hash, pending zset
-- ARGV[1..4]: capacity, status, opens_at ms, stale_before ms
-- ARGV[5] = n, then n pairs (resident, booking id): the active bookings in Postgres
-- then m, then m pairs (resident, booking id): holders that were settled (not pending) in a
--   snapshot taken before Postgres was read
-- A holder missing from Postgres is given back when it was settled in the snapshot (its row is
-- gone) or pending since before stale_before (its writer died); a younger pending holder is a
-- grab still being written and stays. Bookings Postgres has and the gate lacks are restored.
-- Returns {seats left, seats given back, holders restored}.
local capacity = tonumber(ARGV[1])
local stale_before = tonumber(ARGV[4])
local ledger, settled = {}, {}
local at = 5
for _ = 1, tonumber(ARGV[at]) do
  ledger[ARGV[at + 1]] = ARGV[at + 2]
  at = at + 2
end
at = at + 1
for _ = 1, tonumber(ARGV[at]) do
  settled[ARGV[at + 1]] = ARGV[at + 2]
  at = at + 2
end

local given_back, restored = 0, 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
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
local left = capacity - redis.call('HLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'capacity', capacity, 'status', ARGV[2], 'opens_at', ARGV[3],
           'left', left)
return {left, given_back, restored}
