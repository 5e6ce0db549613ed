"""The audit log (``--audit-log PATH``): one JSON object per line, per security-relevant event.

Written by the supervisor, outside the sandbox: nothing inside can reach the file. Events:
``sandbox_created`` (the policy, limits, network and binds in force), ``sandbox_failed`` (set-up
refused or failed), ``run`` (each run and its verdict), ``network`` (each connection attempt
through the egress proxy: host, port, address, verdict, reason, bytes; written by the proxy),
``execution`` (each execute_code: its
verdict, not the code or its output), ``refused`` (a request nsbox itself refused: a bad run
option, a file path that leaves the workspace or crosses a symlink) and ``sandbox_closed``.
The file is opened for appending, created 0600, never through a symlink (in any component of
its path), and only if it is a regular file with one link (``_hostfiles.open_host_log``: a
FIFO or a device planted there is refused, never opened). Each event is one write(2) to an
O_APPEND file, so lines of concurrent sandboxes do not mix.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ._errors import SecurityError, SpecError
from ._hostfiles import open_host_log
from ._result import ExecutionResult, RunResult
from ._spec import SandboxSpec
from ._values import option_name

#: Longest line written; a longer event (huge argv) is cut to its essentials.
MAX_LINE = 64 * 1024


class AuditLog:
    def __init__(self, path: str | None) -> None:
        self.sandbox = os.urandom(6).hex()  #: names this sandbox in every line
        self._fd: int | None = None
        if path is not None:
            try:
                self._fd = open_host_log(path, what=option_name("audit_log"))
            except SecurityError as exc:
                raise SpecError(option_name("audit_log"), str(exc)) from None
            except OSError as exc:
                raise SpecError(option_name("audit_log"), f"cannot open {path!r}: {exc.strerror}") from None

    def created(self, spec: SandboxSpec, limits_kind: str) -> None:
        self._write(
            "sandbox_created",
            seccomp=spec.seccomp.to_dict() | {"kind": spec.seccomp.kind},
            limits=spec.to_dict()["limits"] | {"enforced_by": limits_kind},
            network=spec.network.to_dict(),
            mounts=[m.to_dict() for m in spec.all_mounts],
            rootfs=spec.rootfs or "host system directories, read-only",
        )

    def failed(self, error: Exception) -> None:
        self._write("sandbox_failed", error=str(error))

    def run(self, result: RunResult) -> None:
        self._write("run", **result.to_dict(binary="omit"))  # never the output (nor a decoded copy of it)

    def execution(self, result: ExecutionResult) -> None:
        data = result.to_dict()
        keep = ("status", "error", "state_lost", "wall_s", "cpu_s", "memory_peak_bytes", "limits", "seccomp")
        self._write("execution", **{k: data[k] for k in keep})

    def network(self, **fields: Any) -> None:
        """One connection attempt through the egress proxy (which writes it)."""
        self._write("network", **fields)

    def fds(self) -> tuple[int, ...]:
        """What a forked writer (the egress proxy) must keep open."""
        return () if self._fd is None else (self._fd,)

    def refused(self, what: str, reason: str) -> None:
        self._write("refused", what=what, reason=reason)

    def closed(self) -> None:
        self._write("sandbox_closed")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, event: str, **fields: Any) -> None:
        if self._fd is None:
            return
        record: dict[str, Any] = {"time": _utc_now()}
        record |= {"event": event, "sandbox": self.sandbox, "pid": os.getpid()} | fields
        line = json.dumps(record, sort_keys=False, default=str) + "\n"
        if len(line) > MAX_LINE:
            line = json.dumps({k: record[k] for k in ("time", "event", "sandbox", "pid")} | {"cut": True}) + "\n"
        os.write(self._fd, line.encode())


def _utc_now() -> str:
    """ISO 8601 in UTC to the millisecond, as datetime's isoformat(timespec="milliseconds")
    writes it (without importing datetime on every start)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}+00:00"
