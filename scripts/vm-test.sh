#!/bin/bash
# vm-test.sh: run a command in a throw-away VM whose kernel has ONLY cgroup v2.
#
#   scripts/vm-test.sh [-- CMD ARGS...]
#
# Why: the hosts this project runs on have a cgroup v1/v2 hybrid (memory, pids, cpu on v1), so
# nsbox's cgroup v2 code path cannot be tested on them directly. This boots Debian 12's own
# kernel (linux-image-6.1.0-*-amd64-unsigned, downloaded with apt-get and unpacked into a cache
# folder; the host's /boot is never touched) under QEMU with `cgroup_no_v1=all`, runs CMD there
# as root in the repository, powers off, prints CMD's stdout+stderr on this script's stdout and
# exits with CMD's exit code. Without CMD it runs the cgroup-limit integration tests.
#
# How:
# - Software emulation (`-accel tcg,thread=multi -cpu max`): /dev/kvm on these machines is a
#   nested, paravirtual KVM on which a stock kernel does not boot. Boot + a tiny command +
#   power-off takes a few seconds; Python runs 10-15x slower than on the host.
# - No disk image: the host's / is shared read-only over virtio-9p (tag nsbox_root) and becomes
#   the guest's root, so the guest has the host's programs, .venv and /root/.pyenv. The
#   repository is shared as its own read-only tag (nsbox_repo) and mounted at the same absolute
#   path after the guest's fresh tmpfs /tmp (so a checkout under /tmp is visible too). A third,
#   writable tag (nsbox_out, a mktemp folder here) carries the request in and the output and the
#   exit code out.
# - The initramfs (static busybox, the virtio/9p modules, scripts/vm/init) mounts all that and
#   uses switch_root, not chroot, into the shared root: the kernel refuses new user namespaces
#   to a chrooted process, and nsbox needs them. scripts/vm/guest-run.sh then runs CMD.
# - Inside: /proc, /sys, /dev (+pts, shm), cgroup2 on /sys/fs/cgroup with +memory +pids +cpu in
#   the root's cgroup.subtree_control, tmpfs on /tmp and /run, hostname nsbox-vm, HOME=/tmp/home,
#   PYTHONDONTWRITEBYTECODE=1, PYTEST_DISABLE_PLUGIN_AUTOLOAD=1, NSBOX_VM=1, and the host's CI and
#   NSBOX_* variables. No network device (`-nic none`): the guest sends no packets anywhere.
# - QEMU runs under `timeout` (VM_TIMEOUT); a signal to this script stops it: no process is left behind.
#
# Needs: root for the first run (apt-get install qemu-system-x86 busybox-static xz-utils, and
# apt-get download of the kernel); later runs need no network and can run as any user who can
# read the files under test.
# Environment: VM_TIMEOUT (seconds, default 600), VM_MEM (default 2G), VM_SMP (default 2),
# VM_VERBOSE=1 (show the guest's console on stderr), VM_REFRESH=1 (fetch the newest kernel again),
# NSBOX_VM_CACHE (cache folder, default ${XDG_CACHE_HOME:-$HOME/.cache}/nsbox-vm).
# Exit code: CMD's; 124 if the VM timed out; 125 if the VM failed before CMD reported an exit code.
set -eu

prog=vm-test
say() { echo "$prog: $*" >&2; }
die() {
    say "error: $*"
    exit 125
}

repo=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd -P)
if [ ! -f "$repo/scripts/vm/init" ] || [ ! -f "$repo/scripts/vm/guest-run.sh" ]; then
    die "scripts/vm/init or scripts/vm/guest-run.sh missing under $repo"
fi
case "$repo" in *$'\n'*) die "the repository path contains a newline: $repo" ;; esac

if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || die "usage: $0 [-- CMD ARGS...]"
    shift
fi
[ $# -gt 0 ] || set -- .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_limits.py

timeout_s=${VM_TIMEOUT:-600}
case "$timeout_s" in '' | *[!0-9]*) die "VM_TIMEOUT must be a whole number of seconds, not '$timeout_s'" ;; esac
mem=${VM_MEM:-2G}
smp=${VM_SMP:-2}
cache=${NSBOX_VM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/nsbox-vm}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nsbox-vm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
vm_pid=""
# shellcheck disable=SC2317 # called from the traps below
on_signal() { # stop the VM (if running) and leave with $1
    if [ -n "$vm_pid" ]; then
        kill -TERM "$vm_pid" 2>/dev/null || true
        wait "$vm_pid" 2>/dev/null || true
    fi
    say "interrupted"
    exit "$1"
}
trap 'on_signal 129' HUP
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# ---- host packages -----------------------------------------------------------------------
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: $*; install them with: sudo apt-get install $*"
    fi
    say "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >"$tmp/apt.log" 2>&1 || {
        apt-get update -q >>"$tmp/apt.log" 2>&1 &&
            apt-get install -y -q --no-install-recommends "$@" >>"$tmp/apt.log" 2>&1
    } || {
        cat "$tmp/apt.log" >&2
        die "apt-get install $* failed"
    }
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
installed busybox-static || missing+=(busybox-static) # static: it runs alone in the initramfs
command -v xz >/dev/null || missing+=(xz-utils)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox missing although busybox-static is installed"

# ---- kernel and initramfs, cached ----------------------------------------------------------
# Newest Debian 12 generic kernel package (the -cloud flavour has no 9p).
newest_kernel_pkg() {
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' 2>/dev/null |
        awk '{print $1}' | sort -V | tail -n 1
}

# Uncompressed ELF vmlinux out of a bzImage (the logic of the kernel's scripts/extract-vmlinux):
# QEMU boots it directly (PVH entry), which skips the in-guest decompression, a few seconds under TCG.
extract_vmlinux() { # bzImage out
    local img=$1 out=$2 magic key cmd pos
    for spec in '\3757zXZ\000|abcde|xz -dc' '\037\213\010|xy|gzip -dc' '(\265/\375|xxx|zstd -dc'; do
        IFS='|' read -r magic key cmd <<<"$spec"
        command -v "${cmd%% *}" >/dev/null || continue
        for pos in $(tr "$magic\n$key" "\n$key=" <"$img" | grep -abo "^$key" | cut -d: -f1); do
            tail -c+"$pos" "$img" | $cmd >"$out" 2>/dev/null || true
            [ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" = '177ELF' ] && return 0
        done
    done
    rm -f "$out"
    return 1
}

build_kernel() { # -> echoes the kernel folder name
    local pkg kdir work deb version kver kimg ko
    pkg=${NSBOX_VM_KERNEL_PKG:-$(newest_kernel_pkg)}
    if [ -z "$pkg" ]; then
        [ "$(id -u)" -eq 0 ] || die "apt-cache finds no linux-image-6.1.0-*-amd64-unsigned; run: sudo apt-get update"
        say "apt-get update (no kernel package known yet)"
        apt-get update -q >"$tmp/apt.log" 2>&1 || {
            cat "$tmp/apt.log" >&2
            die "apt-get update failed"
        }
        pkg=$(newest_kernel_pkg)
        [ -n "$pkg" ] || die "no linux-image-6.1.0-*-amd64-unsigned package in the apt sources"
    fi
    work="$tmp/kernel"
    mkdir -p "$work"
    say "downloading $pkg (apt-get download)"
    download() { (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg") >"$tmp/apt.log" 2>&1; }
    # shellcheck disable=SC2015 # the update or the retry failing both lead to die
    if ! download; then # stale package lists name a file the mirror no longer has: update, retry
        [ "$(id -u)" -eq 0 ] && apt-get update -q >>"$tmp/apt.log" 2>&1 &&
            pkg=${NSBOX_VM_KERNEL_PKG:-$(newest_kernel_pkg)} && [ -n "$pkg" ] && download || {
            cat "$tmp/apt.log" >&2
            die "apt-get download $pkg failed (try: sudo apt-get update)"
        }
    fi
    deb=$(ls "$work"/*.deb)
    version=$(dpkg-deb -f "$deb" Version) || die "cannot read $deb"
    kdir="$cache/$pkg-$(printf '%s' "$version" | tr -c 'A-Za-z0-9.+~-' _)"
    if [ -f "$kdir/kernel" ]; then # same package as before: nothing to rebuild
        rm -rf "$work"
        set_current "$kdir"
        return
    fi
    dpkg-deb -x "$deb" "$work/x" || die "cannot unpack $deb"
    kimg=$(find "$work/x/boot" -name 'vmlinuz-*' 2>/dev/null | head -n 1)
    [ -n "$kimg" ] || die "no /boot/vmlinuz-* in $pkg"
    kver=${kimg##*/vmlinuz-}
    [ -d "$work/x/lib/modules/$kver" ] || die "no /lib/modules/$kver in $pkg"
    rm -rf "$kdir.new"
    mkdir -p "$kdir.new/modules"
    if extract_vmlinux "$kimg" "$kdir.new/kernel"; then
        echo vmlinux >"$kdir.new/kernel.kind"
    else
        say "warning: could not extract vmlinux from $kimg; booting the bzImage (slower)"
        cp "$kimg" "$kdir.new/kernel"
        echo bzImage >"$kdir.new/kernel.kind"
    fi
    cp "$work/x/boot/config-$kver" "$kdir.new/config"
    : >"$kdir.new/modules/order"
    # virtio and 9p, in load order; one missing as .ko is built in (or not needed).
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
        netfs fscache 9pnet 9pnet_virtio 9p; do
        ko=$(find "$work/x/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n 1)
        [ -n "$ko" ] || continue
        case "$ko" in
            *.xz) xz -dc "$ko" >"$kdir.new/modules/$m.ko" ;;
            *.zst) zstd -qdc "$ko" >"$kdir.new/modules/$m.ko" ;;
            *) cp "$ko" "$kdir.new/modules/$m.ko" ;;
        esac
        echo "$m" >>"$kdir.new/modules/order"
    done
    grep -qx 9p "$kdir.new/modules/order" || grep -q '^CONFIG_9P_FS=y' "$kdir.new/config" ||
        die "$pkg has no 9p file system"
    echo "$pkg $version" >"$kdir.new/package"
    rm -rf "$kdir" "$work"
    mv "$kdir.new" "$kdir"
    set_current "$kdir"
}

set_current() { # kdir: use it from now on, and drop the other kernels of the cache
    local d
    echo "${1##*/}" >"$cache/current.new"
    mv "$cache/current.new" "$cache/current"
    for d in "$cache"/linux-image-*; do
        [ "$d" = "$1" ] || rm -rf "$d"
    done
}

build_initramfs() { # kdir out
    local kdir=$1 out=$2 root="$tmp/initramfs"
    rm -rf "$root"
    mkdir -p "$root"/{bin,dev,proc,sys,modules,newroot}
    cp "$busybox" "$root/bin/busybox"
    for app in sh mount mountpoint insmod mkdir poweroff switch_root hostname ip sync cat; do
        ln -s busybox "$root/bin/$app"
    done
    cp "$kdir"/modules/* "$root/modules/"
    cp "$repo/scripts/vm/init" "$root/init"
    chmod 0755 "$root/init"
    (cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) |
        gzip -1 >"$out.new"
    mv "$out.new" "$out"
}

mkdir -p "$cache" || die "cannot create the cache folder $cache"
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"
kname=""
if [ -z "${VM_REFRESH:-}" ] && [ -f "$cache/current" ]; then
    kname=$(cat "$cache/current")
    [ -f "$cache/$kname/kernel" ] || kname=""
fi
if [ -z "$kname" ]; then
    build_kernel
    kname=$(cat "$cache/current")
fi
kdir="$cache/$kname"
# The initramfs is keyed by what goes into it, so an edit of scripts/vm/init rebuilds it.
ikey=$(cat "$repo/scripts/vm/init" "$busybox" "$kdir"/modules/* | sha256sum | cut -c1-16)
initrd="$kdir/initramfs-$ikey.cpio.gz"
if [ ! -f "$initrd" ]; then
    rm -f "$kdir"/initramfs-*.cpio.gz
    build_initramfs "$kdir" "$initrd"
fi
# Linked (or copied) into $tmp, so that another run may replace the cache while this one boots.
for f in kernel:"$kdir/kernel" initrd:"$initrd"; do
    ln -f "${f#*:}" "$tmp/${f%%:*}" 2>/dev/null || cp "${f#*:}" "$tmp/${f%%:*}"
done
package=$(cat "$kdir/package")
flock -u 9
exec 9>&-

# ---- the run -----------------------------------------------------------------------------
out="$tmp/out"
mkdir -p "$out"
printf '%s\n' "$repo" >"$out/repo"
printf '%s\0' "$@" >"$out/argv"
: >"$out/env"
while IFS= read -r -d '' var; do
    case "${var%%=*}" in CI | NSBOX_*) printf '%s\0' "$var" >>"$out/env" ;; esac
done < <(env -0)

cmdline="console=ttyS0 panic=-1 quiet cgroup_no_v1=all tsc=reliable no_timer_check"
cmdline+=" i8042.noaux i8042.nokbd 8250.nr_uarts=1 mitigations=off"
if [ -n "${VM_VERBOSE:-}" ]; then
    console=(-chardev "stdio,id=con,signal=off")
else
    console=(-chardev "file,id=con,path=$tmp/console.log")
fi

q_repo=${repo//,/,,} # QEMU's option syntax doubles commas
q_out=${out//,/,,}
start=$(date +%s.%N)
# In the background with `wait`, so that a signal to this script stops the VM at once (on_signal).
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
    -nodefaults -no-user-config -display none -no-reboot \
    -accel tcg,thread=multi -cpu "${VM_CPU:-max}" -smp "$smp" -m "$mem" \
    -kernel "$tmp/kernel" -initrd "$tmp/initrd" -append "$cmdline" \
    "${console[@]}" -serial chardev:con -monitor none -nic none \
    -fsdev "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=root,mount_tag=nsbox_root \
    -fsdev "local,id=repo,path=$q_repo,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=repo,mount_tag=nsbox_repo \
    -fsdev "local,id=out,path=$q_out,security_model=none" \
    -device virtio-9p-pci,fsdev=out,mount_tag=nsbox_out \
    </dev/null >&2 2>"$tmp/qemu.log" &
vm_pid=$!
qrc=0
wait "$vm_pid" || qrc=$?
vm_pid=""
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

[ -f "$out/output" ] && cat "$out/output"

show_logs() {
    if [ -s "$tmp/qemu.log" ]; then
        say "qemu's messages:"
        grep -v "TCG doesn't support requested feature" "$tmp/qemu.log" | tail -n 20 >&2 || true
    fi
    if [ -s "$tmp/console.log" ]; then
        say "last lines of the guest's console:"
        grep -m 1 'Kernel panic' "$tmp/console.log" >&2 || true
        tail -n 30 "$tmp/console.log" >&2
    fi
}

if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
    show_logs
    say "error: the VM did not finish within ${timeout_s}s (VM_TIMEOUT) and was killed; output above is partial"
    exit 124
fi
if [ -f "$out/rc" ]; then
    rc=$(cat "$out/rc")
    say "exit code $rc, VM ran ${elapsed}s ($package)"
    exit "$rc"
fi
show_logs
[ -f "$out/error" ] && say "error in the guest: $(cat "$out/error")"
say "error: the VM ended (qemu exit code $qrc, after ${elapsed}s) without reporting the command's exit code"
exit 125
