"""Verdicts, exit codes, timeouts and teardown: nothing of a sandbox outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import nsbox
from tests.conftest import NSBOX_CLI, SandboxRun, require_root, require_sandbox, sandbox_processes, wait_until


def test_exit_code_is_the_payloads(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(["sh", "-c", "exit 3"])
    assert (out.status, out.exit_code) == ("exit", 3)
    assert sandbox_run(["true"]).status == "ok"


def test_killed_payload_reports_signal_and_128_plus_n(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(["sh", "-c", "kill -KILL $$"])
    assert (out.status, out.exit_code) == ("signal", 137)


def test_timeout_kills_at_the_deadline(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(["sleep", "10"], timeout=0.5)
    assert out.status == "timeout" and out.exit_code == 124
    assert 0.5 <= out.wall_s < 0.7, out.wall_s


def test_timeout_returns_to_the_caller_within_0_7_s() -> None:
    require_sandbox()
    with nsbox.NsSandbox() as sandbox:
        sandbox.run(["true"])  # the sandbox is up: what is measured is the run
        started = time.monotonic()
        result = sandbox.run(["sleep", "10"], timeout=0.5)
        elapsed = time.monotonic() - started
        assert result.status is nsbox.Status.TIMEOUT
        assert elapsed < 0.7, elapsed
        assert sandbox.run(["true"]).ok, "the session survives a timed-out run"


def test_missing_program_is_an_error_naming_enoent(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(["/no/such/program"])
    assert (out.status, out.exit_code) == ("error", 127)
    assert out.error is not None and "ENOENT" in out.error


def test_non_executable_file_is_an_error_naming_eacces(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(["/etc/passwd"])
    assert (out.status, out.exit_code) == ("error", 126)
    assert out.error is not None and "EACCES" in out.error


def test_bad_cwd_is_an_error(api_run: SandboxRun) -> None:
    out = api_run(["true"], cwd="/nonexistent")
    assert out.status == "error" and "chdir" in (out.error or "") and "ENOENT" in (out.error or "")


@pytest.mark.usefixtures("no_leftovers")
def test_200_sequential_sandboxes_leave_nothing_behind() -> None:
    require_sandbox()
    nsbox.NsSandbox().start().close()  # the spawner (one socket) is started once per process
    fds_before = len(os.listdir("/proc/self/fd"))
    for i in range(200):
        with nsbox.NsSandbox() as sandbox:
            # Each leaves a background process: teardown must take it too.
            result = sandbox.run(["sh", "-c", "sleep 1000 & echo started"], capture_output=True)
            assert result.ok and result.stdout == b"started\n", (i, result)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert not sandbox_processes()


@pytest.mark.usefixtures("no_leftovers")
def test_sigkill_of_the_cli_supervisor_takes_the_sandbox() -> None:
    require_sandbox()
    proc = subprocess.Popen(
        [NSBOX_CLI, "exec", "--", "sh", "-c", "sleep 1000 & echo ready; sleep 1000"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    assert sandbox_processes(), "the sandbox should be running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert wait_until(lambda: not sandbox_processes()), sandbox_processes()


@pytest.mark.usefixtures("no_leftovers")
def test_sigkill_of_an_embedded_supervisor_takes_the_sandbox() -> None:
    require_sandbox()
    sandbox = nsbox.NsSandbox().start()
    try:
        sandbox.run(["sh", "-c", "sleep 1000 & exit 0"])
        assert sandbox_processes()
        supervisor = sandbox._backend.supervisor_pid  # type: ignore[attr-defined]
        os.kill(supervisor, signal.SIGKILL)
        assert wait_until(lambda: not sandbox_processes()), sandbox_processes()
        with pytest.raises(nsbox.SandboxError):
            sandbox.run(["true"])
    finally:
        sandbox.close()


@pytest.mark.usefixtures("no_leftovers")
def test_failed_setup_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    require_sandbox()
    (tmp_path / "x").mkdir()
    proc = subprocess.run(
        [NSBOX_CLI, "exec", "--bind", f"{tmp_path / 'x'}:/bin/x", "--", "true"],  # /bin is a symlink inside
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 125, proc.stderr
    assert "bind" in proc.stderr and "symlink" in proc.stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--frobnicate", "--", "true"], "--frobnicate"),
        (["--bind", "/does/not/exist", "--", "true"], "--bind"),
        (["--ro-bind", "/usr:../../escape", "--", "true"], "--bind/--ro-bind"),
        (["--ro-bind", "/usr:/proc/x", "--", "true"], "/proc"),
        (["--workspace-size", "12XB", "--", "true"], "--workspace-size"),
        (["--timeout", "-1", "--", "true"], "--timeout"),
        (["--timeout", "soon", "--", "true"], "--timeout"),
        (["--env", "NOEQUALS", "--", "true"], "--env"),
        (["--hostname", "bad host", "--", "true"], "--hostname"),
        (["--"], "COMMAND"),
        ([], "COMMAND"),
    ],
)
@pytest.mark.usefixtures("no_leftovers")
def test_bad_input_exits_125_naming_the_option_and_creates_nothing(args: list[str], names: str) -> None:
    proc = subprocess.run([NSBOX_CLI, "exec", *args], capture_output=True, text=True)
    assert proc.returncode == 125, proc.stderr
    assert names in proc.stderr


def test_report_is_json_with_the_verdict(tmp_path: Path) -> None:
    require_sandbox()
    import json

    report = tmp_path / "report.json"
    proc = subprocess.run([NSBOX_CLI, "exec", "--report", str(report), "--", "sh", "-c", "exit 7"])
    assert proc.returncode == 7
    data = json.loads(report.read_text())
    assert data["status"] == "exit" and data["exit_code"] == 7 and data["wall_s"] > 0
    assert data["args"] == ["sh", "-c", "exit 7"]


def test_stdio_is_the_callers_for_exec() -> None:
    require_sandbox()
    proc = subprocess.run(
        [NSBOX_CLI, "exec", "--", "sh", "-c", "cat; echo to-err >&2"], input=b"piped in\n", capture_output=True
    )
    assert proc.returncode == 0
    assert proc.stdout == b"piped in\n" and proc.stderr == b"to-err\n"


def test_debug_steps_show_one_timeline_of_every_process() -> None:
    """NSBOX_DEBUG=steps: the supervisor's stages and the sandbox's steps, each line with its
    process, start and duration, so that sorted by start they read as one timeline."""
    require_sandbox()
    proc = subprocess.run(
        [NSBOX_CLI, "exec", "--", "/bin/true"], env={**os.environ, "NSBOX_DEBUG": "steps"}, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    steps: dict[str, tuple[int, float, float]] = {}
    for line in proc.stderr.decode().splitlines():
        if line.startswith("nsbox-step "):
            _, pid, start, took_ms, name = line.split(" ", 4)
            steps[name] = (int(pid), float(start), float(took_ms))
    supervisor = {"start the intermediate in new namespaces", "write the sandbox's id maps"}
    sandbox = {"wait for the supervisor to write our id maps", "mount /proc", "load the seccomp filter"}
    assert supervisor | {"put the sandbox in its cgroup"} | sandbox <= set(steps), sorted(steps)
    assert len({steps[name][0] for name in supervisor}) == 1  # the CLI is the supervisor
    assert not {steps[name][0] for name in supervisor} & {steps[name][0] for name in sandbox}
    maps, waited = steps["write the sandbox's id maps"], steps["wait for the supervisor to write our id maps"]
    assert maps[1] + maps[2] / 1e3 <= waited[1] + waited[2] / 1e3  # the wait ends after the write, on one clock
    assert all(took >= 0 for _, _, took in steps.values())


def test_sigterm_to_the_cli_is_forwarded_to_the_payload() -> None:
    require_sandbox()
    proc = subprocess.Popen(
        [
            NSBOX_CLI,
            "exec",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 42
    assert proc.stdout.read() == b"got-term\n"
    proc.stdout.close()


def test_check_reports_this_host() -> None:
    import json

    proc = subprocess.run([NSBOX_CLI, "check", "--json"], capture_output=True, text=True)
    data = json.loads(proc.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"kernel", "user namespaces", "seccomp", "cgroup memory", "cgroup pids", "cgroup cpu"} <= names
    assert proc.returncode == (0 if data["ready"] else 1)
    human = subprocess.run([NSBOX_CLI, "check"], capture_output=True, text=True)
    assert "user.max_user_namespaces" in human.stdout


def test_large_argv_reaches_the_payload_and_oversized_is_refused() -> None:
    require_sandbox()
    args = ["x" * 50_000] * 20  # 1 MB in all, below the kernel's 2 MiB for argv + env
    with nsbox.NsSandbox() as sandbox:
        result = sandbox.run(["sh", "-c", 'echo "$@" | wc -c', "sh", *args], capture_output=True)
        assert result.ok and int(result.stdout or b"0") == 20 * 50_001
        with pytest.raises(nsbox.SpecError, match="exceed"):
            sandbox.run(["true", *(["y" * 100_000] * 50)])
        assert sandbox.run(["true"]).ok, "the refused request did not end the session"


@pytest.mark.usefixtures("no_leftovers")
def test_close_from_another_thread_ends_a_running_run() -> None:
    require_sandbox()
    import threading

    sandbox = nsbox.NsSandbox().start()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sandbox.run(["sleep", "1000"])
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert wait_until(lambda: bool(sandbox_processes()))
    sandbox.close()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], nsbox.SandboxError)


def test_concurrent_sandboxes_have_distinct_host_ids() -> None:
    require_root("a range of host ids per sandbox is root's; a user's sandboxes share the user's subordinate range")
    with nsbox.NsSandbox() as a, nsbox.NsSandbox() as b:
        uids = set()
        for sandbox in (a, b):
            before = set(sandbox_processes())
            sandbox.run(["sh", "-c", "sleep 100 & exit 0"])
            new = set(sandbox_processes()) - before
            uids |= {
                next(
                    ln.split()[1] for ln in Path(f"/proc/{p}/status").read_text().splitlines() if ln.startswith("Uid:")
                )
                for p in new
                if Path(f"/proc/{p}/comm").read_text().strip() != "nsbox-init"  # "sh" until it execs sleep
            }
        assert len(uids) == 2, uids


def test_nsbox_python_runs_code_and_files_with_the_exit_code(tmp_path: Path) -> None:
    require_sandbox()
    proc = subprocess.run(
        [NSBOX_CLI, "python", "--memory", "128M", "-c", "import os, sys; print(os.getcwd(), sys.argv[1:])", "a"],
        capture_output=True,
        text=True,
    )
    assert (proc.returncode, proc.stdout) == (0, "/workspace ['a']\n"), proc.stderr
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint(len(open(sys.argv[0]).read().splitlines()), sys.argv[1:])\nsys.exit(4)\n")
    proc = subprocess.run([NSBOX_CLI, "python", str(script), "x", "y"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (4, "3 ['x', 'y']\n"), proc.stderr
    proc = subprocess.run([NSBOX_CLI, "python", "--timeout", "0.5", "-c", "while True: pass"], capture_output=True)
    assert proc.returncode == 124
    proc = subprocess.run([NSBOX_CLI, "python"], capture_output=True, text=True)
    assert proc.returncode == 125 and "-c CODE or a script" in proc.stderr
    proc = subprocess.run([NSBOX_CLI, "python", "-c", "import sys; sys.exit(2)"], capture_output=True, text=True)
    assert proc.returncode == 2, "a payload's own 2 is not nsbox's usage error (125)"


def test_a_missing_module_gets_a_hint_and_install_gets_it_from_a_wheelhouse(host_tmp: Any) -> None:
    """The stderr of a Python payload goes through nsbox (live, whole); a ModuleNotFoundError at
    its end adds one line naming the ways to get the package; --wheels DIR --install NAME does."""
    require_sandbox()
    from tests.security.test_workspace_files import build_wheel

    wheels = host_tmp("wheels", 0o755)
    build_wheel(wheels)
    code = "import sys; print('x' * 100000, file=sys.stderr); import nsbox_demo_pkg; print(nsbox_demo_pkg.VALUE)"
    missing = subprocess.run([NSBOX_CLI, "python", "-c", code], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "x" * 100000 in missing.stderr, "all of stderr came through"
    hint = missing.stderr.splitlines()[-1]
    assert hint.startswith("nsbox: the sandbox's Python has no module 'nsbox_demo_pkg'"), missing.stderr[-600:]
    assert "--rootfs python" in hint and "--wheels DIR --install nsbox_demo_pkg" in hint, hint
    failed_otherwise = subprocess.run(
        [NSBOX_CLI, "python", "-c", "raise SystemExit(3)"], capture_output=True, text=True
    )
    assert failed_otherwise.returncode == 3 and "nsbox:" not in failed_otherwise.stderr, "no hint without the error"

    argv = [NSBOX_CLI, "python", "--wheels", str(wheels), "--install", "nsbox_demo_pkg", "-c", code]
    installed = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert (installed.returncode, installed.stdout) == (0, "42\n"), installed.stderr[-600:]
    argv = [NSBOX_CLI, "exec", "--wheels", str(wheels), "--install", "nsbox_demo_pkg", "--env", "PYTHONPATH=/opt"]
    shown = subprocess.run([*argv, "--", "sh", "-c", "echo $PYTHONPATH"], capture_output=True, text=True)
    assert shown.stdout == "/workspace/.packages:/opt\n", (shown.stdout, shown.stderr)
    absent = subprocess.run([NSBOX_CLI, "exec", "--install", "nsbox_demo_pkg", "--", "true"], capture_output=True)
    assert absent.returncode == 125 and b"wheels" in absent.stderr, absent.stderr
    unknown = subprocess.run([*argv[:4], "--install", "not_there", "--", "true"], capture_output=True, text=True)
    assert unknown.returncode == 125 and "--install failed" in unknown.stderr, unknown.stderr[-600:]
