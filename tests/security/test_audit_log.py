"""--audit-log: JSON lines of what happened, written outside the sandbox's reach."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

import nsbox
from tests.conftest import NSBOX_CLI, SandboxRun, require_sandbox


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_creation_runs_and_close_are_logged(sandbox_run: SandboxRun, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    out = sandbox_run(["sh", "-c", "exit 3"], audit_log=str(log), seccomp="unconfined", memory="128M")
    assert out.exit_code == 3
    got = events(log)
    assert [e["event"] for e in got] == ["sandbox_created", "run", "sandbox_closed"]
    assert len({e["sandbox"] for e in got}) == 1
    created, run = got[0], got[1]
    assert created["seccomp"]["kind"] == "unconfined"  # type: ignore[index]
    assert created["limits"]["memory"] == 128 << 20  # type: ignore[index]
    assert created["network"]["mode"] == "none"  # type: ignore[index]
    assert run["status"] == "exit" and run["exit_code"] == 3 and run["args"] == ["sh", "-c", "exit 3"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_refused_request_is_logged(tmp_path: Path) -> None:
    require_sandbox()
    log = tmp_path / "audit.jsonl"
    with nsbox.NsSandbox(audit_log=str(log)) as sandbox:
        with pytest.raises(nsbox.SpecError, match="exceed"):
            sandbox.run(["echo", "x" * (5 << 20)])  # more than init accepts in one frame
        assert sandbox.run(["true"]).ok
    got = events(log)
    assert [e["event"] for e in got] == ["sandbox_created", "refused", "run", "sandbox_closed"]
    assert got[1]["what"] == "run" and "exceed" in str(got[1]["reason"])


def test_the_log_is_never_opened_through_a_symlink(tmp_path: Path) -> None:
    require_sandbox()
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    proc = subprocess.run([NSBOX_CLI, "exec", "--audit-log", str(link), "--", "true"], capture_output=True)
    assert proc.returncode == 125
    assert b"audit_log (--audit-log)" in proc.stderr
    assert target.read_text() == ""


def test_the_payload_cannot_reach_the_log(sandbox_run: SandboxRun, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    probe = "ls -l /proc/self/fd /proc/1/fd 2>&1; cat /proc/1/fdinfo/* 2>&1 | head -n 3"
    out = sandbox_run(["sh", "-c", probe], audit_log=str(log))
    assert out.status == "ok"
    assert b"audit" not in out.stdout


def test_executions_and_refused_file_requests_are_logged(tmp_path: Path) -> None:
    require_sandbox()
    log = tmp_path / "audit.jsonl"
    with nsbox.NsSandbox(audit_log=str(log)) as sandbox:
        assert sandbox.execute_code("secret = 'do not log me'; 1/0").status is nsbox.Status.EXCEPTION
        with pytest.raises(nsbox.SecurityError):
            sandbox.read_file("../../etc/shadow")
        sandbox.run(["ln", "-s", "/etc", "/workspace/etc"], check=True)
        with pytest.raises(nsbox.SecurityError):
            sandbox.write_file("etc/passwd", "x")
    got = events(log)
    assert [e["event"] for e in got] == ["sandbox_created", "execution", "refused", "run", "refused", "sandbox_closed"]
    assert got[1]["status"] == "exception" and "ZeroDivisionError" in str(got[1]["error"])
    assert "do not log me" not in log.read_text(), "the code itself is not logged"
    assert got[2]["what"] == "file read" and "leads out" in str(got[2]["reason"])
    assert got[4]["what"] == "file write" and "symbolic link" in str(got[4]["reason"])
