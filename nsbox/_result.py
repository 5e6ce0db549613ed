"""What a run returns: a :class:`RunResult` with a :class:`Status`, never an exception.

Exit codes follow the shells' habits so that ``nsbox exec`` composes in scripts:
128+N for a payload killed by signal N, 127 for a program that does not exist, 126
for one that cannot be executed, 124 for a timeout (as ``timeout(1)``), 125 for
nsbox's own failures.
"""

from __future__ import annotations

import base64
import enum
import errno as _errno
import os
import signal as _signal
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import RunFailed

EXIT_TIMEOUT = 124
EXIT_NSBOX_FAILURE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class Status(enum.StrEnum):
    """How a run ended."""

    OK = "ok"  #: exited with code 0
    EXIT = "exit"  #: exited with a non-zero code
    SIGNAL = "signal"  #: killed by a signal (exit_code is 128+N)
    TIMEOUT = "timeout"  #: killed at the wall-clock deadline
    ERROR = "error"  #: never ran (e.g. the program does not exist); ``error`` says why


@dataclass(frozen=True)
class RunResult:
    """The verdict of one run. ``returncode`` is an alias of ``exit_code``."""

    args: tuple[str, ...]
    status: Status
    exit_code: int
    wall_s: float
    signal: int | None = None
    error: str | None = None
    stdout: bytes | None = None
    stderr: bytes | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def returncode(self) -> int:
        return self.exit_code

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def check_returncode(self) -> None:
        """Raise :class:`RunFailed` unless the run ended with status ``ok``."""
        if not self.ok:
            raise RunFailed(self)

    # -- constructors from what the supervisor observed ----------------------------------
    @classmethod
    def from_wait_status(cls, args: tuple[str, ...], wait_status: int, wall_s: float, **extra: Any) -> RunResult:
        if os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            return cls(args, Status.SIGNAL, 128 + sig, wall_s, signal=sig, error=_signal_name(sig), **extra)
        code = os.WEXITSTATUS(wait_status)
        return cls(args, Status.OK if code == 0 else Status.EXIT, code, wall_s, **extra)

    @classmethod
    def exec_failed(cls, args: tuple[str, ...], err: int, stage: str, wall_s: float, **extra: Any) -> RunResult:
        name = _errno.errorcode.get(err, str(err))
        code = EXIT_NOT_FOUND if err in (_errno.ENOENT, _errno.ENOTDIR) else EXIT_CANNOT_EXECUTE
        message = f"{stage} {args[0] if args else ''!r} failed: {name} ({os.strerror(err)})"
        return cls(args, Status.ERROR, code, wall_s, error=message, **extra)

    @classmethod
    def timed_out(cls, args: tuple[str, ...], timeout: float, wall_s: float, **extra: Any) -> RunResult:
        return cls(
            args,
            Status.TIMEOUT,
            EXIT_TIMEOUT,
            wall_s,
            signal=int(_signal.SIGKILL),
            error=f"killed at the {timeout:g} s wall-clock deadline",
            **extra,
        )

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self, binary: Literal["text", "base64"] = "text") -> dict[str, Any]:
        """JSON-ready. ``text`` decodes output as UTF-8 (for reports), ``base64`` keeps bytes."""
        data: dict[str, Any] = {
            "args": list(self.args),
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "wall_s": round(self.wall_s, 6),
            "error": self.error,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        }
        for name in ("stdout", "stderr"):
            value: bytes | None = getattr(self, name)
            if value is None:
                data[name] = None
            elif binary == "base64":
                data[name] = base64.b64encode(value).decode("ascii")
            else:
                data[name] = value.decode("utf-8", "replace")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Inverse of ``to_dict(binary="base64")``."""
        return cls(
            args=tuple(str(a) for a in data["args"]),
            status=Status(data["status"]),
            exit_code=int(data["exit_code"]),
            wall_s=float(data["wall_s"]),
            signal=None if data.get("signal") is None else int(data["signal"]),
            error=None if data.get("error") is None else str(data["error"]),
            stdout=None if data.get("stdout") is None else base64.b64decode(data["stdout"]),
            stderr=None if data.get("stderr") is None else base64.b64decode(data["stderr"]),
            stdout_truncated=bool(data.get("stdout_truncated")),
            stderr_truncated=bool(data.get("stderr_truncated")),
        )


def _signal_name(sig: int) -> str:
    try:
        return f"killed by {_signal.Signals(sig).name}"
    except ValueError:
        return f"killed by signal {sig}"
