#!/usr/bin/env bash
# The console service's OpenAPI document checked by a third-party tool against the live
# service: schemathesis (PyPI, pinned, in a private virtualenv) generates requests from
# /v1/openapi.json for every operation and checks every answer against the document: no 5xx,
# status codes, content types and bodies as documented. It runs against a real csg-consoled on
# SQLite, a private Mosquitto and one agent that heartbeats.
#
#   scripts/api-contract-test.sh [--examples N]     (default 20 per operation)
#
# Exits non-zero with the failures printed when an answer breaks the document, or when a daemon
# does not start.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
examples=20
while [ $# -gt 0 ]; do
  case $1 in
    --examples) examples=$2; shift 2 ;;
    *) echo "usage: $0 [--examples N]" >&2; exit 2 ;;
  esac
done

SCHEMATHESIS_VERSION=4.32.5
venv=${CSG_SCHEMATHESIS_VENV:-$root/target/schemathesis-$SCHEMATHESIS_VERSION}
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet --manifest-path "$root/Cargo.toml" -p csg-consoled -p csg-agent -p csg-e2e --bins
bin_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}/debug
bed="$bin_dir/csg-bed"

dir=$(mktemp -d)
pids=()
fail() {
  for f in "$dir"/*.log; do
    [ -s "$f" ] || continue
    printf '\n----- last lines of %s -----\n' "$(basename "$f")" >&2
    tail -n 30 "$f" >&2
  done
  echo "api-contract-test: FAILED: $*" >&2
  exit 1
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$bed" broker stop "$dir/broker" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

read -r mqtt_port http_port <<<"$("$bed" free-ports 2)"
"$bed" broker start "$dir/broker" --port "$mqtt_port" >/dev/null || fail "Mosquitto did not start"

cat >"$dir/agent.toml" <<CONF
[identity]
group_id = "GID_csg"
instance_id = "gw-contract"
[mqtt]
url = "mqtt://127.0.0.1:$mqtt_port"
[agent]
heartbeat_interval_s = 1
CONF
"$bin_dir/csg-agent" --config "$dir/agent.toml" 2>"$dir/agent.log" &
pids+=($!)

cat >"$dir/console.toml" <<CONF
[identity]
group_id = "GID_console"
console_id = "console-contract"
[mqtt]
url = "mqtt://127.0.0.1:$mqtt_port"
[http]
listen = "127.0.0.1:$http_port"
[store]
url = "sqlite://$dir/console.db"
CONF
consoled="$bin_dir/csg-consoled"
token=$("$consoled" token create --config "$dir/console.toml" --name contract --scope admin --scope audit) ||
  fail "token create"
CSG_LOG=warn "$consoled" --config "$dir/console.toml" 2>"$dir/consoled.log" &
pids+=($!)
base="http://127.0.0.1:$http_port"
for _ in $(seq 100); do
  curl -fsS -H "Authorization: Bearer $token" "$base/v1/instances/gw-contract" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || fail "csg-consoled exited at start"
  sleep 0.2
done
curl -fsS -H "Authorization: Bearer $token" "$base/v1/instances/gw-contract" >/dev/null ||
  fail "the agent never appeared through the API"

# Checks: every answer documented (status, content type, headers, body schema) and no 5xx.
# Left out: positive_data_acceptance and negative_data_rejection, which judge the service by
# what the document cannot say (an instance id in a path is valid by its pattern yet unknown:
# 404 is the right answer; a cursor is an opaque string the service alone can make).
out=${CSG_CONTRACT_OUT:-$(dirname "$venv")/api-contract-test.out}
echo "schemathesis $SCHEMATHESIS_VERSION: $examples examples per operation against $base (report: $out)"
# From the work directory: schemathesis keeps a cache in .schemathesis/ under its working
# directory, which belongs to this run, not to the checkout.
# One worker: with two, hypothesis parses its lambdas' source in both threads at once, and
# Python 3.11's AST constructor keeps its recursion depth per interpreter, not per thread
# (CPython gh-106905): a run crashed in the tool with "AST constructor recursion depth
# mismatch" while every answer conformed.
(cd "$dir" && "$venv/bin/st" --config-file "$root/scripts/schemathesis.toml" run "$base/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$examples" \
  --seed "${CSG_SCHEMATHESIS_SEED:-20261205}" \
  --generation-database none \
  --request-timeout 30 \
  --workers 1 \
  --no-color) >"$out" 2>&1 || status=$?
if [ "${status:-0}" -ne 0 ]; then
  grep -E '^(_+ |[0-9]+\. |- |    curl )' "$out" | head -n 200 >&2 || true
  tail -n 40 "$out" >&2
  fail "schemathesis found answers that break the document (exit $status; whole report: $out)"
fi
tail -n 25 "$out"
echo "api-contract-test: OK"
