"""The guest programs' end of their socket to the supervisor (stdlib only).

Frames are a 4-byte big-endian length and UTF-8 JSON, as in ``nsbox._protocol``, on a
SOCK_SEQPACKET socket that is the guest's fd 0 when it starts: ``take_stdin`` moves it to
a close-on-exec fd of its own (nothing the guest starts inherits it) and puts /dev/null
on fd 0.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
PACKET = 64 * 1024  # as nsbox._channel.PACKET


class Wire:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, obj: dict[str, Any]) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        data = HEADER.pack(len(body)) + body
        for start in range(0, len(data), PACKET):  # a SOCK_SEQPACKET socket: one packet per send
            self.sock.send(data[start : start + PACKET])

    def recv(self) -> Any:
        """The next frame, or None at EOF (the supervisor closed the session). Fds that
        came with it are closed."""
        frame, fds = self.recv_with_fds()
        for fd in fds:
            os.close(fd)
        return frame

    def recv_with_fds(self) -> tuple[Any, list[int]]:
        """The next frame (None at EOF) and the fds that came with it (SCM_RIGHTS)."""
        fds: list[int] = []
        while len(self.buffer) < HEADER.size or len(self.buffer) < HEADER.size + self._length():
            chunk, more, _, _ = socket.recv_fds(self.sock, PACKET, 8)
            for fd in more:
                os.set_inheritable(fd, False)
            fds += more
            if not chunk:
                return None, fds
            self.buffer += chunk
        end = HEADER.size + self._length()
        body, self.buffer = self.buffer[HEADER.size : end], self.buffer[end:]
        return json.loads(body), fds

    def _length(self) -> int:
        length: int = HEADER.unpack_from(self.buffer)[0]
        if length > MAX_FRAME:
            raise SystemExit("frame too large")
        return length


def take_stdin() -> Wire:
    """The socket on fd 0, moved to a close-on-exec fd; fd 0 becomes /dev/null."""
    wire_fd = os.dup(0)  # close-on-exec
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return Wire(socket.socket(fileno=wire_fd))
