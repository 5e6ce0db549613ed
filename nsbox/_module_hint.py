"""The CLI's hint after a Python payload failed on a module the sandbox does not have.

The host's Python packages (and a virtualenv's) are not inside a sandbox: ``nsbox python -c
'import numpy'`` ends in ModuleNotFoundError on a host without numpy. For a Python payload
(``python``, ``python3``, ``python3.11``...) whose stderr is the CLI's own, the stderr goes
through a pipe and a copying process: every byte on to ours as it comes (no limit, nothing
held back), its last bytes kept; if the run failed and they end in a ModuleNotFoundError, one line names the
ways to get the package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

#: How much of the end of stderr is kept to look for the error.
TAIL = 4096
_PYTHON_RE = re.compile(r"python(3(\.\d+)?)?")
_MISSING_RE = re.compile(rb"ModuleNotFoundError: No module named '([A-Za-z0-9_.]{1,200})'\s*\Z")


def is_python(argv: Sequence[str]) -> bool:
    return bool(argv) and bool(_PYTHON_RE.fullmatch(os.path.basename(argv[0])))


class StderrTail:
    """A pipe whose write end (``fd``) is the payload's stderr; a forked process (not a
    thread: the CLI is the sandbox's supervisor, which must stay single-threaded to setns)
    copies what comes to ``target`` and keeps the last TAIL bytes. ``end()`` (after the
    sandbox is closed, so every writer is gone) returns them."""

    def __init__(self, target: int) -> None:
        read, self.fd = os.pipe2(os.O_CLOEXEC)
        kept_read, kept_write = os.pipe2(os.O_CLOEXEC)
        self._pid = os.fork()
        if self._pid == 0:  # pragma: no cover - the copier
            code = 0
            try:
                os.close(self.fd)
                os.close(kept_read)
                os.write(kept_write, _copy(read, target))
            except BaseException:
                code = 1
            os._exit(code)
        os.close(read)
        os.close(kept_write)
        self._kept = kept_read

    def end(self) -> bytes:
        if self.fd < 0:
            return b""
        os.close(self.fd)
        self.fd = -1
        try:
            kept = b""
            while chunk := os.read(self._kept, TAIL):
                kept += chunk
            return kept[-TAIL:]
        finally:
            os.close(self._kept)
            os.waitpid(self._pid, 0)


def _copy(read: int, target: int) -> bytes:
    """Everything from ``read`` on to ``target``; the last TAIL bytes."""
    kept = b""
    while chunk := os.read(read, 65536):
        kept = (kept + chunk)[-TAIL:]
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(target, view) :]
        except OSError:
            pass  # our stderr is gone: nothing to pass on to, the tail is still kept
    return kept


def missing_module_hint(tail: bytes) -> str | None:
    """The hint, if stderr ends in a ModuleNotFoundError; None otherwise."""
    found = _MISSING_RE.search(tail)
    if found is None:
        return None
    name = found.group(1).decode().split(".")[0]
    return (
        f"the sandbox's Python has no module {name!r} (the host's packages are not inside): use a root "
        f"that has it (--rootfs python: numpy, pandas, matplotlib; `nsbox rootfs build python`), or "
        f"install it from a wheelhouse (--wheels DIR --install {name}; `pip download -d DIR {name}` fetches one)"
    )
