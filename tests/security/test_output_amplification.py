"""Captured output is untrusted bytes: it must cost the host about what it is, whatever the bytes.

A payload chooses its output. Carried as JSON text, each 0xff byte became U+FFFD written as a
6-byte ``\\ufffd`` (and each 0x01 a 6-byte ``\\u0001``): 32 MiB of allowed output (16 MiB on each
stream) raised the embedding process's peak memory by 576 MiB and the supervisor's by 448 MiB,
and with ``output_limit="24M"`` the reply outgrew the 256 MiB frame cap, so the call failed with
ProtocolError and the session closed. Output now crosses as bytes (``_protocol``: a frame's
binary section).

The measure is peak RSS (VmHWM, reset through /proc/PID/clear_refs just before the call) of the
embedding process and of the supervisor, in a fresh process that does nothing else, minus what
each held before the call. The bound is 4x the output allowed (2 x the limit): the output itself,
the frame it arrives in, and its decoded text (U+FFFD takes two bytes a character in a str).
Before the fix the same measure gave 18x and 14x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tests.conftest import require_sandbox

MiB = 1 << 20

MEASURE = textwrap.dedent(
    """
    import json, sys
    import nsbox

    def status(pid, field):
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    def reset_peak(pid):
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")

    limit, byte, call = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    code = (
        "import sys\\n"
        f"sys.stdout.buffer.write(bytes([{byte}]) * {limit})\\n"
        f"sys.stderr.buffer.write(bytes([{byte}]) * {limit})\\n"
    )
    with nsbox.NsSandbox(output_limit=limit, timeout=120, memory="1G") as sandbox:
        supervisor = sandbox._backend.supervisor_pid
        sandbox.execute_code("1")  # the kernel is up: only the call itself is measured
        before = {}
        for pid in ("self", supervisor):
            reset_peak(pid)
            before[pid] = status(pid, "VmRSS")
        if call == "execute_code":
            result = sandbox.execute_code(code)
            lengths = [len(result.stdout), len(result.stderr)]
        else:
            result = sandbox.run(["python3", "-c", code], capture_output=True)
            lengths = [len(result.stdout), len(result.stderr)]
        peaks = {pid: status(pid, "VmHWM") - before[pid] for pid in ("self", supervisor)}
        print(json.dumps({
            "status": result.status.value, "truncated": [result.stdout_truncated, result.stderr_truncated],
            "lengths": lengths, "front_end": peaks["self"], "supervisor": peaks[supervisor],
        }))
    """
)


def measure(limit: int, byte: int, call: str) -> dict[str, Any]:
    require_sandbox()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(limit), str(byte), call],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("call", ["execute_code", "run"])
@pytest.mark.parametrize("byte", [0xFF, 0x01], ids=["0xff", "0x01"])
def test_output_of_any_bytes_costs_a_small_multiple_of_itself(call: str, byte: int) -> None:
    limit = 16 * MiB  # the default output limit, on both streams
    got = measure(limit, byte, call)
    assert got["status"] == "ok" and got["lengths"] == [limit, limit], got
    allowed = 2 * limit
    assert got["front_end"] <= 4 * allowed, f"the embedding process's peak rose by {got['front_end'] / MiB:.0f} MiB"
    assert got["supervisor"] <= 4 * allowed, f"the supervisor's peak rose by {got['supervisor'] / MiB:.0f} MiB"


@pytest.mark.parametrize("limit", [24 * MiB, 64 * MiB], ids=["24M", "64M (the largest)"])
def test_every_allowed_output_limit_is_delivered_whole(limit: int) -> None:
    """0x01 bytes (6 bytes each as JSON text) at 24M once made a 302 MB frame, over the cap."""
    got = measure(limit, 0x01, "execute_code")
    assert got["status"] == "ok" and got["lengths"] == [limit, limit] and got["truncated"] == [False, False], got
