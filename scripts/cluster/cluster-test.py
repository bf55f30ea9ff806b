#!/usr/bin/env python3
"""csg-agent and csgctl on a real 3-node broker cluster (rmqttd with its raft cluster plugin).

Run through scripts/cluster-test.sh, which builds the broker (once) and the binaries first. On
loopback ports, with private state under a temp dir:

  node 1, 2, 3   rmqttd, raft cluster; node 1 starts as raft leader
  agents         N real csg-agent processes, broker URLs node 1, 2, 3 (node 1 first)
  csgctl         on node 2; watchers on node 2 and node 3

Checks (any failure: exit 1):
  - a command crosses nodes: csgctl on node 2 -> agent on node 1 -> reply back;
  - every agent's online presence is seen on node 3, and retained presence is served there to a
    client that subscribes afterwards;
  - node 1 is killed with SIGKILL while a mutation is running on an agent and fan-outs are being
    sent: every agent comes back online through node 2 or 3; csgctl's re-sends with the same
    request id get every answer (none lost); the mutation ran exactly once (the exportfs stub's
    apply count and the agent's audit lines);
  - the Will: what the cluster does with the Wills of node 1's clients is recorded and compared
    with what docs/fleet.md says; after the failover every agent's last presence is online; an
    agent killed while on a live node has its Will delivered to a watcher on another node;
  - csgctl given the dead node first and node 3 second is answered through node 3.

Figures printed: broker build time, cluster start time, cross-node and same-node request latency
(p50/p99 over --calls), time from SIGKILL to Will seen, time to all agents back online, answers
lost.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = ROOT / "scripts" / "cluster"
BIN = Path(os.environ.get("CSG_BIN_DIR", ROOT / "target" / "release"))
RMQTT_ROOT = Path(os.environ.get("RMQTT_ROOT", "/var/tmp/rmqtt"))
RMQTTD = RMQTT_ROOT / "bin" / "rmqttd"
GROUP = "GID_csg"

def free_ports(n):
    """n distinct free loopback ports (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))]


class Watcher:
    """`csgctl watch --json` on one node: every presence event with the time it arrived."""

    def __init__(self, test, name, port):
        self.name, self.events, self.lock = name, [], threading.Lock()
        self.proc = test.spawn(name, test.csgctl_argv(port, "watch", "--json"),
                               stdout=subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                e = json.loads(line)["event"]
            except (ValueError, KeyError, TypeError):
                continue
            if e.get("type") != "presence":
                continue
            with self.lock:
                self.events.append((time.monotonic(), e["instance_id"], e["state"],
                                    e.get("ts_ms", 0), e.get("reason", "")))

    def presence(self, since=0.0):
        with self.lock:
            return [ev for ev in self.events if ev[0] >= since]

    def first(self, instances, state, since, ts_after_ms=0):
        """Per instance, the arrival time of the first `state` event since `since` (whose ts_ms,
        the time of the connection it describes, is after ts_after_ms)."""
        out = {}
        for t, inst, st, ts, _ in self.presence(since):
            if inst in instances and st == state and ts > ts_after_ms and inst not in out:
                out[inst] = t
        return out

    def wait(self, instances, state, since, timeout, ts_after_ms=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.first(instances, state, since, ts_after_ms)
            if len(seen) == len(instances):
                return seen
            time.sleep(0.05)
        return self.first(instances, state, since, ts_after_ms)


class ClusterTest:
    def __init__(self, args):
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="csg-cluster-"))
        self.procs = []
        self.results = []  # (check, ok, detail)
        self.figures = []  # (measure, value)
        self.nodes = {}

    # -- plumbing ----------------------------------------------------------------------------

    def spawn(self, name, argv, stdout=None, cwd=None):
        log = open(self.dir / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdout=stdout or log, stderr=log, cwd=cwd,
                             text=stdout is not None)
        p.name = name
        self.procs.append(p)
        return p

    def cleanup(self):
        for w in getattr(self, "watchers", []):
            with open(self.dir / f"{w.name}.events", "w") as f:
                for ev in w.presence():
                    f.write(json.dumps(ev) + "\n")
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.args.keep:
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        print(f"  [{'ok' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""),
              flush=True)
        return ok

    def figure(self, measure, value):
        self.figures.append((measure, value))
        print(f"  {measure}: {value}", flush=True)

    def url(self, node):
        return f"mqtt://127.0.0.1:{self.nodes[node]['mqtt']}"

    def csgctl_argv(self, port, *args):
        return [str(BIN / "csgctl"), "--broker", f"mqtt://127.0.0.1:{port}",
                "--group-id", GROUP, *args]

    def csgctl(self, node, *args, timeout=120):
        return subprocess.run(self.csgctl_argv(self.nodes[node]["mqtt"], *args),
                              capture_output=True, text=True, timeout=timeout)

    # -- the broker cluster ------------------------------------------------------------------

    def write_node_config(self, n):
        d = self.dir / f"node{n}"
        (d / "plugins").mkdir(parents=True)
        ids = sorted(self.nodes)
        values = dict(
            node_id=n, dir=d, rpc_port=self.nodes[n]["rpc"], mqtt_port=self.nodes[n]["mqtt"],
            http_port=self.nodes[n]["http"],
            node_grpc_addrs=json.dumps([f"{i}@127.0.0.1:{self.nodes[i]['rpc']}" for i in ids]),
            raft_peer_addrs=json.dumps([f"{i}@127.0.0.1:{self.nodes[i]['raft']}" for i in ids]),
        )
        src = HERE / "rmqtt"
        for rel in ["rmqtt.toml", *(f"plugins/{p.name}" for p in (src / "plugins").iterdir())]:
            text = string.Template((src / rel).read_text()).substitute(values)
            (d / rel).write_text(text)
        return d

    def start_node(self, n):
        d = self.dir / f"node{n}"
        # rmqttd also reads ./rmqtt.toml and /etc/rmqtt*, and -f is optional to it (a wrong path
        # is silently ignored): run it in the node's own directory, on its own file.
        p = self.spawn(f"rmqttd-{n}", [str(RMQTTD), "-f", str(d / "rmqtt.toml")], cwd=d)
        self.nodes[n]["proc"] = p
        return p

    def port_open(self, port):
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def probe(self, pub_node, sub_node, timeout):
        """A message published on pub_node reaches a subscriber on sub_node (the cluster
        routes between them). Retried until timeout; True when it did."""
        deadline = time.monotonic() + timeout
        k = 0
        while time.monotonic() < deadline:
            k += 1
            topic = f"cluster-probe/{pub_node}-{sub_node}/{k}"
            sub = subprocess.Popen(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.nodes[sub_node]["mqtt"]),
                 "-t", topic, "-q", "1", "-C", "1", "-W", "3", "-i", f"probe-sub-{k}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            while sub.poll() is None:
                subprocess.run(
                    ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.nodes[pub_node]["mqtt"]),
                     "-t", topic, "-q", "1", "-m", "probe", "-i", f"probe-pub-{k}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
                time.sleep(0.2)
            if sub.returncode == 0:
                return True
        return False

    def start_cluster(self):
        ports = free_ports(12)
        for n in (1, 2, 3):
            self.nodes[n] = dict(zip(("mqtt", "rpc", "raft", "http"), ports[4 * (n - 1):4 * n]))
        for n in (1, 2, 3):
            self.write_node_config(n)
        t0 = time.monotonic()
        for n in (1, 2, 3):
            self.start_node(n)
        deadline = t0 + 120
        while time.monotonic() < deadline and not all(
                self.port_open(self.nodes[n]["mqtt"]) for n in (1, 2, 3)):
            for n in (1, 2, 3):
                if self.nodes[n]["proc"].poll() is not None:
                    raise SystemExit(f"rmqttd node {n} exited: see {self.dir}/node{n}/rmqtt.log "
                                     f"and {self.dir}/rmqttd-{n}.log")
            time.sleep(0.05)
        listening = time.monotonic() - t0
        routed = all(self.probe(a, b, max(1.0, deadline - time.monotonic()))
                     for a, b in ((1, 3), (3, 2), (2, 1)))
        started = time.monotonic() - t0
        self.check("cluster formed: a message crosses 1->3, 3->2 and 2->1", routed)
        self.figure("cluster start (3 nodes listening)", f"{listening:.2f} s")
        self.figure("cluster start (until messages cross every pair of nodes)", f"{started:.2f} s")
        if not routed:
            raise SystemExit("the cluster did not form")

    # -- agents ------------------------------------------------------------------------------

    def agent_config(self, inst, d, stub, exports):
        urls = ", ".join(json.dumps(self.url(n)) for n in (1, 2, 3))
        return f"""[identity]
group_id = "{GROUP}"
instance_id = "{inst}"

[mqtt]
urls = [{urls}]
keep_alive_s = 5
connect_timeout_s = 5
reconnect_min_ms = {self.args.reconnect_min_ms}
reconnect_max_ms = 2000

[agent]
heartbeat_interval_s = 30
log = "info"

[storage]
roots = [{json.dumps(str(self.dir / "exports"))}]
state_dir = {json.dumps(str(d / "state"))}

[nfs]
backend = "kernel"
exports_file = {json.dumps(str(exports))}
exportfs = {json.dumps(str(stub / "exportfs"))}
"""

    def start_agents(self):
        (self.dir / "exports" / "vol1").mkdir(parents=True)
        template = (ROOT / "tests" / "stubs" / "exportfs").read_text()
        self.agents = {}
        for i in range(1, self.args.agents + 1):
            inst = f"gw-c{i:03d}"
            d = self.dir / inst
            stub = d / "stub"
            exports = d / "exports.d" / "csg-agent.exports"
            for sub in (stub, exports.parent, d / "state"):
                sub.mkdir(parents=True)
            # The kernel NFS backend runs exportfs; this kernel has no nfsd, so the tests' own
            # stand-in (tests/stubs/exportfs) takes its place: it records every call, which is how
            # a mutation is counted.
            (stub / "exportfs").write_text(
                template.replace("@DIR@", str(stub)).replace("@EXPORTS@", str(exports)))
            (stub / "exportfs").chmod(0o755)
            cfg = d / "agent.toml"
            cfg.write_text(self.agent_config(inst, d, stub, exports))
            p = self.spawn(inst, [str(BIN / "csg-agent"), "run", "--config", str(cfg)])
            self.agents[inst] = dict(proc=p, dir=d, stub=stub, log=self.dir / f"{inst}.log")

    def agent_nodes(self, inst):
        """The node of each `online` line in the agent's log (`online broker=URL epoch=N`), in
        order; 0 for a URL that is no node's."""
        by_port = {str(v["mqtt"]): n for n, v in self.nodes.items()}
        out = []
        for line in self.agents[inst]["log"].read_text(errors="replace").splitlines():
            if " online " in line and "broker=" in line:
                url = line.split("broker=", 1)[1].split()[0]
                out.append(by_port.get(url.rsplit(":", 1)[-1].rstrip("/"), 0))
        return out

    # -- the scenario ------------------------------------------------------------------------

    def bench(self, node, inst, label):
        r = self.csgctl(node, "bench", inst, "--count", str(self.args.calls), "--warmup", "20",
                        "--json", timeout=300)
        try:
            b = json.loads(r.stdout)
        except ValueError:
            self.check(f"{label}: csgctl bench ran", False, r.stderr.strip()[-300:])
            return
        self.check(f"{label}: {self.args.calls} calls, none lost", b["lost"] == 0 and
                   b["errors"] == 0, f"lost {b['lost']}, errors {b['errors']}")
        self.figure(f"{label} latency (p50 / p99 over {b['count']} calls)",
                    f"{b['p50_us'] / 1000:.2f} ms / {b['p99_us'] / 1000:.2f} ms")

    def fanout_loop(self, stop, rounds):
        """Fan-outs of sys.ping to every agent through node 2, one after another, until stop is
        set. Within one csgctl run, an unanswered request is re-sent with the same id until
        --timeout. While the cluster has no raft leader, node 2 refuses new connections
        (CONNACK "server unavailable") and csgctl exits 4 without sending; then the fan-out is
        run again with the same --id for the instances still unanswered, as a console would,
        until they answer or the round's 120 s are up. Each round: (instances, answered,
        csgctl runs the broker refused, seconds)."""
        k = 0
        while not stop.is_set():
            k += 1
            todo, refused, t0 = set(self.agents), 0, time.monotonic()
            while todo and time.monotonic() - t0 < 120:
                r = self.csgctl(2, "call", ",".join(sorted(todo)), "sys.ping", "--json",
                                "--id", f"fan-{k}", "--timeout", "60s", "--attempt-timeout",
                                "1s", timeout=150)
                for line in r.stdout.splitlines():
                    try:
                        x = json.loads(line)
                    except ValueError:
                        continue
                    if x.get("ok"):
                        todo.discard(x.get("instance"))
                if r.returncode == 4:
                    refused += 1
                    time.sleep(0.2)
            rounds.append((len(self.agents), len(self.agents) - len(todo), refused,
                           time.monotonic() - t0))

    def audit_lines(self, inst, req_id):
        return sum(1 for line in self.agents[inst]["log"].read_text(errors="replace").splitlines()
                   if "audit: mutation executed" in line and f"id={req_id}" in line)

    def run(self):
        a = self.args
        if a.build_seconds:
            self.figure("rmqttd build (cargo, release, this machine)", a.build_seconds)
        print(f"cluster of 3 rmqttd nodes and {a.agents} agents under {self.dir}", flush=True)
        self.start_cluster()

        w2 = Watcher(self, "watch-node2", self.nodes[2]["mqtt"])
        w3 = Watcher(self, "watch-node3", self.nodes[3]["mqtt"])
        self.watchers = [w2, w3]
        time.sleep(0.5)
        t_agents = time.monotonic()
        self.start_agents()
        insts = set(self.agents)
        online3 = w3.wait(insts, "online", t_agents, 60)
        self.check(f"every agent's online presence seen on node 3 ({len(online3)}/{len(insts)})",
                   len(online3) == len(insts))
        if online3:
            self.figure(f"{len(insts)} agents online, as seen on node 3",
                        f"{max(online3.values()) - t_agents:.2f} s")
        first = {i: (self.agent_nodes(i) or [0])[0] for i in insts}
        self.check("every agent connected to node 1 first", set(first.values()) == {1},
                   f"first nodes: {sorted(first.values())}")

        # Retained presence, published on node 1, served by node 3 to a client that subscribes
        # only now.
        t = time.monotonic()
        r = self.csgctl(3, "watch", "--until-online", str(len(insts)), "--timeout", "10s")
        self.check("retained presence served on node 3 to a late subscriber", r.returncode == 0,
                   (r.stdout.strip() or r.stderr.strip())[-200:])
        self.figure("late subscriber on node 3 sees every retained online presence",
                    f"{time.monotonic() - t:.2f} s (csgctl start included)")

        target = sorted(insts)[0]
        r = self.csgctl(2, "call", target, "sys.ping", "--json")
        ok = r.returncode == 0 and '"ok":true' in r.stdout.replace(" ", "")
        self.check(f"a command crosses nodes: csgctl on node 2 -> {target} on node 1 -> reply",
                   ok, r.stdout.strip()[-200:] or r.stderr.strip()[-200:])
        self.bench(2, target, "cross-node (csgctl node 2, agent node 1)")
        self.bench(1, target, "same node (csgctl node 1, agent node 1)")

        # Node 1 dies while a mutation runs on `target` and fan-outs are in flight.
        stub = self.agents[target]["stub"]
        (stub / "delay").write_text(f"{a.apply_delay_s}\n")
        params = json.dumps({"name": "vol1", "path": str(self.dir / "exports" / "vol1"),
                             "clients": [{"match": "192.0.2.0/24", "access": "rw"}]})
        mut_id = "cluster-mutation-1"
        mutation = subprocess.Popen(
            self.csgctl_argv(self.nodes[2]["mqtt"], "call", target, "nfs.export.create", params,
                             "--id", mut_id, "--json", "--timeout", "120s",
                             "--attempt-timeout", "2s"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(mutation)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                x.startswith("-ra") for x in self.stub_argv(stub)):
            time.sleep(0.01)
        applying = any(x.startswith("-ra") for x in self.stub_argv(stub))
        self.check("the mutation is being applied when node 1 is killed", applying)

        stop, rounds = threading.Event(), []
        fan = threading.Thread(target=self.fanout_loop, args=(stop, rounds), daemon=True)
        fan.start()
        time.sleep(0.3)
        kill_wall_ms = int(time.time() * 1000)
        t_kill = time.monotonic()
        self.nodes[1]["proc"].send_signal(signal.SIGKILL)
        self.nodes[1]["proc"].wait()
        print("  node 1 killed (SIGKILL)", flush=True)

        back = w3.wait(insts, "online", t_kill, a.reconnect_timeout_s, ts_after_ms=kill_wall_ms)
        back2 = w2.first(insts, "online", t_kill, kill_wall_ms)
        self.check(f"every agent back online after node 1's death, seen on node 3 "
                   f"({len(back)}/{len(insts)})", len(back) == len(insts))
        self.check(f"... and on node 2 ({len(back2)}/{len(insts)})", len(back2) == len(insts))
        if back:
            times = sorted(t - t_kill for t in back.values())
            self.figure("SIGKILL of node 1 -> all agents online again (node 3's view)",
                        f"{times[-1]:.2f} s (first {times[0]:.2f} s, median "
                        f"{pct(times, 50):.2f} s)")
        now_on = {i: (self.agent_nodes(i) or [0])[-1] for i in insts}
        self.check("each agent reconnected to node 2 or 3",
                   set(now_on.values()) <= {2, 3},
                   ", ".join(f"node {n}: {sum(1 for x in now_on.values() if x == n)}"
                             for n in sorted(set(now_on.values()))))

        # The Wills. A Will's ts_ms is the time of the connection it belongs to: the one made
        # to node 1 (its online presence's ts_ms), or a later attempt.
        node1_ts = {inst: ts for _, inst, st, ts, _ in w3.presence(t_agents)
                    if st == "online" and ts < kill_wall_ms}
        wills = {}
        for w in (w2, w3):
            for t, inst, st, ts, reason in w.presence(t_kill):
                if st == "offline" and reason == "connection_lost" and inst in insts:
                    wills.setdefault(inst, (t, ts))
        of_node1 = sorted(t - t_kill for t, ts in wills.values() if ts in node1_ts.values())
        later = sorted(t - t_kill for t, ts in wills.values() if ts not in node1_ts.values())
        self.figure("SIGKILL of node 1 -> Will seen on node 2/3",
                    f"{len(wills)}/{len(insts)} agents; Wills of the node-1 connections: "
                    f"{len(of_node1)}" + (f" ({of_node1[0]:.2f}-{of_node1[-1]:.2f} s)"
                                          if of_node1 else "")
                    + f"; Wills of later connection attempts: {len(later)}"
                    + (f" ({later[0]:.2f}-{later[-1]:.2f} s)" if later else ""))
        # rmqtt 0.24 keeps a client's Will only in the node that accepted its CONNECT; when that
        # node dies the Will dies with it (docs/fleet.md). The check holds the documentation to
        # the broker: if a later rmqtt hands Wills over, it fails and the docs are corrected.
        self.check("as docs/fleet.md says, no Will of a node-1 connection is published after "
                   "node 1's death", not of_node1,
                   f"{len(of_node1)} of {len(insts)} published")
        # What a console keeps: the last presence of each agent must be online again, whatever
        # order the Wills and the new online presences arrived in.
        time.sleep(1)
        last = {}
        for w in (w2, w3):
            for t, inst, st, ts, _ in w.presence(t_kill):
                if inst in insts and (inst not in last or t >= last[inst][0]):
                    last[inst] = (t, st)
        stale = sorted(i for i in insts if last.get(i, (0, "none"))[1] != "online")
        self.check("after the failover every agent's last presence is online (no Will after "
                   "its new online)", not stale, f"not online: {stale}")
        r = self.csgctl(3, "watch", "--until-online", str(len(insts)), "--timeout", "10s")
        self.check("retained presence after the failover: a late subscriber on node 3 sees "
                   "every agent online", r.returncode == 0,
                   (r.stdout.strip() or r.stderr.strip())[-200:])

        # The mutation: answered through node 2 by csgctl's same-id re-sends, run once.
        try:
            out, err = mutation.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            mutation.kill()
            out, err = mutation.communicate()
        ok = mutation.returncode == 0 and '"ok":true' in out.replace(" ", "")
        self.check("the mutation sent before the kill is answered (same-id re-sends)", ok,
                   (out.strip() or err.strip())[-300:])
        r = self.csgctl(2, "call", target, "nfs.export.create", params, "--id", mut_id, "--json")
        self.check("sending it again with the same id is answered from memory",
                   r.returncode == 0 and '"ok":true' in r.stdout.replace(" ", ""),
                   (r.stdout.strip() or r.stderr.strip())[-200:])
        applies = sum(1 for x in self.stub_argv(stub) if x.startswith("-ra"))
        audits = self.audit_lines(target, mut_id)
        self.check("the mutation ran exactly once", applies == 1 and audits == 1,
                   f"exportfs -ra ran {applies} time(s), {audits} audit line(s)")
        (stub / "delay").unlink()

        # Let the fan-outs run until every agent is back and a few rounds more.
        time.sleep(2)
        stop.set()
        fan.join(timeout=300)
        sent = sum(n for n, _, _, _ in rounds)
        answered = sum(x for _, x, _, _ in rounds)
        refused = sum(x for _, _, x, _ in rounds)
        self.check(f"fan-outs across the kill: every call answered ({len(rounds)} rounds)",
                   sent > 0 and answered == sent and not fan.is_alive(), f"{answered}/{sent}")
        self.figure("answers lost across the kill",
                    f"{sent - answered} of {sent} calls in {len(rounds)} fan-outs of sys.ping "
                    f"(csgctl runs refused by node 2 while raft had no leader: {refused}; "
                    f"longest fan-out {max((x for *_, x in rounds), default=0):.1f} s)")
        r = self.csgctl(2, "call", target, "sys.ping", "--json")
        self.check("a command crosses nodes after the failover (node 2 -> agent)",
                   r.returncode == 0, r.stdout.strip()[-200:] or r.stderr.strip()[-200:])

        # csgctl with a broker list whose first node is the dead one: it moves on to the next.
        r = subprocess.run([str(BIN / "csgctl"), "--broker", f"{self.url(1)},{self.url(3)}",
                            "--group-id", GROUP, "--connect-timeout", "10s", "call", target,
                            "sys.ping", "--json"], capture_output=True, text=True, timeout=60)
        self.check("csgctl given node 1 (dead) then node 3 is answered through node 3",
                   r.returncode == 0, r.stdout.strip()[-200:] or r.stderr.strip()[-200:])

        # A Will on a live cluster: an agent killed while on node 2 or 3; a watcher on another
        # node sees its offline presence.
        victim = sorted(insts)[-1]
        other = w3 if now_on.get(victim) == 2 else w2
        t = time.monotonic()
        self.agents[victim]["proc"].send_signal(signal.SIGKILL)
        self.agents[victim]["proc"].wait()
        seen = other.wait({victim}, "offline", t, 30)
        self.check(f"an agent killed on a live node: its Will reaches {other.name}",
                   victim in seen)
        if victim in seen:
            self.figure("SIGKILL of an agent -> its Will on another node",
                        f"{(seen[victim] - t) * 1000:.0f} ms")

    @staticmethod
    def stub_argv(stub):
        try:
            return (stub / "argv").read_text().splitlines()
        except OSError:
            return []

    def report(self):
        failed = [r for r in self.results if not r[1]]
        print("\nfigures:")
        for m, v in self.figures:
            print(f"  {m}: {v}")
        print(f"\n{len(self.results) - len(failed)} passed, {len(failed)} failed")
        for name, _, detail in failed:
            print(f"  FAILED: {name}" + (f": {detail}" if detail else ""))
        return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="calls per latency measurement")
    ap.add_argument("--apply-delay-s", type=float, default=2.0,
                    help="how long the mutation's apply takes (node 1 dies during it)")
    ap.add_argument("--reconnect-min-ms", type=int, default=500)
    ap.add_argument("--reconnect-timeout-s", type=float, default=90.0)
    ap.add_argument("--build-seconds", default="", help="the broker's build time, as printed")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = ap.parse_args()
    for path in (RMQTTD, BIN / "csg-agent", BIN / "csgctl"):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run scripts/cluster-test.sh")
    if not shutil.which("mosquitto_sub"):
        raise SystemExit("mosquitto_sub is missing (Debian package mosquitto-clients)")
    test = ClusterTest(args)
    try:
        test.run()
    except (SystemExit, Exception) as e:  # any failure is a failed check, after cleanup
        test.check("the scenario ran to its end", False, f"{type(e).__name__}: {e}")
    finally:
        test.cleanup()
    sys.exit(test.report())


if __name__ == "__main__":
    main()
