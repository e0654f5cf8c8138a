#!/usr/bin/env bash
# Contract check of the admin API: runs schemathesis (property-based API testing) against
# the OpenAPI document the control plane serves at /openapi.json, with every check on,
# so the document and the server are held to each other: undocumented status codes and
# content types, responses that break their schema, valid requests the server refuses,
# invalid ones it accepts, 5xx, ignored auth.
#
# Usage: scripts/api-check.sh [TOLLGATE_BINARY]     (default: target/debug/tollgate)
#
# End to end, touching nothing in the repository:
#   1. schemathesis (pinned) in a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/,
#      installed from PyPI only when missing;
#   2. a copy of the binary, a temp data dir and a config derived from conf/tollgate.yaml
#      (the embedded default of scripts/run.sh) with every listener on a free loopback port;
#   3. `create-admin`, start `tollgate run`, poll /openapi.json until it answers (deadline);
#   4. log in through POST /auth/login and run schemathesis with the admin's bearer token,
#      a fixed seed and a bounded number of examples per operation (reproducible, minutes);
#   5. stop the gateway; exit non-zero when schemathesis found failures (or anything broke).
#
# scripts/api-check.toml lists the only exceptions, each justified: rules a JSON Schema cannot
# state (ids that must exist, uniqueness across two fields, DNS, an order between two
# parameters).
#
# Environment knobs (defaults are the reproducible run):
#   API_CHECK_SEED          hypothesis seed                          (20261202)
#   API_CHECK_MAX_EXAMPLES  test cases per operation and phase       (50)
#   API_CHECK_REPORT_DIR    where JUnit/NDJSON reports and logs go   (a new dir under /tmp)
#   API_CHECK_PYTHON        python >= 3.10 for the venv               (python3)
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5   # pinned: checks and their codes (ST1xx/ST2xx) change between releases
SEED=${API_CHECK_SEED:-20261202}
MAX_EXAMPLES=${API_CHECK_MAX_EXAMPLES:-50}
READY_DEADLINE_SECS=60

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$repo/target/debug/tollgate}
[[ $bin = /* ]] || bin=$PWD/$bin
[[ -x $bin ]] || { echo "api-check: no executable tollgate binary at $bin (build it first)" >&2; exit 2; }
python=${API_CHECK_PYTHON:-python3}

log() { echo "api-check: $*" >&2; }

# --- 1. schemathesis, pinned, in a cached venv ------------------------------------------
venv=${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/schemathesis-$SCHEMATHESIS_VERSION
if ! "$venv/bin/st" --version 2>/dev/null | grep -qx "st, version $SCHEMATHESIS_VERSION"; then
  log "installing schemathesis==$SCHEMATHESIS_VERSION into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
st=$venv/bin/st

# --- 2. a private gateway: own binary copy, data dir, config and ports -------------------
work=$(mktemp -d /tmp/tollgate-api-check.XXXXXX)
report_dir=${API_CHECK_REPORT_DIR:-$work/report}
mkdir -p "$report_dir"
gw_pid=
stop_gateway() {
  # SIGINT: Pingora's fast shutdown (SIGTERM would drain for grace_period_secs).
  if [[ -n $gw_pid ]] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -INT "$gw_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$gw_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  gw_pid=
}
cleanup() {
  stop_gateway
  # Keep the reports and the gateway log; drop the binary copy, data dir and config.
  if [[ $report_dir == "$work"/* ]]; then
    rm -rf "$work/tollgate" "$work/data" "$work/tollgate.yaml"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# A copy, so a rebuild of target/ during the run does not swap the binary under us.
cp "$bin" "$work/tollgate"

# Five free loopback ports: gateway, admin API, metrics, embedded MQTT broker, demo upstream.
read -r p_gw p_admin p_metrics p_mqtt p_echo < <("$python" -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')

# conf/tollgate.yaml (what scripts/run.sh runs) with the demo upstream moved off its fixed
# 127.0.0.1:9000 (it has no environment override); the rest comes from TOLLGATE_* below.
sed "s#127\.0\.0\.1:9000#127.0.0.1:$p_echo#g" "$repo/conf/tollgate.yaml" >"$work/tollgate.yaml"
grep -q "127.0.0.1:$p_echo" "$work/tollgate.yaml" || { log "conf/tollgate.yaml has no demo upstream on 127.0.0.1:9000 any more"; exit 2; }

export TOLLGATE_LISTEN=127.0.0.1:$p_gw
export TOLLGATE_ADMIN_LISTEN=127.0.0.1:$p_admin
export TOLLGATE_METRICS_LISTEN=127.0.0.1:$p_metrics
export TOLLGATE_MQTT_EMBEDDED_LISTEN=127.0.0.1:$p_mqtt
export TOLLGATE_DATA_DIR=$work/data
# Embedded ledger, SQLite store and in-process broker whatever the caller's environment says.
export TOLLGATE_REDIS_URL= TOLLGATE_MONGODB_URI= TOLLGATE_MQTT_URL=
admin=http://127.0.0.1:$p_admin

# --- 3. the first admin (CLI only, by design), then start and wait for readiness ----------
admin_email=api-check@example.com
admin_password=$("$python" -c 'import secrets; print(secrets.token_urlsafe(24))')
mkdir -p "$work/data"
printf '%s\n' "$admin_password" |
  "$work/tollgate" create-admin --config "$work/tollgate.yaml" --email "$admin_email" >/dev/null

"$work/tollgate" run --config "$work/tollgate.yaml" >"$report_dir/gateway.log" 2>&1 &
gw_pid=$!
deadline=$((SECONDS + READY_DEADLINE_SECS))
until curl -sf -o /dev/null --max-time 2 "$admin/openapi.json"; do
  if ! kill -0 "$gw_pid" 2>/dev/null; then
    log "the gateway exited during start-up; its log:"; tail -n 30 "$report_dir/gateway.log" >&2; exit 2
  fi
  if ((SECONDS >= deadline)); then
    log "admin API not ready within ${READY_DEADLINE_SECS}s; gateway log:"; tail -n 30 "$report_dir/gateway.log" >&2; exit 2
  fi
  sleep 0.2
done
log "gateway up (pid $gw_pid), admin API on $admin"

# --- 4. log in and run schemathesis -------------------------------------------------------
login=$("$python" -c 'import json,sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' \
  "$admin_email" "$admin_password")
token=$(curl -sf --max-time 30 "$admin/auth/login" -H 'content-type: application/json' -d "$login" |
  "$python" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
[[ -n $token ]] || { log "login as $admin_email failed"; exit 2; }

common=(
  --checks all
  --seed "$SEED"
  --max-examples "$MAX_EXAMPLES"
  # One worker: with the seed, the same requests in the same order against the same state.
  --workers 1
  # Keep testing an operation after its first failure, so one failure class cannot hide
  # another in the same operation.
  --continue-on-failure
  # No example database: nothing is written to (or replayed from) the working directory.
  --generation-database none
  --request-timeout 30
  --no-color
)

status=0
# schemathesis writes nothing else; run it from the temp dir all the same.
cd "$work"

log "schemathesis $SCHEMATHESIS_VERSION, seed $SEED, $MAX_EXAMPLES examples per operation"
# Excluded from the logged-in run:
#   PATCH /admin/users/{id}  can disable, demote or move any user, and schemathesis reuses
#     ids it saw in responses (GET /admin/users lists the tester's own account). Any such
#     change revokes every token of that user issued before it (extract.rs, Caller), so one
#     PATCH of the tester's own id would turn the rest of the run into 401s. It is tested
#     on its own below, with a token that no PATCH can revoke.
"$st" --config-file "$repo/scripts/api-check.toml" run "$admin/openapi.json" "${common[@]}" \
  -H "Authorization: Bearer $token" \
  --exclude-name 'PATCH /admin/users/{id}' \
  --report junit,ndjson --report-dir "$report_dir/main" \
  | tee "$report_dir/main.txt" || status=1

# PATCH /admin/users/{id} alone, with an admin token minted by `tollgate token` for an id
# that has no account: such tokens stand on their signature (no stored user to disable or
# demote), so the operation can be fuzzed freely. Run last: it may disable the logged-in
# admin, whose token is no longer needed.
minted=$("$work/tollgate" token --config "$work/tollgate.yaml" --tenant operators \
  --user api-check-minted --role admin --ttl 3600)
"$st" --config-file "$repo/scripts/api-check.toml" run "$admin/openapi.json" "${common[@]}" \
  -H "Authorization: Bearer $minted" \
  --include-name 'PATCH /admin/users/{id}' \
  --report junit,ndjson --report-dir "$report_dir/users-patch" \
  | tee "$report_dir/users-patch.txt" || status=1

# --- 5. stop and report ---------------------------------------------------------------------
stop_gateway
log "reports and the gateway log: $report_dir"
if ((status != 0)); then
  log "FAILED: schemathesis found failures (see above and $report_dir)"
else
  log "passed"
fi
exit "$status"
