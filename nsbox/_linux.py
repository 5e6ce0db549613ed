"""The one module that calls libc through ctypes.

Python 3.11 has no ``os.unshare``/``os.setns`` and no binding at all for the mount
API, so every such call goes through here. Each wrapper raises :class:`OSError`
with the call's name and arguments in the message and ``errno`` set, so that the
callers can turn it into a :class:`~nsbox._errors.SetupError` without guessing.

Syscall numbers from 428 up (the new mount API, ``pidfd_*``, ``close_range``,
``mount_setattr``) are the same on every architecture; the older ones are looked
up per machine in ``_SYSCALLS``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

# clone(2)/unshare(2) flags, <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags, <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

# open_tree(2) / move_mount(2) / mount_setattr(2), <linux/mount.h>
OPEN_TREE_CLONE = 0x1
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x00100000

# prctl(2) options that python-prctl does not wrap
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# openat2(2), <linux/openat2.h>
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_KEYCTL_JOIN_SESSION_KEYRING = 1

_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "keyctl": 250, "rt_sigaction": 13, "seccomp": 317, "clone": 56},
    "aarch64": {"pivot_root": 41, "keyctl": 219, "rt_sigaction": 134, "seccomp": 277, "clone": 220},
}
_NSIG = 64
_SECCOMP_SET_MODE_FILTER = 1
_OPEN_TREE = 428
_MOVE_MOUNT = 429
_OPENAT2 = 437
_MOUNT_SETATTR = 442


class _OpenHow(ctypes.Structure):
    """struct open_how, <linux/openat2.h>."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    """struct sock_fprog, <linux/filter.h>: a BPF program of ``len`` 8-byte instructions."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _MountAttr(ctypes.Structure):
    """struct mount_attr, <linux/mount.h> (MOUNT_ATTR_SIZE_VER0 = 32)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


# The C library this interpreter runs on, by its glibc name (ctypes.util.find_library would
# cost ~10 ms of imports and a subprocess on every start); None is the main program, whose
# symbols include libc's on any libc (musl names it differently).
try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = ctypes.CDLL(None, use_errno=True)
# Without argtypes ctypes passes Python ints as C int, which truncates the 64-bit
# flag words of mount(2) (see ../shared/notes/perf-facts.md).
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.setfsgid.argtypes = [ctypes.c_uint]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.syscall.restype = ctypes.c_long
# The same library through PyDLL, whose calls keep the GIL: for clone(2), which must copy
# this process exactly as os.fork does, between the interpreter's own fork steps.
_libc_holding_gil = ctypes.PyDLL(_libc._name, use_errno=True)
_libc_holding_gil.syscall.restype = ctypes.c_long
_SIGCHLD = 17


class SyscallError(OSError):
    """An OSError that remembers the call and its arguments, for SetupError."""

    def __init__(self, err: int, call: str, call_args: str) -> None:
        super().__init__(err, f"{call}({call_args}): {os.strerror(err)}")
        self.call = call
        self.call_args = call_args


def _fail(call: str, *args: object) -> SyscallError:
    return SyscallError(ctypes.get_errno(), call, ", ".join(repr(a) for a in args))


def _check(result: int, call: str, *args: object) -> int:
    if result < 0:
        raise _fail(call, *args)
    return result


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


#: Read once, here: the payload looks syscall numbers up after its first filter is loaded,
#: and a policy may refuse uname.
_MACHINE = os.uname().machine


def _syscall_number(name: str) -> int:
    try:
        return _SYSCALLS[_MACHINE][name]
    except KeyError:
        raise SyscallError(38, name, f"no syscall number known for machine {_MACHINE!r}") from None


def fork_into(flags: int) -> int:
    """fork(2), with the child born in the new namespaces ``flags`` names (clone(2) with no
    stack of its own, which is what fork is): no moment in which it is a copy of us outside
    them, and nothing to wait for before its id maps can be written. The interpreter's fork
    steps run around it, as os.fork runs them; the caller must be single-threaded (glibc's
    own fork handlers do not run: no other thread may hold a lock of its)."""
    nr = _syscall_number("clone")
    zero = ctypes.c_ulong(0)
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_holding_gil.syscall(ctypes.c_long(nr), ctypes.c_ulong(flags | _SIGCHLD), zero, zero, zero, zero)
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise SyscallError(err, "clone", hex(flags))
    return int(pid)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare", hex(flags))


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns", fd, hex(nstype))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
        "mount",
        source,
        target,
        fstype,
        hex(flags),
        data,
    )


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), "umount2", target, flags)


def exchange_paths(first: str, second: str) -> None:
    """Swaps two paths in one step (renameat2 RENAME_EXCHANGE): neither is ever missing."""
    res = _libc.renameat2(_AT_FDCWD, _b(first), _AT_FDCWD, _b(second), _RENAME_EXCHANGE)
    _check(res, "renameat2", first, second, "RENAME_EXCHANGE")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _syscall_number("pivot_root")
    _check(_libc.syscall(nr, _b(new_root), _b(put_old)), "pivot_root", new_root, put_old)


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """A detached copy of the mount tree at dirfd/path (OPEN_TREE_CLONE): an fd."""
    fd = _libc.syscall(_OPEN_TREE, ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags))
    return _check(fd, "open_tree", dirfd, path, hex(flags))


def move_mount(from_fd: int, to_dirfd: int, to_path: str, flags: int = MOVE_MOUNT_F_EMPTY_PATH) -> None:
    """Attach the detached tree from_fd at to_dirfd/to_path (a final symlink is not followed)."""
    res = _libc.syscall(
        _MOVE_MOUNT,
        ctypes.c_int(from_fd),
        b"",
        ctypes.c_int(to_dirfd),
        _b(to_path),
        ctypes.c_uint(flags),
    )
    _check(res, "move_mount", from_fd, to_dirfd, to_path, hex(flags))


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, userns_fd: int = 0) -> None:
    """Set mount attributes; with AT_RECURSIVE on every mount below path too. ``userns_fd``:
    the user namespace whose maps an idmapped mount (MOUNT_ATTR_IDMAP) applies."""
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd)
    res = _libc.syscall(
        _MOUNT_SETATTR,
        ctypes.c_int(dirfd),
        _b(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(res, "mount_setattr", dirfd, path, hex(flags), hex(attr_set))


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """open with resolution restrictions (RESOLVE_*): an fd, or SyscallError."""
    how = _OpenHow(flags, mode, resolve)
    fd = _libc.syscall(_OPENAT2, ctypes.c_int(dirfd), _b(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(fd, "openat2", path, hex(flags), hex(resolve))


def join_new_session_keyring() -> None:
    """A new, empty session keyring: the one a fork inherits would let the sandbox read
    the caller's keys (keyrings(7); runc does the same)."""
    nr = _syscall_number("keyctl")
    _check(_libc.syscall(nr, ctypes.c_int(_KEYCTL_JOIN_SESSION_KEYRING), None), "keyctl", "JOIN_SESSION_KEYRING")


def set_cmdline(title: str) -> None:
    """Overwrite this process's argv area, which /proc/PID/cmdline shows, with ``title``.

    The area's bounds come from /proc/self/stat (arg_start, arg_end; proc(5)); a fork
    inherits the caller's command line, which can hold host paths and secrets.
    """
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()  # fields from 3 (state) on
    start, end = int(fields[48 - 3]), int(fields[49 - 3])
    data = title.encode()[: max(0, end - start - 1)]
    ctypes.memset(start, 0, end - start)
    ctypes.memmove(start, data, len(data))


def reset_all_signals() -> None:
    """Every signal (but SIGKILL and SIGSTOP) to its default action, with rt_sigaction
    directly: Python and glibc refuse 32 and 33, which glibc reserves for itself, yet an
    ignored one survives execve into programs that use them (musl, Go)."""
    nr = _syscall_number("rt_sigaction")
    default = (ctypes.c_ulong * 4)()  # struct kernel_sigaction: SIG_DFL, no flags, no mask
    for sig in range(1, _NSIG + 1):
        if sig not in (9, 19):  # SIGKILL, SIGSTOP
            _check(_libc.syscall(nr, ctypes.c_int(sig), default, None, ctypes.c_size_t(8)), "rt_sigaction", sig)


# posix_spawn(3), <spawn.h>: glibc's attribute flags; the opaque structures are sized
# generously (glibc's are 80 and 336 bytes on 64-bit machines) and set up by their _init.
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80
_SPAWN_STRUCT = 1024
_SIGSET_BYTES = 128  #: glibc's sigset_t: 1024 bits


def spawn(path: str, argv: list[str], env: dict[str, str], stdio: list[int]) -> int:
    """posix_spawn ``path`` in a session of its own, ``stdio`` as fds 0, 1 and 2, every
    signal at its default action and none blocked; the child's pid, or OSError with the
    errno of its execve. Through ctypes rather than os.posix_spawn: glibc's sigaddset
    refuses 32 and 33, so Python cannot ask for those to be reset, and without that glibc
    leaves them ignored in the child (they would stay ignored in a musl or Go program)."""
    actions = ctypes.create_string_buffer(_SPAWN_STRUCT)
    attr = ctypes.create_string_buffer(_SPAWN_STRUCT)
    every_signal = ctypes.create_string_buffer(b"\xff" * (_NSIG // 8), _SIGSET_BYTES)  # bits of 1.._NSIG
    no_signal = ctypes.create_string_buffer(_SIGSET_BYTES)
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*(os.fsencode(a) for a in argv), None)
    c_env = (ctypes.c_char_p * (len(env) + 1))(*(os.fsencode(f"{k}={v}") for k, v in env.items()), None)
    pid = ctypes.c_int()
    _returned(_libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
    try:
        for target, fd in enumerate(stdio):
            _returned(_libc.posix_spawn_file_actions_adddup2(actions, fd, target), "posix_spawn_file_actions_adddup2")
        _returned(_libc.posix_spawnattr_init(attr), "posix_spawnattr_init")
        try:
            flags = _POSIX_SPAWN_SETSIGDEF | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSID
            _returned(_libc.posix_spawnattr_setflags(attr, ctypes.c_short(flags)), "posix_spawnattr_setflags")
            _returned(_libc.posix_spawnattr_setsigdefault(attr, every_signal), "posix_spawnattr_setsigdefault")
            _returned(_libc.posix_spawnattr_setsigmask(attr, no_signal), "posix_spawnattr_setsigmask")
            err = _libc.posix_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr, c_argv, c_env)
        finally:
            _libc.posix_spawnattr_destroy(attr)
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)
    if err:
        raise OSError(err, os.strerror(err), path)  # the errno of the child's execve
    return pid.value


def _returned(err: int, call: str) -> None:
    """For the calls that return an errno instead of setting it."""
    if err:
        raise SyscallError(err, call, "")


def load_seccomp_filter(bpf: bytes) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, 0, prog): needs no_new_privs (or CAP_SYS_ADMIN)."""
    if not bpf or len(bpf) % 8:
        raise SyscallError(22, "seccomp", "a BPF program is a non-empty list of 8-byte instructions")
    program = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(program, ctypes.c_void_p))
    nr = _syscall_number("seccomp")
    _check(_libc.syscall(nr, ctypes.c_uint(_SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0), ctypes.byref(prog)), "seccomp")


@contextlib.contextmanager
def filesystem_ids(uid: int, gid: int) -> Iterator[None]:
    """Act on files as ``uid``/``gid`` (setfsuid(2)): files are created as theirs and access
    is checked as theirs (a non-zero fsuid also drops root's file capabilities). The
    ids are the calling thread's only (glibc does not broadcast setfsuid). Restored on leaving."""
    old_gid = _libc.setfsgid(gid)
    old_uid = _libc.setfsuid(uid)
    try:
        if _libc.setfsuid(0xFFFFFFFF) != uid or _libc.setfsgid(0xFFFFFFFF) != gid:  # -1: query only
            raise SyscallError(errno.EPERM, "setfsuid", f"{uid}, {gid}")
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname", name)


def clear_ambient_caps() -> None:
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl", "PR_CAP_AMBIENT_CLEAR_ALL")
