#!/usr/bin/env bash
# Tollgate's load test: one command, one run, targets measured ALTERNATELY round by round
# (this machine is shared and noisy: compare ratios within a run, never across runs).
#
#   loadtest/run.sh [SECONDS_PER_RUN=10] [ROUNDS=3] [CONNECTIONS=32]
#
# Targets (each gateway a separate release process, 2 worker threads):
#   upstream          the echo upstream directly (`tollgate echo`)
#   bare-pingora      a bare Pingora pass-through to the same upstream (examples/bare_proxy.rs)
#   public            a public (unmetered) route through the gateway: the baseline
#   metered-embedded  JWT + charge on the embedded ledger, usage logged to the embedded store
#   metered-expression  metered-embedded priced by a CEL expression over the query
#                     (`1 + int(request.query.pages)`) instead of an integer
#   metered-redis     JWT + one Redis Lua charge, usage logged to the embedded store,
#                     a credit-success MQTT notice per charge (the default)
#   metered-redis-quiet  the same with credit-success notices off
#   metered-redis-lease  metered-redis with leased credits (ledger.lease): no round trip
#                     while the replica's slice lasts
#   metered-cluster   metered-redis on a Redis Cluster of three masters (per-call charges)
#   metered-redis-settled  metered-redis settled from the answer: a reserve of 5 charged,
#                     the JSON body read (`response.body.body_bytes + 1`) and the charge
#                     settled at 1 (a second Lua round trip after the answer)
#   metered-mongo     as metered-redis, usage logged to MongoDB; only when
#                     TOLLGATE_LOADTEST_MONGODB_URI points at a real MongoDB
#   baseline-redis    metered-redis run by another build of tollgate, to compare a change
#                     with what it changed side by side: only when
#                     TOLLGATE_LOADTEST_BASELINE is the path of that binary
# Then a moderate-load pass (4 connections) for the latency the metering adds.
# Prints a table (medians over rounds; gateway CPU and peak RSS) and writes JSON to
# loadtest/results/run-<time>.json. Installs wrk and redis-server through apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10} rounds=${2:-3} conns=${3:-32}
source loadtest/common.sh

declare -A url pid
start_gateway() {  # name, extra env... (CONFIG=file picks another config)
  local name=$1; shift
  local port mport; port=$(free_port); mport=$(free_port)
  env TOLLGATE_LISTEN=127.0.0.1:$port TOLLGATE_METRICS_LISTEN=127.0.0.1:$mport \
    TOLLGATE_ADMIN_LISTEN=127.0.0.1:$(free_port) TOLLGATE_MQTT_EMBEDDED_LISTEN=127.0.0.1:$(free_port) \
    TOLLGATE_DATA_DIR="$work/$name" RUST_LOG=warn "$@" \
    "${BIN:-$bin}" run --config "${CONFIG:-$work/gw.yaml}" 2>"$work/$name.log" &
  pid[$name]=$!; pids+=($!)
  wait_port "$port"
  url[$name]="http://127.0.0.1:$port"
}
start_gateway embedded
start_gateway redis TOLLGATE_REDIS_URL=redis://127.0.0.1:$rp/
{ cat "$work/gw.yaml"; echo "ledger: { lease: { enabled: true } }"; } > "$work/gw-lease.yaml"
CONFIG="$work/gw-lease.yaml" start_gateway redis-lease TOLLGATE_REDIS_URL=redis://127.0.0.1:$rp/
start_gateway cluster TOLLGATE_REDIS_CLUSTER_NODES="$cluster_nodes"
bp=$(free_port)
target/release/examples/bare_proxy 127.0.0.1:"$bp" 127.0.0.1:"$up" 2 2>"$work/bare.log" & pids+=($!)
bare_pid=$!
wait_port "$bp"
# The same without credit-success notices: what per-charge MQTT costs.
{ cat "$work/gw.yaml"; echo "alerts: { credit_success: false }"; } > "$work/gw-quiet.yaml"
CONFIG="$work/gw-quiet.yaml" start_gateway redis-quiet TOLLGATE_REDIS_URL=redis://127.0.0.1:$rp/
order=(upstream bare-pingora public metered-embedded metered-expression metered-redis metered-redis-settled metered-redis-quiet metered-redis-lease metered-cluster)
if [[ -n ${TOLLGATE_LOADTEST_BASELINE:-} ]]; then
  BIN=$TOLLGATE_LOADTEST_BASELINE start_gateway baseline TOLLGATE_REDIS_URL=redis://127.0.0.1:$rp/
  order+=(baseline-redis)
fi
if [[ -n ${TOLLGATE_LOADTEST_MONGODB_URI:-} ]]; then
  start_gateway mongo TOLLGATE_REDIS_URL=redis://127.0.0.1:$rp/ TOLLGATE_MONGODB_URI="$TOLLGATE_LOADTEST_MONGODB_URI" \
    TOLLGATE_MONGODB_DB=tollgate_loadtest_$$
  order+=(metered-mongo)
fi
token=$(TOLLGATE_JWT_SECRET=$secret $bin token --config "$work/gw.yaml" --tenant load --user loadtest --ttl 86400)

target_url() {
  case $1 in
    upstream) echo "http://127.0.0.1:$up/x" ;;
    bare-pingora) echo "http://127.0.0.1:$bp/x" ;;
    public) echo "${url[embedded]}/api/proxy/open/x" ;;
    metered-embedded) echo "${url[embedded]}/api/proxy/echo/x" ;;
    metered-expression) echo "${url[embedded]}/api/proxy/priced/x?pages=4" ;;
    metered-redis-settled) echo "${url[redis]}/api/proxy/settled/x" ;;
    metered-redis) echo "${url[redis]}/api/proxy/echo/x" ;;
    metered-redis-quiet) echo "${url[redis-quiet]}/api/proxy/echo/x" ;;
    metered-redis-lease) echo "${url[redis-lease]}/api/proxy/echo/x" ;;
    metered-cluster) echo "${url[cluster]}/api/proxy/echo/x" ;;
    metered-mongo) echo "${url[mongo]}/api/proxy/echo/x" ;;
    baseline-redis) echo "${url[baseline]}/api/proxy/echo/x" ;;
  esac
}
target_pid() {
  case $1 in
    upstream) echo "${pids[0]}" ;;
    bare-pingora) echo "$bare_pid" ;;
    public|metered-embedded|metered-expression) echo "${pid[embedded]}" ;;
    metered-redis|metered-redis-settled) echo "${pid[redis]}" ;;
    metered-redis-quiet) echo "${pid[redis-quiet]}" ;;
    metered-redis-lease) echo "${pid[redis-lease]}" ;;
    metered-cluster) echo "${pid[cluster]}" ;;
    metered-mongo) echo "${pid[mongo]}" ;;
    baseline-redis) echo "${pid[baseline]}" ;;
  esac
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
tick=$(getconf CLK_TCK)

results="loadtest/results/run-$(date -u +%Y%m%dT%H%M%SZ).json"
mkdir -p loadtest/results
echo "[" > "$results"; first=1
measure() {  # phase, round, target, connections, threads
  local phase=$1 round=$2 target=$3 c=$4 t=$5 p before after line
  p=$(target_pid "$target"); before=$(cpu_ticks "$p")
  line=$(TOKEN=$token wrk -t"$t" -c"$c" -d"${secs}s" -s loadtest/bearer.lua "$(target_url "$target")" | tail -n 1)
  after=$(cpu_ticks "$p")
  local cpu; cpu=$(python3 -c "print(round(($after - $before) / $tick / $secs * 100, 1))")
  ((first)) || echo "," >> "$results"; first=0
  echo "{\"phase\":\"$phase\",\"round\":$round,\"target\":\"$target\",\"connections\":$c,\"cpu_percent\":$cpu,\"peak_rss_kb\":$(peak_rss_kb "$p"),\"result\":$line}" >> "$results"
  echo "$phase round $round $target: $line cpu=${cpu}%" >&2
}
for round in $(seq "$rounds"); do
  for target in "${order[@]}"; do measure throughput "$round" "$target" "$conns" 2; done
done
moderate=(public metered-redis metered-redis-settled metered-redis-lease)
[[ -n ${TOLLGATE_LOADTEST_BASELINE:-} ]] && moderate+=(baseline-redis)
for round in $(seq "$rounds"); do
  for target in "${moderate[@]}"; do measure moderate "$round" "$target" 4 1; done
done
echo "]" >> "$results"

python3 - "$results" "$secs" "$rounds" "$conns" <<'PY'
import json, sys, statistics as st
runs = json.load(open(sys.argv[1]))
def table(phase):
    by = {}
    for r in runs:
        if r["phase"] == phase: by.setdefault(r["target"], []).append(r)
    base = st.median(x["result"]["rps"] for x in by["public"])
    print(f'{"target":18} {"req/s":>8} {"p50 ms":>7} {"p99 ms":>7} {"p99.9 ms":>8} {"non-2xx":>7} {"CPU %":>6} {"RSS MB":>7} {"vs public":>9}')
    for t, xs in by.items():
        rps = st.median(x["result"]["rps"] for x in xs)
        med = lambda k: st.median(x["result"][k] for x in xs)
        cpu = st.median(x["cpu_percent"] for x in xs)
        rss = max(x["peak_rss_kb"] for x in xs) / 1024
        print(f'{t:18} {rps:8.0f} {med("p50_ms"):7.2f} {med("p99_ms"):7.2f} {med("p999_ms"):8.2f} '
              f'{sum(x["result"]["non_2xx"] + x["result"]["socket_errors"] for x in xs):7d} {cpu:6.0f} {rss:7.1f} {rps / base:9.0%}')
    return by
print(f"throughput: {sys.argv[4]} connections, {sys.argv[2]} s per run, medians of {sys.argv[3]} alternating rounds")
table("throughput")
print("\nmoderate load: 4 connections")
by = table("moderate")
added = st.median(x["result"]["p99_ms"] for x in by["metered-redis"]) - st.median(x["result"]["p99_ms"] for x in by["public"])
print(f"\np99 added by metering (Redis) at moderate load: {added:.2f} ms")
added = st.median(x["result"]["p99_ms"] for x in by["metered-redis-lease"]) - st.median(x["result"]["p99_ms"] for x in by["public"])
print(f"p99 added by metering (Redis, leased credits) at moderate load: {added:.2f} ms")
added = st.median(x["result"]["p99_ms"] for x in by["metered-redis-settled"]) - st.median(x["result"]["p99_ms"] for x in by["metered-redis"])
print(f"p99 added by settling from the answer (Redis) at moderate load: {added:.2f} ms")
print(f"raw runs: {sys.argv[1]}")
PY
