-- wrk script: sends every request with the bearer token in $TOKEN (if set) and the method in
-- $METHOD, and prints one JSON line of results for quick.sh to tabulate. (wrk runs `done`
-- in its own Lua state, so status counts come from summary.errors.status: non-2xx/3xx.)
local token = os.getenv("TOKEN")
wrk.method = os.getenv("METHOD") or "GET"
if token and #token > 0 then
  wrk.headers["Authorization"] = "Bearer " .. token
end

done = function(summary, latency)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"socket_errors":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
