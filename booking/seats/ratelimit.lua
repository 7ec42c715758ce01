-- One fixed-window counter: count this request, say how long to wait when over the limit.
-- KEYS[1]: the counter (its own hash tag: a resident's or an address's slot)
-- ARGV: limit, window in ms
-- Returns 0 when allowed, else the ms until the window ends.
if tonumber(ARGV[1]) == 0 then return 0 end  -- this limit is off
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n <= tonumber(ARGV[1]) then return 0 end
local wait = redis.call('PTTL', KEYS[1])
if wait < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  wait = tonumber(ARGV[2])
end
return wait
