"""The session API's pure pieces, without a sandbox: workspace paths, the kernel's
verdicts, results on the wire, and the guest kernel itself over a socket pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from nsbox import ExecutionResult, SecurityError, SpecError, Status, safe_path_access
from nsbox._channel import Channel, socketpair
from nsbox._files import workspace_path
from nsbox._kernel import KERNEL_SOURCE, verdict
from nsbox._protocol import Cell, CellDisplay, CellDone, CellStarted, Exited, KernelReady, ProtocolError, parse
from nsbox._result import Executed
from nsbox._stdio import Capture


@pytest.mark.parametrize(
    ("path", "clean"),
    [("a.txt", "a.txt"), ("./a//b/", "a/b"), ("/workspace", "."), ("/workspace/x/../y", "y"), ("a/..", ".")],
)
def test_workspace_paths_are_made_relative(path: str, clean: str) -> None:
    assert workspace_path(path) == clean


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "/etc/passwd", "/workspacex/a", "/workspace/../etc"])
def test_paths_that_leave_the_workspace_are_refused(path: str) -> None:
    with pytest.raises(SecurityError):
        workspace_path(path)


@pytest.mark.parametrize("path", ["", "a\0b", 5])
def test_malformed_paths_are_spec_errors(path: object) -> None:
    with pytest.raises(SpecError):
        workspace_path(path)  # type: ignore[arg-type]


def _captures() -> tuple[Capture, Capture]:
    out, err = Capture(-1, 10), Capture(-1, 10)
    out.data += b"printed"
    return out, err


def _verdict(reply: CellDone | None, exited: Exited | None = None, **kw: object) -> ExecutionResult:
    """The verdict with its output, as the front-end shows it."""
    args: dict[str, object] = dict(interrupted=False, killed_for=None, oom_killed=False, pids_hit=False)
    args.update(kw)
    out, err = _captures()
    result = verdict(reply, (), exited, state_lost_before=False, output=(out, err), **args)  # type: ignore[arg-type]
    return Executed(result, bytes(out.data), bytes(err.data)).decoded()


def test_verdicts_by_precedence() -> None:
    ok = _verdict(CellDone(1, "42", None))
    assert (ok.status, ok.value, ok.stdout, ok.success, ok.state_lost) == (Status.OK, "42", "printed", True, False)
    assert ok.data == {"output": "printed", "stderr": "", "value": "42"}
    raised = _verdict(CellDone(1, None, {"type": "ValueError", "message": "bad", "traceback": "Traceback..."}))
    assert (raised.status, raised.error, raised.traceback) == (Status.EXCEPTION, "ValueError: bad", "Traceback...")
    interrupted = _verdict(
        CellDone(1, None, {"type": "KeyboardInterrupt", "message": ""}), interrupted=True, killed_for=("timeout", 0.5)
    )
    assert interrupted.status is Status.TIMEOUT and not interrupted.state_lost
    killed = _verdict(None, killed_for=("timeout", 0.5))
    assert killed.status is Status.TIMEOUT and killed.state_lost and "killed" in (killed.error or "")
    assert _verdict(None, Exited(11 << 0, None, None, 1)).status is Status.SIGNAL  # wait status of SIGSEGV
    exited = _verdict(None, Exited(1 << 8, None, None, 1))
    assert exited.status is Status.EXIT and "status 1" in (exited.error or "") and exited.state_lost
    assert _verdict(None, oom_killed=True).status is Status.OOM
    missing = _verdict(None, Exited(127 << 8, 2, "execve", 1))
    assert missing.status is Status.ERROR and "could not start" in (missing.error or "")


def test_execution_results_round_trip_through_json() -> None:
    result = ExecutionResult(Status.EXCEPTION, stdout="é", value="1", error="E: x", result={"a": [1]}, has_result=True)
    assert ExecutionResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_kernel_frames_are_checked_field_by_field() -> None:
    assert parse({"type": "cell_done", "number": 1, "value": None, "error": None}, CellDone) == CellDone(1, None, None)
    for bad in (
        {"type": "cell_done", "number": 1, "value": 5, "error": None},
        {"type": "cell_done", "number": 1, "value": None, "error": [1]},
    ):
        with pytest.raises(ProtocolError):
            parse(bad, CellDone)
    with pytest.raises(ProtocolError):
        parse({"type": "exec", "argv": [], "env": {}, "cwd": "/"}, CellDone)  # not what a kernel may send


def test_the_guest_kernel_keeps_state_and_reports_values(tmp_path: object) -> None:
    """The guest's own logic, run directly with this Python (stdlib only) over a socket pair."""
    ours, theirs = socketpair()
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL_SOURCE], stdin=theirs.fileno(), stdout=subprocess.PIPE, pass_fds=()
    )
    theirs.close()
    wire = Channel(ours, 1 << 20, accept_fds=False)
    try:
        assert isinstance(wire.recv(KernelReady, timeout=10)[0], KernelReady)

        numbers = iter(range(1, 100))
        shown: list[Any] = []  #: the last cell's display items, as sent before its cell_done

        def cell(code: str, **kw: object) -> CellDone:
            number = next(numbers)
            wire.send(Cell(number, code, **kw))  # type: ignore[arg-type]
            assert wire.recv(CellStarted, timeout=10)[0] == CellStarted(number)
            shown.clear()
            while isinstance(done := wire.recv(CellDisplay, CellDone, timeout=10)[0], CellDisplay):
                assert done.number == number
                shown.append(done.item)
            assert done.number == number
            return done

        assert cell("x = 41").value is None
        assert cell("x + 1").value == "42"
        assert shown == [{"data": {"text/plain": "42"}, "errors": [], "omitted": {}}], "its value, sent before the end"
        assert cell("import sys; sys.stdin.read()").value == "''", "stdin is /dev/null, not the wire"
        failed = cell("def f():\n    return 1/0\nf()")
        assert failed.error is not None and failed.error["type"] == "ZeroDivisionError"
        assert "<cell 4>" in failed.error["traceback"] and "return 1/0" in failed.error["traceback"]
        assert "kernel" not in failed.error["traceback"].split("<cell 4>")[0].lower(), "no frames of the kernel"
        assert cell("import pickle\nclass P: pass\nlen(pickle.dumps(P())) > 0").value == "True"
        got = cell("result = {'n': len(data)}", inputs={"data": [1, 2]}, want_result=True)
        assert (got.has_result, got.result) == (True, {"n": 2})
        unjson = cell("result = object()", want_result=True)
        assert not unjson.has_result and unjson.error is not None
        assert cell("if __import__('os').fork() == 0:\n    pass\n1").value == "1", "a forked child never replies"
    finally:
        wire.close()
        kernel.wait(timeout=10)
    assert kernel.stdout is not None and kernel.stdout.read() == b""


def test_safe_path_access_resolves_inside_and_refuses_outside(tmp_path: os.PathLike[str]) -> None:
    base = os.fspath(tmp_path)
    os.makedirs(os.path.join(base, "data"))
    os.symlink("/etc", os.path.join(base, "data", "etc"))
    assert safe_path_access("data/x.json", base) == os.path.join(os.path.realpath(base), "data", "x.json")
    for escape in ("../../etc/passwd", "/etc/passwd", "data/etc/passwd"):
        with pytest.raises(SecurityError):
            safe_path_access(escape, base)
