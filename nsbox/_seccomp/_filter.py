"""Compile a policy into BPF with libseccomp (pyseccomp), in the supervisor, before it forks.

Two filters, both loaded by the payload as its last step before execve:

1. the *allowlist*: the default action is ``unknown_errno``; the groups of ``_policy`` are
   allowed or refused; ``clone``, ``personality``, ``socket`` and ``socketpair`` are allowed
   with some arguments only (anything else falls to the default action).
2. the *argument refusals*: default ALLOW, and an errno for argument patterns the
   allowlist cannot refuse on its own (libseccomp lets an unconditional rule for a syscall
   win over its conditional ones): TIOCSTI/TIOCLINUX; a mode with the set-user-ID or
   set-group-ID bit in the calls that create a file or change its mode (EPERM: a file the
   sandbox writes into a writable bind is a file of the host, and must never become a
   set-id program there: ``openat2``, whose mode a filter cannot read, is not implemented);
   and, to give a better errno than ENOSYS, clone with a namespace flag (EPERM) and socket
   families nsbox refuses (EAFNOSUPPORT). It only ever refuses what the first refuses too,
   or narrows ``ioctl`` and the mode calls.

The kernel runs every filter and keeps the strictest answer (seccomp(2)), so the pair is
as strict as the union of their refusals.

Other ABIs of this machine (i386 through ``int 0x80``, x32) kill the process: the filters
are for the native architecture only, and libseccomp's architecture check comes first.
"""

from __future__ import annotations

import errno
import functools
import os

import pyseccomp as sc

from .._errors import SpecError
from .._spec import Seccomp
from .._values import option_name
from ._policy import ALLOWED, CONDITIONAL, NOT_IMPLEMENTED, REFUSED

LOW32 = 0xFFFFFFFF
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (CLONE_NEWTIME only exists for clone3).
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
S_ISUID, S_ISGID = 0o4000, 0o2000
#: The calls that take a file's mode, and which argument holds it.
MODE_ARGUMENTS = (
    ("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("open", 2), ("openat", 3), ("creat", 1),
    ("mkdir", 1), ("mkdirat", 2), ("mknod", 1), ("mknodat", 2),
)  # fmt: skip
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # PER_LINUX, PER_LINUX32, UNAME26 (+32), query
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_MAX = 1, 2, 10, 16, 46
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_PACKET, SOCK_TYPE_MASK = 1, 2, 3, 10, 0xF
IPPROTO_TCP, IPPROTO_UDP, NETLINK_ROUTE = 6, 17, 0
#: (type, protocol) pairs allowed for AF_INET and AF_INET6: TCP and UDP, by default protocol or by name.
INET_SOCKETS = ((SOCK_STREAM, 0), (SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, 0), (SOCK_DGRAM, IPPROTO_UDP))


def _low32(arg: int, value: int) -> sc.Arg:
    return sc.Arg(arg, sc.MASKED_EQ, LOW32, value)


def compile_now(policy: Seccomp) -> tuple[bytes, ...]:
    """The BPF programs of a confined policy, in load order (``_cache.compile_filters`` is
    the entry point). Raises SpecError for a name that is no syscall of this machine."""
    unknown = [n for n in (*policy.allow, *policy.refuse) if _number(n) is None]
    if unknown:
        raise SpecError(option_name("seccomp"), f"not syscalls of this machine: {', '.join(unknown)}")
    refuse_errno = getattr(errno, policy.refuse_errno)
    overridden = set(policy.allow) | set(policy.refuse)
    return (
        _export(_allowlist(policy, refuse_errno, overridden)),
        _export(_argument_refusals(refuse_errno, overridden)),
    )


def _allowlist(policy: Seccomp, refuse_errno: int, overridden: set[str]) -> sc.SyscallFilter:
    default = sc.ERRNO(getattr(errno, policy.unknown_errno))
    filt = _new_filter(default)
    plain = [(sc.ALLOW, g.syscalls) for g in ALLOWED] + [(sc.ERRNO(refuse_errno), g.syscalls) for g in REFUSED]
    plain.append((sc.ERRNO(errno.ENOSYS), NOT_IMPLEMENTED.syscalls))
    for action, names in plain:
        if action != default:  # libseccomp refuses a rule that repeats the default action
            for name in names:
                if name not in overridden:
                    filt.add_rule(action, name)
    conditional = {n for g in CONDITIONAL for n in g.syscalls}
    if "clone" not in overridden:
        namespace_mask = functools.reduce(lambda a, b: a | b, CLONE_NAMESPACE_FLAGS)
        filt.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, namespace_mask, 0))
    if "ioctl" not in overridden:
        filt.add_rule(sc.ALLOW, "ioctl")  # narrowed by the argument refusals
    if "personality" not in overridden:
        for value in PERSONALITIES:
            filt.add_rule(sc.ALLOW, "personality", _low32(0, value))
    if "socket" not in overridden:
        filt.add_rule(sc.ALLOW, "socket", _low32(0, AF_UNIX))
        for family in (AF_INET, AF_INET6):
            for sock_type, protocol in INET_SOCKETS:
                filt.add_rule(
                    sc.ALLOW,
                    "socket",
                    _low32(0, family),
                    sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, sock_type),  # the rest are SOCK_NONBLOCK/CLOEXEC
                    _low32(2, protocol),
                )
        filt.add_rule(sc.ALLOW, "socket", _low32(0, AF_NETLINK), _low32(2, NETLINK_ROUTE))
    if "socketpair" not in overridden:
        filt.add_rule(sc.ALLOW, "socketpair", _low32(0, AF_UNIX))
    for name in policy.allow:
        filt.add_rule(sc.ALLOW, name)
    if sc.ERRNO(refuse_errno) != default:
        for name in policy.refuse:
            filt.add_rule(sc.ERRNO(refuse_errno), name)
    assert conditional == {"clone", "ioctl", "personality", "socket", "socketpair"}  # nosec B101  # table and code agree
    return filt


def _argument_refusals(refuse_errno: int, overridden: set[str]) -> sc.SyscallFilter:
    filt = _new_filter(sc.ALLOW)
    if "clone" not in overridden:
        for flag in CLONE_NAMESPACE_FLAGS:
            filt.add_rule(sc.ERRNO(refuse_errno), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    if "ioctl" not in overridden:
        for request in (TIOCSTI, TIOCLINUX):
            filt.add_rule(sc.ERRNO(refuse_errno), "ioctl", _low32(1, request))
    for name, argument in MODE_ARGUMENTS:
        if name not in overridden and _number(name) is not None:
            for bit in (S_ISUID, S_ISGID):
                filt.add_rule(sc.ERRNO(errno.EPERM), name, sc.Arg(argument, sc.MASKED_EQ, bit, bit))
    if "socket" not in overridden:
        for family in set(range(AF_MAX)) - {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK}:
            filt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", _low32(0, family))
        filt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.GE, AF_MAX))  # high bits set, too
        for family in (AF_INET, AF_INET6):
            for sock_type in (SOCK_RAW, SOCK_PACKET):  # what the kernel answers without CAP_NET_RAW
                filt.add_rule(
                    sc.ERRNO(errno.EPERM),
                    "socket",
                    _low32(0, family),
                    sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, sock_type),
                )
    return filt


def _new_filter(default_action: int) -> sc.SyscallFilter:
    filt = sc.SyscallFilter(default_action)
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # another ABI: end the process, no errno to retry on
    filt.set_attr(sc.Attr.CTL_NNP, 0)  # the payload sets no_new_privs itself, just before loading
    return filt


def _export(filt: sc.SyscallFilter) -> bytes:
    fd = os.memfd_create("nsbox-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            filt.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _number(name: str) -> int | None:
    try:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
    except (OSError, ValueError):
        return None
    return number if number >= 0 else None
