#!/usr/bin/env bash
# Benchmark: one release agent against a local Mosquitto (set_tcp_nodelay true), driven by
# `csgctl bench`. Prints a table and writes it to docs/performance.md.
#
#   scripts/bench.sh [--count N] [--pipelined-count N] [--memory-count N] [--no-write]
#
# The id-memory phase: RSS of a fresh agent with the default id memory after N sys.ping
# (reads are forgotten once answered), and of one simulated agent (csg-sim: the in-memory NFS
# backend) after N nfs.export.update (mutations: each id is remembered with its reply, up to the
# default cap of 65536; requests beyond it are refused BUSY and counted as errors).
#
# Binaries: built in release mode from this checkout (target/release, or $CARGO_TARGET_DIR),
# unless CSG_BIN_DIR names a directory of prebuilt ones (csg-agent, csgctl, csg-bed).
#
# Figures, not assertions: the test suite checks behaviour; this script measures speed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
count=10000
pcount=200000
mcount=70000
write=1
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --pipelined-count) pcount=$2; shift 2 ;;
    --memory-count) mcount=$2; shift 2 ;;
    --no-write) write=0; shift ;;
    *) echo "usage: $0 [--count N] [--pipelined-count N] [--memory-count N] [--no-write]" >&2; exit 2 ;;
  esac
done

"$root/scripts/install-deps.sh" >/dev/null
if [ -n "${CSG_BIN_DIR:-}" ]; then
  bin_dir=$CSG_BIN_DIR
else
  cargo build --quiet --release --manifest-path "$root/Cargo.toml" --bins
  # Where cargo put them: target/, unless CARGO_TARGET_DIR moved it.
  bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
agent="$bin_dir/csg-agent"
csgctl="$bin_dir/csgctl"
sim="$bin_dir/csg-sim"
# The test harness's broker start-up (tests/src/bin/csg-bed.rs).
bed="$bin_dir/csg-bed"

# Backtrace capture keeps symbol data resident; a service runs without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$bed" broker stop "$dir/broker" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

# Pipelined runs keep 64 requests in flight: no per-client cap on QoS 1 messages in flight or
# queued, or the excess is dropped.
port=$("$bed" broker start "$dir/broker" \
  --line 'max_inflight_messages 0' --line 'max_queued_messages 0')

cat >"$dir/agent.toml" <<CONF
[identity]
group_id = "GID_csg"
instance_id = "gw-bench"
[mqtt]
url = "mqtt://127.0.0.1:$port"
reconnect_min_ms = 100
reconnect_max_ms = 1000
[agent]
# Pipelined runs keep 64 requests outstanding; leave headroom.
max_in_flight = 1024
reply_cache_max = 1000000
log = "warn"
CONF
"$agent" --config "$dir/agent.toml" 2>"$dir/agent.log" &
agent_pid=$!
pids+=($agent_pid)

export CSG_BROKER="mqtt://127.0.0.1:$port"
"$csgctl" call gw-bench sys.ping --timeout 15s >/dev/null
sleep 2
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
idle_rss=$(rss_kb $agent_pid)

seq_json=$("$csgctl" bench gw-bench --count "$count" --concurrency 1 --json)
pipe_json=$("$csgctl" bench gw-bench --count "$pcount" --concurrency 64 --json)
loaded_rss=$(rss_kb $agent_pid)
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true

# The same two runs on MQTT 5 (agent and csgctl), same broker, right after: the comparison
# holds only within one run of this script on one machine.
sed -e 's/^url = .*$/&\nprotocol = "5"/' -e 's/^instance_id = .*$/instance_id = "gw-bench5"/' \
  "$dir/agent.toml" >"$dir/agent5.toml"
"$agent" --config "$dir/agent5.toml" 2>"$dir/agent5.log" &
agent5_pid=$!
pids+=($agent5_pid)
CSG_MQTT_PROTOCOL=5 "$csgctl" call gw-bench5 sys.ping --timeout 15s >/dev/null
sleep 2
seq5_json=$(CSG_MQTT_PROTOCOL=5 "$csgctl" bench gw-bench5 --count "$count" --concurrency 1 --json)
pipe5_json=$(CSG_MQTT_PROTOCOL=5 "$csgctl" bench gw-bench5 --count "$pcount" --concurrency 64 --json)
kill "$agent5_pid"; wait "$agent5_pid" 2>/dev/null || true

# The id memory: a fresh agent with the default limits, N reads.
sed -e 's/^reply_cache_max = .*$//' -e 's/^instance_id = .*$/instance_id = "gw-mem"/' \
  "$dir/agent.toml" >"$dir/agent-mem.toml"
"$agent" --config "$dir/agent-mem.toml" 2>"$dir/agent-mem.log" &
mem_pid=$!
pids+=($mem_pid)
"$csgctl" call gw-mem sys.ping --timeout 15s >/dev/null
ping_json=$("$csgctl" bench gw-mem --count "$mcount" --concurrency 64 --json || true)
ping_rss=$(rss_kb $mem_pid)

# ... and one simulated agent (in-memory NFS, default limits), N mutations of one export.
mkdir -p "$dir/exports/vol1"
"$sim" --broker "mqtt://127.0.0.1:$port" --count 1 --prefix gw-sim- \
  --export-root "$dir/exports" --report-ms 0 >"$dir/sim.log" 2>&1 &
sim_pid=$!
pids+=($sim_pid)
spec="{\"name\":\"vol1\",\"path\":\"$dir/exports/vol1\",\"clients\":[{\"match\":\"10.0.0.0/8\",\"access\":\"rw\"}]}"
"$csgctl" call gw-sim-00000 sys.ping --timeout 30s >/dev/null
"$csgctl" call gw-sim-00000 nfs.export.create "$spec" --timeout 15s >/dev/null
sim_idle_rss=$(rss_kb $sim_pid)
mut_json=$("$csgctl" bench gw-sim-00000 --method nfs.export.update --params "$spec" \
  --count "$mcount" --concurrency 16 --warmup 0 --json || true)
sim_rss=$(rss_kb $sim_pid)

bin_size=$(stat -c %s "$agent")
ctl_size=$(stat -c %s "$csgctl")

python3 - "$seq_json" "$pipe_json" "$idle_rss" "$loaded_rss" "$bin_size" "$ctl_size" "$count" "$pcount" "$write" "$root/docs/performance.md" \
  "$mcount" "$ping_json" "$ping_rss" "$mut_json" "$sim_idle_rss" "$sim_rss" "$seq5_json" "$pipe5_json" <<'PY'
import json, sys, platform, datetime, os, subprocess
seq, pipe = json.loads(sys.argv[1]), json.loads(sys.argv[2])
mcount, ping_mem, ping_rss = int(sys.argv[11]), json.loads(sys.argv[12]), int(sys.argv[13])
mut, sim_idle, sim_rss = json.loads(sys.argv[14]), int(sys.argv[15]), int(sys.argv[16])
seq5, pipe5 = json.loads(sys.argv[17]), json.loads(sys.argv[18])
idle, loaded, size, ctl = (int(x) for x in sys.argv[3:7])
count, pcount, write, out = int(sys.argv[7]), int(sys.argv[8]), sys.argv[9] == "1", sys.argv[10]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
rows = [
    ("sys.ping round trip p50 (sequential)", f"{seq['p50_us']} µs", "≤ 150 µs"),
    ("sys.ping round trip p99", f"{seq['p99_us']} µs", "≤ 500 µs"),
    ("sys.ping round trip p99.9", f"{seq['p999_us']} µs", ""),
    ("sys.ping round trip max", f"{seq['max_us']} µs", ""),
    ("pipelined throughput, 64 outstanding, QoS 1", f"{pipe['rps']:.0f} req/s", "≥ 25000 req/s"),
    ("pipelined p50 / p99", f"{pipe['p50_us']} / {pipe['p99_us']} µs", ""),
    ("errors / lost replies (both runs)", f"{seq['errors'] + pipe['errors']} / {seq['lost'] + pipe['lost']}", "0 / 0"),
    ("MQTT 5: sys.ping round trip p50 / p99 (sequential)", f"{seq5['p50_us']} / {seq5['p99_us']} µs", "as MQTT 3.1.1"),
    ("MQTT 5: pipelined throughput, 64 outstanding", f"{pipe5['rps']:.0f} req/s", "as MQTT 3.1.1"),
    ("MQTT 5: errors / lost replies (both runs)", f"{seq5['errors'] + pipe5['errors']} / {seq5['lost'] + pipe5['lost']}", "0 / 0"),
    ("agent idle RSS", f"{idle / 1024:.1f} MiB", "≤ 8 MB"),
    ("agent RSS after the runs", f"{loaded / 1024:.1f} MiB", ""),
    (f"agent RSS after {mcount} sys.ping, default id memory ({ping_mem['errors']} errors)", f"{ping_rss / 1024:.1f} MiB", "≤ 11.4 MiB (12 MB)"),
    (f"simulated agent RSS before / after {mcount} nfs.export.update, default cap", f"{sim_idle / 1024:.1f} / {sim_rss / 1024:.1f} MiB", "≤ 38.1 MiB (40 MB)"),
    ("mutations: p50 / rps / errors (BUSY beyond the cap)", f"{mut['p50_us']} µs / {mut['rps']:.0f} / {mut['errors']}", ""),
    ("csg-agent binary, stripped release", f"{size / 1e6:.2f} MB", "≤ 6 MB"),
    ("csgctl binary, stripped release", f"{ctl / 1e6:.2f} MB", ""),
]
w = max(len(r[0]) for r in rows)
table = "\n".join(f"{a:<{w}}  {b:>18}  {c}" for a, b, c in rows)
print(table)
if write:
    md = [
        "# Performance",
        "",
        "Measured by `scripts/bench.sh` (one release agent, one local Mosquitto with",
        "`set_tcp_nodelay true`, `csgctl bench` as the console; all on loopback). Figures, not",
        "tests: the suite asserts behaviour only. Re-run the script to refresh this file.",
        "",
        f"- date: {datetime.date.today()}",
        f"- machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}",
        f"- broker: {mosq}",
        f"- sequential: {count} requests, one outstanding; pipelined: {pcount} requests, 64 outstanding",
        "- MQTT 3.1.1 unless a row says MQTT 5 (the same runs again, agent and csgctl on MQTT 5, right after)",
        f"- id memory: {mcount} sys.ping (64 outstanding) on a fresh agent; {mcount} nfs.export.update (16 outstanding) on one simulated agent",
        "",
        "| measure | value | target |",
        "|---|---|---|",
    ] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    # Hand-written notes below the marker survive a re-run.
    notes = ""
    if os.path.exists(out):
        prev = open(out).read()
        if "<!-- notes -->" in prev:
            notes = "\n<!-- notes -->" + prev.split("<!-- notes -->", 1)[1]
    with open(out + ".new", "w") as f:
        f.write("\n".join(md) + "\n" + notes)
    os.replace(out + ".new", out)
    print(f"\nwritten to {out}")
PY
