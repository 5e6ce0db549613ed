"""The network namespace. With the default policy it holds only ``lo``, brought up here;
``socket_in_namespace`` makes the sockets that the egress proxy and the routed mode's
resolver serve the sandbox from (bound inside it, owned by a process outside);
``run_in_namespace`` runs a step inside another network namespace from a child.

Bringing one interface up is a single ioctl (netdevice(7)); pyroute2 costs ~180 ms to
import, so it is loaded only by the network policies that build veth pairs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable

from . import _linux

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, padding to 40 bytes


def loopback_up_in_child() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        (_, flags) = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def socket_in_namespace(netns_fd: int, userns_fd: int | None, kind: int, address: tuple[str, int]) -> socket.socket:
    """An IPv4 socket of ``kind`` bound to ``address`` in the network namespace ``netns_fd``
    (entered through the user namespace ``userns_fd`` when rootless), listening if it is a
    stream: made by a short-lived child, so that the caller never has to come back from
    there (rootless, it could not), and used from outside by the process that asked."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            if userns_fd is not None:
                _linux.setns(userns_fd, _linux.CLONE_NEWUSER)
            _linux.setns(netns_fd, _linux.CLONE_NEWNET)
            made = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            made.bind(address)
            if kind == socket.SOCK_STREAM:
                made.listen(128)
            socket.send_fds(theirs, [b"s"], [made.fileno()])
            code = 0
        except OSError as exc:
            with contextlib.suppress(OSError):
                theirs.send(f"{getattr(exc, 'call', 'bind')}: {exc}".encode()[:400])
        finally:
            os._exit(code)
    theirs.close()
    try:
        data, fds, _, _ = socket.recv_fds(ours, 512, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if data != b"s" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EIO, data.decode(errors="replace") or "the socket could not be made")
    return socket.socket(fileno=fds[0])


def write_sysctl(name: str, value: str) -> None:
    """A sysctl (``net.ipv4.ip_forward``) of this process's network namespace: /proc/sys/net
    shows the namespace of the process that opens it."""
    with open("/proc/sys/" + name.replace(".", "/"), "w", encoding="ascii") as sysctl:
        sysctl.write(value)


def run_in_namespace(netns_fd: int, step: Callable[[], object], what: str) -> None:
    """``step()`` run by a child in the network namespace ``netns_fd`` (so that the caller
    stays where it is); its failure raised here as OSError, naming ``what``."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            _linux.setns(netns_fd, _linux.CLONE_NEWNET)
            step()
            code = 0
        except BaseException as exc:  # reported to the parent, whole
            with contextlib.suppress(OSError):
                os.write(write_fd, f"{type(exc).__name__}: {exc}".encode()[:1000])
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        message = os.read(read_fd, 1000)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(errno.EIO, f"{what}: {message.decode(errors='replace') or 'failed'}")
