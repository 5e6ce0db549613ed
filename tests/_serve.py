"""A real ``nsbox serve`` for the tests: a uvicorn process on 127.0.0.1, on a free port.

``served(*args, tokens={"name": "token"})`` starts ``nsbox serve --port 0 ARGS`` (with a
token file when tokens are given) and yields a ``Served``: ``request(method, path, body)``
over HTTP (stdlib ``http.client``: what any client sends), the log lines it wrote (JSON
objects), and ``stop()``: SIGTERM, and its exit code. Leaving the block stops it if the test
did not, and checks that no process of it (its sandboxes') is left.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.conftest import NSBOX_CLI, wait_until
from tests.integration._session_api import descendants

START_TIMEOUT = 60.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Served:
    def __init__(self, process: subprocess.Popen[bytes], url: str, tokens: dict[str, str]) -> None:
        self.process = process
        self.url = url
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.tokens = tokens
        self.lines: list[str] = []
        self.left_behind: set[int] = set()

    @property
    def token(self) -> str | None:
        return next(iter(self.tokens.values()), None)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | bool | None = True,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 120.0,
    ) -> Reply:
        """``body`` is sent as JSON, ``raw`` as it is; ``token=True``: the first token."""
        sent = dict(headers or {})
        if token is True:
            token = self.token
        if token:
            sent["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def log(self) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM; its exit code (0: drained and shut down)."""
        if self.process.poll() is None:
            self.left_behind.update(descendants(self.process.pid))
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextlib.contextmanager
def served(*args: str, tokens: dict[str, str] | None = None, env: dict[str, str] | None = None) -> Iterator[Served]:
    tokens = tokens or {}
    with tempfile.TemporaryDirectory(prefix="tmp-nsbox-serve-") as folder:
        argv = [NSBOX_CLI, "serve", "--port", "0", *args]
        if tokens:
            path = os.path.join(folder, "tokens")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write("# test tokens\n" + "".join(f"{token} {name}\n" for name, token in tokens.items()))
            argv += ["--token-file", path]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        assert process.stderr is not None
        url: list[str] = []
        left_behind: set[int] = set()  #: the server's processes (its sandboxes' among them), at its end
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(line)
                if line.startswith("nsbox serve: listening on "):
                    url.append(line.rsplit(" ", 1)[1])
                if '"event":"started"' in line or process.poll() is not None:
                    ready.set()
            ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert ready.wait(START_TIMEOUT), "nsbox serve did not start:\n" + "\n".join(lines)
            assert url and process.poll() is None, "nsbox serve failed:\n" + "\n".join(lines)
            server = Served(process, url[0], tokens)
            server.lines = lines
            server.left_behind = left_behind
            yield server
        finally:
            if process.poll() is None:
                left_behind.update(descendants(process.pid))
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            reader.join(10)
        alive = lambda: [pid for pid in left_behind if os.path.exists(f"/proc/{pid}")]  # noqa: E731
        assert wait_until(lambda: not alive(), 30), f"processes of the server left: {alive()}"
