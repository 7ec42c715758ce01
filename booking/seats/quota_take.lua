-- Take a resident's quota of a term's seats for one course, before its seat script runs.
-- KEYS[1]: the resident's quota (hash tag: the resident's slot): course id -> "<state>|<term>",
--          state 'h' (a booking holds the seat) or the ms a pending take lapses at.
-- ARGV: course id, term, cap, now (ms), pending lifetime (ms), a course not to count ('' or
--       the course a swap leaves)
-- Returns {1, 1}: taken now; {1, 0}: this course counts already (a repeat grab); {0, held...}:
-- the term's cap is reached (the course ids counted).
local course, term, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now, instead = tonumber(ARGV[4]), ARGV[6]
local fields = redis.call('HGETALL', KEYS[1])
local held = {}
local mine = false
for i = 1, #fields, 2 do
  local field, value = fields[i], fields[i + 1]
  local state, its_term = string.match(value, '^([^|]*)|(.*)$')
  if state ~= 'h' and tonumber(state) <= now then
    redis.call('HDEL', KEYS[1], field)  -- a taker that never came back
  elseif field == course then
    mine = true
  elseif its_term == term and field ~= instead then
    held[#held + 1] = field
  end
end
if mine then return {1, 0} end
if #held >= cap then
  table.insert(held, 1, 0)
  return held
end
redis.call('HSET', KEYS[1], course, (now + tonumber(ARGV[5])) .. '|' .. term)
return {1, 1}
