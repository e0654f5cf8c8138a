#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests, which start their own
# redis-server instances, echo upstreams and gateway processes on free loopback ports.
#
# MongoDB tests use TOLLGATE_TEST_MONGODB_URI when set (point it at a real MongoDB);
# otherwise this script starts the MongoDB-wire stand-in (scripts/mongo-standin, needs
# Python >= 3.13 and PyPI) on a free port. Without either, they fail unless the run opts out
# with TOLLGATE_TEST_SKIP_MONGO=1 (this script sets it when the stand-in cannot start and
# TOLLGATE_REQUIRE_MONGO is not 1), and the end of the run says how many were skipped.
# Extra arguments go to the test runner (e.g. a test name filter); without any, the run ends
# with the layering check and the admin API's contract check (scripts/api-check.sh).
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
    export TOLLGATE_TEST_SKIP_MONGO=1
  fi
fi

# The tests with a MongoDB half (each asks common::mongo_uri()), said before the run so the
# runner's own summary stays the last line.
mongo_tests=$(grep -h -c 'common::mongo_uri()' tests/*.rs cli/tests/*.rs | awk '{ n += $1 } END { print n }')
if [[ -z ${TOLLGATE_TEST_MONGODB_URI:-} && ${TOLLGATE_TEST_SKIP_MONGO:-} == 1 ]]; then
  echo "test.sh: $mongo_tests tests with a MongoDB half will NOT run it (TOLLGATE_TEST_SKIP_MONGO=1)" >&2
else
  echo "test.sh: $mongo_tests tests with a MongoDB half run it against ${TOLLGATE_TEST_MONGODB_URI:-(unset: they fail)}" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# The whole suite (no filter given) also checks the layering and holds the admin API to its
# OpenAPI document (schemathesis, fixed seed: scripts/api-check.sh).
if (($# == 0)); then
  scripts/check-layers.py
  scripts/api-check.sh target/debug/tollgate
fi
