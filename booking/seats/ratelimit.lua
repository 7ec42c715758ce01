-- Fixed-window counters: count this request on each, say how long to wait on each.
-- KEYS: the counters (each its own hash tag: a resident's or an address's slot; on a cluster a
--       run holds one, on one Redis a run holds every counter of a batch of requests)
-- ARGV: for KEYS[i], its limit ARGV[2i-1] and its window in ms ARGV[2i]
-- Returns per counter 0 when allowed, else the ms until its window ends.
local waits = {}
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[2 * i - 1]), ARGV[2 * i]
  local wait = 0
  if limit > 0 then  -- 0: this limit is off
    local n = redis.call('INCR', key)
    if n == 1 then redis.call('PEXPIRE', key, window) end
    if n > limit then
      wait = redis.call('PTTL', key)
      if wait < 0 then
        redis.call('PEXPIRE', key, window)
        wait = tonumber(window)
      end
    end
  end
  waits[i] = wait
end
return waits
