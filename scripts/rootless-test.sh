#!/bin/bash
# rootless-test.sh: run tests as an ordinary user that this script creates, and remove it after.
#
#   scripts/rootless-test.sh [-- PYTEST ARGS...]      (as root; default: tests/integration tests/security)
#
# Why: most people who type `nsbox exec` are not root. This runs the suite again the way they
# run nsbox: an unprivileged uid, user namespaces, its own subordinate id range (/etc/subuid,
# newuidmap) on a host whose /etc can be written, and a cgroup subtree delegated the way
# systemd's Delegate=yes does it.
#
# How:
# - The user: `nsbox-rootless` (useradd, which also gives it a subordinate id range from
#   /etc/login.defs), home in a temporary folder; removed at the end with its /etc/subuid lines.
#   Where /etc is read-only (the cgroup v2 VM of scripts/vm-test.sh) a bare uid without a
#   passwd entry is used instead (nsbox then maps the user's own id only). NSBOX_ROOTLESS_IDS=own
#   makes the user without a subordinate range too: nsbox's "own" mode, on a writable host.
# - Delegation: in each cgroup hierarchy nsbox uses (v1 memory, pids, cpu, cpuacct; the v2
#   cgroup where the controllers are enabled) a folder `nsbox/<pid>-<start>-rootless` below this
#   script's own cgroup (hence below the machine's; its name marks it alive for nsbox's stale
#   sweep) is made and handed over: the folder, cgroup.procs, tasks (v1), and on v2
#   cgroup.subtree_control and cgroup.threads are chowned to the user, as systemd does. On v2
#   the controllers are enabled in the parents' cgroup.subtree_control first. The test
#   process is moved into it before it drops root (a move within our own subtree).
# - Two pytest runs: the delegated one (NSBOX_TEST_CGROUP=delegated) with PYTEST ARGS, then
#   tests/integration/test_rootless.py in the cgroup it started in, not delegated
#   (NSBOX_TEST_CGROUP=undelegated): nsbox must refuse, or say rlimit-only with --no-cgroups.
# - The repository must be readable by the user; if its path is not (a clone under /root), it
#   is copied, .venv included, into a temporary folder first.
# - At the end, or on a signal: the user's remaining processes (ours: we started them) are
#   killed by pid, the delegated folders removed, the user deleted. Exit code: the first
#   failing run's, else 0.
set -eu

prog=rootless-test
say() { echo "$prog: $*" >&2; }
die() {
    say "error: $*"
    exit 2
}

[ "$(id -u)" -eq 0 ] || die "run me as root: I create the ordinary user the tests run as"
repo=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd -P)
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || die "usage: $0 [-- PYTEST ARGS...]"
    shift
fi
[ $# -gt 0 ] || set -- -q tests/integration tests/security

user=nsbox-rootless
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nsbox-rootless.XXXXXX")
chmod 0755 "$tmp"
created_user=""
delegated=()

cleanup() {
    local d pid
    if [ -n "$uid" ]; then # our test processes still running as the user: ended by pid
        for pid in $(ps -e -o pid= -o uid= | awk -v u="$uid" '$2 == u { print $1 }'); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    for d in "${delegated[@]}"; do # depth first: what nsbox left below them, then them
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
        rmdir "$(dirname "$d")" 2>/dev/null || true # nsbox/, if nothing else uses it
    done
    [ -n "$created_user" ] && userdel "$user" 2>/dev/null
    rm -rf "$tmp"
}
uid=""
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the user ------------------------------------------------------------------------------
if touch /etc/.nsbox-rootless-probe 2>/dev/null; then
    rm -f /etc/.nsbox-rootless-probe
    if id "$user" >/dev/null 2>&1; then # a previous run was killed before its clean-up
        [ "$(getent passwd "$user" | cut -d: -f5)" = "nsbox rootless tests" ] ||
            die "a user $user exists that this script did not create; remove it or rename it"
        userdel "$user"
    fi
    useradd --no-create-home --home-dir "$tmp/home" --shell /usr/sbin/nologin \
        --comment "nsbox rootless tests" --user-group "$user"
    created_user=1
    groups=--init-groups
    uid=$(id -u "$user")
    gid=$(id -g "$user")
    if [ "${NSBOX_ROOTLESS_IDS:-}" = own ]; then # no subordinate range: payloads get the user's uid
        for f in /etc/subuid /etc/subgid; do
            [ -f "$f" ] && sed -i "/^$user:/d" "$f"
        done
    elif command -v newuidmap >/dev/null && ! grep -q "^$user:" /etc/subuid 2>/dev/null; then
        usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "$user"
    fi
else # /etc is read-only (the VM): a uid that no process uses, without a passwd entry
    uid=61234
    gid=61234
    groups=--clear-groups
fi
mkdir -m 0700 "$tmp/home" "$tmp/pytest"
chown "$uid:$gid" "$tmp/home" "$tmp/pytest"

# ---- the repository, where the user can read it --------------------------------------------
can_read() { setpriv --reuid "$uid" --regid "$gid" --clear-groups -- test -r "$1/pyproject.toml" -a -x "$1/.venv/bin/python"; }
if ! can_read "$repo"; then
    say "$repo is not readable by an ordinary user: copying it to $tmp/repo"
    cp -a "$repo" "$tmp/repo"
    chmod -R go+rX "$tmp/repo" # the clone's own folder may be the 0700 one (mktemp -d)
    # The venv's scripts, pyvenv.cfg and the editable install name the old path (text files
    # only: compiled .pyc files hold it too, as their source's name, and stay valid).
    grep -rlIF --exclude-dir=__pycache__ "$repo" "$tmp/repo/.venv" 2>/dev/null |
        while IFS= read -r f; do sed -i "s#$repo#$tmp/repo#g" "$f"; done
    repo="$tmp/repo"
    can_read "$repo" || die "the copy in $repo is not readable by uid $uid either"
fi

# ---- delegated cgroups ---------------------------------------------------------------------
start=$(awk '{ print $22 }' "/proc/$$/stat")
name="$$-$start-rootless"
delegate_v1() { # mount own
    local d="$1${2%/}/nsbox/$name"
    mkdir -p "$d"
    delegated+=("$d")
    chown "$uid:$gid" "$d" "$d/cgroup.procs" "$d/tasks"
}
delegate_v2() { # mount own controllers
    local own="$1${2%/}" d p
    d="$own/nsbox/$name"
    mkdir -p "$d"
    delegated+=("$d")
    for p in "$own" "$own/nsbox"; do
        echo "$3" >"$p/cgroup.subtree_control"
    done
    chown "$uid:$gid" "$d" "$d/cgroup.procs" "$d/cgroup.subtree_control" "$d/cgroup.threads"
}
v2_controllers=""
while IFS=: read -r _ controllers path; do
    if [ -z "$controllers" ]; then
        mount=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
        [ -n "$mount" ] || continue
        for c in memory pids cpu; do
            grep -qw "$c" "$mount${path%/}/cgroup.controllers" 2>/dev/null && v2_controllers+=" +$c"
        done
        [ -n "$v2_controllers" ] && delegate_v2 "$mount" "$path" "${v2_controllers# }"
    else
        for c in ${controllers//,/ }; do
            case "$c" in memory | pids | cpu | cpuacct) ;; *) continue ;; esac
            mount=$(findmnt -n -t cgroup -o TARGET,OPTIONS | awk -v c="$c" '{ n = split($2, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) print $1 }' | head -n 1)
            [ -n "$mount" ] && delegate_v1 "$mount" "$path"
            break
        done
    fi
done </proc/self/cgroup

# ---- the runs ------------------------------------------------------------------------------
run_as_user() { # cgroup-kind pytest-args...
    local kind=$1
    shift
    (
        if [ "$kind" = delegated ]; then
            for d in "${delegated[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
        fi
        cd "$repo"
        exec setpriv --reuid "$uid" --regid "$gid" "$groups" --inh-caps=-all -- \
            env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$tmp/home" USER="$user" LOGNAME="$user" \
            LANG=C.UTF-8 TMPDIR=/tmp NSBOX_TEST_ROOTLESS=1 NSBOX_TEST_CGROUP="$kind" \
            ${NSBOX_TEST_STRICT:+NSBOX_TEST_STRICT=$NSBOX_TEST_STRICT} ${NSBOX_VM:+NSBOX_VM=$NSBOX_VM} \
            ${PYTEST_DISABLE_PLUGIN_AUTOLOAD:+PYTEST_DISABLE_PLUGIN_AUTOLOAD=1} \
            .venv/bin/python -m pytest -p no:cacheprovider --basetemp "$tmp/pytest/$kind" "$@"
    ) </dev/null
}
[ -n "$created_user" ] || say "no passwd entry (read-only /etc): uid $uid, the user's own id is mapped"
say "as uid $uid; delegated: ${delegated[*]:-none}"
rc=0
run_as_user delegated "$@" || rc=$?
run_as_user undelegated -q tests/integration/test_rootless.py || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
exit "$rc"
