"""What a run returns: a :class:`RunResult` with a :class:`Status`, never an exception.

Exit codes follow the shells' habits so that ``nsbox exec`` composes in scripts:
128+N for a payload killed by signal N, 127 for a program that does not exist, 126
for one that cannot be executed, 124 for a timeout (as ``timeout(1)``), 125 for
nsbox's own failures.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import errno as _errno
import os
import signal as _signal
from dataclasses import dataclass
from typing import Any, Literal

from ._display import DisplayItem
from ._errors import RunFailed

EXIT_TIMEOUT = 124
EXIT_NSBOX_FAILURE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class Status(enum.StrEnum):
    """How a run ended, most telling first when several apply (see ``RunResult.decide``)."""

    OK = "ok"  #: exited with code 0
    EXIT = "exit"  #: exited with a non-zero code
    SIGNAL = "signal"  #: killed by a signal (exit_code is 128+N)
    TIMEOUT = "timeout"  #: killed at the wall-clock deadline
    CPU_TIME = "cpu_time"  #: killed when its CPU time reached the limit
    OOM = "oom"  #: the kernel's OOM killer ended a process at the memory limit
    PIDS = "pids"  #: a fork or clone failed at the process limit
    OUTPUT_LIMIT = "output_limit"  #: exited 0, but output beyond the limit was dropped
    EXCEPTION = "exception"  #: execute_code: the code raised; ``error`` and ``traceback`` say what
    ERROR = "error"  #: never ran (e.g. the program does not exist), or nsbox failed; ``error`` says why


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
    cpu_s: float = 0.0
    memory_peak_bytes: int | None = None
    oom_killed: bool = False
    limits: str = ""  #: how memory/cpu/pids were enforced: cgroup v1, cgroup v2, cgroup v1+v2, rlimit-only
    seccomp: str = ""  #: the syscall filter: default, custom or unconfined (no filter: debugging only)
    #: run_code only: "warm" (forked from the sandbox's warm interpreter) or "cold" (a new warm
    #: interpreter was started first: the first program, or the one after a program left
    #: something the sweep could not remove)
    path: str | None = None

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
    def decide(
        cls,
        args: tuple[str, ...],
        wall_s: float,
        wait_status: int | None,
        *,
        exec_failure: tuple[int, str] | None = None,
        killed_for: tuple[str, float] | None = None,
        pids_hit: bool = False,
        **usage: Any,
    ) -> RunResult:
        """The verdict, by precedence: never ran (error) > oom > pids > cpu_time > timeout >
        signal > exit > output_limit > ok. ``killed_for`` is (why, the limit) when the
        supervisor killed the run; ``usage`` holds the measured fields and output."""
        if exec_failure is not None:
            return cls.exec_failed(args, exec_failure[0], exec_failure[1], wall_s, **usage)
        if killed_for is not None:
            base = cls.timed_out(args, killed_for[1], wall_s, **usage)
        elif wait_status is not None:
            base = cls.from_wait_status(args, wait_status, wall_s, **usage)
        else:
            raise ValueError("a run ends with a wait status, a kill or an exec failure")
        if usage.get("oom_killed"):
            status, error = Status.OOM, "a process was killed at the memory limit (OOM)"
        elif pids_hit:
            status, error = Status.PIDS, "a fork failed at the process limit"
        elif killed_for is not None and killed_for[0] == "cpu_time":
            status, error = Status.CPU_TIME, f"killed at the {killed_for[1]:g} s CPU-time limit"
        elif base.status is Status.OK and (usage.get("stdout_truncated") or usage.get("stderr_truncated")):
            status, error = Status.OUTPUT_LIMIT, "output beyond the limit was dropped"
        else:
            return base
        return dataclasses.replace(base, status=status, error=error)

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
    def to_dict(self, binary: Literal["text", "base64", "omit"] = "text") -> dict[str, Any]:
        """JSON-ready. ``text`` decodes output as UTF-8 (for reports), ``base64`` keeps bytes,
        ``omit`` leaves stdout and stderr out (they cross the wire as bytes, beside it)."""
        data: dict[str, Any] = {
            "args": list(self.args),
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "wall_s": round(self.wall_s, 6),
            "error": self.error,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "cpu_s": round(self.cpu_s, 6),
            "memory_peak_bytes": self.memory_peak_bytes,
            "oom_killed": self.oom_killed,
            "limits": self.limits,
            "seccomp": self.seccomp,
        }
        if self.path is not None:
            data["path"] = self.path
        for name in ("stdout", "stderr"):
            value: bytes | None = getattr(self, name)
            if binary == "omit":
                continue
            if value is None:
                data[name] = None
            elif binary == "base64":
                data[name] = base64.b64encode(value).decode("ascii")
            else:
                data[name] = value.decode("utf-8", "replace")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], output: tuple[bytes | None, bytes | None] | None = None) -> RunResult:
        """Inverse of ``to_dict(binary="base64")``, or of ``to_dict(binary="omit")`` with the
        ``output`` (stdout, stderr) that went beside it."""
        stdout, stderr = output if output is not None else (_b64(data.get("stdout")), _b64(data.get("stderr")))
        return cls(
            args=tuple(str(a) for a in data["args"]),
            status=Status(data["status"]),
            exit_code=int(data["exit_code"]),
            wall_s=float(data["wall_s"]),
            signal=None if data.get("signal") is None else int(data["signal"]),
            error=None if data.get("error") is None else str(data["error"]),
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=bool(data.get("stdout_truncated")),
            stderr_truncated=bool(data.get("stderr_truncated")),
            cpu_s=float(data.get("cpu_s", 0.0)),
            memory_peak_bytes=None if data.get("memory_peak_bytes") is None else int(data["memory_peak_bytes"]),
            oom_killed=bool(data.get("oom_killed")),
            limits=str(data.get("limits", "")),
            seccomp=str(data.get("seccomp", "")),
            path=None if data.get("path") is None else str(data["path"]),
        )


def _b64(value: Any) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def decode_output(data: bytes | bytearray) -> str:
    """Captured bytes as the text ExecutionResult shows (undecodable bytes as U+FFFD)."""
    return data.decode("utf-8", "replace")


def _signal_name(sig: int) -> str:
    try:
        return f"killed by {_signal.Signals(sig).name}"
    except ValueError:
        return f"killed by signal {sig}"


@dataclass(frozen=True)
class ExecutionResult:
    """The verdict of one ``execute_code``: the code's output, the repr of its last
    expression (``value``), the exception it raised (``error``, ``traceback``), and whether
    the session's Python state was lost: during this call (the kernel died or was killed)
    or before it (this call started a fresh kernel). ``data`` is the seeds' shape."""

    status: Status
    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    error: str | None = None
    traceback: str | None = None
    result: Any = None  #: execute_ai_code: the JSON value of the variable ``result``
    has_result: bool = False
    state_lost: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    memory_peak_bytes: int | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    limits: str = ""
    seccomp: str = ""
    #: What the cell displayed: each ``display(obj)``, then the last expression's value, as
    #: MIME types (``DisplayItem``); untrusted, as everything from inside.
    results: tuple[DisplayItem, ...] = ()

    @property
    def success(self) -> bool:
        return self.status is Status.OK

    @property
    def data(self) -> dict[str, Any]:
        return {"output": self.stdout, "stderr": self.stderr, "value": self.value}

    @property
    def png(self) -> bytes | None:
        """The first PNG the cell displayed (``results`` has them all)."""
        return next((item.png for item in self.results if item.png is not None), None)

    @property
    def html(self) -> str | None:
        """The first HTML the cell displayed."""
        return next((item.html for item in self.results if item.html is not None), None)

    def to_dict(self, *, output: bool = True) -> dict[str, Any]:
        """JSON-ready (``result`` as it is: a JSON value). ``output=False`` leaves stdout and
        stderr out (they cross the wire as bytes, beside it)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # shallow: result may nest
        data["status"] = self.status.value
        data["results"] = [item.to_dict() for item in self.results]
        if not output:
            del data["stdout"], data["stderr"]
        return data

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], output: tuple[bytes | None, bytes | None] | None = None
    ) -> ExecutionResult:
        """Inverse of ``to_dict``; with ``output``, the (stdout, stderr) bytes that went beside
        it, decoded here."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values["status"])
        values["results"] = tuple(DisplayItem.from_dict(item) for item in values.get("results") or ())
        if output is not None:
            values["stdout"], values["stderr"] = (decode_output(b or b"") for b in output)
        return cls(**values)


@dataclass(frozen=True)
class Executed:
    """An execution as the supervisor has it: the verdict (with empty stdout and stderr) and
    the output still as the bytes captured, decoded only where it is shown (``decoded``)."""

    result: ExecutionResult
    stdout: bytes = b""
    stderr: bytes = b""

    def decoded(self) -> ExecutionResult:
        return dataclasses.replace(self.result, stdout=decode_output(self.stdout), stderr=decode_output(self.stderr))
