"""The seed template's two functions (``ai_sandbox.executor`` / ``ai_sandbox.security``),
with the kernel's isolation behind them instead of RestrictedPython's.

``execute_ai_code(code, inputs)`` runs the code in a fresh sandbox and returns its
``result``. ``safe_path_access(path, base)`` is for the HOST side of a service: it
resolves a path the model chose and refuses one that leaves ``base``. It returns a path,
so a symlink swapped in after the check could still redirect the later open(): for files
that a sandbox can change, use the session's file API, which resolves in the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ._errors import SecurityError, SpecError
from ._sandbox import NsSandbox


def execute_ai_code(code: str, inputs: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """Run ``code`` in a fresh sandbox (``options`` as for NsSandbox) with ``inputs`` as
    variables, and return the JSON value it assigned to ``result``. ExecutionFailed if the
    code raised, was killed, or left no JSON-serialisable ``result``."""
    with NsSandbox(**options) as sandbox:
        return sandbox.execute_ai_code(code, inputs)


def safe_path_access(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """``path`` (relative to ``base``, default the current directory, or absolute) resolved
    through every symlink; SecurityError unless it stays inside ``base``."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\0" in text:
        raise SpecError("path", f"{path!r} is not a path")
    root = os.path.realpath(os.getcwd() if base is None else os.fspath(base))
    resolved = os.path.realpath(os.path.join(root, text))
    if resolved != root and not resolved.startswith(root.rstrip("/") + "/"):
        raise SecurityError(f"{text!r} resolves to {resolved!r}, outside {root!r}")
    return resolved
