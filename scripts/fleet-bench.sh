#!/usr/bin/env bash
# Fleet benchmark: csg-sim (many real agent sessions in one process), real Mosquitto brokers and
# csgctl, all on this machine. Builds the release binaries, then runs scripts/fleet-bench.py.
#
#   scripts/fleet-bench.sh [--agents 10000] [--big 50000] [--mix-minutes 10] [--skip-restart]
#                          [--write] [--keep]
#
# --write puts the table into docs/performance.md (between the fleet markers). Figures, not
# assertions: the test suite checks behaviour; this script measures.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh" >/dev/null
cargo build --quiet --release --manifest-path "$root/Cargo.toml" --bins
# Backtrace capture keeps symbol data resident; a service runs without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
exec python3 "$root/scripts/fleet-bench.py" "$@"
