#!/usr/bin/env bash
# Soak test: one release csg-agent with real storage daemons under a steady mixed load for a long
# time, sampling its memory, file descriptors, threads and CPU, to find slow leaks that no unit
# or end-to-end test runs long enough to show.
#
#   scripts/soak.sh [--duration 24h] [--out DIR] [options]
#
#   --duration D               load phase length (default 24h); D is 90s, 30m, 24h, 1d, 1h30m ...
#   --out DIR                  where the CSV, summary and logs go (default target/soak-TIMESTAMP)
#   --sample-every D           agent sampling period (default 10s)
#   --rate R                   sys.ping/sys.status calls per second, alternating (default 2)
#   --cycle-every D            storage create/get/delete cycle period (default 30s)
#   --broker-restart-every D   kill and restart Mosquitto on the same port (default 3m; 0 = never)
#   --daemon-restart-every D   restart tgtd, smbd, ganesha.nfsd in turn (default 10m; 0 = never)
#   --warmup D                 samples skipped for the slopes (default: 10 % of the run, but at
#                              least 12m when that leaves half the run: see "Warm-up" below)
#
# Run as root on Debian 12, like scripts/demo.sh (smbd and tgtd need it). It starts, in one
# temporary directory, a private Mosquitto on a free loopback port (set_tcp_nodelay), smbd, tgtd
# and dbus-daemon + ganesha.nfsd on free loopback ports, and one agent driving all three storage
# backends with 1 s heartbeats. Then, for the whole duration:
#   - a read loop calls sys.ping and sys.status through csgctl at --rate, checking each answer;
#   - a storage loop, every --cycle-every, creates an SMB share, an NFS export and an iSCSI target
#     with fresh names, reads them back, checks sys.status counts, deletes them again (the state
#     returns to its baseline, so it cannot grow without bound) and runs a 50-ping csgctl bench;
#   - csgctl watch follows the heartbeats (and reconnects through broker restarts itself);
#   - the broker is restarted every --broker-restart-every (alternately SIGTERM and SIGKILL, 3 s
#     down), and tgtd, smbd and ganesha.nfsd in turn every --daemon-restart-every; after each
#     storage daemon restart the agent must bring the permanent "keep" resources back in sync;
#   - a sampler writes the agent's RSS, fds, threads and CPU time to DIR/samples.csv.
# A csgctl that exits 3 (no reply) or 4 (broker unreachable: a restart) is re-run with the same
# request id, which the agent answers from its reply memory without running it twice; that is a
# retry, not a failure. An error reply, a wrong answer or a command still unanswered after 2
# minutes of retries is a failure. At the end the state must be back at its baseline, then
# empty once the keep resources are deleted, and the agent must stop cleanly on SIGTERM.
#
# It prints a summary with the least-squares slopes of RSS and fds after the warm-up, and exits 1
# if a command failed, the agent died or restarted (heartbeat seq reset), a daemon could not be
# started again or the agent did not restore a keep resource, or it did not stop cleanly. A
# daemon that exits unasked (the machine may be shared) is noted and started again.
#
# In DIR: samples.csv (time_utc, elapsed_s, rss_kb, hwm_kb, fds, threads, cpu_s, state_kb,
# cmds_ok, cmds_failed, watch_rss_kb), summary.txt, events.log (restarts, re-runs, failures),
# failures/ (each failed command with its output), heartbeats.txt ("seq ts_ms" per heartbeat
# csgctl watch saw), final-status.json (the agent's last sys.status), logs/ (daemon logs, gzip).
#
# Warm-up: the agent remembers every mutation's id with its reply for 10 minutes (the at-most-once
# guarantee; reads are forgotten once answered), so its memory rises by design for the first 10
# minutes of the storage cycles; a slope over that period measures the id memory filling up, not
# a leak.
#
# Binaries: built in release mode from this checkout (target/release, or $CARGO_TARGET_DIR), like
# scripts/bench.sh, unless CSG_AGENT_BIN and CSGCTL_BIN name prebuilt ones (and CSG_BED_BIN the
# harness's csg-bed, which reads the durations; built when not given).
#
# Nothing system-wide is touched (no SMB user is created: the shares need none). Everything
# stops and the temporary directory is removed on exit, also after a failure or Ctrl-C (which
# still prints the summary so far); the out dir stays.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# The private daemons (shared with scripts/demo.sh), and die.
# shellcheck source-path=SCRIPTDIR source=lib/daemons.sh
source "$root/scripts/lib/daemons.sh"
prog=soak
daemons_init

usage() {
  awk '/^#   scripts\/soak.sh/ { p = 1 } /^# Run as root/ { exit } p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# "1h02m03s" for a number of seconds.
hms() {
  local s=$1
  if ((s >= 3600)); then
    printf '%dh%02dm%02ds' $((s / 3600)) $((s % 3600 / 60)) $((s % 60))
  elif ((s >= 60)); then
    printf '%dm%02ds' $((s / 60)) $((s % 60))
  else
    printf '%ds' "$s"
  fi
}

duration=24h out='' sample_every=10s rate=2 cycle_every=30s broker_every=3m daemon_every=10m
warmup=
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case $1 in
    --duration) duration=$2 ;;
    --out) out=$2 ;;
    --sample-every) sample_every=$2 ;;
    --rate) rate=$2 ;;
    --cycle-every) cycle_every=$2 ;;
    --broker-restart-every) broker_every=$2 ;;
    --daemon-restart-every) daemon_every=$2 ;;
    --warmup) warmup=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[[ $rate =~ ^[0-9]+([.][0-9]+)?$ ]] && [ "$rate" != 0 ] ||
  { echo "soak: --rate: a positive number of calls per second" >&2; exit 2; }

instance=gw-soak
iqn_prefix=iqn.2026-11.com.example.csg
initiator=iqn.2026-11.com.example:soak-client
lun_bytes=$((1024 * 1024)) # small: the LUN files are created and deleted every cycle
broker_down=3              # seconds the broker stays down: clients see refused connects and back off

# ---------------------------------------------------------------------------------------------
# Preconditions, packages, build

if [ "$(id -u)" -ne 0 ]; then
  echo "soak: run as root (smbd and tgtd need it, as in scripts/demo.sh)" >&2
  exit 1
fi
# The daemons live in sbin directories, which are not on every PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
"$root/scripts/install-deps.sh" >/dev/null
command -v python3 >/dev/null || { echo "soak: python3 is needed (ports, checks, slopes)" >&2; exit 1; }
# The interpreter itself, not a wrapper such as a pyenv shim (which costs ten times the CPU of
# the check it runs), started without site packages: the checks need only json.
py=$(python3 -c 'import sys; print(sys.executable)')
# Where cargo puts them: target/, unless CARGO_TARGET_DIR moved it.
bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
if [ -n "${CSG_AGENT_BIN:-}" ] && [ -n "${CSGCTL_BIN:-}" ]; then
  agent=$CSG_AGENT_BIN
  csgctl=$CSGCTL_BIN
  [ -n "${CSG_BED_BIN:-}" ] ||
    cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p csg-e2e --bin csg-bed
else
  cargo build --quiet --release --manifest-path "$root/Cargo.toml" --bins
  agent=${CSG_AGENT_BIN:-$bin_dir/csg-agent}
  csgctl=${CSGCTL_BIN:-$bin_dir/csgctl}
fi
# The test harness's command-line tools (tests/src/bin/csg-bed.rs): durations here.
bed=${CSG_BED_BIN:-$bin_dir/csg-bed}
for b in "$agent" "$csgctl" "$bed"; do
  [ -x "$b" ] || { echo "soak: not an executable: $b" >&2; exit 1; }
done
agent=$(realpath "$agent")
csgctl=$(realpath "$csgctl")

# The durations, now that csg-bed is at hand: seconds from 90, 90s, 30m, 24h, 1d, 1h30m ...
for v in duration sample_every cycle_every broker_every daemon_every ${warmup:+warmup}; do
  s=$("$bed" duration "${!v}" 2>/dev/null) ||
    { echo "soak: --${v//_/-}: not a duration: ${!v}" >&2; usage; }
  printf -v "$v" '%s' "$s"
done
[ "$duration" -gt 0 ] && [ "$sample_every" -gt 0 ] && [ "$cycle_every" -gt 0 ] ||
  { echo "soak: --duration, --sample-every and --cycle-every must be positive" >&2; exit 2; }
# The default warm-up: 10 % of the run, but at least the id memory's 10 minutes plus 2 once
# the run is long enough to keep half of it for the slope.
if [ -z "$warmup" ]; then
  warmup=$((duration / 10))
  w=$((720 < duration / 2 ? 720 : duration / 2))
  ((warmup >= w)) || warmup=$w
fi

# Backtrace capture keeps ~30 MB of symbol data resident after the first captured error; a
# service runs without it, and so must a memory measurement.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE RUST_LOG

out=${out:-$root/target/soak-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" "$out/failures"
out=$(realpath "$out")
events=$out/events.log
csv=$out/samples.csv
: >"$events"
rm -f "$out/final-status.json"

# ---------------------------------------------------------------------------------------------
# Helpers

now() { date -u +%FT%TZ; }
event() { printf '%s %s\n' "$(now)" "$*" >>"$events"; }
say() { printf 'soak: %s\n' "$*"; }

# die (scripts/lib/daemons.sh) prints the end of the logs in failure_logs, the logs that explain
# a setup failure, then the message, and exits 1. A daemon that does not start is reported on
# stderr; the caller decides (setup: die; a restart: counted as a failure, the load goes on).
daemon_failed() { echo "$*" >&2; }

# jcheck FILE EXPR: the JSON document in FILE satisfies the Python expression EXPR over r (the
# document) and e (the environment: names of the current cycle).
jcheck() {
  "$py" -S - "$1" "$2" <<'PY' 2>/dev/null
import json, os, sys
r, e = json.load(open(sys.argv[1])), os.environ
sys.exit(0 if eval(sys.argv[2]) else 1)
PY
}

# ---------------------------------------------------------------------------------------------
# Commands through csgctl, counted
#
# Every process that sends commands (the read loop, the storage loop, the main shell) keeps its
# own counters and writes them to $dir/count.NAME after each command: sent ok failed retried.

count_name=main
n_sent=0 n_ok=0 n_failed=0 n_retried=0 n_seq=0
run_tag=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
save_counts() {
  printf '%d %d %d %d\n' "$n_sent" "$n_ok" "$n_failed" "$n_retried" >"$dir/count.$count_name.new"
  mv -f "$dir/count.$count_name.new" "$dir/count.$count_name"
}

# The answer checks of the read loop are bash matches: a Python start per call would cost more
# CPU than the call itself.
check_answer() {
  local check=$1 f=$2 body
  case $check in
    pong)
      body=$(<"$f")
      [[ $body == *'"pong": true'* ]]
      ;;
    heartbeat)
      body=$(<"$f")
      [[ $body == *'"type": "heartbeat"'* && $body == *"\"instance_id\": \"$instance\""* ]]
      ;;
    *) jcheck "$f" "$check" ;;
  esac
}

# ctl LABEL CHECK CSGCTL-ARGS...: runs one csgctl command with a fresh request id and checks its
# answer (stdout) with CHECK (pong, heartbeat, or a Python expression for jcheck). Exit 3 (no
# reply) or 4 (broker unreachable or lost) means the broker was restarting: the command is re-run
# with the same id, which the agent answers from its reply memory without executing it twice,
# for up to 2 minutes. csgctl runs in the background with `wait`, so that a TERM from the
# cleanup is handled at once, and under `timeout` so that a hung csgctl is a failure, not a
# stall. Returns 0 when the answer is right.
ctl() {
  local label=$1 check=$2
  shift 2
  local id="soak-$run_tag-$count_name-$((++n_seq))" rc attempt=1 give_up=$((SECONDS + 120))
  local f="$dir/ctl.$count_name" idarg=(--id "$id")
  # bench gives each of its pings a fresh id and takes no --id: a re-run sends new pings, which
  # is harmless.
  [ "$1" != bench ] || idarg=()
  n_sent=$((n_sent + 1))
  while :; do
    rc=0
    timeout -k 5 100 "$csgctl" "$@" "${idarg[@]}" >"$f.out" 2>"$f.err" &
    wait $! || rc=$?
    if [ "$rc" = 3 ] || [ "$rc" = 4 ]; then
      if [ "$SECONDS" -lt "$give_up" ]; then
        event "RETRY $label id=$id attempt=$attempt exit=$rc: $(head -c 300 "$f.err" | tr '\n' ' ')"
        n_retried=$((n_retried + 1)) attempt=$((attempt + 1))
        sleep 2 &
        wait $! || true
        continue
      fi
    fi
    break
  done
  if [ "$rc" = 0 ] && check_answer "$check" "$f.out"; then
    n_ok=$((n_ok + 1))
    save_counts
    return 0
  fi
  n_failed=$((n_failed + 1))
  save_counts
  local why="exit $rc"
  [ "$rc" != 0 ] || why="wrong answer (check: $check)"
  [ "$rc" != 124 ] || why="csgctl hung (killed after 100 s)"
  event "FAIL $label id=$id attempts=$attempt: $why: $(head -c 300 "$f.err" | tr '\n' ' ')"
  {
    echo "time: $(now)"
    echo "command: csgctl $* ${idarg[*]}"
    echo "attempts: $attempt"
    echo "result: $why"
    echo "--- stdout"
    cat "$f.out"
    echo "--- stderr"
    cat "$f.err"
  } >"$out/failures/$id.txt"
  return 1
}

# ---------------------------------------------------------------------------------------------
# One temporary directory for everything, removed on exit

dir=$(mktemp -d -t csg-soak.XXXXXX)
dir=$(realpath "$dir")
loop_pids=()
agent_pid=
agent_exit=
load_started=0
load_t1=
summarized=0
lock_fd=

cleanup() {
  local rc=$? i
  # Finish cleaning up even if Ctrl-C is pressed again.
  trap '' INT TERM
  set +e
  [ "$rc" = 0 ] || echo "soak: stopping everything (exit $rc)" >&2
  [ -z "$lock_fd" ] || exec {lock_fd}>&-
  for i in "${loop_pids[@]}"; do kill -TERM "$i" 2>/dev/null; done
  for i in "${loop_pids[@]}"; do wait "$i" 2>/dev/null; done
  # Interrupted in the load phase: the summary so far is still worth having.
  if [ "$load_started" = 1 ] && [ "$summarized" = 0 ]; then
    summarize "interrupted (exit $rc)" >&2
  fi
  # The agent before the daemons it drives, the broker last; and smbd's samba-dcerpcd.
  stop_daemons
  # The logs stay with the results (compressed: the agent logs every request).
  mkdir -p "$out/logs"
  for f in "$dir/agent.log" "$dir/mosquitto.log" "$dir/smbd/smbd.log" "$dir/tgtd/tgtd.log" \
    "$dir/ganesha/ganesha.log"; do
    [ -f "$f" ] && gzip -c "$f" >"$out/logs/$(basename "$f").gz"
  done
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Private daemons, as scripts/demo.sh starts them (scripts/lib/daemons.sh; each start function is
# reused on restarts)

say "binaries $agent, $csgctl"
say "starting private daemons in $dir"
make_storage_root # $srv: every share, export and LUN lives below it
pick_ports
mosquitto_conf
start_mosquitto || die "mosquitto did not start"
export CSG_BROKER=$broker
smbd_conf
start_smbd || die "smbd did not start"
tgtd_conf
start_tgtd || die "tgtd did not start"
dbus_conf
start_dbus || die "dbus-daemon did not start"
ganesha_conf
start_ganesha || die "ganesha.nfsd did not start"
say "mosquitto $broker, smbd :$smb_port, tgtd :$iscsi_port, ganesha.nfsd :$nfs_port"

# ---------------------------------------------------------------------------------------------
# The agent: all three storage backends, 1 s heartbeats, the default id memory (10 minutes,
# 65536 ids) so that its memory is what a production agent would hold

agent_conf 1
start_agent || die "the agent did not answer sys.ping"
say "csg-agent $instance, pid $agent_pid (config $dir/agent.toml)"
failure_logs=("$dir/agent.log")

# ---------------------------------------------------------------------------------------------
# Storage: the permanent "keep" resources (so that daemon restarts have something for the agent
# to restore) and the create/check/delete cycle

# A storage command's answer checks, as Python over r (the result) and e (the environment).
ok_share='r["changed"] is True and r["share"]["managed"] is True and r["share"]["drift"] == []'
ok_export='r["changed"] is True and r["export"]["drift"] == []'
ok_target='r["changed"] is True and r["name"] == e["NAME"] and r["created_files"] == [e["LUN"]]'
in_sync='r.get("drift") == []'
share_gone='r == {"existed": True}'
export_gone='r["existed"] is True and r["name"] == e["NAME"]'
target_gone='r["existed"] is True and r["deleted_files"] == [e["LUN"]]'
# sys.status: every family has COUNT resources, none drifted, every service up.
status_counts='all(r["storage"][f] == {"count": int(e["COUNT"]), "drift": 0} for f in ("nfs", "smb", "iscsi")) and all(r["services"][f]["up"] for f in ("nfs", "smb", "iscsi"))'

# create_set NAME / delete_set NAME: one SMB share, NFS export and iSCSI target named NAME.
create_set() {
  local rc=0
  export NAME=$1 LUN=$srv/iscsi/$1.img
  mkdir -p "$srv/smb/$1" "$srv/nfs/$1"
  chmod 755 "$srv/smb/$1" "$srv/nfs/$1"
  ctl smb.share.create "$ok_share" smb share create "$instance" --json --name "$1" \
    --path "$srv/smb/$1" --comment "soak $1" || rc=1
  ctl nfs.export.create "$ok_export" nfs create "$instance" --json --name "$1" \
    --path "$srv/nfs/$1" --client 127.0.0.1:rw:root || rc=1
  ctl iscsi.target.create "$ok_target" iscsi target create "$instance" --json --name "$1" \
    --lun "1:$LUN:$lun_bytes" --initiator "$initiator" || rc=1
  return "$rc"
}
check_set() {
  local rc=0
  export NAME=$1 LUN=$srv/iscsi/$1.img
  ctl smb.share.get "$in_sync" smb share get "$instance" --json --name "$1" || rc=1
  ctl nfs.export.get "$in_sync" nfs get "$instance" --json --name "$1" || rc=1
  ctl iscsi.target.get "$in_sync" iscsi target get "$instance" --json --name "$1" || rc=1
  return "$rc"
}
delete_set() {
  local rc=0
  export NAME=$1 LUN=$srv/iscsi/$1.img
  ctl smb.share.delete "$share_gone" smb share delete "$instance" --json --name "$1" || rc=1
  ctl nfs.export.delete "$export_gone" nfs delete "$instance" --json --name "$1" || rc=1
  ctl iscsi.target.delete "$target_gone" iscsi target delete "$instance" --json --name "$1" \
    --delete-backing-files || rc=1
  rmdir "$srv/smb/$1" "$srv/nfs/$1" 2>/dev/null || true
  return "$rc"
}
status_is() {
  export COUNT=$1
  ctl sys.status "$status_counts" call "$instance" sys.status
}

# The storage loop and the daemon restarts take turns through this lock: a storage daemon
# restarted in the middle of a mutation makes a legitimate error, which would hide real ones.
# flock runs as a background child with `wait`, so a TERM is handled while waiting; the lock
# belongs to the open file, which this shell keeps.
lock() {
  exec {lock_fd}>>"$dir/storage.lock"
  flock "$lock_fd" &
  wait $!
}
# The main shell polls for the lock instead, so that it keeps reviving daemons while a storage
# cycle finishes (a cycle waiting for a dead broker would otherwise wait for ever).
lock_main() {
  exec {lock_fd}>>"$dir/storage.lock"
  until flock -n "$lock_fd"; do
    revive
    sleep 1
  done
}
unlock() {
  exec {lock_fd}>&-
  lock_fd=
}

# Keep running until the TERM from the cleanup; the running csgctl or sleep is killed with it.
loop_trap() { trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM; }
nap() {
  sleep "$1" &
  wait $! || true
}

# Paced by the clock, not by sleeping a period after each call, so that the rate holds whatever
# a call takes; after a stall (broker down) it carries on at the rate instead of catching up.
read_loop() {
  loop_trap
  count_name='read'
  save_counts
  local i=0 period_us next now w frac
  period_us=$(awk -v r="$rate" 'BEGIN { printf "%d", 1e6 / r }')
  next=${EPOCHREALTIME/[.,]/}
  while :; do
    if ((i++ % 2 == 0)); then
      ctl sys.ping pong call "$instance" sys.ping || true
    else
      ctl sys.status heartbeat call "$instance" sys.status || true
    fi
    next=$((next + period_us))
    now=${EPOCHREALTIME/[.,]/}
    if ((next > now)); then
      w=$((next - now))
      printf -v frac '%06d' $((w % 1000000))
      nap "$((w / 1000000)).$frac"
    else
      next=$now
    fi
  done
}

storage_loop() {
  loop_trap
  count_name='storage'
  save_counts
  local n=0 next name
  while :; do
    next=$((SECONDS + cycle_every))
    n=$((n + 1)) name=c$n
    lock
    create_set "$name" || true
    status_is 2 || true
    check_set "$name" || true
    delete_set "$name" || true
    status_is 1 || true
    unlock
    echo "$n" >"$dir/cycles"
    # A short burst of pings on one connection: the agent's pipelined path, next to the
    # one-request-per-connection calls of the loops.
    ctl bench 'r["errors"] == 0 and r["lost"] == 0' bench "$instance" --count 50 --warmup 0 --json \
      || true
    ((SECONDS >= next)) || nap $((next - SECONDS))
  done
}
# csgctl watch follows the heartbeats for the whole run (it reconnects by itself through broker
# restarts); one short line per heartbeat ("seq ts_ms") keeps the file small over 24 hours.
heartbeats=$out/heartbeats.txt
: >"$heartbeats"
watch_loop() {
  local wpid='' line
  trap 'kill $wpid 2>/dev/null; exit 0' TERM
  while :; do
    "$csgctl" watch "$instance" --json 2>>"$out/watch.err" > >(
      while IFS= read -r line; do
        if [[ $line =~ \"type\":\"heartbeat\" && $line =~ \"seq\":([0-9]+) ]]; then
          seq=${BASH_REMATCH[1]}
          [[ $line =~ \"ts_ms\":([0-9]+) ]] || continue
          printf '%s %s\n' "$seq" "${BASH_REMATCH[1]}"
        elif [[ $line =~ \"type\":\"presence\" && $line =~ \"state\":\"([a-z]+)\" ]]; then
          printf 'presence %s %s\n' "${BASH_REMATCH[1]}" "$(date +%s%3N)"
        fi
      done >>"$heartbeats"
    ) &
    wpid=$!
    echo "$wpid" >"$dir/watch.pid"
    wait "$wpid" || true
    event "WATCH csgctl watch exited; restarting it"
    nap 1
  done
}

# The sampler: one CSV line every --sample-every.
clk_tck=$(getconf CLK_TCK)
sampler() {
  trap 'exit 0' TERM
  local t0=$SECONDS st rss hwm threads fds rest f cpu state ok failed wpid wrss c
  echo "time_utc,elapsed_s,rss_kb,hwm_kb,fds,threads,cpu_s,state_kb,cmds_ok,cmds_failed,watch_rss_kb" >"$csv"
  while :; do
    st=$(<"/proc/$agent_pid/status") || exit 0
    [[ $st =~ VmRSS:[[:space:]]+([0-9]+) ]] && rss=${BASH_REMATCH[1]}
    [[ $st =~ VmHWM:[[:space:]]+([0-9]+) ]] && hwm=${BASH_REMATCH[1]}
    [[ $st =~ Threads:[[:space:]]+([0-9]+) ]] && threads=${BASH_REMATCH[1]}
    f=("/proc/$agent_pid/fd/"*)
    fds=${#f[@]}
    rest=$(<"/proc/$agent_pid/stat") || exit 0
    read -ra f <<<"${rest##*) }"
    cpu=$(awk -v t=$((f[11] + f[12])) -v hz="$clk_tck" 'BEGIN { printf "%.2f", t / hz }')
    state=$(du -sk "$dir/state" 2>/dev/null | cut -f1)
    ok=0 failed=0
    for c in "$dir"/count.*; do
      [[ $c == *.new ]] && continue
      read -r _ a b _ <"$c" 2>/dev/null || continue
      ok=$((ok + a)) failed=$((failed + b))
    done
    wrss=
    wpid=$(cat "$dir/watch.pid" 2>/dev/null) || true
    if [ -n "$wpid" ] && st=$(<"/proc/$wpid/status") 2>/dev/null; then
      [[ $st =~ VmRSS:[[:space:]]+([0-9]+) ]] && wrss=${BASH_REMATCH[1]}
    fi
    printf '%s,%d,%s,%s,%s,%s,%s,%s,%d,%d,%s\n' "$(now)" $((SECONDS - t0)) "$rss" "$hwm" \
      "$fds" "$threads" "$cpu" "$state" "$ok" "$failed" "$wrss" >>"$csv"
    nap "$sample_every"
  done
}

# ---------------------------------------------------------------------------------------------
# Restarts (from the main shell, which owns the daemons)

n_broker=0
declare -A n_daemon=([tgtd]=0 [smbd]=0 [ganesha.nfsd]=0)
restart_failures=0

restart_broker() {
  n_broker=$((n_broker + 1))
  # Alternately a clean shutdown and a crash: the agent sees a closed connection either way,
  # but only after SIGKILL are the broker's own goodbyes missing.
  local sig=TERM
  ((n_broker % 2)) || sig=KILL
  event "BROKER restart $n_broker: SIG$sig, down ${broker_down}s"
  stop "${pid_of[mosquitto]}" "$sig" 10 2>/dev/null
  sleep "$broker_down"
  if ! start_mosquitto; then
    event "FAIL mosquitto did not come back on port $mqtt_port"
    restart_failures=$((restart_failures + 1))
    return 1
  fi
}

# Daemons that exit without being asked: this machine is shared, and a daemon can die or be
# killed by someone else. The soak measures the agent, so the daemon is noted and started again
# (with the exit status, which names the signal if it was one), and the load goes on.
n_unexpected=0
revive() {
  local name rc
  for name in mosquitto smbd tgtd dbus-daemon ganesha.nfsd; do
    ! alive "${pid_of[$name]}" || continue
    rc=0
    wait "${pid_of[$name]}" 2>/dev/null || rc=$?
    n_unexpected=$((n_unexpected + 1))
    event "UNEXPECTED $name (pid ${pid_of[$name]}) exited by itself with status $rc$( ((rc <= 128)) || echo " (signal $((rc - 128)))"); starting it again"
    rc=0
    case $name in
      mosquitto) start_mosquitto || rc=$? ;;
      smbd) start_smbd || rc=$? ;;
      tgtd) start_tgtd || rc=$? ;;
      # Ganesha lives on that bus: it goes and comes back with it.
      dbus-daemon) { start_dbus && stop "${pid_of[ganesha.nfsd]}" TERM 10 && start_ganesha; } || rc=$? ;;
      ganesha.nfsd) start_ganesha || rc=$? ;;
    esac 2>/dev/null
    if [ "$rc" != 0 ]; then
      event "FAIL $name did not start again"
      restart_failures=$((restart_failures + 1))
    fi
  done
}

# restart_daemon NAME: stops and starts one storage daemon under the storage lock, then waits
# until the agent reports the "keep" resource of that family in sync again (tgtd forgets its
# targets: the agent must re-create them; smbd and Ganesha re-read their registry and files).
restart_daemon() {
  local name=$1 get end
  n_daemon[$name]=$((n_daemon[$name] + 1))
  lock_main
  event "DAEMON restart $name (${n_daemon[$name]})"
  local back=0
  case $name in
    tgtd)
      stop "${pid_of[tgtd]}" KILL 1 2>/dev/null
      start_tgtd || back=$?
      get=(iscsi target get)
      ;;
    smbd)
      stop "${pid_of[smbd]}" TERM 10 2>/dev/null
      start_smbd || back=$?
      get=(smb share get)
      ;;
    ganesha.nfsd)
      stop "${pid_of[ganesha.nfsd]}" TERM 10 2>/dev/null
      start_ganesha || back=$?
      get=(nfs get)
      ;;
  esac
  if [ "$back" != 0 ]; then
    event "FAIL $name did not start again"
    restart_failures=$((restart_failures + 1))
    unlock
    return 1
  fi
  end=$((SECONDS + 60))
  until "$csgctl" "${get[@]}" "$instance" --name keep --json >"$dir/get.out" 2>/dev/null &&
    jcheck "$dir/get.out" "$in_sync"; do
    if [ "$SECONDS" -ge "$end" ]; then
      event "FAIL the agent did not bring keep back in sync within 60 s of the $name restart: $(tr '\n' ' ' <"$dir/get.out" | head -c 400)"
      restart_failures=$((restart_failures + 1))
      break
    fi
    sleep 1
  done
  event "DAEMON $name back, keep in sync after $((SECONDS - end + 60)) s"
  unlock
}

# ---------------------------------------------------------------------------------------------
# Summary

summarize() {
  local result=$1 k c a b d e
  summarized=1
  local meta=$dir/meta
  {
    for k in read storage main; do
      c=$dir/count.$k
      read -r a b d e <"$c" 2>/dev/null || { a=0 b=0 d=0 e=0; }
      echo "count_$k=$a $b $d $e"
    done
    echo "cycles=$(cat "$dir/cycles" 2>/dev/null || echo 0)"
    echo "broker_restarts=$n_broker"
    echo "daemon_restarts=tgtd ${n_daemon[tgtd]}, smbd ${n_daemon[smbd]}, ganesha.nfsd ${n_daemon[ganesha.nfsd]}"
    echo "restart_failures=$restart_failures"
    echo "elapsed=$((${load_t1:-$SECONDS} - load_t0))"
    echo "unexpected=$n_unexpected"
    echo "planned=$duration"
    echo "warmup=$warmup"
    echo "sample_every=$sample_every"
    echo "agent_exit=${agent_exit:-still running}"
    echo "result=$result"
    echo "rate=$rate"
    echo "cycle_every=$cycle_every"
  } >"$meta"
  "$py" - "$csv" "$meta" "$heartbeats" "$events" "$out/final-status.json" <<'PY' | tee "$out/summary.txt"
import csv, json, sys

rows = list(csv.DictReader(open(sys.argv[1])))
meta = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[2]) if "=" in l)
counts = {k[6:]: [int(x) for x in v.split()] for k, v in meta.items() if k.startswith("count_")}

def hms(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

def slope(pts):
    """Least-squares slope (per hour) and r² of (seconds, value) points."""
    n = len(pts)
    if n < 3:
        return None, None
    xs = [p[0] / 3600 for p in pts]
    ys = [p[1] for p in pts]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    if sxx == 0:
        return None, None
    b = sxy / sxx
    r2 = sxy * sxy / (sxx * syy) if syy else None
    return b, r2

def fmt_slope(b, r2, unit):
    if b is None:
        return "n/a (too few samples)"
    return f"{b:+.1f} {unit}/h ({'constant' if r2 is None else f'r² {r2:.2f}'})"

elapsed, warm, every = int(meta["elapsed"]), int(meta["warmup"]), int(meta["sample_every"])
print()
print("=== soak summary ===")
print(f"result:      {meta['result']}")
print(f"duration:    {hms(elapsed)} of load (planned {hms(int(meta['planned']))})")
print(f"samples:     {len(rows)}, every {every}s -> {sys.argv[1]}")
r_s, r_o, r_f, r_r = counts.get("read", [0] * 4)
s_s, s_o, s_f, s_r = counts.get("storage", [0] * 4)
m_s, m_o, m_f, m_r = counts.get("main", [0] * 4)
tot = [a + b + c for a, b, c in zip(counts.get("read", [0] * 4), counts.get("storage", [0] * 4), counts.get("main", [0] * 4))]
print(f"commands:    sent {tot[0]}, ok {tot[1]}, failed {tot[2]}; re-runs with the same id after exit 3/4: {tot[3]}")
rate = f"{r_s / elapsed:.2f}/s" if elapsed else "-"
print(f"  reads      sys.ping + sys.status: sent {r_s}, ok {r_o}, failed {r_f}, re-runs {r_r} ({rate}, target {meta['rate']}/s)")
print(f"  storage    {meta['cycles']} cycles (create/get/delete of a share, an export, a target; sys.status; 50-ping bench):"
      f" sent {s_s}, ok {s_o}, failed {s_f}, re-runs {s_r}")
print(f"  setup/end  keep resources, final checks: sent {m_s}, ok {m_o}, failed {m_f}, re-runs {m_r}")
print(f"restarts:    broker {meta['broker_restarts']}; {meta['daemon_restarts']}; failed restarts/recoveries {meta['restart_failures']};"
      f" daemons that exited unasked and were started again: {meta['unexpected']}")

# Heartbeats: seq must only grow (a reset is an agent restart); gaps show reconnects.
hb, resets, prev, gaps, online = [], 0, None, [], 0
for line in open(sys.argv[3]):
    f = line.split()
    if f and f[0] == "presence":
        online += f[1] == "online"
        continue
    if len(f) != 2:
        continue
    seq, ts = int(f[0]), int(f[1])
    if prev is not None:
        if seq < prev[0]:
            resets += 1
        elif seq > prev[0]:
            gaps.append((ts - prev[1]) / 1000)
    hb.append((seq, ts))
    prev = (seq, ts)
if hb:
    seqs = [s for s, _ in hb]
    missed = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]) if b > a)
    long_gaps = [g for g in gaps if g > 2.5]
    print(f"heartbeats:  {len(hb)} received (seq {seqs[0]}..{seqs[-1]}), {missed} not received (broker down),"
          f" gaps > 2.5 s: {len(long_gaps)} (max {max(gaps, default=0):.1f} s), seq resets (agent restarts): {resets},"
          f" online presences: {online}")
else:
    print("heartbeats:  none received")

if rows:
    def col(name, conv=int):
        return [(int(r["elapsed_s"]), conv(r[name])) for r in rows if r[name] != ""]
    rss, fds, thr = col("rss_kb"), col("fds"), col("threads")
    cpu, state, wrss = col("cpu_s", float), col("state_kb"), col("watch_rss_kb")
    after = lambda pts: [p for p in pts if p[0] >= warm]
    half = lambda pts: [p for p in pts if p[0] >= pts[-1][0] / 2] if pts else []
    def line(name, pts, unit):
        vals = [v for _, v in pts]
        b, r2 = slope(after(pts))
        bh, r2h = slope(half(pts))
        post = [v for _, v in after(pts)]
        print(f"{name:<12} first {vals[0]}, last {vals[-1]}, max {max(vals)}, min {min(vals)};"
              f" after warm-up: first {post[0] if post else '-'}, last {post[-1] if post else '-'}, max {max(post) if post else '-'}")
        print(f"{'':<12} slope after warm-up: {fmt_slope(b, r2, unit)}; over the second half: {fmt_slope(bh, r2h, unit)}")
    print(f"warm-up:     {hms(warm)} skipped for slopes ({len(after(rss))} of {len(rss)} samples used)")
    line("RSS KiB", rss, "KiB")
    line("fds", fds, "fds")
    t = [v for _, v in thr]
    print(f"threads:     first {t[0]}, last {t[-1]}, max {max(t)}")
    if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0]:
        used = cpu[-1][1] - cpu[0][1]
        span = cpu[-1][0] - cpu[0][0]
        print(f"agent CPU:   {cpu[-1][1]:.1f} s in total; {used:.1f} s over {hms(span)} sampled = {100 * used / span:.2f} % of one core")
    st = [v for _, v in state]
    print(f"state dir:   first {st[0]} KiB, last {st[-1]} KiB, max {max(st)} KiB")
    if wrss:
        w = [v for _, v in wrss]
        b, r2 = slope(after(wrss))
        print(f"csgctl watch RSS KiB: first {w[0]}, last {w[-1]}, max {max(w)}; slope after warm-up {fmt_slope(b, r2, 'KiB')}")
try:
    c = json.load(open(sys.argv[5]))["counters"]
    print("agent counters at the end: " + ", ".join(f"{k} {v}" for k, v in c.items()))
except (OSError, ValueError, KeyError):
    pass
print(f"agent:       {meta['agent_exit']}")
fails = [l.rstrip() for l in open(sys.argv[4]) if " FAIL " in l]
if fails:
    print(f"failures ({len(fails)}; details in failures/):")
    for l in fails[:20]:
        print("  " + l[:300])
    if len(fails) > 20:
        print(f"  ... {len(fails) - 20} more in events.log")
PY
}

# ---------------------------------------------------------------------------------------------
# Setup checks, then the load phase

ctl sys.ping pong call "$instance" sys.ping || die "sys.ping failed"
create_set keep || die "could not create the keep resources (see $out/failures)"
status_is 1 || die "sys.status does not show the keep resources in sync"

say "load for $(hms "$duration"): reads at ${rate}/s, a storage cycle every $(hms "$cycle_every"),"
say "  broker restart every $(hms "$broker_every"), storage daemon restart every $(hms "$daemon_every"),"
say "  samples every $(hms "$sample_every") -> $csv"
say "  (events in $events)"
load_started=1
load_t0=$SECONDS
sampler &
loop_pids+=($!)
read_loop &
loop_pids+=($!)
storage_loop &
loop_pids+=($!)
watch_loop &
loop_pids+=($!)
loop_names=(sampler read-loop storage-loop watch-loop)

end=$((load_t0 + duration))
next_broker=$((broker_every > 0 ? load_t0 + broker_every : end + 1))
next_daemon=$((daemon_every > 0 ? load_t0 + daemon_every : end + 1))
next_report=$((load_t0 + 300))
daemons=(tgtd smbd ganesha.nfsd)
n_daemons_restarted=0
abort=
while [ "$SECONDS" -lt "$end" ]; do
  if ! alive "$agent_pid"; then
    wait "$agent_pid" && agent_exit="died with exit 0" || agent_exit="died with exit $?"
    abort="the agent died"
    event "FAIL $abort ($agent_exit)"
    break
  fi
  for i in "${!loop_pids[@]}"; do
    alive "${loop_pids[i]}" || abort="internal: the ${loop_names[i]} exited"
  done
  [ -z "$abort" ] || { event "FAIL $abort"; break; }
  revive
  if [ "$SECONDS" -ge "$next_broker" ]; then
    restart_broker || true
    next_broker=$((next_broker + broker_every))
  fi
  if [ "$SECONDS" -ge "$next_daemon" ]; then
    restart_daemon "${daemons[n_daemons_restarted % 3]}" || true
    n_daemons_restarted=$((n_daemons_restarted + 1))
    next_daemon=$((next_daemon + daemon_every))
  fi
  if [ "$SECONDS" -ge "$next_report" ]; then
    say "$(hms $((SECONDS - load_t0))) of $(hms "$duration"): $(tail -n 1 "$csv")"
    next_report=$((next_report + 300))
  fi
  sleep 1
done

# Stop the load: first take the storage lock, so that the cycle in progress finishes and leaves
# no half-made set behind; then the end checks: the state is back at its baseline, and after
# deleting the keep resources it is empty; the agent stops cleanly on SIGTERM.
load_t1=$SECONDS
[ -n "$abort" ] || lock_main
for i in "${loop_pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
for i in "${loop_pids[@]}"; do wait "$i" 2>/dev/null || true; done
loop_pids=()
if [ -z "$abort" ]; then
  unlock
  status_is 1 || true
  cp "$dir/ctl.main.out" "$out/final-status.json"
  delete_set keep || true
  status_is 0 || true
  kill -TERM "$agent_pid"
  rc=0
  for ((i = 0; i < 150; i++)); do alive "$agent_pid" || break; sleep 0.1; done
  if alive "$agent_pid"; then
    agent_exit="did not stop within 15 s of SIGTERM"
  else
    wait "$agent_pid" || rc=$?
    agent_exit="stopped on SIGTERM with exit $rc"
    [ "$rc" = 0 ] || abort="the agent exited $rc on SIGTERM"
  fi
  [[ $agent_exit == "stopped on SIGTERM with exit 0" ]] || abort=${abort:-"the agent $agent_exit"}
fi

failed=0
for k in read storage main; do
  read -r _ _ f _ <"$dir/count.$k" 2>/dev/null || f=0
  failed=$((failed + f))
done
resets=$(awk 'NF == 2 && $1 !~ /presence/ { if (p != "" && $1 + 0 < p + 0) n++; p = $1 } END { print n + 0 }' "$heartbeats")
reasons=()
[ -z "$abort" ] || reasons+=("$abort")
[ "$failed" = 0 ] || reasons+=("$failed command(s) failed")
[ "$restart_failures" = 0 ] || reasons+=("$restart_failures restart(s) or recoveries failed")
[ "$resets" = 0 ] || reasons+=("the agent restarted $resets time(s) (heartbeat seq reset)")
if [ "${#reasons[@]}" = 0 ]; then
  summarize "OK"
  exit 0
fi
summarize "FAILED: $(IFS=';'; echo "${reasons[*]}")"
exit 1
