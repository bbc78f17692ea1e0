-- wrk script: POST one small chat completion per request and print a machine-readable
-- summary line (BENCH_RESULT ...) that bench/bench.py parses.
--
-- Environment: BENCH_MODEL (default "bench"), BENCH_API_KEY (default "bench-key").

local model = os.getenv("BENCH_MODEL") or "bench"
local key = os.getenv("BENCH_API_KEY") or "bench-key"

wrk.method = "POST"
wrk.body = '{"model": "' .. model .. '", "messages": [{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

function done(summary, latency, requests)
   local e = summary.errors
   local seconds = summary.duration / 1e6
   io.write(string.format(
      "BENCH_RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f "
      .. "connect_err=%d read_err=%d write_err=%d timeout_err=%d status_err=%d\n",
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.timeout, e.status))
end
