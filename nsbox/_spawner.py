"""The spawner: one fresh single-threaded helper per embedding process (a zygote).

The caller's interpreter may run threads or an event loop, so it is never forked into
namespaces. Instead, on first use, ``Spawner.get()`` starts ``python -I`` running
``main()`` below, which imports everything a supervisor needs once; each new sandbox's
supervisor is then a fork of that helper (about a millisecond), handed the far end of
a socket pair that becomes its session with the front-end.

The helper leaves when the front-end's end of its socket closes (the front-end process
exited); each supervisor leaves when its session socket closes. Neither depends on
signals to find out.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess  # nosec B404  # starts our own helper: fixed argv, no shell
import sys
import threading

from . import _supervisor
from ._channel import Channel, close_fds, socketpair
from ._protocol import Spawn, Spawned

_MAX_FRAME = 4096
SPAWN_TIMEOUT = 30.0


def main(fd: int) -> None:
    """The helper's loop (runs in the helper process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller's Ctrl-C is the caller's business
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped automatically
    channel = Channel(socket.socket(fileno=fd), _MAX_FRAME)
    while True:
        try:
            _, fds = channel.recv(Spawn)
        except EOFError:
            return
        if len(fds) != 1:
            close_fds(fds)
            continue
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor waits for its own children
            channel.close()
            try:
                _supervisor.serve_session(socket.socket(fileno=fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])
        channel.send(Spawned(pid))


class Spawner:
    """The front-end's handle on its helper; one per process, shared by threads."""

    _lock = threading.Lock()
    _instance: Spawner | None = None

    def __init__(self) -> None:
        ours, theirs = socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        boot = (
            f"import sys; sys.path.insert(0, {package_root!r}); "
            f"from nsbox._spawner import main; main({theirs.fileno()})"
        )
        self.process = subprocess.Popen(  # nosec B603  # our own interpreter and code, no shell
            [sys.executable, "-I", "-c", boot],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        self.pid = os.getpid()
        self.channel = Channel(ours, _MAX_FRAME)
        atexit.register(self.shutdown)

    @classmethod
    def get(cls) -> Spawner:
        with cls._lock:
            current = cls._instance
            if current is None or current.pid != os.getpid() or current.process.poll() is not None:
                cls._instance = current = cls()
            return current

    def spawn(self) -> tuple[socket.socket, int]:
        """A new supervisor: (our end of its session socket, its pid)."""
        ours, theirs = socketpair()
        try:
            with self._lock:
                self.channel.send(Spawn(), [theirs.fileno()])
                spawned, fds = self.channel.recv(Spawned, timeout=SPAWN_TIMEOUT)
            close_fds(fds)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours, spawned.pid

    def shutdown(self) -> None:
        if self.pid != os.getpid():
            return
        self.channel.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
