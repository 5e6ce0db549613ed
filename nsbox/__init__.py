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
kernel
    The session's Python process behind ``execute_code`` (inside, under the same policy);
    its variables persist between calls until it dies (``state_lost``).
workspace
    ``/workspace``: the sandbox's writable tmpfs, reachable from outside only through the
    file API (``write_file``, ``read_file``...), which never follows a symlink.
"""

from ._client import SandboxClient
from ._errors import (
    ExecutionFailed,
    NsboxError,
    ProtocolError,
    RunFailed,
    SandboxError,
    SecurityError,
    SetupError,
    SpecError,
)
from ._files import FILE_LIMIT, FileInfo
from ._pool import AsyncSandboxPool, SandboxPool
from ._result import ExecutionResult, RunResult, Status
from ._sandbox import NsSandbox
from ._spec import Limits, Mount, NetworkPolicy, SandboxSpec, Seccomp
from ._template import execute_ai_code, safe_path_access

__version__ = "0.1.0"

__all__ = [
    "FILE_LIMIT",
    "AsyncSandboxPool",
    "ExecutionFailed",
    "ExecutionResult",
    "FileInfo",
    "Limits",
    "Mount",
    "NetworkPolicy",
    "NsSandbox",
    "NsboxError",
    "ProtocolError",
    "RunFailed",
    "RunResult",
    "SandboxClient",
    "SandboxError",
    "SandboxPool",
    "SandboxSpec",
    "Seccomp",
    "SecurityError",
    "SetupError",
    "SpecError",
    "Status",
    "__version__",
    "execute_ai_code",
    "safe_path_access",
]
