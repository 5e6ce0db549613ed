"""NSBOX_DEBUG=steps: each set-up step's start (CLOCK_MONOTONIC) and duration on stderr.

One line per step, ``nsbox-step PID START MS NAME``, from every process that takes steps
(the supervisor's stages, the sandbox's own steps): sorted by START they are one timeline.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

ENABLED = os.environ.get("NSBOX_DEBUG") == "steps"


def record(name: str, started: float) -> None:
    if not ENABLED:
        return
    took_ms = (time.monotonic() - started) * 1e3
    with contextlib.suppress(OSError):
        os.write(2, f"nsbox-step {os.getpid()} {started:.6f} {took_ms:.3f} {name}\n".encode())


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    if not ENABLED:
        yield
        return
    started = time.monotonic()
    yield
    record(name, started)
