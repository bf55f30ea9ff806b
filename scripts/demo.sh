#!/usr/bin/env bash
# Demo: one machine serves a real SMB share, NFS export and iSCSI target, all created with
# csgctl through csg-agent, and read back through the real clients.
#
#   scripts/demo.sh           run the demo and its checks, clean up, print a one-line summary
#   scripts/demo.sh --keep    the same, then leave everything running until Ctrl-C
#
# Run as root on Debian 12 (smbd switches to the SMB user's uid, and the agent makes that
# user's Unix account). The script starts private daemons -- Mosquitto, smbd, tgtd, and
# dbus-daemon + ganesha.nfsd -- on free loopback ports, with their configuration and state in
# one temporary directory, plus one agent driving all three storage backends. Every check runs
# the client tool (smbclient, nfs-ls, iscsi-ls, iscsi-inq, iscsi-readcapacity16); a failed check
# prints what the client said and exits non-zero.
#
# Nothing system-wide is touched, with one exception: Samba users need a Unix account, so the
# agent creates "csgdemo" (a system account, no home, no shell). The demo deletes it again on
# exit, through the agent, and with userdel if that did not work. Everything else is stopped
# and removed on exit, also after a failure or Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# The private daemons (shared with scripts/soak.sh), and die.
# shellcheck source-path=SCRIPTDIR source=lib/daemons.sh
source "$root/scripts/lib/daemons.sh"
prog=demo
daemons_init

usage() { echo "usage: $0 [--keep]" >&2; exit 2; }
keep=0
case $# in
  0) ;;
  1) [ "$1" = "--keep" ] || usage; keep=1 ;;
  *) usage ;;
esac

instance=gw-demo
smb_user=csgdemo
iqn_prefix=iqn.2026-11.com.example.csg
target_iqn=$iqn_prefix:demo
initiator=iqn.2026-11.com.example:demo-client
lun_bytes=$((64 * 1024 * 1024))

# ---------------------------------------------------------------------------------------------
# Output helpers

# Prints an argument vector the way it could be typed into a shell (for the "$ ..." lines).
quote() {
  local a words=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      words+=("$a")
    else
      words+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  printf '%s' "${words[*]}"
}

# die (scripts/lib/daemons.sh) prints the end of the logs in failure_logs, the logs that explain
# a failure in the current step (set as the demo goes along), then the message, and exits
# non-zero (the EXIT trap cleans up). A daemon that does not start ends the demo.
daemon_failed() { die "$@"; }

section() { printf '\n=== %s ===\n' "$*"; }

# csgctl, shown before it runs (like scripts/dev.sh). Any failure ends the demo.
run() {
  printf '\n$ csgctl %s\n' "$(quote "$@")"
  "$csgctl" "$@" || die "csgctl $1 ${2:-} ${3:-} failed (exit $?)"
}

# A client tool, shown before it runs; its output is printed indented and kept in $out for
# the checks. Returns the tool's exit status. Bounded, so a hung server cannot hang the demo.
out=
client() {
  local rc=0
  printf '\n$ %s\n' "$(quote "$@")"
  out=$(timeout --foreground 60 "$@" 2>&1) || rc=$?
  [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    /'
  return "$rc"
}

ok() { printf '  ok: %s\n' "$*"; }

# ---------------------------------------------------------------------------------------------
# Preconditions, packages, build

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (smbd switches to the SMB user's uid; the agent creates that account)" >&2
  exit 1
fi
# The daemons live in sbin directories, which are not on every PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if getent passwd "$smb_user" >/dev/null; then
  # Left over from a run that could not clean up (killed with SIGKILL): the agent refuses to
  # give a password to a system account it did not create, and we must not delete one we
  # did not create either.
  echo "demo: a Unix account $smb_user already exists; remove it first (userdel $smb_user)" >&2
  exit 1
fi

"$root/scripts/install-deps.sh" >/dev/null
cargo build --quiet --manifest-path "$root/Cargo.toml" --bins
# Where cargo put them: target/, unless CARGO_TARGET_DIR moved it.
bin_dir=${CARGO_TARGET_DIR:-$root/target}/debug
agent="$bin_dir/csg-agent"
csgctl="$bin_dir/csgctl"
# The test harness's command-line tools (tests/src/bin/csg-bed.rs): free ports here.
bed="$bin_dir/csg-bed"

# ---------------------------------------------------------------------------------------------
# One temporary directory for everything, removed on exit

dir=$(mktemp -d -t csg-demo.XXXXXX)
dir=$(realpath "$dir")
agent_pid=
smb_user_made=0

# The SMB users whose Unix accounts the agent created, as it reports them.
agent_made_users() {
  "$csgctl" smb user list "$instance" --json --timeout 15s |
    python3 -c 'import json, sys
print(" ".join(u["username"] for u in json.load(sys.stdin)["users"] if u["unix_user_created"]))'
}

cleanup() {
  local rc=$?
  # Finish cleaning up even if Ctrl-C is pressed again.
  trap '' INT TERM
  set +e
  # A plain successful run ends with its one-line summary; otherwise say what happens now.
  if [ "$rc" -ne 0 ] || [ "$keep" = 1 ]; then
    echo
    echo "demo: stopping everything and removing $dir"
  fi
  # Unix accounts are the one thing outside the temp dir: let the agent delete every one it
  # made (csgdemo, and any SMB user added by hand under --keep), while agent and smbd still run.
  if [ "$smb_user_made" = 1 ] && [ -n "$agent_pid" ] && alive "$agent_pid"; then
    local u
    for u in $(agent_made_users); do
      "$csgctl" smb user delete "$instance" --username "$u" --timeout 30s >/dev/null 2>&1
    done
  fi
  # The agent before the daemons it drives, the broker last; and smbd's samba-dcerpcd.
  stop_daemons
  # If the agent could not delete csgdemo, do it here: it did not exist before this run.
  if [ "$smb_user_made" = 1 ] && getent passwd "$smb_user" >/dev/null; then
    userdel -- "$smb_user" ||
      echo "demo: could not remove the Unix account $smb_user: run userdel $smb_user" >&2
  fi
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

make_storage_root # $srv: every share, export and LUN lives below it
printf 'Hello over SMB from csg-agent (%s)\n' "$(date -u +%FT%TZ)" >"$srv/smb/hello.txt"
printf 'Hello over NFS from csg-agent\n' >"$srv/nfs/hello-nfs.txt"
chmod 644 "$srv/smb/hello.txt" "$srv/nfs/hello-nfs.txt"

# The SMB password travels in files only (0600), never on a command line.
smb_password="Demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
(
  umask 077
  printf '%s\n' "$smb_password" >"$dir/smb-password"
  printf 'username = %s\npassword = %s\n' "$smb_user" "$smb_password" >"$dir/smb-auth"
)

# ---------------------------------------------------------------------------------------------
# Private daemons (their configuration, start and readiness checks: scripts/lib/daemons.sh)

section "Starting private daemons in $dir"
pick_ports

mosquitto_conf
start_mosquitto
echo "mosquitto    $broker"

smbd_conf
start_smbd
echo "smbd         127.0.0.1:$smb_port (smb.conf $smb_conf)"

tgtd_conf
start_tgtd
portal="iscsi://127.0.0.1:$iscsi_port"
echo "tgtd         $portal"

dbus_conf
start_dbus
ganesha_conf
start_ganesha
echo "ganesha.nfsd 127.0.0.1:$nfs_port (NFSv4, D-Bus $bus_address)"

# ---------------------------------------------------------------------------------------------
# The agent: all three storage backends, pointed at the private daemons

agent_conf 5
export CSG_BROKER=$broker
start_agent
echo "csg-agent    $instance (config $dir/agent.toml)"

# ---------------------------------------------------------------------------------------------
# Create everything with csgctl

section "csgctl creates an SMB user and share, an NFS export and an iSCSI target"
echo "(CSG_BROKER=$broker)"
failure_logs=("$dir/agent.log")
run call "$instance" sys.ping

# From here on the agent may have created the Unix account: the cleanup removes it.
smb_user_made=1
run smb user set "$instance" --username "$smb_user" --password-file "$dir/smb-password"
run smb share create "$instance" --name demo --path "$srv/smb" --comment "csg-agent demo share" \
  --read-only true --valid-users "$smb_user"
run nfs create "$instance" --name demo --path "$srv/nfs" --client 127.0.0.1:ro:root
run iscsi target create "$instance" --name demo --lun "1:$srv/iscsi/demo.img:$lun_bytes" \
  --initiator "$initiator"

section "What the agent manages"
run smb share list "$instance"
run nfs list "$instance"
run iscsi target list "$instance"

# ---------------------------------------------------------------------------------------------
# Read it all back through the real clients

section "SMB: smbclient as $smb_user"
failure_logs=("$s/smbd.log" "$dir/agent.log")
client smbclient -s "$smb_conf" -p "$smb_port" -A "$dir/smb-auth" -g -L 127.0.0.1 ||
  die "smbclient could not list the shares"
[[ $out == *"Disk|demo|"* ]] || die "smbclient does not list the share demo"
ok "smbclient lists the share demo"
client smbclient -s "$smb_conf" -p "$smb_port" -A "$dir/smb-auth" //127.0.0.1/demo \
  -c "get hello.txt $dir/hello-from-smb.txt" ||
  die "smbclient could not get hello.txt from //127.0.0.1/demo"
cmp -s "$srv/smb/hello.txt" "$dir/hello-from-smb.txt" ||
  die "the file read over SMB differs from $srv/smb/hello.txt"
ok "hello.txt read over SMB has the content written on the server: $(cat "$dir/hello-from-smb.txt")"

section "NFS: nfs-ls over NFSv4"
failure_logs=("$g/ganesha.log" "$dir/agent.log")
nfs_url="nfs://127.0.0.1/demo?version=4&nfsport=$nfs_port"
client nfs-ls "$nfs_url" || die "nfs-ls could not list $nfs_url"
[[ $out == *hello-nfs.txt* ]] || die "nfs-ls does not show hello-nfs.txt in the export"
ok "nfs-ls shows hello-nfs.txt in the export /demo"

section "iSCSI: libiscsi tools as $initiator"
failure_logs=("$t/tgtd.log" "$dir/agent.log")
client iscsi-ls -s -i "$initiator" "$portal/" ||
  die "iscsi-ls could not list the targets at $portal"
[[ $out == *"Target:$target_iqn"* ]] || die "iscsi-ls does not show the target $target_iqn"
[[ $out == *"Lun:1"* ]] || die "iscsi-ls does not show LUN 1 of $target_iqn"
ok "iscsi-ls shows the target $target_iqn and its LUN 1"
client iscsi-inq -i "$initiator" "$portal/$target_iqn/1" || die "iscsi-inq on LUN 1 failed"
ok "iscsi-inq answers for LUN 1"
client iscsi-readcapacity16 -i "$initiator" "$portal/$target_iqn/1" ||
  die "iscsi-readcapacity16 on LUN 1 failed"
size=$(sed -n 's/^Total size:[[:space:]]*\([0-9]*\).*/\1/p' <<<"$out")
[ "$size" = "$lun_bytes" ] || die "LUN 1 has ${size:-no} bytes, expected $lun_bytes (64 MiB)"
ok "LUN 1 has $size bytes (64 MiB)"

# ---------------------------------------------------------------------------------------------
# The end: stop (default) or stay up (--keep)

summary="SMB share //127.0.0.1:$smb_port/demo, NFS export 127.0.0.1:$nfs_port:/demo and"
summary+=" iSCSI target $target_iqn (64 MiB LUN) created with csgctl, read with smbclient,"
summary+=" nfs-ls and the libiscsi tools"
if [ "$keep" = 0 ]; then
  echo
  echo "demo: OK: $summary"
  exit 0
fi

cat <<EOT

demo: OK: $summary

Everything keeps running until Ctrl-C (which stops it and removes $dir).
  broker   $broker   (agent $instance)
  csgctl   CSG_BROKER=$broker $csgctl smb share list $instance
           CSG_BROKER=$broker $csgctl nfs list $instance
           CSG_BROKER=$broker $csgctl iscsi target list $instance
           CSG_BROKER=$broker $csgctl call $instance sys.status
  SMB      smbclient -s $smb_conf -p $smb_port -A $dir/smb-auth //127.0.0.1/demo
           (SMB users added with csgctl get Unix accounts; Ctrl-C deletes them again)
  NFS      nfs-ls '$nfs_url'
  iSCSI    iscsi-ls -s -i $initiator $portal/
  logs     $dir/agent.log, $dir/mosquitto.log, $s/smbd.log, $t/tgtd.log, $g/ganesha.log
EOT
# wait returns as soon as a trapped signal (Ctrl-C) arrives; if the agent dies instead, say so.
failure_logs=("$dir/agent.log")
wait "$agent_pid" || true
die "the agent exited"
