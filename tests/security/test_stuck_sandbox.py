"""A sandbox side that stops answering must never hang a call, nor outlive close().

Everything inside is untrusted, and it can simply stop: a cell can SIGSTOP its own kernel,
or make it never read its wire again, and the supervisor itself can be stopped. Every send
to the sandbox side must then be non-blocking or bounded by the call's deadline (a cell
bigger than the wire's socket buffer is the probe), and close() must end with no process
of the sandbox left, whatever state it is in; so must the exit of the embedding process.

Each blocking call runs in a daemon thread joined with a bound, so a failure is a failure,
never a hung suite; the fixture then kills the supervisor (through a pidfd), which takes
the sandbox down by parent-death signals. "No process of the sandbox left" is
conftest.sandbox_processes() narrowed to this sandbox (its pid namespace, and the
intermediate above its init), so that sandboxes of other test runs on the host do not count.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nsbox
from nsbox._channel import readable
from tests.conftest import require_sandbox, sandbox_processes, wait_until

#: A call must return within this, far above its own timeout: the point is that it returns.
BOUND = 30.0
#: How long the processes of a closed (or abandoned) sandbox get to be gone.
GONE_WITHIN = 10.0
#: More than the kernel's wire (a socket pair) buffers: sending it blocks on a kernel that does not read.
BIG = "x" * 400_000
BIG_CELL = "#" + BIG
REPO = Path(__file__).resolve().parents[2]

#: A cell that has a detached child stop the kernel once the cell is over; its value is the kernel's pid.
STOP_KERNEL = """
import os, subprocess
subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -STOP {os.getpid()}"], start_new_session=True)
os.getpid()
"""
#: A run that waits until the process sys.argv[1] is stopped (state T).
WAIT_STOPPED = """
import sys, time
for _ in range(200):
    if open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()[0] == "T":
        sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
"""
#: A run that prints its pid namespace: the sandbox's, as the host names it too.
PIDNS = "import os; print(os.readlink('/proc/self/ns/pid'))"
#: A cell after which the kernel never reads its wire again (its loop sleeps in recv).
NEVER_READ = """
import gc, time
wire = next(o for o in gc.get_objects() if type(o).__name__ == "Wire")
type(wire).recv = lambda self: time.sleep(86400)
"""


class _Call:
    """``fn()`` in a daemon thread: ``ended(bound)`` joins it with a bound."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:
            self.error = exc

    def ended(self, bound: float = BOUND) -> bool:
        self.thread.join(bound)
        return not self.thread.is_alive()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def _left(pidns: str) -> list[int]:
    """The sandbox's processes still on the host: sandbox_processes() in its pid namespace,
    and the intermediate (the parent of its init, outside it)."""
    left = []
    for pid in sandbox_processes():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != pidns:
                continue
        except PermissionError:
            pass  # cannot tell: counted, so that a leftover is never missed
        except FileNotFoundError:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        left.append(pid)
        if stat[stat.index("(") + 1 : stat.rindex(")")] == "nsbox-init":
            left.append(int(stat.rsplit(")", 1)[1].split()[1]))
    return sorted(left)


@dataclass
class Session:
    sandbox: nsbox.NsSandbox
    supervisor: int
    pidfd: int  #: the supervisor's: signals reach it and no reused pid
    pidns: str  #: the sandbox's pid namespace

    def supervisor_gone(self) -> bool:
        return readable(self.pidfd)

    def left(self) -> list[int]:
        return _left(self.pidns)

    def signal_supervisor(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signum)


@pytest.fixture
def session() -> Iterator[Session]:
    """A started sandbox without a default deadline; whatever the test leaves, it ends."""
    require_sandbox()
    sandbox = nsbox.NsSandbox(timeout=None).start()
    supervisor = sandbox._backend.supervisor_pid  # type: ignore[attr-defined]
    pidfd = os.pidfd_open(supervisor)
    pidns = ""
    try:
        named = sandbox.run(["python3", "-c", PIDNS], timeout=30, capture_output=True)
        assert named.ok and named.stdout, named
        pidns = named.stdout.decode().strip()
        yield Session(sandbox, supervisor, pidfd, pidns)
    finally:
        closing = _Call(sandbox.close)
        if not closing.ended(BOUND) or not wait_until(lambda: readable(pidfd), 1.0):
            with contextlib.suppress(ProcessLookupError):  # stuck: parent-death signals take the sandbox
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            closing.ended(BOUND)
        os.close(pidfd)
        wait_until(lambda: not pidns or not _left(pidns), GONE_WITHIN)


def _stop_kernel(sandbox: nsbox.NsSandbox) -> None:
    got = sandbox.execute_code(STOP_KERNEL, timeout=10)
    assert got.success and got.value is not None, got
    waited = sandbox.run(["python3", "-c", WAIT_STOPPED, got.value], timeout=20, capture_output=True)
    assert waited.ok, f"the kernel was not stopped: {waited}"


def _assert_closes_to_nothing(session: Session) -> None:
    _assert_close_returns(session)
    _assert_nothing_left(session)


def _assert_close_returns(session: Session) -> None:
    closing = _Call(session.sandbox.close)
    assert closing.ended(), f"close() did not return within {BOUND:g} s"
    closing.result()


def _assert_nothing_left(session: Session) -> None:
    assert wait_until(lambda: not session.left(), GONE_WITHIN), f"left after close(): {session.left()}"
    assert wait_until(session.supervisor_gone, GONE_WITHIN), f"the supervisor {session.supervisor} is still there"


@pytest.mark.usefixtures("no_leftovers")
def test_a_big_cell_to_a_stopped_kernel_times_out_and_the_session_goes_on(session: Session) -> None:
    sandbox = session.sandbox
    _stop_kernel(sandbox)
    call = _Call(lambda: sandbox.execute_code(BIG_CELL, timeout=3))
    assert call.ended(), f"execute_code(timeout=3) did not return within {BOUND:g} s"
    got = call.result()
    assert got.status is nsbox.Status.TIMEOUT and got.state_lost, got
    again = _Call(lambda: (sandbox.execute_code("1 + 1", timeout=30), sandbox.run(["true"], timeout=30)))
    assert again.ended(), "the session did not answer after the timeout"
    cell, run = again.result()
    assert cell.value == "2", cell
    assert run.ok, run
    _assert_closes_to_nothing(session)


@pytest.mark.usefixtures("no_leftovers")
def test_big_inputs_to_a_stopped_kernel_time_out_in_execute_ai_code(session: Session) -> None:
    sandbox = session.sandbox
    _stop_kernel(sandbox)
    call = _Call(lambda: sandbox.execute_ai_code("result = len(blob)", {"blob": BIG}, timeout=3))
    assert call.ended(), f"execute_ai_code(timeout=3) did not return within {BOUND:g} s"
    assert isinstance(call.error, nsbox.ExecutionFailed), (call.error, call.value)
    assert call.error.result.status is nsbox.Status.TIMEOUT, call.error.result
    _assert_closes_to_nothing(session)


@pytest.mark.usefixtures("no_leftovers")
def test_close_ends_a_cell_without_deadline_blocked_on_a_stopped_kernel(session: Session) -> None:
    sandbox = session.sandbox
    _stop_kernel(sandbox)
    cell = _Call(lambda: sandbox.execute_code(BIG_CELL, timeout=None))
    assert not cell.ended(1.0), f"the premise: a cell waits on a stopped kernel ({cell.error or cell.value})"
    _assert_close_returns(session)
    assert cell.ended(), f"the cell did not end within {BOUND:g} s of close()"
    assert isinstance(cell.error, nsbox.SandboxError), (cell.error, cell.value)
    _assert_nothing_left(session)


EMBEDDER = """
import os, sys, threading, time
import nsbox
sandbox = nsbox.NsSandbox(timeout=None).start()
print(sandbox._backend.supervisor_pid, flush=True)
print(sandbox.run(["python3", "-c", {pidns!r}], timeout=30, capture_output=True).stdout.decode(), flush=True)
got = sandbox.execute_code({stop!r}, timeout=10)
assert sandbox.run(["python3", "-c", {wait!r}, got.value], timeout=20).ok, got
threading.Thread(target=sandbox.execute_code, args=("#" + "x" * 400_000,), kwargs={{"timeout": None}}).start()
time.sleep(1)
print("blocked", flush=True)
os._exit(0)
"""


@pytest.mark.usefixtures("no_leftovers")
def test_the_embedding_process_exiting_takes_a_blocked_sandbox_with_it(tmp_path: Path) -> None:
    require_sandbox()
    out = tmp_path / "out"
    script = EMBEDDER.format(stop=STOP_KERNEL, wait=WAIT_STOPPED, pidns=PIDNS)
    # Files, not pipes: the spawner and the supervisor inherit them and may outlive the process.
    with out.open("w") as stdout, (tmp_path / "err").open("w") as stderr:
        proc = subprocess.run([sys.executable, "-c", script], stdout=stdout, stderr=stderr, cwd=REPO, timeout=120)
    lines = out.read_text().split()
    assert lines, (tmp_path / "err").read_text()
    pidfd: int | None = None
    with contextlib.suppress(ProcessLookupError):  # already gone
        pidfd = os.pidfd_open(int(lines[0]))
    try:
        assert proc.returncode == 0 and lines[2:] == ["blocked"], (lines, (tmp_path / "err").read_text())
        pidns = lines[1]
        assert wait_until(lambda: not _left(pidns), GONE_WITHIN), f"left after the process exited: {_left(pidns)}"
        assert pidfd is None or wait_until(lambda: readable(pidfd), GONE_WITHIN), f"the supervisor {lines[0]} is left"
    finally:
        if pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        if len(lines) > 1:
            wait_until(lambda: not _left(lines[1]), GONE_WITHIN)


@pytest.mark.usefixtures("no_leftovers")
def test_a_big_cell_to_a_kernel_that_never_reads_times_out(session: Session) -> None:
    sandbox = session.sandbox
    patched = sandbox.execute_code(NEVER_READ, timeout=10)
    assert patched.success, patched
    call = _Call(lambda: sandbox.execute_code(BIG_CELL, timeout=3))
    assert call.ended(), f"execute_code(timeout=3) did not return within {BOUND:g} s"
    got = call.result()
    assert got.status is nsbox.Status.TIMEOUT and got.state_lost, got
    _assert_closes_to_nothing(session)


@pytest.mark.usefixtures("no_leftovers")
def test_input_to_a_payload_that_never_reads_stdin_times_out(session: Session) -> None:
    sandbox = session.sandbox
    call = _Call(lambda: sandbox.run(["sleep", "60"], input=b"x" * (8 << 20), timeout=2))
    assert call.ended(), f"run(timeout=2) did not return within {BOUND:g} s"
    got = call.result()
    assert got.status is nsbox.Status.TIMEOUT, got
    _assert_closes_to_nothing(session)


@pytest.mark.usefixtures("no_leftovers")
def test_close_kills_a_supervisor_that_does_not_answer(session: Session) -> None:
    sandbox = session.sandbox
    assert sandbox.run(["sh", "-c", "sleep 1000 & exit 0"], timeout=30).ok
    session.signal_supervisor(signal.SIGSTOP)  # the fixture kills it if close() leaves it
    _assert_closes_to_nothing(session)
