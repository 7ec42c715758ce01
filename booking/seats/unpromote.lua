-- Undo a promotion whose booking could not be written: the resident goes back to their place
-- in the waitlist and the seat waits for the next promotion pass (racers still cannot take it,
-- as grab.lua refuses while anyone waits).
-- KEYS: course info hash, holders hash, pending zset, waiting zset
-- ARGV: resident id, booking id, waitlist id
-- Returns 1 when undone, 0 when that booking held no seat. An undone promotion is announced
-- (booking:course-changed:<db>), as every change of a course's holders is (see memory.py).
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'left', 1) end
redis.call('PUBLISH', 'booking:course-changed', string.match(KEYS[1], '{(.-)}'))
return 1
