"""How a refusal is answered: the HTTP status, the field at fault, the body.

One table (``STATUS``) maps what a route may raise to its status: the answer of a plain
request (``answer``) and the ``error`` event of a stream that has begun (``error_event``)
come from it alike. The body is FastAPI's shape, ``{"detail": [{"loc", "msg", ...}]}``, with
``error`` (the engine's exception's name) and an OSError's ``errno``, from which
RemoteSandbox raises the same error a local sandbox would.
"""

from __future__ import annotations

from typing import Any

from nsbox import NsboxError, SecurityError, SpecError

from ._admission import Busy


class Refusal(Exception):
    """An HTTP refusal: status, the field at fault (or None), why, and where the field is
    (``body``, or ``header`` for who asks)."""

    def __init__(
        self,
        status: int,
        field: str | None,
        message: str,
        headers: dict[str, str] | None = None,
        where: str = "body",
    ) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}
        self.where = where


class Refused(Exception):
    """A field of the request is out of bounds (answered 422, naming it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


#: By precedence (the first class the exception is an instance of): status, and the field.
STATUS: tuple[tuple[type[Exception], int, Any], ...] = (
    (Refused, 422, lambda e: e.field),
    (SpecError, 422, lambda e: e.options[0].split(" (")[0] if e.options else None),
    (SecurityError, 422, lambda e: "path"),
    (FileNotFoundError, 404, lambda e: "path"),
    (OSError, 409, lambda e: "path"),
    (Busy, 429, lambda e: None),
    # nsbox could not make or keep a sandbox (the host's resources, a root that fails): 503.
    (NsboxError, 503, lambda e: None),
)
HANDLED: tuple[type[Exception], ...] = tuple(kind for kind, _, _ in STATUS)


def answer(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) of a refusal."""
    if isinstance(exc, Refusal):
        return exc.status, _body(exc.status, exc.field, exc.message, None, exc.where), exc.headers
    status, field = next(((s, f(exc)) for kind, s, f in STATUS if isinstance(exc, kind)), (500, None))
    headers = retry_after(exc.retry_after) if isinstance(exc, Busy) else {}
    return status, _body(status, field, str(exc), exc), headers


def error_event(exc: Exception) -> dict[str, Any]:
    """The data of an ``error`` event: the first detail of the refusal's body."""
    body = answer(exc)[1]
    detail: dict[str, Any] = body["detail"][0]
    return detail


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


def _body(status: int, field: str | None, message: str, error: Exception | None, where: str = "body") -> dict[str, Any]:
    if field == "path":
        where = "path"  # a file's path is in the URL
    detail: dict[str, Any] = {"loc": [where, field] if field else [where], "msg": message, "status": status}
    if error is not None:  # what RemoteSandbox raises again: the engine's error, or the OSError's errno
        detail["error"] = type(error).__name__
        if isinstance(error, SpecError | Refused):
            detail["msg"] = error.message
        if isinstance(error, OSError):
            detail["errno"], detail["msg"] = error.errno, error.strerror or message
    return {"detail": [detail]}
