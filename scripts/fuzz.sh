#!/usr/bin/env bash
# Fuzzes the front door for a bounded time per target (not part of CI: a cold nightly
# build with sanitizers takes several minutes): the route matcher and path checks, the
# token verifier, the config parser, price expressions. Needs the nightly toolchain; installs cargo-fuzz.
# A crash is saved by libFuzzer under fuzz/artifacts/<target>/: copy it to
# fuzz/regressions/<target>/ so `cargo test` replays it forever after.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(route token config price)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  cp -n fuzz/regressions/"$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
  echo "fuzz.sh: $target for ${seconds}s" >&2
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len=4096
done
