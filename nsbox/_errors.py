"""The exception tree.

::

    NsboxError                      everything nsbox raises on purpose
    ├── SpecError (ValueError)      bad options; names the option(s); the CLI exits 125
    ├── SetupError                  a step of building the sandbox failed (stage, call, args,
    │                               errno, remedy); the CLI exits 125
    ├── SandboxError                the sandbox broke during use: it died, or sent something
    │   └── ProtocolError           malformed (everything from inside is untrusted); exit 125
    ├── SecurityError               a host-side request that would leave its boundary (a
    │                               workspace path through '..' or a symlink, safe_path_access)
    ├── RootfsError                 building, importing or removing a root filesystem failed
    │   └── ImageError              an image is malformed or a digest does not match
    ├── RunFailed                   check=True and the run did not succeed; also a
    │   (subprocess.CalledProcessError)  subprocess.CalledProcessError, as users expect
    └── ExecutionFailed             execute_ai_code's code raised, or left no JSON ``result``

A payload's own failure is never an exception: it is a :class:`~nsbox.RunResult` (or, for
Python code, an :class:`~nsbox.ExecutionResult`).
"""

from __future__ import annotations

import errno as _errno
import os
import subprocess  # nosec B404  # only for the CalledProcessError base class, nothing is run
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._result import ExecutionResult, RunResult


class NsboxError(Exception):
    """Base class of every error nsbox raises on purpose."""


class SpecError(NsboxError, ValueError):
    """An option (or combination of options) is invalid; ``options`` names them."""

    def __init__(self, options: str | tuple[str, ...], message: str) -> None:
        self.options = (options,) if isinstance(options, str) else tuple(options)
        self.message = message
        super().__init__(f"{', '.join(self.options)}: {message}")


class SetupError(NsboxError):
    """A step of building or entering the sandbox failed.

    ``stage`` says which step (e.g. ``"bind /usr read-only"``), ``call`` and ``args`` the
    system call that failed, ``errno`` its error number, ``remedy`` what the operator can do.
    """

    def __init__(
        self,
        stage: str,
        call: str = "",
        args: str = "",
        errno: int | None = None,
        remedy: str = "",
        detail: str = "",
    ) -> None:
        self.stage = stage
        self.call = call
        self.args_text = args
        self.errno = errno
        self.remedy = remedy
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"sandbox setup failed at '{self.stage}'"
        if self.call:
            text += f": {self.call}({self.args_text})"
        if self.errno is not None:
            name = _errno.errorcode.get(self.errno, str(self.errno))
            text += f" -> {name} ({os.strerror(self.errno)})"
        if self.detail:
            text += f": {self.detail}"
        if self.remedy:
            text += f"\nremedy: {self.remedy}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "call": self.call,
            "args": self.args_text,
            "errno": self.errno,
            "remedy": self.remedy,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SetupError:
        errno = data.get("errno")
        return cls(
            stage=str(data.get("stage", "?")),
            call=str(data.get("call", "")),
            args=str(data.get("args", "")),
            errno=errno if isinstance(errno, int) else None,
            remedy=str(data.get("remedy", "")),
            detail=str(data.get("detail", "")),
        )


class SandboxError(NsboxError):
    """The sandbox stopped working while in use (it died, or its supervisor did)."""


class ProtocolError(SandboxError):
    """A frame was malformed, too large or unexpected; the session is ended."""


class SecurityError(NsboxError):
    """A host-side request would leave the boundary it is confined to."""


class RootfsError(NsboxError):
    """``nsbox rootfs build/import/remove`` failed; ``remedy`` says what to do about it."""

    def __init__(self, message: str, remedy: str = "") -> None:
        self.message = message
        self.remedy = remedy
        super().__init__(message + (f"\nremedy: {remedy}" if remedy else ""))


class ImageError(RootfsError):
    """An image to import is malformed, or a blob does not match its digest."""


class RunFailed(NsboxError, subprocess.CalledProcessError):
    """Raised by ``run(..., check=True)`` when the run did not end with status ``ok``."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        subprocess.CalledProcessError.__init__(self, result.exit_code, list(result.args), result.stdout, result.stderr)

    def __str__(self) -> str:
        return (
            f"command {list(self.result.args)!r} ended with status {self.result.status.value}"
            + (f" (exit code {self.result.exit_code})" if self.result.exit_code else "")
            + (f": {self.result.error}" if self.result.error else "")
        )


class ExecutionFailed(NsboxError):
    """Raised by ``execute_ai_code`` when the code failed or left no JSON ``result``."""

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result
        super().__init__(f"the code failed with status {result.status.value}: {result.error}")
