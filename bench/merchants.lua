-- wrk script: each request asks for one of the first N merchants' figures, in turn.
-- `wrk -s bench/merchants.lua <url> -- <N> <path after /api/merchants/<id>/>`
local paths = {}
local next_path = 0

function init(args)
  local count, rest = tonumber(args[1]), args[2]
  for i = 0, count - 1 do
    paths[i + 1] = string.format("/api/merchants/m%05d/%s", i, rest)
  end
end

function request()
  next_path = next_path % #paths + 1
  return wrk.format("GET", paths[next_path])
end
