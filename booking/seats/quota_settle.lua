-- A booking now holds the seat a quota take was for: the take no longer lapses.
-- KEYS[1]: the resident's quota; ARGV[1]: course id
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local term = string.match(value, '^[^|]*|(.*)$')
redis.call('HSET', KEYS[1], ARGV[1], 'h|' .. term)
return 1
