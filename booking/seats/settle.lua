-- Clear the pending marks of grabs whose rows are committed. A mark is cleared only while the
-- resident still holds the seat under that very booking: a settle that arrives late, after the
-- booking was cancelled and the resident grabbed the course again, leaves the newer grab's mark
-- alone (it is still being written, and the reconciler must not take it for a settled holder).
-- KEYS: holders hash, pending zset
-- ARGV: pairs of resident id, booking id
-- Returns how many marks it cleared.
local cleared = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    cleared = cleared + redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return cleared
