#!/usr/bin/env bash
# Builds the Debian 12 guest image the kernel storage tests boot under qemu, from packages only:
#
#   scripts/guest-image.sh            (as root; after scripts/package.sh)
#
# Prints the directory that holds the image on its last line of standard output:
#   disk.qcow2    the root file system (ext4, label csgroot), never written by a run: each run
#                 puts a copy-on-write layer over it
#   vmlinuz, initrd.img   Debian's own kernel and initramfs, taken from the image's /boot
#   manifest      what went in (suite, packages, the csg-agent .deb's checksum, timings)
#
# Two layers, each cached and rebuilt only when its inputs change:
#   1. a debootstrap of Debian 12 (minbase) with the kernel, systemd, D-Bus, every storage
#      server and initiator the tests drive (kernel NFS, LIO's targetcli, open-iscsi, Samba,
#      tgt) and qemu's guest agent, kept as a tarball keyed by the suite and package list;
#   2. that root with the project's dist/csg-agent_*.deb installed (dpkg in a chroot, as an
#      image builder would), the files under tests/guest/rootfs, and the services set the way
#      the tests start from; made into an ext4 image with `mkfs.ext4 -d` (no loop mount), keyed
#      by layer 1, the .deb's checksum and this script and its files.
# Older images and roots are removed once a new one is complete.
#
# The Debian mirror is the one this machine's apt sources use (scripts/lib/debian-mirror.py);
# CSG_GUEST_MIRROR overrides it. CSG_GUEST_CACHE (default /var/cache/csg-agent-guest) is where
# both layers are kept.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

suite=bookworm
cache=${CSG_GUEST_CACHE:-/var/cache/csg-agent-guest}
image_size=4G
log() { printf 'guest-image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, file ownership in the image)"
for tool in debootstrap:debootstrap mkfs.ext4:e2fsprogs qemu-img:qemu-utils chroot:coreutils \
    dpkg-deb:dpkg python3:python3 flock:util-linux unshare:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || die "${tool%%:*} missing (package ${tool#*:})"
done
shopt -s nullglob
debs=(dist/csg-agent_*.deb)
shopt -u nullglob
[ ${#debs[@]} -eq 1 ] || die "expected one dist/csg-agent_*.deb, found ${#debs[@]} (run scripts/package.sh)"
deb=${debs[0]}

# What the guest runs. The csg-agent package's own dependencies come in with it, so dpkg -i
# needs no network in the chroot.
packages=(linux-image-amd64 systemd systemd-sysv udev dbus kmod iproute2 procps e2fsprogs
    util-linux qemu-guest-agent nfs-kernel-server nfs-common targetcli-fb python3-rtslib-fb
    open-iscsi samba smbclient tgt)
depends=$(dpkg-deb -f "$deb" Depends |
    python3 -c 'import re,sys; print(",".join(sorted({re.split(r"[ (:]", a.split("|")[0].strip())[0] for a in sys.stdin.read().split(",") if a.strip()})))')
arch=$(dpkg --print-architecture)
include=$(printf '%s\n' "${packages[@]}" "${depends//,/$'\n'}" | sed '/^$/d' | sort -u | paste -sd, -)
key1=$(printf 'v1 %s %s minbase %s' "$suite" "$arch" "$include" | sha256sum | cut -c1-16)
tarball="$cache/rootfs-$suite-$arch-$key1.tar"

# The .deb, this script, and the guest's files with their modes and links.
inputs=$( (sha256sum "$deb" "${BASH_SOURCE[0]}" | cut -d' ' -f1
    cd tests/guest/rootfs && find . -printf '%M %p %l\n' | sort
    find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)
key2="$key1-$inputs"
image_dir="$cache/image-$key2"

mkdir -p "$cache"
exec 9>"$cache/.lock"
timeout 1800 flock 9 || die "another build held $cache/.lock for 30 minutes"

if [ -s "$image_dir/disk.qcow2" ] && [ -s "$image_dir/manifest" ]; then
    log "cached image: $image_dir"
    echo "$image_dir"
    exit 0
fi

tmp=$(mktemp -d /var/tmp/csg-guest-image.XXXXXX)
cleanup() {
    set +e
    # debootstrap leaves /proc and /sys mounted in the target when it fails: deepest first.
    awk -v t="$tmp/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
started=$(date +%s)

# --- layer 1: the Debian root ------------------------------------------------------------------

if [ -s "$tarball" ]; then
    log "cached root: $tarball"
    root_s=cached
else
    mirror=${CSG_GUEST_MIRROR:-$(python3 scripts/lib/debian-mirror.py "$suite")}
    [ -n "$mirror" ] || die "no apt source on this machine names Debian $suite: set CSG_GUEST_MIRROR"
    log "debootstrap $suite from $mirror with: $include"
    t0=$(date +%s)
    if ! timeout 1500 debootstrap --variant=minbase --include="$include" "$suite" "$tmp/root" "$mirror" \
        >"$tmp/debootstrap.log" 2>&1; then
        tail -n 30 "$tmp/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    fi
    rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*
    tar -C "$tmp/root" --numeric-owner --xattrs --xattrs-include='*' -cf "$tarball.partial" . ||
        die "cannot write $tarball"
    mv "$tarball.partial" "$tarball"
    rm -rf --one-file-system "$tmp/root"
    for old in "$cache"/rootfs-*.tar; do [ "$old" = "$tarball" ] || rm -f "$old"; done
    root_s=$(($(date +%s) - t0))
    log "root built in $root_s s"
fi

# --- layer 2: the image ------------------------------------------------------------------------

t0=$(date +%s)
r="$tmp/root"
mkdir "$r"
tar -C "$r" --numeric-owner --xattrs --xattrs-include='*' -xpf "$tarball"

# The project's package, installed the way an image builder installs it: dpkg in a chroot,
# where no systemd runs. Its postinst must still enable the unit.
cp "$deb" "$r/tmp/csg-agent.deb"
if ! out=$(unshare --mount --fork chroot "$r" dpkg -i /tmp/csg-agent.deb 2>&1); then
    printf '%s\n' "$out" >&2
    die "dpkg -i $(basename "$deb") in the image failed"
fi
rm -f "$r/tmp/csg-agent.deb"
printf '%s\n' "$out" | sed 's/^/  dpkg: /' >&2

cp -a tests/guest/rootfs/. "$r/"
# No root password and no login on any console: the tests reach the guest through qemu's guest
# agent only. A getty on the serial console would also take it over from the kernel's log.
ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
# A persistent journal: what happened before a reboot can be read after it.
mkdir -p "$r/var/log/journal"
ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
# Every guest boots with the same machine id; that is fine for a test guest that is never
# on a network with another.
chroot "$r" systemd-machine-id-setup >/dev/null 2>&1 || true
chroot "$r" systemctl enable systemd-networkd.service >/dev/null 2>&1 ||
    die "cannot enable systemd-networkd in the image"
# Each run picks its iSCSI target: LIO first (rtslib-fb-targetctl restores it at boot), tgt in
# a second phase. Both listen on port 3260, so tgt starts disabled, as a host using LIO has it.
chroot "$r" systemctl disable tgt.service >/dev/null 2>&1 || true
# Nothing that runs on a timer or wants a network it cannot have: they would only take CPU
# from a software-emulated guest.
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
    dpkg-db-backup.timer nmbd.service samba-ad-dc.service iscsid.socket; do
    chroot "$r" systemctl disable "$unit" >/dev/null 2>&1 || true
done

kernel=$(cd "$r/boot" && ls vmlinuz-* | sort -V | tail -n1)
initrd="initrd.img-${kernel#vmlinuz-}"
[ -s "$r/boot/$initrd" ] || die "the image has no $initrd (initramfs-tools did not run?)"

out_dir="$tmp/image"
mkdir "$out_dir"
cp "$r/boot/$kernel" "$out_dir/vmlinuz"
cp "$r/boot/$initrd" "$out_dir/initrd.img"
truncate -s "$image_size" "$tmp/disk.raw"
if ! out=$(mkfs.ext4 -q -F -L csgroot -E root_owner=0:0 -d "$r" "$tmp/disk.raw" 2>&1); then
    printf '%s\n' "$out" >&2
    die "mkfs.ext4 -d failed"
fi
qemu-img convert -O qcow2 "$tmp/disk.raw" "$out_dir/disk.qcow2"
rm -f "$tmp/disk.raw"
image_s=$(($(date +%s) - t0))
{
    echo "suite=$suite"
    echo "arch=$arch"
    echo "kernel=$kernel"
    echo "packages=$include"
    echo "csg_agent_deb=$(basename "$deb") $(sha256sum "$deb" | cut -d' ' -f1)"
    echo "agent_version=$(dpkg-deb -f "$deb" Version)"
    echo "root_build_s=$root_s"
    echo "image_build_s=$image_s"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$out_dir/manifest"
rm -rf "$image_dir"
mv "$out_dir" "$image_dir"
for old in "$cache"/image-*; do [ "$old" = "$image_dir" ] || rm -rf "$old"; done
log "image built in $image_s s (root: $root_s), $(($(date +%s) - started)) s in all: $image_dir"
echo "$image_dir"
