"""Judge mode: a submission against its tests, and many submissions over a pool of sandboxes.

``judge(sandbox, code, tests)`` (``NsSandbox.judge``) compiles a compiled language's
source once, then runs each test in a fresh process (``run_code``): the test's input on
stdin, its stdout compared with the expected output. Each test gets a verdict with its
time and memory; the submission's verdict is its first test's that was not accepted.

``Judge(workers=N, **options)`` keeps N sandboxes, one per worker thread, and runs many
programs or submissions over them, returning results in input order. A sandbox that dies
(its supervisor killed, its init gone) is replaced, and what ran in it when it died gets
an error result; nothing is run twice.
"""

from __future__ import annotations

import concurrent.futures
import enum
import math
import queue
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import SandboxError, SpecError
from ._result import RunResult, Status

if TYPE_CHECKING:
    from ._sandbox import NsSandbox
    from ._spec import SandboxSpec

#: Languages whose source is compiled once per submission (``run_code`` compiles on first use).
COMPILED = ("c", "cpp")
COMPARISONS = ("exact", "tokens", "floats")
#: The arguments a program (run_code) and a submission (judge) may have, as mappings.
PROGRAM_KEYS = frozenset(("code", "language", "stdin", "timeout", "memory", "files"))
SUBMISSION_KEYS = frozenset(
    ("code", "tests", "language", "timeout", "memory", "compare", "tolerance", "stop_on_failure", "compile_timeout")
)
#: How long a compilation may take.
COMPILE_TIMEOUT = 60.0
MAX_WORKERS = 64
_T = TypeVar("_T")


class Verdict(enum.StrEnum):
    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    TIME_LIMIT = "time_limit"  #: the wall-clock timeout or the CPU-time limit
    MEMORY_LIMIT = "memory_limit"  #: killed at the memory limit (the test's, or the sandbox's)
    OUTPUT_LIMIT = "output_limit"  #: more output than the sandbox's output limit
    RUNTIME_ERROR = "runtime_error"  #: a non-zero exit, a signal, or the process limit
    COMPILE_ERROR = "compile_error"


@dataclass(frozen=True)
class TestVerdict:
    """One test: its verdict and the run it is based on (output, exit, time, memory)."""

    index: int
    verdict: Verdict
    run: RunResult

    @property
    def wall_s(self) -> float:
        return self.run.wall_s

    @property
    def memory_peak_bytes(self) -> int | None:
        return self.run.memory_peak_bytes

    def to_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "test": self.index,
            "verdict": self.verdict.value,
            "exit_code": run.exit_code,
            "signal": run.signal,
            "wall_s": round(run.wall_s, 6),
            "cpu_s": round(run.cpu_s, 6),
            "memory_peak_bytes": run.memory_peak_bytes,
            "path": run.path,
        }


@dataclass(frozen=True)
class JudgeResult:
    """A submission's verdict: its first test's that was not accepted, or accepted."""

    verdict: Verdict
    tests: tuple[TestVerdict, ...]
    compile: RunResult | None = None  #: the compilation, for a compiled language
    error: str | None = None  #: the compiler's messages, or what went wrong in nsbox

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED

    @property
    def passed(self) -> int:
        return sum(t.verdict is Verdict.ACCEPTED for t in self.tests)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "passed": self.passed,
            "tests": [t.to_dict() for t in self.tests],
            "error": self.error,
        }


@dataclass(frozen=True)
class Rules:
    """How a submission is judged (``NsSandbox.judge``'s options)."""

    language: str = "python"
    timeout: float | None = None
    memory: int | str | None = None
    compare: str = "exact"
    tolerance: float = 1e-6
    stop_on_failure: bool = False
    compile_timeout: float | None = COMPILE_TIMEOUT


def judge(
    sandbox: NsSandbox, code: str, tests: Sequence[Mapping[str, Any] | tuple[Any, Any]], rules: Rules
) -> JudgeResult:
    """See ``NsSandbox.judge``."""
    cases = [_case(i, t) for i, t in enumerate(tests)]
    if rules.compare not in COMPARISONS:
        raise SpecError("compare", f"{rules.compare!r} is not one of {', '.join(COMPARISONS)}")
    compiled = None
    if rules.language in COMPILED:
        compiled = sandbox._compile(code, rules.language, rules.compile_timeout)
        if not compiled.ok:
            message = (compiled.stderr or b"").decode("utf-8", "replace") or compiled.error
            return JudgeResult(Verdict.COMPILE_ERROR, (), compiled, message)
    verdicts: list[TestVerdict] = []
    for index, (stdin, expected) in enumerate(cases):
        run = sandbox.run_code(code, language=rules.language, stdin=stdin, timeout=rules.timeout, memory=rules.memory)
        verdict = verdict_of(run, expected, rules.compare, rules.tolerance)
        verdicts.append(TestVerdict(index, verdict, run))
        if rules.stop_on_failure and verdict is not Verdict.ACCEPTED:
            break
    failed = next((v.verdict for v in verdicts if v.verdict is not Verdict.ACCEPTED), Verdict.ACCEPTED)
    return JudgeResult(failed, tuple(verdicts), compiled)


def _case(index: int, test: Mapping[str, Any] | tuple[str | bytes, str | bytes]) -> tuple[bytes, bytes]:
    if isinstance(test, Mapping):
        if "output" not in test:
            raise SpecError("tests", f"test {index} has no 'output'")
        pair = (test.get("input", b""), test["output"])
    elif isinstance(test, tuple) and len(test) == 2:
        pair = test
    else:
        raise SpecError("tests", f"test {index} is neither {{'input', 'output'}} nor (input, output)")
    return tuple(v.encode() if isinstance(v, str) else bytes(v) for v in pair)  # type: ignore[return-value]


def verdict_of(run: RunResult, expected: bytes, compare: str = "exact", tolerance: float = 1e-6) -> Verdict:
    """A test's verdict from its run, by precedence: the limits, then errors, then the output."""
    if run.status in (Status.TIMEOUT, Status.CPU_TIME):
        return Verdict.TIME_LIMIT
    if run.status is Status.OOM:
        return Verdict.MEMORY_LIMIT
    if run.status is Status.OUTPUT_LIMIT or run.stdout_truncated:
        return Verdict.OUTPUT_LIMIT
    if run.status is not Status.OK:
        return Verdict.RUNTIME_ERROR
    return Verdict.ACCEPTED if same_output(run.stdout or b"", expected, compare, tolerance) else Verdict.WRONG_ANSWER


def same_output(got: bytes, expected: bytes, compare: str, tolerance: float) -> bool:
    """``exact``: byte for byte; ``tokens``: the same whitespace-separated tokens;
    ``floats``: as tokens, but two numbers match within ``tolerance`` (absolute or relative)."""
    if compare == "exact":
        return got == expected
    ours, theirs = got.split(), expected.split()
    if len(ours) != len(theirs):
        return False
    if compare == "tokens":
        return ours == theirs
    return all(a == b or _close(a, b, tolerance) for a, b in zip(ours, theirs, strict=True))


def _close(a: bytes, b: bytes, tolerance: float) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance)


class Judge:
    """``Judge(workers=N, **sandbox_options)``: N sandboxes, one per worker thread.
    ``run_code_many`` and ``judge_many`` return results in the order given. Use it as a
    context manager, or call ``close()``."""

    def __init__(self, workers: int = 2, spec: SandboxSpec | None = None, **options: Any) -> None:
        from ._sandbox import spec_from_options

        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise SpecError("workers", f"{workers!r}: a judge has 1 to {MAX_WORKERS} workers")
        if spec is not None and options:
            raise SpecError(tuple(options), "pass either a SandboxSpec or options, not both")
        self.spec = spec if spec is not None else spec_from_options(**options)
        self.workers = workers
        self._idle: queue.SimpleQueue[NsSandbox | None] = queue.SimpleQueue()
        for _ in range(workers):
            self._idle.put(None)  # started on first use
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nsbox-judge")
        self._sandboxes: list[NsSandbox] = []
        self._closed = False

    def run_code_many(
        self, programs: Iterable[str | Mapping[str, Any]], progress: Callable[[int], None] | None = None
    ) -> list[RunResult]:
        """Each program a ``code`` string, or a mapping of run_code's arguments
        (``code``, ``language``, ``stdin``, ``timeout``, ``memory``, ``files``)."""

        def one(sandbox: NsSandbox, program: str | Mapping[str, Any]) -> RunResult:
            return sandbox.run_code(**({"code": program} if isinstance(program, str) else program))

        items = [p if isinstance(p, str) else _checked(p, PROGRAM_KEYS, "program") for p in programs]
        return self._map(one, items, _failed_run, progress)

    def judge_many(
        self, submissions: Iterable[Mapping[str, Any]], progress: Callable[[int], None] | None = None
    ) -> list[JudgeResult]:
        """Each submission a mapping of judge's arguments (``code``, ``tests``, ``language``,
        ``timeout``, ``memory``, ``compare``, ``tolerance``, ``stop_on_failure``)."""
        items = [_checked(s, SUBMISSION_KEYS, "submission") for s in submissions]
        return self._map(lambda sandbox, s: sandbox.judge(**s), items, _failed_judge, progress)

    def _map(
        self,
        call: Callable[[NsSandbox, Any], _T],
        items: Iterable[Any],
        failed: Callable[[str], _T],
        progress: Callable[[int], None] | None,
    ) -> list[_T]:
        if self._closed:
            raise SandboxError("the judge is closed")
        futures = [self._pool.submit(self._in_a_sandbox, call, item, failed) for item in items]
        results = []
        for done, future in enumerate(futures, 1):
            results.append(future.result())
            if progress is not None:
                progress(done)
        return results

    def _in_a_sandbox(self, call: Callable[[NsSandbox, Any], _T], item: Any, failed: Callable[[str], _T]) -> _T:
        from ._sandbox import NsSandbox

        sandbox = self._idle.get()
        try:
            if sandbox is None or sandbox.closed:
                sandbox = NsSandbox(self.spec).start()
                self._sandboxes.append(sandbox)
            return call(sandbox, item)
        except SandboxError as exc:  # the sandbox died: a new one takes the next item
            if sandbox is not None:
                sandbox.close()
            sandbox = None
            return failed(str(exc))
        finally:
            self._idle.put(sandbox)

    def close(self) -> None:
        """Destroy the sandboxes: programs still running end (their results are errors),
        those not started yet never start."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sandbox in list(self._sandboxes):
            sandbox.close()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Judge:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _checked(item: Mapping[str, Any], allowed: frozenset[str], what: str) -> Mapping[str, Any]:
    unknown = set(item) - allowed
    if unknown or "code" not in item:
        raise SpecError(
            what, f"a {what} has 'code' and may have {', '.join(sorted(allowed - {'code'}))}; not {unknown}"
        )
    return item


def _failed_run(error: str) -> RunResult:
    return RunResult((), Status.ERROR, 125, 0.0, error=error)


def _failed_judge(error: str) -> JudgeResult:
    return JudgeResult(Verdict.RUNTIME_ERROR, (), None, error)
