#!/usr/bin/env python3
"""nsbox serve's /run_code over HTTP against the same program run in-process.

A real ``nsbox serve`` on 127.0.0.1 (a free port, ``--workers`` sandboxes, a token file so
every request goes through the bearer-token check, a rate limit and a queue too large to
refuse anything) is sent SandboxFusion's request for ``print(1)`` by client threads, each
with its own keep-alive connection (stdlib ``http.client`` with TCP_NODELAY, as
urllib3, under the ``requests`` a reward function's client uses, sets it: http.client sends
a POST's headers and body in two writes), at concurrency 1, 8 and 64. For each: requests/s, latency p50 and p99 (ms,
the client's: request sent to answer read), the p50 of the server's own time as its request
log gives it (``seconds``: the app's, from request to response; what is left of the
client's is the connection's and the client's), the p50 of the program's own run as the
answer reports it (``execution_time``), and how many answers were not 200 with status
Success (each is printed; a row is valid only with none). Each thread's first request
opens its connection and is not counted.

Beside them, the in-process cost of the same program: ``Judge(workers).run_code_many``
(programs/s; latency is each program's run as its result gives it) and
``NsSandbox.run_code("print(1)")`` back to back (per call), so what HTTP, the JSON models,
auth, admission and the request log add shows. The server's RSS (VmRSS of its process; the
sandboxes are processes of their own) is read before and after the load; at the end the
server is stopped with SIGTERM and must exit 0, leaving none of its processes behind.

    .venv/bin/python scripts/bench_serve.py [--workers 2] [--json bench-serve.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nsbox

NSBOX_CLI = str(Path(sys.executable).with_name("nsbox"))
CODE = "print(1)"
BODY = json.dumps({"code": CODE, "language": "python", "run_timeout": 10}).encode()
#: (concurrency, requests counted) for each HTTP row.
LEVELS = ((1, 200), (8, 400), (64, 640))
WARMUP = 20
IN_PROCESS_RUNS = 200
START_TIMEOUT = 60.0
STOP_TIMEOUT = 90.0
REQUEST_TIMEOUT = 60.0
#: Non-JSON lines of the server's stderr kept (tracebacks, uvicorn's warnings).
KEPT_LINES = 200


class Server:
    """``nsbox serve --port 0 ARGS`` with a token file; its stderr read as it comes."""

    def __init__(self, args: list[str], folder: str) -> None:
        self.token = secrets.token_urlsafe(24)
        path = os.path.join(folder, "tokens")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(f"{self.token} bench\n")
        argv = [NSBOX_CLI, "serve", "--port", "0", "--token-file", path, *args]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.host = ""
        self.port = 0
        self.events: Counter[str] = Counter()  #: the request log's lines by event
        self.refusals: list[str] = []  #: its "refused" lines (any 4xx or 5xx)
        self.other: list[str] = []  #: lines that are not the request log's
        self.seconds: list[float] = []  #: the request log's time of each answered /run_code, ms
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or not self.port or self.process.poll() is not None:
            self.stop()
            raise SystemExit("nsbox serve did not start:\n" + "\n".join(self.other))

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("nsbox serve: listening on http://"):
                self.host, port = line.rsplit("/", 1)[1].rsplit(":", 1)
                self.port = int(port)
                continue
            try:
                record = json.loads(line)
                event = record["event"]
            except (ValueError, TypeError, KeyError):
                if len(self.other) < KEPT_LINES:
                    self.other.append(line)
                continue
            self.events[event] += 1
            if event == "refused" and len(self.refusals) < KEPT_LINES:
                self.refusals.append(line)
            if event == "request" and record.get("path") == "/run_code":
                self.seconds.append(record.get("seconds", float("nan")) * 1000)
            if event == "started":
                self._ready.set()
        self._ready.set()

    def rss_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak) of the server's process, KiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields

    def connection(self) -> Connection:
        return Connection(self.host, self.port, timeout=REQUEST_TIMEOUT)

    def stop(self) -> tuple[int, float, list[int]]:
        """SIGTERM: the exit code, the seconds it took, and its processes still alive after."""
        below = descendants(self.process.pid)
        started = time.perf_counter()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        took = time.perf_counter() - started
        self._reader.join(10)
        deadline = time.monotonic() + 30
        while (alive := [pid for pid in below if os.path.exists(f"/proc/{pid}")]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return code, took, alive


class Connection(http.client.HTTPConnection):
    """Keep-alive, with TCP_NODELAY (set again whenever it reconnects)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def descendants(root: int) -> set[int]:
    """Host pids of every process below ``root`` (a snapshot)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def post(connection: http.client.HTTPConnection, token: str) -> tuple[float, float | None, str | None]:
    """One /run_code of CODE: (client latency ms, the run's execution_time ms, what was wrong or None)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    try:
        connection.request("POST", "/run_code", body=BODY, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()  # the next request opens a new one
        return (time.perf_counter() - started) * 1000, None, f"{type(exc).__name__}: {exc}"
    latency = (time.perf_counter() - started) * 1000
    try:
        answer = json.loads(data)
        run = answer.get("run_result") or {}
    except (ValueError, AttributeError):
        answer, run = {}, {}
    ran = run.get("execution_time")
    ran_ms = ran * 1000 if isinstance(ran, (int, float)) else None
    if response.status != 200 or answer.get("status") != "Success" or run.get("stdout") != "1\n":
        return latency, ran_ms, f"{response.status}: {data[:300]!r}"
    return latency, ran_ms, None


def http_level(server: Server, concurrency: int, requests: int) -> tuple[dict[str, float], list[str]]:
    """``requests`` POSTs shared by ``concurrency`` threads, each on its own connection,
    timed from the moment every thread has one open (its first request, not counted)."""
    lock = threading.Lock()
    left = [requests]
    latencies: list[float] = []
    ran: list[float] = []
    bad: list[str] = []
    opened = threading.Barrier(concurrency + 1, timeout=2 * REQUEST_TIMEOUT)

    def client() -> None:
        connection = server.connection()
        try:
            _, _, wrong = post(connection, server.token)
            if wrong:
                with lock:
                    bad.append(f"(opening request) {wrong}")
            opened.wait()
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                latency, ran_ms, wrong = post(connection, server.token)
                with lock:
                    latencies.append(latency)
                    if ran_ms is not None:
                        ran.append(ran_ms)
                    if wrong:
                        bad.append(wrong)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    opened.wait()
    started = time.perf_counter()
    logged = len(server.seconds)  # the opening requests' lines are in (written before their answers)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + 5
    while len(server.seconds) < logged + requests - len(bad) and time.monotonic() < deadline:
        time.sleep(0.01)  # the reader of the server's stderr catching up
    in_server = server.seconds[logged:]
    row = _summary(requests, requests / elapsed, latencies)
    row.update(
        concurrency=concurrency,
        server_p50_ms=statistics.median(in_server) if in_server else float("nan"),
        run_p50_ms=statistics.median(ran) if ran else float("nan"),
        bad=len(bad),
    )
    return row, bad


def _summary(requests: int, per_second: float, latencies: list[float]) -> dict[str, float]:
    return {
        "requests": requests,
        "per_s": per_second,
        "p50_ms": statistics.median(latencies),
        "p99_ms": statistics.quantiles(latencies, n=100)[-1],
    }


def judge_many(workers: int, count: int) -> tuple[dict[str, float], list[str]]:
    """Judge.run_code_many of ``count`` CODE programs, its sandboxes warm first."""
    with nsbox.Judge(workers=workers) as judge:
        judge.run_code_many(["pass"] * workers * 2)
        started = time.perf_counter()
        results = judge.run_code_many([CODE] * count)
        elapsed = time.perf_counter() - started
    bad = [str(r) for r in results if not (r.ok and r.stdout == b"1\n")]
    row = _summary(count, count / elapsed, [r.wall_s * 1000 for r in results])
    row.update(server_p50_ms=float("nan"), run_p50_ms=row["p50_ms"], bad=len(bad))
    return row, bad


def run_code_back_to_back(runs: int) -> tuple[dict[str, float], list[str]]:
    """NsSandbox.run_code(CODE), one call after another in a live sandbox."""
    samples: list[float] = []
    bad = []
    with nsbox.NsSandbox() as sandbox:
        for _ in range(WARMUP):
            sandbox.run_code(CODE)
        for _ in range(runs):
            started = time.perf_counter()
            result = sandbox.run_code(CODE)
            samples.append((time.perf_counter() - started) * 1000)
            if not (result.ok and result.stdout == b"1\n"):
                bad.append(str(result))
    row = _summary(runs, runs / (sum(samples) / 1000), samples)
    row.update(server_p50_ms=float("nan"), run_p50_ms=float("nan"), bad=len(bad))
    return row, bad


def serve_rows(args: argparse.Namespace) -> dict[str, Any]:
    most = max(c for c, _ in LEVELS)
    options = ["--workers", str(args.workers), "--queue", str(2 * most), "--requests-per-minute", "1000000"]
    rows: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nsbox-bench-serve-") as folder:
        started = time.perf_counter()
        server = Server(options, folder)
        startup = time.perf_counter() - started
        try:
            rss_start = server.rss_kib()
            connection = server.connection()
            for _ in range(WARMUP):
                _, _, wrong = post(connection, server.token)
                if wrong:
                    problems.append(f"warm-up: {wrong}")
            connection.close()
            rss_before = server.rss_kib()
            for concurrency, requests in LEVELS:
                label = f"POST /run_code, c={concurrency}"
                rows[label], bad = http_level(server, concurrency, requests)
                problems += [f"{label}: {b}" for b in bad]
                print(f"  measured: {label}", file=sys.stderr)
            rss_after = server.rss_kib()
        finally:
            code, stop_s, alive = server.stop()
    return {
        "rows": rows,
        "problems": problems,
        "startup_s": startup,
        "rss_kib": {"started": rss_start, "before_load": rss_before, "after_load": rss_after},
        "exit_code": code,
        "stop_s": stop_s,
        "left_behind": alive,
        "log_events": dict(server.events),
        "refusals": server.refusals,
        "other_stderr": server.other,
        "options": options,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="the server's (and the Judge's) sandboxes (2)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    began = time.perf_counter()
    served = serve_rows(args)
    rows: dict[str, dict[str, float]] = dict(served["rows"])
    problems: list[str] = list(served["problems"])
    in_process = max(n for _, n in LEVELS)
    label = f"Judge(workers={args.workers}).run_code_many"
    rows[label], bad = judge_many(args.workers, in_process)
    problems += [f"{label}: {b}" for b in bad]
    print(f"  measured: {label}", file=sys.stderr)
    label = "NsSandbox.run_code back to back"
    rows[label], bad = run_code_back_to_back(IN_PROCESS_RUNS)
    problems += [f"{label}: {b}" for b in bad]
    print(f"  measured: {label}", file=sys.stderr)

    print(f"\n{CODE!r}, {args.workers} workers (server: {' '.join(served['options'])}):")
    print(
        f"{'way':38} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'server p50':>10} {'run p50':>8} "
        f"{'bad':>4}"
    )
    for label, row in rows.items():
        print(
            f"{label:38} {int(row['requests']):8d} {row['per_s']:7.1f} {row['p50_ms']:8.2f} "
            f"{row['p99_ms']:8.2f} {row['server_p50_ms']:10.2f} {row['run_p50_ms']:8.2f} {int(row['bad']):4d}"
        )
    print(
        "(server p50: the request log's time of each answer; run p50: the program's own run, as the answer's "
        "execution_time or the result's wall_s gives it)"
    )
    rss = {k: v.get("VmRSS", 0) / 1024 for k, v in served["rss_kib"].items()}
    peak = served["rss_kib"]["after_load"].get("VmHWM", 0) / 1024
    print(
        f"server RSS: {rss['started']:.1f} MiB started, {rss['before_load']:.1f} after {WARMUP} warm-up requests, "
        f"{rss['after_load']:.1f} after the load (peak {peak:.1f}); started in {served['startup_s']:.1f} s"
    )
    print(
        f"server log: {', '.join(f'{n} {e}' for e, n in sorted(served['log_events'].items()))}; "
        f"SIGTERM: exit {served['exit_code']} in {served['stop_s']:.1f} s"
        + (f", processes left: {served['left_behind']}" if served["left_behind"] else "")
    )
    for line in served["refusals"][:20]:
        print(f"  refused: {line}")
    for line in served["other_stderr"][:20]:
        print(f"  server stderr: {line}")
    for problem in problems[:50]:
        print(f"  bad answer: {problem}")
    total = time.perf_counter() - began
    print(f"total {total:.1f} s")
    if args.json:
        data = {
            "code": CODE,
            "workers": args.workers,
            "rows": rows,
            "server": {k: v for k, v in served.items() if k not in ("rows", "problems")},
            "problems": problems,
            "total_s": total,
        }
        Path(args.json).write_text(json.dumps(data, indent=2))
    failed = problems or served["exit_code"] != 0 or served["left_behind"] or served["refusals"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
