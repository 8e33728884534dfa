-- wrk script: the sessions' requests (recommendations.lua) at a steady rate (paced.lua).
-- `wrk -s bench/recommendations_paced.lua <url> -- <N sessions> <M items> <ms between
-- requests of one thread>`
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "paced.lua")
local pace = init
dofile(here .. "recommendations.lua")
local sessions = init

function init(args)
  sessions(args)
  pace({[0] = args[0], args[3]})
end
