#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests, which start their own
# redis-server instances, echo upstreams and gateway processes on free loopback ports.
#
# MongoDB tests use TOLLGATE_TEST_MONGODB_URI when set (point it at a real MongoDB);
# otherwise this script starts the MongoDB-wire stand-in (scripts/mongo-standin, needs
# Python >= 3.13 and PyPI) on a free port. Without either they are skipped, and say so.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh --tests

standin_pid=""
trap '[[ -n $standin_pid ]] && kill "$standin_pid" 2>/dev/null; true' EXIT
if [[ -z ${TOLLGATE_TEST_MONGODB_URI:-} ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log=$(mktemp)
  scripts/mongo-standin/run "$port" >"$log" 2>&1 &
  standin_pid=$!
  for _ in $(seq 600); do  # first run installs the stand-in into a venv: allow a minute
    grep -q '^listening' "$log" && break
    kill -0 "$standin_pid" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q '^listening' "$log"; then
    export TOLLGATE_TEST_MONGODB_URI="mongodb://127.0.0.1:$port/?directConnection=true"
    echo "test.sh: MongoDB stand-in on $TOLLGATE_TEST_MONGODB_URI" >&2
  else
    echo "test.sh: could not start the MongoDB stand-in; MongoDB tests will be SKIPPED:" >&2
    cat "$log" >&2
    standin_pid=""
    [[ ${TOLLGATE_REQUIRE_MONGO:-} == 1 ]] && exit 1
  fi
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
