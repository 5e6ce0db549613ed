"""ServeOptions: every setting of ``nsbox serve``, checked when it is built.

The maxima cap what a request may ask for (a request above one is refused, naming its
field); the defaults fill what it leaves out. The memory budget bounds the sum of the
memory limits of every sandbox the server holds at once (the run_code workers', the
sessions', the one-shot sandboxes of ``fetch_files``): past it, a new session or run is
refused with 429 rather than admitted to compete for memory the host does not have.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from nsbox import SpecError

MiB = 1024 * 1024
GiB = 1024 * MiB
#: Addresses that only this host reaches: the server may listen there without tokens.
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080  #: 0: any free one (the command prints which)
    token_file: str | None = None  #: one token per line, optionally followed by a name
    audit_log: str | None = None  #: JSON lines: every request and refusal, by token name
    max_sandboxes: int = 16  #: live sessions, all tokens together
    pool_size: int = 2  #: sessions' sandboxes started ahead of need (0: none)
    workers: int = 2  #: sandboxes running one-shot programs (/run_code) at once
    queue: int = 64  #: one-shot requests waiting for a worker; beyond it, 429 at once
    memory_budget: int = 8 * GiB  #: sum of the memory limits of every sandbox held at once
    default_memory: int = 512 * MiB
    max_memory: int = 2 * GiB
    default_timeout: float = 30.0
    max_timeout: float = 300.0
    max_cpus: float = 2.0
    max_pids: int = 256
    max_workspace: int = GiB
    session_idle_ttl: float = 600.0  #: a session unused this long is destroyed
    session_lifetime: float = 3600.0  #: and any session this old
    sessions_per_token: int = 8
    requests_per_minute: int = 600  #: per token; beyond it, 429 with Retry-After
    max_body: int = 16 * MiB  #: a longer request body is refused with 413
    max_batch: int = 64  #: programs in one /v1/run_code_batch request
    output_limit: int = MiB  #: what a one-shot program's stdout and stderr each keep
    max_connections: int = 512  #: connections at once (uvicorn answers 503 beyond)
    wheels: str | None = None  #: a host folder of wheels for sessions' install_packages
    grace: float = 30.0  #: on SIGTERM, how long running requests may take to finish
    mcp: bool = False  #: the MCP tools at /mcp (Streamable HTTP; the mcp extra)

    def __post_init__(self) -> None:
        for name in (
            "max_sandboxes",
            "workers",
            "sessions_per_token",
            "requests_per_minute",
            "max_batch",
            "max_connections",
        ):
            _at_least(name, getattr(self, name), 1)
        for name in ("pool_size", "queue"):
            _at_least(name, getattr(self, name), 0)
        _at_least("max_pids", self.max_pids, 1)
        _at_least("port", self.port, 0)  # 0: any free port
        if self.port > 65535:
            raise SpecError("port", f"{self.port} is not a TCP port")
        for name in ("session_idle_ttl", "session_lifetime", "default_timeout", "max_timeout", "grace", "max_cpus"):
            if not getattr(self, name) > 0:
                raise SpecError(name, "must be more than 0")
        if self.pool_size > self.max_sandboxes:
            raise SpecError(("pool_size", "max_sandboxes"), "the pool cannot hold more than max_sandboxes")
        if self.default_memory > self.max_memory:
            raise SpecError(("default_memory", "max_memory"), "the default is above the maximum")
        if self.default_timeout > self.max_timeout:
            raise SpecError(("default_timeout", "max_timeout"), "the default is above the maximum")
        if self.max_body < MiB:
            raise SpecError("max_body", "at least 1 MiB")
        held = self.workers * self.max_memory + self.pool_size * self.default_memory
        if held > self.memory_budget:
            raise SpecError(
                ("memory_budget", "workers", "pool_size"),
                f"the workers (--max-memory each) and the pool alone hold {held >> 20} MiB of memory limits; "
                f"the budget is {self.memory_budget >> 20} MiB",
            )
        if self.token_file is None and not is_loopback(self.host):
            raise SpecError(
                ("host", "token_file"),
                f"{self.host!r} is reachable from other hosts: without --token-file nsbox serve listens only on "
                "a loopback address (127.0.0.1, ::1)",
            )

    def replace(self, **changes: object) -> ServeOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(name, f"{value!r}: a whole number of at least {low}")
