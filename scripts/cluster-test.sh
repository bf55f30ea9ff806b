#!/usr/bin/env bash
# csg-agent and csgctl on a real 3-node MQTT broker cluster: rmqttd (crates.io) with its raft
# cluster plugin, all on loopback. Builds the broker once into $RMQTT_ROOT (default
# /var/tmp/rmqtt; about 20 minutes on 2 cores, which is why this is not part of scripts/test.sh
# or CI), builds csg-agent and csgctl, then runs scripts/cluster/cluster-test.py.
#
#   scripts/cluster-test.sh [--debug] [--agents 5] [--calls 200] [--keep]
#
# --debug uses the debug binaries (no release build). Exits non-zero when any check fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
args=()
for a in "$@"; do
    case "$a" in
    --debug) profile=debug ;;
    *) args+=("$a") ;;
    esac
done

"$root/scripts/install-deps.sh" >/dev/null
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
"$root/scripts/cluster/build-rmqttd.sh" | tee "$build_log"
build_seconds=$(sed -n 's/^rmqttd .* built in \([0-9]*\) s$/\1 s/p' "$build_log")
if [[ -z "$build_seconds" && -f "${RMQTT_ROOT:-/var/tmp/rmqtt}/build-seconds" ]]; then
    build_seconds="$(cat "${RMQTT_ROOT:-/var/tmp/rmqtt}/build-seconds") s (an earlier run)"
fi

cargo_args=(--quiet --manifest-path "$root/Cargo.toml" -p csg-agent -p csg-console --bins)
[[ $profile == release ]] && cargo_args+=(--release)
cargo build "${cargo_args[@]}"
export CSG_BIN_DIR="${CARGO_TARGET_DIR:-$root/target}/$profile"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
exec python3 "$root/scripts/cluster/cluster-test.py" --build-seconds "$build_seconds" "${args[@]}"
