#!/usr/bin/env bash
# Builds the packages into dist/: csg-agent and csg-console, each as .deb and .rpm, with the
# version from Cargo.toml.
#
#   scripts/package.sh
#
# Reproducible: file times come from SOURCE_DATE_EPOCH (the last commit's time), the build
# is --locked, and source paths are remapped out of the binaries. Works with CARGO_TARGET_DIR
# set: the binaries and generated docs are taken from cargo's own target directory.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Exact tool versions, so a package built next year is built the same way.
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

log() { printf 'package: %s\n' "$*" >&2; }

ensure_tool() { # subcommand crate version
    if ! cargo "$1" --version 2>/dev/null | grep -qF "$3"; then
        log "installing $2 $3"
        cargo install --locked --quiet "$2@$3"
    fi
}
ensure_tool deb cargo-deb "$CARGO_DEB_VERSION"
ensure_tool generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 1764115200)
export SOURCE_DATE_EPOCH

# Where cargo puts what it builds: target/ unless CARGO_TARGET_DIR, --config build.target-dir
# or a config file says otherwise (shared build caches). cargo-deb asks cargo the same way, and
# both tools read the asset paths `target/release/...` in Cargo.toml as "in this directory".
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
docs=$target_dir/release/package-docs

# Man pages and completions come from the clap definitions, by the xtask (a debug build: it
# shares the workspace's usual build cache, and the files do not depend on the build).
rm -rf "$docs"
cargo run --locked --quiet -p xtask -- package-docs "$docs"
# Man pages ship compressed; -n keeps the time stamp out, so the archive is reproducible.
gzip -9n "$docs"/*.1

# Source paths are remapped out of the shipped binaries only. csg-consoled (crate
# csg-consoled, server/) ships in the csg-console packages beside csgctl.
RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$root=/build/csg-agent --remap-path-prefix=$HOME/.cargo=/cargo" \
    cargo build --release --locked -p csg-agent -p csg-console -p csg-consoled

rm -rf dist
mkdir -p dist
for pkg in csg-agent csg-console; do
    cargo deb --no-build --no-strip -p "$pkg" --output dist/ >/dev/null
done
# cargo-generate-rpm reads CARGO_TARGET_DIR but not cargo's configuration: tell it.
cargo generate-rpm -p agent --target-dir "$target_dir" -o dist/ >/dev/null
cargo generate-rpm -p console --target-dir "$target_dir" -o dist/ >/dev/null
ls -1 dist
