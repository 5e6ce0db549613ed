"""The Python kernel is untrusted: a cell that talks on the kernel's wire itself.

The kernel's socket to the supervisor is an fd of the kernel process, so a cell can
write anything on it. Whatever it writes must at worst end its own session with status
``error``: never hang the supervisor, grow its memory, pass it fds, or touch the host.
"""

from __future__ import annotations

import pytest

import nsbox
from tests.conftest import require_sandbox

#: Finds the kernel's wire (the one unix socket among the kernel's fds) from inside a cell.
FIND_WIRE = """
import os, socket, stat
wire = next(fd for fd in range(3, 64)
            if os.path.exists(f"/proc/self/fd/{fd}") and stat.S_ISSOCK(os.fstat(fd).st_mode))
"""


@pytest.fixture
def sandbox() -> nsbox.NsSandbox:
    require_sandbox()
    with nsbox.NsSandbox(timeout=10) as sb:
        yield sb


def test_the_premise_a_cell_can_reach_the_wire(sandbox: nsbox.NsSandbox) -> None:
    got = sandbox.execute_code(FIND_WIRE + "wire")
    assert got.success and got.value is not None and int(got.value) >= 3


@pytest.mark.parametrize(
    "payload",
    [
        "b'\\xff\\xff\\xff\\xff' + b'x' * 100",  # a length far over the cap
        "b'\\x00\\x00\\x00\\x05' + b'nope!'",  # not JSON
        "b'\\x00\\x00\\x00\\x02' + b'[]'",  # JSON, not an object
        '(lambda b: len(b).to_bytes(4, \'big\') + b)(b\'{"type":"cell_done","number":1,"value":5,"error":null}\')',
        '(lambda b: len(b).to_bytes(4, \'big\') + b)(b\'{"type":"exec","argv":[],"env":{},"cwd":"/"}\')',
    ],
)
def test_malformed_frames_end_the_session_with_status_error(sandbox: nsbox.NsSandbox, payload: str) -> None:
    got = sandbox.execute_code(FIND_WIRE + f"os.write(wire, {payload})\nimport time; time.sleep(5)")
    assert got.status is nsbox.Status.ERROR, got
    assert "protocol" in (got.error or "") and got.state_lost
    assert got.wall_s < 5, "the supervisor did not wait for the cell"
    with pytest.raises(nsbox.SandboxError):
        sandbox.run(["true"])


def test_file_descriptors_sent_by_a_cell_are_refused(sandbox: nsbox.NsSandbox) -> None:
    code = FIND_WIRE + (
        "s = socket.socket(fileno=os.dup(wire))\n"
        'frame = b\'{"type":"cell_done","number":1,"value":null,"error":null}\'\n'
        "s.sendmsg([len(frame).to_bytes(4, 'big') + frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, "
        "__import__('array').array('i', [os.open('/', os.O_RDONLY)]))])\n"
        "import time; time.sleep(5)"
    )
    got = sandbox.execute_code(code)
    assert got.status is nsbox.Status.ERROR and "protocol" in (got.error or ""), got


def test_a_forged_reply_only_lies_about_its_own_cell(sandbox: nsbox.NsSandbox) -> None:
    code = FIND_WIRE + (
        'frame = b\'{"type":"cell_done","number":1,"value":"\\\'forged\\\'","error":null}\'\n'
        "os.write(wire, len(frame).to_bytes(4, 'big') + frame)\n"
        "import time; time.sleep(0.5)"
    )
    got = sandbox.execute_code(code)
    assert got.status is nsbox.Status.OK and got.value == "'forged'"
    # The kernel's own reply to that cell arrives later; it carries that cell's number, so
    # the next cell does not take it for its own.
    after = sandbox.execute_code("40 + 2")
    assert after.value == "42", after
    assert sandbox.run(["true"]).ok


def test_a_forged_reply_nested_600_deep_is_a_clean_protocol_error(sandbox: nsbox.NsSandbox) -> None:
    """It once ended in 'internal error in the supervisor: RecursionError' (issue 17)."""
    code = FIND_WIRE + (
        "import json\n"
        "deep = 1\n"
        "for _ in range(600):\n"
        "    deep = [deep]\n"
        'frame = json.dumps({"type": "cell_done", "number": 1, "value": None, "error": None,\n'
        '                    "has_result": True, "result": deep}).encode()\n'
        "os.write(wire, len(frame).to_bytes(4, 'big') + frame)\n"
        "import time; time.sleep(5)"
    )
    got = sandbox.execute_code(code)
    assert got.status is nsbox.Status.ERROR and "protocol" in (got.error or ""), got
    assert "deeper" in (got.error or "") and "RecursionError" not in (got.error or ""), got


def test_a_result_too_large_or_too_deep_is_the_cells_error_and_the_session_goes_on(sandbox: nsbox.NsSandbox) -> None:
    """execute_ai_code's result is checked in the kernel, before it could break a frame."""
    with pytest.raises(nsbox.ExecutionFailed) as deep:
        sandbox.execute_ai_code("result = 1\nfor _ in range(100):\n    result = [result]")
    assert "deeper" in (deep.value.result.error or ""), deep.value.result
    with pytest.raises(nsbox.ExecutionFailed) as large:
        sandbox.execute_ai_code("result = 'x' * (17 << 20)")  # the output limit is 16 MiB
    assert "bytes as JSON" in (large.value.result.error or ""), large.value.result
    assert sandbox.execute_ai_code("result = [[[1]]]") == [[[1]]]
