"""One session interface over both front-ends of the session API, and host-side probes.

``SyncClient`` wraps the asynchronous ``nsbox.SandboxClient`` in a synchronous adapter: the
client lives on an event loop in a background thread, and each method call submits the
coroutine to that loop (``asyncio.run_coroutine_threadsafe``) and returns its result (or
raises its exception). An ``NsSandbox`` already has the synchronous interface, so the same
test bodies run against both (the fixtures are in ``conftest.py`` next to this file).

The host-side helpers find *this* test's sandbox processes (descendants of the test
process), not every sandbox on the machine: other people run sandboxes here at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import nsbox
from nsbox._userns import HOST_ID_BASE, ID_RANGE
from tests.conftest import sandbox_processes, wait_until

#: How long one adapted call may take before the test gives up on it (a hang is a failure).
CALL_TIMEOUT = 180.0

#: NsSandbox option names -> SandboxClient's (the seeds' names); the rest pass through.
CLIENT_NAMES = {"memory": "memory_limit", "cpus": "cpu_limit", "timeout": "execution_timeout", "pids": "max_processes"}

KINDS = ("NsSandbox", "SandboxClient", "RemoteSandbox")
#: The sessions made in this process (a server's have its network policy: none).
LOCAL_KINDS = ("NsSandbox", "SandboxClient")
#: A test server's own processes (``keep_server_out``): the probes below leave them out, and
#: what its run_code workers fork later (a warm interpreter forks each program ahead of need).
_SERVER: dict[str, set[int]] = {"top": set(), "workers": set()}


def keep_server_out(server_pid: int) -> None:
    """The server ``server_pid`` and its processes now (its workers' sandboxes: no session
    has been made) are not a session's; neither is whatever those workers start later.
    ``keep_server_out(0)``: forget it."""
    if not server_pid:
        _SERVER.update(top=set(), workers=set())
        return
    below = descendants(server_pid)
    _SERVER["top"] = {server_pid, *(pid for pid in below if _ppid(pid) == server_pid)}  # itself, its spawner
    sandboxed = set(sandbox_processes())
    # The workers' supervisors: the spawner's children with a sandbox below them (a spare
    # supervisor the spawner forked ahead has none: a session may get it later).
    supervisors = {
        pid for pid in below - _SERVER["top"] if _ppid(pid) in _SERVER["top"] and descendants(pid) & sandboxed
    }
    _SERVER["workers"] = supervisors | descendants(*supervisors)


def _server_processes() -> set[int]:
    if not _SERVER["top"]:
        return set()
    return _SERVER["top"] | _SERVER["workers"] | descendants(*_SERVER["workers"])


class SyncClient:
    """A synchronous adapter around ``SandboxClient`` (see the module docstring)."""

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox-client-loop", daemon=True)
        self._thread.start()
        client_options = {CLIENT_NAMES.get(k, k): v for k, v in options.items()}

        async def make() -> Any:
            return nsbox.SandboxClient(**client_options)

        try:
            self.client = self._await(make())
            self._await(self.client.setup())
        except BaseException:
            self.shutdown()
            raise

    def _await(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=CALL_TIMEOUT)

    def _method(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._await(getattr(self.client, name)(*args, **kwargs))

        call.__name__ = name
        return call

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name in {
            "execute_code",
            "execute_ai_code",
            "run",
            "write_file",
            "read_file",
            "list_files",
            "remove",
            "upload",
            "download",
            "install_packages",
        }:
            return self._method(name)
        raise AttributeError(name)

    def close(self) -> None:
        self._await(self.client.cleanup())

    def shutdown(self) -> None:
        """Stops the loop thread (the fixture's teardown, after close())."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def open_session(kind: str, server: Any = None, **options: Any) -> Any:
    """A started session of ``kind``: an ``NsSandbox``, a ``SyncClient``, or a
    ``RemoteSandbox`` of ``server`` (a ``tests._serve.Served``)."""
    if kind == "NsSandbox":
        return nsbox.NsSandbox(**options).start()
    if kind == "RemoteSandbox":
        return nsbox.RemoteSandbox(server.url, token=server.token, **options).start()
    return SyncClient(**options)


# -- host-side probes ---------------------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the comm field may hold spaces or ")"


def descendants(*roots: int) -> set[int]:
    """Host pids of every process below the ``roots`` (a snapshot)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _uids(pid: int) -> list[int]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(u) for line in status.splitlines() if line.startswith("Uid:") for u in line.split()[1:]]


def slot_of(uid: int) -> int:
    return (uid - HOST_ID_BASE) // ID_RANGE


def my_sandbox_slots() -> set[int]:
    """The host id ranges (slots) of the sandboxes this test process runs right now.
    Rootless, where sandboxes have no id range of their own: their host pids."""
    mine = descendants(os.getpid()) - _server_processes()
    if os.geteuid() != 0:
        return {pid for pid in sandbox_processes() if pid in mine}
    return {slot_of(uid) for pid in sandbox_processes() if pid in mine for uid in _uids(pid) if uid >= HOST_ID_BASE}


def processes_in_slots(slots: set[int]) -> list[int]:
    if os.geteuid() != 0:
        return [pid for pid in sandbox_processes() if pid in slots]
    return [pid for pid in sandbox_processes() if any(slot_of(u) in slots for u in _uids(pid) if u >= HOST_ID_BASE)]


def below_helpers() -> list[int]:
    """Descendants of this process other than its direct children (the spawner helper is a
    child; every supervisor and sandbox process lies deeper). Empty once all sessions closed."""
    me = os.getpid()
    return sorted(pid for pid in descendants(me) - _server_processes() if _ppid(pid) != me)


def processes_with_argv(*argv: str) -> list[int]:
    """Host pids whose command line is exactly ``argv`` (a unique marker finds a payload)."""
    wanted = b"\0".join(a.encode() for a in argv) + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if Path(f"/proc/{entry}/cmdline").read_bytes() == wanted:
                    found.append(int(entry))
    return found


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def assert_session_left_nothing(slots: set[int], mounts_before: str) -> None:
    """After close(): no process of the session's id ranges, no supervisor or sandbox process
    below this test process, and the host's mount table as it was."""
    assert slots, "premise: the session's sandbox processes were found while it was open"
    assert wait_until(lambda: not processes_in_slots(slots)), f"sandbox processes left: {processes_in_slots(slots)}"
    assert wait_until(lambda: not below_helpers()), f"supervisor/sandbox processes left: {below_helpers()}"
    assert mountinfo() == mounts_before
