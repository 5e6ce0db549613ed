"""The server's log: one JSON object per line, for every request and every refusal.

Each line names the token by its name (never the token), the method, the path, the status,
the time taken and, for a refusal, why. Refusals of requests without a valid token are
written at most ANONYMOUS_PER_SECOND a second (a flood of them must not fill the disk); the
rest are counted, and the next line written says how many in all (``refusals_not_logged``).

Lines go to stderr and, with ``--audit-log FILE``, are appended to that file too, the same
file the sandboxes write their security events to (each line one write to an O_APPEND file,
so lines do not mix). The file is opened as the engine opens its audit log
(``open_host_log``: never through a symlink, only a regular file with one link, created 0600).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from nsbox._hostfiles import open_host_log  # the engine's own safe opener of an operator's log

MAX_LINE = 16 * 1024
#: Refusals of requests without a valid token logged per second, at most.
ANONYMOUS_PER_SECOND = 50


class RequestLog:
    def __init__(self, path: str | None, *, echo: bool = True) -> None:
        self._fd = None if path is None else open_host_log(path, what="audit_log")
        self._echo = echo
        self._lock = threading.Lock()
        self._second = 0  #: the second whose anonymous refusals are being counted
        self._in_second = 0
        self.not_logged = 0  #: anonymous refusals past ANONYMOUS_PER_SECOND, counted only
        self._reported = 0

    def write(self, event: str, **fields: Any) -> None:
        now = time.time()
        if event == "refused" and fields.get("token") is None and not self._room(int(now)):
            return
        record = {"time": round(now, 3), "event": event, **fields}
        if self.not_logged != self._reported:  # so many were not written since the last line
            record["refusals_not_logged"], self._reported = self.not_logged, self.not_logged
        line = json.dumps(record, default=str, separators=(",", ":"))
        if len(line) > MAX_LINE:  # a long path or reason: cut, the line stays one JSON object
            record = {k: v[:1024] if isinstance(v, str) else v for k, v in record.items()}
            line = json.dumps(record, default=str, separators=(",", ":"))
        data = (line + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, data)
            if self._echo:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()

    def _room(self, second: int) -> bool:
        """Whether an anonymous refusal is logged: a flood of them (no token, a wrong one) is
        not written line by line, past ANONYMOUS_PER_SECOND a second; the next line logged
        says how many were not."""
        with self._lock:
            if second != self._second:
                self._second, self._in_second = second, 0
            self._in_second += 1
            if self._in_second > ANONYMOUS_PER_SECOND:
                self.not_logged += 1
                return False
            return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
