-- A resident's quota as Postgres has it, keeping the takes still in flight.
-- KEYS[1]: the resident's quota; ARGV: now (ms), then (course id, term) pairs: their seats.
-- Settled fields ('h') are replaced by the pairs; pending takes that have not lapsed stay (a
-- grab in flight of this resident still counts); lapsed ones go.
local now = tonumber(ARGV[1])
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local state = string.match(fields[i + 1], '^([^|]*)|')
  if state == 'h' or tonumber(state) <= now then
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], 'h|' .. ARGV[i + 1])
end
return 1
