#!/usr/bin/env bash
# System test: the csg-agent .deb on a real Debian 12 booted with systemd in systemd-nspawn.
#
#   scripts/system-test.sh          (as root; after scripts/package.sh)
#
# It boots a fresh Debian root with systemd as PID 1, installs dist/csg-agent_*.deb with dpkg,
# and drives the service the way an operator and a console would: a Mosquitto on the host's
# loopback (the container shares the host's network) and target/release/csgctl on the host.
# Checked, each printed as it runs:
#   1. install: the unit is enabled but not started (the packaged config has no instance_id),
#      postinst says what to do; with a valid config `systemctl start` reaches active;
#   2. sys.ping answers through the broker;
#   3. kill -9 of the agent: systemd restarts it and it answers again;
#   4. SIGHUP (systemctl reload): a new heartbeat interval and log level apply without a new
#      MQTT connection; a broken config is refused, the old one kept, the refusal logged and
#      shown in `systemctl status`, and the agent keeps answering;
#   5. upgrade to a newer package version keeps the edited config and restarts the agent;
#   6. dpkg -r keeps config and state; dpkg --purge removes them.
# Between 2 and 3, the console service: dist/csg-console_*.deb installed beside the agent,
# a broken console.toml refused at start with the reason shown, csg-consoled started under
# its unit with a token made by `csg-consoled token create`, the agent seen online through
# the API with curl, SIGHUP, and SIGTERM ending it with exit 0.
# It also prints `systemd-analyze security` of both units as seen by the booted system.
#
# Needs: root, systemd-nspawn (package systemd-container), debootstrap, mosquitto and
# mosquitto_sub, python3, curl, nsenter and flock (util-linux); dist/csg-agent_*.deb,
# dist/csg-console_*.deb and target/release/csgctl (scripts/package.sh builds them).
#
# The Debian root is built once with debootstrap (about a minute with a near mirror) and kept
# as a tarball in $CSG_SYSTEST_CACHE (default /var/cache/csg-agent-systest), keyed by suite,
# architecture and package list; every run unpacks a fresh copy, so runs never see each other.
# Environment:
#   CSG_SYSTEST_CACHE   where the root tarball is kept
#   CSG_SYSTEST_MIRROR  Debian mirror for debootstrap (default: the one this machine's apt
#                       sources use for the suite)
#
# Every process, mount and temporary directory it makes is removed on exit. The last line is
# "system test: N passed, M failed" (", K skipped" when a check could not run; a skipped
# check is never counted as passed); the exit status is non-zero unless every check passed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

suite=bookworm
cache=${CSG_SYSTEST_CACHE:-/var/cache/csg-agent-systest}
inst=gw-systest
group=GID_csg
client_id="${group}@@@${inst}"
started=$(date +%s)

# --- reporting -------------------------------------------------------------------------------

passed=0
failed=0
skipped=0
section() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
indent() { sed 's/^/        | /'; }
pass() { passed=$((passed + 1)); printf '  ok    %s\n' "$1"; }
fail() { # description [details]
    failed=$((failed + 1))
    printf '  FAIL  %s\n' "$1"
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" | tail -n 25 | indent; fi
}
skip() { skipped=$((skipped + 1)); printf '  SKIP  %s (%s)\n' "$1" "$2"; }
# check DESCRIPTION COMMAND...: runs the command, passes on exit 0; on failure shows its output.
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$what"; else fail "$what" "$out"; fi
}
# expect DESCRIPTION ACTUAL WANTED
expect() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2', want '$3'"; fi
}
finish() {
    printf '\n(%ss)\n' "$(($(date +%s) - started))"
    if [ "$skipped" -gt 0 ]; then
        echo "system test: $passed passed, $failed failed, $skipped skipped"
    else
        echo "system test: $passed passed, $failed failed"
    fi
    [ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ]
}
die() { # a step every later check depends on failed: report it as a failure and stop
    fail "$1" "${2:-}"
    finish
    exit 1
}

# wait_for SECONDS COMMAND...: polls every half second until the command succeeds.
wait_for() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}
now_ms() { date +%s%3N; }

# --- clean-up --------------------------------------------------------------------------------

tmp=
nspawn_pid=
leader=
mosq_pid=
watch_pid=
machine="csg-systest-$$"
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
stop_pid() { # pid seconds: SIGTERM, then SIGKILL after the grace time
    alive "$1" || return 0
    kill -TERM "$1" 2>/dev/null
    local i
    for ((i = 0; i < $2 * 5; i++)); do alive "$1" || return 0; sleep 0.2; done
    kill -KILL "$1" 2>/dev/null
}
cleanup() {
    set +e
    trap - EXIT INT TERM HUP
    stop_pid "$watch_pid" 2
    stop_pid "$mosq_pid" 5
    if alive "$nspawn_pid"; then
        # The first SIGTERM asks the container to power off, a second one ends it at once.
        kill -TERM "$nspawn_pid" 2>/dev/null
        local i
        for ((i = 0; i < 150; i++)); do alive "$nspawn_pid" || break; sleep 0.2; done
        stop_pid "$nspawn_pid" 5
    fi
    # Killing the container's PID 1 ends everything in its PID namespace.
    if [ -n "$leader" ] && alive "$leader" && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ]; then
        kill -KILL "$leader" 2>/dev/null
    fi
    wait 2>/dev/null
    if [ -n "$tmp" ] && [ -d "$tmp" ]; then
        # Whatever is still mounted below the temporary directory (debootstrap leaves /proc and
        # /sys mounted when it fails), deepest first.
        awk -v t="$tmp/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
            while read -r m; do umount -l "$m"; done
        rm -rf --one-file-system "$tmp"
    fi
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# --- prerequisites ---------------------------------------------------------------------------

section "prerequisites"
problems=()
[ "$(id -u)" -eq 0 ] || problems+=("must run as root (systemd-nspawn, debootstrap, dpkg in the container)")
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$mosquitto" ] || problems+=("mosquitto missing (package mosquitto)")
for tool in systemd-nspawn:systemd-container debootstrap:debootstrap mosquitto_sub:mosquitto-clients \
    python3:python3 curl:curl nsenter:util-linux flock:util-linux dpkg-deb:dpkg; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || problems+=("${tool%%:*} missing (package ${tool#*:})")
done
shopt -s nullglob
debs=(dist/csg-agent_*.deb)
shopt -u nullglob
[ ${#debs[@]} -eq 1 ] || problems+=("expected one dist/csg-agent_*.deb, found ${#debs[@]} (run scripts/package.sh)")
shopt -s nullglob
console_debs=(dist/csg-console_*.deb)
shopt -u nullglob
[ ${#console_debs[@]} -eq 1 ] || problems+=("expected one dist/csg-console_*.deb, found ${#console_debs[@]} (run scripts/package.sh)")
csgctl=$root/target/release/csgctl
[ -x "$csgctl" ] || problems+=("target/release/csgctl missing (run scripts/package.sh)")
if [ ${#problems[@]} -gt 0 ]; then
    die "prerequisites" "$(printf '%s\n' "${problems[@]}")"
fi
pass "prerequisites: root, nspawn, debootstrap, mosquitto, ${debs[0]}, ${console_debs[0]}, csgctl"

tmp=$(mktemp -d /var/tmp/csg-systest.XXXXXX)
chmod 0755 "$tmp"
deb_version=$(dpkg-deb -f "${debs[0]}" Version)
cp "${debs[0]}" "$tmp/csg-agent-old.deb"

# A newer version of the same package, as an upgrade brings it: same files, version +1 in
# the Debian revision sense ("1" < "1+systest1").
new_version="${deb_version}+systest1"
dpkg-deb -R "$tmp/csg-agent-old.deb" "$tmp/newpkg"
sed -i "s/^Version: .*/Version: $new_version/" "$tmp/newpkg/DEBIAN/control"
if ! out=$(dpkg-deb --root-owner-group -b "$tmp/newpkg" "$tmp/csg-agent-new.deb" 2>&1) ||
    ! dpkg --compare-versions "$new_version" gt "$deb_version"; then
    die "build the upgrade package $new_version" "$out"
fi
rm -rf "$tmp/newpkg"

# --- the Debian root -------------------------------------------------------------------------

section "Debian $suite root"
arch=$(dpkg --print-architecture)
# systemd and D-Bus to boot; the package's own dependencies so dpkg -i needs no network.
depends=$( (dpkg-deb -f "$tmp/csg-agent-old.deb" Depends; echo ,; dpkg-deb -f "${console_debs[0]}" Depends) |
    python3 -c 'import re,sys; print(",".join(sorted({re.split(r"[ (:]", a.split("|")[0].strip())[0] for a in sys.stdin.read().split(",") if a.strip()})))')
include=$(printf '%s\n' systemd dbus "${depends//,/$'\n'}" | sed '/^$/d' | sort -u | paste -sd, -)
key=$(printf 'v1 %s %s minbase %s' "$suite" "$arch" "$include" | sha256sum | cut -c1-12)
tarball="$cache/debian-$suite-$arch-$key.tar"

mirror=${CSG_SYSTEST_MIRROR:-$(python3 scripts/lib/debian-mirror.py "$suite")}
[ -n "$mirror" ] || die "a Debian mirror" "no apt source on this machine names Debian $suite: set CSG_SYSTEST_MIRROR"

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! timeout 1800 flock 9; then
    die "lock $cache/.lock" "another run held it for 30 minutes"
fi
if [ -s "$tarball" ]; then
    note "cached root: $tarball (packages: $include)"
else
    note "building the root with debootstrap from $mirror (packages: $include); cached afterwards"
    t0=$(date +%s)
    if ! timeout 1200 debootstrap --variant=minbase --include="$include" "$suite" "$tmp/debootstrap" "$mirror" \
        >"$tmp/debootstrap.log" 2>&1; then
        die "debootstrap $suite from $mirror" "$(tail -n 20 "$tmp/debootstrap.log")"
    fi
    # Downloaded packages and apt lists are not needed to boot.
    rm -rf "$tmp/debootstrap/var/cache/apt/archives/"*.deb "$tmp/debootstrap/var/lib/apt/lists/"*
    if ! tar -C "$tmp/debootstrap" --numeric-owner --xattrs --xattrs-include='*' -cf "$tarball.partial" . ||
        ! mv "$tarball.partial" "$tarball"; then
        rm -f "$tarball.partial"
        die "save the root to $tarball"
    fi
    rm -rf --one-file-system "$tmp/debootstrap"
    # Roots made for another package list are not used again.
    for old in "$cache"/debian-*.tar; do [ "$old" = "$tarball" ] || rm -f "$old"; done
    note "debootstrap and cache took $(($(date +%s) - t0)) s"
fi

rootfs="$tmp/root"
mkdir "$rootfs"
if ! out=$(tar -C "$rootfs" --numeric-owner --xattrs --xattrs-include='*' -xpf "$tarball" 2>&1); then
    die "unpack $tarball" "$out"
fi
exec 9>&-
mkdir -p "$rootfs/root/systest"
cp "$tmp/csg-agent-old.deb" "$tmp/csg-agent-new.deb" "$rootfs/root/systest/"
cp "${console_debs[0]}" "$rootfs/root/systest/csg-console.deb"
pass "fresh root from the cache"

# --- the broker on the host's loopback -------------------------------------------------------

section "Mosquitto on the host's loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
broker="mqtt://127.0.0.1:$port"
cat >"$tmp/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
connection_messages true
log_type error
log_type warning
log_type notice
log_type information
log_dest file $tmp/mosquitto.log
CONF
touch "$tmp/mosquitto.log"
chmod 0666 "$tmp/mosquitto.log" # mosquitto drops root for its own user
"$mosquitto" -c "$tmp/mosquitto.conf" >"$tmp/mosquitto.out" 2>&1 &
mosq_pid=$!
port_open() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port"; }
wait_for 10 port_open || die "mosquitto listens on 127.0.0.1:$port" "$(cat "$tmp/mosquitto.out" "$tmp/mosquitto.log")"
# Every heartbeat and presence message of the agent, for the whole run.
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -v -t "csg-status/$inst" -t "csg-status/$inst/presence" \
    >"$tmp/status.log" 2>"$tmp/status.err" &
watch_pid=$!
pass "broker at $broker"

# Broker log: connections made with the agent's client ID.
connections() { grep -cF "as $client_id " "$tmp/mosquitto.log"; }

cat >"$tmp/status.py" <<'PY'
# status.py LOG INSTANCE spacing SINCE_MS N MIN_S MAX_S: the last N gaps between heartbeats sent
#   at or after SINCE_MS all lie within [MIN_S, MAX_S] (exit 1 while there are fewer than N);
# status.py LOG INSTANCE presence STATE REASON: how many such presence messages arrived.
import json, sys
log, inst, mode = sys.argv[1:4]
hb, presence = [], []
for line in open(log, errors="replace"):
    topic, _, payload = line.rstrip("\n").partition(" ")
    try:
        m = json.loads(payload)
    except ValueError:
        continue
    if topic == "csg-status/" + inst and m.get("type") == "heartbeat":
        hb.append((m["ts_ms"], m["seq"]))
    elif topic == "csg-status/" + inst + "/presence":
        presence.append((m.get("state"), m.get("reason")))
if mode == "presence":
    print(sum(1 for p in presence if p == (sys.argv[4], sys.argv[5])))
    sys.exit(0)
since, n, lo, hi = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
recent = [h for h in hb if h[0] >= since][-(n + 1):]
gaps = [(b[0] - a[0]) / 1000 for a, b in zip(recent, recent[1:])]
print("heartbeats seq %s, gaps %s s" % ([s for _, s in recent], [round(g, 2) for g in gaps]))
sys.exit(0 if len(gaps) == n and all(lo <= g <= hi for g in gaps) else 1)
PY
spacing() { python3 "$tmp/status.py" "$tmp/status.log" "$inst" spacing "$@"; }
presences() { python3 "$tmp/status.py" "$tmp/status.log" "$inst" presence "$@"; }
agent_ping() { timeout 30 "$csgctl" --broker "$broker" --group-id "$group" call "$inst" sys.ping --timeout 15s; }

# --- boot ------------------------------------------------------------------------------------

section "boot Debian $suite with systemd in systemd-nspawn"
# --register=no and --keep-unit: no machined or host systemd is needed. The host's network
# is shared (no --private-network), so the agent reaches the broker on 127.0.0.1.
systemd-nspawn --quiet --boot --directory="$rootfs" --machine="$machine" \
    --register=no --keep-unit --private-users=no --link-journal=no --console=pipe \
    </dev/null >"$tmp/boot.log" 2>&1 &
nspawn_pid=$!
find_leader() {
    local c children
    read -ra children < <(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null)
    for c in "${children[@]}"; do
        if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ]; then
            leader=$c
            return 0
        fi
    done
    return 1
}
if ! wait_for 30 find_leader || ! find_leader; then
    die "systemd-nspawn starts systemd as the container's PID 1" "$(cat "$tmp/boot.log")"
fi
# ctr COMMAND...: runs a command inside the booted container, with a clean environment and a
# time limit ($in_timeout seconds, 60 by default).
in_timeout=60
ctr() {
    timeout "$in_timeout" nsenter --target "$leader" --all --root --wd \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
state=$(in_timeout=120 ctr systemctl is-system-running --wait 2>&1)
case "$state" in
running) pass "booted: systemd reports '$state'" ;;
degraded)
    pass "booted: systemd reports '$state'"
    ctr systemctl --failed --no-legend --plain 2>&1 | indent
    ;;
*) die "booted: systemd reports running" "state '$state'"$'\n'"$(cat "$tmp/boot.log")" ;;
esac

unit=csg-agent.service
# dpkg-query formats are ${Field}, not shell expansions.
# shellcheck disable=SC2016
version_of() { ctr dpkg-query -W -f '${Version}' csg-agent; }
# shellcheck disable=SC2016
status_of() { ctr dpkg-query -W -f '${Status}' csg-agent; }
active_state() { ctr systemctl is-active "$unit"; }
main_pid() { ctr systemctl show -p MainPID --value "$unit"; }
status_text() { ctr systemctl show -p StatusText --value "$unit"; }
is_active() { [ "$(active_state 2>/dev/null)" = active ]; }
set_key() { # KEY VALUE: one line of /etc/csg-agent/agent.toml, as an operator edits it
    ctr sed -i -E "s|^$1[[:space:]]*=.*|$1 = $2|" /etc/csg-agent/agent.toml &&
        ctr grep -qxF "$1 = $2" /etc/csg-agent/agent.toml
}
set_keys() { # KEY VALUE [KEY VALUE...]
    while [ $# -ge 2 ]; do set_key "$1" "$2" || return 1; shift 2; done
}
configure() {
    set_key instance_id "\"$inst\"" && set_key url "\"$broker\"" && set_key heartbeat_interval_s 5 &&
        set_key keep_alive_s 60 && set_key log '"info"'
}
grep_all() { # TEXT PATTERN...: every fixed pattern occurs in TEXT
    local text=$1 p
    shift
    for p in "$@"; do grep -qF -- "$p" <<<"$text" || { echo "no '$p' in:"; echo "$text"; return 1; }; done
}
not() { ! "$@"; }
output_has() { # ERE COMMAND...: the command's output matches
    local re=$1 out
    shift
    out=$("$@" 2>&1)
    grep -E -- "$re" <<<"$out" || { echo "no match for '$re' in:"; echo "$out"; return 1; }
}
output_lacks() { # ERE COMMAND...: the command's output does not match
    local re=$1 out
    shift
    out=$("$@" 2>&1) || { echo "$out"; return 1; }
    ! grep -E -- "$re" <<<"$out"
}
more_than() { # N COMMAND...: the command prints a number greater than N
    local n=$1
    shift
    [ "$("$@")" -gt "$n" ]
}
exits() { # CODE COMMAND...: the command exits with CODE
    local want=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    echo "$out"
    [ "$rc" -eq "$want" ] || { echo "exit $rc, want $want"; return 1; }
}
cursor() { ctr journalctl --show-cursor -n 1 -q -o cat | sed -n 's/^-- cursor: //p'; }
reload_agent() { # systemctl reload; on failure, what systemd said about it
    local c out
    c=$(cursor)
    out=$(ctr systemctl reload "$unit" 2>&1) && return 0
    echo "$out"
    ctr journalctl -u "$unit" --no-pager -o cat --after-cursor "$c"
    return 1
}
# The agent's own lines (not systemd's about the unit) after a cursor.
journal_since() { ctr journalctl "_SYSTEMD_UNIT=$unit" --no-pager -o cat --after-cursor "$1"; }
# How the agent says a reload was refused (in STATUS= and in the log).
refused_re='[Rr]efus|[Rr]eject|[Ii]nvalid'

# --- 1. install and start --------------------------------------------------------------------

section "1. install $(basename "${debs[0]}") with dpkg; configure; start"
installed=no
if out=$(in_timeout=300 ctr dpkg -i "/root/systest/csg-agent-old.deb" 2>&1); then
    pass "dpkg -i csg-agent $deb_version"
    printf '%s\n' "$out" | indent
    installed=yes
else
    fail "dpkg -i csg-agent $deb_version" "$out"
fi
if [ "$installed" = yes ]; then
    expect "unit enabled after install" "$(ctr systemctl is-enabled "$unit" 2>&1)" enabled
    expect "unit not started: the packaged config has no instance_id" "$(active_state 2>&1)" inactive
    check "postinst said what to do (instance_id, check-config, systemctl start)" \
        grep_all "$out" instance_id check-config "systemctl start csg-agent"
    check "check-config refuses the packaged config (exit 2)" exits 2 ctr csg-agent check-config --config /etc/csg-agent/agent.toml
    modes=$(ctr stat -c '%n %a %U:%G' /etc/csg-agent /etc/csg-agent/agent.toml /var/lib/csg-agent 2>&1)
    expect "modes: /etc/csg-agent 0750, agent.toml 0640, /var/lib/csg-agent 0700" "$modes" \
        "/etc/csg-agent 750 root:root"$'\n'"/etc/csg-agent/agent.toml 640 root:root"$'\n'"/var/lib/csg-agent 700 root:root"

    # The operator's edit: identity, broker, and a short heartbeat so the test sees several.
    check "edit agent.toml: instance_id, mqtt.url, heartbeat_interval_s = 5" configure
    check "check-config accepts the edited config" ctr csg-agent check-config --config /etc/csg-agent/agent.toml
    out=$(in_timeout=120 ctr systemctl start "$unit" 2>&1)
    if is_active; then
        pass "systemctl start csg-agent: active (MainPID $(main_pid))"
    else
        fail "systemctl start csg-agent: active" "$out"$'\n'"$(ctr systemctl status "$unit" --no-pager -n 20 2>&1)"
    fi
else
    for c in "unit enabled" "unit not started" "postinst hint" "check-config refuses the packaged config" \
        "modes" "edit agent.toml" "check-config accepts" "service reaches active"; do
        skip "$c" "not installed"
    done
fi

# --- 2. sys.ping through the broker ----------------------------------------------------------

section "2. sys.ping through Mosquitto on the host's loopback (csgctl on the host)"
if is_active; then
    if wait_for 20 output_has "connected to $broker" ctr systemctl show -p StatusText --value "$unit"; then
        pass "STATUS= says: $(status_text)"
    else
        fail "STATUS= says connected to $broker" "$(status_text 2>&1)"
    fi
    if out=$(agent_ping 2>&1); then
        pass "csgctl call $inst sys.ping: $(tr -d '\n' <<<"$out" | cut -c1-120)"
        check "the broker logged the agent's connection as $client_id" more_than 0 connections
    else
        fail "csgctl call $inst sys.ping" "$out"$'\n'"$(ctr journalctl -u "$unit" --no-pager -n 20 -o cat 2>&1)"
    fi
else
    skip "STATUS= says connected" "service not active"
    skip "sys.ping" "service not active"
fi

# --- 2b. the console service -----------------------------------------------------------------

section "2b. csg-consoled from $(basename "${console_debs[0]}") beside the agent; the agent online through its API"
cunit=csg-consoled.service
cconf=/etc/csg-console/console.toml
cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api="http://127.0.0.1:$cport"
console_active() { [ "$(ctr systemctl is-active "$cunit" 2>/dev/null)" = active ]; }
console_status() { # why the service is not running, for a failure's details
    ctr systemctl status "$cunit" --no-pager -n 0 2>&1
    ctr journalctl -u "$cunit" --no-pager -n 25 -o cat 2>&1
}
as_console() { ctr runuser -u csg-console -- "$@"; }
# curl on the host (the container shares its network); the token goes in a header file.
api_get() { # PATH: the body, exit non-zero unless 2xx
    curl -sS --fail --max-time 10 -H "@$tmp/auth.header" "$api$1"
}
presence_is() { # STATE
    api_get "/v1/instances/$inst" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["presence"]["state"] == sys.argv[1] else 1)' "$1"
}
console_installed=no
if out=$(in_timeout=300 ctr dpkg -i /root/systest/csg-console.deb 2>&1); then
    pass "dpkg -i csg-console (beside csg-agent)"
    printf '%s\n' "$out" | indent
    console_installed=yes
else
    fail "dpkg -i csg-console" "$out"
fi
if [ "$console_installed" = yes ]; then
    expect "unit enabled after install" "$(ctr systemctl is-enabled "$cunit" 2>&1)" enabled
    expect "unit not started on first install" "$(ctr systemctl is-active "$cunit" 2>&1)" inactive
    check "postinst said what to do (check-config, systemctl start, token create)" \
        grep_all "$out" check-config "systemctl start csg-consoled" "token create"
    check "system user csg-console exists, no login shell" output_has '^csg-console:.*:/var/lib/csg-console:/usr/sbin/nologin$' ctr getent passwd csg-console
    modes=$(ctr stat -c '%n %a %U:%G' /etc/csg-console "$cconf" /var/lib/csg-console 2>&1)
    expect "modes: /etc/csg-console 0750, console.toml 0640 (group csg-console), /var/lib/csg-console 0700" "$modes" \
        "/etc/csg-console 750 root:csg-console"$'\n'"$cconf 640 root:csg-console"$'\n'"/var/lib/csg-console 700 csg-console:csg-console"
    check "the packaged console.toml passes check-config (as csg-console)" as_console csg-consoled check-config --config "$cconf"

    # A broken file: the unit must not start, and say why.
    check "edit console.toml: an unknown key" ctr sh -c "printf 'listen_port = 1\n' >>$cconf"
    in_timeout=120 ctr systemctl start "$cunit" >/dev/null 2>&1
    if wait_for 20 output_has 'listen_port' console_status && ! console_active; then
        pass "a broken console.toml: not started, the reason in the journal: $(console_status | grep -m1 -o 'unknown field .listen_port.*' | cut -c1-80)"
    else
        fail "a broken console.toml: not started, the reason in the journal" "$(console_status)"
    fi
    ctr systemctl reset-failed "$cunit" >/dev/null 2>&1
    # The operator's edit: the broker, a loopback port of the API.
    check "edit console.toml: mqtt.url, http.listen" ctr sh -c "
        sed -i -e '/^listen_port = 1\$/d' -e 's|^url = \"mqtt://127.0.0.1:1883\"|url = \"$broker\"|' \
            -e 's|^# listen = .*|listen = \"127.0.0.1:$cport\"|' $cconf &&
        grep -qxF 'url = \"$broker\"' $cconf && grep -qxF 'listen = \"127.0.0.1:$cport\"' $cconf"
    check "check-config accepts it" as_console csg-consoled check-config --config "$cconf"
    token=$(as_console csg-consoled token create --config "$cconf" --name systest --scope read 2>"$tmp/token.err")
    if [[ "$token" =~ ^csgc_[A-Za-z0-9_-]+$ ]]; then
        pass "csg-consoled token create (as csg-console): a token alone on stdout"
    else
        fail "csg-consoled token create" "$(cat "$tmp/token.err")"
    fi
    printf 'Authorization: Bearer %s\n' "$token" >"$tmp/auth.header"
    out=$(in_timeout=120 ctr systemctl start "$cunit" 2>&1)
    if wait_for 20 curl -sS --fail --max-time 2 "$api/healthz"; then
        pass "systemctl start csg-consoled: active (MainPID $(ctr systemctl show -p MainPID --value "$cunit")), $api/healthz answers"
    else
        fail "systemctl start csg-consoled: the service answers on $api" "$out"$'\n'"$(console_status)"
    fi
fi
if [ "$console_installed" = yes ] && console_active; then
    check "the store is in the state directory, owned by csg-console" \
        output_has '^csg-console$' ctr stat -c '%U' /var/lib/csg-console/console.db
    if wait_for 30 presence_is online; then
        pass "GET /v1/instances/$inst (curl, token): online: $(api_get "/v1/instances/$inst" | cut -c1-140)"
    else
        fail "the agent online through the API" "$(curl -sS --max-time 5 -H "@$tmp/auth.header" "$api/v1/instances/$inst" 2>&1)"$'\n'"$(console_status)"
    fi
    check "GET /readyz: store and broker ready" output_has '"ready":true' curl -sS --fail --max-time 5 "$api/readyz"
    check "without the token: 401" output_has '^401$' curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$api/v1/instances"

    cpid=$(ctr systemctl show -p MainPID --value "$cunit")
    c0=$(cursor)
    check "systemctl reload csg-consoled (SIGHUP)" ctr systemctl reload "$cunit"
    if wait_for 10 output_has 'SIGHUP: log filter reloaded' ctr journalctl -u "$cunit" --no-pager -o cat --after-cursor "$c0"; then
        pass "reload logged; same process (MainPID $cpid -> $(ctr systemctl show -p MainPID --value "$cunit"))"
    else
        fail "reload logged" "$(ctr journalctl -u "$cunit" --no-pager -o cat --after-cursor "$c0" 2>&1)"
    fi
    expect "same process after the reload" "$(ctr systemctl show -p MainPID --value "$cunit")" "$cpid"

    c0=$(cursor)
    check "systemctl stop csg-consoled (SIGTERM)" ctr systemctl stop "$cunit"
    expect "exit status 0 (ExecMainStatus)" "$(ctr systemctl show -p ExecMainStatus --value "$cunit")" 0
    expect "unit result success" "$(ctr systemctl show -p Result --value "$cunit")" success
    check "it logged its orderly stop" output_has '\<stopped\>' ctr journalctl -u "$cunit" --no-pager -o cat --after-cursor "$c0"

    sec=$(ctr systemd-analyze security --no-pager "$cunit" 2>&1)
    note "$(grep -o 'Overall exposure level.*' <<<"$sec")"
else
    for c in "store in the state directory" "agent online through the API" "readyz" "401 without token" \
        "reload" "reload logged" "same process" "stop" "exit status 0" "orderly stop"; do
        skip "$c" "csg-consoled not installed or not active"
    done
fi

# --- 3. kill -9 ------------------------------------------------------------------------------

section "3. kill -9 of the agent: systemd restarts it"
restarted() { # old-pid
    local p
    is_active && p=$(main_pid) && [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$1" ]
}
if is_active; then
    pid0=$(main_pid)
    nr0=$(ctr systemctl show -p NRestarts --value "$unit")
    wills0=$(presences offline connection_lost)
    conns0=$(connections)
    online0=$(presences online connected)
    check "systemctl kill -s KILL csg-agent (MainPID $pid0)" ctr systemctl kill -s KILL "$unit"
    if wait_for 30 restarted "$pid0"; then
        pass "restarted by systemd: MainPID $pid0 -> $(main_pid), NRestarts $nr0 -> $(ctr systemctl show -p NRestarts --value "$unit")"
        check "answers sys.ping again" agent_ping
        if wait_for 10 more_than "$conns0" connections && wait_for 10 more_than "$online0" presences online connected; then
            pass "a new MQTT connection and online presence (broker log: $conns0 -> $(connections) connections)"
        else
            fail "a new MQTT connection and online presence after the restart" \
                "connections $conns0 -> $(connections), online presences $online0 -> $(presences online connected)"
        fi
    else
        fail "restarted by systemd within 30 s" "$(ctr systemctl status "$unit" --no-pager -n 20 2>&1)"
        skip "answers sys.ping again" "not restarted"
        skip "a new MQTT connection and online presence" "not restarted"
    fi
    if wait_for 10 more_than "$wills0" presences offline connection_lost; then
        pass "the broker published the agent's Last Will (offline, connection_lost)"
    else
        fail "the broker published the agent's Last Will (offline, connection_lost)" "$(tail -n 5 "$tmp/status.log")"
    fi
else
    for c in "systemctl kill -s KILL" "restarted by systemd" "answers sys.ping again" "new connection" "Last Will"; do skip "$c" "service not active"; done
fi

# --- 4. SIGHUP -------------------------------------------------------------------------------

section "4. SIGHUP (systemctl reload): new settings without a reconnect; a broken config is refused"
if is_active && agent_ping >/dev/null 2>&1; then
    pid0=$(main_pid)
    c0=$(cursor)
    # Before: heartbeats every 5 s, and nothing at DEBUG level (log = "info"), even for a
    # request that fails (an unknown method is a remote error: csgctl exits 1).
    if wait_for 20 spacing "$(($(now_ms) - 20000))" 1 4.5 5.8; then
        pass "before the reload: heartbeats every 5 s ($(spacing 0 1 0 99))"
    else
        fail "before the reload: heartbeats every 5 s" "$(spacing 0 3 0 99)"
    fi
    timeout 30 "$csgctl" --broker "$broker" call "$inst" sys.no_such_method --timeout 10s >/dev/null 2>&1
    sleep 1
    check "before the reload: no DEBUG lines in the journal (log = \"info\")" \
        output_lacks '\<DEBUG\>' journal_since "$c0"
    conns0=$(connections)
    online0=$(presences online connected)
    check "edit agent.toml: heartbeat_interval_s = 1, log = \"debug\"" set_keys heartbeat_interval_s 1 log '"debug"'
    c1=$(cursor)
    t1=$(now_ms)
    check "systemctl reload csg-agent" reload_agent
    if wait_for 20 spacing "$t1" 3 0.5 1.6; then
        pass "heartbeat interval 5 s -> 1 s took effect ($(spacing "$t1" 3 0 99))"
    else
        fail "heartbeat interval 5 s -> 1 s took effect within 20 s" "$(spacing "$t1" 3 0 99)"
    fi
    expect "same agent process after the reload (MainPID)" "$(main_pid)" "$pid0"
    expect "no new MQTT connection for $client_id (broker log)" "$(connections)" "$conns0"
    expect "no new online presence" "$(presences online connected)" "$online0"
    timeout 30 "$csgctl" --broker "$broker" call "$inst" sys.no_such_method --timeout 10s >/dev/null 2>&1
    if wait_for 10 output_has '\<DEBUG\>' journal_since "$c1"; then
        pass "log level \"debug\" took effect: $(journal_since "$c1" | grep -w DEBUG | head -n 1 | cut -c1-100)"
    else
        fail "log level \"debug\" took effect (DEBUG lines after the reload)" "$(journal_since "$c1" 2>&1)"
    fi
    check "answers sys.ping after the reload" agent_ping

    # A broken config: a new heartbeat interval next to a keep-alive the rules refuse. None of
    # it may apply.
    check "edit agent.toml: heartbeat_interval_s = 3 with keep_alive_s = 1 (below the minimum 5)" \
        set_keys heartbeat_interval_s 3 keep_alive_s 1
    check "check-config refuses the broken config (exit 2)" exits 2 ctr csg-agent check-config --config /etc/csg-agent/agent.toml
    conns0=$(connections)
    online0=$(presences online connected)
    c2=$(cursor)
    t2=$(now_ms)
    check "systemctl reload csg-agent (broken config)" reload_agent
    if wait_for 15 output_has "$refused_re" ctr systemctl show -p StatusText --value "$unit"; then
        pass "STATUS= says: $(status_text)"
    else
        fail "STATUS= says the reload was refused" "StatusText: $(status_text 2>&1)"
    fi
    check "systemctl status shows it" output_has "Status: .*($refused_re)" ctr systemctl status "$unit" --no-pager -n 0
    if wait_for 10 output_has "$refused_re" journal_since "$c2"; then
        pass "logged: $(journal_since "$c2" | grep -E "$refused_re" | head -n 1 | cut -c1-140)"
    else
        fail "the journal says the reload was refused" "$(journal_since "$c2" 2>&1)"
    fi
    if wait_for 15 spacing "$t2" 4 0.5 1.6; then
        pass "old config kept: heartbeats still every 1 s ($(spacing "$t2" 4 0 99))"
    else
        fail "old config kept: heartbeats still every 1 s" "$(spacing "$t2" 4 0 99)"
    fi
    expect "same agent process after the broken reload (MainPID)" "$(main_pid)" "$pid0"
    expect "no new MQTT connection after the broken reload" "$(connections)" "$conns0"
    expect "no new online presence after the broken reload" "$(presences online connected)" "$online0"
    expect "service still active" "$(active_state 2>&1)" active
    check "still answers sys.ping" agent_ping

    # Back to a valid config for what follows; a service that did not survive the above is
    # started again (noted, not counted).
    configure || fail "restore a valid agent.toml"
    if ! is_active; then
        note "(the agent was not active after the reload checks: starting it again for the next ones)"
        ctr systemctl reset-failed "$unit" >/dev/null 2>&1
        in_timeout=120 ctr systemctl start "$unit" >/dev/null 2>&1
    fi
else
    for c in "heartbeats before" "no DEBUG before" "reload" "interval took effect" "same process" "no new connection" \
        "no new presence" "log level" "ping after reload" "check-config refuses broken" "reload broken" "STATUS= refused" \
        "systemctl status" "journal refused" "old config kept" "same process (broken)" "no new connection (broken)" \
        "no new presence (broken)" "still active" "still answers"; do
        skip "$c" "agent not active or not answering"
    done
fi

# --- 5. upgrade ------------------------------------------------------------------------------

section "5. upgrade to csg-agent $new_version: the edited config stays, the agent restarts"
if [ "$installed" = yes ] && is_active && agent_ping >/dev/null 2>&1; then
    conf0=$(ctr sha256sum /etc/csg-agent/agent.toml)
    pid0=$(main_pid)
    if out=$(in_timeout=300 ctr dpkg -i /root/systest/csg-agent-new.deb 2>&1); then
        pass "dpkg -i csg-agent $new_version"
        printf '%s\n' "$out" | indent
    else
        fail "dpkg -i csg-agent $new_version" "$out"
    fi
    expect "installed version" "$(version_of 2>&1)" "$new_version"
    expect "edited agent.toml unchanged" "$(ctr sha256sum /etc/csg-agent/agent.toml 2>&1)" "$conf0"
    expect "no agent.toml.dpkg-* left beside it" "$(ctr ls /etc/csg-agent 2>&1)" agent.toml
    if wait_for 30 restarted "$pid0"; then
        pass "agent restarted: MainPID $pid0 -> $(main_pid)"
    else
        fail "agent restarted (new MainPID, active)" "MainPID $(main_pid 2>&1), $(active_state 2>&1)"
    fi
    check "answers sys.ping after the upgrade" agent_ping
    expect "unit still enabled" "$(ctr systemctl is-enabled "$unit" 2>&1)" enabled
else
    for c in "dpkg -i new" "installed version" "config unchanged" "no dpkg-* files" "agent restarted" \
        "sys.ping after upgrade" "unit still enabled"; do
        skip "$c" "not installed, or the agent not active and answering"
    done
fi

section "systemd-analyze security csg-agent.service (in the booted container)"
if [ "$installed" = yes ]; then
    sec=$(ctr systemd-analyze security --no-pager "$unit" 2>&1)
    printf '%s\n' "$sec" | indent
    note "$(grep -o 'Overall exposure level.*' <<<"$sec")"
fi

# --- 6. remove, purge ------------------------------------------------------------------------

section "6. dpkg -r keeps config and state; dpkg --purge removes them"
if [ "$installed" = yes ]; then
    conf0=$(ctr sha256sum /etc/csg-agent/agent.toml)
    if out=$(in_timeout=120 ctr dpkg -r csg-agent 2>&1); then
        pass "dpkg -r csg-agent"
    else
        fail "dpkg -r csg-agent" "$out"
    fi
    check "agent stopped" not is_active
    expect "package state" "$(status_of 2>&1)" "deinstall ok config-files"
    expect "/etc/csg-agent/agent.toml kept, unchanged" "$(ctr sha256sum /etc/csg-agent/agent.toml 2>&1)" "$conf0"
    check "/var/lib/csg-agent kept" ctr test -d /var/lib/csg-agent
    if [ "$(status_of 2>&1)" = "deinstall ok config-files" ]; then
        if out=$(in_timeout=120 ctr dpkg --purge csg-agent 2>&1); then
            pass "dpkg --purge csg-agent"
        else
            fail "dpkg --purge csg-agent" "$out"
        fi
        check "/etc/csg-agent removed" not ctr test -e /etc/csg-agent
        check "/var/lib/csg-agent removed" not ctr test -e /var/lib/csg-agent
        check "dpkg no longer knows csg-agent" not status_of
    else
        for c in "dpkg --purge" "/etc/csg-agent removed" "/var/lib/csg-agent removed" "dpkg forgets"; do
            skip "$c" "the package was not in the removed state"
        done
    fi
else
    for c in "dpkg -r" "agent stopped" "package state" "config kept" "state kept" "dpkg --purge" \
        "/etc/csg-agent removed" "/var/lib/csg-agent removed" "dpkg forgets"; do
        skip "$c" "not installed"
    done
fi

finish
