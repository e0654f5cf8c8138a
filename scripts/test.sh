#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests, which start their own
# redis-server instances, echo upstreams and gateway processes on free loopback ports.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh --tests
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
