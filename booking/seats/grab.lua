-- The seat decision: take one seat of one course for one resident, or say why not.
-- KEYS: course info hash, holders hash (resident -> booking id), pending zset (resident -> ms),
--       waiting zset (resident -> waitlist id)
-- ARGV: resident id, the booking id to record if a seat is taken
-- Returns {outcome, value, hold seconds}: {'taken', seats left, hold s (0: a free course)},
-- {'held', booking id}, {'sold_out'}, {'not_open', opens_at ms}, {'course_cancelled'} or
-- {'missing'} (course not loaded). While anyone waits, every seat belongs to the waitlist.
if redis.replicate_commands then redis.replicate_commands() end
local info = redis.call('HMGET', KEYS[1], 'status', 'opens_at', 'left', 'hold_s')
if not info[1] then return {'missing'} end
if info[1] ~= 'published' then return {'course_cancelled'} end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return {'held', held} end
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if now_ms < tonumber(info[2]) then return {'not_open', info[2]} end
local left = tonumber(info[3])
if left <= 0 or redis.call('ZCARD', KEYS[4]) > 0 then return {'sold_out'} end
redis.call('HSET', KEYS[1], 'left', left - 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
return {'taken', tostring(left - 1), info[4] or '0'}
