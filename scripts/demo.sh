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

# The logs that explain a failure in the current step (set as the demo goes along).
failure_logs=()

# Prints the end of the logs of the current step, then the message, and exits non-zero (the
# EXIT trap cleans up).
die() {
  local f
  if [ "${#failure_logs[@]}" -gt 0 ]; then
    for f in "${failure_logs[@]}"; do
      [ -s "$f" ] || continue
      printf '\n----- last lines of %s -----\n' "$(basename "$f")" >&2
      tail -n 40 "$f" >&2
    done
  fi
  printf '\ndemo: FAILED: %s\n' "$*" >&2
  exit 1
}

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
# Process helpers

# Whether a process runs (a zombie does not count: our children stay zombies until reaped).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# start NAME LOG CMD...: starts CMD in the background, output to LOG, in its own session: so
# that Ctrl-C in the terminal reaches only this script (whose trap then stops everything in
# order), and so that smbd, which signals its whole process group when it stops, cannot hit
# this script. setsid does not fork here (a background child is no group leader), so $! is
# the daemon itself.
names=()
pids=()
started=
start() {
  local name=$1 log=$2
  shift 2
  failure_logs=("$log")
  setsid "$@" </dev/null >>"$log" 2>&1 &
  started=$!
  names+=("$name")
  pids+=("$started")
}

# stop PID SIGNAL GRACE: sends SIGNAL to the daemon's process group (smbd's children are in
# it), SIGKILL after GRACE seconds, then reaps it.
stop() {
  local pid=$1 sig=$2 grace=$3 i
  kill "-$sig" -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# wait_ready NAME PID SECONDS CMD...: polls CMD until it succeeds; fails with its log when the
# daemon exits or does not get ready in time.
wait_ready() {
  local name=$1 pid=$2 secs=$3
  shift 3
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    alive "$pid" || die "$name exited at start"
    [ "$SECONDS" -lt "$end" ] || die "$name not ready within ${secs}s"
    sleep 0.1
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_ports N: N distinct free loopback ports, on one line (the kernel picks them, all held
# at once so none repeats; the daemons bind them a moment later).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

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
command -v python3 >/dev/null || { echo "demo: python3 is needed to pick free ports" >&2; exit 1; }
cargo build --quiet --manifest-path "$root/Cargo.toml" --bins
agent="$root/target/debug/csg-agent"
csgctl="$root/target/debug/csgctl"

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
  local rc=$? i
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
  # Reverse start order: the agent before the daemons it drives, the broker last. tgtd
  # ignores SIGTERM while it has targets, and its state is in memory only: SIGKILL it.
  # (stderr muted: bash would report every daemon it reaps after a SIGKILL as "Killed".)
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    case ${names[i]} in
      tgtd) stop "${pids[i]}" KILL 1 ;;
      *) stop "${pids[i]}" TERM 10 ;;
    esac
  done 2>/dev/null
  # smbd starts samba-dcerpcd on demand (for share listings) and it daemonizes: stop it by its
  # pid file, after checking that the pid really is the one of our smb.conf.
  local pidfile=$dir/smbd/run/samba-dcerpcd.pid pid
  if [ -f "$pidfile" ]; then
    pid=$(tr -dc 0-9 <"$pidfile")
    if [ -n "$pid" ] &&
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/smbd/smb.conf"; then
      kill -TERM "$pid" 2>/dev/null
    fi
  fi
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

# smbd (running as the SMB user) and Ganesha (root squashed to nobody) must be able to walk
# down to the shares.
chmod 755 "$dir"
srv=$dir/srv      # the agent's storage root: every share, export and LUN lives below it
mkdir -p "$srv/smb" "$srv/nfs" "$srv/iscsi" "$dir/state"
chmod 755 "$srv" "$srv/smb" "$srv/nfs" "$srv/iscsi"
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
# Private daemons

section "Starting private daemons in $dir"
ports=$(free_ports 5)
read -r mqtt_port smb_port iscsi_port nfs_port mnt_port <<<"$ports"

# Mosquitto, as scripts/dev.sh runs it.
cat >"$dir/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
CONF
start mosquitto "$dir/mosquitto.log" mosquitto -c "$dir/mosquitto.conf"
wait_ready mosquitto "$started" 15 port_open "$mqtt_port"
broker="mqtt://127.0.0.1:$mqtt_port"
echo "mosquitto    $broker"

# smbd: standalone, loopback only, its own lock/state/cache/private/pid directories (so its
# registry and passdb are its own). The agent adds shares to the registry (include = registry).
s=$dir/smbd
smb_conf=$s/smb.conf
mkdir -p "$s/lock" "$s/state" "$s/cache" "$s/private" "$s/run" "$s/ncalrpc"
cat >"$smb_conf" <<CONF
[global]
	server role = standalone server
	smb ports = $smb_port
	interfaces = lo
	bind interfaces only = yes
	disable netbios = yes
	map to guest = Bad User
	load printers = no
	printing = bsd
	printcap name = /dev/null
	disable spoolss = yes
	lock directory = $s/lock
	state directory = $s/state
	cache directory = $s/cache
	private dir = $s/private
	pid directory = $s/run
	ncalrpc dir = $s/ncalrpc
	passdb backend = tdbsam:$s/private/passdb.tdb
	include = registry
CONF
smbd_ready() { port_open "$smb_port" && smbcontrol -s "$smb_conf" smbd ping; }
start smbd "$s/smbd.log" smbd -F --no-process-group --debug-stdout -d 1 -s "$smb_conf"
wait_ready smbd "$started" 30 smbd_ready
echo "smbd         127.0.0.1:$smb_port (smb.conf $smb_conf)"

# tgtd: in the foreground, its own control socket (tgtd appends ".0") and portal.
t=$dir/tgtd
mkdir -p "$t"
tgt_socket=$t/socket
tgtd_ready() {
  local o
  o=$(TGT_IPC_SOCKET=$tgt_socket tgtadm --lld iscsi --mode portal --op show) &&
    [[ $o == *"Portal: 127.0.0.1:$iscsi_port,"* ]]
}
start tgtd "$t/tgtd.log" env "TGT_IPC_SOCKET=$tgt_socket" \
  tgtd -f --iscsi "portal=127.0.0.1:$iscsi_port"
wait_ready tgtd "$started" 30 tgtd_ready
portal="iscsi://127.0.0.1:$iscsi_port"
echo "tgtd         $portal"

# NFS-Ganesha talks D-Bus: give it a private "system" bus that lets it own org.ganesha.nfsd.
g=$dir/ganesha
mkdir -p "$g/agent.d" "$g/recov"
bus_address="unix:path=$g/bus.sock"
cat >"$g/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>$bus_address</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
CONF
start dbus-daemon "$g/dbus.log" \
  dbus-daemon "--config-file=$g/bus.conf" --nofork --nopidfile --print-address
wait_ready dbus-daemon "$started" 15 test -S "$g/bus.sock"

# ganesha.nfsd: FSAL VFS, NFSv4 only (NFSv3 would need rpcbind, which cannot be private: it
# binds port 111), loopback, private recovery directory, and the agent's EXPORT files from
# agent.d. NFSv4 needs no portmapper: clients name the port.
plugins=
for d in /usr/lib/*/ganesha /usr/lib64/ganesha /usr/lib/ganesha; do
  if [ -e "$d/libfsalvfs.so" ]; then plugins=$d; break; fi
done
[ -n "$plugins" ] || die "Ganesha's VFS plugin libfsalvfs.so is missing (package nfs-ganesha-vfs)"
cat >"$g/ganesha.conf" <<CONF
NFS_CORE_PARAM {
    Protocols = 4;
    NFS_Port = $nfs_port;
    MNT_Port = $mnt_port;
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    mount_path_pseudo = true;
    Plugins_Dir = "$plugins";
}
NFSv4 {
    Graceless = true;
    RecoveryRoot = "$g/recov";
}
%dir $g/agent.d/*.conf
CONF
ganesha_ready() {
  port_open "$nfs_port" &&
    dbus-send "--bus=$bus_address" --print-reply --dest=org.ganesha.nfsd \
      /org/ganesha/nfsd/ExportMgr org.ganesha.nfsd.exportmgr.ShowExports
}
# Started from its own directory, where anything it writes relative to its cwd stays private.
cd "$g"
start ganesha.nfsd "$g/ganesha.log" env "DBUS_SYSTEM_BUS_ADDRESS=$bus_address" \
  ganesha.nfsd -F -f "$g/ganesha.conf" -L /dev/stderr -p "$g/ganesha.pid" -N NIV_EVENT
cd - >/dev/null
wait_ready ganesha.nfsd "$started" 30 ganesha_ready
echo "ganesha.nfsd 127.0.0.1:$nfs_port (NFSv4, D-Bus $bus_address)"

# ---------------------------------------------------------------------------------------------
# The agent: all three storage backends, pointed at the private daemons

cat >"$dir/agent.toml" <<CONF
[identity]
group_id = "GID_csg"
instance_id = "$instance"

[mqtt]
url = "$broker"
reconnect_min_ms = 200
reconnect_max_ms = 5000

[agent]
heartbeat_interval_s = 5
log = "info"

[storage]
roots = ["$srv"]
state_dir = "$dir/state"
command_timeout_s = 20

[smb]
backend = "samba"
smb_conf = "$smb_conf"

[nfs]
backend = "ganesha"
ganesha_dir = "$g/agent.d"
dbus_address = "$bus_address"

[iscsi]
backend = "tgt"
iqn_prefix = "$iqn_prefix"
tgt_socket = "$tgt_socket"
CONF
export CSG_BROKER=$broker
start csg-agent "$dir/agent.log" "$agent" --config "$dir/agent.toml"
agent_pid=$started
wait_ready csg-agent "$agent_pid" 30 "$csgctl" call "$instance" sys.ping --timeout 2s
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
