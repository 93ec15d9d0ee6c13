-- HTTP/1.1 pipelining for wrk, as TechEmpower's pipeline.lua does it: every write carries
-- `depth` copies of the request (wrk -s pipeline.lua URL -- 16), and wrk waits for all of
-- their responses before the next write. wrk's latency figures mean nothing in this mode.
init = function(args)
  local depth = tonumber(args[1]) or 1
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end
