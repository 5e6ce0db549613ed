"""Serving one front-end (the embedding case): a supervisor forked from the spawner
speaks frames with NsSandbox over a socket pair.

Open, then requests until Close or EOF: Run (a command), Execute (Python code in the
session's kernel) and FileRequest (the workspace file API). A request nsbox refuses
(bad options, a path that leaves the workspace, a missing file) is answered with a Failed
frame and the session goes on; anything else ends it, and the sandbox dies with it.
"""

from __future__ import annotations

import signal
import socket

from ._channel import Channel
from ._errors import SandboxError, SecurityError, SetupError, SpecError
from ._fds import close_fds
from ._protocol import (
    MAX_FRAME_SESSION,
    Close,
    Done,
    Execute,
    Failed,
    FileRequest,
    Message,
    Open,
    Output,
    Ready,
    Run,
    RunCode,
    Signal,
    parse,
)
from ._setup import SETUP_TIMEOUT
from ._spec import SandboxSpec
from ._supervisor import SessionClosed, Supervisor


class _SessionEvents:
    """What the front-end says while a run or an execution is in progress."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def fileno(self) -> int:
        return self.channel.fileno()

    def read(self) -> list[int]:
        try:
            got = self.channel.read_packet()
        except EOFError:
            raise SessionClosed from None
        if got is None:
            return []
        close_fds(got[1])
        message = parse(got[0], Signal, Close)
        if isinstance(message, Signal):
            return [message.signum] if 0 < message.signum < signal.NSIG else []
        raise SessionClosed

    def output(self, stream: str, data: bytes) -> None:
        self.channel.queue(Output(stream, data))
        self.flush()

    def flush(self) -> bool:
        try:
            return self.channel.flush()
        except OSError:  # the front-end is gone
            raise SessionClosed from None


def serve_session(sock: socket.socket) -> None:
    """Serve one front-end until it closes the session; every failure is answered with a
    Failed frame before the session ends."""
    channel = Channel(sock, MAX_FRAME_SESSION)
    supervisor: Supervisor | None = None
    try:
        opened, fds = channel.recv(Open, timeout=SETUP_TIMEOUT)
        close_fds(fds)
        try:
            supervisor = Supervisor(SandboxSpec.from_dict(opened.spec))
            supervisor.start()
        except Exception as exc:
            channel.send(failure(exc))
            return
        channel.send(Ready())
        events = _SessionEvents(channel)
        while True:
            message, fds = channel.recv(Run, Execute, RunCode, FileRequest, Close, Signal)
            if isinstance(message, Close):
                close_fds(fds)
                return
            if isinstance(message, Signal):  # no run to forward it to
                close_fds(fds)
                continue
            try:
                reply = _serve(supervisor, message, fds, events)
            except (SpecError, SecurityError) as exc:
                channel.send(failure(exc))  # this request was refused; the session goes on
                continue
            except (SessionClosed, EOFError):
                raise
            except Exception as exc:
                channel.send(failure(exc))
                if isinstance(message, FileRequest) and isinstance(exc, OSError) and exc.errno:
                    continue  # e.g. no such file: the session goes on
                return
            channel.send(reply)
    except (EOFError, SessionClosed, BrokenPipeError, ConnectionResetError, TimeoutError):
        return
    finally:
        if supervisor is not None:
            supervisor.close()
        channel.close()


def _serve(supervisor: Supervisor, message: Message, fds: list[int], events: _SessionEvents) -> Message:
    if isinstance(message, Run):
        result = supervisor.run(message, fds, events)
        return Done(result.to_dict(binary="omit"), result.stdout, result.stderr)
    close_fds(fds)
    if isinstance(message, RunCode):
        result = supervisor.run_code(message, events)
        return Done(result.to_dict(binary="omit"), result.stdout, result.stderr)
    if isinstance(message, Execute):
        executed = supervisor.execute(message, events)
        return Done(executed.result.to_dict(output=False), executed.stdout, executed.stderr)
    if isinstance(message, FileRequest):
        return supervisor.file_op(message)
    raise SandboxError(f"unexpected request {message.TYPE!r}")


def failure(exc: Exception) -> Failed:
    """An exception as the Failed frame the front-end turns back into it."""
    if isinstance(exc, SpecError):
        return Failed("spec", {"options": list(exc.options), "message": exc.message})
    if isinstance(exc, SecurityError):
        return Failed("security", {"message": str(exc)})
    if isinstance(exc, SetupError):
        return Failed("setup", exc.to_dict())
    if isinstance(exc, SandboxError):
        return Failed("sandbox", {"message": str(exc)})
    if isinstance(exc, OSError) and exc.errno:
        return Failed("os", {"errno": exc.errno, "message": exc.strerror or "", "path": str(exc.filename or "")})
    return Failed("sandbox", {"message": f"internal error in the supervisor: {type(exc).__name__}: {exc}"})
