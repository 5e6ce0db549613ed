"""Sans-I/O wire protocol: typed messages in length-prefixed JSON frames.

A frame is a 4-byte big-endian length and that many bytes of body: UTF-8 JSON, an object
with a ``"type"`` key, and, for a message with ``bytes`` fields (captured output, file
contents, a run's input), a NUL byte and a binary section holding those fields' bytes one
after the other; the JSON gives each one's length. (JSON text never holds a raw NUL, so the
first NUL ends it.) Bytes cross as they are: no base64, no escaped text, so a frame is never
bigger than what it carries, whatever the bytes are. :class:`FrameDecoder` turns bytes into
objects and :func:`parse` turns an object into one of the message classes below, checking
every field's type (integers within 32 bits, nesting at most ``MAX_DEPTH`` deep) and refusing
message types the receiver does not expect. Each link has its own size cap, smallest for
frames that come from inside the sandbox; nothing is ever unpickled or evaluated.

No sockets here: :mod:`nsbox._channel` moves frames (and file descriptors).
"""

from __future__ import annotations

import json
import struct
import types
import typing
from typing import Any, ClassVar, TypeVar

from ._errors import ProtocolError
from ._record import record

HEADER = struct.Struct(">I")
#: Frames that come from inside the sandbox (the intermediate, init) are small by construction.
MAX_FRAME_FROM_SANDBOX = 64 * 1024
#: Frames into init carry a run's argv and env (the kernel takes up to a quarter of the
#: stack limit for them, 2 MiB by default); the supervisor refuses larger ones up front.
MAX_FRAME_TO_INIT = 4 * 1024 * 1024
#: Every integer on the wire (pids, statuses, errnos, signals, and byte counts: a program's
#: memory limit or peak, 2 GiB and more) fits in a signed 64 bits.
_INT_LIMIT = 1 << 63
#: Frames between a front-end and its supervisor carry captured output and files, as bytes:
#: at most two streams of the largest output limit (64 MiB each), a result of at most as
#: much, and their text (``test_protocol`` checks that it all fits).
MAX_FRAME_SESSION = 256 * 1024 * 1024
#: The deepest nesting of lists and objects a frame may hold (JSON parsers and Python's own
#: recursion give out somewhere in the hundreds; a deeper frame is a ProtocolError).
MAX_DEPTH = 64
#: How deep a value given or returned by code (execute_ai_code's inputs and result) may
#: nest: what the frames that carry it (Execute, Cell, CellDone, Done) leave of MAX_DEPTH.
VALUE_DEPTH = MAX_DEPTH - 4
#: The processes init serves at once, named by the supervisor: a run, the Python kernel, and
#: the warm interpreter of run_code (forked by init itself: it starts as the programs' master).
RUN, KERNEL, WARM = 0, 1, 2


@record
class Message:
    TYPE: ClassVar[str] = ""


# --- front-end -> supervisor ------------------------------------------------------------
@record
class Open(Message):
    TYPE: ClassVar[str] = "open"
    spec: dict[str, Any]


@record
class Run(Message):
    """A run. Stdio modes: ``fd`` (an fd rides along, in stdin/stdout/stderr order),
    ``devnull``, ``capture`` (stdout/stderr), ``stdout`` (stderr only: merge),
    ``input`` (stdin only: the ``input`` bytes)."""

    TYPE: ClassVar[str] = "run"
    argv: list[str]
    env: dict[str, str]
    cwd: str
    timeout: float | None
    stdin: str
    stdout: str
    stderr: str
    input: bytes | None = None
    stream: bool = False  #: send captured output as it comes (Output frames), not only in Done


@record
class Execute(Message):
    """Python code for the session's kernel; ``inputs`` become variables first, and
    ``want_result`` asks for the JSON value of the variable ``result`` (execute_ai_code)."""

    TYPE: ClassVar[str] = "execute"
    code: str
    timeout: float | None
    inputs: dict[str, Any] | None = None
    want_result: bool = False
    stream: bool = False  #: send the output as it comes (Output frames), not only in Done


@record
class RunCode(Message):
    """One program in a fresh process (``NsSandbox.run_code``): ``files`` maps names in its
    working directory to their content, base64 (as ``Program``, which carries them on)."""

    TYPE: ClassVar[str] = "run_code"
    language: str
    code: str
    timeout: float | None
    stdin: bytes | None = None
    files: dict[str, str] | None = None
    compile_only: bool = False  #: a compiled language's build only (judge: compiled once, then each test)
    memory: int | None = None  #: bytes the program may add to what the sandbox uses when it starts


@record
class FileRequest(Message):
    """A workspace file operation (``_files``): ``op`` is read, write, list or remove;
    ``data`` the content to write."""

    TYPE: ClassVar[str] = "file"
    op: str
    path: str
    data: bytes | None = None
    mode: int = 0o644
    recursive: bool = False


@record
class Signal(Message):
    """Forward a signal to the current run (front-end -> supervisor -> init); from the
    supervisor to init, ``process`` says to which (RUN or KERNEL)."""

    TYPE: ClassVar[str] = "signal"
    signum: int
    process: int = RUN


@record
class Close(Message):
    TYPE: ClassVar[str] = "close"


# --- supervisor -> front-end ------------------------------------------------------------
@record
class Ready(Message):
    TYPE: ClassVar[str] = "ready"


@record
class Failed(Message):
    """``kind`` is ``setup``, ``spec`` or ``sandbox``; ``error`` the exception's fields."""

    TYPE: ClassVar[str] = "failed"
    kind: str
    error: dict[str, Any]


@record
class Done(Message):
    """A run's or an execution's result; its captured output rides as bytes."""

    TYPE: ClassVar[str] = "done"
    result: dict[str, Any]
    stdout: bytes | None = None
    stderr: bytes | None = None


@record
class Output(Message):
    """Output while a cell or a run goes on (an Execute or a Run with ``stream``): ``stream``
    is stdout or stderr, what is sent within the output limit; or ``display``, a cell's display
    item as the supervisor checked it (its JSON, ``DisplayItem.to_dict``). Done still has all of it."""

    TYPE: ClassVar[str] = "output"
    stream: str
    data: bytes | None = None


@record
class FileReply(Message):
    """The answer to a FileRequest: read -> ``data``; list -> ``entries``."""

    TYPE: ClassVar[str] = "file_reply"
    data: bytes | None = None
    entries: list[dict[str, Any]] | None = None


# --- intermediate / init -> supervisor ----------------------------------------------------
@record
class Go(Message):
    TYPE: ClassVar[str] = "go"


@record
class InitStarted(Message):
    """The intermediate forked init; a pidfd of it rides along."""

    TYPE: ClassVar[str] = "init_started"
    pid: int


@record
class StepFailed(Message):
    TYPE: ClassVar[str] = "step_failed"
    stage: str
    call: str
    args: str
    errno: int | None
    detail: str


@record
class Attached(Message):
    """Supervisor -> init: the intermediate and init are in the sandbox's cgroup now."""

    TYPE: ClassVar[str] = "attached"


@record
class InitReady(Message):
    TYPE: ClassVar[str] = "init_ready"


@record
class Exec(Message):
    """Supervisor -> init: start a process (RUN or KERNEL); three fds (stdin, stdout,
    stderr) ride along."""

    TYPE: ClassVar[str] = "exec"
    argv: list[str]
    env: dict[str, str]
    cwd: str
    process: int = RUN


@record
class Started(Message):
    TYPE: ClassVar[str] = "started"
    pid: int
    process: int = RUN


@record
class Exited(Message):
    """The payload was reaped. ``exec_errno`` is set when it never reached execve."""

    TYPE: ClassVar[str] = "exited"
    wait_status: int
    exec_errno: int | None
    exec_stage: str | None
    process: int = RUN


@record
class KillRun(Message):
    """Supervisor -> init: kill every process of the sandbox but init itself."""

    TYPE: ClassVar[str] = "kill_run"


# --- the Python kernel (nsbox/_guest/kernel.py, inside) <-> supervisor -------------------------
@record
class Cell(Message):
    """Supervisor -> kernel: execute ``code`` (see Execute). ``result_limit``: the most bytes
    the JSON of the variable ``result`` may take in the reply (a larger one is the cell's error)."""

    TYPE: ClassVar[str] = "cell"
    number: int
    code: str
    inputs: dict[str, Any] | None = None
    want_result: bool = False
    result_limit: int = 1 << 20
    display_limit: int = 1 << 20  #: the bytes (as JSON) its display items' representations may take


@record
class KernelReady(Message):
    TYPE: ClassVar[str] = "kernel_ready"
    python: str


@record
class CellStarted(Message):
    """Kernel -> supervisor: cell ``number`` was received and now runs. A kernel that dies
    before saying so died of something else (a run's kill): the cell goes to a new one."""

    TYPE: ClassVar[str] = "cell_started"
    number: int


@record
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


@record
class CellDisplay(Message):
    """Kernel -> supervisor: an item the cell displayed, sent as it is displayed (before the
    cell's CellDone); ``item`` is checked by nsbox._display, never trusted."""

    TYPE: ClassVar[str] = "cell_display"
    number: int
    item: Any = None


# --- the warm interpreter (nsbox/_guest/warm.py, inside) <-> supervisor ----------------------
@record
class Program(Message):
    """Supervisor -> warm interpreter: run one program (see RunCode); ``stdin`` is base64."""

    TYPE: ClassVar[str] = "program"
    number: int
    language: str
    code: str
    stdin: str | None = None
    files: dict[str, str] | None = None
    compile_only: bool = False


@record
class StopProgram(Message):
    """Supervisor -> warm interpreter: end program ``number`` now (a limit was reached)."""

    TYPE: ClassVar[str] = "stop_program"
    number: int


@record
class ProgramStarted(Message):
    """Warm interpreter -> supervisor: it took program ``number``. A warm interpreter that
    dies before saying so died between programs: a new one takes the program."""

    TYPE: ClassVar[str] = "program_started"
    number: int


@record
class WarmReady(Message):
    TYPE: ClassVar[str] = "warm_ready"
    python: str


@record
class ProgramDone(Message):
    """Warm interpreter -> supervisor: program ``number`` ended with ``wait_status``, and
    every process of its uid is gone (``clean``; when false the warm interpreter exits and
    the supervisor clears the sandbox's processes). ``cpu_s`` and ``memory_peak_bytes`` are its getrusage. ``stage``
    is "compile" when a compiled language's build failed (or was all that was asked)."""

    TYPE: ClassVar[str] = "program_done"
    number: int
    wait_status: int
    clean: bool
    cpu_s: float = 0.0
    memory_peak_bytes: int = 0
    stage: str = "run"


# --- front-end <-> spawner -----------------------------------------------------------------
@record
class Spawn(Message):
    """Fork a supervisor; the session socket's far end rides along. ``routed``: its sandbox
    has a routed network, whose router needs pyroute2 (~180 ms to import): the spawner
    imports it once, before this fork, so that only the first such sandbox waits for it."""

    TYPE: ClassVar[str] = "spawn"
    routed: bool = False


@record
class Spawned(Message):
    """A pidfd of the supervisor rides along (the front-end ends it if it must)."""

    TYPE: ClassVar[str] = "spawned"
    pid: int


M = TypeVar("M", bound=Message)
_REGISTRY: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Open, Run, Execute, RunCode, FileRequest, Signal, Close, Ready, Failed, Done, Output, FileReply, Go,
        InitStarted, StepFailed, Attached, InitReady, Exec, Started, Exited, KillRun, Cell, KernelReady,
        CellStarted, CellDisplay, CellDone, Program, StopProgram, ProgramStarted, WarmReady, ProgramDone, Spawn,
        Spawned,
    )
}  # fmt: skip


def encode_parts(message: Message) -> list[bytes]:
    """The frame as pieces to send one after the other (a message's bytes fields are not
    copied into one buffer): the header and JSON, then, if any, NUL and each field's bytes."""
    cls = type(message)
    binary = _binary_fields(cls)
    fields_: dict[str, Any] = {"type": message.TYPE}
    fields_.update((name, getattr(message, name)) for name in _field_names(cls))  # no deep copy: only read
    if not binary:
        body = json.dumps(fields_, separators=(",", ":")).encode()
        return [HEADER.pack(len(body)) + body]
    blobs: list[bytes] = []
    for name in binary:
        value = fields_[name]
        if value is not None:
            fields_[name] = len(value)
            if value:
                blobs.append(value)
    body = json.dumps(fields_, separators=(",", ":")).encode()
    size = len(body) + 1 + sum(len(b) for b in blobs)
    if size >= 1 << 32:
        raise ProtocolError(f"a frame of {size} bytes cannot be sent")
    return [HEADER.pack(size) + body + b"\0", *blobs]


def encode(message: Message) -> bytes:
    return b"".join(encode_parts(message))


def frame_size(message: Message) -> int:
    """The body's size on the wire (what a receiver's cap is compared with)."""
    return sum(len(part) for part in encode_parts(message)) - HEADER.size


class Frame(dict[str, Any]):
    """A decoded frame: its JSON object, and the binary section after it (``binary``)."""

    binary: memoryview = memoryview(b"")


class FrameDecoder:
    """Feed bytes, get complete frames; refuses frames over ``max_size`` before reading
    them, and JSON nested deeper than MAX_DEPTH. A frame's body is read into one buffer
    of its announced size."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._head = bytearray()
        self._body: bytearray | None = None
        self._filled = 0

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has been fed but not completed."""
        return bool(self._head) or self._body is not None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        frames = []
        if not self.in_frame and len(data) >= HEADER.size:  # the common case: a whole frame in one packet
            (length,) = HEADER.unpack_from(data)
            if length == len(data) - HEADER.size and length <= self.max_size:
                return [_frame(data[HEADER.size :])]
        view = memoryview(data)
        while view:
            if self._body is None:
                take = HEADER.size - len(self._head)
                self._head += view[:take]
                view = view[take:]
                if len(self._head) < HEADER.size:
                    break
                (length,) = HEADER.unpack(self._head)
                if length > self.max_size:
                    raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_size}-byte cap")
                self._body, self._filled = bytearray(length), 0
            take = min(len(view), len(self._body) - self._filled)
            self._body[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == len(self._body):
                body, self._body = self._body, None
                self._head = bytearray()
                frames.append(_frame(body))
        return frames


def _frame(body: bytes | bytearray) -> dict[str, Any]:
    """A frame's JSON object; a Frame (with ``binary``) if it has a binary section."""
    end = body.find(b"\0")
    text = body if end < 0 else memoryview(body)[:end].tobytes()
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also: bad UTF-8, too deep, huge ints
        raise ProtocolError(f"frame is not acceptable JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not a JSON object")
    # Only counted when the brackets allow it: a frame with fewer cannot nest that deep.
    if text.count(b"[") + text.count(b"{") > MAX_DEPTH and nesting(obj, MAX_DEPTH) > MAX_DEPTH:
        raise ProtocolError(f"frame nests deeper than {MAX_DEPTH} levels")
    if end < 0:
        return obj
    frame = Frame(obj)
    frame.binary = memoryview(body)[end + 1 :]
    return frame


def nesting(value: object, limit: int) -> int:
    """How deep lists and dicts nest in ``value`` (a value that is one counts 1), without
    recursion of our own; the walk stops as soon as it is past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse(obj: dict[str, Any], *expected: type[M]) -> M:
    """Validate ``obj`` as one of the ``expected`` message classes, field by field; its
    bytes fields are taken from the frame's binary section, which they must fill exactly."""
    cls = _REGISTRY.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None or cls not in expected:
        wanted = ", ".join(e.TYPE for e in expected)
        raise ProtocolError(f"unexpected message {str(obj.get('type'))[:40]!r}; expected {wanted}")
    hints = _hints(cls)
    binary = _binary_fields(cls)
    section = obj.binary if isinstance(obj, Frame) else memoryview(b"")
    offset = 0
    values = {}
    names = _field_names(cls)
    defaults: dict[str, Any] = cls.__record_defaults__  # type: ignore[attr-defined]
    for name in names:
        if name not in obj:
            if name in defaults:
                continue
            raise ProtocolError(f"{cls.TYPE}: missing field {name!r}")
        value = obj[name]
        if name in binary and value is not None:  # its length; the bytes are in the section
            if not (_conforms(value, int) and 0 <= value <= len(section) - offset):
                raise ProtocolError(f"{cls.TYPE}: field {name!r} has a bad length")
            length: int = value
            value, offset = section[offset : offset + length].tobytes(), offset + length
        elif not _conforms(value, hints[name]):
            raise ProtocolError(f"{cls.TYPE}: field {name!r} has the wrong type")
        values[name] = value
    if extra := set(obj) - set(names) - {"type"}:
        raise ProtocolError(f"{cls.TYPE}: unknown field(s) {sorted(extra)[:5]}")
    if offset != len(section):
        raise ProtocolError(f"{cls.TYPE}: {len(section) - offset} bytes of the frame belong to no field")
    return cls(**values)  # cls is one of `expected`, checked above


def warm() -> None:
    """Work out every message class's field types now (``typing.get_type_hints`` compiles
    each string annotation: ~0.1 ms a class). The spawner calls it once, so that no
    supervisor, and no process of a sandbox, does it again in each fork."""
    for cls in _REGISTRY.values():
        _binary_fields(cls)


_HINTS: dict[type, dict[str, Any]] = {}
_BINARY: dict[type, tuple[str, ...]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    """A message class's field types (evaluated once: they are strings until asked)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _binary_fields(cls: type[Message]) -> tuple[str, ...]:
    """The fields that travel in the binary section, in order: those of type ``bytes`` (or None)."""
    names = _BINARY.get(cls)
    if names is None:
        hints = _hints(cls)
        names = _BINARY[cls] = tuple(
            name for name in _field_names(cls) if hints[name] is bytes or bytes in typing.get_args(hints[name])
        )
    return names


def _field_names(cls: type[Message]) -> tuple[str, ...]:
    return cls.__record_fields__  # type: ignore[attr-defined,no-any-return]


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
