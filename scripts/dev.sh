#!/usr/bin/env bash
# Quick start: a private Mosquitto, one agent with a development config driven by csgctl, and
# the console service csg-consoled on SQLite with its HTTP API.
#
#   scripts/dev.sh            start them, show a few csgctl calls, print the API URL and a
#                             token, then watch until Ctrl-C
#   scripts/dev.sh --once     the same, but exit after the demo, once the API shows the agent
#                             online (used to check the script)
#
# Everything lives in a temporary directory and stops on exit. The broker listens on
# 127.0.0.1:${CSG_DEV_PORT:-18830} and the API on 127.0.0.1:${CSG_DEV_API_PORT:-18080}, so
# neither clashes with a system Mosquitto or console.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${CSG_DEV_PORT:-18830}
api_port=${CSG_DEV_API_PORT:-18080}
once=${1:-}

"$root/scripts/install-deps.sh" >/dev/null
cargo build --quiet --manifest-path "$root/Cargo.toml" --bins
# Where cargo put them: target/, unless CARGO_TARGET_DIR moved it.
bin_dir=${CARGO_TARGET_DIR:-$root/target}/debug
agent="$bin_dir/csg-agent"
csgctl="$bin_dir/csgctl"
consoled="$bin_dir/csg-consoled"
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

# The console service: SQLite in the temporary directory, the API on loopback.
cat >"$dir/console.toml" <<CONF
[identity]
group_id = "GID_console"
console_id = "console-dev"
[mqtt]
url = "mqtt://127.0.0.1:$port"
[http]
listen = "127.0.0.1:$api_port"
[store]
url = "sqlite://$dir/console/console.db"
[fleet]
flush_ms = 200
CONF
token=$("$consoled" token create --config "$dir/console.toml" --name dev --scope admin)
# For curl: the token in a header file, not on a command line.
printf 'Authorization: Bearer %s\n' "$token" >"$dir/auth.header"
"$consoled" --config "$dir/console.toml" 2>"$dir/console.log" &
pids+=($!)
api="http://127.0.0.1:$api_port"

export CSG_BROKER="mqtt://127.0.0.1:$port"
echo "broker: $CSG_BROKER   agent: gw-dev   logs: $dir"
echo "API: $api   token: $token"
echo "  curl -H @$dir/auth.header $api/v1/instances"
run() { echo "\$ csgctl $*"; "$csgctl" "$@"; echo; }
run call gw-dev sys.ping --timeout 10s
run call gw-dev sys.info
run call gw-dev sys.status
if [ "$once" = "--once" ]; then
  run watch gw-dev --json --count 2
  # The console's API sees the agent online (the agent's presence plus one store flush).
  echo "\$ curl -H @$dir/auth.header $api/v1/instances/gw-dev"
  for _ in $(seq 50); do
    if body=$(curl -sS --fail --max-time 2 -H "@$dir/auth.header" "$api/v1/instances/gw-dev" 2>/dev/null) &&
      grep -q '"presence":{"state":"online"' <<<"$body"; then
      echo "$body"
      exit 0
    fi
    sleep 0.2
  done
  echo "dev.sh: the console API did not show gw-dev online within 10 s" >&2
  curl -sS --max-time 2 -H "@$dir/auth.header" "$api/v1/instances/gw-dev" >&2 || true
  tail -n 20 "$dir/console.log" >&2
  exit 1
fi
echo "In another terminal: CSG_BROKER=$CSG_BROKER $csgctl call gw-dev sys.ping"
echo "                 or: curl -H @$dir/auth.header $api/v1/instances/gw-dev"
echo "Watching the fleet (Ctrl-C stops broker and agent):"
"$csgctl" watch
