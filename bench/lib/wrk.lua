-- wrk script for the bench scenarios (see run_wrk in wrk.sh).
-- With WRK_RANGE_BYTES and WRK_FILE_SIZE in the environment, every request asks for one
-- random range `Range: bytes=a-(a+WRK_RANGE_BYTES-1)` inside the file; otherwise the plain
-- static request (wrk's fast path). At the end it prints one machine-readable line:
--   WRK_RESULT requests=N duration_us=N bytes=N connect=N read=N write=N status=N timeout=N p50_us=N p99_us=N max_us=N
-- (`status` counts answers with a status >= 400).

local range_bytes = tonumber(os.getenv("WRK_RANGE_BYTES") or "")
local file_size = tonumber(os.getenv("WRK_FILE_SIZE") or "")

local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   math.randomseed(os.time() * 1000 + 7919 * (thread_no or 0))
end

if range_bytes and file_size then
   local last = file_size - range_bytes
   function request()
      local a = math.random(0, last)
      return wrk.format(nil, nil, { ["Range"] = "bytes=" .. a .. "-" .. (a + range_bytes - 1) })
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRK_RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
