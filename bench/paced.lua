-- wrk script: requests at a steady rate instead of as fast as answers come back.
-- `wrk -s bench/paced.lua <url> -- <ms between requests of one thread>`: each thread keeps a
-- schedule and every request takes the next slot on it (waiting until then), so the threads
-- together offer threads * 1000 / interval requests/s while connections are free. A thread
-- late by a few milliseconds sends the requests it owes at once; one further behind (no
-- connection was free) does not burst: its schedule restarts 5 ms back from now.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } tally_timespec;
int clock_gettime(int clock, tally_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("tally_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local interval_ms = 1
local next_at = nil

function init(args)
  interval_ms = tonumber(args[1])
end

function delay()
  local now = now_ms()
  if next_at == nil or next_at < now - 5 then
    next_at = now - 5
  end
  local wait = next_at - now
  next_at = next_at + interval_ms
  return math.max(wait, 0)
end
