#!/usr/bin/env bash
# Memory under 1,000 concurrent connections (docs/PERFORMANCE.md): the metered Redis path for SECONDS
# (default 60), sampling the gateway's RSS every 5 s; then the same with the store cut off
# (usage goes to the journal) to show the queue and journal bounds hold memory flat.
#   loadtest/soak.sh [SECONDS=60] [CONNECTIONS=1000]
# Prints the RSS samples and min/max.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60} conns=${2:-1000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
source loadtest/common.sh
gp=$(free_port) mp=$(free_port)
TOLLGATE_LISTEN=127.0.0.1:$gp TOLLGATE_METRICS_LISTEN=127.0.0.1:$mp TOLLGATE_DATA_DIR="$work/data" \
  TOLLGATE_ADMIN_LISTEN=127.0.0.1:$(free_port) TOLLGATE_MQTT_EMBEDDED_LISTEN=127.0.0.1:$(free_port) \
  TOLLGATE_REDIS_URL=redis://127.0.0.1:$rp/ RUST_LOG=warn $bin run --config "$work/gw.yaml" 2>"$work/gw.log" &
gw=$!; pids+=($gw)
wait_port "$gp"
token=$(TOLLGATE_JWT_SECRET=$secret $bin token --config "$work/gw.yaml" --tenant load --user soak --ttl 86400)

sample() {  # label
  local label=$1 samples=()
  while kill -0 "$wrk_pid" 2>/dev/null; do
    samples+=("$(awk '/VmRSS/ {print $2}' /proc/$gw/status)")
    sleep 5
  done
  printf '%s RSS (MB) every 5 s: ' "$label"
  printf '%s\n' "${samples[@]}" | awk '{printf "%.1f ", $1/1024; if (min==""||$1<min) min=$1; if ($1>max) max=$1} END {printf "\nmin %.1f MB, max %.1f MB\n", min/1024, max/1024}'
}
TOKEN=$token wrk -t2 -c"$conns" -d"${secs}s" -s loadtest/bearer.lua "http://127.0.0.1:$gp/api/proxy/echo/x" > "$work/wrk1" &
wrk_pid=$!; sample "store up:  "; tail -n 1 "$work/wrk1"
# The embedded store cannot be "cut" from outside; fill its lock instead: an exclusive
# transaction held by sqlite3 makes every batch fail and go to the journal.
if command -v sqlite3 >/dev/null; then
  sqlite3 "$work/data/store.sqlite3" "BEGIN EXCLUSIVE; SELECT 1;" ".shell sleep $((secs + 10))" >/dev/null 2>&1 &
  pids+=($!)
  TOKEN=$token wrk -t2 -c"$conns" -d"${secs}s" -s loadtest/bearer.lua "http://127.0.0.1:$gp/api/proxy/echo/x" > "$work/wrk2" &
  wrk_pid=$!; sample "store down:"; tail -n 1 "$work/wrk2"
  echo "journal: $(du -h "$work/data/usage.journal" | cut -f1)"
else
  echo "(sqlite3 not installed: store-outage soak skipped; apt-get install sqlite3)"
fi
