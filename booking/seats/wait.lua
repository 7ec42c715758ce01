-- Put a resident in the waitlist of a sold-out course. Their row is committed before this runs
-- (the gate never knows a place Postgres might still lose); on any answer but 'waiting' the
-- caller ends that row again. Waitlist id 0 only asks: would this resident wait now? (nothing
-- is added; the join asks so before writing anything, and loads a course the gate lost.)
-- KEYS: course info hash, holders hash, pending zset, waiting zset
-- ARGV: resident id, waitlist id (the order of arrival; 0: only ask)
-- Returns {'waiting'}, {'held', booking id}, {'seats_available'}, {'course_cancelled'} or
-- {'missing'} (course not loaded).
local info = redis.call('HMGET', KEYS[1], 'status', 'left')
if not info[1] then return {'missing'} end
if info[1] ~= 'published' then return {'course_cancelled'} end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return {'held', held} end
if tonumber(info[2]) > 0 and redis.call('ZCARD', KEYS[4]) == 0 then return {'seats_available'} end
if ARGV[2] ~= '0' then redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[1]) end
return {'waiting'}
