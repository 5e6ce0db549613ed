"""RemoteSandbox: a session of an ``nsbox serve`` server, with NsSandbox's methods and results.

``RemoteSandbox(url, token=..., memory="256M", timeout=10)`` asks the server for a session
(``POST /v1/sandboxes``) on ``start()`` (or entering it as a context manager), then each
call is one HTTP request; the results are the same classes as a local sandbox's
(``RunResult``, ``ExecutionResult``, ``FileInfo``) and the server's refusals are raised as
the same errors (SpecError naming the option, SecurityError, FileNotFoundError...). A
refusal for a bound of the server (429: a quota, its queue, its memory budget) and a
session the server ended (410, or expiry: 404) raise SandboxError. Standard library only
(``http.client``): no extra is needed on the client's side.

Differences from a local NsSandbox: a run's stdin is ``input`` only and its output is always
captured (no file objects or fds cross the network); the options are the ones a server
takes from a request (memory, cpus, pids, timeout, workspace_size, output_limit, rootfs by name, env).
"""

from __future__ import annotations

import base64
import contextlib
import errno as _errno
import http.client
import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._display import DisplayItem
from ._errors import ExecutionFailed, NsboxError, SandboxError, SecurityError, SpecError
from ._files import FILE_LIMIT, FileInfo
from ._hostfiles import read_host_file, write_host_file
from ._result import ExecutionResult, RunResult
from ._spec import NetworkPolicy

if TYPE_CHECKING:
    from ._judge import JudgeResult

#: The options a server takes from a request.
OPTIONS = ("memory", "cpus", "pids", "timeout", "workspace_size", "output_limit", "rootfs", "env")
#: How long a request may take beyond the call's own timeout.
SLACK = 60.0


class RemoteSandbox:
    """``RemoteSandbox(url, token=..., **options)``: a session of the ``nsbox serve`` at
    ``url``, made by ``start()``; use it as a context manager, or call ``close()``."""

    def __init__(self, url: str, *, token: str | None = None, **options: Any) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SpecError("url", f"{url!r}: an http:// or https:// URL of an nsbox server")
        network = NetworkPolicy.parse(options.pop("network", None))
        if network.mode != "none":
            raise SpecError("network", "a remote sandbox has the server's network policy: none")
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise SpecError(tuple(sorted(unknown)), f"a server takes only {', '.join(OPTIONS)} from a request")
        self.url = url
        self._parsed = parsed
        self._token = token
        self.options = {k: v for k, v in options.items() if v is not None}
        self.id: str | None = None
        self.info: dict[str, Any] = {}
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> RemoteSandbox:
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            if self.id is None:
                self.info = self._request("POST", "/v1/sandboxes", self.options)
                self.id = str(self.info["id"])
        return self

    def close(self) -> None:
        """Destroy the session on the server. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.id is not None:
                with contextlib.suppress(SandboxError):  # already gone (expired, or the server ended it)
                    self._request("DELETE", f"/v1/sandboxes/{self.id}")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> RemoteSandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------------
    def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        input: bytes | str | None = None,
        capture_output: bool = True,
        timeout: float | None = None,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str = "/workspace",
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
    ) -> RunResult:
        """The command's result; its output is always captured (and with callbacks, comes as
        server-sent events while it runs)."""
        argv = [os.fsdecode(a) for a in ([args] if isinstance(args, str) else args)]
        if isinstance(input, bytes):
            try:
                input = input.decode()
            except UnicodeDecodeError:
                raise SpecError("input", "a remote run's input is text (UTF-8)") from None
        body = {"args": argv, "stdin": input, "timeout": timeout, "env": dict(env) if env else None, "cwd": cwd}
        if on_stdout is None and on_stderr is None:
            result = RunResult.from_dict(self._call("run", body, timeout))
        else:
            result = RunResult.from_dict(self._streamed("run", body, timeout, on_stdout, on_stderr))
        if check:
            result.check_returncode()
        return result

    def execute_code(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        on_result: Callable[[DisplayItem], object] | None = None,
    ) -> ExecutionResult:
        """As NsSandbox.execute_code; with callbacks, the output and the display items come
        as server-sent events."""
        body = {"code": code, "timeout": timeout}
        if on_stdout is None and on_stderr is None and on_result is None:
            return ExecutionResult.from_dict(self._call("execute", body, timeout))
        return ExecutionResult.from_dict(self._streamed("execute", body, timeout, on_stdout, on_stderr, on_result))

    def execute_ai_code(self, code: str, inputs: Mapping[str, Any] | None = None, *, timeout: Any = None) -> Any:
        body = {"code": code, "timeout": timeout, "inputs": dict(inputs or {}), "want_result": True}
        answer = self._call("execute", body, timeout)
        if "failed" in answer:
            raise ExecutionFailed(ExecutionResult.from_dict(answer["failed"]))
        return answer["result"]

    def run_code(
        self,
        code: str,
        *,
        language: str = "python",
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        memory: int | str | None = None,
        files: Mapping[str, bytes | str] | None = None,
    ) -> RunResult:
        """As NsSandbox.run_code, in the session's sandbox."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        body = {
            "code": code,
            "language": language,
            "stdin": None if data is None else base64.b64encode(data).decode("ascii"),
            "timeout": timeout,
            "memory": memory,
            "files": None if not files else {n: base64.b64encode(_bytes(v)).decode("ascii") for n, v in files.items()},
        }
        return RunResult.from_dict(self._call("run_code", body, timeout))

    def judge(
        self,
        code: str,
        tests: Sequence[Mapping[str, Any] | tuple[str | bytes, str | bytes]],
        **options: Any,
    ) -> JudgeResult:
        """As NsSandbox.judge, in the session's sandbox (tests' inputs and outputs as text)."""
        from ._judge import JudgeResult, TestVerdict, Verdict

        pairs = [_test_pair(test) for test in tests]
        timeout = options.get("timeout")
        answer = self._call(
            "judge", {"code": code, "tests": pairs, **options}, None if timeout is None else timeout * len(pairs)
        )
        compiled = answer.get("compile")
        return JudgeResult(
            Verdict(answer["verdict"]),
            tuple(
                TestVerdict(t["index"], Verdict(t["verdict"]), RunResult.from_dict(t["run"])) for t in answer["tests"]
            ),
            None if compiled is None else RunResult.from_dict(compiled),
            answer.get("error"),
        )

    def install_packages(self, packages: Sequence[str], *, timeout: float | None = None) -> RunResult:
        return RunResult.from_dict(self._call("packages", {"packages": list(packages), "timeout": timeout}, timeout))

    # -- files of the workspace -----------------------------------------------------------------
    def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        content = data.encode() if isinstance(data, str) else bytes(data)
        if len(content) > FILE_LIMIT:
            raise SpecError("data", f"{len(content)} bytes; at most {FILE_LIMIT} are written")
        self._request("PUT", self._file_path(path) + f"?mode={mode}", raw=content)

    def read_file(self, path: str) -> bytes:
        data: bytes = self._request("GET", self._file_path(path), binary=True)
        return data

    def list_files(self, path: str = ".") -> list[FileInfo]:
        answer = self._request("GET", self._path("/files") + "?" + urllib.parse.urlencode({"path": path}))
        return [FileInfo.from_dict(entry) for entry in answer["entries"]]

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._request("DELETE", self._file_path(path) + ("?recursive=true" if recursive else ""))

    def upload(
        self, host_path: str | os.PathLike[str], dest: str | None = None, *, follow_symlinks: bool = False
    ) -> None:
        """As NsSandbox.upload: a regular host file, never through a symlink unless asked."""
        data = read_host_file(host_path, FILE_LIMIT, what="host_path", follow_symlinks=follow_symlinks)
        self.write_file(dest if dest is not None else os.path.basename(os.fspath(host_path)), data)

    def download(self, src: str, host_path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> None:
        """As NsSandbox.download: written beside ``host_path`` and renamed into place."""
        write_host_file(host_path, self.read_file(src), what="host_path", follow_symlinks=follow_symlinks)

    # -- HTTP ---------------------------------------------------------------------------------------
    def _path(self, rest: str) -> str:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        self.start()
        return f"/v1/sandboxes/{self.id}{rest}"

    def _file_path(self, path: str) -> str:
        if not isinstance(path, str) or not path:
            raise SpecError("path", f"{path!r} is not a path inside the workspace")
        if path.startswith("/workspace/"):  # as a local sandbox takes it: the same file, relative
            path = path[len("/workspace/") :]
        return self._path("/files/" + urllib.parse.quote(path))

    def _call(self, what: str, body: dict[str, Any], timeout: float | None) -> Any:
        return self._request("POST", self._path(f"/{what}"), body, timeout=timeout)

    def _streamed(
        self,
        what: str,
        body: dict[str, Any],
        timeout: float | None,
        on_stdout: Callable[[str], object] | None,
        on_stderr: Callable[[str], object] | None,
        on_result: Callable[[DisplayItem], object] | None = None,
    ) -> dict[str, Any]:
        """POST ``body`` to the session's ``what`` as events: the output and the display items
        (checked: the server's word is not trusted either) to the callbacks (an exception a
        callback raises is ignored), the result's JSON returned."""
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        for event, data in self._events(self._path(f"/{what}"), body, timeout):
            if event in callbacks and isinstance(data, dict):
                callback = callbacks[event]
                if callback is not None:
                    with contextlib.suppress(Exception):  # the caller's code: it must not end the call
                        callback(str(data.get("text", "")))
            elif event == "display" and on_result is not None:
                with contextlib.suppress(Exception):  # a bad item is dropped (the result has the checked ones)
                    on_result(DisplayItem.from_dict(data))
            elif event == "result" and isinstance(data, dict):
                return data
            elif event == "error" and isinstance(data, dict):
                raise _error(int(data.get("status", 500)), json.dumps({"detail": [data]}).encode())
        raise SandboxError("the server's event stream ended without a result")

    def _events(self, path: str, body: dict[str, Any], timeout: float | None) -> Iterator[tuple[str, Any]]:
        """POST ``body`` asking for server-sent events; each event's name and JSON data."""
        connection, response = self._open("POST", path, body, None, timeout, accept="text/event-stream")
        try:
            if response.status >= 400:
                raise _error(response.status, response.read())
            event: str | None = None
            for raw in response:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event is not None:
                    yield event, json.loads(line[6:])
                    event = None
        except OSError as exc:
            raise SandboxError(f"the server at {self.url} did not answer: {exc}") from exc
        finally:
            connection.close()

    def _open(
        self, method: str, path: str, body: Any, raw: bytes | None, timeout: float | None, accept: str
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        headers = {"Accept": accept}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = raw
        if body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
            headers["Content-Type"] = "application/json"
        prefix = self._parsed.path.rstrip("/")
        kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
        connection = kind(self._parsed.hostname or "", self._parsed.port, timeout=(timeout or 300.0) + SLACK)
        try:
            connection.request(method, prefix + path, body=data, headers=headers)
            return connection, connection.getresponse()
        except OSError as exc:
            connection.close()
            raise SandboxError(f"the server at {self.url} did not answer: {exc}") from exc

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        binary: bool = False,
        timeout: float | None = None,
    ) -> Any:
        connection, response = self._open(method, path, body, raw, timeout, accept="application/json")
        try:
            content = response.read()
        except OSError as exc:
            raise SandboxError(f"the server at {self.url} did not answer: {exc}") from exc
        finally:
            connection.close()
        if response.status >= 400:
            raise _error(response.status, content)
        if binary:
            return content
        return json.loads(content) if content else None


def _test_pair(test: Mapping[str, Any] | tuple[str | bytes, str | bytes]) -> tuple[str, str]:
    given, expected = (test["input"], test["output"]) if isinstance(test, Mapping) else test
    return _text(given), _text(expected)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _error(status: int, content: bytes) -> Exception:
    """The server's refusal as the error a local sandbox raises."""
    try:
        detail = json.loads(content)["detail"]
        first = detail[0] if isinstance(detail, list) else {"msg": str(detail)}
    except (ValueError, KeyError, IndexError, TypeError):
        first = {"msg": content[:200].decode("utf-8", "replace")}
    message = str(first.get("msg"))
    loc = first.get("loc") or []
    field = str(loc[-1]) if loc else "request"
    kind = first.get("error")
    if kind == "SecurityError":
        return SecurityError(message)
    if isinstance(first.get("errno"), int):
        code = int(first["errno"])
        return (
            OSError(code, message or os.strerror(code)) if code != _errno.ENOENT else FileNotFoundError(code, message)
        )
    if status == 422 or kind == "SpecError":
        return SpecError(field, message)
    if status == 401:
        return NsboxError(f"the server refused the token: {message}")
    return SandboxError(f"the server answered {status}: {message}")
