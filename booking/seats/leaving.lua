-- Mark a seat as on its way out, before its booking is cancelled in Postgres. The mark is the
-- same pending mark a grab leaves while its row is written: should the cancel commit and the
-- release never run (a worker killed in between, Redis unreachable for the release), the
-- reconciler finds a pending holder the ledger no longer has and gives the seat back.
-- KEYS: course info hash, holders hash, pending zset
-- ARGV: resident id, booking id
-- Returns 1 when that booking holds a seat here (now marked), 0 otherwise.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
return 1
