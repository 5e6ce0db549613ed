#!/bin/bash
# PID 1 of the VM of scripts/vm-test.sh after scripts/vm/init switch_rooted into the host's /
# (so this is the host's own bash). $1 is the run's writable 9p share, with the request from the
# host: repo (the repository path), argv and env (NUL-separated). It runs the command as root in the
# repository with a clean environment, stdin from /dev/null, stdout+stderr into $1/output, writes
# the exit code to $1/rc, and powers the VM off through sysrq (no init system is needed for that).
out=$1

power_off() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 30 # the power-off is asynchronous; PID 1 must not exit before it (that would panic)
}

fail() {
    echo "vm-guest-run: $*" >&2
    echo "$*" >"$out/error"
    power_off
}

read -r repo <"$out/repo" || fail "no repository path in the request"
mapfile -d '' -t argv <"$out/argv" || fail "no command in the request"
mapfile -d '' -t envs <"$out/env" || fail "no environment in the request"
[ "${#argv[@]}" -gt 0 ] || fail "empty command"
cd "$repo" || fail "cannot cd to $repo"

home=/tmp/home # writable: the host's /root is shared read-only
mkdir -m 0700 "$home"

env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$home" USER=root LOGNAME=root LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 NSBOX_VM=1 \
    "${envs[@]}" \
    "${argv[@]}" </dev/null >"$out/output" 2>&1
rc=$?
echo "$rc" >"$out/rc.tmp" && mv "$out/rc.tmp" "$out/rc"
power_off
