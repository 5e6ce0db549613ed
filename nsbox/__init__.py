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
root
    A root filesystem for ``--rootfs NAME``, built from a recipe (``build_rootfs``) or
    imported from an image (``import_rootfs``); bound read-only into each sandbox.
server
    ``nsbox serve``: sandboxes over HTTP (the ``serve`` extra); ``RemoteSandbox`` and
    ``SandboxClient(url=...)`` are its sessions, with the local classes' methods and results.
workspace
    ``/workspace``: the sandbox's writable tmpfs, reachable from outside only through the
    file API (``write_file``, ``read_file``...), which never follows a symlink.
"""

from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): `nsbox exec` imports nsbox._cli, which
# imports this package first, and must not pay for the embedding API it does not use.
if TYPE_CHECKING:
    from ._client import SandboxClient
    from ._display import DisplayItem
    from ._errors import (
        ExecutionFailed,
        ImageError,
        NsboxError,
        ProtocolError,
        RootfsError,
        RunFailed,
        SandboxError,
        SecurityError,
        SetupError,
        SpecError,
    )
    from ._files import FILE_LIMIT, FileInfo
    from ._judge import Judge, JudgeResult, TestVerdict, Verdict
    from ._pool import AsyncSandboxPool, SandboxPool
    from ._remote import RemoteSandbox
    from ._result import ExecutionResult, RunResult, Status
    from ._rootfs import StoredRoot, build_rootfs, import_rootfs, list_rootfs, remove_rootfs
    from ._sandbox import NsSandbox
    from ._spec import Limits, Mount, NetworkPolicy, SandboxSpec, Seccomp
    from ._template import execute_ai_code, safe_path_access

#: Where each public name lives.
_MODULE_OF = {
    "SandboxClient": "_client",
    "DisplayItem": "_display",
    **dict.fromkeys(
        (
            "ExecutionFailed",
            "ImageError",
            "NsboxError",
            "ProtocolError",
            "RootfsError",
            "RunFailed",
            "SandboxError",
            "SecurityError",
            "SetupError",
            "SpecError",
        ),
        "_errors",
    ),
    "FILE_LIMIT": "_files",
    "FileInfo": "_files",
    **dict.fromkeys(("Judge", "JudgeResult", "TestVerdict", "Verdict"), "_judge"),
    "AsyncSandboxPool": "_pool",
    "SandboxPool": "_pool",
    "RemoteSandbox": "_remote",
    "ExecutionResult": "_result",
    "RunResult": "_result",
    "Status": "_result",
    **dict.fromkeys(("StoredRoot", "build_rootfs", "import_rootfs", "list_rootfs", "remove_rootfs"), "_rootfs"),
    "NsSandbox": "_sandbox",
    **dict.fromkeys(("Limits", "Mount", "NetworkPolicy", "SandboxSpec", "Seccomp"), "_spec"),
    "execute_ai_code": "_template",
    "safe_path_access": "_template",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'nsbox' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "FILE_LIMIT",
    "AsyncSandboxPool",
    "DisplayItem",
    "ExecutionFailed",
    "ExecutionResult",
    "FileInfo",
    "ImageError",
    "Judge",
    "JudgeResult",
    "Limits",
    "Mount",
    "NetworkPolicy",
    "NsSandbox",
    "NsboxError",
    "ProtocolError",
    "RemoteSandbox",
    "RootfsError",
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
    "StoredRoot",
    "TestVerdict",
    "Verdict",
    "__version__",
    "build_rootfs",
    "execute_ai_code",
    "import_rootfs",
    "list_rootfs",
    "remove_rootfs",
    "safe_path_access",
]
