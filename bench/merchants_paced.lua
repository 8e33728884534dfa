-- wrk script: the merchants' requests (merchants.lua) at a steady rate (paced.lua).
-- `wrk -s bench/merchants_paced.lua <url> -- <N> <path after /api/merchants/<id>/> <ms between
-- requests of one thread>`
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "paced.lua")
local pace = init
dofile(here .. "merchants.lua")
local merchants = init

function init(args)
  merchants(args)
  pace({[0] = args[0], args[3]})
end
