#!/usr/bin/env bash
# Installs what the test suite needs beyond a Rust toolchain, on Debian (12 and later):
# Mosquitto (the tests start their own brokers), Node.js with aedes (the second broker of the
# interop run), the storage daemons and their clients (the
# tests start private smbd, tgtd and ganesha.nfsd), and the rustfmt/clippy components.
# Idempotent: installs only what is missing, so it is cheap to run before every test run.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }

# Runs a command as root: directly when we are root, through sudo when it is there.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

have_mosquitto() {
    # The broker lives in /usr/sbin, which is not on every user's PATH.
    { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } &&
        command -v mosquitto_sub >/dev/null 2>&1
}

if have_mosquitto; then
    log "mosquitto present"
else
    if ! command -v apt-get >/dev/null 2>&1; then
        log "mosquitto is missing and this is not a Debian-like system: install mosquitto and mosquitto-clients by hand"
        exit 1
    fi
    log "installing mosquitto and mosquitto-clients"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends mosquitto mosquitto-clients
    # The package starts a system broker on port 1883. The tests start their own brokers on
    # free ports and need none: stop and disable it. Without systemd (containers) there is
    # nothing to stop, so failures of this step alone are ignored.
    if command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
        as_root service mosquitto stop >/dev/null 2>&1 || true
    fi
    have_mosquitto || { log "mosquitto still missing after install"; exit 1; }
fi

# Node.js and npm run the second broker of the interop run (scripts/interop-test.sh): aedes,
# pinned by tests/brokers/aedes/package-lock.json. aedes 0.51 needs Node.js 16 or later, so
# Debian 12's own nodejs (18) will do where the machine has none.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    log "node $(node --version) and npm present"
else
    command -v apt-get >/dev/null 2>&1 || { log "node/npm missing and this is not a Debian-like system: install Node.js 16+ and npm by hand"; exit 1; }
    log "installing nodejs and npm"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
fi
# npm ci only when the lock file changed since the last install (it wipes node_modules and
# reinstalls, which takes seconds even from npm's cache).
aedes_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/brokers/aedes"
aedes_stamp="$aedes_dir/node_modules/.csg-lock.sha256"
aedes_lock_sum=$(sha256sum "$aedes_dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$aedes_stamp" ] && [ "$(cat "$aedes_stamp")" = "$aedes_lock_sum" ] &&
    [ -f "$aedes_dir/node_modules/aedes/package.json" ]; then
    log "aedes present"
else
    log "installing aedes (npm ci in tests/brokers/aedes)"
    # No package of this lock runs install scripts; refusing them keeps it that way.
    (cd "$aedes_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$aedes_lock_sum" >"$aedes_stamp"
fi

# Storage daemons and the real clients the tests check them with. dpkg-query tells which are
# missing, so a machine that has them all costs no apt run.
# lintian, rpm and systemd (systemd-analyze) check the packages; python3 picks free ports in
# the scripts; the openssl command computes the Alibaba signature in the TLS tests
# independently of the agent's own code; iproute2 (ip netns, veth) and nftables (nft) break
# the agent's link to the broker in the network fault tests.
# postgresql: the console store's tests run a private server from its binaries
# (/usr/lib/postgresql/*/bin: initdb in a temporary directory, a loopback port).
# socat forwards the broker into the kernel storage test's guest (qemu: below).
# python3-venv: scripts/api-contract-test.sh installs schemathesis (PyPI, pinned) in a private
# virtualenv.
# prometheus: its promtool checks the console's /metrics text in the end-to-end test (the
# server it also installs is stopped below).
# curl is the HTTP client of the console service's tests, dev.sh and the system test.
# chromium and chromium-driver: the web console's browser test (server/tests/web_e2e.rs) drives
# headless Chromium through WebDriver; fonts-liberation gives its screenshots real text (a
# recommendation of chromium, which --no-install-recommends leaves out).
storage_pkgs=(samba smbclient tgt nfs-ganesha nfs-ganesha-vfs libnfs-utils libiscsi-bin dbus nfs-kernel-server
    lintian rpm systemd python3 python3-venv debootstrap systemd-container openssl iproute2 nftables socat postgresql
    prometheus curl chromium chromium-driver fonts-liberation)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${storage_pkgs[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    log "storage daemons and package tools present"
else
    command -v apt-get >/dev/null 2>&1 || { log "missing ${missing[*]} and this is not a Debian-like system"; exit 1; }
    log "installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
# qemu boots the Debian guest of the kernel storage test (scripts/kernel-test.sh), whose kernel
# has the nfsd and configfs this machine's may lack. A machine may carry qemu-utils from
# backports, which the suite's qemu-system-x86 cannot stand beside: apt removes it to install
# qemu-system-x86. So qemu-system-x86 comes first, then qemu-utils (qemu-img) of its release.
for p in qemu-system-x86 qemu-utils; do
    if installed "$p"; then
        log "$p present"
    else
        log "installing $p"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$p" ||
            { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y --no-install-recommends "$p"; }
    fi
done
command -v qemu-img >/dev/null 2>&1 || { log "qemu-img missing after installing qemu-utils"; exit 1; }

# The packages start system daemons where an init system runs; the tests start private ones
# on their own ports and sockets. Stop the system ones so they hold no port or lock.
for svc in smbd nmbd samba-ad-dc tgt nfs-ganesha nfs-kernel-server postgresql prometheus; do
    if command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
done

if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        if rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
            log "$component present"
        else
            log "installing $component"
            rustup component add "$component"
        fi
    done
else
    for tool in rustfmt cargo-clippy; do
        command -v "$tool" >/dev/null 2>&1 || { log "$tool missing and rustup is not available"; exit 1; }
    done
fi
