#!/usr/bin/env bash
# Quick start: a private Mosquitto and one agent with a development config, driven by csgctl.
#
#   scripts/dev.sh            start both, show a few csgctl calls, then watch until Ctrl-C
#   scripts/dev.sh --once     the same, but exit after the demo (used to check the script)
#
# Everything lives in a temporary directory and stops on exit. The broker listens on
# 127.0.0.1:${CSG_DEV_PORT:-18830} so it never clashes with a system Mosquitto.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${CSG_DEV_PORT:-18830}
once=${1:-}

"$root/scripts/install-deps.sh" >/dev/null
cargo build --quiet --manifest-path "$root/Cargo.toml" --bins
# Where cargo put them: target/, unless CARGO_TARGET_DIR moved it.
bin_dir=${CARGO_TARGET_DIR:-$root/target}/debug
agent="$bin_dir/csg-agent"
csgctl="$bin_dir/csgctl"
# The test harness's broker start-up (tests/src/bin/csg-bed.rs): private state, waits until
# Mosquitto is running.
bed="$bin_dir/csg-bed"

dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$bed" broker stop "$dir/broker" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"$bed" broker start "$dir/broker" --port "$port" >/dev/null

cat >"$dir/agent.toml" <<CONF
[identity]
group_id = "GID_csg"
instance_id = "gw-dev"
[mqtt]
url = "mqtt://127.0.0.1:$port"
reconnect_min_ms = 200
reconnect_max_ms = 5000
[agent]
heartbeat_interval_s = 5
log = "info"
CONF
"$agent" --config "$dir/agent.toml" 2>"$dir/agent.log" &
pids+=($!)

export CSG_BROKER="mqtt://127.0.0.1:$port"
echo "broker: $CSG_BROKER   agent: gw-dev   logs: $dir"
run() { echo "\$ csgctl $*"; "$csgctl" "$@"; echo; }
run call gw-dev sys.ping --timeout 10s
run call gw-dev sys.info
run call gw-dev sys.status
if [ "$once" = "--once" ]; then
  run watch gw-dev --json --count 2
  exit 0
fi
echo "In another terminal: CSG_BROKER=$CSG_BROKER $csgctl call gw-dev sys.ping"
echo "Watching the fleet (Ctrl-C stops broker and agent):"
"$csgctl" watch
