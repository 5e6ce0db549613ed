"""Judge mode (issue 19): a submission against its tests, and many over a pool.

The verdict table: submissions with known outcomes, in Python and C++, each given exactly
its verdict. Compile-once: a C++ source is compiled once for all its tests.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import nsbox
from nsbox import Judge, Verdict
from tests.conftest import NSBOX_CLI, require_run_code, require_sandbox

SUM_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "40 2\n", "output": "42\n"}]

PYTHON = {
    "accepted": "a, b = map(int, input().split())\nprint(a + b)",
    "wrong_answer": "a, b = map(int, input().split())\nprint(a - b)",
    "time_limit": "while True:\n    pass",
    "memory_limit": "chunks = []\nwhile True:\n    chunks.append(b'\\x01' * (16 << 20))",
    "runtime_error by exit": "raise SystemExit(3)",
    "runtime_error by signal": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
    "output_limit": "import sys\nsys.stdout.write('9' * (4 << 20))",
}
CPP = {
    "accepted": "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<'\\n';}",
    "wrong_answer": "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a*b<<'\\n';}",
    "time_limit": "int main(){volatile long x=0;for(;;)x++;}",
    "memory_limit": (
        "#include <cstring>\n#include <cstdlib>\nint main(){for(;;){char*p=(char*)malloc(1<<24);memset(p,1,1<<24);}}"
    ),
    "runtime_error by exit": "int main(){return 3;}",
    "runtime_error by signal": "int main(){volatile int*p=nullptr;return *p;}",
    "compile_error": "int main( { this is not C++",
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[nsbox.NsSandbox]:
    require_run_code()
    with nsbox.NsSandbox(memory="256M", output_limit="1M", timeout=20) as box:
        yield box


@pytest.mark.parametrize(("language", "case"), [("python", c) for c in PYTHON] + [("cpp", c) for c in CPP])
def test_each_submission_gets_exactly_its_verdict(sandbox: nsbox.NsSandbox, language: str, case: str) -> None:
    code = (PYTHON if language == "python" else CPP)[case]
    result = sandbox.judge(code, SUM_TESTS, language=language, timeout=2)
    expected = Verdict(case.split(" by ")[0])
    assert result.verdict is expected, result
    if expected is Verdict.COMPILE_ERROR:
        assert result.tests == () and result.error and "error" in result.error, result
        return
    assert len(result.tests) == len(SUM_TESTS), "no stop_on_failure: every test runs"
    assert all(t.verdict is expected for t in result.tests), result
    if case == "runtime_error by signal":
        assert result.tests[0].run.signal == 11, result.tests[0]
    if case == "runtime_error by exit":
        assert result.tests[0].run.exit_code == 3
    if expected is Verdict.ACCEPTED:
        assert result.passed == 2 and all(t.memory_peak_bytes for t in result.tests)


def test_stop_on_failure_stops_at_the_first_failed_test(sandbox: nsbox.NsSandbox) -> None:
    tests = [
        {"input": "1 1\n", "output": "2\n"},
        {"input": "2 2\n", "output": "5\n"},
        {"input": "3 3\n", "output": "6\n"},
    ]
    result = sandbox.judge(PYTHON["accepted"], tests, stop_on_failure=True)
    assert result.verdict is Verdict.WRONG_ANSWER
    assert [t.verdict for t in result.tests] == [Verdict.ACCEPTED, Verdict.WRONG_ANSWER]


def test_a_tests_own_memory_limit_is_a_memory_limit_verdict(sandbox: nsbox.NsSandbox) -> None:
    code = "big = b'\\x01' * (100 << 20)\na, b = map(int, input().split())\nprint(a + b)"
    assert sandbox.judge(code, SUM_TESTS).accepted, "the premise: 100 MB fit in the sandbox"
    capped = sandbox.judge(code, SUM_TESTS, memory="32M")
    assert capped.verdict is Verdict.MEMORY_LIMIT and len(capped.tests) == 2, capped


def test_comparisons(sandbox: nsbox.NsSandbox) -> None:
    code = "print(' 1   2\\n3.0000001 ')"
    assert sandbox.judge(code, [("", "1 2 3.0000001\n")]).verdict is Verdict.WRONG_ANSWER, "exact"
    assert sandbox.judge(code, [("", "1 2 3.0000001")], compare="tokens").accepted
    assert not sandbox.judge(code, [("", "1 2 3")], compare="tokens").accepted
    assert sandbox.judge(code, [("", "1 2 3")], compare="floats", tolerance=1e-6).accepted
    assert not sandbox.judge(code, [("", "1 2 3.1")], compare="floats").accepted
    with pytest.raises(nsbox.SpecError, match="compare"):
        sandbox.judge(code, [("", "")], compare="fuzzy")


def test_a_cpp_source_is_compiled_once_for_all_its_tests(sandbox: nsbox.NsSandbox) -> None:
    """The compiler says so on stderr each time it compiles the source (#warning)."""
    source = '#warning "compiling now"\n' + CPP["accepted"] + "\n// once " + str(id(sandbox))
    result = sandbox.judge(source, SUM_TESTS * 5, language="cpp")
    assert result.accepted and result.compile is not None and result.compile.ok, result
    assert b"compiling now" in (result.compile.stderr or b""), "the premise: a compilation shows"
    assert all(b"compiling now" not in (t.run.stderr or b"") for t in result.tests), "no test compiled it again"
    again = sandbox.judge(source, SUM_TESTS, language="cpp")
    assert again.accepted and again.compile is not None and b"compiling now" not in (again.compile.stderr or b"")
    assert sandbox.run_code(source, language="cpp", stdin="1 1\n").stderr == b"", "run_code finds it built too"


def test_a_judge_runs_many_submissions_in_order_over_its_workers() -> None:
    require_run_code()
    submissions = [
        {"code": f"print(int(input()) + {i})", "tests": [{"input": "1\n", "output": f"{1 + i}\n"}]} for i in range(12)
    ]
    submissions[5]["code"] = "print('wrong')"
    seen: list[int] = []
    with Judge(workers=2, memory="256M") as judge:
        verdicts = judge.judge_many(submissions, progress=seen.append)
        programs = judge.run_code_many(["print(1)", {"code": "echo $((6*7))", "language": "bash"}])
    assert [v.verdict for v in verdicts] == [Verdict.WRONG_ANSWER if i == 5 else Verdict.ACCEPTED for i in range(12)]
    assert seen == list(range(1, 13))
    assert [p.stdout for p in programs] == [b"1\n", b"42\n"]


def test_the_cli_judges_json_lines_in_order(tmp_path: Path) -> None:
    require_run_code()
    lines = [
        {"code": PYTHON["accepted"], "tests": SUM_TESTS},
        {"code": CPP["compile_error"], "language": "cpp", "tests": SUM_TESTS},
        {"code": PYTHON["wrong_answer"], "tests": SUM_TESTS, "stop_on_failure": True},
    ]
    submissions = tmp_path / "subs.jsonl"
    submissions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = subprocess.run([NSBOX_CLI, "judge", "--workers", "2", str(submissions)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [v["verdict"] for v in verdicts] == ["accepted", "compile_error", "wrong_answer"]
    assert [len(v["tests"]) for v in verdicts] == [2, 0, 1]
    programs = subprocess.run(
        [NSBOX_CLI, "judge", "-"], input=b'{"code": "print(6 * 7)"}\n', capture_output=True, timeout=120
    )
    assert programs.returncode == 0 and json.loads(programs.stdout)["stdout"] == "42\n", programs.stderr


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json\n", "not JSON"),
        ('{"code": "x", "oops": 1}\n', "oops"),
        ('{"code": "x"}\n{"code": "y", "tests": []}\n', "every line"),
    ],
)
def test_the_cli_refuses_a_bad_file_before_it_runs_anything(text: str, why: str) -> None:
    require_sandbox()
    done = subprocess.run([NSBOX_CLI, "judge", "-"], input=text.encode(), capture_output=True, timeout=60)
    assert done.returncode == 125 and why in done.stderr.decode() and done.stdout == b"", done
