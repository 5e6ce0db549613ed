"""What the two ways out share: the egress proxy (``_proxy``, network ``allow``) and the
router (``_routed``, network ``routed``) are each a helper process the supervisor forks
(``fork_helper``), both refuse this host's own addresses and count events per second."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import signal
import time
from collections.abc import Callable

from ._netpolicy import IPAddress


def own_addresses() -> tuple[IPAddress, ...]:
    """This host's addresses (read in its own network namespace, before forking)."""
    found: list[IPAddress] = []
    with contextlib.suppress(OSError), open("/proc/net/fib_trie", encoding="ascii") as fib:
        last = None
        for line in fib:  # "|-- 10.0.2.15" then, for an address of ours, "/32 host LOCAL"
            text = line.strip()
            if text.startswith("|-- "):
                last = text[4:]
            elif text == "/32 host LOCAL" and last is not None:
                found.append(ipaddress.IPv4Address(last))
    with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as inet6:
        found += [ipaddress.IPv6Address(int(line.split()[0], 16)) for line in inet6]
    return tuple(dict.fromkeys(found))


class RateBucket:
    """Events (new connections, DNS queries) per second, with a burst of the same size."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


HELPER_TIMEOUT = 30.0  #: seconds a helper has to report ready


class HelperFailed(Exception):
    """The helper reported (or died) before it was ready: what it wrote, if anything."""

    def __init__(self, report: bytes) -> None:
        super().__init__(report.decode(errors="replace") or "it died")
        self.report = report


def fork_helper(uplink_path: str | None, main: Callable[[int | None, int], None]) -> tuple[int, int]:
    """Fork a way out's helper process: ``main(uplink_fd, ready_fd)`` runs in the child and
    writes ``ok`` to ``ready_fd`` once it serves (anything else is its failure report). The
    uplink namespace file is opened here, O_NONBLOCK: checked to be a network namespace file
    (NetworkPolicy), but a FIFO swapped in since must not hang us; setns refuses anything
    else. Returns the helper's pid and a pidfd of it; raises HelperFailed (reaped)."""
    uplink = os.open(uplink_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC) if uplink_path else None
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # the helper
            code = 1
            try:
                os.close(ready_r)
                main(uplink, ready_w)
                code = 0
            finally:
                os._exit(code)
        os.close(ready_w)
        ready_w = -1
        readable, _, _ = select.select([ready_r], [], [], HELPER_TIMEOUT)
        report = os.read(ready_r, 4096) if readable else b"it did not report ready in time"
        if not readable:
            os.kill(pid, signal.SIGKILL)  # ours, not yet reaped: the pid is still its
    finally:
        for fd in (ready_r, ready_w, uplink):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    if report != b"ok":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise HelperFailed(report)
    return pid, os.pidfd_open(pid)
