"""nsbox: a Linux-namespace micro-sandbox for untrusted code, with no container daemon.

Glossary
--------
sandbox
    A session: namespaces (user, mount, pid, net, uts, ipc, cgroup), a read-only root
    on tmpfs and a tmpfs workspace, created once and used for many runs.
run
    One command executed in a sandbox; it ends with a :class:`RunResult`.
spec
    A :class:`SandboxSpec`: every option of a sandbox, validated when it is built.
supervisor
    The process outside the namespaces that owns a sandbox (creates, limits, kills).
init
    PID 1 inside a sandbox: starts runs, reaps zombies, forwards signals.
payload
    The untrusted program of a run.
"""

from ._errors import (
    NsboxError,
    ProtocolError,
    RunFailed,
    SandboxError,
    SecurityError,
    SetupError,
    SpecError,
)
from ._result import RunResult, Status
from ._sandbox import NsSandbox
from ._spec import Limits, Mount, SandboxSpec, Seccomp

__version__ = "0.1.0"

__all__ = [
    "Limits",
    "Mount",
    "NsSandbox",
    "NsboxError",
    "ProtocolError",
    "RunFailed",
    "RunResult",
    "SandboxError",
    "SandboxSpec",
    "Seccomp",
    "SecurityError",
    "SetupError",
    "SpecError",
    "Status",
    "__version__",
]
