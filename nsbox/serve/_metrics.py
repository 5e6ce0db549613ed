"""The counters behind ``GET /metrics``, in Prometheus' text format (version 0.0.4)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

#: Upper bounds of the latency histogram's buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: collections.Counter[tuple[str, str]] = collections.Counter()  #: (endpoint, status)
        self.refusals: collections.Counter[str] = collections.Counter()  #: by HTTP status
        self._buckets = [0] * len(BUCKETS)
        self._count = 0
        self._sum = 0.0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def ran(self, endpoint: str, status: str, seconds: float) -> None:
        with self._lock:
            self.runs[(endpoint, status)] += 1
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1

    def refused(self, status: int) -> None:
        with self._lock:
            self.refusals[str(status)] += 1

    def render(self) -> str:
        lines: list[str] = []
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(read())}"]
        with self._lock:
            lines += [
                "# HELP nsbox_runs_total Runs answered, by endpoint and status.",
                "# TYPE nsbox_runs_total counter",
            ]
            for (endpoint, status), n in sorted(self.runs.items()):
                lines.append(f'nsbox_runs_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += [
                "# HELP nsbox_refusals_total Requests refused, by HTTP status.",
                "# TYPE nsbox_refusals_total counter",
            ]
            for code, n in sorted(self.refusals.items()):
                lines.append(f'nsbox_refusals_total{{code="{code}"}} {n}')
            name = "nsbox_run_seconds"
            lines += [f"# HELP {name} Time to answer a run.", f"# TYPE {name} histogram"]
            for bound, n in zip(BUCKETS, self._buckets, strict=True):
                lines.append(f'{name}_bucket{{le="{bound:g}"}} {n}')
            lines += [
                f'{name}_bucket{{le="+Inf"}} {self._count}',
                f"{name}_sum {self._sum:.6f}",
                f"{name}_count {self._count}",
            ]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
