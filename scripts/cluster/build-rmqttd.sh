#!/usr/bin/env bash
# Builds rmqttd (the rmqtt broker, crates.io crate `rmqttd`) with its raft cluster plugin into
# $RMQTT_ROOT/bin/rmqttd, outside the repository. Nothing of rmqtt is kept in this repository: the
# crate is fetched by cargo from the registry and built as published, with one change: the bridge,
# storage and hook plugins are left out of the binary. They pull in librdkafka (a C build that
# needs cmake), Pulsar, NATS and Redis clients, and nothing in the cluster test uses them.
# The versions of everything that stays are those of the crate's own Cargo.lock.
#
# Usage: scripts/cluster/build-rmqttd.sh        (prints the build time in seconds on its last line)
set -euo pipefail

RMQTT_VERSION="${RMQTT_VERSION:-0.24.0}"
RMQTT_ROOT="${RMQTT_ROOT:-/var/tmp/rmqtt}"
here="$(cd "$(dirname "$0")" && pwd)"

if [[ -x "$RMQTT_ROOT/bin/rmqttd" ]] && "$RMQTT_ROOT/bin/rmqttd" --version 2>/dev/null | grep -q "$RMQTT_VERSION"; then
    echo "rmqttd $RMQTT_VERSION already built at $RMQTT_ROOT/bin/rmqttd"
    exit 0
fi

start=$(date +%s)
# handy-grpc (rmqtt's inter-node gRPC) runs protoc at build time.
if ! command -v protoc >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { echo "protoc is missing: install protobuf-compiler" >&2; exit 1; }
    apt-get install -y --no-install-recommends protobuf-compiler >/dev/null
fi
mkdir -p "$RMQTT_ROOT/fetch/src" "$RMQTT_ROOT/bin"

# A throw-away manifest that depends on the published crate, so cargo itself downloads and
# unpacks it (rmqttd has no library target: cargo only warns and still fetches it).
cat >"$RMQTT_ROOT/fetch/Cargo.toml" <<TOML
[package]
name = "rmqttd-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
rmqttd = "=$RMQTT_VERSION"
TOML
echo 'fn main() {}' >"$RMQTT_ROOT/fetch/src/main.rs"
(cd "$RMQTT_ROOT/fetch" && cargo fetch --quiet)
# cargo metadata leaves a dependency without a library out, so find the unpacked crate itself.
crate_dir=""
for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rmqttd-$RMQTT_VERSION"; do
    [[ -f "$d/Cargo.toml" ]] && crate_dir="$d" && break
done
[[ -n "$crate_dir" ]] || { echo "rmqttd $RMQTT_VERSION was not unpacked by cargo fetch" >&2; exit 1; }

src="$RMQTT_ROOT/src/rmqttd-$RMQTT_VERSION"
rm -rf "$src"
mkdir -p "$RMQTT_ROOT/src"
cp -r "$crate_dir" "$src"
chmod -R u+w "$src"
python3 "$here/trim-rmqttd.py" "$src/Cargo.toml"

# The crate's lock pins every version; cargo only prunes the entries of the plugins left out.
(cd "$src" && CARGO_TARGET_DIR="$RMQTT_ROOT/target" cargo build --release --bin rmqttd)
install -m 0755 "$RMQTT_ROOT/target/release/rmqttd" "$RMQTT_ROOT/bin/rmqttd"
end=$(date +%s)
echo "$((end - start))" >"$RMQTT_ROOT/build-seconds"
echo "rmqttd $RMQTT_VERSION built in $((end - start)) s"
