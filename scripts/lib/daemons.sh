# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # inputs are set by the caller, outputs are read by it
#
# Private storage daemons for scripts/demo.sh and scripts/soak.sh: Mosquitto, smbd, tgtd,
# dbus-daemon + ganesha.nfsd and one csg-agent driving all three storage backends, each on a free
# loopback port with its configuration, state and log in one work directory. Sourced, not run:
#
#   source "$root/scripts/lib/daemons.sh"
#   daemons_init
#
# It only defines functions; nothing happens until one is called. Run as root, with the sbin
# directories on PATH, under `set -euo pipefail`.
#
# The caller sets:
#   prog              its name, for die's "PROG: FAILED: ..." line (demo, soak)
#   dir               the work directory (absolute): configs, state and logs go below it
#   agent, csgctl     the csg-agent and csgctl binaries (for agent_conf / start_agent)
#   bed               the test harness's csg-bed (free_ports)
#   instance          the agent's instance id; iqn_prefix: its iSCSI IQN prefix
#   lock_fd           optional: a file descriptor that no daemon may inherit (soak.sh's storage
#                     lock, held while it restarts a daemon); empty or unset for none
# and defines:
#   daemon_failed MESSAGE
#                     called when a daemon exits at start or is not ready in time. Either exit
#                     (demo.sh: die) or report and return (soak.sh: a failed restart is counted,
#                     not fatal); wait_ready and the start_* functions then return 1.
#
# The functions, in the order a caller uses them:
#   daemons_init      the bookkeeping below, empty; call once, before anything else here
#   die MESSAGE       the last 40 lines of each log in failure_logs, "PROG: FAILED: MESSAGE"
#                     (all on stderr), exit 1
#   alive PID         whether PID runs (not a zombie)
#   start NAME LOG CMD...    CMD in the background in its own session, output to LOG
#   stop PID SIGNAL GRACE    SIGNAL to its process group, SIGKILL after GRACE s, reaped
#   wait_ready NAME PID SECONDS CMD...   polls CMD until it succeeds
#   port_open PORT    whether something accepts on 127.0.0.1:PORT
#   free_ports N      N distinct free loopback ports, on one line (from the test harness's
#                     csg-bed, which the caller names in $bed)
#   pick_ports        sets mqtt_port smb_port iscsi_port nfs_port mnt_port (free_ports 5)
#   make_storage_root sets srv=$dir/srv (the agent's storage root) and makes its smb/nfs/iscsi
#                     directories and $dir/state (the agent's state directory)
#   mosquitto_conf, start_mosquitto      sets broker (mqtt://127.0.0.1:$mqtt_port)
#   smbd_conf, start_smbd                sets s ($dir/smbd) and smb_conf
#   tgtd_conf, start_tgtd                sets t ($dir/tgtd) and tgt_socket
#   dbus_conf, start_dbus                sets g ($dir/ganesha) and bus_address
#   ganesha_conf, start_ganesha          (after dbus_conf) sets plugins; dies without the VFS FSAL
#   agent_conf HEARTBEAT_S, start_agent  $dir/agent.toml for all of the above; sets agent_pid
#   stop_daemons      stops everything started, in reverse order, and smbd's samba-dcerpcd
# Each conf function writes the daemon's configuration once; each start function starts the
# daemon and waits until it serves, and can be called again to restart it after a stop.
#
# Bookkeeping (globals): pid_of[NAME] is the pid of the daemon started last under NAME, and
# daemon_order the names in the order of their first start; started is the pid start made last;
# failure_logs the logs that explain a failure now (start points it at the daemon's log; the
# caller may set it too).

daemons_init() {
  declare -gA pid_of=()
  daemon_order=()
  started=
  failure_logs=()
}

# Prints the end of the logs of the current step, then the message, and exits non-zero (the
# caller's EXIT trap cleans up).
die() {
  local f
  for f in ${failure_logs[@]+"${failure_logs[@]}"}; do
    [ -s "$f" ] || continue
    printf '\n----- last lines of %s -----\n' "$(basename "$f")" >&2
    tail -n 40 "$f" >&2
  done
  printf '\n%s: FAILED: %s\n' "$prog" "$*" >&2
  exit 1
}

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
# that Ctrl-C in the terminal reaches only the calling script (whose trap then stops everything
# in order), and so that smbd, which signals its whole process group when it stops, cannot hit
# the script. setsid does not fork here (a background child is no group leader), so $! is the
# daemon itself. A restarted daemon replaces its predecessor in pid_of.
start() {
  local name=$1 log=$2
  shift 2
  failure_logs=("$log")
  if [ -n "${lock_fd:-}" ]; then
    # A daemon restarted under the storage lock must not inherit it: it would hold the lock
    # for as long as it runs.
    setsid "$@" </dev/null >>"$log" 2>&1 {lock_fd}>&- &
  else
    setsid "$@" </dev/null >>"$log" 2>&1 &
  fi
  started=$!
  [ -n "${pid_of[$name]:-}" ] || daemon_order+=("$name")
  pid_of[$name]=$started
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

# wait_ready NAME PID SECONDS CMD...: polls CMD until it succeeds; when the daemon exits or does
# not get ready in time, calls daemon_failed (the caller's) and returns 1.
wait_ready() {
  local name=$1 pid=$2 secs=$3
  shift 3
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    alive "$pid" || { daemon_failed "$name exited at start"; return 1; }
    [ "$SECONDS" -lt "$end" ] || { daemon_failed "$name not ready within ${secs}s"; return 1; }
    sleep 0.1
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_ports N: N distinct free loopback ports, on one line, picked the way the tests pick theirs
# (tests/src/bin/csg-bed.rs: the kernel picks them, all held at once so none repeats; the
# daemons bind them a moment later).
free_ports() {
  "$bed" free-ports "$1"
}

# The ports of the daemons. (An assignment first, so that a failure of free_ports stops a
# `set -e` caller.)
pick_ports() {
  local ports
  ports=$(free_ports 5)
  read -r mqtt_port smb_port iscsi_port nfs_port mnt_port <<<"$ports"
}

# stop_daemons: stops every daemon started, in reverse order of their first start: the agent
# before the daemons it drives, the broker last. tgtd ignores SIGTERM while it has targets, and
# its state is in memory only: SIGKILL it. (stderr muted: bash would report every daemon it
# reaps after a SIGKILL as "Killed".)
stop_daemons() {
  local i name
  for ((i = ${#daemon_order[@]} - 1; i >= 0; i--)); do
    name=${daemon_order[i]}
    case $name in
      tgtd) stop "${pid_of[$name]}" KILL 1 ;;
      *) stop "${pid_of[$name]}" TERM 10 ;;
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
}

# ---------------------------------------------------------------------------------------------
# The daemons

# smbd (running as the SMB user) and Ganesha (root squashed to nobody) must be able to walk
# down to the shares.
make_storage_root() {
  chmod 755 "$dir"
  srv=$dir/srv # the agent's storage root: every share, export and LUN lives below it
  mkdir -p "$srv/smb" "$srv/nfs" "$srv/iscsi" "$dir/state"
  chmod 755 "$srv" "$srv/smb" "$srv/nfs" "$srv/iscsi"
}

# Mosquitto, as scripts/dev.sh runs it.
mosquitto_conf() {
  cat >"$dir/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
CONF
  broker="mqtt://127.0.0.1:$mqtt_port"
}
start_mosquitto() {
  start mosquitto "$dir/mosquitto.log" mosquitto -c "$dir/mosquitto.conf"
  wait_ready mosquitto "$started" 15 port_open "$mqtt_port"
}

# smbd: standalone, loopback only, its own lock/state/cache/private/pid directories (so its
# registry and passdb are its own). The agent adds shares to the registry (include = registry),
# which lives in the state directory and so survives an smbd restart.
smbd_conf() {
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
}
smbd_ready() { port_open "$smb_port" && smbcontrol -s "$smb_conf" smbd ping; }
start_smbd() {
  start smbd "$s/smbd.log" smbd -F --no-process-group --debug-stdout -d 1 -s "$smb_conf"
  wait_ready smbd "$started" 30 smbd_ready
}

# tgtd: in the foreground, its own control socket (tgtd appends ".0") and portal. Its targets
# live in memory only: after a restart the agent must re-create them (iscsi.watch_interval_s).
tgtd_conf() {
  t=$dir/tgtd
  mkdir -p "$t"
  tgt_socket=$t/socket
}
tgtd_ready() {
  local o
  o=$(TGT_IPC_SOCKET=$tgt_socket tgtadm --lld iscsi --mode portal --op show) &&
    [[ $o == *"Portal: 127.0.0.1:$iscsi_port,"* ]]
}
start_tgtd() {
  start tgtd "$t/tgtd.log" env "TGT_IPC_SOCKET=$tgt_socket" \
    tgtd -f --iscsi "portal=127.0.0.1:$iscsi_port"
  wait_ready tgtd "$started" 30 tgtd_ready
}

# NFS-Ganesha talks D-Bus: give it a private "system" bus that lets it own org.ganesha.nfsd.
dbus_conf() {
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
}
start_dbus() {
  # A restarted bus finds the socket of its predecessor.
  rm -f "$g/bus.sock"
  start dbus-daemon "$g/dbus.log" \
    dbus-daemon "--config-file=$g/bus.conf" --nofork --nopidfile --print-address
  wait_ready dbus-daemon "$started" 15 test -S "$g/bus.sock"
}

# ganesha.nfsd: FSAL VFS, NFSv4 only (NFSv3 would need rpcbind, which cannot be private: it
# binds port 111), loopback, private recovery directory, and the agent's EXPORT files from
# agent.d, read at every start. NFSv4 needs no portmapper: clients name the port.
ganesha_conf() {
  local d
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
}
ganesha_ready() {
  port_open "$nfs_port" &&
    dbus-send "--bus=$bus_address" --print-reply --dest=org.ganesha.nfsd \
      /org/ganesha/nfsd/ExportMgr org.ganesha.nfsd.exportmgr.ShowExports
}
start_ganesha() {
  # Started from its own directory, where anything it writes relative to its cwd stays private.
  cd "$g" || return
  start ganesha.nfsd "$g/ganesha.log" env "DBUS_SYSTEM_BUS_ADDRESS=$bus_address" \
    ganesha.nfsd -F -f "$g/ganesha.conf" -L /dev/stderr -p "$g/ganesha.pid" -N NIV_EVENT
  cd - >/dev/null || return
  wait_ready ganesha.nfsd "$started" 30 ganesha_ready
}

# agent_conf HEARTBEAT_S: the agent's configuration, all three storage backends pointed at the
# private daemons, heartbeats every HEARTBEAT_S seconds.
agent_conf() {
  cat >"$dir/agent.toml" <<CONF
[identity]
group_id = "GID_csg"
instance_id = "$instance"

[mqtt]
url = "$broker"
reconnect_min_ms = 200
reconnect_max_ms = 5000

[agent]
heartbeat_interval_s = $1
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
}
# Ready once it answers sys.ping through the broker.
start_agent() {
  start csg-agent "$dir/agent.log" "$agent" --config "$dir/agent.toml"
  agent_pid=$started
  wait_ready csg-agent "$agent_pid" 30 "$csgctl" call "$instance" sys.ping --timeout 2s
}
