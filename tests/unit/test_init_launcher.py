"""Init's side of the launcher, without namespaces: what a launcher says is untrusted (it
runs at the payload's privilege), so nonsense from it ends it and a new one is started;
a launcher that cannot set itself up fails the runs with its reason.

Init's loop runs here in a forked process, with fake launchers; the real launcher's loop
(``_launcher.serve``) starts /bin/true. No test sends KillRun or Signal: outside a pid
namespace those would reach this machine's processes.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import prctl
import pytest

from nsbox import _init, _launcher
from nsbox._channel import Channel, socketpair
from nsbox._protocol import MAX_FRAME_FROM_SANDBOX, MAX_FRAME_TO_INIT, RUN, Exec, Exited, Started, StepFailed
from tests.conftest import wait_until

TRUE = Exec(["/bin/true"], {"PATH": "/usr/bin:/bin"}, "/", RUN)


@pytest.fixture
def init() -> Iterator[Callable[[Callable[[socket.socket], None]], Channel]]:
    started: list[tuple[int, Channel]] = []

    def start(launcher_main: Callable[[socket.socket], None]) -> Channel:
        ours, theirs = socketpair()
        pid = os.fork()
        if pid == 0:  # init's loop; it exits when our end closes
            ours.close()
            try:
                _init.serve(
                    Channel(theirs, MAX_FRAME_TO_INIT),
                    lambda *_: os._exit(127),
                    launcher_main,
                    lambda *_: os._exit(127),
                )
            finally:
                os._exit(0)
        theirs.close()
        channel = Channel(ours, MAX_FRAME_FROM_SANDBOX, accept_fds=False)
        started.append((pid, channel))
        return channel

    yield start
    for pid, channel in started:
        channel.close()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "init's loop ended cleanly"


def _stdio() -> list[int]:
    return [os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(3)]


def _exec(channel: Channel, request: Exec = TRUE) -> list[Started | Exited]:
    """Send a run; the reports up to its Exited."""
    stdio = _stdio()
    try:
        channel.send(request, stdio)
    finally:
        for fd in stdio:
            os.close(fd)
    reports: list[Started | Exited] = []
    while not reports or not isinstance(reports[-1], Exited):
        message, _ = channel.recv(Started, Exited, timeout=10)
        reports.append(message)
    return reports


def _honest_after(marker: Path, lie: Callable[[Channel], None]) -> Callable[[socket.socket], None]:
    """A launcher that lies the first time it is started, and is the real one after."""

    def launcher_main(sock: socket.socket) -> None:
        prctl.set_pdeathsig(signal.SIGKILL)  # as the real one: it never outlives init
        channel = Channel(sock, MAX_FRAME_TO_INIT)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            lie(channel)
            signal.pause()  # init must kill it
        _launcher.serve(channel)
        os._exit(0)

    return launcher_main


def test_the_real_launcher_starts_and_reports_a_run(init: Callable[..., Channel]) -> None:
    channel = init(lambda sock: _launcher.serve(Channel(sock, MAX_FRAME_TO_INIT)))
    started, exited = _exec(channel)
    assert isinstance(started, Started) and started.pid > 1 and started.process == RUN
    assert isinstance(exited, Exited) and exited.wait_status == 0 and exited.exec_errno is None
    missing = _exec(channel, Exec(["no-such-program"], {"PATH": "/usr/bin:/bin"}, "/", RUN))
    assert len(missing) == 1 and missing[0].exec_errno == 2 and missing[0].exec_stage == "execve"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "lie",
    [
        pytest.param(lambda c: c.send(Exited(0, None, None, RUN)), id="a report on no run"),
        pytest.param(lambda c: c.send(Started(1, RUN)), id="a start of init itself"),
        pytest.param(lambda c: c.sock.send(b"\x00\x00\x00\x05{nope"), id="not JSON"),
        pytest.param(lambda c: c.sock.send(b"\xff\xff\xff\xff"), id="a frame too large"),
    ],
)
def test_nonsense_ends_the_launcher_and_the_next_run_gets_a_new_one(
    init: Callable[..., Channel], tmp_path: Path, lie: Callable[[Channel], None]
) -> None:
    marker = tmp_path / "lied"
    channel = init(_honest_after(marker, lie))
    # The liar, started with init's loop, speaks first; once init has ended it (and reaped
    # it), the run goes to its successor. (A run sent to a liar is the liar's to lie about.)
    assert wait_until(lambda: marker.exists() and marker.read_text() != "")
    liar = Path(f"/proc/{marker.read_text()}")
    assert wait_until(lambda: not liar.exists()), "init ended the liar"
    reports = _exec(channel)
    assert [type(r) for r in reports] == [Started, Exited] and reports[-1].wait_status == 0  # type: ignore[union-attr]


def test_a_launcher_that_cannot_set_itself_up_fails_each_run_with_its_reason(init: Callable[..., Channel]) -> None:
    def broken(sock: socket.socket) -> None:
        Channel(sock, MAX_FRAME_TO_INIT).send(StepFailed("load the seccomp filter", "seccomp", "", 1, "EPERM"))
        os._exit(125)

    channel = init(broken)
    for _ in range(2):
        (exited,) = _exec(channel)
        assert isinstance(exited, Exited)
        assert (exited.wait_status, exited.exec_errno, exited.exec_stage) == (
            _launcher.NOT_STARTED,
            1,
            "load the seccomp filter",
        )
