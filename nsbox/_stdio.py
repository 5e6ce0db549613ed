"""A run's stdin, stdout and stderr, as the supervisor wires them.

Modes (chosen by the front-end, see ``_protocol.Run``): an fd of the caller's, /dev/null,
a captured pipe, stderr merged into stdout, or stdin fed from bytes. Captured output is
untrusted and bounded: the first ``limit`` bytes of each stream are kept, the rest is
read, counted and dropped, so the payload never blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import stat

from ._channel import readable
from ._errors import ProtocolError, SpecError
from ._protocol import Run

_CHUNK = 65536
#: After the payload ended, at most this much is drained per stream: what it wrote before
#: exiting is in the pipe (at most its capacity, which a payload can raise to 1 MiB); a
#: process left behind must not keep the supervisor reading forever.
DRAIN_LIMIT = (1 << 20) + _CHUNK


class Capture:
    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def read(self) -> bool:
        """Read what is there; False at EOF."""
        try:
            chunk = os.read(self.fd, _CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        room = self.limit - len(self.data)
        self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))
        return True


def check_stdio_fd(name: str, fd: int) -> None:
    """A directory (or O_PATH) fd handed in as stdio would be a way into the host's
    filesystem through /proc/self/fd (the runc CVE-2024-21626 pattern): refused."""
    if stat.S_ISDIR(os.fstat(fd).st_mode) or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
        raise SpecError(name, "a directory or O_PATH file descriptor cannot be a sandbox's stdio")


class RunIO:
    """Owns the run's fds on the supervisor's side. ``child_fds`` go to init, then
    ``close_child_fds``; the loop calls ``fds``/``handle``; ``finish`` drains and closes."""

    def __init__(self, request: Run, received: list[int], limit: int, input_data: bytes = b"") -> None:
        self.child_fds: list[int] = []
        self._captures: dict[int, Capture] = {}
        self._by_name: dict[str, Capture] = {}
        self._input_fd: int | None = None
        self._input = memoryview(input_data)
        self._owned: list[int] = []  # everything we must close eventually
        received = list(received)
        self._owned += received
        try:
            for name, mode in (("stdin", request.stdin), ("stdout", request.stdout), ("stderr", request.stderr)):
                self.child_fds.append(self._child_end(name, mode, received, limit))
            if received:
                raise ProtocolError(f"{len(received)} file descriptor(s) more than the stdio modes name")
        except BaseException:
            self.close()
            raise

    def _child_end(self, name: str, mode: str, received: list[int], limit: int) -> int:
        if mode == "fd":
            if not received:
                raise ProtocolError(f"{name}: mode 'fd' but no file descriptor was sent")
            fd = received.pop(0)
            check_stdio_fd(name, fd)
            return fd
        if mode == "devnull":
            return self._own(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
        if mode == "capture" and name != "stdin":
            r, w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(r, False)
            self._own(r)
            self._captures[r] = self._by_name[name] = Capture(r, limit)
            return self._own(w)
        if mode == "stdout" and name == "stderr":
            return self.child_fds[1]
        if mode == "input" and name == "stdin":
            r, w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(w, False)
            self._input_fd = self._own(w)
            return self._own(r)
        raise ProtocolError(f"{name}: unknown stdio mode {mode!r}")

    def _own(self, fd: int) -> int:
        self._owned.append(fd)
        return fd

    def close_child_fds(self) -> None:
        """After init has its copies: only our ends stay open (EOF must be able to arrive)."""
        for fd in set(self.child_fds):
            self._close(fd)
        self.child_fds = []

    def register(self, poller: select.poll) -> None:
        for fd in self._captures:
            poller.register(fd, select.POLLIN)
        if self._input_fd is not None:
            if self._input:
                poller.register(self._input_fd, select.POLLOUT)
            else:
                self._close(self._input_fd)
                self._input_fd = None

    def handle(self, fd: int, poller: select.poll) -> bool:
        """Service fd if it is ours; True if it was."""
        capture = self._captures.get(fd)
        if capture is not None:
            if not capture.read():
                poller.unregister(fd)
                del self._captures[fd]
                self._close(fd)
            return True
        if fd == self._input_fd:
            try:
                written = os.write(fd, self._input[:_CHUNK])
            except BlockingIOError:
                return True
            except BrokenPipeError:  # the payload stopped reading: its choice
                written = len(self._input)
            self._input = self._input[written:]
            if not self._input:
                poller.unregister(fd)
                self._close(fd)
                self._input_fd = None
            return True
        return False

    def finish(self) -> None:
        """After the payload ended: take what is already in the pipes, then close all.
        (A background process may hold a pipe open; we do not wait for it.)"""
        for capture in self._captures.values():
            for _ in range(DRAIN_LIMIT // _CHUNK):
                if not (readable(capture.fd) and capture.read()):
                    break
        self.close()

    def captures(self) -> tuple[Capture | None, Capture | None]:
        """The captures of stdout and stderr (None where a stream is not captured)."""
        return self._by_name.get("stdout"), self._by_name.get("stderr")

    def output(self, name: str) -> tuple[bytes | None, bool]:
        capture = self._by_name.get(name)
        if capture is None:
            return None, False
        return bytes(capture.data), capture.dropped > 0

    def close(self) -> None:
        for fd in list(self._owned):
            self._close(fd)

    def _close(self, fd: int) -> None:
        if fd in self._owned:
            self._owned.remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
