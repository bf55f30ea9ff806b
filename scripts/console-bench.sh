#!/usr/bin/env bash
# Console service benchmark: csg-consoled on SQLite and on PostgreSQL under csg-sim's heartbeats,
# with real Mosquitto (csg-bed's start-up), a private PostgreSQL cluster and, for calls, one real
# csg-agent; all on this machine. Builds the release binaries, starts the daemons here and
# measures with scripts/console-bench.py, then prints a table.
#
#   scripts/console-bench.sh [--count N] [--duration S] [--store sqlite|postgres|both]
#                            [--big N] [--quick] [--keep]
#
#   --count     simulated agents heartbeating every second during the ingest run (10000)
#   --duration  seconds of that run (60)
#   --store     which stores to run the ingest on (both)
#   --big       known instances for the second memory figure (50000), reached in batches
#   --quick     a smoke run in under 2 minutes: 500 agents, 15 s, 2000 known, SQLite only
#                (unless --store says otherwise)
#   --keep      keep the work directory (configs, logs)
#
# For each store: a fresh csg-consoled, N agents at 1 s heartbeats (N msg/s), then
#   ingest    heartbeats/s and CPU per heartbeat in a quiet window (on PostgreSQL also the
#             server's CPU and WAL per heartbeat), the store's write time, then under API load the lag
#             from a heartbeat's ts_ms to its visibility in GET /v1/instances/{id}, list p50/p99
#             (first page and a deep page), RSS;
#   calls     when the routes exist: sys.ping through POST /v1/instances/{id}/calls next to
#             csgctl's round trip (one real agent), and a job of sys.ping over the N simulated
#             instances next to csgctl sending the same pings itself, all at once (the floor
#             the broker and the simulator set); otherwise "not measured: route absent".
# Then, on the first store: RSS of an idle service, with N and with --big known instances
# (30 s heartbeats), and the RSS per known instance above the empty process.
#
# PostgreSQL runs with fsync=off (a private throw-away cluster; said in the output).
# A daemon that does not start ends the script with exit 1 and the reason.
# Figures, not assertions: the test suite checks behaviour.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prog=console-bench

count=10000
duration=60
stores=both
big=50000
quick=0
keep=0
store_set=0
usage() {
  echo "usage: $0 [--count N] [--duration S] [--store sqlite|postgres|both] [--big N] [--quick] [--keep]" >&2
  exit 2
}
number() { [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "$prog: $1 takes a positive number, not '$2'" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --count) [ $# -ge 2 ] || usage; number "$1" "$2"; count=$2; shift 2 ;;
    --duration) [ $# -ge 2 ] || usage; number "$1" "$2"; duration=$2; shift 2 ;;
    --big) [ $# -ge 2 ] || usage; number "$1" "$2"; big=$2; shift 2 ;;
    --store)
      [ $# -ge 2 ] || usage
      case "$2" in sqlite | postgres | both) stores=$2; store_set=1 ;; *) usage ;; esac
      shift 2 ;;
    --quick) quick=1; shift ;;
    --keep) keep=1; shift ;;
    *) usage ;;
  esac
done
if [ "$quick" = 1 ]; then
  count=500 duration=15 big=2000
  [ "$store_set" = 1 ] || stores=sqlite
fi
[ "$stores" = both ] && stores="sqlite postgres"
[ "$big" -gt "$count" ] || { echo "$prog: --big ($big) must exceed --count ($count)" >&2; exit 2; }
# API requests during the ingest: 300, fewer on a smoke run.
requests=$((quick ? 50 : 300))

"$root/scripts/install-deps.sh" >/dev/null
if [ -n "${CSG_BIN_DIR:-}" ]; then
  bin_dir=$CSG_BIN_DIR
else
  cargo build --quiet --release --manifest-path "$root/Cargo.toml" \
    -p csg-consoled -p csg-sim -p csg-console -p csg-agent -p csg-e2e --bins
  bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
consoled=$bin_dir/csg-consoled
sim=$bin_dir/csg-sim
agent=$bin_dir/csg-agent
csgctl=$bin_dir/csgctl
bed=$bin_dir/csg-bed
measure=(python3 "$root/scripts/console-bench.py")
# Backtrace capture keeps symbol data resident; a service runs without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# shellcheck source=lib/daemons.sh
source "$root/scripts/lib/daemons.sh"
daemons_init
daemon_failed() { die "$*"; }

dir=$(mktemp -d /tmp/csg-console-bench.XXXXXX)
# Mosquitto started as root drops to its own user; PostgreSQL runs as postgres: both walk in.
chmod 755 "$dir"
mkdir -p "$dir/exports/vol1"
cleanup() {
  local rc=$?
  stop_daemons
  "$bed" broker stop "$dir/broker" 2>/dev/null || true
  if [ "$keep" = 1 ] || [ "$rc" != 0 ]; then
    echo "$prog: logs kept in $dir" >&2
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rows=()
# Rows from console-bench.py (measure TAB value TAB target), echoed as they come.
collect() {
  local out line
  out=$("${measure[@]}" "$@") || die "measuring failed: console-bench.py $1"
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    rows+=("$line")
    IFS=$'\t' read -r m v t <<<"$line"
    echo "  $m: $v${t:+   (target $t)}"
  done <<<"$out"
}
add_row() { rows+=("$1"$'\t'"$2"$'\t'"${3:-}"); echo "  $1: $2${3:+   (target $3)}"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# -- Mosquitto ------------------------------------------------------------------------------
# The test harness's start-up (loopback, anonymous, Nagle off, no persistence); no per-client
# cap on QoS 1 messages in flight or queued, or thousands of replies at once are dropped.
failure_logs=("$dir/broker/mosquitto-1.stderr")
mqtt_port=$("$bed" broker start "$dir/broker" \
  --line 'max_inflight_messages 0' --line 'max_queued_messages 0' --line 'max_connections -1') ||
  die "Mosquitto did not start"
broker=mqtt://127.0.0.1:$mqtt_port
export CSG_BROKER=$broker

# -- PostgreSQL -----------------------------------------------------------------------------
# A private cluster as server/tests/common/mod.rs makes one: Debian's newest server binaries,
# a data directory under $dir, trust authentication on loopback only, fsync off.
pg_bin=
pg_url=
pg_port=
start_postgres() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_isready" ] && pg_bin=$d
  done
  [ -n "$pg_bin" ] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin (scripts/install-deps.sh installs it)"
  local pg=$dir/pg as=()
  mkdir -p "$pg"
  # initdb and postgres refuse to run as root: as root, both run as the postgres user.
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root and there is no postgres user"
    chown postgres: "$pg"
    as=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
  failure_logs=("$pg/initdb.log")
  (cd "$pg" && timeout 120 ${as[@]+"${as[@]}"} "$pg_bin/initdb" -D "$pg/data" --auth=trust -U csg \
    --locale=C -E UTF8 --no-sync >"$pg/initdb.log" 2>&1) || die "initdb failed"
  pg_port=$(free_ports 1)
  start postgres "$pg/postgres.log" ${as[@]+"${as[@]}"} "$pg_bin/postgres" -D "$pg/data" \
    -k "$pg" -p "$pg_port" -h 127.0.0.1 -c fsync=off -c max_connections=50
  wait_ready postgres "$started" 60 "$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -U csg -d postgres -t 2
  pg_url=postgres://csg@127.0.0.1:$pg_port/postgres
}
# A fresh database per service run, so each starts empty.
pg_database() {
  local name=$1
  failure_logs=("$dir/pg/psql.log")
  timeout 30 "$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U csg -d postgres \
    -c "CREATE DATABASE $name" >"$dir/pg/psql.log" 2>&1 || die "cannot create database $name"
  echo "postgres://csg@127.0.0.1:$pg_port/$name"
}

# -- csg-consoled ---------------------------------------------------------------------------
# start_consoled NAME STORE_URL: a fresh service with a token of every scope in $token; sets
# consoled_pid and api (its base URL). Ready once /readyz says store and broker are.
start_consoled() {
  local name=$1 store=$2 port
  port=$(free_ports 1)
  cat >"$dir/$name.toml" <<CONF
[identity]
group_id = "GID_console"
console_id = "$name"
[mqtt]
url = "$broker"
[http]
listen = "127.0.0.1:$port"
[store]
url = "$store"
[fleet]
share_group = "bench-$name"
CONF
  failure_logs=("$dir/$name.token.log")
  token=$(timeout 60 "$consoled" token create --config "$dir/$name.toml" --name bench \
    --scope admin 2>"$dir/$name.token.log") || die "csg-consoled token create failed ($name)"
  export CSG_BENCH_TOKEN=$token
  start "$name" "$dir/$name.log" env CSG_LOG=warn "$consoled" --config "$dir/$name.toml"
  consoled_pid=$started
  api=http://127.0.0.1:$port
  wait_ready "csg-consoled ($name)" "$consoled_pid" 60 \
    curl -sf -o /dev/null --max-time 2 "$api/readyz"
}
stop_consoled() { stop "$consoled_pid" TERM 30; }

# start_sim NAME COUNT FIRST HEARTBEAT_S: csg-sim agents sim-FIRST…, returns once all are online
# (its "ramp" line).
start_sim() {
  local name=$1 n=$2 first=$3 hb=$4
  start "$name" "$dir/$name.log" "$sim" --broker "$broker" --count "$n" --first "$first" \
    --heartbeat-s "$hb" --export-root "$dir/exports" --report-ms 1000
  sim_pid=$started
  wait_ready "csg-sim ($name, $n agents)" "$sim_pid" 300 grep -q '"event":"ramp"' "$dir/$name.log"
}

# Whether a route exists in this tree (the calls and jobs parts may land later).
has_route() { grep -q "$1" "$root/server/src/http/mod.rs"; }

echo "console benchmark in $dir"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start (shared with other work)"
echo "broker: $broker"

# -- per store: ingest, API, calls, job -----------------------------------------------------
first_store=
for s in $stores; do
  case $s in
    sqlite) store_url="sqlite://$dir/sqlite/console.db" ;;
    postgres)
      [ -n "$pg_url" ] || start_postgres
      store_url=$(pg_database bench_ingest)
      echo "PostgreSQL: $pg_bin, fsync=off, $store_url" ;;
  esac
  first_store=${first_store:-$s}
  echo
  echo "== $s: ingest of $count agents at 1 s heartbeats for ${duration}s"
  start_consoled "consoled-$s" "$store_url"
  start_sim "sim-$s" "$count" 0 1
  known=$("${measure[@]}" known --url "$api" --count "$count" --timeout 120) ||
    die "the service ($s) did not list all $count simulated instances"
  echo "  the service knows $known instances"
  pg_args=()
  [ "$s" = sqlite ] ||
    pg_args=(--db-pid "${pid_of[postgres]}" --psql "$pg_bin/psql" --pg-url "$store_url")
  collect ingest --url "$api" --pid "$consoled_pid" ${pg_args[@]+"${pg_args[@]}"} \
    --count "$count" --duration "$duration" --requests "$requests" --label "$s, ${count} agents"

  if has_route calls; then
    failure_logs=("$dir/agent-$s.log")
    cat >"$dir/agent-$s.toml" <<CONF
[identity]
group_id = "GID_csg"
instance_id = "gw-bench"
[mqtt]
url = "$broker"
[agent]
log = "warn"
CONF
    start "agent-$s" "$dir/agent-$s.log" "$agent" --config "$dir/agent-$s.toml"
    wait_ready csg-agent "$started" 30 "$csgctl" call gw-bench sys.ping --timeout 2s
    agent_pid=$started
    ctl=$(timeout 120 "$csgctl" bench gw-bench --count "$requests" --concurrency 1 --json) ||
      die "csgctl bench failed"
    collect calls --url "$api" --instance gw-bench --count "$requests" --csgctl-json "$ctl"
    stop "$agent_pid" TERM 10
  else
    add_row "$s: sys.ping via POST /v1/instances/{id}/calls vs csgctl" "not measured: route absent" "≤ 1 ms added at p50"
  fi
  if has_route jobs; then
    collect job --url "$api" --count "$count" --timeout 300
    # The same sys.ping to every simulated agent from csgctl alone, all in flight at once: what
    # the broker and the simulator allow on this machine, to read the job's time against.
    for ((i = 0; i < count; i++)); do printf 'sim-%05d\n' "$i"; done >"$dir/ids-$s.txt"
    t0=$(date +%s%N)
    timeout 300 "$csgctl" call --instances-file "$dir/ids-$s.txt" sys.ping \
      --concurrency "$count" --json >"$dir/fanout-$s.json" 2>"$dir/fanout-$s.err" || true
    t1=$(date +%s%N)
    add_row "$s: csgctl call of sys.ping to the same $count agents at once: time, answered ok" \
      "$(((t1 - t0) / 1000000)) ms, $(grep -c '"ok":true' "$dir/fanout-$s.json" || true) ok" \
      "the floor for the job"
  else
    add_row "$s: job of sys.ping over ${count} instances" "not measured: route absent" "≤ 2 s, 0 lost"
  fi
  stop "$sim_pid" TERM 30
  stop_consoled
done

# -- memory per known instance --------------------------------------------------------------
echo
echo "== memory per known instance ($first_store): empty, $count and $big known, 30 s heartbeats"
case $first_store in
  sqlite) store_url="sqlite://$dir/sqlite-mem/console.db" ;;
  postgres) store_url=$(pg_database bench_memory) ;;
esac
start_consoled consoled-mem "$store_url"
sleep 5
empty=$(rss_kb "$consoled_pid")
add_row "$first_store: idle service RSS, no instance" "$((empty / 1024)) MiB ($empty KiB)"
start_sim sim-mem-0 "$count" 0 30
"${measure[@]}" known --url "$api" --count "$count" --timeout 180 >/dev/null ||
  die "the service did not list $count instances"
sleep 5
with_n=$(rss_kb "$consoled_pid")
add_row "$first_store: RSS with $count known" "$((with_n / 1024)) MiB; $(((with_n - empty) * 1024 / count)) B per instance above the empty process" "≤ 2 KB"
# Mosquitto holds at most 20000 connections (open files per process): the rest of the big
# fleet comes in batches that connect, heartbeat and stop (offline presence). The service keeps
# every instance it knows, online or not, with its last heartbeat: the same state per instance.
first=$count
while [ "$first" -lt "$big" ]; do
  n=$((big - first))
  [ "$n" -le 8000 ] || n=8000
  start_sim "sim-mem-$first" "$n" "$first" 30
  "${measure[@]}" known --url "$api" --count "$((first + n))" --timeout 180 >/dev/null ||
    die "the service did not list $((first + n)) instances"
  stop "$sim_pid" TERM 30
  first=$((first + n))
done
sleep 5
with_big=$(rss_kb "$consoled_pid")
add_row "$first_store: RSS with $big known ($count online, the rest offline after one heartbeat)" "$((with_big / 1024)) MiB; $(((with_big - empty) * 1024 / big)) B per instance above the empty process" "≤ 2 KB"
stop_consoled

echo
echo "| measure | value | target |"
echo "|---|---|---|"
for r in "${rows[@]}"; do
  IFS=$'\t' read -r m v t <<<"$r"
  echo "| $m | $v | $t |"
done
