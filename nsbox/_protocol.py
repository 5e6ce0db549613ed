"""Sans-I/O wire protocol: typed messages in length-prefixed JSON frames.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON, an object
with a ``"type"`` key. :class:`FrameDecoder` turns bytes into objects and
:func:`parse` turns an object into one of the message classes below, checking every
field's type (integers within 32 bits) and refusing message types the receiver does not
expect. Each link has its own size cap, smallest for frames that come from inside the
sandbox; nothing is ever unpickled or evaluated.

No sockets here: :mod:`nsbox._channel` moves frames (and file descriptors).
"""

from __future__ import annotations

import json
import struct
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar

from ._errors import ProtocolError

HEADER = struct.Struct(">I")
#: Frames that come from inside the sandbox (the intermediate, init) are small by construction.
MAX_FRAME_FROM_SANDBOX = 64 * 1024
#: Frames into init carry a run's argv and env (the kernel takes up to a quarter of the
#: stack limit for them, 2 MiB by default); the supervisor refuses larger ones up front.
MAX_FRAME_TO_INIT = 4 * 1024 * 1024
#: Every integer on the wire (pids, statuses, errnos, signals) fits in 32 bits.
_INT_LIMIT = 1 << 31
#: Frames between a front-end and its supervisor carry captured output and files (base64).
MAX_FRAME_SESSION = 256 * 1024 * 1024
#: The processes init serves at once, named by the supervisor: a run, and the Python kernel.
RUN, KERNEL = 0, 1


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""


# --- front-end -> supervisor ------------------------------------------------------------
@dataclass(frozen=True)
class Open(Message):
    TYPE: ClassVar[str] = "open"
    spec: dict[str, Any]


@dataclass(frozen=True)
class Run(Message):
    """A run. Stdio modes: ``fd`` (an fd rides along, in stdin/stdout/stderr order),
    ``devnull``, ``capture`` (stdout/stderr), ``stdout`` (stderr only: merge),
    ``input`` (stdin only: the base64 ``input`` bytes)."""

    TYPE: ClassVar[str] = "run"
    argv: list[str]
    env: dict[str, str]
    cwd: str
    timeout: float | None
    stdin: str
    stdout: str
    stderr: str
    input: str | None = None


@dataclass(frozen=True)
class Execute(Message):
    """Python code for the session's kernel; ``inputs`` become variables first, and
    ``want_result`` asks for the JSON value of the variable ``result`` (execute_ai_code)."""

    TYPE: ClassVar[str] = "execute"
    code: str
    timeout: float | None
    inputs: dict[str, Any] | None = None
    want_result: bool = False


@dataclass(frozen=True)
class FileRequest(Message):
    """A workspace file operation (``_files``): ``op`` is read, write, list or remove;
    ``data`` the base64 content to write."""

    TYPE: ClassVar[str] = "file"
    op: str
    path: str
    data: str | None = None
    mode: int = 0o644
    recursive: bool = False


@dataclass(frozen=True)
class Signal(Message):
    """Forward a signal to the current run (front-end -> supervisor -> init); from the
    supervisor to init, ``process`` says to which (RUN or KERNEL)."""

    TYPE: ClassVar[str] = "signal"
    signum: int
    process: int = RUN


@dataclass(frozen=True)
class Close(Message):
    TYPE: ClassVar[str] = "close"


# --- supervisor -> front-end ------------------------------------------------------------
@dataclass(frozen=True)
class Ready(Message):
    TYPE: ClassVar[str] = "ready"


@dataclass(frozen=True)
class Failed(Message):
    """``kind`` is ``setup``, ``spec`` or ``sandbox``; ``error`` the exception's fields."""

    TYPE: ClassVar[str] = "failed"
    kind: str
    error: dict[str, Any]


@dataclass(frozen=True)
class Done(Message):
    TYPE: ClassVar[str] = "done"
    result: dict[str, Any]


@dataclass(frozen=True)
class FileReply(Message):
    """The answer to a FileRequest: read -> base64 ``data``; list -> ``entries``."""

    TYPE: ClassVar[str] = "file_reply"
    data: str | None = None
    entries: list[dict[str, Any]] | None = None


# --- intermediate / init -> supervisor ----------------------------------------------------
@dataclass(frozen=True)
class Unshared(Message):
    TYPE: ClassVar[str] = "unshared"


@dataclass(frozen=True)
class Go(Message):
    TYPE: ClassVar[str] = "go"


@dataclass(frozen=True)
class InitStarted(Message):
    """The intermediate forked init; a pidfd of it rides along."""

    TYPE: ClassVar[str] = "init_started"
    pid: int


@dataclass(frozen=True)
class StepFailed(Message):
    TYPE: ClassVar[str] = "step_failed"
    stage: str
    call: str
    args: str
    errno: int | None
    detail: str


@dataclass(frozen=True)
class Attached(Message):
    """Supervisor -> init: the intermediate and init are in the sandbox's cgroup now."""

    TYPE: ClassVar[str] = "attached"


@dataclass(frozen=True)
class InitReady(Message):
    TYPE: ClassVar[str] = "init_ready"


@dataclass(frozen=True)
class Exec(Message):
    """Supervisor -> init: start a process (RUN or KERNEL); three fds (stdin, stdout,
    stderr) ride along."""

    TYPE: ClassVar[str] = "exec"
    argv: list[str]
    env: dict[str, str]
    cwd: str
    process: int = RUN


@dataclass(frozen=True)
class Started(Message):
    TYPE: ClassVar[str] = "started"
    pid: int
    process: int = RUN


@dataclass(frozen=True)
class Exited(Message):
    """The payload was reaped. ``exec_errno`` is set when it never reached execve."""

    TYPE: ClassVar[str] = "exited"
    wait_status: int
    exec_errno: int | None
    exec_stage: str | None
    process: int = RUN


@dataclass(frozen=True)
class KillRun(Message):
    """Supervisor -> init: kill every process of the sandbox but init itself."""

    TYPE: ClassVar[str] = "kill_run"


# --- the Python kernel (nsbox/_guest/kernel.py, inside) <-> supervisor -------------------------
@dataclass(frozen=True)
class Cell(Message):
    """Supervisor -> kernel: execute ``code`` (see Execute)."""

    TYPE: ClassVar[str] = "cell"
    number: int
    code: str
    inputs: dict[str, Any] | None = None
    want_result: bool = False


@dataclass(frozen=True)
class KernelReady(Message):
    TYPE: ClassVar[str] = "kernel_ready"
    python: str


@dataclass(frozen=True)
class CellStarted(Message):
    """Kernel -> supervisor: cell ``number`` was received and now runs. A kernel that dies
    before saying so died of something else (a run's kill): the cell goes to a new one."""

    TYPE: ClassVar[str] = "cell_started"
    number: int


@dataclass(frozen=True)
class CellDone(Message):
    """Kernel -> supervisor: how a cell ended. ``error`` has ``type``, ``message`` and
    ``traceback`` when the code raised; ``result`` is set when asked for and JSON-able.
    ``number`` is the cell's: a reply to another (a cell can forge frames) is dropped."""

    TYPE: ClassVar[str] = "cell_done"
    number: int
    value: str | None
    error: dict[str, str] | None
    has_result: bool = False
    result: Any = None


# --- front-end <-> spawner -----------------------------------------------------------------
@dataclass(frozen=True)
class Spawn(Message):
    """Fork a supervisor; the session socket's far end rides along."""

    TYPE: ClassVar[str] = "spawn"


@dataclass(frozen=True)
class Spawned(Message):
    TYPE: ClassVar[str] = "spawned"
    pid: int


M = TypeVar("M", bound=Message)
_REGISTRY: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Open, Run, Execute, FileRequest, Signal, Close, Ready, Failed, Done, FileReply, Unshared, Go,
        InitStarted, StepFailed, Attached, InitReady, Exec, Started, Exited, KillRun, Cell, KernelReady,
        CellStarted, CellDone, Spawn, Spawned,
    )
}  # fmt: skip


def encode(message: Message) -> bytes:
    fields_ = {f.name: getattr(message, f.name) for f in fields(message)}  # no deep copy: only read
    body = json.dumps({"type": message.TYPE, **fields_}, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes, get complete JSON objects; refuses frames over ``max_size``."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has been fed but not completed."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_size:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_size}-byte cap")
            if len(self._buffer) < HEADER.size + length:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            try:
                obj = json.loads(body)
            except (ValueError, RecursionError) as exc:  # also: bad UTF-8, too deep, huge ints
                raise ProtocolError(f"frame is not acceptable JSON: {str(exc)[:200]}") from None
            if not isinstance(obj, dict):
                raise ProtocolError("frame is not a JSON object")
            frames.append(obj)
        return frames


def parse(obj: dict[str, Any], *expected: type[M]) -> M:
    """Validate ``obj`` as one of the ``expected`` message classes, field by field."""
    cls = _REGISTRY.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None or cls not in expected:
        names = ", ".join(e.TYPE for e in expected)
        raise ProtocolError(f"unexpected message {str(obj.get('type'))[:40]!r}; expected {names}")
    hints = _hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in obj:
            if f.default is not MISSING:
                continue
            raise ProtocolError(f"{cls.TYPE}: missing field {f.name!r}")
        if not _conforms(obj[f.name], hints[f.name]):
            raise ProtocolError(f"{cls.TYPE}: field {f.name!r} has the wrong type")
        values[f.name] = obj[f.name]
    if extra := set(obj) - {f.name for f in fields(cls)} - {"type"}:
        raise ProtocolError(f"{cls.TYPE}: unknown field(s) {sorted(extra)[:5]}")
    return cls(**values)  # cls is one of `expected`, checked above


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    """A message class's field types (evaluated once: they are strings until asked)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _conforms(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and -_INT_LIMIT <= value < _INT_LIMIT
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_conforms(k, key) and _conforms(v, item) for k, v in value.items())
    return isinstance(value, hint)
