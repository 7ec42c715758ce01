-- wrk script for `booking bench`: a crowd of residents rushing a release.
--
-- Every resident has its own token. A resident aims at the hottest tenth of the courses most
-- of the time, and on `sold_out` moves on to its next choice (up to BENCH_CHOICES courses).
-- The X-Request-Id header "<resident>.<attempt>.<course>" comes back on the answer, which is how an
-- answer is matched to the resident who asked. Each thread writes what it saw (counts by
-- answer, booking ids received, how long each decision took) to files as it goes (every 200
-- answers, so a rush cut short by wrk's -d still leaves its figures) and a "done" marker once
-- all its residents are done.
--
-- How long a decision took is timed here, from the moment a resident's request is made to its
-- answer. wrk's own latency figures are not that: wrk 4 adds, after the run, made-up samples for
-- every answer slower than twice the mean interval (its correction for coordinated omission),
-- so a few slow answers weigh as many.
--
-- Environment: BENCH_TOKENS (file, one token per line), BENCH_COURSES (comma-separated ids,
-- hottest first), BENCH_HOT (how many are hot), BENCH_HOT_SHARE (0..1), BENCH_CHOICES,
-- BENCH_THREADS, BENCH_OUT (file prefix for this run's outputs), BENCH_FLOOD (0..1: the share
-- of requests an abuser sends, all with one token from one address, answered 429).
-- Each resident sends X-Forwarded-For with an address of its own, as from its own phone.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

-- Milliseconds on a clock that only goes forward.
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local thread_index = 0

function setup(thread)
  thread:set("tid", thread_index)
  thread_index = thread_index + 1
end

local tokens, courses = {}, {}
-- Where a resident looks next after a sold_out (see `choice`): `position_of` a course in the
-- list (0-based), and `skip[p]`, set for a sold course's position, a later position to look from.
local position_of, skip = {}, {}
local hot, hot_share, choices, out, flood, flood_seed
local first_resident, next_resident, last_resident
local CHECKPOINT = 200
local since_checkpoint = 0
local ids_file
local retry = {}
local outstanding = 0
local counts = {}
-- When each resident's request on its way was made, and how many decisions took each tenth of
-- a millisecond, by answer (waits[status][whole tenths]).
local asked_at, waits = {}, {}
local finished = false
local verifying = false

local function split(text, sep)
  local parts = {}
  for part in string.gmatch(text, "[^" .. sep .. "]+") do parts[#parts + 1] = part end
  return parts
end

function init(args)
  for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end
  courses = split(os.getenv("BENCH_COURSES"), ",")
  for position, course in ipairs(courses) do position_of[course] = position - 1 end
  hot = tonumber(os.getenv("BENCH_HOT"))
  hot_share = tonumber(os.getenv("BENCH_HOT_SHARE"))
  choices = tonumber(os.getenv("BENCH_CHOICES"))
  flood = tonumber(os.getenv("BENCH_FLOOD") or "0")
  flood_seed = 12345 + tid
  out = os.getenv("BENCH_OUT") .. "-" .. tid
  local threads = tonumber(os.getenv("BENCH_THREADS"))
  local share = math.ceil(#tokens / threads)
  -- wrk calls request() once on the first thread to verify the script and never sends it.
  verifying = (tid == 0)
  first_resident = tid * share + 1
  next_resident = first_resident
  ids_file = io.open(out .. "-ids.txt", "w")
  last_resident = math.min(#tokens, (tid + 1) * share)
end

-- A resident's first choice is one of the hot courses most of the time. Told sold_out, the
-- resident moves on to another course that the list does not show as sold out (this thread
-- remembers every sold_out it heard, as a person sees live seat counts): the first course at or
-- after a position of its own, going round the list, that this thread has not heard is sold out.
-- Finding it must not cost a walk over every course once most are sold (at 4,000 courses the
-- crowd spent on such walks the CPU that the service, on the same 2 cores, needed): a walk
-- follows `skip` and shortens every chain it follows, so a choice costs about the same at any
-- number of courses.
local sold = {}

local function first_unsold(position)
  local found = position
  while skip[found] do found = skip[found] end
  while skip[position] do
    local after = skip[position]
    skip[position] = found
    position = after
  end
  return found
end

local function heard_sold_out(course)
  if sold[course] then return end
  sold[course] = true
  local position = position_of[course]
  if position then skip[position] = position + 1 end
end

local function choice(resident, attempt)
  local h = (resident * 2654435761 + attempt * 40503) % 4294967296
  local roll = (h % 10000) / 10000
  local pick = math.floor(h / 10000)
  if attempt == 1 and roll < hot_share then return courses[pick % hot + 1] end
  local start = pick % #courses
  local found = first_unsold(start)
  if found == #courses then found = first_unsold(0) end
  if found == #courses then return courses[start + 1] end
  return courses[found + 1]
end

local function grab(resident, attempt)
  outstanding = outstanding + 1
  asked_at[resident] = now_ms()
  local course = choice(resident, attempt)
  return wrk.format("POST", "/v1/courses/" .. course .. "/bookings", {
    ["Authorization"] = "Bearer " .. tokens[resident],
    ["X-Request-Id"] = resident .. "." .. attempt .. "." .. course,
    ["X-Forwarded-For"] = "10." .. math.floor(resident / 65536) % 256 .. "." ..
                          math.floor(resident / 256) % 256 .. "." .. resident % 256,
    ["Content-Length"] = "0",
  })
end

-- The abuser: the same resident and address over and over, at a hot course.
local function abuse()
  return wrk.format("POST", "/v1/courses/" .. courses[1] .. "/bookings", {
    ["Authorization"] = "Bearer " .. tokens[1],
    ["X-Request-Id"] = "flood",
    ["X-Forwarded-For"] = "203.0.113.7",
    ["Content-Length"] = "0",
  })
end

function request()
  if verifying then
    verifying = false
    return wrk.format("GET", "/health")
  end
  if flood > 0 then
    flood_seed = (flood_seed * 1103515245 + 12345) % 2147483648
    if flood_seed / 2147483648 < flood then return abuse() end
  end
  local item = table.remove(retry)
  if item then return grab(item[1], item[2]) end
  if next_resident <= last_resident then
    next_resident = next_resident + 1
    return grab(next_resident - 1, 1)
  end
  -- Nothing to ask while the last answers are on their way: a cheap filler.
  return wrk.format("GET", "/health", {["X-Request-Id"] = "idle"})
end

-- What this thread saw so far: counts by answer (replaced whole, by a rename) and "#started N",
-- the residents it has sent on their way; the ids file is flushed to the same point.
local function checkpoint()
  since_checkpoint = 0
  local path = out .. "-counts.txt"
  local file = io.open(path .. ".tmp", "w")
  for key, n in pairs(counts) do file:write(key, " ", n, "\n") end
  file:write("#started ", next_resident - first_resident, "\n")
  file:close()
  os.rename(path .. ".tmp", path)
  path = out .. "-waits.txt"
  file = io.open(path .. ".tmp", "w")
  for status, by_tenths in pairs(waits) do
    for tenths, n in pairs(by_tenths) do file:write(status, " ", tenths, " ", n, "\n") end
  end
  file:close()
  os.rename(path .. ".tmp", path)
  ids_file:flush()
end

function response(status, headers, body)
  if finished then return end
  local rid = headers["x-request-id"] or headers["X-Request-Id"]
  if rid == "flood" then
    local key = "flood:" .. status
    counts[key] = (counts[key] or 0) + 1
  elseif rid ~= "idle" then
    outstanding = outstanding - 1
    local resident, attempt, course = string.match(rid or "", "^(%d+)%.(%d+)%.(%d+)$")
    resident, attempt = tonumber(resident), tonumber(attempt)
    local key = tostring(status)
    local asked = resident and asked_at[resident]
    if asked and (status == 200 or status == 201 or status == 409) then
      local tenths = math.floor((now_ms() - asked) * 10)
      local by_tenths = waits[status]
      if not by_tenths then by_tenths = {}; waits[status] = by_tenths end
      by_tenths[tenths] = (by_tenths[tenths] or 0) + 1
    end
    if status == 200 or status == 201 then
      local id = string.match(body, '"id":"([%x%-]+)"')
      if id then ids_file:write(id, "\n") end
    else
      local code = string.match(body, '"code":"([%w_]+)"')
      key = key .. ":" .. (code or "?")
      if code == "sold_out" and course then heard_sold_out(course) end
      if resident and code == "sold_out" and attempt < choices then
        retry[#retry + 1] = {resident, attempt + 1}
      elseif resident and code == "not_open" then
        retry[#retry + 1] = {resident, attempt}
      end
    end
    counts[key] = (counts[key] or 0) + 1
  end
  since_checkpoint = since_checkpoint + 1
  if since_checkpoint >= CHECKPOINT then checkpoint() end
  if not finished and outstanding == 0 and #retry == 0 and next_resident > last_resident then
    finished = true
    checkpoint()
    ids_file:close()
    io.open(out .. "-done", "w"):close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_WRK {"requests": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout))
end
