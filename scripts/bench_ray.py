#!/usr/bin/env python3
"""nsbox.ray against the local Judge, measured in the same run on this machine.

HumanEval's 164 canonical solutions with their tests (bench_judge.py's programs), three ways:
the local ``Judge(workers=2).run_code_many`` (the baseline), ``SandboxCluster`` on a Ray
cluster of 1 node (2 workers), and on 3 nodes (``ray.cluster_utils.Cluster``, each its own
raylet, 1 worker each: 3 simulated nodes on 2 cores cannot show scaling). For each:
programs/s and how many passed (all 164 must). Then the per-program overhead of going
through Ray: ``run_code("pass")`` one at a time, through the cluster and through the local
judge (the median difference is what Ray adds to each program).

    .venv/bin/python scripts/bench_ray.py [--runs 200] [--json bench-ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

import nsbox
from nsbox.ray import SandboxCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_judge import TIMEOUT, all_passed, humaneval_programs

STORE = 78_643_200  # each node's object store: Ray's least


@contextmanager
def ray_nodes(nodes: int, cpus: int) -> Iterator[None]:
    folder = tempfile.mkdtemp(prefix="tmp-nsbox-bench-ray-")
    os.environ["RAY_TMPDIR"] = folder  # its sessions' files, not /tmp/ray
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": cpus, "object_store_memory": STORE},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus, object_store_memory=STORE)
        cluster.wait_for_nodes()
        yield
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def batch(run_many: Callable[[list[Any]], list[nsbox.RunResult]], programs: list[str]) -> dict[str, float]:
    items = [{"code": p, "timeout": TIMEOUT} for p in programs]
    run_many(["pass"] * 8)  # every worker's sandbox and warm interpreter started
    started = time.perf_counter()
    results = run_many(items)
    elapsed = time.perf_counter() - started
    return {"programs_per_s": len(programs) / elapsed, "seconds": elapsed, "passed": sum(r.ok for r in results)}


def one_at_a_time(run_one: Callable[[str], nsbox.RunResult], runs: int) -> list[float]:
    for _ in range(10):
        run_one("pass")
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        if not run_one("pass").ok:
            raise SystemExit("run_code('pass') failed")
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="run_code('pass') one at a time, each way (200)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    programs = humaneval_programs()
    rows: dict[str, dict[str, float]] = {}
    trips: dict[str, list[float]] = {}
    with nsbox.Judge(workers=2) as judge:
        rows["local Judge(workers=2)"] = batch(judge.run_code_many, programs)
        trips["local Judge"] = one_at_a_time(lambda code: judge.run_code_many([code])[0], args.runs)
    print("  measured: the local Judge", file=sys.stderr)
    for label, nodes, cpus in (("SandboxCluster, 1 node x 2", 1, 2), ("SandboxCluster, 3 nodes x 1", 3, 1)):
        with ray_nodes(nodes, cpus), SandboxCluster(pool=0) as cluster:
            rows[label] = batch(cluster.run_code_many, programs)
            if nodes == 1:
                trips["SandboxCluster"] = one_at_a_time(cluster.run_code, args.runs)
        print(f"  measured: {label}", file=sys.stderr)
    baseline = rows["local Judge(workers=2)"]["programs_per_s"]
    print(f"\nHumanEval, {len(programs)} programs (on {os.cpu_count()} cores):")
    print(f"{'way':30} {'programs/s':>10} {'x local':>8} {'passed':>8}")
    for label, row in rows.items():
        print(
            f"{label:30} {row['programs_per_s']:10.1f} {row['programs_per_s'] / baseline:8.2f} "
            f"{int(row['passed']):4d}/{len(programs)}"
        )
    medians = {label: statistics.median(samples) for label, samples in trips.items()}
    overhead = medians["SandboxCluster"] - medians["local Judge"]
    print(
        f"\nrun_code('pass') one at a time, median: local Judge {medians['local Judge']:.2f} ms, "
        f"SandboxCluster {medians['SandboxCluster']:.2f} ms: Ray adds {overhead:.2f} ms a program"
    )
    if args.json:
        data = {"humaneval": rows, "one_at_a_time_median_ms": medians, "ray_overhead_ms": overhead}
        Path(args.json).write_text(json.dumps(data, indent=2))
    return all_passed(rows, len(programs))


if __name__ == "__main__":
    sys.exit(main())
