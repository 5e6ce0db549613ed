"""Judge mode's pure parts: comparing outputs, and a test's verdict from its run."""

from __future__ import annotations

import pytest

from nsbox import RunResult, Status, Verdict
from nsbox._judge import same_output, verdict_of


@pytest.mark.parametrize(
    ("got", "expected", "compare", "same"),
    [
        (b"1 2\n", b"1 2\n", "exact", True),
        (b"1 2\n", b"1 2", "exact", False),
        (b" 1\t2 \n\n", b"1 2", "tokens", True),
        (b"1 2 3", b"1 2", "tokens", False),
        (b"0.1000001 x", b"0.1 x", "floats", True),
        (b"0.11 x", b"0.1 x", "floats", False),
        (b"nan", b"nan", "floats", True),
        (b"abc", b"abd", "floats", False),
        (b"1e-9", b"0", "floats", True),
    ],
)
def test_outputs_compare_as_asked(got: bytes, expected: bytes, compare: str, same: bool) -> None:
    assert same_output(got, expected, compare, 1e-6) is same


@pytest.mark.parametrize(
    ("status", "truncated", "stdout", "verdict"),
    [
        (Status.OK, False, b"3\n", Verdict.ACCEPTED),
        (Status.OK, False, b"4\n", Verdict.WRONG_ANSWER),
        (Status.TIMEOUT, False, b"3\n", Verdict.TIME_LIMIT),
        (Status.CPU_TIME, False, b"", Verdict.TIME_LIMIT),
        (Status.OOM, False, b"", Verdict.MEMORY_LIMIT),
        (Status.OUTPUT_LIMIT, True, b"3\n", Verdict.OUTPUT_LIMIT),
        (Status.EXIT, True, b"3\n", Verdict.OUTPUT_LIMIT),
        (Status.EXIT, False, b"3\n", Verdict.RUNTIME_ERROR),
        (Status.SIGNAL, False, b"3\n", Verdict.RUNTIME_ERROR),
        (Status.PIDS, False, b"3\n", Verdict.RUNTIME_ERROR),
    ],
)
def test_a_tests_verdict_follows_its_run(status: Status, truncated: bool, stdout: bytes, verdict: Verdict) -> None:
    run = RunResult(("python",), status, 0, 0.1, stdout=stdout, stdout_truncated=truncated)
    assert verdict_of(run, b"3\n") is verdict
