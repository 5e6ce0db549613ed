"""The mount namespace: a read-only root on tmpfs, built from a plan.

``plan_root`` runs in the supervisor before anything is forked: it reads the host's
layout, decides every mount and refuses bad targets (a SpecError, nothing created).
The ``*_in_child`` functions run in init, in this order (``_child.py`` calls them):

0. the sources were opened as O_PATH fds before init was forked, in the host's view and
   with the caller's permissions: by the supervisor (``open_sources_from_parent``) as
   root, by the intermediate before it changes uid when rootless. The plan holds their
   canonical paths, opened without following any symlink and checked for their type, so
   a symlink swapped in since (by an earlier sandbox with a writable bind, say) is refused
1. ``make_private_in_child``   nothing we mount propagates back to the host
3. ``enter_staging_in_child``  a tmpfs on /tmp, pivot_root into it; the host is at /.old
4. ``create_skeleton_in_child`` directories, symlinks and the generated /etc files
5. ``bind_in_child``           each bind is cloned (open_tree), made read-only while still
                               detached (mount_setattr), then attached (move_mount): there
                               is no moment at which it is writable
6. ``mount_proc_in_child``     while /.old/proc is still visible: the kernel lets a user
                               namespace mount proc only where one is fully visible
7. ``mount_dev_in_child``      a tmpfs with the six harmless host devices, devpts, shm,
                               mqueue (the sandbox's own ipc namespace's)
8. ``mask_proc_in_child``      /dev/null over dangerous files, empty tmpfs over dangerous
                               dirs, read-only binds over /proc/sys and friends
   ``mount_scratch_in_child``  /tmp and /workspace
9. the user's binds are cloned (``clone_in_child``) while the host's tree is attached,
   ``detach_old_root_in_child`` drops that tree, and only then are the clones attached
   (``attach_in_child``): no user-chosen target can lead into the host's tree
10. ``seal_in_child``          / and /dev read-only

Mountpoints are created by walking from the root one component at a time with
O_NOFOLLOW, so a symlink in the new tree can never steer a mkdir into the host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from . import _linux
from ._errors import SpecError
from ._hostfiles import canonical_path
from ._spec import PAYLOAD_USER, PROGRAM_GID, PROGRAM_UID, PROGRAM_USER, TMP, WORKSPACE, SandboxSpec, option_name

OLD_ROOT = "/.old"
#: The kernel passes at most 253 fds in one message (SCM_MAX_FD).
MAX_SOURCES = 250
#: Where the new root is assembled: a mountpoint in the sandbox's private mount namespace.
STAGING = TMP
#: Top-level host paths bound read-only by default (symlinks are recreated as symlinks).
HOST_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The host's /etc is NOT bound: only these entries, which programs need to run.
HOST_ETC_PATHS = (
    "alternatives", "ca-certificates", "ca-certificates.conf", "debian_version", "gai.conf",
    "host.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "magic",
    "magic.mime", "mime.types", "os-release", "protocols", "services", "ssl/certs",
    "ssl/openssl.cnf", "terminfo", "timezone",
)  # fmt: skip
#: Entries of a --rootfs tree that nsbox provides itself.
ROOTFS_SKIP = {"proc", "dev", "sys", "tmp", "workspace", OLD_ROOT.lstrip("/")}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
#: Masked with /dev/null: kernel memory, keys, timers and the debugging views (as runc).
PROC_MASKED_FILES = (
    "kcore", "kmsg", "keys", "kallsyms", "timer_list", "sched_debug", "latency_stats",
    "sysrq-trigger", "config.gz", "vmallocinfo", "pagetypeinfo",
)  # fmt: skip
PROC_MASKED_DIRS = ("acpi", "asound", "scsi", "driver", "dynamic_debug")
PROC_READONLY = ("sys", "bus", "fs", "irq")
_MQUEUE = "/dev/mqueue"
_SHM = "/dev/shm"  # nosec B108  # the sandbox's own /dev/shm, a fresh size-capped tmpfs
_NOSUID_NODEV = _linux.MS_NOSUID | _linux.MS_NODEV
_RO_ATTRS = _linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV


@dataclass(frozen=True)
class Bind:
    source: str  # host path
    target: str  # path in the sandbox
    writable: bool
    is_dir: bool


@dataclass(frozen=True)
class RootPlan:
    dirs: tuple[str, ...]
    links: tuple[tuple[str, str], ...]  # (path in sandbox, what it points to)
    files: tuple[tuple[str, bytes], ...]
    system_binds: tuple[Bind, ...]
    user_binds: tuple[Bind, ...]
    workspace_size: int
    workspace_owner: tuple[int, int]

    @property
    def writable_binds(self) -> tuple[Bind, ...]:
        """The user's writable binds: as root, each is an idmapped mount the supervisor makes."""
        return tuple(b for b in self.user_binds if b.writable)

    @property
    def sources(self) -> tuple[tuple[str, str], ...]:
        """Every host path the root is built from, each once, with its kind (dir, file, device)."""
        kinds = {b.source: "dir" if b.is_dir else "file" for b in self.system_binds + self.user_binds}
        kinds.update((f"/dev/{d}", "device") for d in DEVICES)
        return tuple(kinds.items())


# --- planning (supervisor side, before any fork) ----------------------------------------
def plan_root(spec: SandboxSpec, workspace_owner: tuple[int, int]) -> RootPlan:
    dirs: list[str] = ["/proc", "/dev", TMP, WORKSPACE]
    links: list[tuple[str, str]] = []
    files: list[tuple[str, bytes]] = []
    binds: list[Bind] = []
    if spec.rootfs is None:
        for path in HOST_SYSTEM_PATHS:
            _mirror(path, path, links, binds)
        dirs.append("/etc")
        files += _generated_etc(spec.hostname)
        for name in HOST_ETC_PATHS:
            _mirror(f"/etc/{name}", f"/etc/{name}", links, binds)
    else:
        for name in sorted(os.listdir(spec.rootfs)):
            if name not in ROOTFS_SKIP:
                _mirror(os.path.join(spec.rootfs, name), f"/{name}", links, binds)
    user_binds = tuple(
        Bind(m.source, m.target, m.writable, os.path.isdir(m.source))  # m.source is canonical
        for m in sorted(spec.all_mounts, key=lambda m: m.target.count("/"))
    )
    for bind in user_binds:
        _check_target(bind, binds + [b for b in user_binds if b is not bind], spec)
    for target, _ in links:  # parents of nested links such as /etc/ssl/...
        dirs += _parents(target)
    for bind in binds:
        dirs += _parents(bind.target)
    writable = sum(1 for b in user_binds if b.writable)  # as root, each also an idmapped copy
    if len({b.source for b in binds + list(user_binds)}) + len(DEVICES) + writable > MAX_SOURCES:
        raise SpecError(option_name("mounts"), f"more than {MAX_SOURCES} host paths to bind (with --rootfs entries)")
    return RootPlan(
        dirs=tuple(dict.fromkeys(dirs)),
        links=tuple(links),
        files=tuple(files),
        system_binds=tuple(binds),
        user_binds=user_binds,
        workspace_size=spec.workspace_size,
        workspace_owner=workspace_owner,
    )


def _mirror(host_path: str, target: str, links: list[tuple[str, str]], binds: list[Bind]) -> None:
    try:
        st = os.lstat(host_path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        links.append((target, os.readlink(host_path)))
    elif stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        source = canonical_path(host_path, what=option_name("rootfs"))  # only root's own links followed
        binds.append(Bind(source, target, False, stat.S_ISDIR(st.st_mode)))


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _check_target(bind: Bind, others: list[Bind], spec: SandboxSpec) -> None:
    """A target inside another bind must already exist there: nsbox never creates
    directories in host paths, and read-only binds could not take them anyway."""
    parents = [b for b in others if bind.target.startswith(b.target.rstrip("/") + "/")]
    if not parents:
        return
    parent = max(parents, key=lambda b: len(b.target))
    inner = os.path.join(parent.source, os.path.relpath(bind.target, parent.target))
    if os.path.isdir(inner) if bind.is_dir else os.path.isfile(inner):
        return
    raise SpecError(
        option_name("mounts"),
        f"destination {bind.target!r} lies inside {parent.target} (from the host's {parent.source}), "
        f"where no {'directory' if bind.is_dir else 'file'} of that name exists; nsbox does not create "
        f"paths on the host: choose a destination under {WORKSPACE}, /mnt or a new top-level directory",
    )


def _generated_etc(hostname: str) -> list[tuple[str, bytes]]:
    passwd = (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{PAYLOAD_USER}:x:1000:1000:nsbox sandbox:{WORKSPACE}:/bin/sh\n"
        f"{PROGRAM_USER}:x:{PROGRAM_UID}:{PROGRAM_GID}:nsbox run_code:{TMP}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\n{PAYLOAD_USER}:x:1000:\n{PROGRAM_USER}:x:{PROGRAM_GID}:\nnogroup:x:65534:\n"
    hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    nsswitch = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nprotocols: files\nservices: files\n"
    return [
        ("/etc/passwd", passwd.encode()),
        ("/etc/group", group.encode()),
        ("/etc/hosts", hosts.encode()),
        ("/etc/hostname", f"{hostname}\n".encode()),
        ("/etc/nsswitch.conf", nsswitch.encode()),
        ("/etc/resolv.conf", b""),
    ]


# --- building (in init, in the order of the module docstring) ----------------------------
def make_private_in_child() -> None:
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)


_KIND_CHECKS = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "device": stat.S_ISCHR}


def open_sources(sources: Sequence[tuple[str, str]]) -> list[int]:
    """O_PATH fds of the planned sources: no symlink followed, each of its planned kind."""
    fds: list[int] = []
    resolve = _linux.RESOLVE_NO_SYMLINKS | _linux.RESOLVE_NO_MAGICLINKS
    try:
        for path, kind in sources:
            fd = _linux.openat2(_linux.AT_FDCWD, path, os.O_PATH | os.O_CLOEXEC, resolve)
            fds.append(fd)
            if not _KIND_CHECKS[kind](os.fstat(fd).st_mode):
                raise _linux.SyscallError(20, "fstat", f"{path!r} is no longer a {kind}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def open_sources_from_parent(
    pid: int, sources: Sequence[tuple[str, str]], idmapped: Sequence[Bind] = (), userns_fd: int = -1
) -> tuple[list[int], list[int]]:
    """As root: step into the sandbox's new mount namespace (a copy of the host's, still
    unchanged) just long enough to open the sources with root's own permissions, and to make
    a detached idmapped copy of each of the ``idmapped`` binds' sources (``idmapped_tree``).

    The fds must refer to mounts of that namespace: open_tree/mount refuse to clone a
    mount of another namespace, and the sandbox side has no host privileges to open them
    (nor, for an idmapped mount, the privilege over the host's filesystem it needs).
    """
    own_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    target = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    trees: list[int] = []
    try:
        _linux.setns(target, _linux.CLONE_NEWNS)
        try:
            fds = open_sources(sources)
            try:
                by_path = dict(zip((path for path, _ in sources), fds, strict=True))
                for bind in idmapped:
                    trees.append(idmapped_tree(bind, by_path[bind.source], userns_fd))
            except BaseException:
                for fd in fds + trees:
                    os.close(fd)
                raise
            return fds, trees
        finally:
            _linux.setns(own_ns, _linux.CLONE_NEWNS)
            os.fchdir(cwd)
    finally:
        for fd in (own_ns, cwd, target):
            os.close(fd)


def idmapped_tree(bind: Bind, source_fd: int, userns_fd: int) -> int:
    """A detached copy of a writable bind's source, idmapped through ``userns_fd`` (as root:
    ``_userns.idmap_namespace``), nosuid and nodev; init attaches it as it is. A filesystem
    that cannot be idmapped is an error that says so: never a bind without the idmap."""
    tree = _linux.open_tree(source_fd, "", _linux.OPEN_TREE_CLONE | _linux.AT_RECURSIVE | _linux.AT_EMPTY_PATH)
    try:
        attrs = _linux.MOUNT_ATTR_IDMAP | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV
        try:
            _linux.mount_setattr(tree, "", _linux.AT_EMPTY_PATH | _linux.AT_RECURSIVE, attrs, userns_fd=userns_fd)
        except _linux.SyscallError as exc:  # the remedy (_host.remedy_for) says what to do
            raise _linux.SyscallError(
                exc.errno or errno.EINVAL, "mount_setattr", f"{bind.source!r}, MOUNT_ATTR_IDMAP"
            ) from None
    except BaseException:
        os.close(tree)
        raise
    return tree


def enter_staging_in_child() -> None:
    _linux.mount("tmpfs", STAGING, "tmpfs", _NOSUID_NODEV, "mode=0755,size=4m,nr_inodes=4096")
    os.mkdir(STAGING + OLD_ROOT, 0o700)
    _linux.pivot_root(STAGING, STAGING + OLD_ROOT)
    os.chdir("/")


def create_skeleton_in_child(plan: RootPlan) -> None:
    for path in plan.dirs:
        os.makedirs(path, 0o755, exist_ok=True)
    for path, points_to in plan.links:
        os.symlink(points_to, path)
    for path, content in plan.files:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)


def bind_in_child(bind: Bind, source_fd: int, attrs: int | None = None) -> None:
    """Clone the source's mount tree, set its attributes while detached, attach it."""
    tree = clone_in_child(bind, source_fd, attrs)
    try:
        attach_in_child(bind, tree)
    finally:
        os.close(tree)


def clone_in_child(bind: Bind, source_fd: int, attrs: int | None = None) -> int:
    """A detached copy of the source's mount tree, already read-only (unless writable)."""
    if attrs is None:
        attrs = _RO_ATTRS if not bind.writable else _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV
    tree = _linux.open_tree(source_fd, "", _linux.OPEN_TREE_CLONE | _linux.AT_RECURSIVE | _linux.AT_EMPTY_PATH)
    try:
        _linux.mount_setattr(tree, "", _linux.AT_EMPTY_PATH | _linux.AT_RECURSIVE, attrs)
    except BaseException:
        os.close(tree)
        raise
    return tree


def attach_in_child(bind: Bind, tree: int) -> None:
    parent_fd, name = _mountpoint(bind.target, bind.is_dir)
    try:
        _linux.move_mount(tree, parent_fd, name)
    finally:
        os.close(parent_fd)


def mount_proc_in_child() -> None:
    _linux.mount("proc", "/proc", "proc", _NOSUID_NODEV | _linux.MS_NOEXEC)


def mask_proc_in_child(sources: dict[str, int]) -> None:
    for name in PROC_MASKED_FILES:
        if os.path.isfile(f"/proc/{name}"):
            bind_in_child(Bind("/dev/null", f"/proc/{name}", False, False), sources["/dev/null"])
    for name in PROC_MASKED_DIRS:
        if os.path.isdir(f"/proc/{name}"):
            _linux.mount("tmpfs", f"/proc/{name}", "tmpfs", _NOSUID_NODEV | _linux.MS_RDONLY, "size=4k,nr_inodes=1")
    for name in PROC_READONLY:
        path = f"/proc/{name}"
        if os.path.isdir(path):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                bind_in_child(Bind(path, path, False, True), fd, _RO_ATTRS | _linux.MOUNT_ATTR_NOEXEC)
            finally:
                os.close(fd)


def mount_dev_in_child(sources: dict[str, int]) -> None:
    flags = _linux.MS_NOSUID | _linux.MS_NOEXEC
    _linux.mount("tmpfs", "/dev", "tmpfs", flags, "mode=0755,size=64k,nr_inodes=64")
    device_attrs = _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NOEXEC  # no NODEV: they are devices
    for name in DEVICES:
        bind_in_child(Bind(f"/dev/{name}", f"/dev/{name}", True, False), sources[f"/dev/{name}"], device_attrs)
    for name, points_to in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(points_to, f"/dev/{name}")
    os.mkdir("/dev/pts", 0o755)
    _linux.mount("devpts", "/dev/pts", "devpts", flags, "newinstance,ptmxmode=0666,mode=0620")
    os.mkdir(_SHM, 0o755)
    _linux.mount("tmpfs", _SHM, "tmpfs", _NOSUID_NODEV | _linux.MS_NOEXEC, "mode=1777,size=64m")
    os.mkdir(_MQUEUE, 0o755)  # the sandbox's own ipc namespace's POSIX message queues, listed
    _linux.mount("mqueue", _MQUEUE, "mqueue", _NOSUID_NODEV | _linux.MS_NOEXEC)


def mount_scratch_in_child(plan: RootPlan) -> None:
    """/tmp and /workspace: each a tmpfs of the workspace size (inodes bounded too)."""
    size = plan.workspace_size
    inodes = max(1024, size // 4096)
    uid, gid = plan.workspace_owner
    _linux.mount("tmpfs", TMP, "tmpfs", _NOSUID_NODEV, f"mode=1777,size={size},nr_inodes={inodes}")
    _linux.mount(
        "tmpfs", WORKSPACE, "tmpfs", _NOSUID_NODEV, f"mode=0755,uid={uid},gid={gid},size={size},nr_inodes={inodes}"
    )


def detach_old_root_in_child() -> None:
    _linux.umount2(OLD_ROOT, _linux.MNT_DETACH)
    os.rmdir(OLD_ROOT)


def seal_in_child() -> None:
    for path in ("/dev", "/"):
        _linux.mount_setattr(_linux.AT_FDCWD, path, 0, _linux.MOUNT_ATTR_RDONLY)


def _mountpoint(target: str, is_dir: bool) -> tuple[int, str]:
    """Create target (and missing parents) without following symlinks; return
    (fd of its parent directory, final name)."""
    parts = target.strip("/").split("/")
    dir_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts[:-1]):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=dir_fd)
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                where = "/" + "/".join(parts[: i + 1])
                raise OSError(
                    exc.errno, f"{where} is a symlink or not a directory; mount targets must not cross symlinks"
                ) from exc
            os.close(dir_fd)
            dir_fd = next_fd
        name = parts[-1]
        try:  # an existing target is only looked at, never opened for writing
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise OSError(40, f"{target} is a symlink in the sandbox's tree; mount targets must not be symlinks")
        except FileNotFoundError:
            if is_dir:
                os.mkdir(name, 0o755, dir_fd=dir_fd)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(name, flags, 0o644, dir_fd=dir_fd))
        return dir_fd, name
    except BaseException:
        os.close(dir_fd)
        raise
