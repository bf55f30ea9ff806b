#!/usr/bin/env python3
"""Fleet benchmark: csg-sim agents, real Mosquitto brokers and csgctl, all on this machine.

Run through scripts/fleet-bench.sh, which builds the release binaries first. Measures, each in
one run, and prints a table (written into docs/performance.md between the fleet markers):

 1. connection ramp: 10k (one broker) and 50k (three brokers) agents online, as the console
    sees their presence;
 2. memory per simulated agent, and of one real idle agent (plain and TLS);
 3. fan-out: sys.ping, then an (in-memory) NFS export create, to every agent: time to the last
    reply, per-call p50/p99, replies lost;
 4. broker restart under 10k agents: time until all are online and answering, and the peak
    connect rate the broker sees against its accept rate measured in the ramp;
 5. a sustained mix (heartbeats of every agent plus a steady stream of commands): memory slope
    of the simulator, one real agent and the broker.

Figures, not assertions: the test suite checks behaviour.
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("CSG_BIN_DIR", ROOT / "target" / "release"))
GROUP = "GID_csg"
PER_PROCESS = 19000  # open files are capped at 20000 per process (brokers and simulators)


def bed(*args):
    """The test harness's command-line tools (tests/src/bin/csg-bed.rs): its output."""
    r = subprocess.run([str(BIN / "csg-bed"), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"csg-bed {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def free_ports(n):
    """n distinct free loopback ports."""
    return [int(p) for p in bed("free-ports", str(n)).split()]


class Detached:
    """A daemon csg-bed started and left running (it is not our child): the part of Popen
    that stop() and cleanup() use, by pid."""

    def __init__(self, name, pid):
        self.name, self.pid = name, pid

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                # A zombie has exited; whoever adopted it reaps it.
                return None if f.read().rsplit(") ", 1)[1][0] != "Z" else 0
        except (OSError, IndexError):
            return 0

    def send_signal(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return 0


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def slope_per_hour(samples):
    """Least-squares slope of (t_seconds, value) pairs, per hour."""
    if len(samples) < 3:
        return float("nan")
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600.0


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="csg-fleet-"))
        # Mosquitto started as root drops to its own user, which must read the TLS files.
        os.chmod(self.dir, 0o755)
        self.procs = []
        self.rows = []  # (measure, value, target)
        self.export_root = self.dir / "exports"
        (self.export_root / "vol1").mkdir(parents=True)

    # -- processes -------------------------------------------------------------------------

    def spawn(self, name, argv, stdout=None, env=None):
        log = open(self.dir / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdout=stdout or log, stderr=log, env=env)
        p.name = name
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, wait=30):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cleanup(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"kept {self.dir}", file=sys.stderr)

    def broker(self, name, port, tls=None):
        """Mosquitto on port, started by csg-bed (loopback, anonymous, Nagle off, no
        persistence) with what a fleet needs on top; returns once it runs."""
        lines = [
            # The console receives thousands of replies at once: no per-client cap on
            # QoS 1 messages in flight or queued, or the excess is dropped.
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_connections -1",
            # Connects are counted per second from the log.
            "connection_messages true",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_timestamp true",
        ]
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        args = ["broker", "start", str(self.dir / name), "--port", str(port)]
        for line in lines:
            args += ["--line", line]
        bed(*args)
        pid = int((self.dir / name / "mosquitto.pid").read_text())
        p = Detached(name, pid)
        p.port = port
        self.procs.append(p)
        return p

    def broker_log(self, name):
        return self.dir / name / "mosquitto-1.stderr"

    def connects_per_second(self, name, since=0.0):
        """Connects the broker logged, per whole second (its log has epoch seconds)."""
        counts = {}
        with open(self.broker_log(name), errors="replace") as f:
            for line in f:
                if "New client connected" not in line:
                    continue
                try:
                    t = int(line.split(":", 1)[0])
                except ValueError:
                    continue
                if t >= int(since):
                    counts[t] = counts.get(t, 0) + 1
        return counts

    def sim(self, name, brokers, count, first, heartbeat_s=30, extra=()):
        argv = [str(BIN / "csg-sim"), "--count", str(count), "--first", str(first),
                "--export-root", str(self.export_root), "--heartbeat-s", str(heartbeat_s),
                "--report-ms", "1000", *extra]
        for b in brokers:
            argv += ["--broker", f"mqtt://127.0.0.1:{b}"]
        p = self.spawn(name, argv, stdout=subprocess.PIPE)
        p.events = []
        p.ramp = threading.Event()

        def read():
            for line in p.stdout:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                p.events.append(e)
                if e.get("event") == "ramp":
                    p.ramp_event = e
                    p.ramp.set()

        threading.Thread(target=read, daemon=True).start()
        return p

    def csgctl(self, port, *args, timeout=600, scheme="mqtt"):
        argv = [str(BIN / "csgctl"), "--broker", f"{scheme}://127.0.0.1:{port}",
                "--group-id", GROUP, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def watch_until(self, port, n, timeout_s):
        argv = [str(BIN / "csgctl"), "--broker", f"mqtt://127.0.0.1:{port}", "--group-id", GROUP,
                "watch", "--until-online", str(n), "--timeout", f"{timeout_s}s"]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def row(self, measure, value, target=""):
        self.rows.append((measure, value, target))
        print(f"  {measure}: {value}" + (f"   (target {target})" if target else ""), flush=True)

    # -- measures --------------------------------------------------------------------------

    def instances(self, first, count):
        return [f"sim-{n:05d}" for n in range(first, first + count)]

    def fanout(self, shards, method, params, label, timeout_s=60, target=""):
        """One csgctl per broker shard, in parallel: [(port, [instances])]."""
        procs = []
        start = time.monotonic()
        for port, inst in shards:
            f = self.dir / f"instances-{port}-{len(procs)}.txt"
            f.write_text("\n".join(inst) + "\n")
            argv = [str(BIN / "csgctl"), "--broker", f"mqtt://127.0.0.1:{port}",
                    "--group-id", GROUP, "call", "--instances-file", str(f),
                    "--json", "--concurrency", str(len(inst)), "--timeout", f"{timeout_s}s",
                    "--attempt-timeout", "5s", method, json.dumps(params)]
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        ms, ok, lost, errors, codes = [], 0, 0, 0, {}
        for p in procs:
            out, err = p.communicate()
            for line in out.splitlines():
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                ms.append(o.get("ms", 0.0))
                if o.get("ok"):
                    ok += 1
                elif o.get("no_reply"):
                    lost += 1
                else:
                    errors += 1
                    code = (o.get("error") or {}).get("code", "failed")
                    codes[code] = codes.get(code, 0) + 1
        wall = time.monotonic() - start
        total = sum(len(i) for _, i in shards)
        self.row(f"{label}: time to the last reply", f"{wall * 1000:.0f} ms", target)
        self.row(f"{label}: per-call p50 / p99", f"{pct(ms, 50):.0f} / {pct(ms, 99):.0f} ms")
        self.row(f"{label}: answered ok / errors / lost", f"{ok} / {errors} / {lost} of {total}"
                 + (f" {codes}" if codes else ""), "lost 0" if target else "")
        return wall, ok, errors, lost

    def ramp(self, n, nbrokers, label):
        ports = free_ports(nbrokers)
        brokers = [self.broker(f"broker-{label}-{i}", p) for i, p in enumerate(ports)]
        per = -(-n // nbrokers)
        # One simulator per broker, each under the open-files cap.
        assert per <= PER_PROCESS, "more agents per broker than one process can hold"
        shards = []
        first = 0
        for i, p in enumerate(ports):
            c = min(per, n - first)
            shards.append((p, first, c))
            first += c
        watchers = [self.watch_until(p, c, 120) for p, _, c in shards]
        time.sleep(0.5)  # the watchers subscribe before the first agent connects
        t0 = time.monotonic()
        wall0 = time.time()
        sims = [self.sim(f"sim-{label}-{i}", [p], c, f) for i, (p, f, c) in enumerate(shards)]
        results = []
        for w in watchers:
            out, err = w.communicate()
            results.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
        t_online = time.monotonic() - t0
        reached = all(r.get("reached") for r in results)
        for s in sims:
            s.ramp.wait(30)
        self.row(f"{n // 1000}k agents on {nbrokers} broker(s): online (presence seen by the console)",
                 f"{t_online:.2f} s" + ("" if reached else " (NOT all online)"),
                 "≤ 2 s" if nbrokers == 1 else "≤ 3 s")
        rates = [max(self.connects_per_second(b.name, wall0).values() or [0]) for b in brokers]
        self.row(f"{n // 1000}k ramp: peak connects/s per broker (paced, 64 in flight)",
                 " / ".join(str(r) for r in rates))
        rss = sum(getattr(s, "ramp_event", {}).get("rss_kb", rss_kb(s.pid)) for s in sims)
        above = sum(getattr(s, "ramp_event", {}).get("bytes_per_agent_above_base", 0) * s.ramp_event["agents"]
                    for s in sims if hasattr(s, "ramp_event"))
        self.row(f"{n // 1000}k: simulator RSS / agent (above the empty process)",
                 f"{rss * 1024 / n / 1024:.1f} KiB ({above / n / 1024:.1f} KiB)", "≤ 15 KB")
        self.row(f"{n // 1000}k: broker RSS / connection",
                 f"{sum(rss_kb(b.pid) for b in brokers) * 1024 / n / 1024:.1f} KiB")
        return brokers, sims, shards, max(rates)

    def idle_agent_rss(self):
        port, tls_port = free_ports(2)
        b = self.broker("broker-idle", port)
        tls = self.make_tls()
        bt = self.broker("broker-idle-tls", tls_port, tls=tls)
        out = []
        for name, url, extra in (
            ("plain", f"mqtt://127.0.0.1:{port}", ""),
            ("TLS", f"mqtts://127.0.0.1:{tls_port}", f'[mqtt.tls]\nca_file = "{tls["ca"]}"\n'),
        ):
            conf = self.dir / f"agent-idle-{name}.toml"
            conf.write_text(
                f'[identity]\ngroup_id = "{GROUP}"\ninstance_id = "gw-idle-{name.lower()}"\n'
                f'[mqtt]\nurl = "{url}"\n{extra}'
            )
            a = self.spawn(f"agent-idle-{name}", [str(BIN / "csg-agent"), "--config", str(conf)])
            if name == "plain":
                r = self.csgctl(port, "call", "gw-idle-plain", "sys.ping")
            else:
                r = self.csgctl(tls_port, "--ca-file", tls["ca"], "call", "gw-idle-tls",
                                "sys.ping", scheme="mqtts")
            if r.returncode != 0:
                raise SystemExit(f"idle agent ({name}) did not answer: {r.stdout}{r.stderr}")
            time.sleep(3)
            out.append((name, rss_kb(a.pid)))
            self.stop(a)
        self.stop(b)
        self.stop(bt)
        self.row("one real idle agent RSS, plain / TLS",
                 " / ".join(f"{kb / 1024:.1f} MiB" for _, kb in out))

    def make_tls(self):
        d = self.dir / "tls"
        d.mkdir(exist_ok=True)

        def run(*a):
            subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)

        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
        os.chmod(d / "server.key", 0o644)
        return {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}

    def broker_restart(self, broker, n, accept_rate):
        port = broker.port
        self.stop(broker, signal.SIGKILL)
        wall0 = time.time()
        t0 = time.monotonic()
        b = self.broker(broker.name + "-restarted", port)
        w = self.watch_until(port, n, 180)
        out, _ = w.communicate()
        r = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        t_online = time.monotonic() - t0
        wall, ok, errors, lost = self.fanout([(port, self.instances(0, n))], "sys.ping", {},
                                             "after the restart, sys.ping to all")
        t_answer = time.monotonic() - t0
        self.row(f"broker restart under {n // 1000}k: all online again",
                 f"{t_online:.1f} s" + ("" if r.get("reached") else " (NOT all)"), "≤ 60 s")
        self.row(f"broker restart under {n // 1000}k: all answering (last fan-out reply)",
                 f"{t_answer:.1f} s")
        rates = self.connects_per_second(b.name, wall0)
        peak = max(rates.values() or [0])
        self.row("broker restart: peak connects/s seen by the broker vs its accept rate",
                 f"{peak} vs {accept_rate}", "peak ≤ accept rate")
        spread = sorted(rates.items())
        self.row("broker restart: connects per second, first 15 s",
                 " ".join(str(c) for _, c in spread[:15]))
        return b

    def mix(self, port, n, minutes, warmup_minutes):
        """Heartbeats of every agent plus a steady command stream; memory sampled throughout.

        The slopes cover the last `minutes` only: for the first 10 minutes of a command stream
        every agent's id memory fills by design (each id is kept with its reply for 10 minutes,
        the at-most-once guarantee), so memory rises until the first ids expire; a slope over
        that period measures the contract, not a leak."""
        conf = self.dir / "agent-mix.toml"
        state = self.dir / "agent-mix-state"
        conf.write_text(
            f'[identity]\ngroup_id = "{GROUP}"\ninstance_id = "gw-real"\n'
            f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n[agent]\nheartbeat_interval_s = 10\n'
        )
        agent = self.spawn("agent-mix", [str(BIN / "csg-agent"), "--config", str(conf)])
        sims = [p for p in self.procs if p.name.startswith("sim-10k") and p.poll() is None]
        broker = [p for p in self.procs if p.name.startswith("broker-10k") and p.poll() is None][-1]
        samples = {"simulator": [], "real agent": [], "broker": []}
        fd_samples = {"simulator": [], "real agent": []}
        stop = time.monotonic() + (warmup_minutes + minutes) * 60
        t0 = time.monotonic()
        measured_from = warmup_minutes * 60
        sent = ok = bad = 0
        rnd = random.Random(7)
        everyone = self.instances(0, n)
        next_sample = t0
        while time.monotonic() < stop:
            batch = rnd.sample(everyone, 200) + ["gw-real"]
            f = self.dir / "mix-batch.txt"
            f.write_text("\n".join(batch) + "\n")
            method = rnd.choice(["sys.ping", "sys.status", "sys.ping"])
            r = self.csgctl(port, "call", "--instances-file", str(f), "--json", method)
            for line in r.stdout.splitlines():
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                sent += 1
                ok += 1 if o.get("ok") else 0
                bad += 0 if o.get("ok") else 1
            now = time.monotonic()
            if now >= next_sample:
                t = now - t0
                samples["simulator"].append((t, sum(rss_kb(s.pid) for s in sims)))
                samples["real agent"].append((t, rss_kb(agent.pid)))
                samples["broker"].append((t, rss_kb(broker.pid)))
                fd_samples["simulator"].append((t, sum(fds(s.pid) for s in sims)))
                fd_samples["real agent"].append((t, fds(agent.pid)))
                next_sample = now + 10
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        secs = time.monotonic() - t0
        self.row(f"sustained mix, {warmup_minutes:g} + {minutes:g} min: commands answered ok / not",
                 f"{ok} / {bad} ({sent / secs:.0f} commands/s; heartbeats every 30 s from {n} agents)")
        for who, s in samples.items():
            warm = [x for x in s if x[0] >= measured_from]
            if not warm:
                continue
            self.row(f"sustained mix: {who} RSS start / end of the last {minutes:g} min, slope",
                     f"{warm[0][1] / 1024:.1f} / {warm[-1][1] / 1024:.1f} MiB, "
                     f"{slope_per_hour(warm) / 1024:+.2f} MiB/hour")
        for who, s in fd_samples.items():
            warm = [x for x in s if x[0] >= measured_from]
            if warm:
                self.row(f"sustained mix: {who} open files start / end, slope",
                         f"{warm[0][1]} / {warm[-1][1]}, {slope_per_hour(warm):+.1f} /hour")
        self.stop(agent)

    # -- the run ---------------------------------------------------------------------------

    def run(self):
        a = self.args
        print(f"fleet benchmark in {self.dir}", flush=True)
        self.idle_agent_rss()
        n = a.agents
        brokers, sims, shards, accept = self.ramp(n, 1, "10k")
        port = brokers[0].port
        everyone = self.instances(0, n)
        self.fanout([(port, everyone)], "sys.ping", {}, f"sys.ping to {n // 1000}k", target="≤ 1 s")
        create = {"name": "bench", "path": str(self.export_root / "vol1"),
                  "clients": [{"match": "10.0.0.0/8", "access": "rw"}]}
        self.fanout([(port, everyone)], "nfs.export.create", create,
                    f"nfs.export.create to {n // 1000}k", target="≤ 1 s")
        steady = sum(rss_kb(s.pid) for s in sims)
        self.row(f"{n // 1000}k: simulator RSS / agent after the fan-outs",
                 f"{steady * 1024 / n / 1024:.1f} KiB")
        if not a.skip_restart:
            brokers[0] = self.broker_restart(brokers[0], n, accept)
        if a.mix_minutes > 0:
            self.mix(brokers[0].port, n, a.mix_minutes, a.mix_warmup_minutes)
        for s in sims:
            self.stop(s)
        for b in brokers:
            self.stop(b)
        if a.big > 0:
            bbrokers, bsims, bshards, _ = self.ramp(a.big, 3, "50k")
            shards = [(p, self.instances(f, c)) for p, f, c in bshards]
            self.fanout(shards, "sys.ping", {}, f"sys.ping to {a.big // 1000}k (one csgctl per broker)")
            self.fanout(shards, "nfs.export.create", create,
                        f"nfs.export.create to {a.big // 1000}k (one csgctl per broker)")
            for s in bsims:
                self.stop(s)
            for b in bbrokers:
                self.stop(b)


def write_docs(rows, args):
    md = ["<!-- fleet:begin -->", "## Fleet scale", "",
          "Measured by `scripts/fleet-bench.sh` on this machine in one run: `csg-sim` processes "
          "(real agent sessions on in-memory NFS), real Mosquitto brokers, csgctl as the "
          "console; everything on loopback, sharing 2 cores.", "",
          f"- date: {time.strftime('%Y-%m-%d')}",
          f"- run: `scripts/fleet-bench.sh --agents {args.agents} --big {args.big} "
          f"--mix-minutes {args.mix_minutes:g} --mix-warmup-minutes {args.mix_warmup_minutes:g}`", "",
          "| measure | value | target |", "|---|---|---|"]
    for m, v, t in rows:
        md.append(f"| {m} | {v} | {t} |")
    md.append("<!-- fleet:end -->")
    block = "\n".join(md)
    path = ROOT / "docs" / "performance.md"
    text = path.read_text()
    if "<!-- fleet:begin -->" in text:
        head, rest = text.split("<!-- fleet:begin -->", 1)
        tail = rest.split("<!-- fleet:end -->", 1)[1]
        text = head + block + tail
    else:
        if "<!-- notes -->" not in text:
            text += "\n<!-- notes -->\n"
        text += "\n" + block + "\n"
    path.write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--big", type=int, default=50000, help="agents for the 3-broker ramp (0: skip)")
    ap.add_argument("--mix-minutes", type=float, default=10)
    ap.add_argument("--mix-warmup-minutes", type=float, default=10,
                    help="command stream before the measured mix, to warm the processes up (the mix's reads are not kept in the id memory once answered)")
    ap.add_argument("--skip-restart", action="store_true")
    ap.add_argument("--write", action="store_true", help="write the table into docs/performance.md")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()
    b = Bench(args)
    try:
        b.run()
    finally:
        b.cleanup()
    print()
    print("| measure | value | target |")
    print("|---|---|---|")
    for m, v, t in b.rows:
        print(f"| {m} | {v} | {t} |")
    if args.write:
        write_docs(b.rows, args)


if __name__ == "__main__":
    main()
