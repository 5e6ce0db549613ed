"""Who is asking: bearer tokens from a file, and each token's rate of requests.

The token file has one token per line, optionally followed by whitespace and a name (the
name is what logs and metrics show; a token is never written anywhere). Blank lines and
lines starting with ``#`` are skipped. The file must not be readable by group or others
(like ssh's keys), and each token is at least 16 characters. A presented token is compared
with every known one in constant time (``hmac.compare_digest`` of SHA-256 digests, no early
exit), so the time of a refusal says nothing of how much of a token was right.
Without a token file every request is ``anonymous`` (the server then listens on loopback only).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import stat
import threading
import time
from dataclasses import dataclass

from nsbox import SpecError

MIN_TOKEN = 16
WINDOW = 60.0


@dataclass(frozen=True)
class Principal:
    """The owner of requests and sessions: a token's name."""

    name: str


ANONYMOUS = Principal("anonymous")


class Tokens:
    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, path: str) -> Tokens:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SpecError("token_file", f"{path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise SpecError("token_file", f"{path} is not a regular file")
            if info.st_mode & 0o077:
                raise SpecError(
                    "token_file", f"{path} is readable by others (mode {info.st_mode & 0o777:o}): chmod 600"
                )
            text = file.read(1 << 20).decode("utf-8", "replace")
        entries: list[tuple[bytes, Principal]] = []
        names: set[str] = set()
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            token, name = fields[0], " ".join(fields[1:]) or f"token{number}"
            if len(token) < MIN_TOKEN:
                raise SpecError("token_file", f"line {number}: a token has at least {MIN_TOKEN} characters")
            if name in names:
                raise SpecError("token_file", f"line {number}: the name {name!r} is given twice")
            names.add(name)
            entries.append((_digest(token), Principal(name)))
        if not entries:
            raise SpecError("token_file", f"{path} holds no token")
        return cls(entries)

    def identify(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization: Bearer TOKEN`` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = _digest(token.strip())
        found = None
        for digest, principal in self._entries:  # every entry, whichever matches
            if hmac.compare_digest(given, digest):
                found = principal
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class RateLimit:
    """At most ``per_minute`` requests of one principal in any 60 s."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: dict[Principal, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, who: Principal) -> float | None:
        """None if the request may go now (and it is counted); else seconds to wait."""
        now = time.monotonic()
        with self._lock:
            times = self._times.setdefault(who, collections.deque())
            while times and times[0] <= now - WINDOW:
                times.popleft()
            if len(times) >= self.per_minute:
                return times[0] + WINDOW - now
            times.append(now)
            return None
