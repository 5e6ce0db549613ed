"""McpOptions: what the operator set for the MCP tools' sandboxes, checked when built.

Every limit and the network policy are the operator's (command-line options, or ``nsbox
serve``'s): a tool's arguments can only shorten a call's timeout, never raise a limit or
open the network. ``flags`` names the option that sets each limit, so that a refusal can
say which one to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nsbox import SandboxSpec, SpecError

#: The option that sets each limit, in ``nsbox mcp``'s words (``nsbox serve`` has its own).
MCP_FLAGS = {"memory": "--memory", "timeout": "--timeout", "network": "--net", "packages": "--wheels"}


@dataclass(frozen=True)
class McpOptions:
    spec: SandboxSpec = field(default_factory=SandboxSpec)  #: every session's sandbox and run_code's
    workers: int = 1  #: sandboxes running run_code's programs at once
    idle_ttl: float = 600.0  #: a client's session unused this long is destroyed
    lifetime: float | None = None  #: and any session this old (None: no such bound)
    max_sessions: int = 16  #: sessions at once, all clients together (stdio has one client)
    sessions_per_owner: int = 8  #: sessions at once of one token (HTTP)
    flags: Mapping[str, str] = field(default_factory=lambda: dict(MCP_FLAGS))

    def __post_init__(self) -> None:
        for name in ("workers", "max_sessions", "sessions_per_owner"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(name, f"{value!r}: a whole number of at least 1")
        if not self.idle_ttl > 0:
            raise SpecError("idle_ttl", "must be more than 0")
        if self.lifetime is not None and not self.lifetime > 0:
            raise SpecError("lifetime", "must be more than 0")
        if self.spec.limits.timeout is None:
            raise SpecError("timeout", "the MCP tools need a timeout: an agent's call must end")

    @property
    def timeout(self) -> float:
        return float(self.spec.limits.timeout or 0)

    def limits_text(self) -> str:
        """The limits, as the tools' descriptions and refusals show them."""
        limits = self.spec.limits
        parts = [f"memory {_size(limits.memory)}" if limits.memory else "memory: no limit"]
        parts.append(f"timeout {self.timeout:g} s per call")
        if limits.cpus:
            parts.append(f"{limits.cpus:g} CPU")
        parts.append(f"workspace {_size(self.spec.workspace_size)}")
        return ", ".join(parts) + f"; {self.network_text()}"

    def network_text(self) -> str:
        policy = self.spec.network
        if policy.mode == "none":
            return "no network"
        hosts = ", ".join(str(h) for h in policy.allowed_hosts) or "none"
        return f"network only to {hosts} (through a proxy: HTTP_PROXY and HTTPS_PROXY are set)"


def _size(value: int | None) -> str:
    if not value:
        return "none"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return f"{value} bytes"
