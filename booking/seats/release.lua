-- Give one seat back: the inverse of grab.lua. Only the holder of that very booking frees it,
-- so a late or repeated release can never free somebody else's seat.
-- KEYS: course info hash, holders hash, pending zset
-- ARGV: resident id, booking id
-- Returns 1 when the seat went back, 0 when that booking held no seat here.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'left', 1) end
return 1
