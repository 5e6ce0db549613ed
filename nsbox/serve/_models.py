"""The request bodies of the session API (unknown fields are refused, naming them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nsbox import NsSandbox, list_rootfs

from ._errors import Refused
from ._options import ServeOptions

#: The most output of one run a session may keep (the engine's default).
MAX_OUTPUT = 16 * 1024 * 1024
#: Longest argv, in arguments.
MAX_ARGS = 4096


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SandboxRequest(Strict):
    """A session's spec: SandboxSpec's fields a client may set, within the server's maxima.
    Binds, the seccomp policy, the network and the audit log are the server's, not a request's."""

    memory: int | str | None = None
    cpus: float | None = None
    pids: int | None = None
    timeout: float | None = None
    workspace_size: int | str | None = None
    output_limit: int | str | None = None
    rootfs: str | None = None
    env: dict[str, str] | None = None

    def sandbox(self, options: ServeOptions) -> NsSandbox:
        """An NsSandbox of this spec (not started); Refused for a field past a maximum."""
        if self.rootfs is not None and self.rootfs not in {root.name for root in list_rootfs()}:
            # By name only (a request names no host folder), and the same answer for any name
            # that is not a stored root: nothing of the host's folders is told.
            raise Refused("rootfs", "not the name of a root stored on this server (nsbox rootfs list)")
        given = self.model_dump(exclude_none=True)
        sandbox = NsSandbox(
            **{"memory": options.default_memory, "timeout": options.default_timeout, **given},
            audit_log=options.audit_log,
            wheels=options.wheels,
        )
        limits = sandbox.spec.limits
        for field, value, most in (
            ("memory", limits.memory, options.max_memory),
            ("cpus", limits.cpus, options.max_cpus),
            ("pids", limits.pids, options.max_pids),
            ("workspace_size", sandbox.spec.workspace_size, options.max_workspace),
            ("output_limit", limits.output_limit, MAX_OUTPUT),
        ):
            if value > most:
                raise Refused(field, f"{value:g} is above this server's maximum, {most:g}")
        if limits.timeout is None or limits.timeout > options.max_timeout:
            raise Refused("timeout", f"at most {options.max_timeout:g} s on this server")
        return sandbox


class RunRequest(Strict):
    args: list[str] = Field(min_length=1, max_length=MAX_ARGS)
    stdin: str | None = None  #: text given as standard input
    timeout: float | None = None
    env: dict[str, str] | None = None
    cwd: str = "/workspace"


class ExecuteRequest(Strict):
    code: str
    timeout: float | None = None
    inputs: dict[str, Any] | None = None  #: execute_ai_code: JSON values as variables
    want_result: bool = False  #: execute_ai_code: answer the variable ``result``


class RunCodeInSession(Strict):
    """run_code in a session's sandbox: stdin and files' contents base64."""

    code: str
    language: str = "python"
    stdin: str | None = None
    timeout: float | None = None
    memory: int | str | None = None
    files: dict[str, str] | None = None


class JudgeRequest(Strict):
    """judge in a session's sandbox: tests' inputs and outputs are text."""

    code: str
    tests: list[tuple[str, str]] = Field(max_length=10_000)
    language: str = "python"
    timeout: float | None = None
    memory: int | str | None = None
    compare: str = "exact"
    tolerance: float = 1e-6
    stop_on_failure: bool = False
    compile_timeout: float | None = None


class PackagesRequest(Strict):
    packages: list[str] = Field(min_length=1, max_length=256)
    timeout: float | None = None


def capped_timeout(value: float | None, options: ServeOptions, field: str = "timeout") -> float:
    """A request's timeout: the server's default if none, Refused past its maximum."""
    if value is None:
        return options.default_timeout
    if not 0 < value <= options.max_timeout:
        raise Refused(field, f"{value:g} s; this server takes more than 0 up to {options.max_timeout:g} s")
    return value
