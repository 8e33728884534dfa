-- wrk script: each request asks what one of the first N sessions is shown next, viewing one of
-- M items, sessions and items in turn (strides that never line up).
-- `wrk -s bench/recommendations.lua <url> -- <N sessions> <M items>`
local sessions, items = 1, 1
local n = 0

function init(args)
  sessions, items = tonumber(args[1]), tonumber(args[2])
end

function request()
  n = n + 1
  local session = (n * 7919) % sessions
  local item = (n * 104729) % items
  return wrk.format(
    "GET", string.format("/api/recommendations?session=s%07d&item=i%05d&k=10", session, item)
  )
end
