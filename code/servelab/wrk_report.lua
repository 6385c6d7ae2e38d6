-- wrk 4.1 script used by servelab.load.closed_loop (Taught in: chapters/01_latency.ipynb).
--
-- Arguments after "--": max_requests connections method body_file ("" = no body).
-- It (1) sets the request method and body, (2) lets at most max_requests
-- requests be sent, using delay(), and tells Python on stderr once every
-- connection has gone idle so Python can end the run with SIGINT, and
-- (3) prints one JSON line with the counts, errors and the full latency
-- histogram, so Python can rebuild every request's latency.
--
-- wrk API facts this relies on (checked against wrk 4.1.0 src/wrk.c, script.c, stats.c):
-- * delay() is called once per connection at start and once after every response,
--   before that connection sends its next request.
-- * wrk.thread:stop() stops only this thread's event loop; the main thread keeps
--   sleeping for -d unless it gets SIGINT.
-- * latency(i) returns (value_us, count) of the i-th non-empty bin, but each call
--   scans from the minimum: O(bins * range). We read the histogram directly with
--   the LuaJIT FFI (struct layout of src/stats.h), validated against latency.min,
--   latency.max and #latency, and use latency(i) only as a fallback.
-- * Before done(), wrk adds synthetic samples to the histogram (stats_correct,
--   its coordinated-omission correction). Python undoes that.

local max_requests, connections, calls, told = 0, 0, 0, false
local IDLE_MS = 3600 * 1000

function init(args)
   -- args[0] is the URL; ours follow.
   max_requests = tonumber(args[1])
   connections = tonumber(args[2])
   wrk.method = args[3]
   if args[4] ~= nil and args[4] ~= "" then
      local f = assert(io.open(args[4], "rb"))
      wrk.body = f:read("*a")
      f:close()
   end
end

function delay()
   calls = calls + 1
   if calls <= max_requests then
      return 0
   end
   if calls >= max_requests + connections and not told then
      -- Every connection has had its last response: stop and tell Python.
      told = true
      wrk.thread:stop()
      io.stderr:write("servelab-wrk: max_requests reached\n")
      io.stderr:flush()
   end
   return IDLE_MS
end

local function histogram_ffi(latency)
   local ok, ffi = pcall(require, "ffi")
   if not ok then return nil end
   pcall(ffi.cdef, [[
      typedef struct { uint64_t count; uint64_t limit; uint64_t min; uint64_t max; uint64_t data[]; } servelab_wrk_stats;
   ]])
   local s = ffi.cast("servelab_wrk_stats**", latency)[0]
   local lo, hi = tonumber(s.min), tonumber(s.max)
   if lo ~= latency.min or hi ~= latency.max or hi >= tonumber(s.limit) then return nil end
   local bins = {}
   for v = lo, hi do
      local c = tonumber(s.data[v])
      if c > 0 then bins[#bins + 1] = string.format("[%d,%d]", v, c) end
   end
   if #bins ~= #latency then return nil end
   return bins
end

local function histogram_slow(latency)
   local bins = {}
   for i = 1, #latency do
      local v, c = latency(i)
      bins[#bins + 1] = string.format("[%d,%d]", v, c)
   end
   return bins
end

function done(summary, latency, requests)
   local bins, source = nil, "ffi"
   if #latency > 0 then
      bins = histogram_ffi(latency)
   end
   if bins == nil then
      bins, source = histogram_slow(latency), "latency(i)"
   end
   local e = summary.errors
   io.write(string.format(
      '\nSERVELAB_WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"histogram_source":"%s","histogram":[%s]}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, source, table.concat(bins, ",")))
   io.flush()
end
