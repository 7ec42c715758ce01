-- Free a seat and hand free seats to the waitlist, in one step: while anyone waits, a freed
-- seat is never open to a racer. The inverse of grab.lua, and the promotion pass.
-- KEYS: course info hash, holders hash, pending zset, waiting zset
-- ARGV[1], ARGV[2]: resident id and booking id of the seat to free ('' '' for none: only hand
--   out the free seats); only the holder of that very booking frees it, so a late or repeated
--   free never frees somebody else's seat.
-- ARGV[3..]: fresh booking ids, one per promotion at most.
-- Returns {freed (1/0), then per promotion: resident id, booking id, waitlist id}. A promoted
-- resident holds the seat with a pending mark until their booking is written.
-- A seat freed or handed to a waiter is announced (the course id, on the database's channel
-- booking:course-changed:<db>, see scripts.py), so that every process forgets what it
-- remembered of the course (see memory.py).
if redis.replicate_commands then redis.replicate_commands() end
local freed = 0
if ARGV[1] ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'left', 1)
    redis.call('HINCRBY', KEYS[1], 'version', 1)  -- a sync that read before this changes nothing
  end
  freed = 1
end
local out = {freed}
local info = redis.call('HMGET', KEYS[1], 'status', 'left')
if info[1] ~= 'published' then
  if freed == 1 then
    redis.call('PUBLISH', 'booking:course-changed', string.match(KEYS[1], '{(.-)}'))
  end
  return out
end
local left = tonumber(info[2])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local next_id = 3
while left > 0 and ARGV[next_id] do
  local first = redis.call('ZPOPMIN', KEYS[4])
  if #first == 0 then break end
  if not redis.call('HGET', KEYS[2], first[1]) then
    redis.call('HSET', KEYS[2], first[1], ARGV[next_id])
    redis.call('ZADD', KEYS[3], now_ms, first[1])
    left = left - 1
    table.insert(out, first[1])
    table.insert(out, ARGV[next_id])
    table.insert(out, first[2])
    next_id = next_id + 1
  end
end
redis.call('HSET', KEYS[1], 'left', left)
if freed == 1 or #out > 1 then
  redis.call('PUBLISH', 'booking:course-changed', string.match(KEYS[1], '{(.-)}'))
end
return out
