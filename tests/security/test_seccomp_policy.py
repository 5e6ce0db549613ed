"""The policy is the operator's to change: a policy file adds and refuses; unconfined is loud."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import NSBOX_CLI, SandboxRun, probe_argv, require_sandbox

PTRACE_TRACEME = probe_argv("""
libc.syscall.restype = ctypes.c_long
r = libc.syscall(101, 0, 0, 0, 0)  # ptrace(PTRACE_TRACEME)
out["ptrace"] = r if r >= 0 else errno.errorcode[ctypes.get_errno()]
try:
    os.uname()
    out["uname"] = "ok"
except OSError as exc:
    out["uname"] = errno.errorcode[exc.errno]
out["status"] = [l for l in open("/proc/self/status") if l.startswith("Seccomp")]
""")


def test_a_policy_file_allows_and_refuses(sandbox_run: SandboxRun, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["ptrace"]\nrefuse = ["uname"]\n')
    out = sandbox_run(PTRACE_TRACEME, seccomp=str(policy))
    assert out.status == "ok", out
    assert out.json()["ptrace"] == 0  # reached the kernel, which allows a process to ask to be traced
    assert out.json()["uname"] == "EPERM"
    assert out.report["seccomp"] == "custom"


def test_the_default_refuses_ptrace_and_allows_uname(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(PTRACE_TRACEME)
    assert out.json()["ptrace"] == "EPERM"
    assert out.json()["uname"] == "ok"
    assert out.report["seccomp"] == "default"
    assert out.json()["status"] == ["Seccomp:\t2\n", "Seccomp_filters:\t2\n"]


def test_unconfined_has_no_filter_and_says_so(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(PTRACE_TRACEME, seccomp="unconfined")
    assert out.json()["ptrace"] == 0
    assert out.json()["status"] == ["Seccomp:\t0\n", "Seccomp_filters:\t0\n"]
    assert out.report["seccomp"] == "unconfined"


def test_the_cli_warns_when_unconfined() -> None:
    require_sandbox()
    proc = subprocess.run([NSBOX_CLI, "exec", "--seccomp", "unconfined", "--", "true"], capture_output=True)
    assert proc.returncode == 0
    assert b"NO syscall filter" in proc.stderr


def test_a_name_that_is_no_syscall_is_refused_before_anything_starts(tmp_path: Path) -> None:
    require_sandbox()
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["nosuchcall"]\n')
    proc = subprocess.run([NSBOX_CLI, "exec", "--seccomp", str(policy), "--", "true"], capture_output=True)
    assert proc.returncode == 125
    assert b"seccomp (--seccomp): not syscalls of this machine: nosuchcall" in proc.stderr
