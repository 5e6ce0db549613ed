"""NsSandbox: the synchronous front-end.

A sandbox is a session: started on ``start()`` (or the first ``run()`` / ``with``), it
serves many runs in the same namespaces and workspace, and ``close()`` destroys it.
``run()`` takes ``subprocess.run``'s argument names and returns a RunResult.

Two backends behind one interface: ``_RemoteBackend`` (the default) talks frames to a
supervisor forked from the spawner, so the caller's process is never forked into
namespaces; ``_LocalBackend`` makes the calling process the supervisor, which is right
only for a single-threaded one-shot caller: the CLI.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess  # nosec B404  # only its PIPE/DEVNULL/STDOUT constants
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from ._channel import Channel, readable
from ._display import DisplayItem
from ._errors import ExecutionFailed, ProtocolError, RunFailed, SandboxError, SecurityError, SetupError, SpecError
from ._fds import close_fds
from ._files import FILE_LIMIT, FileInfo
from ._hostfiles import read_host_file, write_host_file
from ._protocol import (
    MAX_FRAME_SESSION,
    VALUE_DEPTH,
    Close,
    Done,
    Execute,
    Failed,
    FileReply,
    FileRequest,
    Open,
    Output,
    Ready,
    Run,
    RunCode,
    nesting,
)
from ._result import ExecutionResult, RunResult
from ._spec import PACKAGES, WHEELS, WORKSPACE, Limits, SandboxSpec, _clean_env, option_name, parse_size, parse_timeout
from ._stdio import check_stdio_fd
from ._supervisor import Supervisor

if TYPE_CHECKING:
    from ._judge import JudgeResult

StdioArg = int | IO[Any] | None
_T = TypeVar("_T")
_UNSET: Any = object()
#: How long close() waits for the supervisor to tear the sandbox down before it kills the
#: supervisor (whose death takes every process of the sandbox with it: parent-death signals).
CLOSE_TIMEOUT = 10.0
#: The most a request may carry: a run's input, or a cell's code and inputs (JSON) together.
REQUEST_LIMIT = 64 * 1024 * 1024
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


#: A requirement as pip takes it from a wheelhouse: a name, maybe a version; never an option.
_REQUIREMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?([<>=!~]=?[A-Za-z0-9.*+!-]+)?")


class _Backend(Protocol):
    def start(self) -> None: ...
    def run(self, request: Run, fds: list[int], on_output: OnOutput | None = None) -> RunResult: ...
    def execute(self, request: Execute, on_output: OnOutput | None = None) -> ExecutionResult: ...
    def run_code(self, request: RunCode) -> RunResult: ...
    def file_op(self, request: FileRequest) -> FileReply: ...
    def interrupt(self) -> None: ...
    def close(self) -> None: ...


class _RemoteBackend:
    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.channel: Channel | None = None
        self.supervisor_pid: int | None = None
        self.supervisor_fd: int | None = None  #: a pidfd of the supervisor (the spawner's child)
        self._interrupted = False
        self._opening: Ready | Done | Failed | FileReply | Output | None = None

    def start(self) -> None:
        from ._spawner import Spawner  # imported on first use: the CLI never needs it

        routed = self.spec.network.mode == "routed"
        sock, self.supervisor_pid, self.supervisor_fd = Spawner.get().spawn(routed)
        self.channel = Channel(sock, MAX_FRAME_SESSION)
        self.channel.send(Open(self.spec.to_dict()))
        self._opening = self._receive(Ready, Failed)
        self._raise_if_failed(self._opening)

    def run(self, request: Run, fds: list[int], on_output: OnOutput | None = None) -> RunResult:
        self._send(request, fds)
        done = self._done(self._streamed(on_output))
        return RunResult.from_dict(done.result, (done.stdout, done.stderr))

    def execute(self, request: Execute, on_output: OnOutput | None = None) -> ExecutionResult:
        self._send(request)
        done = self._done(self._streamed(on_output))
        return ExecutionResult.from_dict(done.result, (done.stdout, done.stderr))

    def _streamed(self, on_output: OnOutput | None) -> Ready | Done | Failed | FileReply | Output:
        """The request's answer, its Output frames before it handed to ``on_output``."""
        while isinstance(message := self._receive(Done, Failed, Output), Output):
            if on_output is not None and message.stream in ("stdout", "stderr", "display"):
                on_output(message.stream, message.data or b"")
        return message

    def run_code(self, request: RunCode) -> RunResult:
        self._send(request)
        done = self._done(self._receive(Done, Failed))
        return RunResult.from_dict(done.result, (done.stdout, done.stderr))

    def file_op(self, request: FileRequest) -> FileReply:
        self._send(request)
        message = self._receive(FileReply, Failed)
        self._raise_if_failed(message)
        if not isinstance(message, FileReply):
            raise ProtocolError(f"expected a file reply, got {message.TYPE!r}")
        return message

    def _send(self, request: Run | Execute | RunCode | FileRequest, fds: list[int] | None = None) -> None:
        if self.channel is None:
            raise SandboxError("the sandbox is closed")
        try:
            self.channel.send(request, fds or ())
        except OSError as exc:
            self.close()
            raise SandboxError(f"the sandbox's supervisor is gone ({exc.strerror})") from None

    def _done(self, message: Ready | Done | Failed | FileReply | Output) -> Done:
        self._raise_if_failed(message)
        if not isinstance(message, Done):
            raise ProtocolError(f"expected a result, got {message.TYPE!r}")
        return message

    def _receive(
        self, *expected: type[Ready] | type[Done] | type[Failed] | type[FileReply] | type[Output]
    ) -> Ready | Done | Failed | FileReply | Output:
        if self.channel is None:
            raise SandboxError("the sandbox is closed")
        try:
            message, fds = self.channel.recv(*expected)
        except (EOFError, ConnectionResetError):
            self.close()
            raise SandboxError("the sandbox's supervisor ended unexpectedly") from None
        close_fds(fds)
        return message

    def _raise_if_failed(self, message: Ready | Done | Failed | FileReply | Output) -> None:
        """A Failed frame as its exception. The session survives a refused request (kind
        spec, security or os, after start); anything else ended it on the supervisor's side."""
        if not isinstance(message, Failed):
            return
        error = message.error
        if message.kind not in ("spec", "security", "os") or message is self._opening:
            self.close()
        if message.kind == "setup":
            raise SetupError.from_dict(error)
        if message.kind == "spec":
            raise SpecError(tuple(error.get("options", ())), str(error.get("message")))
        if message.kind == "security":
            raise SecurityError(str(error.get("message")))
        if message.kind == "os" and isinstance(error.get("errno"), int):
            raise OSError(error["errno"], str(error.get("message")), str(error.get("path")))
        raise SandboxError(str(error.get("message", "the sandbox failed")))

    def interrupt(self) -> None:
        """Wake a run blocked in another thread (it ends with SandboxError); the
        supervisor sees the session end and tears the sandbox down."""
        if self.channel is not None:
            self._interrupted = True  # the end of file we read next is our own, not the supervisor's
            with contextlib.suppress(OSError):
                self.channel.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Ask the supervisor to tear down and wait until it has: it closes the session
        only after every process of the sandbox is gone. A supervisor that does not (it is
        stopped, or wedged) is killed after CLOSE_TIMEOUT; its death kills init and with it
        every process of the sandbox (parent-death signals, the pid namespace), and the
        spawner removes its cgroups."""
        channel, self.channel = self.channel, None
        ended = False  #: the supervisor closed the session: every process of the sandbox is gone
        try:
            if channel is not None:
                with contextlib.suppress(OSError, ProtocolError):
                    channel.send(Close(), deadline=time.monotonic() + CLOSE_TIMEOUT)
                deadline = time.monotonic() + CLOSE_TIMEOUT
                try:
                    while (left := deadline - time.monotonic()) > 0 and readable(channel.fileno(), left):
                        got = channel.read_packet()
                        if got is not None:
                            close_fds(got[1])
                except EOFError:
                    ended = not self._interrupted
                except (OSError, ProtocolError):
                    pass
                channel.close()
        finally:
            self._end_supervisor(ended)

    def _end_supervisor(self, ended: bool) -> None:
        """Unless the supervisor ended the session itself, wait for it to exit, and kill it if
        it does not (it is stopped, or wedged); its death takes the sandbox with it."""
        fd, self.supervisor_fd = self.supervisor_fd, None
        if fd is None:
            return
        try:  # after interrupt(), its exit is the only sign that it has torn the sandbox down
            if not ended and not readable(fd, CLOSE_TIMEOUT if self._interrupted else 0):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                readable(fd, CLOSE_TIMEOUT)
        finally:
            os.close(fd)


class _LocalBackend:
    """The calling (single-threaded) process is the supervisor; it forwards the
    signals a terminal sends (Ctrl-C, hang-up) to the run."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.supervisor = Supervisor(spec, guard_cgroup=True)

    def start(self) -> None:
        self.supervisor.start()

    def interrupt(self) -> None:
        pass  # single-threaded by contract: nothing can be running concurrently

    def run(self, request: Run, fds: list[int], on_output: OnOutput | None = None) -> RunResult:
        result = _forwarding(lambda events: self.supervisor.run(request, fds, events))
        _deliver(on_output, result.stdout, result.stderr)
        return result

    def execute(self, request: Execute, on_output: OnOutput | None = None) -> ExecutionResult:
        executed = _forwarding(lambda events: self.supervisor.execute(request, events))
        _deliver(on_output, executed.stdout, executed.stderr)
        result = executed.decoded()
        if on_output is not None:
            for item in result.results:
                on_output("display", json.dumps(item.to_dict()).encode())
        return result

    def run_code(self, request: RunCode) -> RunResult:
        return _forwarding(lambda events: self.supervisor.run_code(request, events))

    def file_op(self, request: FileRequest) -> FileReply:
        return self.supervisor.file_op(request)

    def close(self) -> None:
        self.supervisor.close()


def _deliver(on_output: OnOutput | None, stdout: bytes | None, stderr: bytes | None) -> None:
    """In process (the CLI), a call's output goes to its callbacks when the call ends."""
    if on_output is not None:
        for name, data in (("stdout", stdout), ("stderr", stderr)):
            if data:
                on_output(name, data)


def _forwarding(call: Callable[[_SignalForwarder | None], _T]) -> _T:
    """``call`` with the terminal's signals forwarded (only the main thread gets signals)."""
    if threading.current_thread() is not threading.main_thread():
        return call(None)
    forwarder = _SignalForwarder()
    try:
        return call(forwarder)
    finally:
        forwarder.restore()


class _SignalForwarder:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = {sig: signal.signal(sig, lambda *_: None) for sig in _FORWARDED_SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._write)

    def fileno(self) -> int:
        return self._read

    def read(self) -> list[int]:
        try:
            return [sig for sig in os.read(self._read, 64) if sig in _FORWARDED_SIGNALS]
        except BlockingIOError:
            return []

    def output(self, stream: str, data: bytes) -> None:
        pass  # in process (the CLI): its callbacks get the output when the cell ends

    def flush(self) -> bool:
        return True

    def restore(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._read)
        os.close(self._write)


class NsSandbox:
    """A Linux-namespace sandbox session.

    ``NsSandbox(spec)`` or ``NsSandbox(**options)`` (the fields of SandboxSpec and of its
    Limits: ``NsSandbox(memory="256M", cpus=0.5, timeout=10)``). Use it as a context manager, or
    call ``close()``; a sandbox that is garbage-collected is closed too.
    """

    def __init__(self, spec: SandboxSpec | None = None, **options: Any) -> None:
        if spec is not None and options:
            raise SpecError(tuple(options), "pass either a SandboxSpec or options, not both")
        self.spec = spec if spec is not None else spec_from_options(**options)
        self._backend: _Backend = _RemoteBackend(self.spec)
        self._started = False
        self._closed = False
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_backend, self._backend, os.getpid())

    @classmethod
    def _in_process(cls, spec: SandboxSpec) -> NsSandbox:
        """This process becomes the supervisor (single-threaded callers only: the CLI)."""
        sandbox = cls(spec)
        sandbox._finalizer.detach()
        sandbox._backend = _LocalBackend(spec)
        sandbox._finalizer = weakref.finalize(sandbox, _close_backend, sandbox._backend, os.getpid())
        return sandbox

    def start(self) -> NsSandbox:
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            if not self._started:
                self._backend.start()
                self._started = True
        return self

    def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        stdin: StdioArg = None,
        input: bytes | str | None = None,
        stdout: StdioArg = None,
        stderr: StdioArg = None,
        capture_output: bool = False,
        timeout: float | None = _UNSET,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str = WORKSPACE,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
    ) -> RunResult:
        """Run ``args`` in the sandbox and wait for it. Never raises for the payload's own
        failure (see the result's ``status``) unless ``check=True``.

        Unlike subprocess, stdin, stdout and stderr default to /dev/null: a sandbox never
        gets your process's own stdio unless you hand it over (``stdout=sys.stdout``).
        ``on_stdout`` / ``on_stderr`` capture that stream and are called with its output as
        it comes (as execute_code's); the result still holds all of it."""
        argv = _argv(args)
        streams = _Streams.of(on_stdout, on_stderr)
        for name, callback, value in (("stdout", on_stdout, stdout), ("stderr", on_stderr, stderr)):
            if callback is not None and value not in (None, subprocess.PIPE) and not capture_output:
                raise SpecError((name, f"on_{name}"), f"on_{name} reads a captured {name}: pass no {name}")
        if capture_output:
            if stdout is not None or stderr is not None:
                raise SpecError(("capture_output", "stdout", "stderr"), "capture_output excludes stdout and stderr")
            stdout = stderr = subprocess.PIPE
        if on_stdout is not None:
            stdout = subprocess.PIPE
        if on_stderr is not None:
            stderr = subprocess.PIPE
        if input is not None and stdin is not None:
            raise SpecError(("input", "stdin"), "pass input or stdin, not both")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise SpecError(option_name("cwd"), f"{cwd!r} must be an absolute path inside the sandbox")
        data = input.encode() if isinstance(input, str) else None if input is None else bytes(input)
        if data is not None and len(data) > REQUEST_LIMIT:
            raise SpecError(option_name("input"), f"{len(data)} bytes of input; at most {REQUEST_LIMIT}")
        # What init takes (MAX_FRAME_TO_INIT) the supervisor checks, and logs a refusal of; this
        # keeps a request that could not even reach it (the session's frame cap) from ending it.
        command_size = sum(len(os.fsencode(a)) for a in argv) + sum(len(k) + len(v) for k, v in (env or {}).items())
        if command_size > REQUEST_LIMIT:
            raise SpecError(option_name("command"), f"argv and env take {command_size} bytes; at most {REQUEST_LIMIT}")
        fds: list[int] = []
        try:
            stdin_mode = "input" if data is not None else _stdio_mode("stdin", stdin, fds)
            request = Run(
                argv=argv,
                env=dict(_clean_env(env or {})),
                cwd=cwd,
                timeout=self.spec.limits.timeout if timeout is _UNSET else parse_timeout(timeout),
                stdin=stdin_mode,
                stdout=_stdio_mode("stdout", stdout, fds),
                stderr=_stdio_mode("stderr", stderr, fds),
                input=data,
                stream=streams is not None,
            )
            self.start()
            with self._lock:
                if isinstance(self._backend, _LocalBackend):
                    fds = [os.dup(fd) for fd in fds]  # the supervisor owns (and closes) what it gets
                result = self._backend.run(request, fds, None if streams is None else streams.take)
            if streams is not None:
                streams.end()
        except ProtocolError:
            self.close()
            raise
        if check:
            result.check_returncode()
        return result

    # -- Python code -------------------------------------------------------------------------
    def execute_code(
        self,
        code: str,
        *,
        timeout: float | None = _UNSET,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        on_result: Callable[[DisplayItem], object] | None = None,
    ) -> ExecutionResult:
        """Run Python ``code`` in the session's kernel: variables persist between calls,
        and the repr of a last expression is the result's ``value``. Never raises for the
        code's own failure (see ``status``, ``error``, ``traceback``, ``state_lost``).

        ``on_stdout`` / ``on_stderr`` are called with the output as it comes (text, in
        chunks, within the output limit), ``on_result`` with each display item as the cell
        shows it (``display(obj)`` at once; the last value and open figures at the end), in
        this thread, while the cell runs; the result still holds all of it (``results``).
        An exception a callback raises is ignored (the cell and the session go on); a slow
        callback holds back only the delivery."""
        streams = _Streams.of(on_stdout, on_stderr, on_result)
        return self._execute(code, timeout, None, want_result=False, streams=streams)

    def execute_ai_code(self, code: str, inputs: Mapping[str, Any] | None = None, *, timeout: Any = _UNSET) -> Any:
        """Run ``code`` with ``inputs`` (JSON values) as variables and return the JSON value
        of the variable ``result``; ExecutionFailed if the code failed or set none."""
        result = self._execute(code, timeout, _json_inputs(inputs), want_result=True)
        if not result.success or not result.has_result:
            raise ExecutionFailed(result)
        return result.result

    def _execute(
        self,
        code: str,
        timeout: float | None,
        inputs: dict[str, Any] | None,
        *,
        want_result: bool,
        streams: _Streams | None = None,
    ) -> ExecutionResult:
        if not isinstance(code, str):
            raise SpecError(option_name("code"), "code must be a string of Python source")
        size = len(code.encode("utf-8", "surrogatepass")) + (0 if inputs is None else len(json.dumps(inputs)))
        if size > REQUEST_LIMIT:
            raise SpecError(option_name("code"), f"code and inputs take {size} bytes; at most {REQUEST_LIMIT}")
        limit = self.spec.limits.timeout if timeout is _UNSET else parse_timeout(timeout)
        request = Execute(code, limit, inputs, want_result, stream=streams is not None)
        result = self._call(lambda backend: backend.execute(request, None if streams is None else streams.take))
        if streams is not None:
            streams.end()
        return result

    # -- programs, each in a fresh process ------------------------------------------------------
    def run_code(
        self,
        code: str,
        *,
        language: str = "python",
        stdin: bytes | str | None = None,
        timeout: float | None = _UNSET,
        memory: int | str | None = None,
        files: Mapping[str, bytes | str] | None = None,
    ) -> RunResult:
        """Run one program (``language``: python or bash) in a fresh process that no earlier
        program touched, and wait for it: a Python program is forked from the sandbox's warm
        interpreter (it pays a fork, not an interpreter's start) and runs as ``__main__``.
        It runs as a uid of its own in a new directory in /tmp holding ``files`` (relative
        names), with ``stdin`` as its standard input and its output captured. When it ends,
        every process, file and IPC object it left is gone. ``path`` in the result says
        whether it was forked from a warm interpreter that was running ("warm") or one was
        started for it ("cold"). ``memory`` (e.g. "64M") is what the program may add to what
        the sandbox uses when it starts; past it, it ends as ``oom`` (default: the sandbox's
        own limit is all). Never raises for the program's own failure."""
        if not isinstance(code, str):
            raise SpecError(option_name("code"), "code must be a string")
        data = stdin.encode() if isinstance(stdin, str) else None if stdin is None else bytes(stdin)
        encoded = {
            str(name): base64.b64encode(value.encode() if isinstance(value, str) else bytes(value)).decode("ascii")
            for name, value in (files or {}).items()
        }
        size = len(code.encode("utf-8", "surrogatepass")) + len(data or b"") + sum(map(len, encoded.values()))
        if size > REQUEST_LIMIT:
            raise SpecError(option_name("code"), f"code, stdin and files take {size} bytes; at most {REQUEST_LIMIT}")
        limit = self.spec.limits.timeout if timeout is _UNSET else parse_timeout(timeout)
        extra = None if memory is None else parse_size(memory, "memory")
        request = RunCode(language, code, limit, data, encoded or None, memory=extra)
        return self._call(lambda backend: backend.run_code(request))

    def _compile(self, code: str, language: str, timeout: float | None) -> RunResult:
        """Compile ``code`` (c, cpp) for the run_code calls that follow, without running it."""
        request = RunCode(language, code, timeout, compile_only=True)
        return self._call(lambda backend: backend.run_code(request))

    def judge(
        self,
        code: str,
        tests: Sequence[Mapping[str, Any] | tuple[str | bytes, str | bytes]],
        *,
        language: str = "python",
        timeout: float | None = _UNSET,
        memory: int | str | None = None,
        compare: str = "exact",
        tolerance: float = 1e-6,
        stop_on_failure: bool = False,
        compile_timeout: float = 60.0,
    ) -> JudgeResult:
        """Judge one submission: ``tests`` are ``{"input": ..., "output": ...}`` mappings or
        (input, expected output) pairs. A c or cpp source is compiled once; then each test
        runs in a fresh process (run_code) and its stdout is compared (``compare``: exact,
        tokens, or floats within ``tolerance``). Verdicts per test (accepted, wrong_answer,
        time_limit, memory_limit, output_limit, runtime_error) and for the submission (its
        first failed test's, or compile_error). ``memory`` is each test's, as run_code's.
        ``stop_on_failure`` stops at the first; ``compile_timeout`` bounds the compilation.
        With no tests, only the compilation (its result is ``compile``)."""
        from ._judge import Rules, judge

        limit = self.spec.limits.timeout if timeout is _UNSET else parse_timeout(timeout)
        rules = Rules(
            language,
            limit,
            memory,
            compare,
            tolerance,
            stop_on_failure,
            parse_timeout(compile_timeout, "compile_timeout"),
        )
        return judge(self, code, tests, rules)

    # -- files of the workspace ----------------------------------------------------------------
    def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        """Write a file in /workspace (parents created), owned by the sandbox's user."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        if len(content) > FILE_LIMIT:
            raise SpecError("data", f"{len(content)} bytes; at most {FILE_LIMIT} are written")
        self._file(FileRequest("write", _path(path), content, mode))

    def read_file(self, path: str) -> bytes:
        """The content of a regular file in /workspace (at most FILE_LIMIT bytes)."""
        return self._file(FileRequest("read", _path(path))).data or b""

    def list_files(self, path: str = ".") -> list[FileInfo]:
        """The entries of a directory in /workspace, by name; symlinks are not followed."""
        reply = self._file(FileRequest("list", _path(path)))
        return [FileInfo.from_dict(entry) for entry in reply.entries or []]

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, an empty directory, or (``recursive``) a whole tree."""
        self._file(FileRequest("remove", _path(path), recursive=recursive))

    def upload(
        self, host_path: str | os.PathLike[str], dest: str | None = None, *, follow_symlinks: bool = False
    ) -> None:
        """Copy a regular host file into /workspace (``dest``: by default its name).

        A symlink anywhere on ``host_path`` is refused (SecurityError), as is anything but a
        regular file: a sandbox with a writable bind, or another user, could have planted it
        there. ``follow_symlinks=True`` if the path is yours alone."""
        data = read_host_file(host_path, FILE_LIMIT, what="host_path", follow_symlinks=follow_symlinks)
        self.write_file(dest if dest is not None else os.path.basename(os.fspath(host_path)), data)

    def download(self, src: str, host_path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> None:
        """Copy a regular file of /workspace to ``host_path`` on the host: written to a new
        file beside it, then renamed into place (never written through what is there).

        A symlink anywhere on ``host_path``, or an existing ``host_path`` that is not a regular
        file, is refused (SecurityError). ``follow_symlinks=True`` if the path is yours alone."""
        data = self.read_file(src)
        write_host_file(host_path, data, what="host_path", follow_symlinks=follow_symlinks)

    def _file(self, request: FileRequest) -> FileReply:
        return self._call(lambda backend: backend.file_op(request))

    # -- packages ------------------------------------------------------------------------------
    def install_packages(self, packages: Sequence[str], *, timeout: float | None = _UNSET) -> RunResult:
        """pip-install ``packages`` into the session (``/workspace/.packages``, on the
        kernel's sys.path) from the wheelhouse given as ``wheels=DIR``. RunFailed if pip fails."""
        if isinstance(packages, str) or not packages:
            raise SpecError(option_name("packages"), "give a non-empty list of package names")
        for name in packages:
            if not isinstance(name, str) or not _REQUIREMENT_RE.fullmatch(name):
                raise SpecError(option_name("packages"), f"{name!r} is not a package name (options are not taken)")
        if self.spec.wheels is None:
            raise SpecError(
                option_name("wheels"),
                "install_packages needs a wheelhouse: create the sandbox with wheels=DIR (a directory of .whl files)",
            )
        argv = ["python3", "-m", "pip", "install", "--no-index", "--find-links", WHEELS, "--target", PACKAGES]
        argv += ["--no-cache-dir", "--disable-pip-version-check", "--no-input", "--quiet", *packages]
        result = self.run(argv, capture_output=True, timeout=timeout)
        if not result.ok:
            raise RunFailed(result)
        return result

    def _call(self, call: Callable[[_Backend], _T]) -> _T:
        self.start()
        try:
            with self._lock:
                return call(self._backend)
        except ProtocolError:
            self.close()
            raise

    def close(self) -> None:
        """Destroy the sandbox: every process, mount and namespace of it. Idempotent.
        A run in progress in another thread ends with SandboxError."""
        self._closed = True
        if not self._lock.acquire(blocking=False):
            self._backend.interrupt()
            self._lock.acquire()
        try:
            self._finalizer()
        finally:
            self._lock.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def _healthy(self) -> bool:
        """Started, open, and its supervisor still there (it never speaks unasked, so
        anything readable on an idle session is its end). For the pool."""
        if self._closed or not self._started:
            return False
        backend = self._backend
        if isinstance(backend, _RemoteBackend):
            return backend.channel is not None and not readable(backend.channel.fileno())
        return True

    def __enter__(self) -> NsSandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


#: What a backend calls with a cell's output as it comes: the stream's name, its bytes.
OnOutput = Callable[[str, bytes], None]


class _Streams:
    """A call's callbacks: bytes decoded as UTF-8 incrementally (a character cut between
    two chunks comes whole), display items as DisplayItem, a callback's exception ignored."""

    def __init__(
        self,
        on_stdout: Callable[[str], object] | None,
        on_stderr: Callable[[str], object] | None,
        on_result: Callable[[DisplayItem], object] | None = None,
    ) -> None:
        self.callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self.on_result = on_result
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in self.callbacks}

    @classmethod
    def of(
        cls,
        on_stdout: Callable[[str], object] | None,
        on_stderr: Callable[[str], object] | None,
        on_result: Callable[[DisplayItem], object] | None = None,
    ) -> _Streams | None:
        """A call's streams, or None if it has no callback."""
        if on_stdout is None and on_stderr is None and on_result is None:
            return None
        return cls(on_stdout, on_stderr, on_result)

    def take(self, stream: str, data: bytes) -> None:
        if stream == "display":
            if self.on_result is not None:
                try:
                    item = DisplayItem.from_dict(json.loads(data))  # the supervisor checked it: again here
                except ValueError:
                    return
                with contextlib.suppress(Exception):  # the caller's code: it must not break the session
                    self.on_result(item)
        elif stream in self.callbacks:
            self._call(stream, self.decoders[stream].decode(data))

    def end(self) -> None:
        for stream, decoder in self.decoders.items():
            self._call(stream, decoder.decode(b"", final=True))

    def _call(self, stream: str, text: str) -> None:
        callback = self.callbacks[stream]
        if text and callback is not None:
            with contextlib.suppress(Exception):  # the caller's code: it must not break the session
                callback(text)


def _close_backend(backend: _Backend, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not in a forked child of the process that made it
        backend.close()


def spec_from_options(**options: Any) -> SandboxSpec:
    """NsSandbox(**options) -> SandboxSpec: the fields of Limits (memory, cpus, pids,
    timeout, ...) may be given directly."""
    limit_names = {f.name for f in dataclasses.fields(Limits)}
    limits = {k: options.pop(k) for k in list(options) if k in limit_names}
    if limits:
        if "limits" in options:
            raise SpecError((*limits, "limits"), "pass limits or its fields, not both")
        options["limits"] = Limits(**limits)
    try:
        return SandboxSpec(**options)
    except TypeError as exc:
        raise SpecError(tuple(options), f"unknown option: {exc}") from None


def _path(path: str) -> str:
    """Only the type is checked here: the supervisor resolves (and logs what it refuses)."""
    if not isinstance(path, str):
        raise SpecError("path", f"{path!r} is not a path inside the workspace")
    return path


def _json_inputs(inputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """execute_ai_code's inputs: variable names to JSON values (what crosses into the sandbox)."""
    if inputs is None:
        return None
    if not isinstance(inputs, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in inputs):
        raise SpecError(option_name("inputs"), "inputs must map variable names to values")
    try:
        values = dict(json.loads(json.dumps(dict(inputs), allow_nan=False)))
    except (TypeError, ValueError, RecursionError) as exc:
        raise SpecError(option_name("inputs"), f"inputs must be JSON values: {str(exc)[:200]}") from None
    if nesting(values, VALUE_DEPTH + 1) > VALUE_DEPTH + 1:  # the mapping itself is one level
        raise SpecError(option_name("inputs"), f"inputs nest deeper than {VALUE_DEPTH} levels")
    return values


def _argv(args: Sequence[str | os.PathLike[str]] | str) -> list[str]:
    if isinstance(args, (str, bytes)) or not isinstance(args, Iterable):
        raise SpecError(option_name("command"), "args must be a list of strings, e.g. ['ls', '-l']")
    argv = [os.fspath(a) for a in args]
    if not argv or not argv[0]:
        raise SpecError(option_name("command"), "the command is empty")
    if any(not isinstance(a, str) or "\0" in a for a in argv):
        raise SpecError(option_name("command"), "arguments must be strings without NUL bytes")
    return argv


def _stdio_mode(name: str, value: StdioArg, fds: list[int]) -> str:
    if value is None or value is subprocess.DEVNULL:
        return "devnull"
    if value is subprocess.PIPE:
        if name == "stdin":
            raise SpecError("stdin", "stdin=PIPE is not supported; pass the bytes as input=")
        return "capture"
    if value is subprocess.STDOUT:
        if name != "stderr":
            raise SpecError(name, "STDOUT is only meaningful for stderr")
        return "stdout"
    fd = value if isinstance(value, int) else value.fileno()
    try:
        check_stdio_fd(name, fd)
    except OSError:
        raise SpecError(name, f"{value!r} is not an open file descriptor") from None
    fds.append(fd)
    return "fd"
