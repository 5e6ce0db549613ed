"""SandboxClient: the asynchronous front-end, with the names hosted AI sandboxes use.

A thin mirror of NsSandbox over the same core: every call runs the synchronous method in
the client's own worker thread (one per client, so its calls keep their order), and the
event loop only awaits it. The blocking work is waiting on the supervisor's socket, so
a thread costs nothing while it waits and never blocks the loop.

Names from the seeds: ``memory_limit``, ``cpu_limit``, ``execution_timeout`` (or
``timeout``), ``max_processes``, ``allow_network``, ``allowed_hosts``, ``network_timeout``;
``setup()``, ``execute_code()`` (a response with ``.success``, ``.data["output"]``,
``.error``) and ``cleanup()``. Any other NsSandbox option may be passed too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._display import DisplayItem
from ._errors import SandboxError, SpecError
from ._files import FileInfo
from ._remote import RemoteSandbox
from ._result import ExecutionResult, RunResult
from ._sandbox import NsSandbox
from ._spec import NetworkPolicy

if TYPE_CHECKING:  # asyncio costs ~40 ms to import: only when a client is used, not for the CLI
    import asyncio
    import concurrent.futures

    from ._judge import JudgeResult
    from ._pool import SandboxPool

_T = TypeVar("_T")
_A = TypeVar("_A")  #: what a callback is given: text, or a DisplayItem
#: The constructor's defaults, as NsSandbox options (a pooled client must keep them).
_DEFAULTS: dict[str, Any] = {"memory": "512M", "cpus": 1, "pids": 64, "timeout": 60.0, "network": NetworkPolicy()}


class SandboxClient:
    """An asynchronous sandbox session. ``async with SandboxClient(...) as client:``, or
    ``await client.setup()`` ... ``await client.cleanup()``."""

    def __init__(
        self,
        memory_limit: str | int = "512M",
        cpu_limit: float = 1,
        execution_timeout: float | None = None,
        timeout: float | None = None,
        max_processes: int = 64,
        allow_network: bool = False,
        allowed_hosts: Sequence[str] = (),
        network_timeout: float | None = None,
        pool: SandboxPool | None = None,
        pool_timeout: float | None = 30.0,
        url: str | None = None,
        token: str | None = None,
        **options: Any,
    ) -> None:
        """``pool``: setup() takes a started sandbox from it (its spec: no other option then).
        ``url`` (and ``token``): a session of an ``nsbox serve`` server (a RemoteSandbox)."""
        if execution_timeout is not None and timeout is not None:
            raise SpecError(("execution_timeout", "timeout"), "timeout is another name of execution_timeout: pass one")
        if not isinstance(allow_network, bool):
            raise SpecError("allow_network", f"{allow_network!r} is not true or false")
        if isinstance(allowed_hosts, str) or not all(isinstance(h, str) for h in allowed_hosts):
            raise SpecError("allowed_hosts", "give a list of host names")
        self.allow_network = allow_network
        self.allowed_hosts = tuple(allowed_hosts)
        self.network_timeout = network_timeout
        network = NetworkPolicy.parse(options.pop("network", None))  # its other settings (hosts, rate...)
        if network.mode != "none" and not allow_network:
            raise SpecError(("allow_network", "network"), f"network {network.mode!r} needs allow_network=True")
        if allow_network:
            network = dataclasses.replace(
                network,
                mode="allow" if network.mode == "none" else network.mode,
                allowed_hosts=self.allowed_hosts or network.allowed_hosts,
                timeout=network.timeout if network_timeout is None else network_timeout,
            )
        elif self.allowed_hosts or network_timeout is not None:
            raise SpecError(
                ("allow_network", "allowed_hosts"), "allowed_hosts and network_timeout need allow_network=True"
            )
        limit = execution_timeout if execution_timeout is not None else timeout
        self._options = {
            "memory": memory_limit,
            "cpus": cpu_limit,
            "pids": max_processes,
            "timeout": 60.0 if limit is None else limit,
            "network": network,
            **options,
        }
        self._pool = pool
        self._pool_timeout = pool_timeout
        self.sandbox: NsSandbox | RemoteSandbox
        if url is not None:
            if pool is not None:
                raise SpecError(("url", "pool"), "a client has a server's session or a pool's sandbox, not both")
            self.sandbox = RemoteSandbox(url, token=token, **self._options)
        elif pool is not None:
            given = {k for k, v in self._options.items() if v != _DEFAULTS.get(k, v) or k not in _DEFAULTS}
            if given:
                raise SpecError(tuple(sorted(given)), "a pooled client has the pool's options; pass none")
            self.sandbox = NsSandbox(pool.spec)  # a placeholder until setup() takes one from the pool
        else:
            self.sandbox = NsSandbox(**self._options)  # validates every option now
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def setup(self) -> SandboxClient:
        """Create the sandbox (its namespaces, cgroup and workspace), or take one from the pool."""
        if self._pool is not None and isinstance(self.sandbox, NsSandbox) and not self.sandbox._healthy():
            self.sandbox = await self._call(self._pool.acquire, self._pool_timeout)
            return self
        await self._call(self.sandbox.start)
        return self

    async def cleanup(self) -> None:
        """Destroy the sandbox; returns once every process of it is gone. Idempotent.
        A call still running (say, after its task was cancelled) ends with SandboxError."""
        try:
            # Not through the worker, which may be busy with that call: close() interrupts it.
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, self.sandbox.close)
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=False)
                self._worker = None

    async def __aenter__(self) -> SandboxClient:
        return await self.setup()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cleanup()

    @property
    def closed(self) -> bool:
        return self.sandbox.closed

    # -- the session's operations (NsSandbox's, awaited) -----------------------------------------
    async def execute_code(
        self,
        code: str,
        *,
        timeout: Any = None,
        on_stdout: Callable[[str], Any] | None = None,
        on_stderr: Callable[[str], Any] | None = None,
        on_result: Callable[[DisplayItem], Any] | None = None,
    ) -> ExecutionResult:
        """``on_stdout`` / ``on_stderr``: called on this event loop with the output as it
        comes, ``on_result`` with each display item as the cell shows it; plain functions or
        coroutine functions (each call is then a task). The loop is never blocked: the cell
        runs in the client's worker thread."""
        import asyncio

        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        loop = asyncio.get_running_loop()
        for name, callback in (("on_stdout", on_stdout), ("on_stderr", on_stderr), ("on_result", on_result)):
            if callback is not None:
                kwargs[name] = _on_loop(loop, callback)
        return await self._call(self.sandbox.execute_code, code, **kwargs)

    async def execute_ai_code(self, code: str, inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        return await self._call(self.sandbox.execute_ai_code, code, inputs, **kwargs)

    async def run(self, args: Sequence[str | os.PathLike[str]], **kwargs: Any) -> RunResult:
        """NsSandbox.run's arguments; ``on_stdout`` / ``on_stderr`` as execute_code's."""
        import asyncio

        loop = asyncio.get_running_loop()
        for name in ("on_stdout", "on_stderr"):
            if kwargs.get(name) is not None:
                kwargs[name] = _on_loop(loop, kwargs[name])
        return await self._call(self.sandbox.run, args, **kwargs)

    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        await self._call(self.sandbox.write_file, path, data, mode=mode)

    async def read_file(self, path: str) -> bytes:
        return await self._call(self.sandbox.read_file, path)

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        return await self._call(self.sandbox.list_files, path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._call(self.sandbox.remove, path, recursive=recursive)

    async def upload(
        self, host_path: str | os.PathLike[str], dest: str | None = None, *, follow_symlinks: bool = False
    ) -> None:
        await self._call(self.sandbox.upload, host_path, dest, follow_symlinks=follow_symlinks)

    async def download(self, src: str, host_path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> None:
        await self._call(self.sandbox.download, src, host_path, follow_symlinks=follow_symlinks)

    async def install_packages(self, packages: Sequence[str], **kwargs: Any) -> RunResult:
        return await self._call(self.sandbox.install_packages, packages, **kwargs)

    async def run_code(self, code: str, **kwargs: Any) -> RunResult:
        return await self._call(self.sandbox.run_code, code, **kwargs)

    async def judge(self, code: str, tests: Sequence[Any], **kwargs: Any) -> JudgeResult:
        return await self._call(self.sandbox.judge, code, tests, **kwargs)

    async def _call(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self.sandbox.closed:
            raise SandboxError("the sandbox is closed")
        import asyncio
        import concurrent.futures

        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nsbox-client")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, functools.partial(method, *args, **kwargs))


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[_A], Any]) -> Callable[[_A], None]:
    """``callback`` called on ``loop`` from another thread, in order; a coroutine it returns
    runs as a task whose exception is dropped, as a plain callback's is."""

    def call(given: _A) -> None:
        try:
            result = callback(given)
        except Exception:  # the caller's code: it must not break the session
            return
        if inspect.isawaitable(result):
            import asyncio

            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def hand_over(given: _A) -> None:
        loop.call_soon_threadsafe(call, given)

    return hand_over
