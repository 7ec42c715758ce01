-- The end of a quota take: 'settle' (a booking now holds the seat: the take no longer lapses)
-- or 'drop' (no booking followed: the take goes back).
-- KEYS[1]: the resident's quota; ARGV: course id, 'settle' or 'drop'
if ARGV[2] == 'drop' then return redis.call('HDEL', KEYS[1], ARGV[1]) end
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local term = string.match(value, '^[^|]*|(.*)$')
redis.call('HSET', KEYS[1], ARGV[1], 'h|' .. term)
return 1
