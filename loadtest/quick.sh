#!/usr/bin/env bash
# A quick side-by-side measurement: the echo upstream directly vs. the metered path
# (JWT + charge) through the gateway, with the embedded ledger and with Redis. Targets are
# measured alternately, ROUNDS times, in one run: this machine is shared and noisy, so
# compare the ratios, not absolute numbers across runs.
#   loadtest/quick.sh [SECONDS_PER_RUN=10] [ROUNDS=2] [CONNECTIONS=32]
# Needs wrk (apt-get install wrk) and redis-server. Prints a table; writes JSON to
# loadtest/results/quick-<time>.json. The full harness (public baseline, store logging,
# CPU/RSS, criterion benches) is the load-test issue's.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10} rounds=${2:-2} conns=${3:-32}
command -v wrk >/dev/null || { echo "quick.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
scripts/ensure-deps.sh --tests
cargo build --release --quiet --bin tollgate
bin=target/release/tollgate

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

up=$(free_port) rp=$(free_port) ge=$(free_port) gr=$(free_port)
$bin echo --listen 127.0.0.1:$up 2>/dev/null & pids+=($!)
redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
secret=loadtest-secret-0123456789abcdef0123456789
cat > "$work/gw.yaml" <<YAML
threads: 2
auth: { secret: $secret }
services:
  - name: echo
    upstream: http://127.0.0.1:$up
    endpoints:
      - { method: GET, path: "/*", credits: 1 }
tenants:
  - { id: load, credits: 1000000000000 }
YAML
wait_port "$up"; wait_port "$rp"
TOLLGATE_LISTEN=127.0.0.1:$ge TOLLGATE_DATA_DIR=$work/embedded RUST_LOG=warn $bin run --config "$work/gw.yaml" 2>"$work/ge.log" & pids+=($!)
TOLLGATE_LISTEN=127.0.0.1:$gr TOLLGATE_DATA_DIR=$work/redis TOLLGATE_REDIS_URL=redis://127.0.0.1:$rp/ RUST_LOG=warn \
  $bin run --config "$work/gw.yaml" 2>"$work/gr.log" & pids+=($!)
wait_port "$ge"; wait_port "$gr"
token=$(TOLLGATE_JWT_SECRET=$secret $bin token --config "$work/gw.yaml" --tenant load --user loadtest --ttl 86400)

declare -A url=(
  [upstream]="http://127.0.0.1:$up/x"
  [metered-embedded]="http://127.0.0.1:$ge/api/proxy/echo/x"
  [metered-redis]="http://127.0.0.1:$gr/api/proxy/echo/x"
)
order=(upstream metered-embedded metered-redis)
results="loadtest/results/quick-$(date -u +%Y%m%dT%H%M%SZ).json"
echo "[" > "$results"; first=1
for round in $(seq "$rounds"); do
  for target in "${order[@]}"; do
    line=$(TOKEN=$token wrk -t2 -c"$conns" -d"${secs}s" -s loadtest/bearer.lua "${url[$target]}" | tail -n 1)
    ((first)) || echo "," >> "$results"; first=0
    echo "{\"round\":$round,\"target\":\"$target\",\"result\":$line}" >> "$results"
    echo "round $round $target $line" >&2
  done
done
echo "]" >> "$results"
python3 - "$results" <<'PY'
import json, sys, statistics as st
runs = json.load(open(sys.argv[1]))
by = {}
for r in runs: by.setdefault(r["target"], []).append(r["result"])
base = st.median(x["rps"] for x in by["upstream"])
print(f'{"target":18} {"req/s":>9} {"p50 ms":>8} {"p99 ms":>8} {"p99.9 ms":>9} {"non-2xx":>8} {"vs upstream":>12}')
for t, xs in by.items():
    rps = st.median(x["rps"] for x in xs)
    print(f'{t:18} {rps:9.0f} {st.median(x["p50_ms"] for x in xs):8.2f} {st.median(x["p99_ms"] for x in xs):8.2f} '
          f'{st.median(x["p999_ms"] for x in xs):9.2f} {sum(x["non_2xx"] for x in xs):8d} {rps / base:11.0%}')
print(f"(medians of {len(by['upstream'])} alternating rounds; raw runs in {sys.argv[1]})")
PY
