#!/usr/bin/env bash
# Runs the gateway on the embedded default (no other server needed): in-process ledger
# journaled under ./data, a demo upstream on 127.0.0.1:9000, demo tenants abc123 and trial.
# Extra arguments go to `tollgate run` (e.g. --config conf/other.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
exec cargo run --release --bin tollgate -- run --config conf/tollgate.yaml "$@"
