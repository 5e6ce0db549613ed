"""ClusterSession: a sandbox on one node of the cluster, with NsSandbox's methods.

The handle names the node's actor and the session's id there; it can be passed to Ray
tasks and actors. Its sandbox lives on that node only: if the node is lost (or its actor
restarted, which starts empty) every call raises ``SandboxError`` saying so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from nsbox._errors import SandboxError


class NodeLost(SandboxError):
    """The node's actor died (its node was lost, or its process killed): what it held is gone."""


class ClusterSession:
    def __init__(self, actor: Any, node: str, session: str) -> None:
        self.actor = actor
        self.node = node
        self.id = session
        self._closed = False

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise SandboxError("the session is closed")
        return remote_result(self.actor.call.remote(self.id, method, args, kwargs), self.node)

    def run(self, args: Any, **options: Any) -> Any:
        return self._call("run", args, **options)

    def execute_code(self, code: str, *, timeout: Any = None) -> Any:
        return self._call("execute_code", code, **({} if timeout is None else {"timeout": timeout}))

    def execute_ai_code(self, code: str, inputs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        return self._call("execute_ai_code", code, inputs, **options)

    def run_code(self, code: str, **options: Any) -> Any:
        return self._call("run_code", code, **options)

    def judge(self, code: str, tests: Any, **options: Any) -> Any:
        return self._call("judge", code, tests, **options)

    def write_file(self, path: str, data: bytes | str, **options: Any) -> None:
        self._call("write_file", path, data, **options)

    def read_file(self, path: str) -> bytes:
        data: bytes = self._call("read_file", path)
        return data

    def list_files(self, path: str = ".") -> Any:
        return self._call("list_files", path)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._call("remove", path, recursive=recursive)

    def install_packages(self, packages: Any, **options: Any) -> Any:
        return self._call("install_packages", packages, **options)

    def close(self) -> None:
        """Destroy the sandbox (nothing to do if its node was lost: it went with it)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(SandboxError):  # its node is gone, and its sandbox with it
            remote_result(self.actor.close_session.remote(self.id), self.node)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ClusterSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClusterSession(node={self.node!r}, id={self.id[:8]!r}...)"


def remote_result(ref: Any, node: str) -> Any:
    """``ray.get(ref)``: what the node's actor raised is raised here as itself (an
    ``NsboxError``: a refused option, a dead sandbox); a lost node is ``NodeLost``, a SandboxError."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except RayError as exc:  # the actor died: its node was lost, or its process was killed
        said = str(exc).strip().splitlines()[0][:200]
        raise NodeLost(f"node {node} was lost or its sandboxes' actor died: the sandbox is gone ({said})") from None
