"""NsSandbox as an embedding service uses it: subprocess.run's names, sessions, threads."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

import nsbox
from tests.conftest import require_sandbox


@pytest.fixture
def sandbox() -> nsbox.NsSandbox:
    require_sandbox()
    with nsbox.NsSandbox() as sb:
        yield sb


def test_capture_input_and_merge(sandbox: nsbox.NsSandbox) -> None:
    result = sandbox.run(["sh", "-c", "cat; echo err >&2"], input=b"in\n", capture_output=True)
    assert (result.stdout, result.stderr) == (b"in\n", b"err\n")
    merged = sandbox.run(["sh", "-c", "echo out; echo err >&2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert merged.stdout == b"out\nerr\n" and merged.stderr is None
    quiet = sandbox.run(["sh", "-c", "echo hidden"], stdout=subprocess.DEVNULL)
    assert quiet.ok and quiet.stdout is None
    text = sandbox.run(["cat"], input="text input", capture_output=True)
    assert text.stdout == b"text input"


def test_stdio_can_be_the_callers_files(sandbox: nsbox.NsSandbox, tmp_path: Path) -> None:
    out_path = tmp_path / "out.txt"
    with open(out_path, "wb") as out, open("/etc/hostname", "rb") as stdin:
        sandbox.run(["sh", "-c", "echo to-file; cat"], stdin=stdin, stdout=out)
    assert out_path.read_bytes() == b"to-file\n" + Path("/etc/hostname").read_bytes()


def test_large_input_and_output_do_not_block(sandbox: nsbox.NsSandbox) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB through stdin and back
    result = sandbox.run(["cat"], input=data, capture_output=True)
    assert result.stdout == data and not result.stdout_truncated


def test_output_beyond_the_limit_is_counted_and_dropped() -> None:
    require_sandbox()
    with nsbox.NsSandbox(output_limit="64K") as sb:
        result = sb.run(["sh", "-c", "head -c 1000000 /dev/zero; echo done >&2"], capture_output=True)
    assert result.status is nsbox.Status.OUTPUT_LIMIT and result.exit_code == 0, "it ran to its end"
    assert len(result.stdout or b"") == 64 * 1024 and result.stdout_truncated
    assert result.stderr == b"done\n" and not result.stderr_truncated


def test_check_raises_a_called_process_error(sandbox: nsbox.NsSandbox) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        sandbox.run(["sh", "-c", "exit 5"], check=True)
    assert isinstance(info.value, nsbox.RunFailed) and info.value.returncode == 5
    assert sandbox.run(["true"], check=True).ok


def test_a_session_keeps_its_workspace_between_runs(sandbox: nsbox.NsSandbox) -> None:
    sandbox.run(["sh", "-c", "echo 41 > n"])
    assert sandbox.run(["cat", "/workspace/n"], capture_output=True).stdout == b"41\n"
    sandbox.run(["sh", "-c", "exit 9"])  # a failing run does not end the session
    assert sandbox.run(["cat", "n"], capture_output=True).stdout == b"41\n"


def test_env_and_cwd_per_run(sandbox: nsbox.NsSandbox) -> None:
    result = sandbox.run(["sh", "-c", 'echo "$X $(pwd)"'], env={"X": "y"}, cwd="/tmp", capture_output=True)
    assert result.stdout == b"y /tmp\n"


@pytest.mark.parametrize(
    ("args", "kwargs", "names"),
    [
        ([], {}, "COMMAND"),
        ("ls -l", {}, "COMMAND"),
        (["ls"], {"cwd": "relative"}, "--cwd"),
        (["ls"], {"timeout": -1}, "--timeout"),
        (["ls"], {"stdin": subprocess.PIPE}, "stdin"),
        (["ls"], {"capture_output": True, "stdout": subprocess.DEVNULL}, "capture_output"),
        (["ls"], {"input": b"x", "stdin": subprocess.DEVNULL}, "input"),
    ],
)
def test_bad_run_arguments_name_the_option(args: object, kwargs: dict[str, object], names: str) -> None:
    with pytest.raises(nsbox.SpecError, match=names):
        nsbox.NsSandbox().run(args, **kwargs)  # type: ignore[arg-type]


def test_setup_errors_are_raised_with_the_stage(tmp_path: Path) -> None:
    require_sandbox()
    with pytest.raises(nsbox.SetupError) as info:
        nsbox.NsSandbox(mounts=(nsbox.Mount(str(tmp_path), "/bin/x"),)).start()
    assert "bind" in info.value.stage and "symlink" in str(info.value)


def test_closed_sandboxes_refuse_runs_and_close_twice_is_fine() -> None:
    require_sandbox()
    sb = nsbox.NsSandbox().start()
    sb.close()
    sb.close()
    assert sb.closed
    with pytest.raises(nsbox.SandboxError):
        sb.run(["true"])


def test_sandboxes_in_threads_are_independent() -> None:
    require_sandbox()
    results: dict[int, bytes] = {}

    def work(n: int) -> None:
        with nsbox.NsSandbox(hostname=f"box{n}") as sb:
            sb.run(["sh", "-c", f"echo {n} > mine"])
            results[n] = sb.run(["sh", "-c", "hostname; cat mine"], capture_output=True).stdout or b""

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: f"box{n}\n{n}\n".encode() for n in range(4)}
