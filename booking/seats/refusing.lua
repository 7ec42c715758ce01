-- What a process may remember of a course after the gate refused a grab of it (see memory.py):
-- whether the course still refuses every grab but its holders' (a holder's grab answers with
-- their booking), and who those holders are, in one atomic look. Reads only.
-- KEYS: course info hash, holders hash, waiting zset
-- Returns {'sold_out', 0, 0, holder ids...}, {'not_open', ms until sales open by Redis's clock
-- (the one grab.lua judges by), opens_at ms, holder ids...}, or {'open'} (a seat is free, the
-- course is cancelled or not loaded: nothing to remember).
local info = redis.call('HMGET', KEYS[1], 'status', 'opens_at', 'left')
if info[1] ~= 'published' then return {'open'} end
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local out
if now_ms < tonumber(info[2]) then
  out = {'not_open', tonumber(info[2]) - now_ms, info[2]}
elseif tonumber(info[3]) <= 0 or redis.call('ZCARD', KEYS[3]) > 0 then
  out = {'sold_out', 0, 0}
else
  return {'open'}
end
for _, resident in ipairs(redis.call('HKEYS', KEYS[2])) do table.insert(out, resident) end
return out
