-- Put a resident in the waitlist of a sold-out course (their row is already written, not yet
-- committed: the caller commits only on 'waiting').
-- KEYS: course info hash, holders hash, pending zset, waiting zset
-- ARGV: resident id, waitlist id (the order of arrival)
-- Returns {'waiting'}, {'held', booking id}, {'seats_available'}, {'course_cancelled'} or
-- {'missing'} (course not loaded).
local info = redis.call('HMGET', KEYS[1], 'status', 'left')
if not info[1] then return {'missing'} end
if info[1] ~= 'published' then return {'course_cancelled'} end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return {'held', held} end
if tonumber(info[2]) > 0 and redis.call('ZCARD', KEYS[4]) == 0 then return {'seats_available'} end
redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[1])
return {'waiting'}
