"""What this host supports, and what to do about each gap.

``probe()`` reads /proc and /sys only (nothing is created) and backs ``nsbox check``;
``remedy_for()`` turns a failed setup step into the sentence an operator needs.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ._cgroup import CONTROLLERS, DELEGATION_REMEDY, MISSING_CONTROLLER_REMEDY, cgroup_layout, writable_cgroups

MIN_KERNEL = (5, 12)  # mount_setattr(2); open_tree/move_mount (5.2) and pidfd (5.3) come with it


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    remedy: str = ""
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def kernel_version() -> tuple[int, int]:
    release = os.uname().release
    major, minor = release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def probe() -> list[Check]:
    return [
        _check_kernel(),
        _check_arch(),
        _check_identity(),
        *_check_userns(),
        _check_userns_works(),
        _check_idmapped_binds(),
        _check_routed_network(),
        _check_seccomp(),
        *_check_cgroups(),
        _check_rootfs_build(),
    ]


def _check_rootfs_build() -> Check:
    """Not required: only `nsbox rootfs build` needs it (import and --rootfs do not)."""
    from ._rootfs._build import INSTALL_TOOLS, missing_tools

    missing = missing_tools()
    root = os.geteuid() == 0
    ok = not missing and root
    detail = (
        "nsbox rootfs build can run (debootstrap, the Debian archive keyring)"
        if ok
        else f"nsbox rootfs build cannot run here: {', '.join(missing) + ' missing' if missing else 'not root'}"
    )
    remedy = INSTALL_TOOLS if missing else "" if root else "build as root; import (`nsbox rootfs import`) works as you"
    return Check("rootfs build", ok, detail, remedy, required=False)


def _check_kernel() -> Check:
    version = kernel_version()
    ok = version >= MIN_KERNEL
    return Check(
        "kernel",
        ok,
        f"Linux {os.uname().release} (nsbox needs {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer for mount_setattr)",
        "" if ok else "upgrade the kernel (Debian 12 ships 6.1, Ubuntu 22.04 5.15, RHEL 9 5.14)",
    )


def _check_arch() -> Check:
    machine = os.uname().machine
    ok = machine in ("x86_64", "aarch64")
    return Check(
        "architecture", ok, machine, "" if ok else "nsbox knows the syscall numbers of x86_64 and aarch64 only"
    )


def _check_identity() -> Check:
    if os.geteuid() == 0:
        return Check("identity", True, "root: sandbox ids map to an unprivileged host range", required=False)
    import shutil  # only for `nsbox check`

    from ._spec import PAYLOAD_UID
    from ._userns import subordinate_ranges

    ranges = subordinate_ranges()
    if ranges is not None:
        (first, count), _ = ranges
        return Check(
            "identity",
            True,
            f"uid {os.geteuid()} (rootless): payloads run as uid {first + PAYLOAD_UID - 1} of your subordinate "
            f"range {first}-{first + count - 1} (/etc/subuid, newuidmap), not as you; in a sandbox with a writable "
            "bind as you, so that what they write there is yours",
            required=False,
        )
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        why, fix = "newuidmap/newgidmap not found", "apt-get install uidmap (root), then a range as below"
    else:
        why = f"no range of at least {PAYLOAD_UID} ids for you in /etc/subuid and /etc/subgid"
        fix = "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER (as root)"
    return Check(
        "identity",
        False,
        f"uid {os.geteuid()} (rootless): payloads run as your own uid, the one init has ({why})",
        fix + ": payloads then get a uid of their own",
        required=False,
    )


def _trial(*steps: Callable[[], object]) -> int:
    """``steps`` run in order by a forked child (whatever they change goes with it): 0 when
    all succeeded, else the number of the first that failed, from 1."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the probe child
        code = 1
        try:
            for code, step in enumerate(steps, 1):  # noqa: B007  # the failing step's number is the exit code
                step()
            code = 0
        except BaseException:  # the exit code says which step failed
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _check_userns_works() -> Check:
    """Try it: a child unshares a user and a mount namespace, maps itself and makes a
    mount private, which needs the capabilities the namespace should give (an AppArmor
    restriction or a container's seccomp profile takes them, or the unshare itself)."""
    from . import _linux, _userns

    uid, gid = os.geteuid(), os.getegid()

    def write_maps() -> None:
        proc_self = os.open("/proc/self", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _userns.write_maps_from_parent(proc_self, f"0 {uid} 1\n", f"0 {gid} 1\n")

    steps = ("unshare(CLONE_NEWUSER|CLONE_NEWNS)", "write its id maps", "mount (capabilities in the namespace)")
    code = _trial(
        lambda: _linux.unshare(_linux.CLONE_NEWUSER | _linux.CLONE_NEWNS),
        write_maps,
        lambda: _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE),
    )
    if code == 0:
        return Check("user namespace trial", True, "a user and mount namespace was made and used")
    failed = steps[code - 1] if 1 <= code <= len(steps) else f"the probe (exit {code})"
    remedy = "see the sysctl lines above" if os.geteuid() != 0 else "run nsbox on the host, not in a confined container"
    return Check("user namespace trial", False, f"{failed} failed", remedy)


def _check_idmapped_binds() -> Check:
    """As root, writable binds are idmapped mounts: try one of this folder (where a bind's
    source often is) in a child's private mount namespace. Not required: read-only binds and
    sandboxes without writable binds do not need it."""
    name = "idmapped binds"
    if os.geteuid() != 0:
        return Check(
            name,
            True,
            "not used as an ordinary user: a writable bind is a plain bind, and the payload runs as you",
            required=False,
        )
    from . import _linux, _userns

    held: list[int] = []

    def idmap_namespace() -> None:
        _linux.unshare(_linux.CLONE_NEWNS)
        _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        held.append(_userns.idmap_namespace((os.getuid(), os.getgid()), (2**31, 2**31)))

    def idmapped_mount() -> None:
        tree = _linux.open_tree(_linux.AT_FDCWD, ".", _linux.OPEN_TREE_CLONE | _linux.AT_RECURSIVE)
        attrs = _linux.MOUNT_ATTR_IDMAP | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV
        _linux.mount_setattr(tree, "", _linux.AT_EMPTY_PATH | _linux.AT_RECURSIVE, attrs, userns_fd=held[0])

    code = _trial(idmap_namespace, idmapped_mount)
    here = os.getcwd()
    if code == 0:
        return Check(name, True, f"the filesystem of {here} can be idmapped", required=False)
    failed = "a user namespace for the idmap" if code == 1 else f"an idmapped mount of {here}"
    remedy = remedy_for("", "mount_setattr", _errno.EINVAL) if code == 2 else "see the user namespace lines above"
    return Check(name, False, f"{failed} could not be made", remedy, required=False)


def _check_routed_network() -> Check:
    """``--net routed``: as root, a veth pair and the router's whole nftables table, tried in
    a child's new network namespace; then whether this namespace, the default uplink,
    forwards. Not required: the other network modes do not need it."""
    name = "routed network"
    if os.geteuid() != 0:
        detail = "needs root (a veth pair and nftables rules outside the sandbox)"
        return Check(name, False, detail, "run nsbox as root for --net routed; else --net allow", required=False)
    from . import _linux

    def veth_pair() -> None:
        _linux.unshare(_linux.CLONE_NEWNET)
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("add", ifname="probe0", kind="veth", peer={"ifname": "probe1"})

    def routers_table() -> None:
        from ._audit import AuditLog
        from ._routed import _nft, _router
        from ._spec import NetworkPolicy

        router = _router.Router(
            NetworkPolicy("routed", ("a.test", "192.0.2.0/24"), max_bytes=1), (), None, AuditLog(None)
        )
        router.slot, router.table = 0, "nsbox-probe"
        router.install(_nft.Nft(), "probe0")

    code = _trial(veth_pair, routers_table)
    if code != 0:
        failed = "a veth pair" if code == 1 else "the router's nftables table (nf_tables, its set, limit, quota, masq)"
        return Check(name, False, f"{failed} could not be made in a new network namespace",
                     "use a kernel with veth and nf_tables (CONFIG_VETH, CONFIG_NF_TABLES and its expressions)",
                     required=False)  # fmt: skip
    if _read("/proc/sys/net/ipv4/ip_forward") != "1":
        return Check(name, True, "veth and nftables work; this namespace does not forward (net.ipv4.ip_forward = 0), "
                     "so routed sandboxes need --net-uplink NETNS of one that does", required=False)  # fmt: skip
    return Check(name, True, "veth and nftables work; this namespace forwards: the default uplink", required=False)


def _sysctl_check(name: str, sysctl: str, good: Callable[[str], bool], fix: str) -> Check | None:
    """A check of one sysctl, or None where this kernel does not have it."""
    value = _read("/proc/sys/" + sysctl.replace(".", "/"))
    if value is None:
        return None
    ok = good(value)
    return Check(name, ok, f"{sysctl} = {value}", "" if ok else fix)


def _check_userns() -> list[Check]:
    checks: list[Check | None] = [
        _sysctl_check(
            "user namespaces",
            "user.max_user_namespaces",
            lambda v: int(v) > 0,
            "sysctl -w user.max_user_namespaces=15000",
        )
        or Check("user namespaces", False, "this kernel has no user namespaces", "use a kernel with CONFIG_USER_NS")
    ]
    if os.geteuid() != 0:
        checks += [
            _sysctl_check(
                "unprivileged user namespaces",
                "kernel.unprivileged_userns_clone",
                lambda v: v == "1",
                "sysctl -w kernel.unprivileged_userns_clone=1",
            ),
            _sysctl_check(
                "AppArmor user namespace restriction",
                "kernel.apparmor_restrict_unprivileged_userns",
                lambda v: v == "0",
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile "
                "granting `userns,` to nsbox's python, see apparmor.d(5))",
            ),
        ]
    return [c for c in checks if c is not None]


def _check_seccomp() -> Check:
    actions = _read("/proc/sys/kernel/seccomp/actions_avail")
    ok = actions is not None and "errno" in actions.split()
    return Check(
        "seccomp",
        ok,
        f"filter actions: {actions}" if actions else "seccomp is not available",
        "" if ok else "use a kernel built with CONFIG_SECCOMP_FILTER",
    )


def _check_cgroups() -> list[Check]:
    """Each controller nsbox limits. Required: without them nsbox refuses to start a
    sandbox unless --no-cgroups is given (rlimits only)."""
    layout = cgroup_layout()
    checks = []
    for controller in CONTROLLERS:
        where = layout.get(controller)
        writable = where is not None and where.own_dir in writable_cgroups(layout)
        if where is None:
            detail = "not available from here (neither a v1 hierarchy nor enabled in our v2 cgroup)"
            remedy = MISSING_CONTROLLER_REMEDY
        else:
            detail = f"{where.version} at {where.own_dir}" + ("" if writable else " (not delegated to us)")
            remedy = DELEGATION_REMEDY
        checks.append(Check(f"cgroup {controller}", writable, detail, "" if writable else remedy))
    return checks


def remedy_for(stage: str, call: str, err: int | None) -> str:
    """The operator's next step for a failed setup step, or ''."""
    if err in (_errno.EPERM, _errno.EACCES) and os.geteuid() != 0 and _apparmor_restricts():
        # Ubuntu 23.10+: the unshare succeeds, but the namespace has no capabilities, so a
        # later step (the maps, a mount) is refused instead.
        return (
            "AppArmor restricts unprivileged user namespaces here (kernel.apparmor_restrict_unprivileged_userns = 1): "
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile granting `userns,` "
            "to nsbox's python (see `nsbox check`)"
        )
    if err == _errno.ENOSYS:
        return f"this kernel lacks {call or 'a needed system call'}; nsbox needs Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]}+"
    if call in ("unshare", "clone") and err == _errno.ENOSPC:
        return "the user namespace limit is reached: sysctl -w user.max_user_namespaces=15000"
    if call in ("unshare", "clone") and err == _errno.EPERM:
        if os.geteuid() != 0:
            return (
                "unprivileged user namespaces are disabled; run `nsbox check` for the sysctl to set "
                "(kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)"
            )
        return "namespaces are forbidden here (a container's seccomp or AppArmor profile?); run nsbox on the host"
    if "map" in stage and err in (_errno.EPERM, _errno.EACCES):
        return "the id map was refused; run `nsbox check`, and see user_namespaces(7) on defining id mappings"
    if err == _errno.EROFS:
        return "a mount destination lies in a read-only part of the sandbox; choose one under /workspace or /mnt"
    if call == "mount_setattr" and err in (_errno.EINVAL, _errno.EOPNOTSUPP, _errno.EPERM):
        return (
            "a writable bind is an idmapped mount (what the sandbox writes lands as you, or --bind-owner), and this "
            "source's filesystem, or one mounted below it, cannot be idmapped (Linux 5.12+: ext4, xfs, btrfs; tmpfs "
            "6.3+): bind it read-only (--ro-bind), or bind a folder on such a filesystem (`nsbox check` tests one)"
        )
    return ""


def _apparmor_restricts() -> bool:
    return _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1"
