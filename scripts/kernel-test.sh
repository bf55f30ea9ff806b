#!/usr/bin/env bash
# Kernel storage test: the packaged agent on a real Linux kernel, under its own systemd unit,
# with kernel NFS (nfsd + exportfs), LIO (configfs + targetcli), Samba and, in a second phase,
# tgt, all checked with real clients.
#
#   scripts/kernel-test.sh          (as root; after scripts/package.sh)
#
# This machine's kernel may have no nfsd and no configfs; a Debian 12 guest booted under qemu
# from Debian's own kernel package has both. The guest image is built from packages only by
# scripts/guest-image.sh (cached; rebuilt when its inputs change) and every run boots a
# copy-on-write layer over it. Everything runs inside a private network namespace whose only
# device is loopback: a Mosquitto on 127.0.0.1:1883 there, which the guest reaches only through
# qemu's user network (restrict=on) forwarding 10.0.2.100:1883 to it; the guest's NFS (2049),
# iSCSI (3260) and SMB (445) ports are forwarded to 127.0.0.1:12049, 13260 and 14450.
#
# One boot, many checks (scripts/kernel-test.py prints each as it runs):
#   * the .deb installed in a chroot enables its unit; /etc/exports.d exists; configfs is there;
#   * the agent, configured as an operator would (kernel NFS, Samba, LIO), runs under its real
#     hardened unit and answers through the broker; systemd-analyze security;
#   * kernel NFS: nfs.export.create, the guest's own kernel client mounts it (NFS 4.2, 4.1, 3),
#     writes and reads; nfs-ls and nfs-cat from outside; a client outside the list is refused;
#     exportfs -u behind the agent's back is drift, sys.reconcile repairs it;
#   * Samba: a registry share and a user, smbclient writes and reads through the forward;
#   * LIO: iscsi.target.create with a file LUN and mutual CHAP; open-iscsi in the guest logs in,
#     mkfs, write, read back; iscsi-inq and iscsi-readcapacity16 from outside with mutual CHAP,
#     and refused with a wrong secret either way;
#   * kill -9 of the agent while targetcli applies a new target: systemd restarts it, the
#     console's re-send with the same id succeeds, the target is whole;
#   * a guest reboot: the agent starts on its own after the kernel target, nfsd and smbd; the
#     export, the share and the target (with the data written before) are back;
#   * deletes: gone from exportfs, Samba, configfs and saveconfig.json;
#   * tgt: LIO cleared, tgt enabled, the agent reconfigured; the same iSCSI checks; tgtd
#     restarted and the agent's watcher restores the target.
#
# Accelerator: CSG_GUEST_ACCEL=tcg, kvm or auto (default). auto uses KVM only when a probe
# boots the guest's kernel under it to its first panic within 30 s (a nested /dev/kvm that
# cannot run a stock kernel fails that probe), else qemu's software emulation (TCG). The run
# says which it used.
#
# When the machine cannot run it (no qemu, not root, no room for the image) it prints why and
# "kernel test: 0 passed, 0 failed, 1 skipped": never a pass. The exit status is 0 then, and
# non-zero when any check failed. qemu is stopped by its PID on every exit.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

started=$(date +%s)
skip() {
    printf '  SKIP  kernel storage test (%s)\n' "$1"
    echo "kernel test: 0 passed, 0 failed, 1 skipped"
    exit 0
}
fail() {
    printf '  FAIL  %s\n' "$1"
    [ -n "${2:-}" ] && printf '%s\n' "$2" | tail -n 30 | sed 's/^/        | /'
    echo "kernel test: 0 passed, 1 failed"
    exit 1
}

# --- what the machine must have ----------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || skip "must run as root: debootstrap, network namespaces"
missing=()
for tool in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils socat:socat unshare:util-linux \
    ip:iproute2 debootstrap:debootstrap mkfs.ext4:e2fsprogs nfs-ls:libnfs-utils nfs-cat:libnfs-utils \
    iscsi-inq:libiscsi-bin iscsi-readcapacity16:libiscsi-bin smbclient:smbclient python3:python3; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool%%:*} (package ${tool#*:})")
done
{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || missing+=("mosquitto (package mosquitto)")
[ ${#missing[@]} -eq 0 ] || skip "missing: ${missing[*]}; scripts/install-deps.sh installs them"
csgctl=$root/target/release/csgctl
[ -x "$csgctl" ] || fail "target/release/csgctl missing (run scripts/package.sh)"

cache=${CSG_GUEST_CACHE:-/var/cache/csg-agent-guest}
mkdir -p "$cache"
# The root tarball, the image and a run's layer: about 3 GiB at most while an image is built.
for dir in "$cache" /var/tmp; do
    free_k=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
    [ "${free_k:-0}" -ge $((4 * 1024 * 1024)) ] ||
        skip "less than 4 GiB free in $dir ($((${free_k:-0} / 1024)) MiB) for the guest image"
done

# --- the image -------------------------------------------------------------------------------

printf '\n== guest image\n'
t0=$(date +%s)
if ! image=$(scripts/guest-image.sh 2>"$cache/build.log" | tail -n 1) || [ ! -s "$image/disk.qcow2" ]; then
    fail "build the guest image (scripts/guest-image.sh)" "$(cat "$cache/build.log")"
fi
sed 's/^/   /' "$cache/build.log"
printf '   image: %s (%s s here)\n' "$image" "$(($(date +%s) - t0))"
sed 's/^/   manifest: /' "$image/manifest"

# --- the accelerator -------------------------------------------------------------------------

work=$(mktemp -d /var/tmp/csg-kernel-test.XXXXXX)
driver=
cleanup() {
    # The driver first (it stops qemu and prints its summary), then whatever it left: qemu and
    # Mosquitto wrote their PIDs here, and the driver removes qemu's once it has reaped it.
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null
        for _ in $(seq 1 30); do kill -0 "$driver" 2>/dev/null || break; sleep 1; done
    fi
    for name in qemu mosquitto; do
        [ -s "$work/$name.pid" ] || continue
        pid=$(cat "$work/$name.pid")
        # Only the process this run started: its command line names this run's directory or
        # is that program.
        if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -e "$work"; then
            kill -TERM "$pid" 2>/dev/null
            sleep 2
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    if [ -n "${CSG_GUEST_KEEP_LOGS:-}" ]; then
        echo "logs kept in $work"
        rm -f "$work/overlay.qcow2"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

accel=${CSG_GUEST_ACCEL:-auto}
if [ "$accel" = auto ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        # The kernel alone, no root file system: under a working KVM it reaches "VFS: Unable to
        # mount root fs", panics and, with -no-reboot, qemu exits, in a few seconds.
        (timeout 30 qemu-system-x86_64 -nodefaults -no-user-config -display none -accel kvm -cpu host \
            -m 256 -no-reboot -kernel "$image/vmlinuz" -append "console=ttyS0 panic=1" \
            -serial "file:$work/kvm-probe.log") >"$work/kvm-probe.out" 2>&1
        if grep -q "Kernel panic" "$work/kvm-probe.log" 2>/dev/null; then
            accel=kvm
        else
            printf '   /dev/kvm cannot boot the guest kernel (%s): software emulation (TCG)\n' \
                "$(tr '\n' ' ' <"$work/kvm-probe.out" | cut -c1-160)"
        fi
    fi
fi
printf '   accelerator: %s\n' "$accel"

# --- the run, in a network namespace of its own ----------------------------------------------

# In the background and waited for, so that a signal to this script runs its trap at once
# (bash runs traps only between commands), which stops the driver and qemu.
unshare --net --kill-child=TERM -- python3 scripts/kernel-test.py --image "$image" --work "$work" \
    --csgctl "$csgctl" --accel "$accel" &
driver=$!
wait "$driver"
rc=$?
driver=
printf '(kernel test, image included: %s s)\n' "$(($(date +%s) - started))"
exit $rc
