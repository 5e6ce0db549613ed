"""Limits and verdicts, isolate-grade. Runs on this host (cgroup v1) and, through
scripts/vm-test.sh, inside a VM with only cgroup v2: the same tests, both flavours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

import nsbox
from nsbox._cgroup import cgroup_layout
from nsbox._values import MiB
from tests.conftest import (
    NSBOX_CLI,
    SandboxRun,
    guard_processes,
    probe_argv,
    require_sandbox,
    sandbox_processes,
    wait_until,
)

#: In the VM Python runs 10-15x slower: its run of this file asks for fewer repetitions.
REPEAT = int(os.environ.get("NSBOX_TEST_REPEAT", "500"))


def nsbox_cgroups() -> list[str]:
    """Every sandbox cgroup directory nsbox has below our own cgroups, all hierarchies."""
    found = []
    for placement in cgroup_layout().values():
        parent = os.path.join(placement.own_dir, "nsbox")
        if os.path.isdir(parent):
            found += [os.path.join(parent, d) for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))]
    return sorted(set(found))


@pytest.fixture
def no_cgroup_left() -> None:
    require_sandbox()
    assert nsbox_cgroups() == [], "precondition: no sandbox cgroup exists"
    yield
    assert wait_until(lambda: not sandbox_processes())
    assert wait_until(lambda: not guard_processes()), guard_processes()
    assert nsbox_cgroups() == []


def python(code: str) -> list[str]:
    return ["python3", "-c", code]


def test_memory_limit_ends_in_oom_with_the_peak_near_the_limit(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(python("b = bytearray(1 << 30)"), memory="256M", timeout=60)
    assert out.status == "oom", out
    report = out.report
    assert report["oom_killed"] is True
    assert 200 * MiB <= report["memory_peak_bytes"] <= 256 * MiB + 4 * MiB, report["memory_peak_bytes"]


FORK_UNTIL_REFUSED = """
import errno, os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print(n, errno.errorcode[e.errno])
"""


def test_a_fork_bomb_is_contained_at_the_process_limit(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(python(FORK_UNTIL_REFUSED), pids=32, timeout=30)
    forks, err = out.stdout.split()
    assert err == b"EAGAIN"
    assert int(forks) == 31, "32 processes: the payload and 31 children"
    assert out.status == "pids"


def test_a_shell_fork_bomb_is_contained_and_the_host_stays_responsive() -> None:
    require_sandbox()
    with nsbox.NsSandbox(pids=32, timeout=3) as bomb, nsbox.NsSandbox() as bystander:
        result = bomb.run(["sh", "-c", "b() { b | b & }; b; sleep 10"])
        assert result.status in (nsbox.Status.PIDS, nsbox.Status.TIMEOUT), result
        assert bystander.run(["true"]).ok  # another sandbox still works


def test_cpus_limit_throttles_a_busy_loop_to_half(sandbox_run: SandboxRun) -> None:
    busy = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 2: pass"
    out = sandbox_run(python(busy), cpus=0.5)
    ratio = out.report["cpu_s"] / out.report["wall_s"]
    assert 0.4 <= ratio <= 0.6, (ratio, out.report)


def test_wall_timeout_on_an_endless_loop(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(python("while True: pass"), timeout=1)
    assert out.status == "timeout"
    assert 1.0 <= out.wall_s <= 1.2, out.wall_s


def test_cpu_time_limit(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(python("while True: pass"), cpu_time=1, timeout=20)
    assert out.status == "cpu_time", out
    assert 1.0 <= out.report["cpu_s"] <= 1.5, out.report


def test_output_beyond_the_limit_is_dropped_and_the_run_ends_normally(api_run: SandboxRun) -> None:
    out = api_run(python("import sys\nsys.stdout.write('x' * 10_000_000)"), output_limit="1M")
    assert len(out.stdout) == 1024 * 1024 and out.report["stdout_truncated"] is True
    assert out.status == "output_limit" and out.exit_code == 0


def test_rlimits_inside(sandbox_run: SandboxRun) -> None:
    code = """
import resource
out.update({n: resource.getrlimit(getattr(resource, "RLIMIT_" + n))[0] for n in ("CORE", "FSIZE", "NOFILE")})
out["oom_score_adj"] = int(open("/proc/self/oom_score_adj").read())
"""
    out = sandbox_run(probe_argv(code), file_size="10M", open_files=256).json()
    assert out == {"CORE": 0, "FSIZE": 10 * MiB, "NOFILE": 256, "oom_score_adj": 1000}


def test_verdict_fields_are_in_the_report(sandbox_run: SandboxRun) -> None:
    report = sandbox_run(["true"]).report
    assert report["limits"] in ("cgroup v1", "cgroup v2", "cgroup v1+v2")
    assert report["cpu_s"] >= 0 and report["memory_peak_bytes"] > 0 and report["oom_killed"] is False


def test_swap_is_off_for_the_sandbox() -> None:
    require_sandbox()
    with nsbox.NsSandbox(memory="128M") as sandbox:
        sandbox.run(["true"])
        dirs = nsbox_cgroups()
        checked = 0
        for d in dirs:
            if os.path.exists(f"{d}/memory.memsw.limit_in_bytes"):  # v1 with swap accounting
                assert int(Path(f"{d}/memory.memsw.limit_in_bytes").read_text()) == 128 * MiB
                checked += 1
            if os.path.exists(f"{d}/memory.swap.max"):  # v2
                assert Path(f"{d}/memory.swap.max").read_text().strip() == "0"
                checked += 1
        assert checked, f"no swap control found in {dirs}"


def test_no_cgroups_is_explicit_and_the_report_says_rlimit_only(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(python("b = bytearray(1 << 30)"), memory="256M", no_cgroups=True)
    assert out.report["limits"] == "rlimit-only"
    assert out.status == "exit" and b"MemoryError" in out.stderr, out  # RLIMIT_AS refused the allocation


def test_per_run_accounting_in_a_session() -> None:
    require_sandbox()
    with nsbox.NsSandbox() as sandbox:
        big = sandbox.run(python("b = bytearray(150 << 20); import time; time.sleep(0.2)"))
        small = sandbox.run(["true"])
        assert big.memory_peak_bytes is not None and big.memory_peak_bytes >= 150 * MiB
        assert small.cpu_s < big.cpu_s
        if small.limits == "cgroup v1" or _v2_peak_resettable():
            assert small.memory_peak_bytes is not None and small.memory_peak_bytes < 100 * MiB
        oom = sandbox.run(python("b = bytearray(1 << 30)"))
        assert oom.status is nsbox.Status.OOM
        after = sandbox.run(["true"])
        assert after.ok and not after.oom_killed, "each run's verdict is its own"


def _v2_peak_resettable() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 12)


@pytest.mark.parametrize(
    ("args", "option", "allowed"),
    [
        (["--memory", "4G"], "--memory", "32M to 2G"),
        (["--memory", "lots"], "--memory", "32M to 2G"),
        (["--cpus", "0"], "--cpus", "0.01 to 4"),
        (["--cpus", "9"], "--cpus", "0.01 to 4"),
        (["--pids", "0"], "--pids", "1 to 1024"),
        (["--pids", "2.5"], "--pids", "1 to 1024"),
        (["--cpu-time", "-1"], "--cpu-time", "positive"),
    ],
)
def test_bad_limits_name_the_option_and_the_range(args: list[str], option: str, allowed: str) -> None:
    before = nsbox_cgroups()
    proc = subprocess.run([NSBOX_CLI, "exec", *args, "--", "true"], capture_output=True, text=True)
    assert proc.returncode == 125 and option in proc.stderr and allowed in proc.stderr, proc.stderr
    assert nsbox_cgroups() == before


def test_the_operator_can_raise_a_cap() -> None:
    require_sandbox()
    env = {**os.environ, "NSBOX_MAX_CPUS": "16"}
    proc = subprocess.run([NSBOX_CLI, "exec", "--cpus", "9", "--", "true"], env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.usefixtures("no_cgroup_left")
def test_no_cgroup_left_after_many_runs_a_timeout_and_an_oom() -> None:
    for _ in range(REPEAT):
        with nsbox.NsSandbox() as sandbox:
            assert sandbox.run(["true"]).ok
    with nsbox.NsSandbox(timeout=0.2) as sandbox:
        assert sandbox.run(["sleep", "10"]).status is nsbox.Status.TIMEOUT
    with nsbox.NsSandbox(memory="64M") as sandbox:
        assert sandbox.run(python("b = bytearray(1 << 28)")).status is nsbox.Status.OOM


@pytest.mark.usefixtures("no_cgroup_left")
def test_no_cgroup_left_after_the_cli_is_sigkilled() -> None:
    # The CLI is its own supervisor: its cgroup guard removes what it leaves. (Runs before
    # the embedded case below, whose spawner sweeps stale cgroups for a while after.)
    with subprocess.Popen(
        [NSBOX_CLI, "exec", "--", "sh", "-c", "echo ready; sleep 1000"], stdout=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            assert nsbox_cgroups()
            assert len(guard_processes()) == 1
        finally:
            proc.kill()
            proc.wait()
        assert proc.stdout.read() == b""  # end of file: neither the sandbox nor the guard holds the pipe
    assert wait_until(lambda: not sandbox_processes())
    assert wait_until(lambda: not nsbox_cgroups()), nsbox_cgroups()


@pytest.mark.usefixtures("no_cgroup_left")
def test_no_cgroup_left_after_the_supervisor_is_sigkilled() -> None:
    # Embedded: the spawner sees its supervisor die and sweeps what it left.
    sandbox = nsbox.NsSandbox().start()
    sandbox.run(["sh", "-c", "sleep 1000 & exit 0"])
    assert nsbox_cgroups()
    os.kill(sandbox._backend.supervisor_pid, signal.SIGKILL)  # type: ignore[attr-defined]
    assert wait_until(lambda: not nsbox_cgroups()), nsbox_cgroups()
    sandbox.close()


def test_report_of_the_cli_has_the_verdict_fields(tmp_path: Path) -> None:
    require_sandbox()
    report = tmp_path / "r.json"
    subprocess.run(
        [NSBOX_CLI, "exec", "--report", str(report), "--memory", "64M", "--", *python("b = bytearray(1 << 28)")]
    )
    data = json.loads(report.read_text())
    assert data["status"] == "oom" and data["oom_killed"] is True and data["memory_peak_bytes"] > 0
