"""What the caller's process holds must not reach the payload: keys, fds, signal settings."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nsbox
from tests.conftest import NSBOX_CLI, probe_argv, require_root, require_sandbox, sandbox_processes, wait_until

KEYRING_SCRIPT = """
import ctypes, json, os, subprocess, sys
sys.path.insert(0, {repo!r})
import nsbox
from tests.conftest import NSBOX_CLI, probe_argv
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
assert libc.syscall(250, 1, b"nsbox-test-session") > 0  # keyctl(JOIN_SESSION_KEYRING)
key = libc.syscall(248, b"user", b"nsbox-secret", b"hunter2", 7, -3)  # add_key(..., SESSION)
assert key > 0
buf = ctypes.create_string_buffer(64)
assert libc.syscall(250, 11, key, buf, 64) == 7  # the caller itself can read it
probe = probe_argv(f'''
buf = ctypes.create_string_buffer(64)
libc.syscall.restype = ctypes.c_long
n = libc.syscall(250, 11, {{key}}, buf, 64)
out["read"] = buf.raw[:n].decode() if n >= 0 else errno.errorcode[ctypes.get_errno()]
''')
# keyctl is refused by the default seccomp policy (EPERM); allowed here, to show that the
# keyring itself is out of reach too.
policy = {policy!r}
result = {{}}
for seccomp in (policy, "default"):
    cli = subprocess.run([NSBOX_CLI, "exec", "--seccomp", seccomp, "--", *probe], capture_output=True, check=True)
    with nsbox.NsSandbox(seccomp=seccomp) as sandbox:
        api = sandbox.run(probe, capture_output=True, check=True).stdout
    result[seccomp] = {{"cli": json.loads(cli.stdout)["read"], "api": json.loads(api)["read"]}}
print(json.dumps(result))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe uses x86_64 syscall numbers")
def test_the_callers_session_keyring_is_not_readable_inside(tmp_path: Path) -> None:
    require_sandbox()
    repo = str(Path(__file__).resolve().parents[2])
    policy = tmp_path / "allow-keyctl.toml"
    policy.write_text('allow = ["keyctl"]\n')
    out = subprocess.run(
        [sys.executable, "-c", KEYRING_SCRIPT.format(repo=repo, policy=str(policy))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import json

    result = json.loads(out)
    assert set(result[str(policy)].values()) <= {"EACCES", "ENOKEY"}, result  # a keyring of its own
    assert result["default"] == {"cli": "EPERM", "api": "EPERM"}  # and the syscall refused outright


def test_directory_and_o_path_fds_cannot_be_stdio() -> None:
    require_sandbox()
    dir_fd = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
    path_fd = os.open("/etc/hostname", os.O_PATH)
    try:
        with nsbox.NsSandbox() as sandbox:
            for name in ("stdin", "stdout", "stderr"):
                for fd in (dir_fd, path_fd):
                    with pytest.raises(nsbox.SpecError, match=name):
                        sandbox.run(["ls", f"/proc/self/fd/{(name == 'stdin' and 0) or 1}/"], **{name: fd})
            assert sandbox.run(["true"]).ok, "a refused request does not end the session"
    finally:
        os.close(dir_fd)
        os.close(path_fd)


def test_init_does_not_hold_the_callers_stdio(tmp_path: Path) -> None:
    require_root("reads /proc/<init>/fd, which only root may for a non-dumpable process")
    log = tmp_path / "caller-stdout.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([NSBOX_CLI, "exec", "--", "sleep", "1000"], stdout=out, stderr=out)
    try:
        assert wait_until(lambda: any(_comm(p) == "sleep" for p in sandbox_processes()))
        held = {
            os.readlink(f"/proc/{pid}/fd/{fd}")
            for pid in sandbox_processes()
            if _comm(pid) == "nsbox-init"
            for fd in os.listdir(f"/proc/{pid}/fd")
        }
        assert held, "init's fds should be visible to root on the host"
        assert str(log) not in held, held
    finally:
        proc.kill()
        proc.wait()
    assert wait_until(lambda: not sandbox_processes())


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_signals_the_caller_ignores_are_default_again_inside() -> None:
    require_sandbox()
    proc = subprocess.run(  # grep, not python3: Python itself ignores SIGPIPE and SIGXFSZ
        [NSBOX_CLI, "exec", "--", "grep", "SigIgn", "/proc/self/status"],
        capture_output=True,
        check=True,
        preexec_fn=lambda: [
            signal.signal(s, signal.SIG_IGN) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGRTMIN)
        ],
    )
    assert int(proc.stdout.split()[1], 16) == 0, proc.stdout


def test_payload_cannot_kill_or_stop_init_even_by_its_own_signals() -> None:
    """kill -INT/-TERM/-HUP 1 from inside: init ignores them (it is PID 1 and has no handler)."""
    require_sandbox()
    with nsbox.NsSandbox() as sandbox:
        result = sandbox.run(["sh", "-c", "for s in INT TERM HUP QUIT USR1; do kill -$s 1; done; echo sent"])
        assert result.status in (nsbox.Status.OK, nsbox.Status.EXIT)
        time.sleep(0.1)
        assert sandbox.run(["true"]).ok


def test_command_line_of_init_shows_no_host_path_even_for_huge_cli_arguments() -> None:
    require_sandbox()
    big = "x" * 20000
    code = textwrap.dedent(f"""
        out["cmdline"] = open("/proc/1/cmdline", "rb").read().strip(b"\\0").decode()
        out["len"] = len({big!r})
    """)
    proc = subprocess.run([NSBOX_CLI, "exec", "--", *probe_argv(code)], capture_output=True, check=True)
    import json

    assert json.loads(proc.stdout) == {"cmdline": "nsbox-init", "len": 20000}
