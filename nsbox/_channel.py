"""Frames over a unix SOCK_SEQPACKET socket, with file descriptors riding along.

A frame is split into packets of at most ``PACKET`` bytes; the fds travel with a
frame's first packet. Because a packet never holds parts of two frames, the fds of
every frame are known exactly (a byte stream cannot promise that). A channel made with
``accept_fds=False`` (the supervisor's end of init's channel) closes any fds it is sent
and treats them as a protocol violation. Received fds are close-on-exec.
"""

from __future__ import annotations

import array
import select
import socket
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from ._errors import ProtocolError
from ._fds import close_fds
from ._protocol import FrameDecoder, Message, encode, parse

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


class Channel:
    def __init__(self, sock: socket.socket, max_frame: int, *, accept_fds: bool = True) -> None:
        self.sock = sock
        self.accept_fds = accept_fds
        self._decoder = FrameDecoder(max_frame)
        self._frame_fds: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        close_fds(self._frame_fds)
        self._frame_fds = []
        self.sock.close()

    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        data = encode(message)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data[:PACKET]], ancillary)
        for start in range(PACKET, len(data), PACKET):
            self.sock.send(data[start : start + PACKET])

    def read_packet(self) -> tuple[dict[str, Any], list[int]] | None:
        """Read one packet; return a completed frame and its fds, or None if incomplete.

        Raises EOFError when the peer has closed (in the middle of a frame: ProtocolError).
        """
        try:
            data, ancillary, flags, _ = self._recvmsg()
        except ConnectionResetError:
            # The peer closed with a message of ours unread: unix(7) sockets say so once,
            # before what the peer sent earlier (its last words: a StepFailed, an Exited),
            # which is still queued, then end of file.
            data, ancillary, flags, _ = self._recvmsg()
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


def _unpack_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds += arr.tolist()
    return fds
