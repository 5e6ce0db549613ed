#!/usr/bin/env python3
"""How responsive the host and nsbox's supervisors stay while a sandbox runs a fork bomb.

Sandbox A runs a shell fork bomb under --pids (default 64) with a 10 s wall timeout.
Meanwhile this process measures, against an idle baseline taken first: the round trip of
a run of /bin/true in another live sandbox B (through its supervisor), and the start of a
plain /bin/true process on the host. Finally: how far past A's deadline its supervisor
ended it.

    .venv/bin/python scripts/forkbomb_latency.py [--pids 64] [--samples 100]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time

import nsbox


def sample(bystander: nsbox.NsSandbox, n: int) -> tuple[list[float], list[float]]:
    runs, spawns = [], []
    for _ in range(n):
        t = time.perf_counter()
        bystander.run(["/bin/true"])
        runs.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        subprocess.run(["/bin/true"])
        spawns.append((time.perf_counter() - t) * 1000)
    return runs, spawns


def show(label: str, values: list[float]) -> str:
    return f"{label:44} median {statistics.median(values):7.2f} ms   max {max(values):7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pids", type=int, default=64)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    with nsbox.NsSandbox() as bystander, nsbox.NsSandbox(pids=args.pids, timeout=10) as bomb:
        idle_runs, idle_spawns = sample(bystander, args.samples)
        verdict: list[nsbox.RunResult] = []
        worker = threading.Thread(target=lambda: verdict.append(bomb.run(["sh", "-c", "b() { b | b & }; b; sleep 60"])))
        worker.start()
        time.sleep(1.0)  # let the bomb reach its limit
        busy_runs, busy_spawns = sample(bystander, args.samples)
        worker.join()
    print(f"fork bomb under --pids {args.pids}, {args.samples} samples each")
    print(show("run of /bin/true in another sandbox, idle", idle_runs))
    print(show("  ... during the bomb", busy_runs))
    print(show("/bin/true on the host, idle", idle_spawns))
    print(show("  ... during the bomb", busy_spawns))
    result = verdict[0]
    print(f"bomb verdict: {result.status.value}, wall {result.wall_s:.3f} s for a 10 s timeout "
          f"(supervisor overshoot {1000 * (result.wall_s - 10):.1f} ms), cpu {result.cpu_s:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
