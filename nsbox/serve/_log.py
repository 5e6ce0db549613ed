"""The server's log: one JSON object per line, for every request and every refusal.

Each line names the token by its name (never the token), the method, the path, the status,
the time taken and, for a refusal, why. Lines go to stderr and, with ``--audit-log FILE``,
are appended to that file too, the same file the sandboxes write their security events to
(each line one write to an O_APPEND file, so lines do not mix). The file is opened as the
engine opens its audit log (``open_host_log``: never through a symlink, only a regular file
with one link, created 0600).
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


class RequestLog:
    def __init__(self, path: str | None, *, echo: bool = True) -> None:
        self._fd = None if path is None else open_host_log(path, what="audit_log")
        self._echo = echo
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
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

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
