#!/usr/bin/env python3
"""The kernel storage test's driver: boots the guest image under qemu and drives the packaged
agent in it through a real Mosquitto and csgctl, checking every result with real clients.

Run by scripts/kernel-test.sh inside a private network namespace whose only device is
loopback; see that script for what it needs and what it checks. Not meant to be run by hand.

Reaching the guest:
  * the agent dials the test's Mosquitto at 10.0.2.100:1883, which qemu's user network
    (restrict=on: no other way out) forwards to 127.0.0.1:1883 of this namespace, one socat
    per connection;
  * this side reaches the guest's NFS, iSCSI and SMB servers through forwarded loopback ports;
  * commands in the guest run through qemu's guest agent (qemu-ga) on a virtio-serial channel,
    with their exit status and output: no login, no serial console (the serial port only
    carries the kernel's log, to a file).
"""

import argparse
import base64
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

GUEST_IP = "10.0.2.15"
HOST_IP = "10.0.2.2"  # what the guest sees of a forwarded connection
BROKER_GUEST_ADDR = "10.0.2.100"
BROKER_PORT = 1883
FWD = {"nfs": (12049, 2049), "iscsi": (13260, 3260), "smb": (14450, 445)}
GROUP = "GID_csg"
INSTANCE = "gw-kernel"
GUEST_IQN = "iqn.2026-12.test.csg:guest"
HOST_IQN = "iqn.2026-12.test.csg:host"
IQN_PREFIX = "iqn.2026-11.com.example.csg"
WORK = "."  # the run's private directory (--work): logs, the SMB credentials file

# --- reporting ------------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.passed = self.failed = 0
        self.started = time.monotonic()
        self.figures = []

    def section(self, title):
        print(f"\n== {title}", flush=True)

    def note(self, text):
        for line in str(text).splitlines():
            print(f"   {line}", flush=True)

    def at(self):
        return f"[{time.monotonic() - self.started:4.0f} s]"

    def ok(self, what):
        self.passed += 1
        print(f"  ok    {self.at()} {what}", flush=True)

    def fail(self, what, details=""):
        self.failed += 1
        print(f"  FAIL  {self.at()} {what}", flush=True)
        lines = str(details).rstrip().splitlines()[-30:]
        for line in lines:
            print(f"        | {line}", flush=True)

    def check(self, what, cond, details=""):
        if cond:
            self.ok(what)
        else:
            self.fail(what, details)
        return bool(cond)

    def figure(self, name, value):
        self.figures.append((name, value))
        print(f"   figure: {name} = {value}", flush=True)

    def finish(self):
        print(f"\n({time.monotonic() - self.started:.0f} s)")
        if self.figures:
            print("figures:")
            for name, value in self.figures:
                print(f"  {name}: {value}")
        print(f"kernel test: {self.passed} passed, {self.failed} failed", flush=True)
        return self.failed == 0


R = Report()


class Fatal(Exception):
    """A step every later check depends on failed: reported, then the run stops."""


class Interrupted(Exception):
    """SIGTERM, SIGINT or SIGHUP: the run stops, qemu is stopped, the summary is printed."""


# --- the guest agent (qemu-ga) --------------------------------------------------------------


class Result:
    def __init__(self, rc, out, err):
        self.rc, self.out, self.err = rc, out, err

    @property
    def ok(self):
        return self.rc == 0

    def text(self):
        return f"exit {self.rc}\n{self.out}{self.err}"


class Qga:
    """A client of qemu-ga's JSON protocol on a unix socket (qemu's chardev)."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    def _send(self, obj, prefix=b""):
        self.sock.sendall(prefix + json.dumps(obj).encode() + b"\n")

    def _line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the guest agent")
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError("the guest agent's channel closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def connect(self, timeout):
        """Connects and synchronises (guest-sync-delimited), retrying until `timeout`: the
        guest agent starts late in boot, and a reboot takes it away for a while."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.close()
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(self.path)
                token = random.randint(1, 2**31)
                # 0xFF resets the guest agent's parser; its answer is preceded by 0xFF too,
                # which tells stale output from the answer.
                self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}}, b"\xff")
                step = time.monotonic() + 5
                while True:
                    line = self._line(min(step, deadline))
                    line = line[line.rfind(b"\xff") + 1:]
                    try:
                        if json.loads(line).get("return") == token:
                            return
                    except ValueError:
                        continue
            except (OSError, TimeoutError, ConnectionError) as e:
                last = e
                time.sleep(1)
        self.close()
        raise TimeoutError(f"the guest agent did not answer within {timeout} s ({last})")

    def call(self, execute, arguments=None, timeout=30):
        if self.sock is None:
            self.connect(timeout)
        msg = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        self._send(msg)
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline).lstrip(b"\xff")
            if not line.strip():
                continue
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"{execute}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def sh(self, script, timeout=60, stdin=None):
        """Runs a shell script in the guest; killed there after `timeout` s (coreutils
        timeout), given up here a little later."""
        args = {
            "path": "/usr/bin/timeout",
            "arg": ["-k", "5", str(int(timeout)), "/bin/sh", "-c", script],
            "capture-output": True,
        }
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin.encode()).decode()
        try:
            pid = self.call("guest-exec", args, timeout=15)["pid"]
            deadline = time.monotonic() + timeout + 20
            while True:
                st = self.call("guest-exec-status", {"pid": pid}, timeout=10)
                if st.get("exited"):
                    out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                    err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                    rc = st.get("exitcode", 128 + st.get("signal", 0))
                    return Result(rc, out, err)
                if time.monotonic() > deadline:
                    return Result(-1, "", f"no end within {timeout + 20} s")
                time.sleep(0.2)
        except (OSError, TimeoutError, ConnectionError, RuntimeError, ValueError) as e:
            self.close()
            return Result(-1, "", f"guest agent: {e}")

    def write(self, path, text, mode="0644"):
        r = self.sh(f"umask 077; cat > {shlex.quote(path)}.tmp && chmod {mode} {shlex.quote(path)}.tmp "
                    f"&& mv {shlex.quote(path)}.tmp {shlex.quote(path)}", stdin=text)
        if not r.ok:
            raise Fatal(f"write {path} in the guest: {r.text()}")


# --- the VM ---------------------------------------------------------------------------------


class Vm:
    def __init__(self, image, work, accel):
        self.image, self.work, self.accel = image, work, accel
        self.proc = None
        self.qga = Qga(os.path.join(work, "qga.sock"))
        self.console = os.path.join(work, "console.log")

    def start(self):
        overlay = os.path.join(self.work, "overlay.qcow2")
        # The image is never written: every run gets its own copy-on-write layer.
        r = host(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                  os.path.join(self.image, "disk.qcow2"), overlay], timeout=60)
        if not r.ok:
            raise Fatal(f"the run's copy-on-write layer: {r.text()}")
        hostfwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in FWD.values())
        netdev = (f"user,id=n0,restrict=on,{hostfwd},"
                  f"guestfwd=tcp:{BROKER_GUEST_ADDR}:{BROKER_PORT}-cmd:socat STDIO TCP:127.0.0.1:{BROKER_PORT}")
        accel = "kvm" if self.accel == "kvm" else "tcg,thread=multi"
        cmd = [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
            "-accel", accel, "-cpu", "host" if self.accel == "kvm" else "max",
            "-smp", "2", "-m", "2048",
            "-kernel", os.path.join(self.image, "vmlinuz"),
            "-initrd", os.path.join(self.image, "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=0 net.ifnames=1",
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
            "-chardev", f"socket,id=qga0,path={self.qga.path},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.console}",
        ]
        R.note("qemu: " + " ".join(shlex.quote(c) for c in cmd))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(self.work, "qemu.out"), "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        with open(os.path.join(self.work, "qemu.pid"), "w") as f:
            f.write(f"{self.proc.pid}\n")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stops qemu by its PID, always: TERM, then KILL."""
        self.qga.close()
        if not self.alive():
            if self.proc is not None:
                try:
                    os.unlink(os.path.join(self.work, "qemu.pid"))
                except OSError:
                    pass
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        # Reaped: the wrapper must not signal whatever process gets this PID next.
        try:
            os.unlink(os.path.join(self.work, "qemu.pid"))
        except OSError:
            pass

    def console_tail(self, n=30):
        try:
            with open(self.console, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_booted(self, timeout):
        """Until systemd reports the system up (running or degraded). Returns seconds."""
        t0 = time.monotonic()
        try:
            self.qga.connect(timeout)
        except TimeoutError as e:
            raise Fatal(f"{e}\n{self.console_tail()}")
        left = max(10, timeout - (time.monotonic() - t0))
        r = self.qga.sh("systemctl is-system-running --wait", timeout=left)
        state = r.out.strip()
        if state == "stopping":
            # The old boot, on its way down: callers waiting for a new one try again.
            return time.monotonic() - t0, state
        if state not in ("running", "degraded"):
            raise Fatal(f"systemd state {state!r}: {r.text()}")
        return time.monotonic() - t0, state


# --- the console side -----------------------------------------------------------------------


class Console:
    def __init__(self, csgctl):
        self.csgctl = csgctl
        self.broker = f"mqtt://127.0.0.1:{BROKER_PORT}"

    def call(self, method, params=None, timeout=150, rid=None):
        """One request through the broker; returns (ok, result or error, seconds)."""
        cmd = [self.csgctl, "--broker", self.broker, "call", INSTANCE, method]
        if params is not None:
            cmd.append(json.dumps(params))
        cmd += ["--json", "--timeout", f"{timeout}s", "--attempt-timeout", "60s"]
        if rid:
            cmd += ["--id", rid]
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            return False, {"code": "NO_REPLY", "message": f"csgctl did not end within {timeout + 30} s"}, \
                time.monotonic() - t0
        dt = time.monotonic() - t0
        try:
            reply = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return False, {"code": "NO_REPLY", "message": (p.stdout + p.stderr).strip()}, dt
        if reply.get("ok") is True or "result" in reply and reply.get("error") is None:
            result = reply.get("result")
            return True, result if isinstance(result, dict) else {"result": result}, dt
        error = reply.get("error", reply)
        return False, error if isinstance(error, dict) else {"message": str(error)}, dt


# --- helpers --------------------------------------------------------------------------------


def wait_until(fn, timeout, step=1.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(step)


def host(cmd, timeout=60, env=None):
    e = dict(os.environ)
    e.update(env or {})
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
        return Result(p.returncode, p.stdout, p.stderr)
    except subprocess.TimeoutExpired:
        return Result(-1, "", f"{cmd[0]}: no end within {timeout} s")


def agent_config(iscsi_backend):
    return f"""# Written by the kernel storage test, as an operator would.
[identity]
group_id = "{GROUP}"
instance_id = "{INSTANCE}"

[mqtt]
url = "mqtt://{BROKER_GUEST_ADDR}:{BROKER_PORT}"
keep_alive_s = 30
reconnect_min_ms = 1000
reconnect_max_ms = 5000

[agent]
heartbeat_interval_s = 10

[storage]
roots = ["/srv/csg"]
# Software-emulated CPUs: each targetcli run is a Python start-up of several seconds.
command_timeout_s = 120

[nfs]
backend = "kernel"

[smb]
backend = "samba"

[iscsi]
backend = "{iscsi_backend}"
iqn_prefix = "{IQN_PREFIX}"
"""


SMB_CONF = """# Written by the kernel storage test: the agent keeps its shares in Samba's registry.
[global]
   server role = standalone server
   map to guest = never
   smb ports = 445
   disable netbios = yes
   log level = 1
   include = registry
"""

# An NFS export's clients: the guest itself (its own kernel client) read-write, and this side
# (10.0.2.2 behind qemu's NAT, whose source ports are not privileged) read-only.
NFS_CLIENTS = [
    {"match": GUEST_IP, "access": "rw", "squash": "none"},
    {"match": HOST_IP, "access": "ro"},
]
CHAP = {"username": "csg-init", "secret": "InitSecret1234",
        "mutual_username": "csg-target", "mutual_secret": "TargSecret5678"}


def lun_dev(iqn, lun=1, portal="127.0.0.1:3260"):
    return f"/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{lun}"


def iscsi_login_script(iqn, chap, portal="127.0.0.1:3260"):
    """open-iscsi in the guest: a node for the target by explicit name and portal (discovery
    would answer with addresses the guest cannot reach from every side), CHAP both ways."""
    q = shlex.quote
    s = [f"iscsiadm -m node -o new -T {q(iqn)} -p {portal} >/dev/null"]
    settings = {"node.session.auth.authmethod": "CHAP",
                "node.session.auth.username": chap["username"],
                "node.session.auth.password": chap["secret"]}
    if chap.get("mutual_username"):
        settings["node.session.auth.username_in"] = chap["mutual_username"]
        settings["node.session.auth.password_in"] = chap["mutual_secret"]
    for k, v in settings.items():
        s.append(f"iscsiadm -m node -T {q(iqn)} -p {portal} -o update -n {k} -v {q(v)}")
    s.append(f"iscsiadm -m node -T {q(iqn)} -p {portal} --login")
    return " && ".join(s)


def iscsi_logout_script(iqn, portal="127.0.0.1:3260"):
    q = shlex.quote
    return (f"iscsiadm -m node -T {q(iqn)} -p {portal} --logout >/dev/null 2>&1; "
            f"iscsiadm -m node -T {q(iqn)} -p {portal} -o delete >/dev/null 2>&1; true")


def block_io_script(iqn, tag):
    """mkfs, mount, write, drop caches, read back, unmount: the LUN as a real disk."""
    dev = lun_dev(iqn)
    return f"""set -e
i=0; while [ ! -b {dev} ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
[ -b {dev} ] || {{ echo "no block device {dev}"; ls -l /dev/disk/by-path; exit 1; }}
mkfs.ext4 -q -F {dev}
mkdir -p /mnt/lun
mount {dev} /mnt/lun
head -c 1048576 /dev/urandom > /root/{tag}.bin
cp /root/{tag}.bin /mnt/lun/{tag}.bin
sync
umount /mnt/lun
echo 3 > /proc/sys/vm/drop_caches
mount {dev} /mnt/lun
cmp /root/{tag}.bin /mnt/lun/{tag}.bin
umount /mnt/lun
echo "block device $(readlink -f {dev}): mkfs, 1 MiB written and read back"
"""


def nfs_mount_script(server, path, vers, mnt="/mnt/nfs"):
    return f"""set -e
mkdir -p {mnt}
mount -t nfs -o vers={vers},soft,timeo=50,retrans=2 {server}:{path} {mnt}
trap 'umount -f {mnt}' EXIT
grep " {mnt} nfs" /proc/mounts | grep -q "vers={vers}," || {{ echo "not NFS {vers}:"; grep " {mnt} " /proc/mounts; exit 1; }}
echo "written over NFS {vers}" > {mnt}/probe-{vers}.txt
sync
grep -q "written over NFS {vers}" {mnt}/probe-{vers}.txt
echo "mounted {server}:{path} (vers={vers}), wrote and read {mnt}/probe-{vers}.txt"
"""


# --- the phases -----------------------------------------------------------------------------


def configure(vm, iscsi_backend):
    g = vm.qga
    g.write("/etc/samba/smb.conf", SMB_CONF)
    g.write("/etc/csg-agent/agent.toml", agent_config(iscsi_backend), mode="0640")
    r = g.sh("mkdir -p /srv/csg/exports/vol1 /srv/csg/shares/data /srv/csg/luns && "
             "chmod 0777 /srv/csg/exports/vol1 && "
             "csg-agent check-config --config /etc/csg-agent/agent.toml && "
             "systemctl restart smbd && { systemctl reset-failed csg-agent || true; } && "
             "systemctl restart csg-agent && systemctl is-active csg-agent", timeout=120)
    return r


def wait_online(console, timeout=180):
    def ping():
        ok, res, _ = console.call("sys.ping", timeout=10)
        return ok
    return wait_until(ping, timeout, step=2)


def require_online(vm, console, what="it answers"):
    """The agent answers through the broker, or the run stops here: every later check would
    only wait out its own timeout."""
    if not R.check(what, wait_online(console), "no answer within 180 s"):
        raise Fatal("the agent does not answer:\n" +
                    vm.qga.sh("journalctl -u csg-agent --no-pager -n 40", timeout=60).text())


def reply_text(res):
    return json.dumps(res, indent=1)[:3000]


def phase_boot(vm):
    R.section("boot the guest")
    vm.start()
    secs, state = vm.wait_booted(300)
    R.ok(f"systemd up in the guest ({state}) {secs:.0f} s after qemu started")
    R.figure("boot to multi-user (s)", f"{secs:.0f}")
    r = vm.qga.sh("systemd-analyze time | head -n1", timeout=60)
    R.note(r.out.strip())
    if state == "degraded":
        r = vm.qga.sh("systemctl --failed --no-legend --plain", timeout=30)
        R.note("failed units: " + (r.out.strip() or "-"))


def phase_install(vm, console):
    g = vm.qga
    R.section("the packaged agent under its own unit")
    r = g.sh("dpkg-query -W -f='${Version}' csg-agent; echo; systemctl is-enabled csg-agent.service; "
             "uname -r; cat /proc/filesystems | grep -c -e nfsd -e configfs", timeout=60)
    lines = r.out.split("\n")
    R.note(f"csg-agent {lines[0] if lines else '?'}, kernel {lines[2] if len(lines) > 2 else '?'}")
    R.check("the unit is enabled by the package installed in a chroot (image build)",
            len(lines) > 1 and lines[1].strip() == "enabled", r.text())
    r = g.sh("cat /proc/fs/nfsd/nfsv4gracetime /proc/fs/nfsd/nfsv4leasetime | tr '\\n' ' '", timeout=30)
    R.note(f"nfsd grace and lease time (s): {r.out.strip()}")
    r = g.sh("test -d /etc/exports.d && test -d /sys/kernel/config/target && echo ok", timeout=30)
    R.check("/etc/exports.d exists (the package makes it); configfs has the target core", r.ok, r.text())
    r = configure(vm, "lio")
    if not R.check("configured (kernel NFS, Samba, LIO) and started with systemctl", r.ok, r.text()):
        raise Fatal("the agent did not start:\n" + g.sh("journalctl -u csg-agent --no-pager -n 40").out)
    require_online(vm, console, "sys.ping through the broker")
    ok, res, _ = console.call("sys.info")
    R.check("sys.info lists the nfs, smb and iscsi methods",
            ok and all(any(m.startswith(f) for m in res.get("methods", [])) for f in ("nfs.", "smb.", "iscsi.")),
            reply_text(res))
    r = g.sh("systemd-analyze security csg-agent.service --no-pager | tail -n 1", timeout=120)
    R.check("systemd-analyze security runs in the guest", r.ok and "Overall exposure" in r.out, r.text())
    R.figure("systemd-analyze security csg-agent.service", r.out.strip().replace("→ ", ""))


def nfs_export(name, path, clients):
    return {"name": name, "path": path, "clients": clients}


def phase_nfs(vm, console):
    g = vm.qga
    R.section("kernel NFS: the agent's export, the guest's kernel client, libnfs from outside")
    spec = nfs_export("vol1", "/srv/csg/exports/vol1", NFS_CLIENTS)
    ok, res, dt = console.call("nfs.export.create", spec)
    if not R.check(f"nfs.export.create vol1 ({dt:.1f} s)", ok and res.get("changed") is True, reply_text(res)):
        R.note(g.sh("journalctl -u csg-agent --no-pager -n 30").out)
        return False
    R.figure("kernel NFS: nfs.export.create as seen by the console (s)", f"{dt:.2f}")
    R.note(g.sh("cat /etc/exports.d/csg-agent.exports", timeout=30).out.strip())
    r = g.sh("exportfs -s", timeout=60)
    R.check("exportfs -s in the guest lists vol1 for both clients",
            r.ok and "/srv/csg/exports/vol1" in r.out and GUEST_IP in r.out and HOST_IP in r.out, r.text())
    for vers in ("4.2", "4.1", "3"):
        r = g.sh(nfs_mount_script(GUEST_IP, "/srv/csg/exports/vol1", vers), timeout=120)
        R.check(f"the guest's kernel client mounts vol1 with NFS {vers}, writes and reads", r.ok, r.text())
    port = FWD["nfs"][0]
    r = host(["nfs-ls", f"nfs://127.0.0.1/srv/csg/exports/vol1?version=4&nfsport={port}"], timeout=60)
    R.check("nfs-ls (libnfs) from outside the guest lists the export's files",
            r.ok and "probe-4.2.txt" in r.out, r.text())
    r = host(["nfs-cat", f"nfs://127.0.0.1/srv/csg/exports/vol1/probe-3.txt?version=4&nfsport={port}"], timeout=60)
    R.check("nfs-cat from outside reads a file the guest wrote", r.ok and "written over NFS 3" in r.out, r.text())
    r = g.sh(nfs_mount_script("127.0.0.1", "/srv/csg/exports/vol1", "4.2", "/mnt/denied"), timeout=120)
    R.check("a client outside the export's list (127.0.0.1) is refused",
            not r.ok and "access denied" in r.text(), r.text())

    # Behind the agent's back.
    r = g.sh(f"exportfs -u {GUEST_IP}:/srv/csg/exports/vol1 && exportfs -s", timeout=60)
    R.check("exportfs -u of the guest's client behind the agent's back", r.ok and GUEST_IP not in r.out, r.text())
    ok, res, _ = console.call("nfs.export.get", {"name": "vol1"})
    R.check("nfs.export.get shows the missing client as drift", ok and res.get("drift"), reply_text(res))
    ok, res, _ = console.call("sys.reconcile")
    R.check("sys.reconcile repairs it", ok and res.get("nfs", {}).get("changes"), reply_text(res))
    ok, res, _ = console.call("nfs.export.get", {"name": "vol1"})
    R.check("no drift after the reconcile", ok and not res.get("drift"), reply_text(res))
    r = g.sh(nfs_mount_script(GUEST_IP, "/srv/csg/exports/vol1", "4.2"), timeout=120)
    R.check("the guest mounts vol1 again", r.ok, r.text())
    return True


def phase_smb(vm, console):
    g = vm.qga
    R.section("Samba: a registry share and users, smbclient from outside")
    ok, res, dt = console.call("smb.share.create", {"name": "data", "path": "/srv/csg/shares/data",
                                                    "read_only": False, "valid_users": ["alice", "bob"]})
    if not R.check(f"smb.share.create data ({dt:.1f} s)", ok, reply_text(res)):
        return False
    R.figure("Samba: smb.share.create as seen by the console (s)", f"{dt:.2f}")
    r = g.sh("net conf showshare data", timeout=60)
    R.check("the share is in Samba's registry (net conf showshare)", r.ok and "/srv/csg/shares/data" in r.out,
            r.text())

    # Under the shipped unit /etc is read-only: no Unix account can be made, and the agent says
    # so up front instead of useradd's "cannot lock /etc/passwd; try again later".
    ok, res, _ = console.call("smb.user.set", {"username": "alice", "password": "Alice-pw-2026"})
    R.check("smb.user.set for a missing account under the shipped unit: a clear refusal",
            not ok and res.get("code") == "BACKEND_ERROR" and "read-only" in res.get("message", ""), reply_text(res))
    r = g.sh("getent passwd alice; users=$(pdbedit -L) && printf '%s\\n' \"$users\" | grep -c '^alice:'",
             timeout=60)
    R.check("nothing changed: no account, no passdb entry", r.out.strip() == "0", r.text())
    # The operator makes the account; the agent gives it its SMB password.
    r = g.sh("useradd -M -s /usr/sbin/nologin alice && chown alice /srv/csg/shares/data", timeout=60)
    R.check("the operator creates alice (uid 1000)", r.ok, r.text())
    ok, res, dt = console.call("smb.user.set", {"username": "alice", "password": "Alice-pw-2026"})
    R.check(f"smb.user.set alice for the existing account ({dt:.1f} s)",
            ok and res.get("unix_user_created") is False, reply_text(res))
    if not smb_check(True):
        return False

    # The documented drop-in lets the agent create accounts itself.
    g.sh("mkdir -p /etc/systemd/system/csg-agent.service.d", timeout=30)
    g.write("/etc/systemd/system/csg-agent.service.d/unix-users.conf", UNIX_USERS_DROPIN)
    r = g.sh("systemctl daemon-reload && systemctl restart csg-agent && systemctl is-active csg-agent", timeout=120)
    R.check("with the unix-users drop-in (docs/operations.md) the agent restarts", r.ok, r.text())
    require_online(vm, console)
    ok, res, _ = console.call("smb.user.set", {"username": "bob", "password": "Bob-pw-2026x"})
    R.check("smb.user.set bob creates the Unix account", ok and res.get("unix_user_created") is True,
            reply_text(res))
    smb_check(True, "smbclient as bob reads the share", user="bob", password="Bob-pw-2026x", write=False)
    ok, res, _ = console.call("smb.user.delete", {"username": "bob"})
    r = g.sh("getent passwd bob", timeout=30)
    R.check("smb.user.delete bob removes the account it made", ok and r.rc == 2, reply_text(res) + r.text())
    r = g.sh("rm /etc/systemd/system/csg-agent.service.d/unix-users.conf && systemctl daemon-reload && "
             "systemctl restart csg-agent && systemctl is-active csg-agent", timeout=120)
    R.check("back to the shipped unit", r.ok, r.text())
    require_online(vm, console)
    return True


UNIX_USERS_DROPIN = """# /etc/systemd/system/csg-agent.service.d/unix-users.conf (docs/operations.md):
# smb.user.set may create Unix accounts, which needs /etc writable.
[Service]
ReadWritePaths=/etc
"""


def smb_check(expect_present, what="smbclient as alice writes and reads the share", user="alice",
              password="Alice-pw-2026", write=True):
    port = str(FWD["smb"][0])
    authfile = os.path.join(WORK, "smb.auth")
    fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"username = {user}\npassword = {password}\n")
    sent = os.path.join(WORK, "smb.txt")
    with open(sent, "w") as f:
        f.write("over SMB\n")
    back = os.path.join(WORK, "smb.back")
    if os.path.exists(back):
        os.unlink(back)
    cmds = f"put {sent} s.txt; " if write else ""
    cmds += f"get s.txt {back}; ls"
    r = host(["smbclient", "-p", port, "-A", authfile, "//127.0.0.1/data", "-c", cmds], timeout=60)
    if expect_present:
        got = open(back).read() if os.path.exists(back) else ""
        return R.check(what, r.ok and got == "over SMB\n", r.text())
    return R.check(what, not r.ok and "BAD_NETWORK_NAME" in r.text(), r.text())


def target_spec(name, lun_file, size, chap, initiators):
    return {"name": name, "luns": [{"lun": 1, "path": lun_file, "size_bytes": size}],
            "initiators": initiators, "chap": chap}


def host_iscsi_env(chap):
    env = {"LIBISCSI_CHAP_USERNAME": chap["username"], "LIBISCSI_CHAP_PASSWORD": chap["secret"]}
    if chap.get("mutual_username"):
        env["LIBISCSI_CHAP_TARGET_USERNAME"] = chap["mutual_username"]
        env["LIBISCSI_CHAP_TARGET_PASSWORD"] = chap["mutual_secret"]
    return env


def phase_iscsi(vm, console, backend):
    g = vm.qga
    R.section(f"iSCSI on {backend}: a file LUN with mutual CHAP, open-iscsi in the guest, libiscsi outside")
    name = "db" if backend == "lio" else "tgtdb"
    iqn = f"{IQN_PREFIX}:{name}"
    size = 64 * 1024 * 1024
    spec = target_spec(name, f"/srv/csg/luns/{name}.img", size, CHAP, [GUEST_IQN, HOST_IQN])
    if backend == "lio":
        r = g.sh("lsmod | grep -o '^iscsi_target_mod' || echo not loaded", timeout=30)
        R.note(f"iscsi_target_mod before the first target: {r.out.strip()}")
    ok, res, dt = console.call("iscsi.target.create", spec)
    if not R.check(f"iscsi.target.create {name} ({dt:.1f} s)", ok and res.get("changed") is True, reply_text(res)):
        R.note(g.sh("journalctl -u csg-agent --no-pager -n 40").out)
        return False
    R.figure(f"{backend}: iscsi.target.create (1 LUN, 2 initiators, mutual CHAP) as seen by the console (s)",
             f"{dt:.2f}")
    ok, res, _ = console.call("iscsi.target.get", {"name": name})
    R.check(f"iscsi.target.get {name}: present, no drift", ok and res.get("actual") and not res.get("drift"),
            reply_text(res))
    if backend == "lio":
        r = g.sh(f"ls /sys/kernel/config/target/iscsi/{iqn}/tpgt_1/acls/; "
                 f"grep -c {shlex.quote(iqn)} /etc/rtslib-fb-target/saveconfig.json", timeout=30)
        R.check("configfs has the node ACLs; saveconfig.json has the target",
                r.ok and GUEST_IQN in r.out and HOST_IQN in r.out, r.text())
    r = g.sh(iscsi_login_script(iqn, CHAP), timeout=120)
    if R.check("open-iscsi in the guest logs in with mutual CHAP", r.ok, r.text()):
        r = g.sh(block_io_script(iqn, name), timeout=240)
        R.check("the LUN is a block device in the guest: mkfs, write, read back", r.ok, r.text())
    g.sh(iscsi_logout_script(iqn), timeout=60)
    # Wrong secrets are tried with libiscsi below, not with the guest's own initiator: a failed
    # login's connection teardown in this guest kernel's iscsi_tcp (6.1) once oopsed under
    # emulation (NULL dereference in iscsi_sw_tcp_conn_stop) and took the guest down with it.
    port = FWD["iscsi"][0]
    url = f"iscsi://127.0.0.1:{port}/{iqn}/1"
    r = host(["iscsi-inq", "-i", HOST_IQN, url], env=host_iscsi_env(CHAP), timeout=60)
    R.check("iscsi-inq (libiscsi) from outside with mutual CHAP sees the LUN", r.ok and "vendor" in r.out.lower(),
            r.text())
    r = host(["iscsi-readcapacity16", "-i", HOST_IQN, url], env=host_iscsi_env(CHAP), timeout=60)
    m = re.search(r"Total size:\s*(\d+)", r.out)
    R.check(f"iscsi-readcapacity16 from outside: {size} bytes", r.ok and m and int(m.group(1)) == size, r.text())
    r = host(["iscsi-inq", "-i", HOST_IQN, url], env=host_iscsi_env(dict(CHAP, secret="WrongSecret000")), timeout=60)
    R.check("libiscsi with a wrong CHAP secret is refused", not r.ok and "Authentication failure" in r.text(),
            r.text())
    r = host(["iscsi-inq", "-i", HOST_IQN, url],
             env=host_iscsi_env(dict(CHAP, mutual_secret="WrongSecret000")), timeout=60)
    R.check("libiscsi refuses the target when it cannot prove the mutual CHAP secret",
            not r.ok and "Invalid CHAP_R response from the target" in r.text(), r.text())
    return True


def phase_kill_during_apply(vm, console):
    g = vm.qga
    R.section("kill -9 of the agent during an apply; systemd restarts it; the console re-sends")
    name = "crash"
    iqn = f"{IQN_PREFIX}:{name}"
    spec = target_spec(name, "/srv/csg/luns/crash.img", 32 * 1024 * 1024,
                       {"username": "csg-crash", "secret": "CrashSecret123"}, [GUEST_IQN])
    rid = f"kill9-{random.randint(0, 1 << 30)}"
    # In the guest: wait until the new target exists in configfs while targetcli is still at
    # work on it (its LUN and ACLs are not there yet), then kill the agent; with the unit's
    # KillMode systemd then stops the targetcli it was running too. The kernel is left with a
    # half-made target.
    tdir = f"/sys/kernel/config/target/iscsi/{iqn}"
    killer = (f"i=0; while [ ! -d {tdir} ]; do sleep 0.02; i=$((i+1)); "
              "[ $i -lt 6000 ] || { echo the target never appeared; exit 1; }; done; "
              "pid=$(systemctl show -P MainPID csg-agent); kill -9 $pid; "
              f"echo killed $pid; echo luns: $(ls {tdir}/tpgt_1/lun | wc -l) acls: $(ls {tdir}/tpgt_1/acls | wc -l)")
    restarts = g.sh("systemctl show -P NRestarts csg-agent", timeout=30).out.strip()
    box = {}
    # The guest agent's channel takes one client at a time: only this thread uses it until
    # the join below (the main thread talks to the broker meanwhile).
    t = threading.Thread(target=lambda: box.update(r=g.sh(killer, 120)))
    t.start()
    time.sleep(0.5)
    ok1, res1, _ = console.call("iscsi.target.create", spec, rid=rid, timeout=20)
    t.join()
    kr = box.get("r")
    R.check("the agent was killed while targetcli was building the new target (no LUN, no ACL yet)",
            kr and kr.ok and "luns: 0 acls: 0" in kr.out, kr.text() if kr else "")
    R.check("the first attempt got no reply (the console cannot know what happened)", not ok1, reply_text(res1))
    r = g.sh("sleep 3; systemctl is-active csg-agent && systemctl show -P NRestarts csg-agent", timeout=120)
    after = r.out.split()[-1] if r.out.split() else ""
    R.check(f"systemd restarted the agent (NRestarts {restarts} -> {after})",
            r.ok and restarts.isdigit() and after.isdigit() and int(after) > int(restarts), r.text())
    require_online(vm, console, "it answers again")
    # The agent answers while its start-up reconcile still runs (reads take no lock): wait for
    # the new process's own report before reading the target back.
    r = g.sh("pid=$(systemctl show -P MainPID csg-agent); i=0; "
             "until journalctl _PID=$pid -o cat --no-pager | grep 'reconciled family=\"iscsi\"'; do "
             "sleep 1; i=$((i+1)); [ $i -lt 180 ] || exit 1; done", timeout=240)
    R.check("the start-up reconcile repaired the half-made target",
            r.ok and '"action":"repaired"' in r.out and '"target":"crash"' in r.out, r.text())
    ok, res, _ = console.call("iscsi.target.get", {"name": name})
    R.check("… from the desired state: no drift", ok and res.get("actual") and not res.get("drift"),
            reply_text(res))
    ok, res, _ = console.call("iscsi.target.create", spec, rid=rid)
    R.check("the console's re-send with the same id gets a success", ok, reply_text(res))
    ok, res, _ = console.call("iscsi.target.get", {"name": name})
    R.check("the target is whole: desired state kept, no drift", ok and res.get("actual") and not res.get("drift"),
            reply_text(res))
    r = g.sh(f"ls /sys/kernel/config/target/iscsi/{iqn}/tpgt_1/acls/{GUEST_IQN}/ | grep -c lun_; "
             f"targetcli ls /iscsi/{iqn}/tpgt_1/luns 2>&1 | head -5", timeout=60)
    R.check("configfs: the LUN is mapped in the ACL", r.ok and r.out.split()[0] == "1", r.text())
    ok, res, _ = console.call("iscsi.target.delete", {"name": name, "delete_backing_files": True})
    R.check("delete the crash target", ok, reply_text(res))


def phase_reboot(vm, console):
    g = vm.qga
    R.section("a guest reboot: the agent starts on its own, everything comes back")
    boot_id = lambda: g.sh("cat /proc/sys/kernel/random/boot_id", timeout=30).out.strip()
    before = boot_id()
    t0 = time.monotonic()
    # --no-block: the command returns before the guest agent goes away with the old boot
    # (otherwise its status is waited for until a time-out).
    # Its status may never come back (the guest agent goes with the old boot): the new boot id
    # below is what tells that the reboot happened.
    g.sh("systemctl --no-block reboot", timeout=10)
    g.close()
    # Until the guest agent answers from the new boot (the old one may still answer while the
    # system stops).
    try:
        while True:
            time.sleep(2)
            secs, state = vm.wait_booted(max(10, 300 - (time.monotonic() - t0)))
            now = boot_id()
            if now and now != before:
                break
            if time.monotonic() - t0 > 300:
                raise Fatal(f"still the same boot ({before}) 300 s after systemctl reboot")
            g.close()
    except Fatal as e:
        R.fail("the guest comes back after a reboot", str(e))
        raise
    R.ok(f"the guest is up again with a new boot id ({state}, {time.monotonic() - t0:.0f} s after systemctl reboot)")
    # How long the old boot took to stop, and what it waited for (gaps over 3 s).
    r = g.sh("journalctl -b -1 -o short-monotonic --no-pager | awk 'match($0, /^\\[ *[0-9.]+\\]/) { "
             "t = substr($0, 2, RLENGTH - 2) + 0; if ($0 ~ /will reboot now/) { start = t; on = 1 } "
             "if (on && t > start && t - last > 3) printf \"%.1f s before: %s\\n\", t - last, $0; last = t; end = t } "
             "END { if (on) printf \"the old boot stopped in %.1f s\\n\", end - start }'", timeout=120)
    R.note(r.out.strip()[-1500:] or r.text())
    r = g.sh("systemctl is-active csg-agent rtslib-fb-targetctl nfs-server smbd", timeout=60)
    R.check("csg-agent, the kernel target, nfsd and smbd all started at boot", r.ok, r.text())
    r = g.sh("b=$(systemctl show -P ExecMainStartTimestampMonotonic csg-agent); "
             "for u in rtslib-fb-targetctl nfs-server smbd; do a=$(systemctl show -P ActiveEnterTimestampMonotonic $u); "
             "echo $u $a csg-agent $b; [ $a -gt 0 ] && [ $b -gt $a ] || exit 1; done", timeout=60)
    R.check("the agent started after the kernel target's configuration was restored, nfsd and smbd", r.ok, r.text())
    require_online(vm, console)
    r = g.sh("journalctl -b -u csg-agent --no-pager | grep -i -e reconcil -e error | tail -n 5", timeout=60)
    R.note(r.out.strip())
    ok, res, _ = console.call("nfs.export.get", {"name": "vol1"})
    R.check("vol1 exported after the reboot, no drift", ok and res.get("actual") and not res.get("drift"),
            reply_text(res))
    r = g.sh(nfs_mount_script(GUEST_IP, "/srv/csg/exports/vol1", "4.2"), timeout=180)
    R.check("the guest mounts vol1 after the reboot", r.ok, r.text())
    smb_check(True, "the share and alice's password are back (smbclient)")
    ok, res, _ = console.call("iscsi.target.get", {"name": "db"})
    R.check("LIO target db back after the reboot, no drift", ok and res.get("actual") and not res.get("drift"),
            reply_text(res))
    iqn = f"{IQN_PREFIX}:db"
    dev = lun_dev(iqn)
    r = g.sh(iscsi_login_script(iqn, CHAP) + f" && i=0 && while [ ! -b {dev} ] && [ $i -lt 60 ]; do sleep 0.5; "
             f"i=$((i+1)); done && mkdir -p /mnt/lun && mount {dev} /mnt/lun"
             f" && cmp /root/db.bin /mnt/lun/db.bin && umount /mnt/lun", timeout=180)
    R.check("open-iscsi logs in after the reboot; the data written before it is there", r.ok, r.text())
    g.sh(iscsi_logout_script(iqn), timeout=60)


def phase_delete(vm, console):
    g = vm.qga
    R.section("deletes")
    ok, res, _ = console.call("nfs.export.delete", {"name": "vol1"})
    R.check("nfs.export.delete vol1", ok and res.get("existed") is True, reply_text(res))
    r = g.sh("exportfs -s", timeout=60)
    R.check("exportfs -s no longer lists vol1", r.ok and "/srv/csg/exports/vol1" not in r.out, r.text())
    r = g.sh(nfs_mount_script(GUEST_IP, "/srv/csg/exports/vol1", "4.2"), timeout=120)
    up = g.sh("systemctl is-active nfs-server && test -e /proc/fs/nfsd/threads", timeout=30)
    R.check("the guest can no longer mount it (nfsd still up)",
            not r.ok and re.search(r"access denied|No such file", r.text()) and up.ok, r.text() + up.text())
    ok, res, _ = console.call("smb.share.delete", {"name": "data"})
    R.check("smb.share.delete data", ok, reply_text(res))
    smb_check(False, "smbclient: the share is gone")
    ok, res, _ = console.call("iscsi.target.delete", {"name": "db", "delete_backing_files": True})
    R.check("iscsi.target.delete db", ok and res.get("existed") is True, reply_text(res))
    iqn = f"{IQN_PREFIX}:db"
    r = g.sh(f"test ! -e /sys/kernel/config/target/iscsi/{iqn} && test -s /etc/rtslib-fb-target/saveconfig.json "
             f"&& ! grep -q {shlex.quote(iqn)} /etc/rtslib-fb-target/saveconfig.json && "
             "test ! -e /srv/csg/luns/db.img && echo gone", timeout=60)
    R.check("LIO: gone from configfs and saveconfig.json, backing file removed", r.ok, r.text())


def phase_tgt(vm, console):
    g = vm.qga
    R.section("tgt instead of LIO: the same agent, reconfigured")
    r = g.sh("targetcli clearconfig confirm=True >/dev/null && targetcli saveconfig >/dev/null && "
             "systemctl disable --now rtslib-fb-targetctl && "
             "systemctl enable --now tgt && systemctl is-active tgt", timeout=180)
    if not R.check("LIO cleared, tgt enabled and started", r.ok, r.text()):
        return
    r = configure(vm, "tgt")
    if not R.check("agent reconfigured with iscsi.backend = tgt", r.ok, r.text()):
        return
    require_online(vm, console)
    if phase_iscsi(vm, console, "tgt"):
        iqn = f"{IQN_PREFIX}:tgtdb"
        r = g.sh("systemctl restart tgt; sleep 1; i=0; "
                 f"while ! tgtadm --lld iscsi --op show --mode target | grep -q {shlex.quote(iqn)}; do "
                 "sleep 1; i=$((i+1)); [ $i -lt 60 ] || exit 1; done; echo restored after ${i} s", timeout=120)
        R.check("tgtd restarted: the agent's watcher puts the target back", r.ok, r.text())
        # The watcher re-applies the target one tgtadm call at a time: whole once the drift
        # is gone.
        t0, last = time.monotonic(), {}

        def whole():
            ok, res, _ = console.call("iscsi.target.get", {"name": "tgtdb"})
            last["res"] = res
            return ok and res.get("actual") and not res.get("drift")
        done = wait_until(whole, 60)
        R.check(f"… whole again: LUN, ACLs and CHAP, no drift (after {time.monotonic() - t0:.1f} s; at most 60)",
                done, reply_text(last.get("res")))
        ok, res, _ = console.call("iscsi.target.delete", {"name": "tgtdb", "delete_backing_files": True})
        R.check("iscsi.target.delete tgtdb", ok and res.get("existed") is True, reply_text(res))


# --- main -----------------------------------------------------------------------------------


def start_broker(work):
    conf = os.path.join(work, "mosquitto.conf")
    log = os.path.join(work, "mosquitto.log")
    with open(conf, "w") as f:
        f.write(f"listener {BROKER_PORT} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"set_tcp_nodelay true\nlog_dest file {log}\nlog_type all\n")
    open(log, "w").close()
    os.chmod(log, 0o666)
    mosq = "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else "mosquitto"
    p = subprocess.Popen([mosq, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(os.path.join(work, "mosquitto.pid"), "w") as f:
        f.write(f"{p.pid}\n")
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", BROKER_PORT), 1).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise Fatal("mosquitto did not listen on 127.0.0.1:1883:\n" + open(log).read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--csgctl", required=True)
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm"])
    a = ap.parse_args()
    global WORK
    WORK = a.work

    vm = Vm(a.image, a.work, a.accel)
    broker = None

    def on_signal(sig, _frame):
        raise Interrupted(f"stopped by signal {sig}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        broker = start_broker(a.work)
        R.note(f"accelerator: {a.accel}")
        console = Console(a.csgctl)
        phase_boot(vm)
        phase_install(vm, console)
        phase_nfs(vm, console)
        phase_smb(vm, console)
        phase_iscsi(vm, console, "lio")
        phase_kill_during_apply(vm, console)
        phase_reboot(vm, console)
        phase_delete(vm, console)
        phase_tgt(vm, console)
    except Fatal as e:
        R.fail("cannot go on", str(e))
    except Interrupted as e:
        R.fail("the run was interrupted", str(e))
    except Exception:  # a bug here must not be a pass
        R.fail("the test driver failed", traceback.format_exc())
    finally:
        # A second signal must not cut the clean-up short.
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        vm.stop()
        if broker:
            broker.terminate()
            try:
                broker.wait(5)
            except subprocess.TimeoutExpired:
                broker.kill()
    sys.exit(0 if R.finish() else 1)


if __name__ == "__main__":
    main()
