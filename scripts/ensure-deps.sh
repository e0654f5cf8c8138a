#!/usr/bin/env bash
# Installs what building and testing Tollgate needs on a fresh Debian/Ubuntu machine, and
# nothing that is already there:
#   cmake         pingora-core's zlib-ng (libz-ng-sys) builds with it
#   redis-server  the integration tests start private instances (--tests, --loadtest)
#   mosquitto     the alert tests start private MQTT brokers (--tests)
#   curl          scripts/api-check.sh polls and logs in to the admin API (--tests)
#   chromium, chromium-driver  the console's browser tests drive headless Chromium over
#                 WebDriver (--tests)
#   wrk, sqlite3  the load tests' generator and the soak's store lock (--loadtest)
# Usage: scripts/ensure-deps.sh [--tests | --loadtest]
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
if [[ ${1:-} == --tests || ${1:-} == --loadtest ]]; then
  command -v redis-server >/dev/null || need+=(redis-server)
fi
if [[ ${1:-} == --tests ]]; then
  command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
  command -v curl >/dev/null || need+=(curl)
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
if [[ ${1:-} == --loadtest ]]; then
  command -v wrk >/dev/null || need+=(wrk)
  command -v sqlite3 >/dev/null || need+=(sqlite3)
fi
((${#need[@]} == 0)) && exit 0

echo "ensure-deps: installing ${need[*]}" >&2
if [[ $(id -u) == 0 ]]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
  echo "ensure-deps: missing ${need[*]}; install them (apt-get install ${need[*]}) and rerun" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
