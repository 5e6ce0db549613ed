"""Verdicts from wait statuses, exit codes as shells have them, the report format."""

from __future__ import annotations

import errno
import signal
import subprocess

import pytest

from nsbox import RunFailed, RunResult, Status


def test_exit_and_signal_statuses() -> None:
    assert RunResult.from_wait_status(("x",), 0, 0.1).status is Status.OK
    exited = RunResult.from_wait_status(("x",), 3 << 8, 0.1)
    assert (exited.status, exited.exit_code) == (Status.EXIT, 3)
    killed = RunResult.from_wait_status(("x",), signal.SIGKILL, 0.1)
    assert (killed.status, killed.exit_code, killed.signal) == (Status.SIGNAL, 137, 9)
    assert killed.error == "killed by SIGKILL"


@pytest.mark.parametrize(("err", "code"), [(errno.ENOENT, 127), (errno.EACCES, 126), (errno.ENOEXEC, 126)])
def test_exec_failures_name_the_errno(err: int, code: int) -> None:
    result = RunResult.exec_failed(("prog",), err, "execve", 0.0)
    assert result.status is Status.ERROR and result.exit_code == code
    assert errno.errorcode[err] in (result.error or "")


def test_round_trip_keeps_bytes() -> None:
    result = RunResult(("a",), Status.EXIT, 1, 0.5, stdout=b"\xff\x00", stderr=b"e", stdout_truncated=True)
    assert RunResult.from_dict(result.to_dict(binary="base64")) == result
    assert result.to_dict()["stdout"] == "\ufffd\x00"


def test_check_raises_a_called_process_error() -> None:
    result = RunResult(("a",), Status.EXIT, 2, 0.1, stdout=b"o")
    with pytest.raises(subprocess.CalledProcessError) as info:
        result.check_returncode()
    assert isinstance(info.value, RunFailed) and info.value.returncode == 2 and info.value.output == b"o"
