#!/usr/bin/env python3
"""Console service benchmark: the measuring half of scripts/console-bench.sh.

The shell script starts the daemons (Mosquitto, PostgreSQL, csg-consoled, csg-sim, a real
agent) and calls this for the figures; every subcommand prints result rows on stdout, one per
line, as `measure<TAB>value<TAB>target` (the target may be empty), and fails (exit 1, the reason
on stderr) when it cannot measure.

  ingest   heartbeats ingested per second and CPU per heartbeat over a quiet window (no API
           requests), then, under the same ingest: the lag from a heartbeat's ts_ms to its
           visibility in GET /v1/instances/{id}, GET /v1/instances?limit=100 p50/p99 and a deep
           page, RSS
  known    waits until the store counts N instances (csg_instances in /metrics)
  calls    sys.ping through POST /v1/instances/{id}/calls, sequential, p50/p99
  job      a job of sys.ping over the simulated instances: time to done and counts

Only the standard library: Debian's python3 as it comes.
"""

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse

CLK_TCK = os.sysconf("SC_CLK_TCK")


def fail(msg):
    print(f"console-bench: {msg}", file=sys.stderr)
    sys.exit(1)


def row(measure, value, target=""):
    print(f"{measure}\t{value}\t{target}", flush=True)


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def now_ms():
    return time.time() * 1000.0


def cpu_s(pid):
    """utime + stime of the process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    # After the command: state is field 3; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(pid):
    """utime + stime of a process and its children (PostgreSQL's postmaster and backends)."""
    total = cpu_s(pid)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def wal_lsn(a):
    """PostgreSQL's current WAL position (psql, bounded by a timeout), or None without one."""
    if not a.psql:
        return None
    r = subprocess.run([a.psql, "-X", "-At", "-d", a.pg_url, "-c", "SELECT pg_current_wal_lsn()"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        fail(f"psql: {r.stderr.strip()[:300]}")
    return r.stdout.strip()


def wal_bytes(a, lsn0, lsn1):
    r = subprocess.run([a.psql, "-X", "-At", "-d", a.pg_url, "-c",
                        f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        fail(f"psql: {r.stderr.strip()[:300]}")
    return float(r.stdout.strip())


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Api:
    """One keep-alive HTTP/1.1 connection to the service (http.client reuses it)."""

    def __init__(self, base, token):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.token = token
        self.conn = None

    def request(self, method, path, body=None, timeout=30):
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, raw
            except (http.client.HTTPException, OSError):
                # The server closed an idle keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def json(self, method, path, body=None):
        status, raw = self.request(method, path, body)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def timed(self, path):
        t0 = time.perf_counter()
        status, raw = self.request("GET", path)
        ms = (time.perf_counter() - t0) * 1000.0
        if status != 200:
            fail(f"GET {path}: {status} {raw[:300]!r}")
        return ms, raw


def metrics(base):
    """The service's /metrics (no token needed), as {name{labels}: value}."""
    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    if r.status != 200:
        fail(f"GET /metrics: {r.status}")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, prefix, contains=""):
    return sum(v for k, v in m.items() if k.startswith(prefix) and contains in k)


def heartbeats(base):
    return metric_sum(metrics(base), "csg_heartbeats_ingested_total")


def overflow(base):
    return metric_sum(metrics(base), "csg_status_dropped_total", 'reason="overflow"')


def store_writes(base):
    """(seconds spent in store writes, writes) so far."""
    m = metrics(base)
    return (metric_sum(m, "csg_store_write_duration_seconds_sum"),
            metric_sum(m, "csg_store_write_duration_seconds_count"))


def ids(prefix, count):
    return [f"{prefix}{n:05d}" for n in range(count)]


# -- ingest ---------------------------------------------------------------------------------


def lag_poller(api, sample, stop, lags, errors):
    """Polls each sampled instance every ~50 ms; when its heartbeat's seq changes, the lag is
    the time seen minus the heartbeat's ts_ms (the agent's clock: the same machine)."""
    last = {}
    while not stop.is_set():
        t_round = time.monotonic()
        for i in sample:
            status, raw = api.request("GET", f"/v1/instances/{i}")
            seen = now_ms()
            if status != 200:
                errors.append(status)
                continue
            hb = (json.loads(raw) or {}).get("heartbeat") or {}
            seq, ts = hb.get("seq"), hb.get("ts_ms")
            if seq is None or ts is None:
                continue
            if i in last and seq != last[i]:
                lags.append(seen - ts)
            last[i] = seq
        time.sleep(max(0.0, 0.05 - (time.monotonic() - t_round)))


def deep_cursor(api, count):
    """A cursor about 100 instances before the end of the list, reached by walking it (the
    walk is not timed)."""
    cursor, seen = None, 0
    page = 1000 if count > 2000 else 100
    while seen < count - 100 - page:
        q = f"limit={page}" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        status, body = api.json("GET", f"/v1/instances?{q}")
        if status != 200:
            fail(f"GET /v1/instances?{q}: {status} {body}")
        seen += len(body["items"])
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return cursor, seen


def cmd_ingest(a):
    m0 = metrics(a.url)
    if not any(k.startswith("csg_heartbeats_ingested_total") for k in m0):
        fail("GET /metrics has no csg_heartbeats_ingested_total")
    label = a.label
    # 1. A quiet window: the service ingests, nobody asks it anything.
    quiet = max(5.0, a.duration / 4.0)
    db0 = tree_cpu_s(a.db_pid) if a.db_pid else 0.0
    lsn0 = wal_lsn(a)
    w0 = store_writes(a.url)
    h0, c0, o0, t0 = heartbeats(a.url), cpu_s(a.pid), overflow(a.url), time.monotonic()
    time.sleep(quiet)
    h1, c1, o1, t1 = heartbeats(a.url), cpu_s(a.pid), overflow(a.url), time.monotonic()
    w1 = store_writes(a.url)
    db1 = tree_cpu_s(a.db_pid) if a.db_pid else 0.0
    lsn1 = wal_lsn(a)
    rate = (h1 - h0) / (t1 - t0)
    row(f"{label}: heartbeats ingested/s (quiet {quiet:.0f} s)", f"{rate:.0f}/s (offered {a.count / a.heartbeat_s:.0f}/s)")
    if h1 > h0:
        row(f"{label}: service CPU per heartbeat (quiet)",
            f"{(c1 - c0) / (h1 - h0) * 1e6:.1f} µs ({(c1 - c0) / (t1 - t0) * 100:.0f} % of a core)", "≤ 20 µs")
    else:
        row(f"{label}: service CPU per heartbeat (quiet)", "no heartbeat ingested", "≤ 20 µs")
    if a.db_pid and h1 > h0:
        row(f"{label}: PostgreSQL server CPU per heartbeat (quiet)",
            f"{(db1 - db0) / (h1 - h0) * 1e6:.1f} µs ({(db1 - db0) / (t1 - t0) * 100:.0f} % of a core)")
    if lsn0 and lsn1 and h1 > h0:
        wal = wal_bytes(a, lsn0, lsn1)
        row(f"{label}: PostgreSQL WAL written per heartbeat (quiet)",
            f"{wal / (h1 - h0):.0f} B ({wal / (t1 - t0) / 1e6:.1f} MB/s)")
    if w1[1] > w0[1]:
        n = w1[1] - w0[1]
        row(f"{label}: store writes (one per flush with changes): mean duration, rows per write",
            f"{(w1[0] - w0[0]) / n * 1000:.0f} ms, about {(h1 - h0) / n:.0f} heartbeats per write")

    # 2. The rest of the window: lag sampling and API requests under the same ingest.
    api = Api(a.url, a.token)
    sample = random.Random(13).sample(ids(a.prefix, a.count), min(a.sample, a.count))
    cursor, walked = deep_cursor(api, a.count)
    stop = threading.Event()
    lags, lag_errors = [], []
    poller = threading.Thread(target=lag_poller, args=(Api(a.url, a.token), sample, stop, lags, lag_errors),
                              daemon=True)
    t_end = time.monotonic() + max(5.0, a.duration - quiet)
    h2, c2, o2, t2 = heartbeats(a.url), cpu_s(a.pid), overflow(a.url), time.monotonic()
    poller.start()
    first, deep = [], []
    rss_max = rss_kb(a.pid)
    # Sequential requests, one connection; spread over the window rather than bunched.
    for n in range(a.requests):
        ms, raw = api.timed("/v1/instances?limit=100")
        first.append(ms)
        if n == 0 and len(json.loads(raw)["items"]) == 0:
            fail("GET /v1/instances?limit=100 lists no instance under ingest")
        if cursor:
            ms, _ = api.timed(f"/v1/instances?limit=100&cursor={urllib.parse.quote(cursor)}")
            deep.append(ms)
        rss_max = max(rss_max, rss_kb(a.pid))
        left = t_end - time.monotonic()
        time.sleep(max(0.0, min(0.2, left / max(1, a.requests - n))))
    while time.monotonic() < t_end:
        time.sleep(0.2)
        rss_max = max(rss_max, rss_kb(a.pid))
    stop.set()
    poller.join(10)
    h3, c3, o3, t3 = heartbeats(a.url), cpu_s(a.pid), overflow(a.url), time.monotonic()
    rate2 = (h3 - h2) / (t3 - t2)
    row(f"{label}: heartbeats ingested/s (under API load, {t3 - t2:.0f} s)", f"{rate2:.0f}/s")
    if h3 > h2:
        row(f"{label}: service CPU per heartbeat (under API load)",
            f"{(c3 - c2) / (h3 - h2) * 1e6:.1f} µs ({(c3 - c2) / (t3 - t2) * 100:.0f} % of a core)")
    row(f"{label}: heartbeats dropped as overflow", f"{o3 - o0:.0f}", "0")
    row(f"{label}: lag ts_ms → visible in the API, p50 / p99 (n={len(lags)}, {len(sample)} sampled, 50 ms polls)",
        f"{pct(lags, 50):.0f} / {pct(lags, 99):.0f} ms" + (f"; {len(lag_errors)} failed polls" if lag_errors else ""),
        "p99 ≤ 2000 ms")
    row(f"{label}: GET /v1/instances?limit=100 under ingest, p50 / p99 (n={len(first)})",
        f"{pct(first, 50):.1f} / {pct(first, 99):.1f} ms", "p99 ≤ 20 ms")
    if deep:
        row(f"{label}: deep page (cursor after {walked} of {a.count}), p50 / p99 (n={len(deep)})",
            f"{pct(deep, 50):.1f} / {pct(deep, 99):.1f} ms", "as the first page")
    row(f"{label}: service RSS at the end / highest sampled",
        f"{rss_kb(a.pid) / 1024:.1f} / {rss_max / 1024:.1f} MiB")


# -- known ----------------------------------------------------------------------------------


def cmd_known(a):
    """Waits until the store counts at least N instances (all presences)."""
    deadline = time.monotonic() + a.timeout
    n = 0
    while time.monotonic() < deadline:
        n = metric_sum(metrics(a.url), "csg_instances{")
        if n >= a.count:
            print(int(n))
            return
        time.sleep(0.5)
    fail(f"the service knows {n:.0f} instances after {a.timeout} s, not {a.count}")


# -- calls ----------------------------------------------------------------------------------


def cmd_calls(a):
    api = Api(a.url, a.token)
    path = f"/v1/instances/{a.instance}/calls"
    body = {"method": "sys.ping", "params": {}, "timeout_ms": 5000}
    # The agent answers csgctl once it is connected; the service knows it after its presence
    # is ingested (the next flush, 500 ms): wait for that, up to 15 s, before timing calls.
    deadline = time.monotonic() + 15
    while True:
        status, reply = api.json("GET", f"/v1/instances/{a.instance}")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    status, reply = api.json("POST", path, body)
    if status != 200:
        fail(f"POST {path}: {status} {reply}")
    ms, bad = [], 0
    for _ in range(a.count):
        t0 = time.perf_counter()
        status, reply = api.json("POST", path, body)
        ms.append((time.perf_counter() - t0) * 1000.0)
        if status != 200 or not (isinstance(reply, dict) and reply.get("ok")):
            bad += 1
    api_p50 = pct(ms, 50)
    row(f"sys.ping via POST /v1/instances/{{id}}/calls, p50 / p99 (n={a.count}, sequential)",
        f"{api_p50:.2f} / {pct(ms, 99):.2f} ms" + (f"; {bad} not ok" if bad else ""))
    ctl = json.loads(a.csgctl_json)
    ctl_p50 = ctl["p50_us"] / 1000.0
    row(f"sys.ping via csgctl (one session, `csgctl bench --concurrency 1`), p50 / p99 (n={ctl.get('count', '?')})",
        f"{ctl_p50:.2f} / {ctl['p99_us'] / 1000.0:.2f} ms")
    row("calls: added by the service at p50", f"{api_p50 - ctl_p50:.2f} ms", "≤ 1 ms")


# -- job ------------------------------------------------------------------------------------


def cmd_job(a):
    api = Api(a.url, a.token)
    body = {
        "method": "sys.ping",
        "params": {},
        "target": {"instances": ids(a.prefix, a.count)},
        # As fast as the service allows: the figure is the job path's own time.
        "rate_per_minute": 1000000,
        "max_in_flight": 10000,
        "execution_timeout_ms": 10000,
    }
    t0 = time.monotonic()
    status, job = api.json("POST", "/v1/jobs", body)
    if status not in (200, 201) or not isinstance(job, dict) or "id" not in job:
        fail(f"POST /v1/jobs: {status} {str(job)[:300]}")
    jid = job["id"]
    deadline = t0 + a.timeout
    while True:
        status, job = api.json("GET", f"/v1/jobs/{jid}")
        if status != 200:
            fail(f"GET /v1/jobs/{jid}: {status} {job}")
        if job.get("state") in ("succeeded", "failed", "aborted", "cancelled"):
            break
        if time.monotonic() > deadline:
            fail(f"job {jid} not done after {a.timeout} s: {job}")
        time.sleep(0.05)
    wall = time.monotonic() - t0
    c = job.get("counts", {})
    lost = c.get("total", 0) - c.get("succeeded", 0) - c.get("failed", 0) - c.get("rejected", 0)
    row(f"job of sys.ping over {a.count // 1000}k instances: time to done ({job.get('state')})",
        f"{wall * 1000:.0f} ms", "≤ 2000 ms")
    row("job: counts (total / succeeded / failed / timed out / other)",
        f"{c.get('total')} / {c.get('succeeded')} / {c.get('failed')} / {c.get('timed_out')} / "
        f"{lost - c.get('timed_out', 0)}", "0 lost")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", required=True, help="the service's base URL")
    common.add_argument("--prefix", default="sim-")

    p = sub.add_parser("ingest", parents=[common])
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--db-pid", type=int, default=0, help="PostgreSQL's postmaster, for its CPU")
    p.add_argument("--psql", default="", help="psql, to read PostgreSQL's WAL position")
    p.add_argument("--pg-url", default="", help="the database, for psql")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--heartbeat-s", type=float, default=1)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--sample", type=int, default=10)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--label", required=True)
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser("known", parents=[common])
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(fn=cmd_known)

    p = sub.add_parser("calls", parents=[common])
    p.add_argument("--instance", required=True)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--csgctl-json", required=True, help="csgctl bench --json output, to compare")
    p.set_defaults(fn=cmd_calls)

    p = sub.add_parser("job", parents=[common])
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(fn=cmd_job)

    a = ap.parse_args()
    # The token comes from the environment, never argv (where every user could read it).
    a.token = os.environ.get("CSG_BENCH_TOKEN", "")
    if a.cmd != "known" and not a.token:
        fail("no token in CSG_BENCH_TOKEN")
    a.fn(a)


if __name__ == "__main__":
    main()
