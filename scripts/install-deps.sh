#!/bin/sh
# Debian packages nsbox needs: gcc, libc6-dev and libcap-dev to build python-prctl (the
# tests also compile C probes with gcc), libseccomp2 for pyseccomp, python3-pip for
# install_packages inside a sandbox (pip runs with the sandbox's python3), python3-venv and
# python3-dev for the .venv on Debian's own python3 (make picks it where it exists),
# uidmap (newuidmap/newgidmap) for rootless sandboxes with a subordinate id range of their own,
# debootstrap and debian-archive-keyring for `nsbox rootfs build` (the keyring verifies the archive),
# and for `bench` also bubblewrap (the baseline). As root they are installed with apt-get;
# otherwise a missing one is named with the command that installs it.
set -eu
packages="gcc libc6-dev libcap-dev libseccomp2 python3-pip python3-venv python3-dev uidmap debootstrap debian-archive-keyring"
[ "${1:-}" = "bench" ] && packages="$packages bubblewrap"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "nsbox: missing Debian packages:$missing; install them with: sudo apt-get install$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
echo "nsbox: installed$missing"
