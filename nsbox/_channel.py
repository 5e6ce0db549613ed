"""Frames over a unix SOCK_SEQPACKET socket, with file descriptors riding along.

A frame is split into packets of at most ``PACKET`` bytes; the fds travel with a
frame's first packet. Because a packet never holds parts of two frames, the fds of
every frame are known exactly (a byte stream cannot promise that). A channel made with
``accept_fds=False`` (the supervisor's end of init's channel) closes any fds it is sent
and treats them as a protocol violation. Received fds are close-on-exec.

The socket is non-blocking. ``send`` waits for room (until its deadline, if it has one);
``queue`` and ``flush`` let a poll loop send without ever blocking: the supervisor's loops
send to the processes of a sandbox that way, because a process that stops reading (stopped,
or busy) must never stall the supervisor past the call's deadline or its session's end.
"""

from __future__ import annotations

import array
import collections
import fcntl
import select
import socket
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from ._errors import ProtocolError
from ._fds import close_fds
from ._protocol import FrameDecoder, Message, encode_parts, parse

PACKET = 64 * 1024
MAX_FDS = 253  # SCM_MAX_FD
M = TypeVar("M", bound=Message)


def socketpair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def readable(fd: int, timeout: float = 0.0) -> bool:
    """Whether fd has data (or EOF) within timeout seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def writable(fd: int, timeout: float | None) -> bool:
    """Whether fd can take data (or has an error) within timeout seconds (None: forever)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(None if timeout is None else max(0, timeout) * 1000))


class _Outgoing:
    """One frame on its way out: its pieces, how far it got, and copies of its fds (closed
    once the first packet, which carries them, is sent)."""

    def __init__(self, parts: list[bytes], fds: list[int]) -> None:
        self.parts = collections.deque(memoryview(p) for p in parts)
        self.fds = fds

    def packet(self) -> list[memoryview]:
        """The next packet's pieces (not consumed until ``sent``)."""
        pieces, size = [], 0
        for part in self.parts:
            pieces.append(part[: PACKET - size])
            size += len(pieces[-1])
            if size == PACKET:
                break
        return pieces

    def sent(self, size: int) -> None:
        while size:
            take = min(size, len(self.parts[0]))
            size -= take
            self.parts[0] = self.parts[0][take:]
            if not self.parts[0]:
                self.parts.popleft()
        close_fds(self.fds)  # they rode with the first packet
        self.fds = []


class Channel:
    def __init__(self, sock: socket.socket, max_frame: int, *, accept_fds: bool = True) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.accept_fds = accept_fds
        self._decoder = FrameDecoder(max_frame)
        self._frame_fds: list[int] = []
        self._outgoing: collections.deque[_Outgoing] = collections.deque()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        close_fds(self._frame_fds)
        self._frame_fds = []
        for frame in self._outgoing:
            close_fds(frame.fds)
        self._outgoing.clear()
        self.sock.close()

    def send(self, message: Message, fds: Sequence[int] = (), *, deadline: float | None = None) -> None:
        """Send a whole frame, waiting for room until ``deadline`` (a time.monotonic()
        value; None: as long as it takes). TimeoutError if it passed: then the frame may be
        half sent, and the channel is of no further use."""
        self.queue(message, fds)
        while not self.flush():
            if not writable(self.fileno(), None if deadline is None else deadline - time.monotonic()):
                raise TimeoutError("the peer took no data in time")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("the peer took no data in time")

    def queue(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Queue a frame for ``flush``; the fds are duplicated (the caller may close its own).
        A frame of one packet, with nothing queued before it, goes at once if it can."""
        parts = encode_parts(message)
        if not self._outgoing and len(parts) == 1 and len(parts[0]) <= PACKET:
            try:
                self.sock.sendmsg(parts, _rights(fds))
                return
            except BlockingIOError:
                pass
        copies: list[int] = []
        try:
            for fd in fds:
                copies.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
            self._outgoing.append(_Outgoing(parts, copies))
        except BaseException:
            close_fds(copies)
            raise

    @property
    def pending(self) -> bool:
        """Frames queued and not wholly sent yet."""
        return bool(self._outgoing)

    def flush(self) -> bool:
        """Send what the socket takes now, without blocking; True when nothing is left.
        OSError (EPIPE...) if the peer is gone."""
        while self._outgoing:
            frame = self._outgoing[0]
            try:  # fds not sent yet go with the first packet
                size = self.sock.sendmsg(frame.packet(), _rights(frame.fds))
            except BlockingIOError:
                return False
            frame.sent(size)
            if not frame.parts:
                self._outgoing.popleft()
        return True

    def read_packet(self) -> tuple[dict[str, Any], list[int]] | None:
        """Read one packet; return a completed frame and its fds, or None if incomplete
        (or if there was nothing to read).

        Raises EOFError when the peer has closed (in the middle of a frame: ProtocolError).
        """
        try:
            data, ancillary, flags, _ = self._recvmsg()
        except BlockingIOError:
            return None
        except ConnectionResetError:
            # The peer closed with a message of ours unread: unix(7) sockets say so once,
            # before what the peer sent earlier (its last words: a StepFailed, an Exited),
            # which is still queued, then end of file.
            try:
                data, ancillary, flags, _ = self._recvmsg()
            except BlockingIOError:
                return None
        fds = _unpack_fds(ancillary)
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            close_fds(fds)
            raise ProtocolError("a packet or its file descriptors were truncated")
        if fds and (not self.accept_fds or self._decoder.in_frame):
            close_fds(fds)
            raise ProtocolError("file descriptors were sent where none are accepted")
        if not data:
            close_fds(fds)
            if self._decoder.in_frame:
                raise ProtocolError("peer closed the channel in the middle of a frame")
            raise EOFError
        self._frame_fds += fds
        frames = self._decoder.feed(data)
        if not frames:
            return None
        if len(frames) > 1 or self._decoder.in_frame:
            raise ProtocolError("a packet held more than one frame")
        frame_fds, self._frame_fds = self._frame_fds, []
        return frames[0], frame_fds

    def _recvmsg(self) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        return self.sock.recvmsg(PACKET, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)

    def recv(self, *expected: type[M], timeout: float | None = None) -> tuple[M, list[int]]:
        """Block for the next frame, validated as one of ``expected``.

        Raises TimeoutError, EOFError or ProtocolError. The caller owns the returned fds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not poller.poll(wait_ms):
                raise TimeoutError("no message from the peer in time")
            got = self.read_packet()
            if got is not None:
                obj, fds = got
                try:
                    return parse(obj, *expected), fds
                except ProtocolError:
                    close_fds(fds)
                    raise


def _rights(fds: Sequence[int]) -> list[tuple[int, int, array.array[int]]]:
    """The ancillary data that passes ``fds`` (SCM_RIGHTS), or none."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def _unpack_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds += arr.tolist()
    return fds
