#!/usr/bin/env python3
"""Benchmark nsbox against its baselines, all measured in the same run on the same machine.

Whole-process commands are timed the same way (fork/exec from this process, wait), so
their ratios are fair; the embedded rows are timed in this already-running process.
Prints a table of medians and ratios to bubblewrap; ``--json PATH`` saves the numbers.
``execute_code("pass")`` in a live session is also compared with the same round trip to a
Jupyter kernel (jupyter_client + ipykernel, ``pip install -e '.[bench]'``; make bench does).

    .venv/bin/python scripts/bench.py [--runs 200] [--json bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nsbox

NSBOX_CLI = str(Path(sys.executable).with_name("nsbox"))
UNSHARE = ["unshare", "-Upfnmiu", "-r", "--mount-proc", "/bin/true"]
EXECUTE = "execute_code('pass') in a live NsSandbox"
JUPYTER = "Jupyter kernel: execute 'pass' (ipykernel)"
#: How many sandboxes the "at once" row asks for in the same instant.
BURST = 50
JUPYTER_INSTALL = f"{sys.executable} -m pip install -e '.[bench]' (make bench does)"


def bwrap_argv() -> list[str]:
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), f"/{name}"]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true"]


def timed(fn: Callable[[], object], runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def command(argv: list[str]) -> Callable[[], object]:
    def run() -> None:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark command failed ({proc.returncode}): {argv}")

    return run


def new_sandbox_run() -> None:
    with nsbox.NsSandbox() as sandbox:
        if not sandbox.run(["/bin/true"]).ok:
            raise SystemExit("NsSandbox run failed")


def jupyter_kernel() -> tuple[Callable[[], object], Callable[[], None]] | None:
    """A warm ipykernel run by this interpreter (the .venv's), and the round trip of executing
    "pass" in it (execute request -> reply and idle status, as a notebook front-end waits for)."""
    try:
        import ipykernel  # noqa: F401  (the kernel below runs it)
        from jupyter_client.manager import KernelManager
    except ImportError:
        print(f"  skipped the Jupyter row: it needs jupyter_client and ipykernel: {JUPYTER_INSTALL}", file=sys.stderr)
        return None
    manager = KernelManager(kernel_name="python3")
    # This interpreter, whatever kernel specs the machine has (jupyter_client 8 has no kernel_cmd).
    manager.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    manager.start_kernel()
    client = manager.client()

    def stop() -> None:
        client.stop_channels()
        manager.shutdown_kernel()  # a shutdown request, then a kill if it has not exited in time
        if manager.is_alive():
            raise SystemExit("the Jupyter kernel is still running after its shutdown")

    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
    except BaseException:
        stop()
        raise

    def round_trip() -> None:
        reply = client.execute_interactive("pass", timeout=30)
        if reply["content"]["status"] != "ok":
            raise SystemExit(f"the Jupyter kernel failed: {reply['content']}")

    return round_trip, stop


def execute_pass(sandbox: nsbox.NsSandbox) -> Callable[[], object]:
    def round_trip() -> None:
        if not sandbox.execute_code("pass").success:
            raise SystemExit("execute_code failed")

    return round_trip


def pool_acquire(runs: int) -> list[float]:
    """acquire() from a full pool (refilled between samples, untimed), then the sandbox closed."""
    samples = []
    with nsbox.SandboxPool(4) as pool:
        for _ in range(runs):
            while pool.ready < pool.size:
                time.sleep(0.005)
            started = time.perf_counter()
            sandbox = pool.acquire()
            samples.append((time.perf_counter() - started) * 1000)
            sandbox.close()
    return samples


def busy_cpu_ms() -> float:
    """CPU time spent by the whole machine so far (every state but idle and iowait), in ms."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) * 1000 / os.sysconf("SC_CLK_TCK")


def burst(count: int) -> list[float]:
    """``count`` sandboxes asked for at the same instant (a thread each): each one's time
    from the common start until it is ready, in ms. They are closed afterwards, untimed."""
    gate = threading.Barrier(count + 1)
    ready: list[float] = []
    sandboxes: list[nsbox.NsSandbox] = []
    started = 0.0

    def start() -> None:
        sandbox = nsbox.NsSandbox()
        gate.wait()
        sandbox.start()
        ready.append((time.perf_counter() - started) * 1000)
        sandboxes.append(sandbox)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    gate.wait()
    for thread in threads:
        thread.join()
    for sandbox in sandboxes:
        sandbox.close()
    if len(ready) != count:
        raise SystemExit(f"only {len(ready)} of {count} sandboxes started")
    return sorted(ready)


def throughput(workers: int, seconds: float) -> tuple[float, float]:
    """Sandboxes per second: ``workers`` threads each creating a sandbox, running /bin/true in
    it and destroying it, over and over, for ``seconds``; and the machine's CPU time per
    sandbox meanwhile (ms: every process's and the kernel's, on all CPUs)."""
    done = [0] * workers
    stop = time.monotonic() + seconds
    cpu_before = busy_cpu_ms()

    def work(i: int) -> None:
        while time.monotonic() < stop:
            new_sandbox_run()
            done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started), (busy_cpu_ms() - cpu_before) / max(1, sum(done))


def chart(rows: list[tuple[str, float]], path: str) -> None:
    """A bar chart of the medians (log scale), if matplotlib is there (pip install -e '.[bench]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  no chart: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return
    labels, medians = zip(*rows, strict=True)
    figure, axes = plt.subplots(figsize=(10, 0.45 * len(rows) + 1))
    axes.barh(range(len(rows)), medians, color="#4c72b0")
    axes.set_yticks(range(len(rows)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("median wall time, ms (log scale)")
    axes.set_title(f"nsbox {nsbox.__version__}: {platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs")
    for i, value in enumerate(medians):
        axes.text(value, i, f" {value:.2f}", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def idle_memory(sandbox: nsbox.NsSandbox) -> tuple[int, float, float]:
    """Processes of an idle sandbox (its supervisor and everything below it), their summed
    RSS and PSS in MiB (RSS counts pages the forked processes share once per process)."""
    pids: list[int] = []
    for _ in range(100):  # init forks the launcher once it is ready: wait until nothing new appears
        time.sleep(0.05)
        before, pids, todo = pids, [], [sandbox._backend.supervisor_pid]  # type: ignore[attr-defined]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        if len(pids) == len(before):
            break
    rss = pss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return len(pids), rss / 1024, pss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per row (200)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (and a PNG chart beside it)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput measurement (5)")
    args = parser.parse_args()
    if shutil.which("bwrap") is None:
        print("bubblewrap is the baseline: apt-get install bubblewrap (make bench does this)", file=sys.stderr)
        return 1

    live = nsbox.NsSandbox().start()
    jupyter = None
    rows: list[tuple[str, list[float]]] = []
    try:
        jupyter = jupyter_kernel()
        plan: list[tuple[str, Callable[[], object], int]] = [
            ("/bin/true", command(["/bin/true"]), args.runs),
            ("python -c pass (the interpreter nsbox runs on)", command([sys.executable, "-c", "pass"]), args.runs),
            ("bwrap --unshare-all ... /bin/true", command(bwrap_argv()), args.runs),
            ("unshare -Upfnmiu -r --mount-proc /bin/true", command(UNSHARE), args.runs),
            ("nsbox exec -- /bin/true", command([NSBOX_CLI, "exec", "--", "/bin/true"]), max(20, args.runs // 4)),
            ("NsSandbox().run(['/bin/true']) (new sandbox)", new_sandbox_run, args.runs),
            ("run of /bin/true in a live NsSandbox", lambda: live.run(["/bin/true"]), args.runs),
            (EXECUTE, execute_pass(live), args.runs),
        ]
        if jupyter is not None:
            plan.append((JUPYTER, jupyter[0], args.runs))
        for label, fn, runs in plan:
            rows.append((label, timed(fn, runs)))
            print(f"  measured: {label}", file=sys.stderr)
        rows.append(("SandboxPool.acquire() (pool of 4, ready)", pool_acquire(max(20, args.runs // 4))))
        with nsbox.NsSandbox() as idle:
            processes, rss, pss = idle_memory(idle)
        per_second = {n: throughput(n, args.seconds) for n in (1, 2, 4)}
        print("  measured: throughput", file=sys.stderr)
        burst(BURST)  # a warm-up: the spawner's first burst
        at_once = burst(BURST)
        print(f"  measured: {BURST} at once", file=sys.stderr)
    finally:
        live.close()
        if jupyter is not None:
            jupyter[1]()

    baseline = statistics.median(dict(rows)["bwrap --unshare-all ... /bin/true"])
    print(
        f"\nnsbox {nsbox.__version__} benchmark: {platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs"
    )
    print(f"{'what':48} {'runs':>5} {'median ms':>10} {'p90 ms':>8} {'x bwrap':>8}")
    results = []
    for label, samples in rows:
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{label:48} {len(samples):5d} {median:10.2f} {p90:8.2f} {median / baseline:8.2f}")
        results.append({"what": label, "runs": len(samples), "median_ms": median, "p90_ms": p90,
                        "ratio_to_bwrap": median / baseline})  # fmt: skip
    print(f"\nan idle sandbox: {processes} processes (its supervisor and everything below it),", end=" ")
    print(f"RSS {rss:.1f} MiB, PSS {pss:.1f} MiB")
    print(
        "new sandbox + /bin/true + close, per second: "
        + ", ".join(f"{v:.0f} with {n}" for n, (v, _) in per_second.items())
        + "; CPU per sandbox (whole machine): "
        + ", ".join(f"{cpu:.1f} ms" for _, cpu in per_second.values())
    )
    p50, p99 = statistics.median(at_once), statistics.quantiles(at_once, n=100)[-1]
    last = at_once[-1]
    print(f"{BURST} sandboxes asked for at once: ready after p50 {p50:.0f} ms, p99 {p99:.0f} ms, last {last:.0f} ms")
    medians = {label: statistics.median(samples) for label, samples in rows}
    versus_jupyter = medians[EXECUTE] / medians[JUPYTER] if JUPYTER in medians else None
    if versus_jupyter is not None:
        print(f"\nexecute_code('pass') / Jupyter kernel round trip: {versus_jupyter:.2f}")
    else:
        print(f"\nexecute_code('pass') / Jupyter kernel round trip: skipped; to measure it: {JUPYTER_INSTALL}")
    if args.json:
        idle_data = {"processes": processes, "rss_mib": rss, "pss_mib": pss}
        data = {"machine": platform.uname()._asdict(), "results": results, "idle_sandbox": idle_data,
                "sandboxes_per_second": {str(n): v for n, (v, _) in per_second.items()},
                "cpu_ms_per_sandbox": {str(n): cpu for n, (_, cpu) in per_second.items()},
                "at_once": {"count": BURST, "p50_ms": p50, "p99_ms": p99, "last_ms": at_once[-1]},
                "execute_code_to_jupyter": versus_jupyter}  # fmt: skip
        Path(args.json).write_text(json.dumps(data, indent=2))
        chart([(r["what"], r["median_ms"]) for r in results], str(Path(args.json).with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
